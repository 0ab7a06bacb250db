"""`erniem-np demo` and the bundled language-ID model (erniem_np/data/langid, made by
scripts/reference/train_langid.py)."""

from __future__ import annotations

import io
import json
import os
from collections import Counter

import numpy as np
import pytest
from safetensors import safe_open

from erniem_np import ErnieMForSequenceClassification, ErnieMTokenizer
from erniem_np.cli import main
from erniem_np.bundled import LANGID_MODEL, TINY_MODEL
from erniem_np.commands.demo import LANGID_SAMPLES

# Sentences written for this test (not in the training corpus), with their language.
OWN_TEXTS = [
    ("de", "Wir haben gestern Abend im Garten gegrillt und lange geredet."),
    ("it", "Domani andiamo al mercato a comprare la frutta fresca."),
    ("ko", "오늘 저녁에는 친구들과 함께 식당에 갈 거예요."),
]


def _langid_info() -> dict:
    with open(os.path.join(LANGID_MODEL, "langid.json"), encoding="utf-8") as f:
        return json.load(f)


def _heldout_sample() -> list[dict]:
    with open(os.path.join(LANGID_MODEL, "heldout_sample.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _reference():
    with safe_open(os.path.join(LANGID_MODEL, "reference_outputs.safetensors"), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def langid():
    return ErnieMForSequenceClassification.from_pretrained(LANGID_MODEL), ErnieMTokenizer.from_pretrained(LANGID_MODEL)


def _predict(model, tok, texts, max_length):
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    return [model.config.id2label[int(k)] for k in logits.argmax(-1)], enc, logits


# ---------------------------------------------------------------------------------------------------- the command
def test_demo_runs_the_samples_and_checks_them_against_hf(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    info = _langid_info()
    for code, text in LANGID_SAMPLES:
        assert repr(text) in out
        assert f"-> {info['languages'][code]} ({code})" in out
    assert "token ids agree with HF transformers' tokenizer" in out
    assert "agrees with HF transformers' logits" in out
    assert "tokens: [CLS]" in out and "forward pass" in out and "first call" in out and "loaded" in out


def test_demo_classifies_given_texts(capsys):
    assert main(["demo", *[t for _, t in OWN_TEXTS]]) == 0
    out = capsys.readouterr().out
    names = _langid_info()["languages"]
    for code, text in OWN_TEXTS:
        block = out.split(repr(text), 1)[1]
        assert block.split("\n", 2)[1].strip().startswith(f"-> {names[code]} ({code})"), block
    assert "agrees with HF" not in out  # the parity check is for the stored samples only


def test_demo_reads_stdin_and_files(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO(OWN_TEXTS[0][1] + "\n"))
    assert main(["demo", "-"]) == 0
    assert "German (de)" in capsys.readouterr().out
    path = tmp_path / "texts.jsonl"
    path.write_text(json.dumps({"text": OWN_TEXTS[1][1]}) + "\n", encoding="utf-8")
    assert main(["demo", "--input", str(path)]) == 0
    assert "Italian (it)" in capsys.readouterr().out


def test_demo_json(capsys):
    assert main(["demo", "--json", "--top", "2", OWN_TEXTS[2][1]]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["results"]
    assert row["label"] == "ko" and row["name"] == "Korean" and 0.5 < row["probability"] <= 1
    assert len(row["top"]) == 2 and row["top"][0]["label"] == "ko"
    assert row["tokens"][0] == "[CLS]" and row["tokens"][-1] == "[SEP]" and len(row["tokens"]) == len(row["input_ids"])
    assert set(doc["timing"]) == {"load_ms", "first_call_ms", "forward_ms"} and doc["reference_check"] is None
    assert main(["demo", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["reference_check"]["agrees"] and doc["reference_check"]["tokens_agree"]
    assert [r["label"] for r in doc["results"]] == [c for c, _ in LANGID_SAMPLES]


def test_demo_still_runs_the_tiny_checkpoint(capsys):
    assert main(["demo", "--model", TINY_MODEL]) == 0
    assert "agrees with HF transformers' logits" in capsys.readouterr().out
    assert main(["demo", "--model", TINY_MODEL, "--ids", "0 5 17 2"]) == 0
    assert "LABEL_" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", ""], "input 1 is empty"),
        (["demo", "ok text here", "   "], "input 2 is empty"),
        (["demo", "--model", "/nonexistent/model-dir"], "no such model directory"),
        (["demo", "--model", TINY_MODEL, "some text"], "has no tokenizer"),
        (["demo", "--ids", "1 x"], "--ids takes integers"),
        (["demo", "--top", "0"], "--top must be at least 1"),
        (["demo", "--input", "/nonexistent/texts.txt"], "no such file"),
    ],
)
def test_demo_bad_input_is_one_line(capsys, argv, message):
    assert main(argv) == 1
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and message in cap.err and "Traceback" not in cap.err, cap.err
    assert cap.err.startswith("erniem-np: error: ")


# ---------------------------------------------------------------------------------------------------- the model
def test_shipped_model_is_small_and_complete():
    files = set(os.listdir(LANGID_MODEL))
    need = {"config.json", "model.safetensors", "sentencepiece.bpe.model", "vocab.txt", "langid.json",
            "reference_outputs.safetensors", "heldout_sample.jsonl", "DATA_LICENSES.txt"}  # fmt: skip
    assert need <= files
    size = sum(os.path.getsize(os.path.join(LANGID_MODEL, f)) for f in files)
    assert size < 10e6, size
    with open(os.path.join(LANGID_MODEL, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    assert cfg["flavor"] == "hf" and sorted(cfg["id2label"].values()) == sorted(_langid_info()["languages"])


def test_shipped_model_predicts_the_samples(langid):
    model, tok = langid
    preds, _, _ = _predict(model, tok, [t for _, t in LANGID_SAMPLES] + [t for _, t in OWN_TEXTS], 128)
    assert preds == [c for c, _ in LANGID_SAMPLES] + [c for c, _ in OWN_TEXTS]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_stored_hf_logits_match(backend):
    """The sample sentences: our tokenizer gives HF's ids, our model HF's logits (stored by the training script)."""
    ref, meta = _reference()
    texts = json.loads(meta["texts"])
    assert texts == [t for _, t in LANGID_SAMPLES], "reference_outputs.safetensors is stale: rerun train_langid.py"
    model = ErnieMForSequenceClassification.from_pretrained(LANGID_MODEL, backend=backend)
    tok = ErnieMTokenizer.from_pretrained(LANGID_MODEL)
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    np.testing.assert_array_equal(enc["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(enc["attention_mask"], ref["attention_mask"])
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=1e-4)
    assert np.abs(ref["logits"]).max() > 1  # a trained model: confident logits, not near-zero noise


def test_heldout_accuracy_agrees_with_a_remeasurement(langid):
    """The stored held-out sample (20 lines a language) re-measured with erniem-np: every prediction is HF's,
    and the sample's errors fit inside the counts langid.json reports for the whole held-out split."""
    model, tok = langid
    info = _langid_info()
    per = info["heldout"]["per_language"]
    lines = _heldout_sample()
    preds, _, _ = _predict(model, tok, [r["text"] for r in lines], info["max_length"])
    assert preds == [r["hf_prediction"] for r in lines]
    wrong = Counter(r["language"] for r, p in zip(lines, preds, strict=True) if p != r["language"])
    counts = Counter(r["language"] for r in lines)
    assert set(counts) == set(per) == set(info["languages"])
    for code, r in per.items():
        assert r["accuracy"] == round(r["correct"] / r["heldout_lines"], 4)
        assert counts[code] == min(20, r["heldout_lines"])
        assert wrong[code] <= r["heldout_lines"] - r["correct"], code
    overall = info["heldout"]["overall"]
    assert overall["correct"] == sum(r["correct"] for r in per.values())
    assert overall["heldout_lines"] == sum(r["heldout_lines"] for r in per.values())
    # the goal: at least 95% over at least 20 languages, on the sample as well as in the report
    assert len(per) >= 20 and overall["accuracy"] >= 0.95
    assert 1 - sum(wrong.values()) / len(lines) >= 0.95


def test_live_hf_agrees_on_the_heldout_sample(langid):
    """transformers loads the shipped directory itself: same ids and logits on the held-out sample."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, tok = langid
    texts = [r["text"] for r in _heldout_sample()][::4]
    hf_tok = transformers.ErnieMTokenizer.from_pretrained(LANGID_MODEL)
    hf_model = transformers.ErnieMForSequenceClassification.from_pretrained(LANGID_MODEL).eval()
    hf_enc = hf_tok(texts, padding=True, truncation=True, max_length=128, return_attention_mask=True)
    _, enc, logits = _predict(model, tok, texts, 128)
    np.testing.assert_array_equal(enc["input_ids"], np.array(hf_enc["input_ids"]))
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(hf_enc["input_ids"]),
                       attention_mask=torch.tensor(hf_enc["attention_mask"])).logits.numpy()  # fmt: skip
    np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-4)
