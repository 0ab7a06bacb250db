"""Seeded random ErnieM weights: one recipe shared by the golden scripts and the tests.

The golden scripts (``scripts/reference/make_goldens_hf.py``, ``scripts/reference/make_goldens_paddle.py``)
draw the weights of their random models here, load them into the reference library, and record the seed. The tests draw the same
weights again, so a golden file need not carry the weights of a large config. Everything is NumPy's PCG64
stream, which is the same on every platform.

Names are HuggingFace's state-dict names with torch's ``[out, in]`` Linear layout. Head parameters carry the
head's short name as a prefix: ``seq_cls.classifier.weight``, ``qa.qa_outputs.weight``, ``ie.linear_start.bias``.

The scales are chosen so that a bug shows: attention is peaked (q/k weights scaled up), biases and LayerNorm
parameters are far from their init values, and embeddings differ per position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

# Head short name -> (HF class name, {param name: shape in terms of H and num_labels}).
# num_labels of each head in the random models.
HEAD_LABELS = {"seq_cls": 3, "seq_cls_reg": 1, "token_cls": 5, "qa": 2, "mc": 1, "ie": 1}
HEAD_PARAM = {
    "seq_cls": "classifier",
    "seq_cls_reg": "classifier",
    "token_cls": "classifier",
    "qa": "qa_outputs",
    "mc": "classifier",
    "ie": ("linear_start", "linear_end"),
}


def _get(config, key, default=None):
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def param_specs(config, ffn_size: int | None = None) -> list[tuple[str, tuple[int, ...], str]]:
    """Ordered (name, shape, kind) of every base-model and head parameter, HF names, [out, in] layout.

    ``ffn_size`` overrides ``intermediate_size`` (Paddle builds its FFN as 4 * hidden_size whatever the
    config says, so the Paddle golden script passes it).
    """
    from .config import ErnieMConfig
    from .parameters import base_parameter_shapes

    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings")  # fmt: skip
    cfg = ErnieMConfig(**{k: int(_get(config, k)) for k in keys})
    if ffn_size is not None:
        cfg = cfg.replace(intermediate_size=int(ffn_size))
    specs = []
    for name, shape in base_parameter_shapes(cfg).items():
        if name.startswith("embeddings.") and name.endswith("embeddings.weight"):
            kind = "embedding"
        elif name.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
            kind = "ln_weight"
        elif name.endswith(".bias"):
            kind = "bias"
        else:
            kind = "linear_qk" if name.endswith(("q_proj.weight", "k_proj.weight")) else "linear"
        specs.append((name, shape, kind))
    H = cfg.hidden_size
    for head, n in HEAD_LABELS.items():
        names = HEAD_PARAM[head]
        for name in names if isinstance(names, tuple) else (names,):
            specs.append((f"{head}.{name}.weight", (n, H), "linear"))
            specs.append((f"{head}.{name}.bias", (n,), "head_bias"))
    return specs


def random_weights(config, seed: int, ffn_size: int | None = None) -> dict[str, np.ndarray]:
    """Draw every parameter of ``param_specs`` from ``np.random.default_rng(seed)``, in order, as float32.

    Draws are float64 standard normals scaled per kind, then rounded to float32:
    embeddings N(0, 1); Linear weights N(0, 1/in) (q/k: N(0, 4/in), for peaked attention);
    LayerNorm weights 1 + N(0, 0.1^2); biases N(0, 0.1^2); head biases 0.5 + N(0, 0.1^2).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape, kind in param_specs(config, ffn_size):
        z = rng.standard_normal(shape)
        if kind == "embedding":
            a = z
        elif kind == "linear":
            a = z / np.sqrt(shape[-1])
        elif kind == "linear_qk":
            a = 2.0 * z / np.sqrt(shape[-1])
        elif kind == "ln_weight":
            a = 1.0 + 0.1 * z
        elif kind == "bias":
            a = 0.1 * z
        elif kind == "head_bias":
            a = 0.5 + 0.1 * z
        else:  # pragma: no cover - the table above is closed
            raise AssertionError(kind)
        out[name] = a.astype(np.float32)
    return out


def split_head(weights: Mapping[str, np.ndarray], head: str | None) -> dict[str, np.ndarray]:
    """The state dict of one HF model class from ``random_weights`` output.

    ``head=None`` gives the bare ``ErnieMModel`` (unprefixed names); a head name gives the head model's
    state dict (``ernie_m.`` prefix on the base; no pooler for ``token_cls`` and ``qa``, as in HF).
    """
    heads = tuple(HEAD_LABELS)
    base = {k: v for k, v in weights.items() if not k.startswith(tuple(h + "." for h in heads))}
    if head is None:
        return dict(base)
    sd = {"ernie_m." + k: v for k, v in base.items()}
    if head in ("token_cls", "qa"):
        sd = {k: v for k, v in sd.items() if not k.startswith("ernie_m.pooler.")}
    prefix = head + "."
    sd.update({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    return sd


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 over sorted names, shapes and float32 bytes: proves a recipe still draws what a golden used."""
    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name], dtype=np.float32)
        h.update(name.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()
