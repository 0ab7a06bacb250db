"""Reading the reference goldens (tests/goldens/README.md) and comparing with the fp32 profile."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
from safetensors import safe_open

from erniem_np import ErnieMConfig
from erniem_np.parity import schema
from erniem_np.parity.compare import probe_stats
from erniem_np.model import (
    ErnieMForInformationExtraction,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)
from erniem_np.testing import HEAD_LABELS, random_weights, split_head, weights_digest

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "goldens")

MODEL_CLASS = {
    "base": ErnieMModel,
    "seq_cls": ErnieMForSequenceClassification,
    "seq_cls_reg": ErnieMForSequenceClassification,
    "token_cls": ErnieMForTokenClassification,
    "qa": ErnieMForQuestionAnswering,
    "mc": ErnieMForMultipleChoice,
    "ie": ErnieMForInformationExtraction,
}

# The fp32 profile of the parity toolkit (erniem_np.parity.schema.PROFILES, docs/parity-testing.md#4-profiles),
# per kind: |ours - ref| <= atol + rtol * |ref|. One tolerance table for the goldens and the bundles.
PROFILE_FP32 = {kind: schema.profile("fp32")[kind] for kind in ("hidden", "probs", "logits", "loss")}


def probe_kind(name: str) -> str:
    if name.startswith("attentions."):
        return "probs"
    if name == "loss":
        return "loss"
    if name in ("logits", "start_logits", "end_logits", "start_prob", "end_prob"):
        return "logits"
    return "hidden"


@dataclass
class Golden:
    path: str
    meta: dict
    config_dict: dict
    cases: list
    tensors: dict = field(repr=False)

    @property
    def name(self) -> str:
        return os.path.basename(self.path).removesuffix(".safetensors")

    @property
    def reference(self) -> str:
        return self.meta["reference"]

    def config(self, head: str = "base") -> ErnieMConfig:
        d = dict(self.config_dict)
        # the FFN width actually built (Paddle ignores intermediate_size); from_pretrained reads it from weights
        d["intermediate_size"] = int(self.meta["ffn_size"])
        if head != "base":
            d["num_labels"] = HEAD_LABELS[head]
            if head == "mc":
                d["num_choices"] = 3
        return ErnieMConfig.from_dict(d, flavor=self.reference)

    def weights(self) -> dict[str, np.ndarray]:
        stored = {k[len("weights/"):]: v for k, v in self.tensors.items() if k.startswith("weights/")}
        if stored:
            return stored
        return random_weights(self.config_dict, int(self.meta["seed"]), int(self.meta["ffn_size"]))

    def recipe_digest(self) -> str:
        return weights_digest(random_weights(self.config_dict, int(self.meta["seed"]), int(self.meta["ffn_size"])))

    def model(self, head: str, dtype=np.float32, backend="numpy"):
        return MODEL_CLASS[head](self.config(head), split_head(self.weights(), None if head == "base" else head),
                                 dtype=dtype, backend=backend)

    def inputs(self, case: dict) -> dict:
        kw = {}
        for name in case["inputs"]:
            if name == "past_key_values":
                n = self.config_dict["num_hidden_layers"]
                kw[name] = tuple(
                    (self.tensors[f"{case['name']}/past.{i}.k"], self.tensors[f"{case['name']}/past.{i}.v"])
                    for i in range(n)
                )
            else:
                kw[name] = self.tensors[f"{case['name']}/{name}"]
        for k, v in case.get("kwargs", {}).items():
            if k == "return_dict":
                continue
            kw[k] = v
        return kw

    def expected(self, case: dict) -> dict[str, np.ndarray]:
        return {name: self.tensors[f"{case['name']}/{name}"] for name in case["outputs"]}


def load_golden(path: str) -> Golden:
    with safe_open(path, "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return Golden(path, meta, json.loads(meta["config"]), json.loads(meta["cases"]), tensors)


def golden_paths() -> list[str]:
    return sorted(os.path.join(GOLDEN_DIR, n) for n in os.listdir(GOLDEN_DIR) if n.endswith(".safetensors"))


def output_by_name(out, name: str):
    """'hidden_states.3' -> out.hidden_states[3]; 'present.1.k' -> out.past_key_values[1][0]."""
    parts = name.split(".")
    if parts[0] == "present":
        return out.past_key_values[int(parts[1])][0 if parts[2] == "k" else 1]
    value = out[parts[0]]
    for p in parts[1:]:
        value = value[int(p)]
    return value


def compare(name: str, actual, expected, atol: float, rtol: float) -> str | None:
    """None when |actual - expected| <= atol + rtol |expected| everywhere (non-finite values must agree), else
    a message naming the tensor, the max error, where it is, and both values there. The element rule and the
    statistics are the parity comparator's (``erniem_np.parity.compare.probe_stats``)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return f"{name}: shape {actual.shape}, reference {expected.shape}"
    st = probe_stats(expected, actual, atol, rtol)
    if not st["mismatch"]:
        return None
    if st["nonfinite_disagree"]:
        return f"{name}: non-finite values disagree at {st['nonfinite_disagree']} of {st['count']} elements"
    where = tuple(st["worst_index"])
    return (f"{name}: max |error| {st['max_abs']:.3g} (atol {atol:g}, rtol {rtol:g}); {st['mismatch']} of "
            f"{st['count']} elements out of tolerance; worst at index {where}: ours {st['worst_cand']:.8g}, "
            f"reference {st['worst_ref']:.8g}")
