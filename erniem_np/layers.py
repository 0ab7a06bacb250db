"""The layers of ErnieM as plain NumPy functions: the reference backend, read beside docs/reference.md.

Dimension legend: B batch, L query length, P past length, Lk = P + L key length, H hidden size,
nh attention heads, d = H / nh head size, F FFN width, V vocabulary size, T position-table rows.

Each function's keyword arguments are named like the checkpoint's parameter groups (``q_proj``, ``norm1``,
``linear1``...), each group a dict ``{"weight": ..., "bias": ...}`` with Linear weights in torch's
``[out, in]`` layout, so ``encoder_layer(x, **params["encoder"]["layers"][i], ...)`` needs no plumbing.

Every place where the two references (HF transformers 4.46.3 and PaddleNLP 2.8.1) behave in a way worth
knowing is marked ``QUIRK``.
"""

from __future__ import annotations

import math

import numpy as np

from .activations import ACTIVATIONS
from .parameters import checked_state_dict, unflatten

# HF fills masked positions with the float32 minimum, whatever the model's dtype
# (modeling_ernie_m.py: `.to(torch.float32)` then `*= torch.finfo(torch.float32).min`).
HF_MASK_VALUE = float(np.finfo(np.float32).min)
# PaddleNLP fills them with -1e4 (ErnieMModel.forward), and converts bool/int 3-D/4-D masks with
# (mask - 1) * 1e9 (paddle.nn.layer.transformer._convert_attention_mask).
PADDLE_MASK_VALUE = -1e4
PADDLE_BOOL_MASK_SCALE = 1e9
# QUIRK: both references add 2 to every position id, default or user-given ("to mimic paddlenlp
# implementation"); rows 0 and 1 of the position table are never read by default.
POSITION_OFFSET = 2


# ----------------------------------------------------------------------------------------- parameters
QUANTIZATION = None  # float weights (quantized.py: "int8")


def load_parameters(shapes, state_dict, dtype, owner):
    """(flat, tree): the state dict checked against ``shapes`` (names, shapes, float; as ``dtype``) and the
    nested tree the layer functions take (``parameters.unflatten``)."""
    flat = checked_state_dict(shapes, state_dict, dtype, owner)
    return flat, unflatten(flat)


# ----------------------------------------------------------------------------------------- basic layers
def linear(x, weight, bias=None):
    """y = x W^T + b, W stored [out, in] (torch's nn.Linear layout): [..., in] -> [..., out]."""
    y = x @ weight.T
    return y if bias is None else y + bias


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis with the biased variance (torch and Paddle): [..., H] -> [..., H]."""
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


_layer_norm = layer_norm  # embeddings() names its parameter group `layer_norm`, as the checkpoint does


def softmax(x, axis=-1):
    """Max-subtracted softmax, as torch and Paddle compute it."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ----------------------------------------------------------------------------------------- embeddings
def embeddings(input_ids, position_ids, word_embeddings, position_embeddings, layer_norm, eps,
               inputs_embeds=None):  # fmt: skip
    """Word + position embedding, then LayerNorm: ids [B, L] -> [B, L, H].

    ``position_ids`` are the 0-based positions the caller means; the +2 shift happens here, on a new array
    (QUIRK: HF adds 2 in place, so a caller's tensor reused for a second call is shifted twice; we never
    mutate the caller's array). No token-type embedding exists in either reference.
    """
    x = embedding_sum(input_ids, position_ids, word_embeddings, position_embeddings, inputs_embeds)
    return _layer_norm(x, layer_norm["weight"], layer_norm["bias"], eps)  # eps 1e-5 in both references


def embedding_sum(input_ids, position_ids, word_embeddings, position_embeddings, inputs_embeds=None):
    """What ``embeddings`` normalises: the word rows (or ``inputs_embeds``) + the position rows [B, L, H]."""
    x = word_embeddings["weight"][input_ids] if inputs_embeds is None else inputs_embeds  # [B, L, H]
    rows = position_ids + POSITION_OFFSET  # QUIRK: +2, always; a new array, the caller's is untouched
    return x + position_embeddings["weight"][rows]  # [B, L, H]


def default_position_ids(batch, length, past_length=0):
    """0-based positions past_length .. past_length + L - 1 for every row: [B, L] (cumsum(ones) - 1 in both
    references; with a cache they continue after the P cached positions)."""
    return np.broadcast_to(np.arange(past_length, past_length + length, dtype=np.int64), (batch, length))


# ----------------------------------------------------------------------------------------- attention mask
def additive_mask(input_ids, attention_mask, past_length, flavor, pad_token_id, dtype):
    """The additive mask each reference adds to the attention scores, broadcastable to [B, nh, L, Lk].

    attention_mask None (the implicit mask), per flavor (QUIRK, docs/reference.md#m3-attention-mask):
      * "hf": keys whose id == pad_token_id get float32-min; everything else 0.
      * "paddle": keys whose id == 0 ([CLS]!) get -1e4; padding (id 1) is attended.
      With a cache, P zeros (attend) come first. HF itself crashes on that combination and on inputs_embeds
      without a mask; we extend both flavors the way Paddle does (zeros for the past; no mask without ids).
    2-D [B, Lk] (1 keep, 0 drop; bool, int or float): (1 - mask) * fill, fill = float32-min (hf) or -1e4
      (paddle). The fill only matters for a fully-masked row: hf -> uniform attention over every key,
      paddle -> the ordinary softmax of the unmasked scores (the -1e4 shift cancels).
    3-D [B, L, Lk] or 4-D [B|1, nh|1, L, Lk]: float masks are additive and used as given; bool/int masks are
      converted, hf: (1 - mask) * float32-min, paddle: (mask - 1) * 1e9 as paddle's _convert_attention_mask.
      (HF crashes on any mask that is not 2-D; Paddle broadcasts a 3-D mask without inserting the head
      axis, which only works for B == 1; we insert it.)
    Returns None when nothing is masked.
    """
    if attention_mask is None:
        if input_ids is None:
            return None
        if flavor == "hf":
            m = (input_ids == pad_token_id).astype(np.float32) * np.float32(HF_MASK_VALUE)
        else:
            m = (input_ids == 0).astype(dtype) * dtype.type(PADDLE_MASK_VALUE)  # QUIRK: masks [CLS], not pads
        if past_length:
            m = np.concatenate([np.zeros((m.shape[0], past_length), m.dtype), m], axis=-1)
        return m.astype(dtype)[:, None, None, :]  # [B, Lk] -> [B, 1, 1, Lk]
    is_float = np.issubdtype(attention_mask.dtype, np.floating)
    if attention_mask.ndim == 2:
        if flavor == "hf":
            m = (1.0 - attention_mask.astype(np.float32)) * np.float32(HF_MASK_VALUE)
        else:
            m = (1.0 - attention_mask.astype(dtype)) * dtype.type(PADDLE_MASK_VALUE)
        return m.astype(dtype)[:, None, None, :]  # [B, Lk] -> [B, 1, 1, Lk]
    m = attention_mask if attention_mask.ndim == 4 else attention_mask[:, None]  # [B, L, Lk] -> [B, 1, L, Lk]
    if is_float:
        return m.astype(dtype)
    if flavor == "hf":
        return ((1.0 - m.astype(np.float32)) * np.float32(HF_MASK_VALUE)).astype(dtype)
    return (m.astype(dtype) - 1.0) * dtype.type(PADDLE_BOOL_MASK_SCALE)


# ----------------------------------------------------------------------------------------- attention
def split_heads(x, n_heads):
    """[B, L, H] -> [B, nh, L, d]; head h holds channels h*d .. (h+1)*d - 1."""
    B, L, H = x.shape
    return x.reshape(B, L, n_heads, H // n_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """[B, nh, L, d] -> [B, L, H] (head-major channels, as both references reshape)."""
    B, nh, L, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, L, nh * d)


def self_attention(x, self_attn, out_proj, n_heads, mask, flavor, head_mask=None, past=None, probes=None):
    """Multi-head self-attention: x [B, L, H] -> (out [B, L, H], probs [B, nh, L, Lk], (k, v) [B, nh, Lk, d]).

    ``self_attn`` holds q_proj/k_proj/v_proj (QUIRK: HF nests them as ``self_attn.self_attn.*`` while
    ``out_proj`` sits one level up; Paddle has all four under ``self_attn``).
    ``probes``: None, or a dict that receives the intermediates by their parity-bundle names (``attn.q`` ...);
    recording stores references to arrays computed anyway, so it changes no number.
    """
    d = x.shape[-1] // n_heads
    q = split_heads(linear(x, **self_attn["q_proj"]), n_heads)  # [B, L, H] -> [B, nh, L, d]
    k = split_heads(linear(x, **self_attn["k_proj"]), n_heads)
    v = split_heads(linear(x, **self_attn["v_proj"]), n_heads)
    if past is not None:  # a cache is P more keys and values in front: [B, nh, P, d] ++ [B, nh, L, d]
        k = np.concatenate([past[0], k], axis=2)  # [B, nh, Lk, d]
        v = np.concatenate([past[1], v], axis=2)
    if flavor == "hf":  # HF scales the product: (q k^T) / sqrt(d)
        scores = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(d)  # [B, nh, L, Lk]
    else:  # Paddle scales q first: (q * d^-0.5) k^T (identical when d is a power of 4, e.g. 64)
        scores = (q * d**-0.5) @ k.transpose(0, 1, 3, 2)
    if probes is not None:  # scores before the mask: the same in both mask conventions
        probes.update({"attn.q": q, "attn.k": k, "attn.v": v, "attn.scores": scores})
    if mask is not None:
        scores = scores + mask
    probs = softmax(scores, axis=-1)  # dropout would go here: identity at inference
    if head_mask is not None:  # HF only: scales each head's probabilities (and the returned ones)
        probs = probs * head_mask
    context = merge_heads(probs @ v)  # [B, nh, L, Lk] @ [B, nh, Lk, d] -> [B, nh, L, d] -> [B, L, H]
    out = linear(context, **out_proj)  # [B, L, H]
    if probes is not None:
        probes.update({"attn.probs": probs, "attn.context": context, "attn.out": out})
    return out, probs, (k, v)


# ----------------------------------------------------------------------------------------- encoder
def encoder_layer(x, self_attn, linear1, linear2, norm1, norm2, *, n_heads, activation, eps, mask, flavor,
                  head_mask=None, past=None, need_probs=True, probes=None):  # fmt: skip
    """One post-LN Transformer layer (HF ErnieMEncoderLayer = Paddle TransformerEncoderLayer with
    normalize_before=False): [B, L, H] -> ([B, L, H], probs [B, nh, L, Lk] or None when not ``need_probs``,
    (k, v) [B, nh, Lk, d]). Dropouts are identity at inference.
    ``probes``: None, or a dict that receives every intermediate by its parity-bundle name (``attn.*``,
    ``norm1.out``, ``ffn.up``, ``ffn.act``, ``ffn.down``, ``out``)."""
    attn, probs, cache = self_attention(
        x, self_attn["self_attn"], self_attn["out_proj"], n_heads, mask, flavor, head_mask, past, probes
    )
    x = layer_norm(x + attn, norm1["weight"], norm1["bias"], eps)  # post-LN: residual, then norm
    up = linear(x, **linear1)  # [B, L, H] -> [B, L, F]
    h = ACTIVATIONS[activation](up)
    down = linear(h, **linear2)  # [B, L, F] -> [B, L, H]
    out = layer_norm(x + down, norm2["weight"], norm2["bias"], eps)
    if probes is not None:
        probes.update({"norm1.out": x, "ffn.up": up, "ffn.act": h, "ffn.down": down, "out": out})
    return out, (probs if need_probs else None), cache


def pooler(x, dense):
    """tanh(dense(x[:, 0])): the first ([CLS]) token's final state, [B, L, H] -> [B, H]."""
    return np.tanh(linear(x[:, 0], **dense))


# ----------------------------------------------------------------------------------------- losses
def cross_entropy(logits, labels, ignore_index=-100, all_ignored=float("nan")):
    """torch.nn.CrossEntropyLoss(reduction="mean"): logits [N, C], labels [N] int; mean over the labels that
    are not ``ignore_index``. When every label is ignored torch gives NaN and Paddle 0 (``all_ignored``)."""
    keep = labels != ignore_index
    n_classes = logits.shape[-1]
    bad = keep & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        raise ValueError(
            f"label {int(labels[bad][0])} is outside [0, {n_classes}) and is not the ignore index {ignore_index}"
        )
    m = logits.max(axis=-1, keepdims=True)
    log_z = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]  # logsumexp, [N]
    picked = np.take_along_axis(logits, np.where(keep, labels, 0)[:, None], axis=-1)[:, 0]
    nll = (log_z - picked)[keep]
    if not keep.any():
        return logits.dtype.type(all_ignored)
    return nll.sum() / logits.dtype.type(keep.sum())


def mse(pred, target):
    """torch.nn.MSELoss(reduction="mean")."""
    return np.square(pred - target).mean()


def bce_with_logits(logits, target):
    """torch.nn.BCEWithLogitsLoss(reduction="mean"): max(x, 0) - x y + log(1 + exp(-|x|))."""
    return (np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))).mean()
