import aiohttp, datasets  # noqa: E401,F401,I001  -- must come before paddle (paddle 2.6.2's zlib breaks aiohttp)

# Write tests/fixtures/uie/: a tiny random-weight UIE-M checkpoint and PaddleNLP Taskflow's outputs on it.
#
# Run from the repository root inside the Paddle reference environment:
#
#     .venv-ref-paddle/bin/python scripts/reference/make_uie_fixtures_paddle.py
#
# What it writes:
#
#     tests/fixtures/uie/tiny-uiem/     paddlenlp.transformers.UIEM (hidden 16, 2 layers, 2 heads, 66 positions),
#                                       saved with save_pretrained, plus the unigram tokenizer fixture saved with
#                                       PaddleNLP's ErnieMTokenizer.save_pretrained: the layout Taskflow's
#                                       task_path wants (model_state.pdparams, config.json, vocab.txt,
#                                       sentencepiece.bpe.model, tokenizer_config.json, special_tokens_map.json)
#     tests/fixtures/uie/taskflow.json.gz
#                                       per case: options, schema, texts, Taskflow's result, and the raw model
#                                       probabilities Taskflow decoded (every (row, position, prob) with
#                                       prob > position_prob, for each get_bool_ids_greater_than call, exact
#                                       float32 values), so a test can replay the decoding on Taskflow's own
#                                       numbers and check span order too (it is a Python set's order, which
#                                       depends on the exact bits of the probabilities).
#
# Weights: paddle.seed(SEED) default initialisation, then linear_start / linear_end weights redrawn with a
# larger scale and negative biases, so that a few percent of positions clear 0.5: spans exist, starts and ends
# pair with the nearest-preceding-start rule, some spans fall inside the prompt (classification-style results)
# and some on padding. Taskflow runs on a temporary copy of the directory (it writes <dir>/static).

import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import paddle
import paddlenlp
from paddlenlp import Taskflow
from paddlenlp.taskflow import information_extraction as ie_module
from paddlenlp.transformers import UIEM, ErnieMConfig, ErnieMTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "uie"
MODEL_DIR = OUT / "tiny-uiem"
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "tokenizer" / "unigram"
SEED = 2024

CONFIG = dict(
    vocab_size=4002,  # the unigram tokenizer fixture: [CLS] [PAD] [SEP] [UNK] + 3997 pieces + [MASK]
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,  # Paddle builds its FFN as 4 * hidden_size whatever this says
    max_position_embeddings=66,  # sequences up to 64 (+2 position offset)
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    pad_token_id=1,
)
HEAD_SCALE = 0.9  # std of the redrawn linear_start / linear_end weights
HEAD_BIAS = {"linear_start": -3.4, "linear_end": -3.4}

SCHEMAS = {
    "ch": {
        "entity": ["人物", "Ｏｒｇａｎｉｚａｔｉｏｎ", "时间"],  # full-width name: dbc2sbc makes the prompt ASCII
        "relation": [{"人物": ["出生地", {"公司": ["职位"]}]}, {"评价维度": ["观点词", "情感倾向[正向,负向]"]}],
        "classification": "情感倾向[正向，负向]",
    },
    "en": {
        "entity": ["person", "organization", "Ｔｉｍｅ"],
        "relation": [
            {"person": ["birthplace", {"company": ["position"]}]},
            {"aspect": ["opinion", "sentiment classification [positive, negative]"]},
        ],
        "classification": "sentiment classification [positive, negative]",
    },
}

OWN_TEXTS = [
    "2月8日上午北京冬奥会自由式滑雪女子大跳台决赛中中国选手谷爱凌以188.25分获得金牌！",
    "Steve Jobs was born in San Francisco and co-founded Apple with Steve Wozniak in 1976.",
    "店面干净，很清静，服务员服务热情，性价比很高，发现收银台有排队",
    "Bill Gates is an American business magnate and co-founder of Microsoft Corporation.",
    "（京）２０２３年５月，ＡＢＣ公司ＣＥＯ张三访问了上海。",
    "",
    "   ",
    "The quick brown fox jumps over the lazy dog. " * 4,  # longer than max_seq_len: split into chunks
    "我爱北京天安门。天安门上太阳升。伟大领袖毛主席，指引我们向前进！" * 3,
    "Москва — столица России, город федерального значения.",
    "東京は日本の首都であり、世界最大の都市圏を形成している。",
    "서울은 대한민국의 수도이다.",
    "La Torre Eiffel è stata costruita nel 1889 a Parigi da Gustave Eiffel.",
    "Der Vertrag wurde am 3. Oktober 1990 in Berlin unterzeichnet.",
    "مرحبا بكم في القاهرة، عاصمة مصر.",
    "नमस्ते, मेरा नाम राहुल है और मैं दिल्ली में रहता हूँ।",
    "Hello [SEP] world [CLS] tokens inside text",
    "ｈｅｌｌｏ　ｗｏｒｌｄ！１２３ full-width text",
    "abc123def 92000, 3.14159 and e-mail a.b@c.de",
    "李白（701年－762年），字太白，号青莲居士，唐朝浪漫主义诗人。" * 2,
]


def corpus_texts(n_per_lang: int) -> list[str]:
    """A few lines of each language of the tokenizer corpus, in a fixed order."""
    langs = ["english", "chinese", "japanese", "korean", "persian", "ukrainian", "russian", "italian", "spanish",
             "traditionalchinese", "hindi", "bengali", "turkish", "hebrew", "thai", "indonesian"]  # fmt: skip
    by_lang: dict[str, list[str]] = {}
    with gzip.open(TOKENIZER_DIR.parent / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        for line in f:
            lang, _, text = line.rstrip("\n").partition("\t")
            by_lang.setdefault(lang, []).append(text)
    rng = np.random.default_rng(SEED)
    out = []
    for lang in langs:
        lines = by_lang[lang]
        for i in rng.choice(len(lines), size=n_per_lang, replace=False):
            out.append(lines[i])
    return out


def build_model() -> None:
    if MODEL_DIR.exists():
        shutil.rmtree(MODEL_DIR)
    MODEL_DIR.mkdir(parents=True)
    paddle.seed(SEED)
    model = UIEM(ErnieMConfig(**CONFIG))
    model.eval()
    rng = np.random.default_rng(SEED + 1)
    state = model.state_dict()
    for name in ("linear_start", "linear_end"):
        w = state[f"{name}.weight"]
        w.set_value((rng.standard_normal(w.shape) * HEAD_SCALE).astype("float32"))
        state[f"{name}.bias"].set_value(np.full([1], HEAD_BIAS[name], dtype="float32"))
    model.save_pretrained(str(MODEL_DIR))
    tok = ErnieMTokenizer.from_pretrained(str(TOKENIZER_DIR))
    tok.save_pretrained(str(MODEL_DIR))
    assert tok.vocab_size == CONFIG["vocab_size"] or len(tok.vocab) == CONFIG["vocab_size"], tok.vocab_size


class Recorder:
    """Wraps get_bool_ids_greater_than to keep what Taskflow decodes: the positions that clear the limit."""

    def __init__(self):
        self.calls = []
        self.original = ie_module.get_bool_ids_greater_than

    def __call__(self, probs, limit=0.5, return_prob=False):
        a = np.asarray(probs, dtype=np.float32)  # Taskflow's lists hold float32 values: exact
        rows, cols = np.nonzero(a > limit)
        self.calls.append({"shape": list(a.shape), "rows": rows.tolist(), "cols": cols.tolist(),
                           "probs": [float(a[r, c]) for r, c in zip(rows, cols, strict=True)]})  # fmt: skip
        return self.original(probs, limit=limit, return_prob=return_prob)


def to_json(obj):
    """Taskflow's results hold numpy float64 probabilities; JSON wants plain floats (the same value)."""
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj


def main() -> None:
    build_model()
    texts = OWN_TEXTS + corpus_texts(3)
    cases = []
    short = texts[:24]
    for lang in ("ch", "en"):
        for kind, schema in SCHEMAS[lang].items():
            # relations multiply prompts (one per parent answer): fewer texts keep the fixture small
            case_texts = texts[:20] if kind == "relation" else texts
            cases.append(dict(name=f"{lang}-{kind}", schema=schema, texts=case_texts,
                              options=dict(schema_lang=lang, max_seq_len=64, batch_size=16)))  # fmt: skip
    cases.append(dict(name="ch-relation-small-prob-0.7", schema=SCHEMAS["ch"]["relation"], texts=short[:8],
                      options=dict(schema_lang="ch", max_seq_len=40, batch_size=5, position_prob=0.7)))  # fmt: skip
    cases.append(dict(name="en-entity-split-sentence", schema=SCHEMAS["en"]["entity"], texts=short,
                      options=dict(schema_lang="en", max_seq_len=48, batch_size=16, split_sentence=True)))  # fmt: skip
    cases.append(dict(name="ch-classification-prob-0.3", schema=SCHEMAS["ch"]["classification"], texts=texts,
                      options=dict(schema_lang="ch", max_seq_len=32, batch_size=7, position_prob=0.3)))  # fmt: skip
    # dynamic_max_length: rows of one batch have different lengths, which Taskflow's collate cannot stack
    # unless each batch holds one row.
    cases.append(dict(name="en-entity-dynamic", schema=SCHEMAS["en"]["entity"], texts=short,
                      options=dict(schema_lang="en", max_seq_len=64, batch_size=1,
                                   dynamic_max_length=[24, 40])))  # fmt: skip

    recorder = Recorder()
    ie_module.get_bool_ids_greater_than = recorder
    with tempfile.TemporaryDirectory() as tmp:
        out_cases = []
        for case in cases:
            task_dir = os.path.join(tmp, case["name"])
            shutil.copytree(MODEL_DIR, task_dir)  # Taskflow writes <task_path>/static
            opts = case["options"]
            tf = Taskflow("information_extraction", schema=case["schema"], model="uie-m-base", task_path=task_dir,
                          **opts)  # fmt: skip
            recorder.calls = []
            result = tf(case["texts"])
            n_spans = count_spans(result)
            print(f"{case['name']}: {len(case['texts'])} texts, {n_spans} results, "
                  f"{len(recorder.calls)} decoded batches", file=sys.stderr)  # fmt: skip
            out_cases.append(dict(case, result=to_json(result), decoded=recorder.calls))
    meta = dict(
        format="erniem-np-uie-taskflow/1",
        made_by="scripts/reference/make_uie_fixtures_paddle.py",
        paddlenlp=paddlenlp.__version__,
        paddle=paddle.__version__,
        model="tiny-uiem",
        taskflow_model="uie-m-base",
    )
    payload = json.dumps(dict(meta=meta, cases=out_cases), ensure_ascii=False).encode("utf-8")
    with open(OUT / "taskflow.json.gz", "wb") as raw:  # mtime=0: a rerun writes the same bytes
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(payload)


def count_spans(result) -> int:
    n = 0
    for r in result:
        for items in r.values():
            for item in items:
                n += 1 + count_spans([item["relations"]]) if "relations" in item else 1
    return n


if __name__ == "__main__":
    main()
