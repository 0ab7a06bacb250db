"""ErnieMConfig: HF, Paddle and legacy Paddle files; defaults; errors."""

from __future__ import annotations

import json

import pytest

from erniem_np import ErnieMConfig
from erniem_np.config import ACTIVATION_NAMES

# susnato/ernie-m-base_pytorch's first config.json: the Paddle-style file (docs/reference.md#c2-paddle-configs)
PADDLE_BASE = {
    "architectures": ["ErnieMModel"], "attention_probs_dropout_prob": 0.1, "dtype": "float32", "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 514, "model_type": "ernie_m", "num_attention_heads": 12, "num_hidden_layers": 12,
    "pad_token_id": 1, "paddlenlp_version": None, "type_vocab_size": 16, "vocab_size": 250002,
}  # fmt: skip


def test_defaults_are_hf_ernie_m_base():
    c = ErnieMConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        250002, 768, 12, 12, 3072)
    assert (c.hidden_act, c.max_position_embeddings, c.pad_token_id, c.layer_norm_eps) == ("gelu", 514, 1, 1e-5)
    assert c.head_dim == 64 and c.max_sequence_length == 512 and c.flavor == "hf"


def test_paddle_config_json():
    c = ErnieMConfig.from_dict(PADDLE_BASE)
    assert c.flavor == "paddle" and c.layer_norm_eps == 1e-5  # Paddle's LayerNorm epsilon is hard-wired
    assert c.extra == {"dtype": "float32", "type_vocab_size": 16}  # inert keys kept, as HF keeps them
    assert ErnieMConfig.from_dict(PADDLE_BASE, flavor="hf").flavor == "hf"


def test_hf_config_json_with_labels_and_attribute_map():
    d = {**PADDLE_BASE, "transformers_version": "4.46.3", "num_classes": 4, "dropout": 0.3}
    d.pop("paddlenlp_version")
    c = ErnieMConfig.from_dict(d)
    assert c.flavor == "hf" and c.num_labels == 4 and c.classifier_dropout == 0.3
    c = ErnieMConfig.from_dict({"id2label": {"0": "de", "1": "en", "2": "zh"}})
    assert c.num_labels == 3 and c.id2label == {0: "de", 1: "en", 2: "zh"}


def test_legacy_model_config_json(tmp_path):
    legacy = {"init_args": [{"init_args": [], "init_class": "ErnieMModel", **{k: v for k, v in PADDLE_BASE.items()
              if k not in ("architectures", "model_type", "paddlenlp_version", "dtype")}}], "init_class": "UIEM"}
    (tmp_path / "model_config.json").write_text(json.dumps(legacy))
    c = ErnieMConfig.from_pretrained(tmp_path)
    assert c.flavor == "paddle" and c.hidden_size == 768 and c.vocab_size == 250002


def test_round_trip(tmp_path):
    c = ErnieMConfig(hidden_size=48, num_attention_heads=3, intermediate_size=100, flavor="paddle",
                     id2label={0: "a", 1: "b"}, extra={"type_vocab_size": 16})
    c.save_pretrained(tmp_path)
    assert ErnieMConfig.from_pretrained(tmp_path) == c


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 50, "num_attention_heads": 3}, "not a multiple of num_attention_heads"),
        ({"hidden_act": "gelu_erf"}, "hidden_act 'gelu_erf' is not one of"),
        ({"flavor": "torch"}, "flavor must be one of"),
        ({"max_position_embeddings": 2}, "at least 3"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"vocab_size": "big"}, "vocab_size must be a positive integer"),
        ({"pad_token_id": 250002}, "pad_token_id 250002 is not an id"),
        ({"layer_norm_eps": 0}, "layer_norm_eps must be a positive number"),
        ({"problem_type": "ranking"}, "unknown problem_type"),
    ],
)
def test_impossible_configs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        ErnieMConfig(**change)


def test_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        ErnieMConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 7}))
    with pytest.raises(ValueError, match="config.json: invalid ErnieMConfig"):
        ErnieMConfig.from_pretrained(tmp_path)


def test_every_hf_activation_is_implemented():
    import numpy as np

    from erniem_np.activations import ACTIVATIONS

    x = np.linspace(-30, 30, 101, dtype=np.float32)
    for name in ACTIVATION_NAMES:
        y = ACTIVATIONS[name](x)
        assert y.dtype == np.float32 and np.isfinite(y).all(), name
