"""ErnieMConfig: the model's hyper-parameters, read from HF or Paddle config files.

Field names and defaults are HF transformers 4.46.3's ``ErnieMConfig`` (docs/reference.md#c1-configuration-fields).
One field is ours: ``flavor``, which picks the reference whose behaviour we reproduce where HF and PaddleNLP
differ (the implicit attention mask, the mask fill value and hence fully-masked rows; see layers.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

FLAVORS = ("hf", "paddle")

# Every activation name HF's ACT2FN accepts (transformers/activations.py); activations.ACTIVATIONS implements them.
ACTIVATION_NAMES = (
    "gelu", "gelu_10", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_accurate",
    "laplace", "leaky_relu", "linear", "mish", "quick_gelu", "relu", "relu2", "relu6", "sigmoid", "silu",
    "swish", "tanh",
)  # fmt: skip

# Keys that are ours or HF's bookkeeping and never model hyper-parameters.
_BOOKKEEPING = {"architectures", "model_type", "transformers_version", "paddlenlp_version", "torch_dtype"}


@dataclass
class ErnieMConfig:
    """Hyper-parameters of an ErnieM model (HF names and defaults, plus ``flavor``).

    ``intermediate_size`` is the FFN width F. Paddle ignores it and builds ``4 * hidden_size``; loading
    takes F from the ``linear1`` weights when the file disagrees (``ErnieMModel.from_pretrained``).
    """

    vocab_size: int = 250002
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # exact erf GELU in both references, not the tanh approximation
    hidden_dropout_prob: float = 0.1  # inference only: dropouts are recorded, never applied
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514  # usable length is 512: position ids are shifted by +2
    initializer_range: float = 0.02
    pad_token_id: int = 1
    layer_norm_eps: float = 1e-5  # Paddle has no such field: its LayerNorm epsilon is hard-wired to 1e-5
    classifier_dropout: float | None = None
    act_dropout: float | None = 0.0
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    num_choices: int | None = None  # Paddle's multiple-choice head reads it; HF takes it from the input shape
    flavor: str = "hf"
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept as given (HF keeps them too)

    def __post_init__(self) -> None:
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming every impossible setting."""
        problems = []
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "num_labels"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if isinstance(self.max_position_embeddings, int) and self.max_position_embeddings < 3:
            problems.append(
                f"max_position_embeddings must be at least 3 (positions are shifted by +2), "
                f"got {self.max_position_embeddings}"
            )
        if not isinstance(self.pad_token_id, int) or isinstance(self.vocab_size, int) and not (
            0 <= self.pad_token_id < self.vocab_size
        ):
            problems.append(f"pad_token_id {self.pad_token_id!r} is not an id in [0, vocab_size)")
        if self.hidden_act not in ACTIVATION_NAMES:
            problems.append(
                f"hidden_act {self.hidden_act!r} is not one of the activations HF accepts: "
                + ", ".join(ACTIVATION_NAMES)
            )
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            problems.append(f"layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")
        if self.flavor not in FLAVORS:
            problems.append(f"flavor must be one of {FLAVORS}, got {self.flavor!r}")
        if self.problem_type not in (None, "regression", "single_label_classification",
                                     "multi_label_classification"):  # fmt: skip
            problems.append(f"unknown problem_type {self.problem_type!r}")
        if problems:
            raise ValueError("invalid ErnieMConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_sequence_length(self) -> int:
        """Longest sequence the position table allows: max_position_embeddings - 2 (the +2 offset)."""
        return self.max_position_embeddings - 2

    @property
    def classifier_dropout_prob(self) -> float:
        # Both references: classifier_dropout if set, else hidden_dropout_prob (recorded only; eval mode).
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    # ------------------------------------------------------------------ files
    @classmethod
    def from_dict(cls, d: dict[str, Any], flavor: str | None = None) -> ErnieMConfig:
        """Build from an HF config.json dict, a Paddle config.json dict, or a legacy Paddle
        ``model_config.json`` dict (``{"init_args": [...], "init_class": ...}``)."""
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object, got {type(d).__name__}")
        d = _unwrap_legacy(d)
        d = dict(d)
        if "num_classes" in d and "num_labels" not in d:  # attribute_map: num_classes -> num_labels
            d["num_labels"] = d.pop("num_classes")
        if "dropout" in d and "classifier_dropout" not in d:  # attribute_map: dropout -> classifier_dropout
            d["classifier_dropout"] = d.pop("dropout")
        if flavor is None:
            flavor = d.get("flavor") or ("paddle" if _looks_like_paddle(d) else "hf")
        d["flavor"] = flavor
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        label2id = d.pop("label2id", None)  # derived from id2label when saving
        extra = {k: v for k, v in d.items() if k not in names and k not in _BOOKKEEPING}
        if label2id and "id2label" not in known:
            known["id2label"] = {v: k for k, v in label2id.items()}
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, flavor: str | None = None) -> ErnieMConfig:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d, flavor=flavor)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, flavor: str | None = None) -> ErnieMConfig:
        """Read ``config.json`` (HF or Paddle) or Paddle's legacy ``model_config.json`` from a directory."""
        path = os.fspath(path)
        if os.path.isfile(path):
            return cls.from_json_file(path, flavor)
        for name in ("config.json", "model_config.json"):
            p = os.path.join(path, name)
            if os.path.isfile(p):
                return cls.from_json_file(p, flavor)
        raise FileNotFoundError(f"no config.json or model_config.json in {path}")

    def to_dict(self) -> dict[str, Any]:
        """An HF-compatible config.json dict (HF keeps the unknown keys, including ``flavor``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if d["id2label"] is None:
            d.pop("id2label")
        else:
            d["id2label"] = {str(k): v for k, v in d["id2label"].items()}
            d["label2id"] = {v: k for k, v in self.id2label.items()}
        if d["num_choices"] is None:
            d.pop("num_choices")
        d.update({k: v for k, v in self.extra.items() if k not in d})
        d["model_type"] = "ernie_m"
        return d

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    def replace(self, **changes: Any) -> ErnieMConfig:
        return dataclasses.replace(self, **changes)


def _unwrap_legacy(d: dict[str, Any]) -> dict[str, Any]:
    """Legacy Paddle ``model_config.json``: hyper-parameters sit in ``init_args`` (possibly nested, as when a
    head such as UIEM wraps an ErnieMModel) or directly beside ``init_class``."""
    if "init_args" not in d and "init_class" not in d:
        return d
    flat = {k: v for k, v in d.items() if k not in ("init_args", "init_class")}
    for arg in d.get("init_args") or []:
        if isinstance(arg, dict):
            inner = _unwrap_legacy(arg)
            flat = {**inner, **flat}
    flat.setdefault("paddlenlp_version", None)  # marks the file as Paddle's
    return flat


def _looks_like_paddle(d: dict[str, Any]) -> bool:
    return "transformers_version" not in d and ("paddlenlp_version" in d or "init_class" in d)
