# Make the tokenizer fixtures in tests/fixtures/tokenizer/: a multilingual corpus, two small SentencePiece
# models (bpe and unigram, nmt_nfkc) with ERNIE-M style vocab.txt files, the golden input lines, the call
# cases, and -- by running the two reference scripts in their environments -- the reference goldens.
#
# Run from the repository root:
#
#     .venv/bin/python scripts/data/make_tokenizer_fixtures.py all --corpus-wheel /path/to/chatterbot_corpus-1.3.3-*.whl
#
# Steps (each can be run alone: `corpus`, `models`, `lines`, `hf`, `paddle`):
#   corpus  read the YAML dialogs of the PyPI package chatterbot-corpus (BSD-3-Clause; 28 languages; get it with
#           `pip download chatterbot-corpus --no-deps`, or have it installed) plus the project's own lines
#           (Arabic, Thai, emoji, ...) -> corpus.txt.gz (also the benchmark's corpus)
#   models  train bpe/ and unigram/ (SentencePieceTrainer, nmt_nfkc, 4000 pieces) and write vocab.txt:
#           [CLS] [PAD] [SEP] [UNK] (ids 0-3), the pieces from SentencePiece id 3 on, [MASK] last
#   lines   lines.jsonl: 2,000+ golden lines (corpus samples and generated edge cases) and cases.json (calls)
#   hf      .venv-ref-hf/bin/python scripts/reference/make_tokenizer_fixtures_hf.py      -> goldens_hf.jsonl.gz
#   paddle  .venv-ref-paddle/bin/python scripts/reference/make_tokenizer_fixtures_paddle.py -> goldens_paddle.jsonl.gz
#
# Everything is seeded and SentencePiece trains on one thread: a rerun gives the same vocab.txt, lines and goldens
# (the .model files differ only in the temporary training paths SentencePiece records in them).

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
MODELS = ("bpe", "unigram")
VOCAB_SIZE = 4000
SPECIALS_FIRST = ["[CLS]", "[PAD]", "[SEP]", "[UNK]"]

# Lines the project writes itself: scripts chatterbot-corpus lacks or has little of, and the shapes that stress
# normalisation, the post-split of pieces and the special-token splitter.
OWN_LINES = [
    # Arabic, Persian, Urdu, Hebrew
    "مرحبا بك في عالم الذكاء الاصطناعي.",
    "اللغة العربية جميلة جدا، وهي لغة القرآن.",
    "كم عمرك؟ عمري ٢٥ سنة.",
    "أحب القراءة والكتابة في المساء.",
    "هذا هو الاختبار رقم 42 للنظام.",
    "ذهبت إلى السوق واشتريت ثلاث تفاحات.",
    "שלום עולם, מה שלומך היום?",
    # Thai, Lao, Khmer, Myanmar
    "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "ผมชอบกินข้าวผัดกุ้งมากครับ",
    "วันนี้อากาศดีมาก ไปเที่ยวทะเลกันไหม",
    "กรุงเทพมหานคร อมรรัตนโกสินทร์ มหินทรายุธยา",
    "ສະບາຍດີ",
    "សួស្តី",
    "မင်္ဂလာပါ",
    # Devanagari and other Indic scripts
    "नमस्ते, आप कैसे हैं?",
    "मुझे हिंदी में बात करना पसंद है।",
    "भारत की राजधानी नई दिल्ली है।",
    "आज का तापमान 35 डिग्री है।",
    "ক্ষুধার্ত",
    "வணக்கம்",
    "నమస్కారం",
    "ਸਤ ਸ੍ਰੀ ਅਕਾਲ",
    "ગુજરાતી",
    # Cyrillic, Greek, Latin with diacritics
    "Привет, как дела? Всё хорошо, спасибо!",
    "Москва — столица России.",
    "Ще не вмерла України і слава, і воля.",
    "Γειά σου Κόσμε! ΟΔΟΣ ΣΟΦΙΑΣ.",
    "Ünïcödé çàñ bé trïcky: façade, naïve, Ångström, İstanbul.",
    "Straße, Maßstab, STRASSE.",
    "Việt Nam, Hà Nội, Thành phố Hồ Chí Minh.",
    # CJK
    "我爱北京天安门。",
    "今天天气很好，我们去公园散步吧！",
    "《红楼梦》是中国古典四大名著之一。",
    "东京是日本的首都，人口约1400万。",
    "日本語の文章はひらがなとカタカナと漢字を使います。",
    "한국어는 한글로 씁니다. 안녕하세요!",
    "ｶﾀｶﾅ ﾊﾝｶｸ ﾃﾞｽ",
    "【重要】请于2024年3月15日前提交报告；谢谢：张三。",
    # emoji
    "I love pizza 🍕🍕 and sushi 🍣!",
    "👍🏽 great job 🎉🎉🎉",
    "Family: 👨‍👩‍👧‍👦 flags: 🇨🇳🇺🇸🇯🇵",
    "❤️ ☺️ ✌️ ©️ ®️ ™️",
    "😀😃😄😁😆😅😂🤣",
    # full-width characters
    "ｈｅｌｌｏ　ｗｏｒｌｄ！１２３",
    "ＡＢＣ，ＤＥＦ．ＧＨＩ？ＪＫＬ～",
    "全角数字：０１２３４５６７８９",
    "（括号）［方括号］｛花括号｝",
    # digits mixed with letters
    "I was born in 92000, and this is falsé.",
    "abc123def456ghi",
    "COVID-19 and H1N1 and 5G and mp3 and x86_64",
    "Call me at +1-800-555-0199 or 010-12345678.",
    "Version 3.10.12 released on 2023-06-06T12:00:00Z.",
    "٣٤٥ and ४५६ and ๗๘๙ and ①②③ and ½ ¾ ⅓",
    "R2D2 C3PO 3D 4K 1080p 60fps",
]


# ---------------------------------------------------------------------------------------------------- corpus
def _chatterbot_lines(wheel: str | None) -> list[tuple[str, str]]:
    """(language, text) pairs from chatterbot-corpus, read from its wheel or its installed data folder."""
    import yaml

    files: list[tuple[str, bytes]] = []
    if wheel:
        with zipfile.ZipFile(wheel) as z:
            for name in sorted(z.namelist()):
                if name.startswith("chatterbot_corpus/data/") and name.endswith(".yml"):
                    files.append((name, z.read(name)))
    else:
        import chatterbot_corpus

        base = os.path.join(os.path.dirname(chatterbot_corpus.__file__), "data")
        for name in sorted(glob.glob(os.path.join(base, "*", "*.yml"))):
            files.append((name, Path(name).read_bytes()))
    if not files:
        raise SystemExit("no chatterbot-corpus YAML files found")
    out = []
    for name, data in files:
        lang = name.replace("\\", "/").split("/")[-2]
        d = yaml.safe_load(data.decode("utf-8"))
        for conv in (d or {}).get("conversations") or []:
            for s in conv:
                if isinstance(s, str):
                    out.append((lang, " ".join(s.split("\n")).strip()))
    return out


def step_corpus(args) -> None:
    pairs = _chatterbot_lines(args.corpus_wheel)
    seen, lines = set(), []
    for lang, s in pairs + [("own", s) for s in OWN_LINES]:
        if s and s not in seen:
            seen.add(s)
            lines.append(f"{lang}\t{s}")
    OUT.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(OUT / "corpus.txt.gz", "wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
    print(f"corpus.txt.gz: {len(lines)} unique lines (language<TAB>text)")


def read_corpus() -> list[tuple[str, str]]:
    with gzip.open(OUT / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------------- models
def step_models(args) -> None:
    import sentencepiece as spm

    texts = [t for _, t in read_corpus()]
    with tempfile.TemporaryDirectory() as tmp:
        train = os.path.join(tmp, "train.txt")
        with open(train, "w", encoding="utf-8") as f:
            f.write("\n".join(texts) + "\n")
        for model_type in MODELS:
            d = OUT / model_type
            d.mkdir(parents=True, exist_ok=True)
            prefix = os.path.join(tmp, model_type)
            spm.SentencePieceTrainer.train(
                input=train, model_prefix=prefix, model_type=model_type, vocab_size=VOCAB_SIZE,
                normalization_rule_name="nmt_nfkc", character_coverage=0.9995,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # XLM-R's layout: <unk> <s> </s>
                num_threads=1, seed_sentencepiece_size=200000, minloglevel=2,
            )  # fmt: skip
            data = Path(prefix + ".model").read_bytes()
            (d / "sentencepiece.bpe.model").write_bytes(data)  # ERNIE-M's file name, whatever the model type
            sp = spm.SentencePieceProcessor(model_proto=data)
            pieces = [sp.id_to_piece(i) for i in range(3, sp.get_piece_size())]
            vocab = SPECIALS_FIRST + pieces + ["[MASK]"]
            (d / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
            special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                       "mask_token": "[MASK]"}  # fmt: skip
            (d / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
            cfg = {"tokenizer_class": "ErnieMTokenizer", "do_lower_case": False, "model_max_length": 512,
                   **special}  # fmt: skip
            (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
            print(f"{model_type}/: {sp.get_piece_size()} pieces, vocab.txt {len(vocab)} lines, {len(data)} bytes")


# ---------------------------------------------------------------------------------------------------- lines
POOLS = {
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后",
    "thai": "กขคงจฉชซญดตถทธนบปผพฟภมยรลวศษสหอฮะาำิีึืุูเแโใไ่้๊๋็์",
    "deva": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह्ािीुूेैोौंः।",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهويءآأؤإئةى،؟٠١٢٣٤٥٦٧٨٩",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ",
    "emoji": "😀😂🤣😍🙏👍🎉🔥💯🍕🚀🌍❤✨🐍👨‍💻🏳️‍🌈🇩🇪",
    "fullwidth": "ＡＢＣＤＥＦＧａｂｃｄｅｆｇ０１２３４５６７８９！？，．：；～（）＠＃",
    "digits": "0123456789",
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "punct": ",;:.?!~，；：。？！《》【】-_/'\"()[]{}@#$%^&*+=<>|\\`",
    "space": [" ", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2009", "\u200b", "   \t "],
    "special": ["[SEP]", "[CLS]", "[PAD]", "[UNK]", "[MASK]", "[sep]", "[Sep]", "[SEP][SEP]", "[ SEP ]", "[SE P]"],
    "odd": ["½", "ﬁ", "㍿", "Ⅻ", "①", "ｶﾞ", "e\u0301", "ǅ", "ß", "İ", "Σ", "ΟΔΟΣ", "ﬀ", "™", "…", "‼", "№", "㎏",
            "\u00ad", "\ufeff", "\u2028", "\x07", "\x1c", "\x00", "▁", "▁▁", "～", "〜", "·", "ﾟ", "Å", "K", "µ", "ſ"],
}  # fmt: skip

EDGE_LINES = [
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "\u3000",
    "   \t\n  ",
    "\u200b",
    "\ufeff",
    "[SEP]",
    "[CLS]",
    "[PAD]",
    "[UNK]",
    "[MASK]",
    "[SEP][SEP]",
    " [SEP] ",
    "a[SEP]b",
    "hello [SEP] world",
    "HELLO [SEP] World",
    "[CLS] start and end [SEP]",
    "[MASK] is masked",
    "x[MASK]y[UNK]z",
    "[sep] is not special",
    "[SEP] 我爱北京 [SEP] 123",
    "[[SEP]]",
    "[SEP]]",
    "[[CLS]",
    "[UNK][UNK][UNK]",
    "[PAD] [PAD] text [PAD]",
    "Hello World",
    "The quick brown fox jumps over the lazy dog.",
    "abc123def",
    "I was born in 92000, and this is falsé.",
    "▁",
    "▁▁",
    "a▁",
    "▁a",
    "a ▁",
    "a▁b",
    "▁1",
    "hello ▁",
    "x ▁ y",
    "▁ [SEP]",
    "a▁[SEP]",
    "1▁",
    "我▁",
    "ΟΔΟΣ ΣΟΦΙΑΣ",
    "İstanbul İZMİR",
    "ǅungla",
    "STRASSE Straße",
    "ＡＢＣ ｄｅｆ",
    "ÅNGSTRÖM",
    "ſ",
    "½ cup",
    "ﬁnal ﬂow",
    "㍿ ㎏ №",
    "①②③",
    "Ⅻ o'clock",
    "e\u0301te\u0301",
    "ｶﾞｷﾞｸﾞ",
    "ＨＥＬＬＯ～",
    "a\tb\nc\r\nd",
    "a  b   c    d",
    "\x00\x01\x02",
    "a\x07b",
    "soft\u00adhyphen",
    "line\u2028sep",
    "～～～",
    "~~~",
    "!?!?",
    "。。。",
    "，，",
    "《书》【注】",
    "...",
    "1.2.3",
    "1,000,000",
    "3:45pm",
    "a.b.c",
    "0",
    "00",
    "007",
    "x1y2z3",
    "123abc",
    "abc123",
    "١٢٣abc",
    "٣٤٥",
    "४५६",
    "๗๘๙",
    "²³",
    "x²",
    "H₂O",
    "10¹⁰",
    "🍕",
    "🍕🍕🍕",
    "👨‍👩‍👧",
    "🇨🇳",
    "a🍕b",
    "1🍕2",
    "👍🏽",
    "a" * 300,
    "ab " * 100,
    "我" * 200,
    "1" * 120,
    " ".join(["token"] * 150),
]


def _generated_lines(rng: random.Random, n: int) -> list[str]:
    """Random mixtures of the pools: 1-6 chunks, each 1-12 draws from one pool, joined by nothing or a space."""
    names = list(POOLS)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 6)):
            pool = POOLS[rng.choice(names)]
            parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 12))))
        sep = rng.choice(["", " ", " ", "  "])
        line = sep.join(parts)
        if rng.random() < 0.3:
            line = line.upper()
        out.append(line)
    return out


def step_lines(args) -> None:
    rng = random.Random(20240601)
    corpus = read_corpus()
    by_lang: dict[str, list[str]] = {}
    for lang, s in corpus:
        by_lang.setdefault(lang, []).append(s)
    sampled = []
    for lang in sorted(by_lang):  # up to 60 lines of each language, all of the project's own
        pool = by_lang[lang]
        k = len(pool) if lang == "own" else min(60, len(pool))
        sampled += rng.sample(pool, k)
    upper = [s.upper() for s in rng.sample(sampled, 120)]  # upper-case, for do_lower_case
    gen = _generated_lines(rng, 600)
    lines, seen = [], set()
    for s in EDGE_LINES + sampled + upper + gen:
        if s not in seen:
            seen.add(s)
            lines.append(s)
    with open(OUT / "lines.jsonl", "w", encoding="utf-8") as f:
        for s in lines:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    cases = make_cases(lines, rng)
    with open(OUT / "cases.json", "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"lines.jsonl: {len(lines)} lines; cases.json: {len(cases)} call cases")


def make_cases(lines: list[str], rng: random.Random) -> list[dict]:
    """Calls of `tokenizer(text, text_pair, **kwargs)` run by both references (and by the tests on ours).

    Every case passes return_attention_mask explicitly (the defaults differ; the tests check ours separately).
    """
    words = [s for s in lines if 0 < len(s) < 200]
    longish = [s for s in lines if 40 <= len(s) < 400]
    cases = []

    def add(name, text, text_pair=None, flavors=("hf", "paddle"), **kw):
        kw.setdefault("return_attention_mask", True)
        cases.append({"name": name, "text": text, "text_pair": text_pair, "kwargs": kw, "flavors": list(flavors)})

    for i in range(12):
        batch = rng.sample(words, 5)
        add(f"batch_longest_{i}", batch, padding="longest", return_token_type_ids=True,
            return_special_tokens_mask=True)  # fmt: skip
        add(f"batch_max_length_{i}", batch, padding="max_length", truncation=True, max_length=12 + i)
        a, b = rng.sample(words, 5), rng.sample(words, 5)
        for strat in ("longest_first", "only_first", "only_second"):
            add(f"pairs_{strat}_{i}", a, b, padding=True, truncation=strat, max_length=20 + 3 * i,
                return_token_type_ids=True, return_special_tokens_mask=True)  # fmt: skip
        add(f"pair_single_{i}", a[0], b[0], return_token_type_ids=True, return_special_tokens_mask=True)
        add(f"single_trunc_{i}", rng.choice(longish), truncation=True, max_length=8 + i)
        add(f"single_plain_{i}", rng.choice(words), return_attention_mask=False)
        add(f"no_special_{i}", rng.sample(words, 3), add_special_tokens=False, padding=True)
        add(f"max_length_no_trunc_{i}", rng.sample(words, 3), padding="max_length", max_length=64)
        add(f"pad_multiple_{i}", rng.sample(words, 4), padding=True, pad_to_multiple_of=8)
        # Paddle only: position ids and offsets, with and without truncation (offsets are truncated alike)
        add(f"pd_offsets_{i}", rng.sample(words, 4), padding=True, return_position_ids=True,
            return_offsets_mapping=True, flavors=("paddle",))  # fmt: skip
        c, d = rng.sample(longish, 3), rng.sample(longish, 3)
        add(f"pd_pair_offsets_trunc_{i}", c, d, padding="max_length", truncation="only_second", max_length=40,
            return_position_ids=True, return_offsets_mapping=True, flavors=("paddle",))  # fmt: skip
        # UIE-M's call (Taskflow): prompt + text, max_seq_len / pad_to_max_seq_len aliases, position ids, offsets
        add(
            f"pd_uiem_{i}",
            [rng.choice(words)[:10]],
            [rng.choice(longish)],
            truncation=True,
            max_seq_len=48,
            pad_to_max_seq_len=True,
            return_position_ids=True,
            return_offsets_mapping=True,
            flavors=("paddle",),
        )
        # Paddle's doc-stride windows (a batch of pairs with stride > 0): stride is the step between windows
        add(f"pd_doc_stride_{i}", [rng.choice(words)[:20] for _ in range(2)], rng.sample(longish, 2),
            max_length=24 + i, stride=5 + i, padding=True, flavors=("paddle",))  # fmt: skip
        # HF slow: overflowing_tokens of a truncated single text / only_second pair (stride = overlap)
        add(f"hf_overflow_{i}", rng.choice(longish), truncation=True, max_length=10 + i, stride=3,
            return_overflowing_tokens=True, flavors=("hf",))  # fmt: skip
        add(f"hf_overflow_pair_{i}", rng.choice(words)[:20], rng.choice(longish), truncation="only_second",
            max_length=20 + i, stride=4, return_overflowing_tokens=True, flavors=("hf",))  # fmt: skip
    return cases


# ---------------------------------------------------------------------------------------------------- references
def step_reference(name: str) -> None:
    venv = ROOT / (".venv-ref-hf" if name == "hf" else ".venv-ref-paddle")
    script = ROOT / "scripts" / "reference" / f"make_tokenizer_fixtures_{name}.py"
    print(f"running {script.name} in {venv.name} ...", flush=True)
    subprocess.run([str(venv / "bin" / "python"), str(script)], check=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("step", choices=["all", "corpus", "models", "lines", "hf", "paddle"])
    ap.add_argument("--corpus-wheel", help="path to a chatterbot_corpus wheel (else the installed package)")
    args = ap.parse_args()
    steps = ["corpus", "models", "lines", "hf", "paddle"] if args.step == "all" else [args.step]
    for s in steps:
        if s in ("hf", "paddle"):
            step_reference(s)
        else:
            {"corpus": step_corpus, "models": step_models, "lines": step_lines}[s](args)


if __name__ == "__main__":
    sys.exit(main())
