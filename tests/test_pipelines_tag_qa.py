"""The ``tag`` and ``qa`` pipelines (erniem_np/pipelines/tag.py, qa.py) and their subcommands.

Random-weight checkpoints are built here (``erniem_np.testing.random_weights``, hidden 32, 2 layers, the
4,002-token BPE tokenizer fixture copied beside them), so every test runs without the network.

Without transformers: offsets and words are checked against the text, batched runs against one-by-one runs in
both flavors, windows of long texts against truncation, and QA scores against a brute-force decoding written
here (every span, its probability product, the minimum empty-answer score over windows).

With transformers (4.46.3, CI's ``reference`` extra), HF's own pipeline code decides:

- tag, aggregation none and simple: HF's ``pipeline("token-classification")`` run end to end with HF's
  ErnieM model and HF's slow tokenizer, given our tokenizer's offsets through its ``offset_mapping=``
  argument (HF's ErnieM tokenizer has none of its own); entity, index, word, start, end equal, scores 1e-5.
- tag, first / average / max: HF's pipeline refuses them for a slow tokenizer, so HF's ``preprocess`` (with
  our offsets) -> ``forward`` -> ``postprocess(aggregation_strategy=...)`` are called one by one: the same code
  a fast tokenizer's run goes through after tokenization.
- tag with a stride: HF's ``postprocess`` fed one output per window (HF's model on our windows' ids, our
  offsets), which is how its fast path merges windows (``aggregate_overlapping_entities``).
- qa: HF's QA pipeline cannot run with a slow tokenizer here (its SQuAD road crashes under NumPy 2, before
  the model), so HF's fast-road ``postprocess`` decides, fed HF's model logits on our windows, our p_mask,
  and an encoding object that answers ``offsets`` / ``token_to_word`` / ``word_to_chars`` from our offsets
  and word ids (ErnieM has no fast tokenizer, so the word boundaries are ours). Compared: scores (1e-5),
  start, end, answer, and the number and order of answers, over top_k, max_answer_len, windows, impossible
  answers and align_to_words. The first window's ids and p_mask are also checked against HF's slow
  tokenizer (token types and special-token mask), and ``select_starts_ends`` / ``decode_spans`` are run
  side by side with HF's on identical arrays (exact equality, including the [CLS] quirk at large top_k).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from erniem_np import ErnieMConfig
from erniem_np.cli import main as cli
from erniem_np.model import ErnieMForQuestionAnswering, ErnieMForTokenClassification
from erniem_np.pipelines import qa as qa_mod
from erniem_np.pipelines import tag as tag_mod
from erniem_np.pipelines.qa import QuestionAnswerer
from erniem_np.pipelines.tag import Tagger
from erniem_np.testing import random_weights, split_head

HERE = os.path.dirname(__file__)
TOKENIZER = os.path.join(HERE, "fixtures", "tokenizer", "bpe")
TOKENIZER_FILES = ("sentencepiece.bpe.model", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
CONFIG = dict(vocab_size=4002, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=130)  # fmt: skip
# "LOC" has no B-/I- prefix: HF's get_tag reads it as I-LOC, so it groups with I-LOC.
LABELS = ["O", "B-PER", "I-PER", "LOC", "I-LOC"]

TEXTS = [
    "Hello World, this is 2024 北京欢迎你 Zürich!",
    "The quick brown fox jumps over the lazy dog.",
    "I was born in 92000, and this is falsé.",
    "Angela Merkel besuchte Paris am 3. Mai.",
    "x ▁ y  a\tb\nc 🍕 emoji ｈｅｌｌｏ　ｗｏｒｌｄ！１２３",
    "我爱北京天安门。",
    "[SEP] in text, [UNK] too",
    "a",
]
CONTEXT = ("The quick brown fox jumps over New York City. Zürich 北京欢迎你 ok. Angela Merkel visited Paris "
           "on the 3rd of May, 2024, and then flew home.")  # fmt: skip


# =================================================================================================== fixtures
def _build(out, head: str, seed: int) -> str:
    weights = split_head(random_weights(CONFIG, seed), head)
    if head == "token_cls":
        model = ErnieMForTokenClassification(ErnieMConfig(**CONFIG, id2label=dict(enumerate(LABELS))), weights)
    else:
        model = ErnieMForQuestionAnswering(ErnieMConfig(**CONFIG, num_labels=2), weights)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(TOKENIZER, name), out)
    return str(out)


@pytest.fixture(scope="module")
def tag_ckpt(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("tag"), "token_cls", seed=11)


@pytest.fixture(scope="module")
def qa_ckpt(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("qa"), "qa", seed=12)


@pytest.fixture(scope="module")
def taggers(tag_ckpt):
    return {agg: Tagger(tag_ckpt, aggregation_strategy=agg, ignore_labels=()) for agg in tag_mod.AGGREGATIONS}


@pytest.fixture(scope="module")
def answerer(qa_ckpt):
    return QuestionAnswerer(qa_ckpt)


def assert_same_entities(ours, theirs, what):
    """Equal keys, labels, words, offsets and indices; scores within 1e-5."""
    assert len(ours) == len(theirs), f"{what}: {len(ours)} entities here, {len(theirs)} in HF\n{ours}\n{theirs}"
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert list(a) == list(b), f"{what}: entity {k} keys {list(a)} != HF {list(b)}"
        for key in a:
            if key == "score":
                assert abs(a[key] - float(b[key])) <= 1e-5, f"{what}: entity {k} score {a[key]} != HF {b[key]}"
            else:
                assert a[key] == b[key], f"{what}: entity {k} {key} {a[key]!r} != HF {b[key]!r}"


def assert_same_answers(ours, theirs, what):
    """QA results (a dict or a list of dicts) equal, scores within 1e-5."""
    assert isinstance(ours, list) == isinstance(theirs, list), f"{what}: {ours} vs {theirs}"
    assert_same_entities(ours if isinstance(ours, list) else [ours], theirs if isinstance(theirs, list)
                         else [theirs], what)  # fmt: skip


# =================================================================================================== tag
def test_tag_offsets_point_into_the_text_and_words_are_the_tokens(taggers):
    tok = taggers["none"].tokenizer
    for text in TEXTS:
        enc = tok(text, return_offsets_mapping=True)
        tokens = tok.convert_ids_to_tokens(enc["input_ids"])
        entities = taggers["none"](text)
        assert len(entities) == len(tokens) - 2  # every token but [CLS] and [SEP] (ignore_labels=())
        for e in entities:
            assert tuple(enc["offset_mapping"][e["index"]]) == (e["start"], e["end"])
            assert e["word"] == (text[e["start"] : e["end"]] if tokens[e["index"]] == "[UNK]" else tokens[e["index"]])
            assert e["entity"] in LABELS and 0 < e["score"] <= 1
        for agg in ("simple", "first", "average", "max"):
            groups = taggers[agg](text)
            starts = [g["start"] for g in groups]
            assert starts == sorted(starts), agg
            for g in groups:
                assert 0 <= g["start"] <= g["end"] <= len(text) and g["entity_group"] in ("O", "PER", "LOC"), g


def test_tag_word_aggregations_give_one_label_per_word(taggers):
    """first/average/max never split a word (a token with no space among the character before it and its first
    one continues the word); simple may."""
    text = TEXTS[0]
    for agg in ("first", "average", "max"):
        groups = taggers[agg](text)
        for a, b in zip(groups, groups[1:], strict=False):
            # a boundary between groups is always at a word start
            assert b["start"] == 0 or " " in text[b["start"] - 1 : b["start"] + 1], (agg, a, b)


def test_tag_batched_equals_one_by_one_in_both_flavors(tag_ckpt):
    for flavor in ("hf", "paddle"):
        t = Tagger(tag_ckpt, aggregation_strategy="simple", ignore_labels=(), flavor=flavor, batch_size=3)
        batched = t(TEXTS)
        for text, got in zip(TEXTS, batched, strict=True):
            assert_same_entities(got, t(text), f"{flavor} {text!r}")


def test_tag_ignore_labels(tag_ckpt, taggers):
    every = taggers["none"](TEXTS[1])
    default = Tagger(tag_ckpt, aggregation_strategy="none")(TEXTS[1])
    assert default == [e for e in every if e["entity"] != "O"] and len(default) < len(every)
    no_per = Tagger(tag_ckpt, aggregation_strategy="simple", ignore_labels=("PER", "O"))(TEXTS[1])
    assert all(g["entity_group"] == "LOC" for g in no_per)


def test_tag_stride_covers_long_texts_and_changes_nothing_for_short_ones(tag_ckpt):
    long_text = " ".join(TEXTS[:4]) * 2
    cut = Tagger(tag_ckpt, ignore_labels=(), max_length=24)(long_text)
    windows = Tagger(tag_ckpt, ignore_labels=(), max_length=24, stride=6)(long_text)
    assert max(e["end"] for e in cut) < len(long_text) // 3  # truncation: only the start is tagged
    assert max(e["end"] for e in windows) == len(long_text.rstrip())  # windows: to the end
    starts = [e["start"] for e in windows]
    assert starts == sorted(starts)
    for text in TEXTS[:3]:
        assert_same_entities(Tagger(tag_ckpt, stride=6)(text), Tagger(tag_ckpt)(text), text)


def _undeclared(ckpt, out):
    """A copy of a checkpoint whose config.json names no architecture: only the weights tell its head."""
    shutil.copytree(ckpt, out)
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    del config["architectures"]
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return str(out)


def test_tag_errors_name_the_problem(tag_ckpt, qa_ckpt, tmp_path):
    with pytest.raises(ValueError, match="aggregation_strategy must be one of"):
        Tagger(tag_ckpt, aggregation_strategy="mean")
    with pytest.raises(ValueError, match='aggregation_strategy="none" cannot be used with stride'):
        Tagger(tag_ckpt, aggregation_strategy="none", stride=4)
    with pytest.raises(ValueError, match="stride must be in"):
        Tagger(tag_ckpt, stride=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="tag needs a checkpoint with a token-classification head"):
            Tagger(_undeclared(qa_ckpt, tmp_path / "qa"))
    with pytest.raises(ValueError, match="needs an ErnieMForTokenClassification checkpoint; its config.json "
                       "declares ErnieMForQuestionAnswering"):  # fmt: skip
        Tagger(qa_ckpt)
    seq_cls = os.path.join(HERE, "fixtures", "checkpoints", "hf-seq_cls-safetensors")  # the same "classifier" names
    with pytest.raises(ValueError, match="config.json declares ErnieMForSequenceClassification"):
        Tagger(seq_cls)
    with pytest.raises(TypeError, match="text 1 must be a str"):
        Tagger(tag_ckpt)(["ok", 3])
    assert Tagger(tag_ckpt)([]) == []


# =================================================================================================== qa
def _brute_force(answerer, question, context, max_answer_len, max_seq_len, doc_stride):
    """Every span of every window scored from scratch: (best span score, empty-answer score)."""
    s = answerer._settings({"max_seq_len": max_seq_len, "doc_stride": doc_stride})
    best, null = 0.0, np.inf
    for w in answerer._windows(0, question, context, s):
        ids = np.array([w["input_ids"]])
        out = answerer.model(input_ids=ids, attention_mask=np.ones_like(ids))
        can = np.array([m == 0 for m in w["p_mask"]])  # context tokens and [CLS]
        probs = []
        for logits in (out.start_logits[0], out.end_logits[0]):
            x = np.where(can, logits.astype(np.float64), -10000.0)
            p = np.exp(x - x.max())
            probs.append(p / p.sum())
        null = min(null, probs[0][0] * probs[1][0])
        for i in range(1, len(ids[0])):
            for j in range(i, min(len(ids[0]), i + max_answer_len)):
                if can[i] and can[j]:
                    best = max(best, probs[0][i] * probs[1][j])
    return best, null


@pytest.mark.parametrize("max_seq_len, doc_stride", [(None, None), (24, 6), (32, 0)])
def test_qa_best_answer_matches_a_brute_force_decoding(answerer, max_seq_len, doc_stride):
    question = "Who visited Paris?"
    best, null = _brute_force(answerer, question, CONTEXT, 15, max_seq_len, doc_stride)
    got = answerer(question=question, context=CONTEXT, max_seq_len=max_seq_len, doc_stride=doc_stride, top_k=3)
    assert abs(got[0]["score"] - best) <= 1e-6 * max(1.0, best / 1e-3)
    assert [a["score"] for a in got] == sorted((a["score"] for a in got), reverse=True)
    for a in got:
        assert a["answer"] == CONTEXT[a["start"] : a["end"]] and a["answer"]
    with_null = answerer(question=question, context=CONTEXT, max_seq_len=max_seq_len, doc_stride=doc_stride,
                         top_k=100_000, handle_impossible_answer=True)  # every span: the empty one is there  # fmt: skip
    empty = [a for a in with_null if a["answer"] == "" and a["start"] == a["end"] == 0]
    assert empty[0]["score"] == pytest.approx(null, rel=1e-5)


def test_qa_answers_respect_max_answer_len_and_words(answerer):
    tok = answerer.tokenizer
    for n in (1, 2, 4):
        got = answerer(question="where?", context=CONTEXT, top_k=5, max_answer_len=n, align_to_words=False)
        for a in got:
            inner = [o for o in tok(CONTEXT, return_offsets_mapping=True)["offset_mapping"][1:-1]
                     if a["start"] <= o[0] and o[1] <= a["end"]]  # fmt: skip
            assert 1 <= len(inner) <= n, (n, a)
    words = answerer(question="where?", context=CONTEXT, top_k=5)
    for a in words:  # widened to whole words: starts after whitespace (or at 0), ends before it (or at the end)
        assert a["start"] == 0 or CONTEXT[a["start"] - 1].isspace(), a
        assert a["end"] == len(CONTEXT) or CONTEXT[a["end"]].isspace(), a


def test_qa_batches_and_broadcasting(qa_ckpt, answerer):
    questions = ["Who visited Paris?", "When?", "Where is Zürich?"]
    single = [answerer(question=q, context=CONTEXT, max_seq_len=32, doc_stride=8) for q in questions]
    small_batches = QuestionAnswerer(qa_ckpt, batch_size=2, max_seq_len=32, doc_stride=8)
    for got, exp in zip(small_batches(question=questions, context=CONTEXT), single, strict=True):
        assert_same_answers(got, exp, "batched")
    both = answerer(question=questions[0], context=[CONTEXT, CONTEXT[:40]])
    assert len(both) == 2
    assert_same_answers(both[0], answerer(question=questions[0], context=CONTEXT), "broadcast")
    paddle = QuestionAnswerer(qa_ckpt, flavor="paddle", batch_size=2, max_seq_len=32, doc_stride=8)
    got = paddle(question=questions, context=CONTEXT)
    for q, g in zip(questions, got, strict=True):
        assert_same_answers(g, paddle(question=q, context=CONTEXT), "paddle flavor")


def test_qa_windows_cover_the_context_with_the_words_of_the_whole_context(answerer):
    """Each window's context tokens are a slice of the context's own tokens (same offsets), neighbours share
    doc_stride tokens, the last reaches the end, and word ids follow whitespace."""
    tok = answerer.tokenizer
    question, context = "Who?", CONTEXT + " " + TEXTS[0]
    full = tok(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    words = qa_mod.word_ids(context, full)
    for k in range(1, len(full)):
        gap = context[full[k - 1][1] : full[k][0]]
        assert (words[k] == words[k - 1] + 1) == any(c.isspace() for c in gap), (k, gap)
    s = answerer._settings({"max_seq_len": 20, "doc_stride": 5})
    windows = answerer._windows(0, question, context, s)
    assert len(windows) > 3
    at = 0
    for n, w in enumerate(windows):
        ctx = [t for t, p in enumerate(w["p_mask"]) if p == 0 and t > 0]  # the context's tokens
        assert len(w["input_ids"]) <= 20 and ctx == list(range(ctx[0], len(w["input_ids"]) - 1))
        assert [tuple(w["offsets"][t]) for t in ctx] == [tuple(o) for o in full[at : at + len(ctx)]], n
        assert [w["words"][t] for t in ctx] == words[at : at + len(ctx)]
        at += len(ctx) - 5
    assert at + 5 == len(full)


def test_streaming_calls_match_the_batch_calls(taggers, answerer):
    streamed = list(taggers["simple"].iter_tag(iter(TEXTS), chunk_size=3))
    for text, got, exp in zip(TEXTS, streamed, taggers["simple"](TEXTS), strict=True):
        assert_same_entities(got, exp, text)  # other batch partners: equal to fp32 rounding
    pairs = [("Who?", CONTEXT), ("What?", TEXTS[0])]
    for got, exp in zip(answerer.iter_answer(iter(pairs), chunk_size=1), answerer.answer(pairs), strict=True):
        assert_same_answers(got, exp, "iter_answer")


def test_qa_errors_name_the_problem(answerer, tag_ckpt, tmp_path):
    with pytest.raises(ValueError, match="`question` cannot be empty"):
        answerer(question="", context="x")
    with pytest.raises(ValueError, match="is larger than `max_seq_len`"):
        answerer(question="a", context="b", max_seq_len=16, doc_stride=17)
    with pytest.raises(ValueError, match="max_seq_len must be in"):
        answerer(question="a", context="b", max_seq_len=1000)
    with pytest.raises(ValueError, match="leaves no room for the context"):
        answerer(question=CONTEXT, context=CONTEXT, max_seq_len=16, doc_stride=2)
    with pytest.raises(ValueError, match="must be smaller than the"):
        answerer(question="Who?", context=CONTEXT, max_seq_len=16, doc_stride=12)
    with pytest.raises(ValueError, match="top_k parameter should be >= 1"):
        answerer(question="a", context="b", top_k=0)
    with pytest.raises(ValueError, match="2 questions and 3 contexts"):
        answerer(question=["a", "b"], context=["c", "d", "e"])
    with pytest.raises(TypeError, match="unexpected keyword arguments: topk"):
        answerer(question="a", context="b", topk=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="qa needs a checkpoint with a question-answering head"):
            QuestionAnswerer(_undeclared(tag_ckpt, tmp_path / "tag"))
    paddle_token_cls = os.path.join(HERE, "fixtures", "checkpoints", "paddle-token_cls")
    with pytest.raises(ValueError, match="qa needs an ErnieMForQuestionAnswering checkpoint; its config.json "
                       "declares ErnieMForTokenClassification"):  # fmt: skip
        QuestionAnswerer(paddle_token_cls)


# =================================================================================================== CLI
def test_cli_tag(tag_ckpt, capsys, monkeypatch, tmp_path):
    assert cli(["tag", tag_ckpt, TEXTS[0], TEXTS[1], "--json", "--ignore-labels"]) == 0
    lines = json.loads(capsys.readouterr().out)  # one array, an object per text
    expected = Tagger(tag_ckpt, ignore_labels=())(TEXTS[:2])
    assert [x["text"] for x in lines] == TEXTS[:2]
    for line, exp in zip(lines, expected, strict=True):
        assert_same_entities(line["entities"], exp, line["text"])
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXTS[2] + "\n\n" + TEXTS[3] + "\n"))
    assert cli(["tag", tag_ckpt, "--aggregation", "none"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(TEXTS[2] + "\n") and f"\n{TEXTS[3]}\n" in out and "token 1" in out
    (tmp_path / "in.jsonl").write_text(json.dumps({"body": TEXTS[5]}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert cli(["tag", tag_ckpt, "-i", str(tmp_path / "in.jsonl"), "--field", "body", "--json"]) == 0
    assert [x["text"] for x in json.loads(capsys.readouterr().out)] == [TEXTS[5]]


def test_cli_qa(qa_ckpt, answerer, capsys, monkeypatch, tmp_path):
    expected = answerer(question="Who?", context=CONTEXT, top_k=2, max_seq_len=32, doc_stride=8)
    args = ["qa", qa_ckpt, "-q", "Who?", "-c", CONTEXT, "--top-k", "2", "--max-seq-len", "32", "--doc-stride", "8"]
    assert cli(args + ["--json"]) == 0
    [line] = json.loads(capsys.readouterr().out)
    assert line["question"] == "Who?"
    assert_same_answers(line["answers"], expected, "cli --json")
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("Q: Who?\n") and f"[{expected[0]['start']}:{expected[0]['end']}]" in out
    (tmp_path / "ctx.txt").write_text(CONTEXT, encoding="utf-8")
    assert cli(["qa", qa_ckpt, "-q", "Who?", "--context-file", str(tmp_path / "ctx.txt"), "--json"]) == 0
    assert_same_answers(json.loads(capsys.readouterr().out)[0]["answers"], [answerer(question="Who?", context=CONTEXT)],
                        "--context-file")  # fmt: skip
    pairs = [{"question": "Who?", "context": CONTEXT}, {"question": "When?", "context": CONTEXT[:60]}]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(p) + "\n" for p in pairs)))
    assert cli(["qa", qa_ckpt, "--json", "--handle-impossible-answer", "--no-align-to-words"]) == 0
    lines = json.loads(capsys.readouterr().out)
    for line, p in zip(lines, pairs, strict=True):
        exp = answerer(**p, handle_impossible_answer=True, align_to_words=False)
        assert line["question"] == p["question"]
        assert_same_answers(line["answers"], exp if isinstance(exp, list) else [exp], "stdin jsonl")


def test_cli_help_documents_exit_codes(capsys):
    for command in ("tag", "qa"):
        with pytest.raises(SystemExit) as exit_info:
            cli([command, "--help"])
        assert exit_info.value.code == 0
        assert "exit codes: 0 success; 1 bad input or checkpoint" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli(["qa"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    "argv, stdin, message",
    [
        (["tag", "{tag}", "--input", "{tmp}/missing.txt"], None, "missing.txt: no such file"),
        (["tag", "{tag}"], "", "the input is empty"),
        (
            ["tag", "{qa}", "text"],
            None,
            "tag needs an ErnieMForTokenClassification checkpoint; its config.json declares ErnieMForQuestionAnswering",
        ),
        (["tag", "{tmp}/nowhere", "text"], None, "no such checkpoint directory or file"),
        (["tag", "{tag}", "x", "--aggregation", "none", "--stride", "2"], None, "cannot be used with stride"),
        (["qa", "{tag}", "-q", "a", "-c", "b"], None, "qa needs an ErnieMForQuestionAnswering checkpoint"),
        (["qa", "{qa}", "-q", "a"], None, "--question needs --context"),
        (["qa", "{qa}", "-q", " ", "-c", "b"], None, "the question is empty"),
        (["qa", "{qa}"], "not json\n", "input line 1: not valid JSON"),
        (["qa", "{qa}"], '{"question": "a"}\n', 'needs an object with "question" and "context"'),
        (["qa", "{qa}", "-q", "a", "--context-file", "{tmp}/none.txt"], None, "none.txt: no such file"),
    ],
)
def test_cli_user_errors_are_one_line(tag_ckpt, qa_ckpt, tmp_path, capsys, monkeypatch, argv, stdin, message):
    argv = [a.format(tag=tag_ckpt, qa=qa_ckpt, tmp=tmp_path) for a in argv]
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("erniem-np: error: ") and err.count("\n") == 1 and message in err, err


def test_cli_a_checkpoint_without_the_head_gets_one_line_and_no_warning(qa_ckpt, tmp_path, capsys):
    """The loader warns about the QA weights a token classifier does not use; with the error, only the error."""
    assert cli(["tag", _undeclared(qa_ckpt, tmp_path / "qa"), "text"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tag needs a checkpoint with a token-classification head" in err, err


# =================================================================================================== HF
@pytest.fixture(scope="module")
def hf(tag_ckpt, qa_ckpt):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    tok = transformers.ErnieMTokenizer.from_pretrained(tag_ckpt)
    tag_model = transformers.ErnieMForTokenClassification.from_pretrained(tag_ckpt).eval()
    qa_model = transformers.ErnieMForQuestionAnswering.from_pretrained(qa_ckpt).eval()
    return SimpleNamespace(
        torch=torch, transformers=transformers, tok=tok, tag_model=tag_model, qa_model=qa_model,
        tag=transformers.pipeline("token-classification", model=tag_model, tokenizer=tok, framework="pt"),
        qa=transformers.pipeline("question-answering", model=qa_model, tokenizer=tok, framework="pt"),
    )  # fmt: skip


def _hf_lines(n=40):
    """Our texts and ``n`` lines of the tokenizer fixture's golden lines (multilingual, odd characters).

    Lines holding the string "[PAD]" are left out: it becomes the pad id (1), HF's pipeline calls ErnieM
    without an attention mask, and HF's implicit mask then hides that token from attention; ours passes the
    tokenizer's mask, so it is attended like any other token and the logits differ there (by design).
    """
    with open(os.path.join(HERE, "fixtures", "tokenizer", "lines.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(x) for x in f]
    picked = [x for x in lines if x.strip() and len(x) < 200 and "[PAD]" not in x]
    return TEXTS + picked[:: max(1, len(picked) // n)][:n]


def test_hf_tag_none_and_simple_end_to_end(hf, taggers):
    for text in _hf_lines():
        ours_enc = taggers["none"].tokenizer(text, return_offsets_mapping=True)
        assert hf.tok(text)["input_ids"] == ours_enc["input_ids"], text  # the same tokens, so offsets align
        offsets = [tuple(o) for o in ours_enc["offset_mapping"]]
        for agg in ("none", "simple"):
            theirs = hf.tag(text, aggregation_strategy=agg, ignore_labels=[], offset_mapping=offsets)
            assert_same_entities(taggers[agg](text), theirs, f"{agg} {text!r}")


def test_hf_tag_without_offsets_gives_the_same_labels_and_no_spans(hf, taggers):
    """What HF does with ErnieM on its own: no offsets (start/end None); the rest is ours."""
    text = TEXTS[0]
    theirs = hf.tag(text, aggregation_strategy="none", ignore_labels=[])
    assert all(e["start"] is None and e["end"] is None for e in theirs)
    ours = [{**e, "start": None, "end": None} for e in taggers["none"](text)]
    assert_same_entities(ours, theirs, text)
    with pytest.raises(ValueError, match="Slow tokenizers cannot handle subwords"):
        hf.tag(text, aggregation_strategy="first")


def test_hf_tag_word_aggregations(hf, taggers):
    strategy = hf.transformers.pipelines.token_classification.AggregationStrategy
    for text in _hf_lines():
        offsets = [tuple(o) for o in taggers["first"].tokenizer(text, return_offsets_mapping=True)["offset_mapping"]]
        inputs = next(iter(hf.tag.preprocess(text, offset_mapping=[offsets])))  # a batch of one, as __call__ passes it
        outputs = hf.tag.forward(inputs)
        for agg in ("first", "average", "max"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Tokenizer does not support real words, using fallback heuristic"
                theirs = hf.tag.postprocess([outputs], aggregation_strategy=strategy[agg.upper()], ignore_labels=[])
            assert_same_entities(taggers[agg](text), theirs, f"{agg} {text!r}")


def test_hf_tag_stride_windows(hf, tag_ckpt):
    torch = hf.torch
    strategy = hf.transformers.pipelines.token_classification.AggregationStrategy
    text = " ".join(TEXTS[:4]) * 2
    for agg in ("simple", "first", "max"):
        ours = Tagger(tag_ckpt, aggregation_strategy=agg, max_length=24, stride=6)
        enc = ours.tokenizer(text, truncation=True, max_length=24, stride=6, return_overflowing_tokens=True,
                             return_offsets_mapping=True, return_special_tokens_mask=True)  # fmt: skip
        assert len(enc["input_ids"]) > 3
        outputs = []
        for r, ids in enumerate(enc["input_ids"]):
            ids_t = torch.tensor([ids])
            with torch.no_grad():
                logits = hf.tag_model(input_ids=ids_t).logits
            outputs.append({"logits": logits, "special_tokens_mask": torch.tensor([enc["special_tokens_mask"][r]]),
                            "offset_mapping": torch.tensor([enc["offset_mapping"][r]]),
                            "sentence": text if r == 0 else None, "input_ids": ids_t})  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = hf.tag.postprocess(outputs, aggregation_strategy=strategy[agg.upper()])
        assert_same_entities(ours(text), theirs, f"stride {agg}")


class _Encoding:
    """What HF's QA ``get_indices`` reads from a ``tokenizers.Encoding``, answered from our offsets and word ids."""

    def __init__(self, offsets, words):
        self.offsets = [tuple(o) for o in offsets]
        self.words = words

    def token_to_word(self, i):
        return self.words[i]

    def word_to_chars(self, word, sequence_index=0):
        if word is None:
            raise TypeError("no word")  # as tokenizers raises for a special token's None
        toks = [t for t, w in enumerate(self.words) if w == word]
        return self.offsets[toks[0]][0], self.offsets[toks[-1]][1]


def _hf_qa(hf, answerer, question, context, **overrides):
    torch = hf.torch
    s = answerer._settings(overrides)
    outputs = []
    for w in answerer._windows(0, question, context, s):
        ids = torch.tensor([w["input_ids"]])
        with torch.no_grad():
            out = hf.qa_model(input_ids=ids)
        outputs.append({"start": out.start_logits, "end": out.end_logits,
                        "example": SimpleNamespace(context_text=context), "p_mask": np.array([w["p_mask"]]),
                        "attention_mask": torch.ones_like(ids), "encoding": _Encoding(w["offsets"], w["words"])})  # fmt: skip
    real = hf.qa.tokenizer
    hf.qa.tokenizer = SimpleNamespace(is_fast=True, padding_side="right", pad_token_id=real.pad_token_id)
    try:  # HF's fast-tokenizer road through postprocess
        return hf.qa.postprocess(outputs, top_k=s["top_k"], handle_impossible_answer=s["handle_impossible_answer"],
                                 max_answer_len=s["max_answer_len"], align_to_words=s["align_to_words"])  # fmt: skip
    finally:
        hf.qa.tokenizer = real


QA_CASES = [
    dict(),
    dict(top_k=5),
    dict(top_k=3, max_answer_len=2, align_to_words=False),
    dict(top_k=4, max_seq_len=24, doc_stride=6),
    dict(top_k=2, max_seq_len=32, doc_stride=0, handle_impossible_answer=True),
    dict(top_k=1, max_seq_len=20, doc_stride=4, handle_impossible_answer=True, align_to_words=False),
]


@pytest.mark.parametrize("case", QA_CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "defaults"
                                                for c in QA_CASES])  # fmt: skip
def test_hf_qa_decoding(hf, answerer, case):
    for question, context in [("Who visited Paris?", CONTEXT), ("什么?", TEXTS[0]), ("x", TEXTS[4] + " " + CONTEXT)]:
        ours = answerer(question=question, context=context, **case)
        theirs = _hf_qa(hf, answerer, question, context, **case)
        assert_same_answers(ours, theirs, f"{case} {question!r}")


def test_hf_qa_first_window_ids_and_p_mask(hf, answerer):
    """Our first window and its p_mask against HF's slow tokenizer (token types and special-token mask)."""
    for max_seq_len, stride in ((128, 64), (24, 6)):
        s = answerer._settings({"max_seq_len": max_seq_len, "doc_stride": stride})
        first = answerer._windows(0, "Who visited Paris?", CONTEXT, s)[0]
        enc = hf.tok("Who visited Paris?", CONTEXT, truncation="only_second", max_length=max_seq_len, stride=stride,
                     return_overflowing_tokens=True, return_token_type_ids=True, return_special_tokens_mask=True)  # fmt: skip
        assert first["input_ids"] == enc["input_ids"]
        p_mask = [0 if (t == 1 and not sp) or i == hf.tok.cls_token_id else 1
                  for i, t, sp in zip(enc["input_ids"], enc["token_type_ids"], enc["special_tokens_mask"], strict=True)]  # fmt: skip
        assert first["p_mask"] == p_mask


def test_hf_select_starts_ends_on_identical_arrays(hf):
    hf_qa = hf.transformers.pipelines.question_answering
    rng = np.random.default_rng(0)
    for trial in range(40):
        L = int(rng.integers(4, 30))
        start, end = (rng.normal(0, 3, (1, L)).astype(np.float32) for _ in range(2))
        p_mask = (rng.random((1, L)) < 0.4).astype(np.int64)  # token 0 masked too at times: HF's nonzero quirk
        attention = np.ones((1, L), dtype=np.int64)
        attention[0, L - int(rng.integers(0, 3)) :] = 0
        args = (start, end, p_mask, attention, float(rng.random()), int(rng.integers(1, 2 * L * L)),
                bool(rng.integers(0, 2)), int(rng.integers(1, L + 2)))  # fmt: skip
        ours = qa_mod.select_starts_ends(*args)
        theirs = hf_qa.select_starts_ends(*args)
        for a, b, name in zip(ours, theirs, ("starts", "ends", "scores", "min_null_score"), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"trial {trial}: {name}")


def test_word_chars_of_a_window_matches_tokenizers_on_overflowing_encodings():
    """HF's QA widens answers with ``Encoding.word_to_chars``; on an overflowing window a word cut by the edge
    spans only its tokens inside the window. Ours (``qa.word_chars``) does the same: checked on a tiny
    WordPiece tokenizer built with the tokenizers library (a fast tokenizer, stride 1)."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "ab": 1, "##cd": 2, "##ef": 3, "x": 4, "y": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.enable_truncation(max_length=4, stride=1)
    enc = tok.encode("abcdef x abcdef y")
    windows = [enc, *enc.overflowing]
    assert len(windows) == 3
    for e in windows:
        for word in set(e.word_ids):
            assert qa_mod.word_chars(e.offsets, e.word_ids, word) == e.word_to_chars(word), (e.tokens, word)
