"""int8 against float32 on trained weights: the bundled language-ID model on its held-out lines.

    .venv/bin/python scripts/bench/int8_accuracy.py            # the table docs/quantization.md quotes

Runs the float32 model (numba layers) and the same checkpoint quantized at load (``quantize="int8"``) on
every line of ``heldout_sample.jsonl`` (620 lines, 31 languages), in batches of 32 padded to their longest
line, and prints: accuracy of each, top-1 agreement between them, the largest logit difference, and the
languages where either is wrong. Random weights would say nothing here: their activations have none of the
structure (outlier channels, skewed GELU outputs) that makes quantization hard or easy.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from erniem_np.bundled import LANGID_MODEL
from erniem_np.model import ErnieMForSequenceClassification
from erniem_np.tokenizer import ErnieMTokenizer


def logits(model, tokenizer, texts, batch=32):
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=128, return_tensors="np")
        out.append(model(enc["input_ids"], attention_mask=enc["attention_mask"]).logits)
    return np.concatenate(out)


def load(model_dir):
    """-> (held-out texts, their languages, the tokenizer, the float32 model, the model quantized at load)."""
    with open(os.path.join(model_dir, "heldout_sample.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    tokenizer = ErnieMTokenizer.from_pretrained(model_dir)
    fp32 = ErnieMForSequenceClassification.from_pretrained(model_dir)
    int8 = ErnieMForSequenceClassification.from_pretrained(model_dir, quantize="int8")
    return [r["text"] for r in rows], np.array([r["language"] for r in rows]), tokenizer, fp32, int8


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=LANGID_MODEL, help="a sequence classifier with heldout_sample.jsonl beside it")
    args = ap.parse_args(argv)
    texts, gold, tokenizer, fp32, int8 = load(args.model)
    names = fp32.config.id2label
    l32, l8 = logits(fp32, tokenizer, texts), logits(int8, tokenizer, texts)
    p32 = np.array([names[i] for i in l32.argmax(1)])
    p8 = np.array([names[i] for i in l8.argmax(1)])
    print(f"{len(texts)} held-out lines, {len(set(gold))} languages, {args.model}")
    print("| model | accuracy | top-1 agreement with float32 | largest logit difference |")
    print("|---|---|---|---|")
    print(f"| float32 (numba) | {100 * (p32 == gold).mean():.2f}% | - | - |")
    print(f"| int8 (quantized at load) | {100 * (p8 == gold).mean():.2f}% | {100 * (p8 == p32).mean():.2f}% | "
          f"{np.abs(l32 - l8).max():.4f} (logits up to {np.abs(l32).max():.1f}) |")  # fmt: skip
    flipped = np.flatnonzero(p8 != p32)
    for i in flipped:
        print(f"  differs: {texts[i]!r}: float32 {p32[i]}, int8 {p8[i]}, gold {gold[i]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
