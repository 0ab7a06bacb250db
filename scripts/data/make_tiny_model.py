"""Build the tiny bundled checkpoint erniem_np/data/tiny-random/ (the default of `erniem-np demo`).

Random weights (the recipe of erniem_np.testing, the `tiny` config with seed 0, sequence-classification
head) in the native layout, plus the HF reference's inputs and outputs for that same model, copied from the
golden tests/goldens/hf-tiny.safetensors, so the demo can show its numbers against the reference's.

    .venv/bin/python scripts/data/make_tiny_model.py
"""

from __future__ import annotations

import os
import sys

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from erniem_np import ErnieMConfig, ErnieMForSequenceClassification
from erniem_np.parity.bundle import load_bundle
from erniem_np.parity.produce import bundle_weights
from erniem_np.testing import split_head

OUT = os.path.join(ROOT, "erniem_np", "data", "tiny-random")
GOLDEN = os.path.join(ROOT, "tests", "goldens", "hf-tiny.safetensors")


def main() -> None:
    golden = load_bundle(GOLDEN)
    inputs = golden.inputs("h_seq_cls")
    outputs = {k: golden.array(f"h_seq_cls/head.seq_cls.{k}") for k in ("logits", "loss")}
    config = ErnieMConfig.from_dict({**golden.metadata["config"], "num_labels": 3,
                                     "id2label": {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}}, flavor="hf")  # fmt: skip
    model = ErnieMForSequenceClassification(config, split_head(bundle_weights(golden), "seq_cls"))
    model.save_pretrained(OUT)
    reference = {k: np.ascontiguousarray(v) for k, v in {**inputs, **outputs}.items() if k != "labels"}
    producer = golden.metadata["producer"]
    save_file(reference, os.path.join(OUT, "reference_outputs.safetensors"), metadata={
        "source": "tests/goldens/hf-tiny.safetensors case h_seq_cls",
        "library": producer["library"], "library_version": producer["library_version"],
        "framework_version": producer["framework_version"],
    })
    print(f"wrote {OUT}: {model.num_parameters()} parameters")


if __name__ == "__main__":
    main()
