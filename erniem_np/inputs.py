"""The model's inputs checked against the config and turned into arrays, before any layer runs.

``prepare_inputs`` takes what a forward pass receives (NumPy arrays or nested lists) and returns ``Inputs``:
integer ids, 0-based position ids, the additive attention mask of the config's flavor, the head mask and
the cache; every error names the argument and what was expected. The label helpers check the targets of the
heads' losses.

Dimension legend: B batch, L sequence, P past length, Lk = P + L, H hidden, nh heads, d head size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import layers
from .config import ErnieMConfig

def _as_int_array(name: str, value: Any) -> np.ndarray:
    try:
        a = np.asarray(value)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array of integers: {e}") from None
    if a.dtype == object:
        raise ValueError(f"{name} must be a rectangular array of integers (got ragged or mixed nested lists)")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def _as_float_array(name: str, value: Any, dtype) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    return a.astype(dtype, copy=False)


@dataclass
class Inputs:
    input_ids: np.ndarray | None  # [B, L] int64
    inputs_embeds: np.ndarray | None  # [B, L, H]
    position_ids: np.ndarray  # [B, L] int64, 0-based (before the +2)
    mask: np.ndarray | None  # additive, broadcastable to [B, nh, L, Lk]
    head_mask: np.ndarray | None  # [layers, 1, nh, 1, 1]
    past: tuple | None  # layers of (k, v) [B, nh, P, d]


def prepare_inputs(config: ErnieMConfig, dtype, input_ids=None, attention_mask=None, position_ids=None,
                   head_mask=None, inputs_embeds=None, past_key_values=None) -> Inputs:  # fmt: skip
    """Validate every input against the config and turn it into arrays; errors name the problem."""
    dtype = np.dtype(dtype)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        input_ids = _as_int_array("input_ids", input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, sequence], got shape {input_ids.shape}")
        B, L = input_ids.shape
        if input_ids.size:
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= config.vocab_size:
                bad = lo if lo < 0 else hi
                where = tuple(int(i) for i in np.argwhere(input_ids == bad)[0])
                raise ValueError(
                    f"input_ids holds id {bad} at {where}, outside the vocabulary [0, {config.vocab_size})"
                )
    else:
        inputs_embeds = _as_float_array("inputs_embeds", inputs_embeds, dtype)
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must be [batch, sequence, {config.hidden_size}], got {inputs_embeds.shape}"
            )
        B, L = inputs_embeds.shape[:2]
    if L == 0:
        raise ValueError("the sequence length is 0: every sequence needs at least one token")

    past, P = None, 0
    if past_key_values is not None:
        past, P = _check_past(config, past_key_values, B, dtype)

    T = config.max_position_embeddings
    if position_ids is None:
        if P + L > config.max_sequence_length:
            raise ValueError(
                f"sequence length {L}" + (f" after {P} cached positions" if P else "")
                + f" exceeds the position table: at most {config.max_sequence_length} positions "
                f"(max_position_embeddings {T} minus the +2 offset)"
            )
        position_ids = layers.default_position_ids(B, L, P)
    else:
        position_ids = _as_int_array("position_ids", position_ids)
        try:
            position_ids = np.broadcast_to(position_ids, (B, L))
        except ValueError:
            raise ValueError(f"position_ids has shape {position_ids.shape}, expected ({B}, {L})") from None
        if position_ids.size:
            lo, hi = int(position_ids.min()), int(position_ids.max())
            if lo + layers.POSITION_OFFSET < 0 or hi + layers.POSITION_OFFSET >= T:
                raise ValueError(
                    f"position_ids must lie in [-2, {T - 2}) (the model reads row id + 2 of a {T}-row table); "
                    f"got values from {lo} to {hi}"
                )

    mask = None
    if attention_mask is not None:
        attention_mask = np.asarray(attention_mask)
        if attention_mask.dtype == object or attention_mask.dtype.kind not in "biuf":
            raise TypeError(f"attention_mask must hold bools or numbers, got dtype {attention_mask.dtype}")
        _check_mask_shape(attention_mask.shape, B, L, P, config.num_attention_heads)
    mask = layers.additive_mask(input_ids, attention_mask, P, config.flavor, config.pad_token_id, dtype)

    if head_mask is not None:
        head_mask = _as_float_array("head_mask", head_mask, dtype)
        nh, n_layers = config.num_attention_heads, config.num_hidden_layers
        if head_mask.shape == (nh,):
            head_mask = np.broadcast_to(head_mask, (n_layers, nh))
        if head_mask.shape != (n_layers, nh):
            raise ValueError(f"head_mask must be [{nh}] or [{n_layers}, {nh}], got shape {head_mask.shape}")
        head_mask = head_mask[:, None, :, None, None]  # [layers, nh] -> [layers, 1, nh, 1, 1]
    return Inputs(input_ids, inputs_embeds, position_ids, mask, head_mask, past)


def _check_mask_shape(shape, B, L, P, nh):
    Lk = P + L
    if len(shape) == 2:
        if shape != (B, Lk):
            hint = f" (with {P} cached positions the mask covers them too: {P} + {L})" if P else ""
            raise ValueError(f"attention_mask has shape {shape}, expected ({B}, {Lk}){hint}")
    elif len(shape) == 3:
        if shape != (B, L, Lk):
            raise ValueError(f"a 3-D attention_mask must be [batch, query, key] = ({B}, {L}, {Lk}), got {shape}")
    elif len(shape) == 4:
        want = (B, nh, L, Lk)
        if any(s not in (1, w) for s, w in zip(shape, want, strict=True)) or shape[2:] != (L, Lk) and 1 not in shape[2:]:
            raise ValueError(f"a 4-D attention_mask must broadcast to {want}, got {shape}")
    else:
        raise ValueError(f"attention_mask must be 2-D, 3-D or 4-D, got shape {shape}")


def _check_past(config, past_key_values, B, dtype):
    n_layers, nh, d = config.num_hidden_layers, config.num_attention_heads, config.head_dim
    if len(past_key_values) != n_layers:
        raise ValueError(f"past_key_values must hold {n_layers} (key, value) pairs, got {len(past_key_values)}")
    past, P = [], None
    for i, pair in enumerate(past_key_values):
        if len(pair) != 2:
            raise ValueError(f"past_key_values[{i}] must be a (key, value) pair")
        k, v = (_as_float_array(f"past_key_values[{i}]", t, dtype) for t in pair)
        for t in (k, v):
            if t.ndim != 4 or t.shape[0] != B or t.shape[1] != nh or t.shape[3] != d:
                raise ValueError(f"past_key_values[{i}] tensors must be [{B}, {nh}, past, {d}], got {t.shape}")
        if k.shape != v.shape or (P is not None and k.shape[2] != P):
            raise ValueError(f"past_key_values[{i}]: keys and values of every layer must share one past length")
        P = k.shape[2]
        past.append((k, v))
    return tuple(past), P


# ------------------------------------------------------------------------------------------------ labels
def int_labels(name, labels):
    a = np.asarray(labels)
    if a.dtype == object or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    return a.astype(np.int64)


def squeeze_last(a):
    return a[..., 0] if a.ndim > 1 and a.shape[-1] == 1 else a  # torch squeeze(-1): only a size-1 axis


def same_shape(name, a, shape):
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a
