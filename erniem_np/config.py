"""ErnieMConfig: the model's hyper-parameters, read from HF or Paddle config files.

Field names and defaults are HF transformers 4.46.3's ``ErnieMConfig`` (docs/reference.md#c1-configuration-fields).
One field is ours: ``flavor``, which picks the reference whose behaviour we reproduce where HF and PaddleNLP
differ (the implicit attention mask, the mask fill value and hence fully-masked rows; see layers.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
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


def read_json_object(path: str | os.PathLike, what: str, error: type[Exception] = ValueError,
                     allow_any: bool = False) -> Any:  # fmt: skip
    """A JSON file that must hold an object (any value with ``allow_any``); every way it can be unreadable (bad
    JSON or encoding, nesting too deep to parse, an integer literal too long) becomes one ``error`` naming
    the file. The one reader of the package's JSON files: configs, checkpoint indexes, tokenizer settings."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: not a usable {what}: its JSON nests too deeply") from None
    except ValueError as e:  # e.g. an integer literal too long to convert
        raise error(f"{path}: not a usable {what}: {str(e)[:200]}") from None
    if not allow_any and not isinstance(d, dict):
        raise error(f"{path}: a {what} must be a JSON object, got {type(d).__name__}")
    return d


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
    quantization: str | None = None  # ours: "int8" for a checkpoint written by an int8 model (erniem_np.quantized)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept as given (HF keeps them too)

    def __post_init__(self) -> None:
        if self.id2label is not None:
            self.id2label = _label_names(self.id2label)
            self.num_labels = len(self.id2label)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming every impossible setting."""
        problems = []
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "num_labels"):  # fmt: skip
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                problems.append(f"{name} must be a positive integer, got {_show(value)}")
        if not problems and self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if _is_int(self.max_position_embeddings) and self.max_position_embeddings < 3:
            problems.append(
                f"max_position_embeddings must be at least 3 (positions are shifted by +2), "
                f"got {self.max_position_embeddings}"
            )
        if not _is_int(self.pad_token_id) or _is_int(self.vocab_size) and not (
            0 <= self.pad_token_id < self.vocab_size
        ):
            problems.append(f"pad_token_id {_show(self.pad_token_id)} is not an id in [0, vocab_size)")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATION_NAMES:
            problems.append(
                f"hidden_act {_show(self.hidden_act)} is not one of the activations HF accepts: "
                + ", ".join(ACTIVATION_NAMES)
            )
        if not (_is_number(self.layer_norm_eps) and self.layer_norm_eps > 0):
            problems.append(f"layer_norm_eps must be a positive number, got {_show(self.layer_norm_eps)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "classifier_dropout",
                     "act_dropout"):  # fmt: skip
            value = getattr(self, name)
            if not (_is_number(value) or value is None and name in ("classifier_dropout", "act_dropout")):
                problems.append(f"{name} must be a number, got {_show(value)}")
        if self.num_choices is not None and not (_is_int(self.num_choices) and self.num_choices >= 1):
            problems.append(f"num_choices must be a positive integer, got {_show(self.num_choices)}")
        if not isinstance(self.flavor, str) or self.flavor not in FLAVORS:
            problems.append(f"flavor must be one of {FLAVORS}, got {_show(self.flavor)}")
        if self.quantization not in (None, "int8"):
            problems.append(f"quantization must be \"int8\" or absent, got {_show(self.quantization)}")
        if not (self.problem_type is None or isinstance(self.problem_type, str) and self.problem_type in (
                "regression", "single_label_classification", "multi_label_classification")):  # fmt: skip
            problems.append(f"unknown problem_type {_show(self.problem_type)}")
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
            flavor = d.get("flavor")
        if flavor is None:
            flavor = "paddle" if _looks_like_paddle(d) else "hf"
        d["flavor"] = flavor
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        label2id = d.pop("label2id", None)  # derived from id2label when saving
        extra = {k: v for k, v in d.items() if k not in names and k not in _BOOKKEEPING}
        if label2id is not None and not (isinstance(label2id, dict) and all(
                isinstance(k, str) and _is_int(v) for k, v in label2id.items())):  # fmt: skip
            raise ValueError(f"invalid ErnieMConfig: label2id must map label names to integer ids, got "
                             f"{_show(label2id)}")  # fmt: skip
        if label2id and "id2label" not in known:
            known["id2label"] = {v: k for k, v in label2id.items()}
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, flavor: str | None = None) -> ErnieMConfig:
        d = read_json_object(path, "config", allow_any=True)  # from_dict names a non-object value
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
        if d["quantization"] is None:
            d.pop("quantization")
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


def _unwrap_legacy(d: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """Legacy Paddle ``model_config.json``: hyper-parameters sit in ``init_args`` (possibly nested, as when a
    head such as UIEM wraps an ErnieMModel) or directly beside ``init_class``."""
    if "init_args" not in d and "init_class" not in d:
        return d
    args = d.get("init_args") or []
    if not isinstance(args, list):
        raise ValueError(f"invalid ErnieMConfig: init_args must be a list, got {_show(args)}")  # noqa: TRY004
    if depth > 8:
        raise ValueError("invalid ErnieMConfig: init_args nest more than 8 levels deep")
    flat = {k: v for k, v in d.items() if k not in ("init_args", "init_class")}
    for arg in args:
        if isinstance(arg, dict):
            inner = _unwrap_legacy(arg, depth + 1)
            flat = {**inner, **flat}
    flat.setdefault("paddlenlp_version", None)  # marks the file as Paddle's
    return flat


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


def _show(x) -> str:
    """A value for an error message: short, whatever a file holds."""
    if isinstance(x, (dict, list, tuple)):
        return f"a {'JSON object' if isinstance(x, dict) else type(x).__name__} of {len(x)} items"
    if isinstance(x, int) and not isinstance(x, bool) and x.bit_length() > 64:
        return f"an integer of {x.bit_length()} bits"
    text = repr(x)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-10:]}"


def _label_names(id2label) -> dict[int, str]:
    """id2label as ``{int id: str name}``; the ids may be written as strings ("0"), as JSON requires."""
    if not isinstance(id2label, dict):
        raise ValueError(  # noqa: TRY004  (a file's content: ValueError, as for every invalid config)
            f"invalid ErnieMConfig: id2label must map label ids to names ({{\"0\": \"name\", ...}}), got "
            f"{_show(id2label)}"
        )
    out = {}
    for k, v in id2label.items():
        key = k if _is_int(k) else int(k) if isinstance(k, str) and re.fullmatch(r"-?[0-9]{1,18}", k) else None
        if key is None or not isinstance(v, str):
            raise ValueError(f"invalid ErnieMConfig: id2label must map label ids to names, got the entry "
                             f"{_show(k)}: {_show(v)}")  # fmt: skip
        out[key] = v
    return out


def _looks_like_paddle(d: dict[str, Any]) -> bool:
    return "transformers_version" not in d and ("paddlenlp_version" in d or "init_class" in d)


# What the tokenizer reads from tokenizer_config.json and special_tokens_map.json.
TOKENIZER_SPECIAL_TOKENS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def tokenizer_config_problems(d: dict[str, Any]) -> list[str]:
    """What is wrong with the settings the tokenizer reads from a tokenizer_config.json or
    special_tokens_map.json dict, one entry per key (empty when nothing is): ``do_lower_case`` a boolean,
    ``model_max_length`` a positive number, ``flavor`` one of FLAVORS, each special token a non-empty string
    or an AddedToken object (``{"content": "[SEP]", ...}``). Absent keys and nulls are fine."""
    problems = []
    value = d.get("do_lower_case")
    if value is not None and not isinstance(value, bool):
        problems.append(f"do_lower_case must be true or false, got {_show(value)}")
    value = d.get("model_max_length")
    if value is not None and not (_is_number(value) and value >= 1):
        problems.append(f"model_max_length must be a positive number, got {_show(value)}")
    value = d.get("flavor")
    if value is not None and not (isinstance(value, str) and value in FLAVORS):
        problems.append(f"flavor must be one of {', '.join(FLAVORS)}, got {_show(value)}")
    for key in TOKENIZER_SPECIAL_TOKENS:
        value = d.get(key)
        content = value.get("content") if isinstance(value, dict) else value
        if value is not None and not (isinstance(content, str) and content):
            problems.append(f"{key} must be a non-empty string or an AddedToken object with a \"content\" "
                            f"string, got {_show(value)}")  # fmt: skip
    return problems
