"""Build the tiny bundled checkpoint erniem_np/data/tiny-random/ (the default of `erniem-np demo`).

Random weights (the recipe of erniem_np.testing, the `tiny` config with seed 0, sequence-classification
head) in the native layout, plus the HF reference's inputs and outputs for that same model, copied from the
golden tests/goldens/hf-tiny.safetensors, so the demo can show its numbers against the reference's.

    .venv/bin/python scripts/data/make_tiny_model.py
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from erniem_np import ErnieMConfig, ErnieMForSequenceClassification  # noqa: E402
from erniem_np.testing import random_weights, split_head  # noqa: E402

OUT = os.path.join(ROOT, "erniem_np", "data", "tiny-random")
GOLDEN = os.path.join(ROOT, "tests", "goldens", "hf-tiny.safetensors")


def main() -> None:
    with safe_open(GOLDEN, "np") as f:
        meta = f.metadata()
        cfg = json.loads(meta["config"])
        case = next(c for c in json.loads(meta["cases"]) if c["name"] == "h_seq_cls")
        tensors = {f"{name}": f.get_tensor(f"h_seq_cls/{name}") for name in case["inputs"] + case["outputs"]}
    config = ErnieMConfig.from_dict({**cfg, "num_labels": 3, "id2label": {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}},
                                    flavor="hf")
    weights = random_weights(cfg, int(meta["seed"]))
    model = ErnieMForSequenceClassification(config, split_head(weights, "seq_cls"))
    model.save_pretrained(OUT)
    reference = {k: np.ascontiguousarray(v) for k, v in tensors.items() if k != "labels"}
    save_file(reference, os.path.join(OUT, "reference_outputs.safetensors"), metadata={
        "source": "tests/goldens/hf-tiny.safetensors case h_seq_cls",
        "library": meta["library"], "library_version": meta["library_version"],
        "framework_version": meta["framework_version"],
    })
    print(f"wrote {OUT}: {model.num_parameters()} parameters")


if __name__ == "__main__":
    main()
