"""The layers of ErnieM on the Numba kernels: ``layers.py`` name for name and signature for signature.

Read it beside ``layers.py``: each function here computes the same thing from the fused kernels in
``kernels/`` (a GEMM with bias, GELU or residual fused into its epilogue; attention with the scaling, mask and
softmax fused; LayerNorm), so the model composes either file without knowing which (``backend.layer_set``).
The numbers agree to float32 rounding (``tests/test_model.py`` holds both backends to the same goldens).

Dimension legend: B batch, L query length, P past length, Lk = P + L key length, H hidden size,
nh attention heads, d = H / nh head size, F FFN width.
"""

from __future__ import annotations

import numpy as np

from . import layers
from .activations import ACTIVATIONS
from .checkpoints.safetensors_file import release_mapped
from .kernels import attention, gemm, norm

# The embedding lookup and the mask are the same NumPy code on both backends.
QUANTIZATION = layers.QUANTIZATION
PACKED = ("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2")  # the encoder's Linear layers


def load_parameters(shapes, state_dict, dtype, owner):
    """(flat, tree) as ``layers.load_parameters``, except that in the tree each encoder Linear weight and the
    pooler's is a ``gemm.PackedWeight`` (float32 only; float64 keeps the arrays): packed once here, so no
    forward pass packs anything. ``flat`` (what ``state_dict()`` returns) keeps the weights as given."""
    flat, tree = layers.load_parameters(shapes, state_dict, dtype, owner)
    if np.dtype(dtype) != np.float32:
        return flat, tree
    base = tree.get("ernie_m", tree)
    linears = [
        (group, name)
        for layer in base.get("encoder", {}).get("layers", [])
        for group in (layer["self_attn"]["self_attn"], layer["self_attn"], layer)
        for name in PACKED
    ]
    pack_at_load(flat, linears + pooler_linear(base))
    return flat, tree


def pooler_linear(base):
    """[(group, name)] of the pooler's Linear in the base model's tree (none without a pooler)."""
    return [(base["pooler"], "dense")] if "pooler" in base else []


def pack_at_load(flat, linears):
    """For each (group, name) whose ``group[name]["weight"]`` is an array: the weight replaced in the tree by
    its ``gemm.PackedWeight`` (the same bits as the unpacked weight; docs/performance.md gives the speed), and
    its entry in ``flat`` made read-only, since an edit in place would not reach the packed copy. Where a
    weight is a view of a memory-mapped checkpoint, its pages are released after packing (they reload from
    the file if ``state_dict()`` reads them), so the packed copy is not counted twice."""
    key_of = {id(v): k for k, v in flat.items()}
    for group, name in linears:
        if name in group and isinstance(group[name].get("weight"), np.ndarray):
            w = group[name]["weight"]
            group[name] = dict(group[name], weight=gemm.PackedWeight(w))
            release_mapped(w)
            flat[key_of[id(w)]] = read_only(w)


def read_only(a):
    """A read-only view of an array: for the state dict's entries of weights packed at load."""
    view = a.view()
    view.flags.writeable = False
    return view


def embeddings(input_ids, position_ids, word_embeddings, position_embeddings, layer_norm, eps,
               inputs_embeds=None):  # fmt: skip
    """layers.embeddings with the Numba LayerNorm: ids [B, L] -> [B, L, H]."""
    x = layers.embedding_sum(input_ids, position_ids, word_embeddings, position_embeddings, inputs_embeds)
    return norm.layer_norm(x, layer_norm["weight"], layer_norm["bias"], eps)  # [B, L, H]


additive_mask = layers.additive_mask


def linear(x, weight, bias=None):
    """layers.linear on the Numba GEMM: [..., in] -> [..., out]. The pooler and the heads use it too, so the
    numba backend makes no BLAS call at all (OpenBLAS threads spin for a while after each call and would
    take the cores from the next kernel)."""
    return gemm.linear(x, weight, bias)


def encoder_layer(x, self_attn, linear1, linear2, norm1, norm2, *, n_heads, activation, eps, mask, flavor,
                  head_mask=None, past=None, need_probs=True, probes=None):  # fmt: skip
    """layers.encoder_layer on the kernels: [B, L, H] -> ([B, L, H], probs [B, nh, L, Lk] or None, (k, v)).

    ``probes`` receives what the fused kernels expose: ``attn.q``/``attn.k``/``attn.v`` (split into heads),
    ``attn.probs``, ``attn.context``, ``norm1.out`` and ``out``. The kernels fuse the scores into the softmax,
    out_proj into the residual and linear1 into the GELU, so ``attn.scores``, ``attn.out`` and ``ffn.*``
    exist only in layers.py."""
    qkv = self_attn["self_attn"]
    q, k, v = gemm.linear_many(x, [(qkv[n]["weight"], qkv[n].get("bias")) for n in ("q_proj", "k_proj", "v_proj")])
    # q, k, v: [B, L, H] each, one kernel call (heads stay interleaved: the attention kernel reads them in place)
    if past is not None:  # a cache is P more keys and values in front: [B, nh, P, d] -> [B, P, H], ++ [B, L, H]
        k = np.concatenate([layers.merge_heads(past[0]), k], axis=1)  # [B, Lk, H]
        v = np.concatenate([layers.merge_heads(past[1]), v], axis=1)
    hm = None if head_mask is None else np.asarray(head_mask).reshape(n_heads)
    need_probs = need_probs or probes is not None
    # scores, mask, softmax and probs @ v in one kernel; flavor picks HF's or Paddle's scaling
    context, probs = attention.attention(q, k, v, n_heads, mask, hm, scaling=flavor, need_probs=need_probs)
    attn_plus_x = gemm.linear(context, **self_attn["out_proj"], residual=x)  # out_proj(context) + x
    x = norm.layer_norm(attn_plus_x, norm1["weight"], norm1["bias"], eps)  # post-LN: residual, then norm
    if probes is not None:
        probes.update({"attn.q": layers.split_heads(q, n_heads), "attn.k": layers.split_heads(k, n_heads),
                       "attn.v": layers.split_heads(v, n_heads), "attn.probs": probs, "attn.context": context,
                       "norm1.out": x})  # fmt: skip
    if activation == "gelu":  # exact GELU fused into the GEMM (rational erf, within 1e-6 of erf GELU)
        h = gemm.linear(x, **linear1, activation="gelu")  # [B, L, H] -> [B, L, F]
    else:
        h = ACTIVATIONS[activation](gemm.linear(x, **linear1))
    out = norm.layer_norm(gemm.linear(h, **linear2, residual=x), norm2["weight"], norm2["bias"], eps)
    if probes is not None:
        probes["out"] = out
    return out, probs, (layers.split_heads(k, n_heads), layers.split_heads(v, n_heads))


def pooler(x, dense):
    """layers.pooler on the Numba GEMM: tanh(dense(x[:, 0])), [B, L, H] -> [B, H]."""
    return np.tanh(linear(x[:, 0], **dense))


def warmup(dtypes=(np.float32,)) -> None:
    """Compile (or load from the cache) every kernel a forward pass calls, for each dtype: one encoder layer
    and the pooler (their Linear weights packed, as ``load_parameters`` stores them) and a head's linear on a
    random layer, once below ``SERIAL_BELOW_FLOPS`` (the serial twins) and once above it (the parallel
    kernels). The arguments have the types a model passes, so a forward pass afterwards compiles nothing
    (``tests/test_model.py`` checks it)."""
    rng = np.random.default_rng(0)
    H, F, nh, n_labels = 256, 1024, 4, 3
    for dtype in dtypes:

        def linear_params(n_out, n_in, dtype=dtype):
            return {"weight": rng.standard_normal((n_out, n_in)).astype(dtype), "bias": np.zeros(n_out, dtype)}

        def packed_params(n_out, n_in, dtype=dtype):  # as load_parameters stores an encoder Linear
            p = linear_params(n_out, n_in)
            return dict(p, weight=gemm.PackedWeight(p["weight"])) if dtype == np.float32 else p

        norm_params = {"weight": np.ones(H, dtype), "bias": np.zeros(H, dtype)}
        layer = {"self_attn": {"self_attn": {n: packed_params(H, H) for n in ("q_proj", "k_proj", "v_proj")},
                               "out_proj": packed_params(H, H)},
                 "linear1": packed_params(F, H), "linear2": packed_params(H, F),
                 "norm1": norm_params, "norm2": norm_params}  # fmt: skip
        for L in (1, 320):  # serial twins; parallel kernels (LayerNorm of 256 goes parallel at 293 rows)
            x = rng.standard_normal((1, L, H)).astype(dtype)
            x, _, _ = encoder_layer(x, **layer, n_heads=nh, activation="gelu", eps=1e-5, mask=None, flavor="hf")
            linear(pooler(x, packed_params(H, H)), **linear_params(n_labels, H))  # the pooler packed at load
            linear(x, **linear_params(H, H))  # a Linear on unpacked weights over every token, as a head runs
