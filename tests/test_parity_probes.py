"""Probes recorded during a forward pass: the same numbers as the outputs, nothing changed by recording."""

from __future__ import annotations

import numpy as np
import pytest

from erniem_np import ErnieMConfig
from erniem_np.model import ErnieMForQuestionAnswering, ErnieMForSequenceClassification, ErnieMModel
from erniem_np.testing import random_weights, split_head

CONFIG = ErnieMConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                      intermediate_size=40, max_position_embeddings=20)  # fmt: skip
IDS = np.array([[0, 5, 9, 11, 2], [0, 7, 2, 1, 1]])
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
DEBUG = ("attn.q", "attn.k", "attn.v", "attn.scores", "attn.probs", "attn.context", "attn.out", "norm1.out",
         "ffn.up", "ffn.act", "ffn.down", "out")  # fmt: skip


def _model(cls=ErnieMModel, head=None, backend="numpy", dtype=np.float32):
    config = CONFIG if head is None else CONFIG.replace(num_labels=3 if head == "seq_cls" else 2)
    return cls(config, split_head(random_weights(CONFIG, 3), head), dtype=dtype, backend=backend)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_probes_are_the_outputs_and_recording_changes_nothing(dtype):
    model = _model(dtype=dtype)
    plain = model(IDS, attention_mask=MASK, output_hidden_states=True, output_attentions=True)
    probes = {}
    out = model(IDS, attention_mask=MASK, output_hidden_states=True, output_attentions=True, probes=probes)
    np.testing.assert_array_equal(out.last_hidden_state, plain.last_hidden_state)
    np.testing.assert_array_equal(probes["emb.out"], plain.hidden_states[0])
    for i in range(CONFIG.num_hidden_layers):
        np.testing.assert_array_equal(probes[f"layer.{i:02d}.out"], plain.hidden_states[i + 1])
        np.testing.assert_array_equal(probes[f"layer.{i:02d}.attn.probs"], plain.attentions[i])
        for name in DEBUG:
            assert probes[f"layer.{i:02d}.{name}"].dtype == dtype, name
    np.testing.assert_array_equal(probes["pooler.out"], plain.pooler_output)
    # the probes are consistent with each other: q k^T / sqrt(d) is the scores, the context times out_proj is attn.out
    q, k = probes["layer.00.attn.q"], probes["layer.00.attn.k"]
    d = CONFIG.hidden_size // CONFIG.num_attention_heads
    np.testing.assert_allclose(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d), probes["layer.00.attn.scores"], rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    assert probes["layer.00.ffn.up"].shape == (2, 5, 40)
    assert probes["layer.00.attn.q"].shape == (2, 3, 5, 8)


def test_numba_records_what_the_kernels_expose_and_agrees_with_numpy():
    ref, fast = {}, {}
    _model(backend="numpy")(IDS, attention_mask=MASK, probes=ref)
    out = _model(backend="numba")(IDS, attention_mask=MASK, probes=fast)
    assert "layer.00.ffn.up" not in fast and "layer.00.attn.scores" not in fast
    assert {"emb.out", "layer.01.out", "layer.01.attn.probs", "layer.01.attn.q", "pooler.out"} <= set(fast)
    np.testing.assert_array_equal(fast["layer.01.out"], out.last_hidden_state)
    for name, value in fast.items():
        np.testing.assert_allclose(value, ref[name], atol=2e-5, rtol=1e-4, err_msg=name)


def test_heads_record_their_outputs():
    probes = {}
    out = _model(ErnieMForSequenceClassification, "seq_cls")(IDS, attention_mask=MASK, probes=probes)
    np.testing.assert_array_equal(probes["head.seq_cls.logits"], out.logits)
    probes = {}
    out = _model(ErnieMForQuestionAnswering, "qa")(IDS, attention_mask=MASK, probes=probes)
    np.testing.assert_array_equal(probes["head.qa.end_logits"], out.end_logits)
    assert "pooler.out" not in probes  # HF's QA model has no pooler
