"""The layers of ErnieM with int8 weights: ``fused.py`` name for name and signature for signature.

What is int8 and what stays float32 (docs/quantization.md gives the accuracy this costs):
* the six Linear layers of every encoder layer (q, k, v, out_proj, linear1, linear2): int8 weights per output
  channel, activations quantized per row at run time, int32 sums, float32 epilogue (``kernels/qgemm.py``);
* the word-embedding table (250,002 x 768, most of the model's bytes): int8 with a scale per row, the rows
  a batch needs dequantized at lookup (``Int8Rows``);
* the two attention products (scores q k^T, context P v): q, k, the probabilities and v rounded to bfloat16
  and summed in float32, where the CPU has AVX512_BF16 (``attention_products``); float32 elsewhere;
* float32 as in ``fused.py``: the position table, every LayerNorm, the softmax, the pooler and the heads
  (small, and where a task's decision is made).

The parameters are stored as a checkpoint stores them (``load_parameters``): each quantized ``X.weight`` an
int8 array and ``X.weight_scale`` its float32 scales; in the tree the layer functions take, an int8 Linear's
``weight`` is a ``PackedInt8`` (the kernel's layout, packed once at load) and the word table an ``Int8Rows``.

Dimension legend: B batch, L query length, H hidden size, nh heads, F FFN width, V vocabulary.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from . import fused, layers
from .activations import ACTIVATIONS
from .kernels import attention, norm
from .kernels.qgemm import PackedInt8, qlinear, qlinear_many, quantize_weight
from .parameters import SCALE_SUFFIX, WORD_TABLE, checked_state_dict, is_int8_weight, unflatten, with_int8_scales

embeddings = fused.embeddings  # the lookup indexes the table; an Int8Rows table dequantizes the rows it gives
additive_mask = layers.additive_mask
linear = fused.linear  # the pooler and the heads stay float32
pooler = fused.pooler

QUANTIZATION = "int8"  # the model's config records it, so a saved int8 model loads as int8


def attention_products() -> str:
    """How the attention's two products are computed here: "bf16" where the CPU has AVX512_BF16
    (``attention._attention_bf16``: twice the multiply-adds per instruction), else "float32". The environment
    variable ``ERNIEM_NP_INT8_ATTENTION`` (``bf16`` or ``float32``) chooses instead, for tests and
    measurements; bf16 on a CPU without it is refused."""
    wanted = os.environ.get("ERNIEM_NP_INT8_ATTENTION", "").strip()
    if wanted and wanted not in ("bf16", "float32"):
        raise ValueError(f"ERNIEM_NP_INT8_ATTENTION must be 'bf16' or 'float32', got {wanted!r}")
    return wanted or ("bf16" if attention.bf16_supported() else "float32")


class Int8Rows:
    """The word-embedding table in int8 with a float32 scale per row: ``table[ids]`` gives the float32 rows
    ``q[ids] * scale[ids]`` ([..., H]), as indexing the float32 table would give its rows. ``q`` is the int8
    array, or for a mapped checkpoint a ``RowReadTable`` that reads just the rows asked for from the file."""

    def __init__(self, q, scale):
        self.q, self.scale = q, scale
        self.shape = q.shape

    def __getitem__(self, ids):
        ids = np.asarray(ids)
        return self.q[ids].astype(np.float32) * self.scale[ids][..., None]

    def __array__(self, dtype=None, copy=None):
        table = np.asarray(self.q).astype(np.float32) * self.scale[:, None]
        return table if dtype is None else table.astype(dtype)


def load_parameters(shapes, state_dict, dtype, owner):
    """(flat, tree) for a model whose float weights are ``shapes``: the flat dict holds every quantized weight
    as int8 with its ``_scale`` beside it (what ``state_dict()`` returns and a checkpoint stores); the tree
    holds ``PackedInt8`` and ``Int8Rows`` in their place. ``state_dict`` may be float (quantized here, once)
    or already int8 (a checkpoint written by ``save_pretrained`` of an int8 model: loaded as stored)."""
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"the int8 layers compute in float32, got dtype {np.dtype(dtype)}")
    quantized = [k for k in shapes if is_int8_weight(k)]
    stored_int8 = [k for k in quantized if k + SCALE_SUFFIX in state_dict]
    state_dict = dict(state_dict)
    if not stored_int8:  # float weights: quantize them now
        for k in quantized:
            if k in state_dict and np.ndim(state_dict[k]) == 2:
                state_dict[k], state_dict[k + SCALE_SUFFIX] = quantize_weight(state_dict[k])
    expected = with_int8_scales(shapes)
    ints = {k: state_dict.pop(k) for k in quantized if k in state_dict}
    # the float weights and the scales checked as parameters.py checks them (a quantized weight that is
    # missing stays in this set, so it is reported as missing)
    flat = checked_state_dict({k: v for k, v in expected.items() if k not in ints}, state_dict, dtype, owner)
    for k, q in ints.items():
        q = np.asarray(q)
        if q.shape != tuple(shapes[k]):
            raise ValueError(f"weight {k} has shape {q.shape}, expected {tuple(shapes[k])}")
        if q.dtype != np.int8:
            raise TypeError(f"weight {k} has dtype {q.dtype}: an int8 checkpoint stores it as int8, with "
                            f"{k}{SCALE_SUFFIX} beside it")  # fmt: skip
        flat[k] = q
    flat = {k: flat[k] for k in expected}  # each int8 weight followed by its scales
    tree = parameter_tree(flat)
    fused.pack_at_load(flat, fused.pooler_linear(tree.get("ernie_m", tree)))  # float32, packed as fused.py packs it
    return flat, tree


def parameter_tree(flat):
    """The nested tree of ``parameters.unflatten`` with each int8 weight and its scales made one object. The
    flat entries of a packed weight and its scales become read-only views: an edit in place would not reach the
    packed copy."""
    tree_input = {}
    for k, v in list(flat.items()):
        if k.endswith(SCALE_SUFFIX):
            continue
        if k + SCALE_SUFFIX in flat:
            scale = flat[k + SCALE_SUFFIX]
            if k.endswith(WORD_TABLE):
                v = Int8Rows(v, scale)
            else:
                v = PackedInt8(v, scale)
                flat[k], flat[k + SCALE_SUFFIX] = fused.read_only(v.q), fused.read_only(scale)
        tree_input[k] = v
    return unflatten(tree_input)


def encoder_layer(x, self_attn, linear1, linear2, norm1, norm2, *, n_heads, activation, eps, mask, flavor,
                  head_mask=None, past=None, need_probs=True, probes=None):  # fmt: skip
    """fused.encoder_layer with int8 Linear layers: [B, L, H] -> ([B, L, H], probs or None, (k, v)).
    ``probes`` receives what fused.py records, under the same names."""
    qkv = self_attn["self_attn"]
    q, k, v = qlinear_many(x, [(qkv[n]["weight"], qkv[n].get("bias")) for n in ("q_proj", "k_proj", "v_proj")])
    # q, k, v: [B, L, H] each, x quantized once for the three
    if past is not None:  # a cache is P more keys and values in front: [B, nh, P, d] -> [B, P, H], ++ [B, L, H]
        k = np.concatenate([layers.merge_heads(past[0]), k], axis=1)  # [B, Lk, H]
        v = np.concatenate([layers.merge_heads(past[1]), v], axis=1)
    hm = None if head_mask is None else np.asarray(head_mask).reshape(n_heads)
    need_probs = need_probs or probes is not None
    products = attention_products()  # "bf16" where the CPU has AVX512_BF16, else "float32"
    context, probs = attention.attention(q, k, v, n_heads, mask, hm, scaling=flavor, need_probs=need_probs,
                                         products=products)  # fmt: skip
    attn_plus_x = qlinear(context, **self_attn["out_proj"], residual=x)  # out_proj(context) + x
    x = norm.layer_norm(attn_plus_x, norm1["weight"], norm1["bias"], eps)  # post-LN, float32
    if probes is not None:
        probes.update({"attn.q": layers.split_heads(q, n_heads), "attn.k": layers.split_heads(k, n_heads),
                       "attn.v": layers.split_heads(v, n_heads), "attn.probs": probs, "attn.context": context,
                       "norm1.out": x})  # fmt: skip
    del q, context, attn_plus_x  # not needed below: a long batch's peak memory is the FFN's
    out = feed_forward(x, linear1, linear2, norm2, activation=activation, eps=eps)
    if probes is not None:
        probes["out"] = out
    return out, probs, (layers.split_heads(k, n_heads), layers.split_heads(v, n_heads))


FFN_ROWS = 1024  # rows per block of the feed-forward (one block up to B * L = 1024, e.g. B=8 L=128)
_ffn_local = threading.local()


def _ffn_buffer(rows, F):
    """The [rows, F] float32 buffer for a feed-forward block's intermediate, kept per Python thread and grown
    when needed (at most FFN_ROWS x F: 12.6 MB at ErnieM-base). A new array of that size each block is above
    glibc's mmap threshold: every layer mapped it afresh and page-faulted it in, 7,000 faults and 4-7% of an
    int8 B=8 L=128 forward; with the buffer, none (``NUMBA_NUM_THREADS=2 python
    scripts/bench/time_breakdown.py --backend int8 --batch 8`` prints the faults per forward)."""
    buf = getattr(_ffn_local, "buf", None)
    if buf is None or buf.size < rows * F:
        buf = _ffn_local.buf = np.empty(rows * F, dtype=np.float32)
    return buf[: rows * F]


def feed_forward(x, linear1, linear2, norm2, *, activation, eps):
    """norm2(linear2(act(linear1(x))) + x): [B, L, H] -> [B, L, H], in blocks of FFN_ROWS rows.

    Every step works row by row (each row is quantized with its own scale, and the int8 GEMM's serial and
    parallel kernels round its epilogue in one order), so a row's result does not depend on its block.
    Blocks bound the [rows, F] intermediate (and its uint8 copy), which at B=8 L=351 is 12 MB instead of 35 MB:
    the largest array of an int8 forward on long batches."""
    x2 = x.reshape(-1, x.shape[-1])  # [B * L, H]
    out = np.empty_like(x2) if len(x2) > FFN_ROWS else None
    for r0 in range(0, len(x2), FFN_ROWS):
        xr = x2[r0 : r0 + FFN_ROWS]
        h = _ffn_buffer(len(xr), linear1["weight"].shape[0])  # reused: h never leaves this function
        if activation == "gelu":  # GELU fused into the int8 GEMM's epilogue, as in fused.py
            h = qlinear(xr, **linear1, activation="gelu", out=h)  # [rows, H] -> [rows, F]
        else:
            h = ACTIVATIONS[activation](qlinear(xr, **linear1, out=h))
        # GELU's output is the input most sensitive to quantization: its asymmetric per-row range gives the
        # values in [-0.17, 0) and the positive ones all 256 codes (kernels/qgemm.py)
        y = norm.layer_norm(qlinear(h, **linear2, residual=xr), norm2["weight"], norm2["bias"], eps)
        if out is None:  # one block: no copy
            return y.reshape(x.shape)
        out[r0 : r0 + FFN_ROWS] = y
    return out.reshape(x.shape)


def warmup() -> None:
    """Compile (or load from the cache) the int8 kernels a forward pass calls: one int8 encoder layer at a
    serial size and at a parallel one, each epilogue (bias, GELU, residual) for the instruction set in use."""
    rng = np.random.default_rng(0)
    H, F, nh = 256, 1024, 4

    def linear_params(n_out, n_in):
        return {"weight": PackedInt8.quantize(rng.standard_normal((n_out, n_in)).astype(np.float32)),
                "bias": np.zeros(n_out, np.float32)}  # fmt: skip

    norm_params = {"weight": np.ones(H, np.float32), "bias": np.zeros(H, np.float32)}
    layer = {"self_attn": {"self_attn": {n: linear_params(H, H) for n in ("q_proj", "k_proj", "v_proj")},
                           "out_proj": linear_params(H, H)},
             "linear1": linear_params(F, H), "linear2": linear_params(H, F),
             "norm1": norm_params, "norm2": norm_params}  # fmt: skip
    for L in (1, 320):  # serial twins; parallel kernels (quantizing rows of 256 goes parallel at 293 rows)
        x = rng.standard_normal((1, L, H)).astype(np.float32)
        encoder_layer(x, **layer, n_heads=nh, activation="gelu", eps=1e-5, mask=None, flavor="hf")
