"""``erniem-np demo``: identify the language of a few texts with the bundled model, and check it against HF.

The default model (``erniem_np/data/langid``, made by ``scripts/reference/train_langid.py``) is a small ErnieM sequence
classifier trained with HF transformers to tell 31 languages apart; it ships with its tokenizer, the logits HF
computed on the sample sentences below, and its measured held-out accuracy (``langid.json``). ``--model DIR``
runs any sequence classifier directory instead (with ``--ids`` when it has no tokenizer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from .. import __version__
from ..bundled import LANGID_MODEL
from ._common import EXIT_ERROR, EXIT_OK, UserError, add_input_options, iter_inputs, print_json

TOLERANCE = 1e-4  # max |difference| from HF's logits accepted as agreement (float32)
# With --quantize int8: the same top label on every sample, and logits within this of HF's float32 ones. The
# bundled model's int8 logits differ from float32 by at most 0.07 on its 620 held-out lines (logits up to 14.7;
# scripts/bench/int8_accuracy.py), so 0.25 holds with room while still catching a broken int8 path.
INT8_TOLERANCE = 0.25
BATCH = 32

# The demo's sample sentences, written for this project (none is in the training corpus; the training script
# checks). scripts/reference/train_langid.py stores HF's ids and logits for exactly these in
# reference_outputs.safetensors.
LANGID_SAMPLES = [
    ("en", "The train to the mountains leaves every morning at seven."),
    ("fr", "Nous avons mangé une tarte aux pommes chez ma grand-mère hier soir."),
    ("de", "Könntest du mir bitte sagen, wann der nächste Bus zum Bahnhof fährt?"),
    ("es", "Mañana vamos a la playa si no llueve demasiado."),
    ("ru", "Вчера вечером мы долго гуляли по набережной реки."),
    ("zh", "我们明天早上一起去图书馆看书吧。"),
    ("ja", "この本はとても面白いので、友達にも勧めました。"),
    ("ar", "ذهبنا إلى الحديقة مع الأطفال بعد الظهر."),
    ("hi", "कल हम अपने दोस्तों के साथ फिल्म देखने जाएंगे।"),
    ("ko", "주말에는 가족과 함께 산에 가는 것을 좋아해요."),
]


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"--ids takes integers separated by spaces or commas, got {text!r}") from None
    if not ids:
        raise UserError("--ids is empty")
    return ids


def _softmax(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


class _Classifier:
    """A sequence classifier directory: the model, its tokenizer (if any), label names and stored reference."""

    def __init__(self, path: str, quantize: str | None = None):
        from safetensors import safe_open

        from ..model import ErnieMForSequenceClassification
        from ..tokenizer import ErnieMTokenizer

        if not os.path.isdir(path):
            raise UserError(f"{path}: no such model directory")
        t0 = time.perf_counter()
        self.model = ErnieMForSequenceClassification.from_pretrained(path, quantize=quantize)
        has_tok = all(os.path.isfile(os.path.join(path, f)) for f in ("sentencepiece.bpe.model", "vocab.txt"))
        self.tokenizer = ErnieMTokenizer.from_pretrained(path) if has_tok else None
        self.load_s = time.perf_counter() - t0
        self.path = path
        cfg = self.model.config
        self.labels = cfg.id2label or {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
        info_path = os.path.join(path, "langid.json")
        self.info = {}
        if os.path.isfile(info_path):
            with open(info_path, encoding="utf-8") as f:
                self.info = json.load(f)
        self.names = self.info.get("languages", {})
        self.max_length = int(self.info.get("max_length", min(512, cfg.max_position_embeddings - 2)))
        self.reference = None
        ref_path = os.path.join(path, "reference_outputs.safetensors")
        if os.path.isfile(ref_path):
            with safe_open(ref_path, "np") as f:
                self.reference = {k: f.get_tensor(k) for k in f.keys()}
                meta = f.metadata() or {}
            self.reference_texts = json.loads(meta["texts"]) if "texts" in meta else None
        self.first_call_s = None
        self.forward_s = 0.0

    def label(self, k: int) -> dict:
        code = self.labels[k]
        return {"label": code, "name": self.names.get(code, code)}

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.tokenizer is None:
            raise UserError(f"{self.path} has no tokenizer (sentencepiece.bpe.model + vocab.txt): pass --ids")
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return enc["input_ids"], enc["attention_mask"]

    def logits(self, input_ids, attention_mask) -> np.ndarray:
        if self.first_call_s is None:  # the first call compiles (or loads the cached) kernels: timed apart
            t0 = time.perf_counter()
            self.model(input_ids=input_ids, attention_mask=attention_mask)
            self.first_call_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        self.forward_s += time.perf_counter() - t0
        return out

    def results(self, texts, input_ids, attention_mask, logits, top: int) -> list[dict]:
        probs = _softmax(logits.astype(np.float64))
        rows = []
        for i, ids in enumerate(input_ids):
            n = int(attention_mask[i].sum()) if attention_mask is not None else len(ids)
            order = np.argsort(-probs[i], kind="stable")[:top]
            ids = [int(t) for t in ids[:n]]
            row = {"text": texts[i] if texts else None, **self.label(int(order[0])),
                   "probability": float(probs[i, order[0]]),
                   "top": [{**self.label(int(k)), "probability": float(probs[i, k])} for k in order],
                   "input_ids": ids,
                   "tokens": self.tokenizer.convert_ids_to_tokens(ids) if self.tokenizer else None,
                   "logits": [float(v) for v in logits[i]]}  # fmt: skip
            rows.append(row)
        return rows


def _check_texts(texts: list[str], start: int) -> None:
    for i, t in enumerate(texts, start):
        if not isinstance(t, str):
            raise UserError(f"input {i} is not a string: {t!r}")
        if not t.strip():
            raise UserError(f"input {i} is empty: nothing to classify")


def _batches(args):
    batch, start = [], 1
    for t in iter_inputs(args):
        batch.append(t)
        if len(batch) == BATCH:
            _check_texts(batch, start)
            yield batch
            start += len(batch)
            batch = []
    if batch:
        _check_texts(batch, start)
        yield batch


def _print_row(row: dict, top: int) -> None:
    if row["text"] is not None:
        print(f"  {row['text']!r}")
    else:
        print(f"  ids {row['input_ids']}")
    others = ", ".join(f"{r['name']} ({r['label']}) {r['probability']:.3f}" for r in row["top"][1:top])
    print(f"    -> {row['name']} ({row['label']}) p={row['probability']:.3f}" + (f"   then {others}" if others else ""))
    if row["tokens"] is not None:
        print(f"    {len(row['tokens'])} tokens: {' '.join(row['tokens'])}")


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    if args.ids is not None and (args.texts or args.input):
        raise UserError("give texts or --ids, not both")
    if args.ids is not None and not args.ids.split():
        raise UserError("--ids is empty: give token ids, e.g. --ids \"0 5 17 42 2\"")
    clf = _Classifier(args.model or LANGID_MODEL, args.quantize)
    tolerance = INT8_TOLERANCE if clf.model.backend == "int8" else TOLERANCE
    cfg = clf.model.config
    top = min(args.top, cfg.num_labels)
    header = (f"erniem-np {__version__}: ErnieM sequence classifier from {clf.path}"
              + (f" ({clf.info['task']}, {len(clf.names)} languages)" if clf.info else ""))  # fmt: skip
    details = (f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
               f"FFN {cfg.intermediate_size}, vocabulary {cfg.vocab_size}, {clf.model.num_parameters():,} "
               f"parameters, flavor {cfg.flavor}; loaded{' with its tokenizer' if clf.tokenizer else ''} in "
               f"{clf.load_s * 1e3:.1f} ms")  # fmt: skip
    if not args.json:
        print(header)
        print(f"  {details}")

    rows, check = [], None
    if args.ids is not None:
        input_ids = np.array([_parse_ids(args.ids)])
        rows = clf.results(None, input_ids, None, clf.logits(input_ids, None), top)
        if not args.json:
            _print_row(rows[0], top)
    elif args.texts or args.input:
        for texts in _batches(args):
            input_ids, mask = clf.encode(texts)
            batch_rows = clf.results(texts, input_ids, mask, clf.logits(input_ids, mask), top)
            rows += batch_rows
            if not args.json:
                for row in batch_rows:
                    _print_row(row, top)
    else:
        if clf.reference is None:
            raise UserError(f"{clf.path} stores no sample inputs (reference_outputs.safetensors): pass TEXT or --ids")
        ref = clf.reference
        texts = clf.reference_texts
        if texts is not None:  # tokenize the sample sentences ourselves and compare with HF's ids
            input_ids, mask = clf.encode(texts)
            same_ids = input_ids.shape == ref["input_ids"].shape and bool((input_ids == ref["input_ids"]).all())
        else:  # a stored batch of ids (the tiny random checkpoint)
            input_ids, mask, same_ids = ref["input_ids"], ref["attention_mask"], None
        logits = clf.logits(input_ids, mask)
        rows = clf.results(texts, input_ids, mask, logits, top)
        same_shape = logits.shape == ref["logits"].shape
        err = float(np.abs(logits - ref["logits"]).max()) if same_shape else float("inf")
        same_top = same_shape and bool((logits.argmax(-1) == ref["logits"].argmax(-1)).all())
        check = {"tokens_agree": same_ids, "max_abs_difference": err, "tolerance": tolerance,
                 "same_top_label": same_top, "agrees": err <= tolerance and same_top and same_ids is not False}  # fmt: skip
        if not args.json:
            for row in rows:
                _print_row(row, top)

    timing = {"load_ms": clf.load_s * 1e3, "first_call_ms": (clf.first_call_s or 0.0) * 1e3,
              "forward_ms": clf.forward_s * 1e3}  # fmt: skip
    if args.json:
        print_json({"model": clf.path, "flavor": cfg.flavor, "backend": clf.model.backend, "timing": timing,
                    "results": rows, "reference_check": check})  # fmt: skip
    else:
        print(f"  forward pass: {len(rows)} sequence(s) in {timing['forward_ms']:.1f} ms ({clf.model.backend} "
              f"backend; the first call took {timing['first_call_ms']:.0f} ms, compiling or loading the cached "
              f"kernels)")  # fmt: skip
        if check is not None:
            if check["tokens_agree"] is not None:
                word = "agree" if check["tokens_agree"] else "DISAGREE"
                print(f"  token ids {word} with HF transformers' tokenizer on the {len(rows)} sample texts")
            verdict = "agrees" if check["agrees"] else "DISAGREES"
            of_what = ("int8 against float32: the same top label on every sample, and" if clf.model.backend == "int8"
                       else "for the same weights and inputs:")  # fmt: skip
            print(f"  {verdict} with HF transformers' logits ({of_what} max |difference| "
                  f"{check['max_abs_difference']:.2e}, tolerance {tolerance:g})")  # fmt: skip
        sys.stdout.flush()
    if check is not None and not check["agrees"]:
        return EXIT_ERROR
    return EXIT_OK


def register(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="identify the language of texts with the bundled model (and check it against HF)",
        description="Identify the language of texts with the bundled ErnieM language-ID model (31 languages, "
        "trained by scripts/reference/train_langid.py): prints the language and its probability, the tokens and the "
        "time taken. With no TEXT it runs the sample sentences stored with the model and checks its token ids "
        "and logits against those HF transformers computed (exit 1 if they disagree beyond 1e-4). "
        "--model DIR runs any ErnieM sequence classifier directory.",
    )
    add_input_options(demo)
    for action in demo._actions:  # the shared help says "none reads stdin"; here none runs the samples
        if action.dest == "texts":
            action.help = ("texts to classify; none: the sample sentences stored with the model, checked against "
                           "HF; '-' reads stdin, one text per line")  # fmt: skip
    demo.add_argument("--model", help="sequence classifier directory (default: the bundled language-ID model)")
    demo.add_argument("--ids", help='token ids of one sequence instead of text, e.g. "0 5 17 42 2"')
    demo.add_argument("--top", type=int, default=3, help="how many labels to show per text (default 3)")
    demo.add_argument("--quantize", choices=("int8",),
                      help="run the model quantized to int8 (checked against HF's float32 logits within "
                      f"{INT8_TOLERANCE:g}, with the same top label)")  # fmt: skip
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    demo.set_defaults(func=run)
