"""``erniem-np demo``: run a sequence classifier on a few inputs and print what it predicts."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from .. import __version__
from ._common import EXIT_ERROR, EXIT_OK

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
TINY_MODEL = os.path.join(DATA_DIR, "tiny-random")


def _parse_ids(text: str, vocab_size: int) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--ids takes integers separated by spaces or commas, got {text!r}")
    if not ids:
        raise ValueError("--ids is empty")
    return ids


def run(args: argparse.Namespace) -> int:
    from safetensors.numpy import load_file

    from ..model import ErnieMForSequenceClassification

    path = args.model or TINY_MODEL
    t0 = time.perf_counter()
    model = ErnieMForSequenceClassification.from_pretrained(path)
    t_load = time.perf_counter() - t0
    cfg = model.config
    print(f"erniem-np {__version__}: ErnieM sequence classifier from {path}")
    print(f"  {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
          f"FFN {cfg.intermediate_size}, vocabulary {cfg.vocab_size}, {model.num_parameters():,} parameters, "
          f"flavor {cfg.flavor}; loaded in {t_load * 1e3:.1f} ms")
    if args.ids:
        input_ids = np.array([_parse_ids(args.ids, cfg.vocab_size)])
        attention_mask = None
        reference = None
    else:
        ref_path = os.path.join(path, "reference_outputs.safetensors")
        if not os.path.isfile(ref_path):
            raise ValueError(f"{path} has no reference_outputs.safetensors; pass --ids")
        reference = load_file(ref_path)
        input_ids, attention_mask = reference["input_ids"], reference["attention_mask"]
    t0 = time.perf_counter()
    model(input_ids=input_ids, attention_mask=attention_mask)  # the first call compiles (or loads) the kernels
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    t_run = time.perf_counter() - t0
    probs = np.exp(out.logits - out.logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    labels = cfg.id2label or {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
    for i, row in enumerate(input_ids):
        n = int(np.asarray(attention_mask)[i].sum()) if attention_mask is not None else len(row)
        k = int(probs[i].argmax())
        print(f"  sequence {i}: ids {list(map(int, row[:n]))}")
        print(f"    -> {labels[k]} p={probs[i, k]:.4f}   logits {np.array2string(out.logits[i], precision=5)}")
    print(f"  forward pass: {len(input_ids)} sequence(s) in {t_run * 1e3:.1f} ms ({model.backend} backend; the "
          f"first call took {t_first * 1e3:.0f} ms, compiling or loading the cached kernels)")
    if reference is not None:
        err = float(np.abs(out.logits - reference["logits"]).max())
        verdict = "agrees" if err <= 1e-4 else "DISAGREES"
        print(f"  {verdict} with HF transformers' logits for the same weights and inputs: max |difference| {err:.2e}")
        return EXIT_OK if err <= 1e-4 else EXIT_ERROR
    return EXIT_OK



def register(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the bundled tiny checkpoint and check it against the HF reference",
        description="Run a sequence classifier (by default the bundled tiny random-weight checkpoint) on "
        "token ids and print its predictions. Without --ids it runs the inputs stored with the bundled "
        "model and compares the logits with those HF transformers computed for the same weights.",
    )
    demo.add_argument("--model", help="checkpoint directory (default: the bundled tiny model)")
    demo.add_argument("--ids", help='token ids of one sequence, e.g. "0 5 17 42 2"')
    demo.set_defaults(func=run)

