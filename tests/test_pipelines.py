"""Pipelines encode, classify and choose (erniem_np/pipelines) and their commands.

The checkpoints are small random ErnieM models (erniem_np.testing.random_weights) with the fixture tokenizer
(tests/fixtures/tokenizer/unigram) copied beside them; the expected values come from calling the model
directly, from HF transformers' own pipeline (live, when installed), or from definitions (softmax, mean).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erniem_np import model as M
from erniem_np.cli import main
from erniem_np.config import ErnieMConfig
from erniem_np.pipelines import base
from erniem_np.pipelines.choose import Chooser
from erniem_np.pipelines.classify import Classifier
from erniem_np.pipelines.encode import Encoder, encode_to_file, read_embeddings
from erniem_np.testing import random_weights, split_head
from erniem_np.tokenizer import ErnieMTokenizer

TOKENIZER = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer", "unigram")
CLASSES = {None: M.ErnieMModel, "seq_cls": M.ErnieMForSequenceClassification, "mc": M.ErnieMForMultipleChoice,
           "token_cls": M.ErnieMForTokenClassification}  # fmt: skip
TEXTS = [
    "Hello world",
    "北京欢迎你，今天天气很好。",
    "a",
    "Guten Morgen, wie geht es dir heute? Mir geht es gut, danke.",
    "مرحبا بالعالم",
    "The quick brown fox jumps over the lazy dog again and again and again.",
    "ok",
    "Привет, как дела?",
]


def make_checkpoint(directory, head=None, *, flavor="hf", seed=0, with_tokenizer=True, **config):
    """A random ErnieM checkpoint (vocabulary of the fixture tokenizer) of one head class, saved in HF layout."""
    n = {"seq_cls": 3, "token_cls": 5}.get(head, 1)
    cfg = ErnieMConfig(vocab_size=4002, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=66, flavor=flavor)  # fmt: skip
    cfg = cfg.replace(**{"num_labels": n, **config})
    weights = split_head(random_weights(cfg, seed), head)
    if head == "seq_cls" and cfg.num_labels != 3:  # a classifier of another width
        rng = np.random.default_rng(seed)
        weights["classifier.weight"] = rng.standard_normal((cfg.num_labels, 32)).astype(np.float32) / 4
        weights["classifier.bias"] = rng.standard_normal(cfg.num_labels).astype(np.float32)
    CLASSES[head](cfg, weights).save_pretrained(directory)
    if with_tokenizer:
        for f in os.listdir(TOKENIZER):
            shutil.copy(os.path.join(TOKENIZER, f), directory)
    return str(directory)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "seq": make_checkpoint(root / "seq", "seq_cls"),
        "seq_paddle": make_checkpoint(root / "seq_paddle", "seq_cls", flavor="paddle", seed=1),
        "mc": make_checkpoint(root / "mc", "mc", seed=2),
        "base": make_checkpoint(root / "base", None, seed=3),
        "token": make_checkpoint(root / "token", "token_cls", seed=4),
        "no_tok": make_checkpoint(root / "no_tok", "seq_cls", with_tokenizer=False),
    }


# ============================================================================================ base
def test_bucketing_returns_results_in_input_order():
    rng = np.random.default_rng(0)
    rows = [list(range(int(n))) for n in rng.integers(1, 30, size=57)]
    seen_batches = []

    def run(batch):
        seen_batches.append([len(r) for r in batch])
        return [("len", len(r), tuple(r)) for r in batch]

    out = base.map_bucketed(rows, 8, run)
    assert out == [("len", len(r), tuple(r)) for r in rows]
    assert sum(len(b) for b in seen_batches) == 57 and max(len(b) for b in seen_batches) <= 8
    flat = [n for b in seen_batches for n in b]
    assert flat == sorted(flat), "batches are not sorted by length"


def _batch_cost(lengths, batches, forward_cost):
    return sum(len(b) * max(lengths[i] for i in b) + forward_cost for b in batches)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 60), max_size=9), batch_size=st.integers(1, 5),
       forward_cost=st.integers(0, 80))  # fmt: skip
def test_bucketing_cuts_where_the_work_is_least(lengths, batch_size, forward_cost):
    """The batches: every index once, in sorted-length order, none over batch_size, and the least cost
    (positions computed + forward_cost per batch) of every way to cut the sorted rows, found by brute force."""
    batches = base.bucket_batches(lengths, batch_size, forward_cost)
    flat = [int(i) for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths))) and max(map(len, batches), default=0) <= batch_size
    assert [lengths[i] for i in flat] == sorted(lengths)
    order = [int(i) for i in np.argsort(lengths, kind="stable")]
    best = min(_batch_cost(lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], forward_cost)
               for k in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), k)
               if all(b - a <= batch_size for a, b in zip((0, *cuts), (*cuts, len(order))))) if lengths else 0  # fmt: skip
    assert _batch_cost(lengths, batches, forward_cost) == best


def test_bucketing_keeps_a_long_text_out_of_a_batch_of_short_ones():
    """Seven texts of 10 positions and one of 300: one batch of 8 would compute 2,400 positions; the cut
    computes 70 + 300 (+ 2 forwards)."""
    batches = base.bucket_batches([10, 10, 300, 10, 10, 10, 10, 10], 8)
    assert [sorted(b.tolist()) for b in batches] == [[0, 1, 3, 4, 5, 6, 7], [2]]


def test_pad_batch_and_chunks():
    ids, mask = base.pad_batch([[0, 5, 2], [0, 2]], pad_token_id=1)
    assert ids.tolist() == [[0, 5, 2], [0, 2, 1]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    pulled = []

    def gen():
        for i in range(10):
            pulled.append(i)
            yield i

    chunks = base.iter_chunks(gen(), 4)
    assert next(chunks) == [0, 1, 2, 3] and len(pulled) == 4  # lazy: only one chunk read
    assert list(chunks) == [[4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="chunk size"):
        next(base.iter_chunks([], 0))


def test_loading_errors_name_the_problem(ckpts, tmp_path):
    with pytest.raises(ValueError, match="classify needs a checkpoint with a sequence-classification head.*missing"):
        Classifier(ckpts["base"])
    with pytest.raises(ValueError, match="choose needs a checkpoint with a multiple-choice head.*wrong shape"):
        Chooser(ckpts["seq"])  # three labels is not a multiple-choice head
    with pytest.raises(FileNotFoundError, match="no tokenizer for classify.*sentencepiece.bpe.model"):
        Classifier(ckpts["no_tok"])
    assert Classifier(ckpts["no_tok"], tokenizer=TOKENIZER)("hi")[0]["label"].startswith("LABEL_")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        Encoder(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="pooling 'pooled' needs the pooler"):
        Encoder(ckpts["token"])  # HF's token-classification model has no pooler
    small = make_checkpoint(tmp_path / "small", "seq_cls", vocab_size=99, with_tokenizer=False)
    with pytest.raises(ValueError, match="do not belong together"):
        Classifier(small, tokenizer=TOKENIZER)
    with pytest.raises(TypeError, match="needs an ErnieMForMultipleChoice"):
        Chooser(M.ErnieMForSequenceClassification.from_pretrained(ckpts["seq"]), tokenizer=TOKENIZER)


# ============================================================================================ encode
def _direct(model_dir, text):
    """The model called on one text alone, no padding, every token attended (an all-ones mask: without one,
    the paddle flavor would mask [CLS], id 0): the definition of each pooling."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checkpoint's head is not used
        m = M.ErnieMModel.from_pretrained(model_dir)
    tok = ErnieMTokenizer.from_pretrained(model_dir)
    ids = np.array([tok(text)["input_ids"]])
    out = m(ids, attention_mask=np.ones_like(ids))
    x = out.last_hidden_state[0]
    return {"pooled": out.pooler_output[0], "cls": x[0], "mean": x.mean(0), "last": x}


@pytest.mark.parametrize("which", ["seq", "seq_paddle"])
@pytest.mark.parametrize("pooling", ["pooled", "cls", "mean", "last"])
def test_encode_batched_equals_one_by_one(ckpts, which, pooling):
    """Bucketed batches of 3 with padding give each text what it gets alone, in input order (fp32 rounding:
    the batch's padded length changes the kernels' blocking). Under the paddle flavor this holds only because
    the attention mask is passed: without it Paddle attends [PAD]."""
    enc = Encoder(ckpts[which], pooling=pooling, batch_size=3, chunk_size=5)
    got = enc.encode(TEXTS)
    for text, v in zip(TEXTS, got, strict=True):
        want = _direct(ckpts[which], text)[pooling]
        assert v.shape == want.shape and v.dtype == np.float32
        np.testing.assert_allclose(v, want, rtol=1e-5, atol=2e-5, err_msg=f"{pooling} of {text!r}")


def test_paddle_flavor_needs_the_mask(ckpts):
    """Why the pipelines pass the mask: the same padded batch without it changes a short text's embedding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = M.ErnieMModel.from_pretrained(ckpts["seq_paddle"])
    tok = ErnieMTokenizer.from_pretrained(ckpts["seq_paddle"])
    e = tok(["ok", TEXTS[5]], padding=True, return_tensors="np")
    with_mask = m(e["input_ids"], attention_mask=e["attention_mask"]).last_hidden_state[0, 0]
    without = m(e["input_ids"]).last_hidden_state[0, 0]
    alone = _direct(ckpts["seq_paddle"], "ok")["cls"]
    np.testing.assert_allclose(with_mask, alone, rtol=1e-5, atol=2e-5)
    assert np.abs(without - alone).max() > 1e-3


def test_encode_options(ckpts):
    enc = Encoder(ckpts["base"], pooling="mean", normalize=True, max_length=4)
    v = enc.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)
    last = Encoder(ckpts["base"], pooling="last", max_length=4).encode(TEXTS)
    assert max(x.shape[0] for x in last) == 4  # cut to max_length tokens
    one = enc.encode("Hello world")
    assert one.shape == (32,)
    assert enc.encode([]).shape == (0, 32)
    assert np.array_equal(np.stack(list(enc.encode_iter(iter(TEXTS)))), v)
    with pytest.raises(TypeError, match="text 2 must be a str"):
        enc.encode(["a", "b", 3])
    with pytest.raises(ValueError, match="pooling must be one of"):
        Encoder(ckpts["base"], pooling="max")
    # a checkpoint without a pooler still gives cls / mean / last
    assert Encoder(ckpts["token"], pooling="cls").encode(["hi"]).shape == (1, 32)


@pytest.mark.parametrize("suffix,pooling", [(".npy", "mean"), (".safetensors", "cls"), (".safetensors", "last")])
def test_encode_to_file_round_trip(ckpts, tmp_path, suffix, pooling):
    enc = Encoder(ckpts["seq"], pooling=pooling, batch_size=2, chunk_size=3)
    path = str(tmp_path / f"out{suffix}")
    n = encode_to_file(enc, iter(TEXTS * 2), path)
    assert n == len(TEXTS) * 2
    want, got = enc.encode(TEXTS * 2), read_embeddings(path)
    if pooling == "last":
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
        from safetensors.numpy import load_file

        d = load_file(path)  # the reference reader accepts the file
        assert d["offsets"][0] == 0 and d["offsets"][-1] == d["last_hidden_state"].shape[0]
    else:
        assert np.array_equal(np.asarray(got), want)
        if suffix == ".npy":
            assert np.load(path).shape == (n, 32)


def test_encode_streams_with_flat_memory(ckpts, tmp_path, monkeypatch):
    """Texts are pulled from the input one chunk ahead of the rows written, never all at once."""
    from erniem_np.pipelines import encode as encode_module

    pulled, gaps = [0], []
    real_write = encode_module.NpyWriter.write

    def write(self, block):
        real_write(self, block)
        gaps.append(pulled[0] - self.rows)  # texts read but not yet on disk

    monkeypatch.setattr(encode_module.NpyWriter, "write", write)

    def lines(n):
        for i in range(n):
            pulled[0] += 1
            yield f"line {i} " + "word " * (i % 7)

    enc = Encoder(ckpts["base"], pooling="mean", batch_size=16, chunk_size=50)
    n = encode_to_file(enc, lines(2000), str(tmp_path / "big.npy"))
    assert n == 2000 and len(gaps) == 40
    assert max(gaps) <= 50, f"held up to {max(gaps)} texts in memory (chunk size 50)"
    assert np.load(str(tmp_path / "big.npy"), mmap_mode="r").shape == (2000, 32)


# ============================================================================================ classify
def test_classify_scores_match_the_model(ckpts):
    clf = Classifier(ckpts["seq"], batch_size=3)
    m = M.ErnieMForSequenceClassification.from_pretrained(ckpts["seq"])
    tok = ErnieMTokenizer.from_pretrained(ckpts["seq"])
    logits = np.stack([m(np.array([tok(t)["input_ids"]])).logits[0] for t in TEXTS])
    np.testing.assert_allclose(clf.logits(TEXTS), logits, rtol=1e-5, atol=2e-5)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = clf(TEXTS, top_k=None)
    for row, p in zip(got, probs, strict=True):
        assert [d["label"] for d in row] == [f"LABEL_{i}" for i in np.argsort(-p, kind="stable")]
        np.testing.assert_allclose([d["score"] for d in row], np.sort(p)[::-1], rtol=1e-5)
    # HF's shapes: one str -> [dict]; a list -> [dict, ...]; a dict -> dict; top_k on one input -> its list
    assert isinstance(clf("hi"), list) and set(clf("hi")[0]) == {"label", "score"}
    assert len(clf(["a", "b"])) == 2 and isinstance(clf(["a", "b"])[0], dict)
    assert isinstance(clf({"text": "a", "text_pair": "b"}), dict)
    assert len(clf("hi", top_k=2)) == 2
    # pairs: [CLS] a [SEP] [SEP] b [SEP], the same as the tokenizer's pair
    want_pair = m(np.array([tok("A man eats.", "Someone eats.")["input_ids"]])).logits[0]
    np.testing.assert_allclose(clf.logits([("A man eats.", "Someone eats.")])[0], want_pair, rtol=1e-5, atol=2e-5)
    both = clf(["A man eats.", "x"], text_pair=["Someone eats.", "y"], function_to_apply="none")
    np.testing.assert_allclose(both[0]["score"], want_pair.max(), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(
    "config,expected",
    [({}, "softmax"), ({"num_labels": 1}, "sigmoid"), ({"problem_type": "multi_label_classification"}, "sigmoid"),
     ({"num_labels": 1, "problem_type": "regression"}, "none")],
)  # fmt: skip
def test_classify_default_function_follows_hf(tmp_path, config, expected):
    path = make_checkpoint(tmp_path / "c", "seq_cls", **config)
    clf = Classifier(path)
    assert clf.function_to_apply == expected
    x = clf.logits(TEXTS).astype(np.float32)
    want = {"softmax": np.exp(x) / np.exp(x).sum(1, keepdims=True), "sigmoid": 1 / (1 + np.exp(-x)), "none": x}
    got = np.array([[d["score"] for d in sorted(r, key=lambda d: d["label"])] for r in clf(TEXTS, top_k=None)])
    np.testing.assert_allclose(got, want[expected], rtol=1e-6)


def test_classify_equals_hf_text_classification_pipeline(ckpts):
    """Live: HF transformers 4.46.3's own pipeline on the same checkpoint directory and texts."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.pipeline("text-classification", model=ckpts["seq"], tokenizer=ckpts["seq"], device="cpu")
    ours = Classifier(ckpts["seq"])
    for kwargs in ({}, {"top_k": None}, {"top_k": 2}, {"function_to_apply": "sigmoid", "top_k": None}):
        want, got = hf(TEXTS, **kwargs), ours(TEXTS, **kwargs)
        for w, g in zip(want, got, strict=True):
            w, g = (w, g) if isinstance(w, list) else ([w], [g])
            assert [d["label"] for d in g] == [d["label"] for d in w], kwargs
            np.testing.assert_allclose([d["score"] for d in g], [d["score"] for d in w], rtol=1e-5, atol=1e-6)
    w, g = hf("Hello world"), ours("Hello world")  # one str: both wrap the dict in a list
    assert isinstance(w, list) and isinstance(g, list) and w[0]["label"] == g[0]["label"]
    w, g = (
        hf({"text": "A man eats.", "text_pair": "Someone eats."}),
        ours({"text": "A man eats.", "text_pair": "Someone eats."}),
    )
    assert w["label"] == g["label"] and abs(w["score"] - g["score"]) < 1e-5


# ============================================================================================ choose
def test_choose_matches_the_model(ckpts):
    ch = Chooser(ckpts["mc"], batch_size=2)
    m = M.ErnieMForMultipleChoice.from_pretrained(ckpts["mc"])
    tok = ErnieMTokenizer.from_pretrained(ckpts["mc"])
    items = [("The cat sat on the", ["mat", "moon", "idea of a very long sentence here"]),
             ("北京是", ["中国的首都", "一个城市"]), ("q", ["only"])]  # fmt: skip
    got = ch(items)
    for (q, cs), r in zip(items, got, strict=True):
        e = tok([q] * len(cs), cs, padding=True, return_tensors="np")  # [C, L]: [CLS] q [SEP] [SEP] c [SEP]
        logits = m(e["input_ids"][None], attention_mask=e["attention_mask"][None]).logits[0]
        np.testing.assert_allclose(r["logits"], logits, rtol=1e-5, atol=2e-5)
        p = np.exp(logits - logits.max())
        np.testing.assert_allclose(r["scores"], p / p.sum(), rtol=1e-5, atol=1e-6)
        assert r["best"] == int(np.argmax(logits)) and r["choice"] == cs[r["best"]]
    alone = ch(*items[0])  # in other batches: equal to fp32 rounding
    assert alone["best"] == got[0]["best"]
    np.testing.assert_allclose(alone["logits"], got[0]["logits"], rtol=1e-5, atol=2e-5)
    assert ch([{"context": "q", "choices": ["only"]}])[0]["scores"] == [1.0]
    with pytest.raises(ValueError, match="no choices"):
        ch("q", [])
    with pytest.raises(TypeError, match="pass the choices"):
        ch("q")


# ============================================================================================ commands
def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["encode", "classify", "choose"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "exit codes" in capsys.readouterr().out


def test_cli_classify_and_choose(ckpts, capsys, tmp_path, monkeypatch):
    code, out, _ = _run(capsys, "classify", ckpts["seq"], "Hello world", "ok", "--json", "--quiet")
    assert code == 0
    records = json.loads(out)
    want = Classifier(ckpts["seq"])(["Hello world", "ok"])
    assert [r["text"] for r in records] == ["Hello world", "ok"]
    assert [(r["label"], r["score"]) for r in records] == [(w["label"], w["score"]) for w in want]
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"text": "A man eats.", "text_pair": "Someone eats."}\n{"text": "x"}\n', encoding="utf-8")
    code, out, _ = _run(capsys, "classify", ckpts["seq"], "-i", str(data), "--all", "--json", "-q")
    records = json.loads(out)
    assert code == 0 and records[0]["text_pair"] == "Someone eats." and len(records[1]["labels"]) == 3
    code, out, _ = _run(capsys, "classify", ckpts["seq"], "Hello world", "-q")
    assert code == 0 and out.endswith("\tHello world\n")

    code, out, _ = _run(capsys, "choose", ckpts["mc"], "The cat sat on the", "mat", "moon", "--json", "-q")
    r = json.loads(out)[0]
    assert code == 0 and r == {"question": "The cat sat on the", "choices": ["mat", "moon"],
                               **Chooser(ckpts["mc"])("The cat sat on the", ["mat", "moon"])}  # fmt: skip
    import io

    class Stdin(io.StringIO):
        def isatty(self):
            return False

    monkeypatch.setattr("sys.stdin", Stdin('{"question": "q", "choices": ["a", "b"]}\n'))
    code, out, _ = _run(capsys, "choose", ckpts["mc"], "-q")
    assert code == 0 and out.endswith("\tq\n")


def test_cli_encode(ckpts, capsys, tmp_path):
    out_path = str(tmp_path / "e.npy")
    code, out, _ = _run(capsys, "encode", ckpts["base"], *TEXTS, "-o", out_path, "--pooling", "mean", "--json", "-q")
    assert code == 0 and json.loads(out) == {"output": out_path, "texts": len(TEXTS), "pooling": "mean", "dim": 32,
                                             "dtype": "float32"}  # fmt: skip
    assert np.array_equal(np.load(out_path), Encoder(ckpts["base"], pooling="mean").encode(TEXTS))
    code, out, _ = _run(capsys, "encode", ckpts["base"], "hi", "there", "--pooling", "cls", "-q")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [d["text"] for d in lines] == ["hi", "there"]
    np.testing.assert_array_equal(np.array([d["embedding"] for d in lines], dtype=np.float32),
                                  Encoder(ckpts["base"], pooling="cls").encode(["hi", "there"]))  # fmt: skip


@pytest.mark.parametrize(
    "argv,message",
    [
        (["classify", "{base}", "hi"], "classify needs a checkpoint with a sequence-classification head"),
        (["choose", "{seq}", "q", "a", "b"], "choose needs a checkpoint with a multiple-choice head"),
        (["choose", "{mc}", "q"], "give a question and at least one choice"),
        (["encode", "{tmp}/missing", "hi"], "no such checkpoint"),
        (["encode", "{base}", "-i", "{tmp}/missing.txt"], "missing.txt: no such file"),
        (["encode", "{base}", "-i", "{tmp}/empty.txt", "-o", "{tmp}/e.npy"], "the file is empty"),
        (["encode", "{base}", "hi", "-o", "{tmp}/e.npy", "--pooling", "last"], "write a .safetensors file"),
        (["encode", "{base}", "hi", "-o", "{tmp}/e.csv"], "must end in .npy or .safetensors"),
        (["encode", "{no_tok}", "hi"], "no tokenizer for encode"),
    ],
)  # fmt: skip
def test_cli_user_errors_are_one_line(ckpts, capsys, tmp_path, argv, message):
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    argv = [a.format(tmp=tmp_path, **ckpts) for a in argv] + ["-q"]
    code, out, err = _run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("erniem-np: error: ") and message in err, err
    assert not (tmp_path / "e.npy").exists()  # no partial output left behind


def test_cli_encode_streams_a_file(ckpts, capsys, tmp_path, monkeypatch):
    """erniem-np encode --input reads the file as it writes: texts read minus rows written stays within a
    chunk, on a file of many lines."""
    from erniem_np.commands import encode as command
    from erniem_np.pipelines import encode as encode_module

    path = tmp_path / "many.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"line {i} " + "word " * (i % 5) + "\n" for i in range(3000))
    pulled, gaps = [0], []
    real_iter, real_write = command._iter_inputs, encode_module.NpyWriter.write

    def counting_iter(args):
        for text in real_iter(args):
            pulled[0] += 1
            yield text

    def write(self, block):
        real_write(self, block)
        gaps.append(pulled[0] - self.rows)

    monkeypatch.setattr(command, "_iter_inputs", counting_iter)
    monkeypatch.setattr(encode_module.NpyWriter, "write", write)
    out = str(tmp_path / "many.npy")
    code, _, _ = _run(capsys, "encode", ckpts["base"], "-i", str(path), "-o", out, "--chunk-size", "100",
                      "--pooling", "cls", "-q")  # fmt: skip
    assert code == 0 and pulled[0] == 3000 and len(gaps) == 30
    assert max(gaps) <= 100, f"held up to {max(gaps)} texts (chunk size 100)"
    assert np.load(out, mmap_mode="r").shape == (3000, 32)
