"""The model's parameters: HF state-dict names and shapes, HF's random initialisation, and the checks that
turn a state dict into the nested tree the layer functions take.

Linear weights are stored ``[out, in]`` (torch's layout) under HF's names; ``unflatten`` turns
``encoder.layers.3.linear1.weight`` into ``tree["encoder"]["layers"][3]["linear1"]["weight"]``, so a layer is
called as ``encoder_layer(x, **tree["encoder"]["layers"][3], ...)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import ErnieMConfig


class WeightsMismatchError(ValueError):
    """A state dict whose names or shapes are not the ones a model class needs; ``missing``, ``unexpected``
    and ``misshapen`` list them, and the message names every one."""

    def __init__(self, owner: str, missing: list[str], unexpected: list[str], misshapen: list[str],
                 where: str | None = None):  # fmt: skip
        self.owner, self.where = owner, where
        self.missing, self.unexpected, self.misshapen = missing, unexpected, misshapen
        parts = [f"{label} ({len(items)}): " + ", ".join(items)
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen))
                 if items]  # fmt: skip
        self.detail = "; ".join(parts)
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{owner} weights do not match the config: {self.detail}")

    def located(self, where: str) -> WeightsMismatchError:
        """The same error, its message prefixed with the files it came from."""
        return WeightsMismatchError(self.owner, self.missing, self.unexpected, self.misshapen, where)


# An int8 model (quantized.py) stores these weights as int8, each with its float32 scales (one per row) under
# the weight's name + SCALE_SUFFIX: the word table and the six Linear layers of every encoder layer.
SCALE_SUFFIX = "_scale"
WORD_TABLE = "embeddings.word_embeddings.weight"
INT8_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "linear1", "linear2")


def is_int8_weight(name: str) -> bool:
    """Whether an int8 model stores the weight ``name`` (HF name, with or without ``ernie_m.``) as int8."""
    in_encoder = name.startswith(("encoder.layers.", "ernie_m.encoder.layers."))
    return name.endswith(WORD_TABLE) or (in_encoder and name.endswith(tuple(f".{n}.weight" for n in INT8_LINEARS)))


def with_int8_scales(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """``shapes`` with the scales of each int8 weight right after it: what an int8 checkpoint holds."""
    out = {}
    for k, shape in shapes.items():
        out[k] = shape
        if is_int8_weight(k):
            out[k + SCALE_SUFFIX] = (shape[0],)
    return out


def base_parameter_shapes(config: ErnieMConfig, with_pooler: bool = True) -> dict[str, tuple[int, ...]]:
    """HF state-dict names and shapes of the bare encoder ([out, in] Linear layout)."""
    H, F, V, T = config.hidden_size, config.intermediate_size, config.vocab_size, config.max_position_embeddings
    shapes = {
        "embeddings.word_embeddings.weight": (V, H),
        "embeddings.position_embeddings.weight": (T, H),
        "embeddings.layer_norm.weight": (H,),
        "embeddings.layer_norm.bias": (H,),
    }
    for i in range(config.num_hidden_layers):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):  # QUIRK: HF nests q/k/v one level deeper than out_proj
            shapes[f"{p}self_attn.self_attn.{proj}.weight"] = (H, H)
            shapes[f"{p}self_attn.self_attn.{proj}.bias"] = (H,)
        shapes.update({
            f"{p}self_attn.out_proj.weight": (H, H), f"{p}self_attn.out_proj.bias": (H,),
            f"{p}linear1.weight": (F, H), f"{p}linear1.bias": (F,),
            f"{p}linear2.weight": (H, F), f"{p}linear2.bias": (H,),
            f"{p}norm1.weight": (H,), f"{p}norm1.bias": (H,),
            f"{p}norm2.weight": (H,), f"{p}norm2.bias": (H,),
        })  # fmt: skip
    if with_pooler:
        shapes["pooler.dense.weight"] = (H, H)
        shapes["pooler.dense.bias"] = (H,)
    return shapes


def init_weights(shapes: dict[str, tuple[int, ...]], config: ErnieMConfig, seed: int) -> dict[str, np.ndarray]:
    """HF's _init_weights: Linear and Embedding weights N(0, initializer_range), biases 0, LayerNorm (1, 0),
    the padding_idx row (pad_token_id) of both embedding tables zeroed."""
    rng = np.random.default_rng(seed)
    std = config.initializer_range
    sd = {}
    for name, shape in shapes.items():
        if name.endswith(("layer_norm.weight", "norm1.weight", "norm2.weight")):
            sd[name] = np.ones(shape)
        elif name.endswith(".bias"):
            sd[name] = np.zeros(shape)
        else:
            sd[name] = rng.normal(0.0, std, shape)
            if "embeddings." in name and config.pad_token_id < shape[0]:
                sd[name][config.pad_token_id] = 0.0  # padding_idx=pad_token_id on both tables
                # (HF refuses a pad id beyond the position table at construction; with weights it is harmless)
    return sd


def checked_state_dict(expected: dict[str, tuple[int, ...]], state_dict: dict[str, np.ndarray], dtype,
                       owner: str) -> dict[str, np.ndarray]:  # fmt: skip
    """Every expected weight, with its shape, as a C-contiguous array of ``dtype`` (no copy when it already
    is one: memory-mapped float32 weights stay mapped). Names every missing, unexpected and misshapen key."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [
        f"{k}: {tuple(np.shape(state_dict[k]))} (expected {expected[k]})"
        for k in expected
        if k in state_dict and tuple(np.shape(state_dict[k])) != expected[k]
    ]
    if missing or unexpected or misshapen:
        raise WeightsMismatchError(owner, missing, unexpected, misshapen)
    flat = {}
    for k in expected:
        a = np.asarray(state_dict[k])
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"weight {k} has dtype {a.dtype}; weights must be floating point")
        flat[k] = np.ascontiguousarray(a, dtype=dtype)
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """{"a.0.b": x} -> {"a": [{"b": x}]}: the nested parameter tree the layer functions take."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[str(i)] for i in range(len(node))]
        return node

    return listify(tree)
