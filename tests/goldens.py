"""Comparing this implementation's outputs with stored reference outputs at the fp32 profile.

Used by the golden tests (tests/goldens/, parity bundles read with erniem_np.parity.bundle), the checkpoint
fixtures and the live HF tests: the tolerance table is the parity toolkit's, the element rule its comparator's.
"""

from __future__ import annotations

import os

import numpy as np

from erniem_np.model import (
    ErnieMForInformationExtraction,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)
from erniem_np.parity import schema
from erniem_np.parity.compare import probe_stats

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
    """The profile kind of an output named as HF names it (the checkpoint fixtures' reference outputs)."""
    if name.startswith("attentions."):
        return "probs"
    if name == "loss":
        return "loss"
    if name in ("logits", "start_logits", "end_logits", "start_prob", "end_prob"):
        return "logits"
    return "hidden"


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
