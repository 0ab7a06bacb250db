"""The one switch between the NumPy reference layers and the Numba kernels.

``backend="numpy"`` runs layers.encoder_layer, the textbook NumPy composition. ``backend="numba"`` runs
``encoder_layer`` below: the same layer, same signature and same maths, composed from the fused kernels in
erniem_np.kernels (GEMM with bias/GELU/residual epilogues, fused attention, LayerNorm). The tests hold both
to the same goldens.
"""

from __future__ import annotations

import numpy as np

from . import layers

BACKENDS = ("numba", "numpy")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numba":
        from . import kernels  # noqa: F401  (imports Numba; compiles nothing)
    return backend


def _to_heads(t, n_heads):
    """[B, Lk, H] -> [B, nh, Lk, d] view (the cache layout)."""
    B, Lk, H = t.shape
    return t.reshape(B, Lk, n_heads, H // n_heads).transpose(0, 2, 1, 3)


def _from_heads(t):
    """[B, nh, P, d] -> [B, P, H] copy (the kernels' layout)."""
    B, nh, P, d = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, P, nh * d)


def encoder_layer(x, self_attn, linear1, linear2, norm1, norm2, *, n_heads, activation, eps, mask, flavor,
                  head_mask=None, past=None, need_probs=True, probes=None):  # fmt: skip
    """layers.encoder_layer on the Numba kernels: [B, L, H] -> ([B, L, H], probs or None, (k, v)).

    ``probes``: None, or a dict that receives what the fused kernels expose: ``attn.q``/``attn.k``/``attn.v``
    (split into heads), ``attn.probs`` (computed when probes are asked for), ``attn.context``, ``norm1.out``
    and ``out``. The kernels fuse the scores into the softmax, out_proj into the residual and linear1 into
    GELU, so ``attn.scores``, ``attn.out`` and ``ffn.*`` exist only on the numpy backend."""
    from .kernels import attention, gemm, norm

    qkv = self_attn["self_attn"]
    q, k, v = gemm.linear_many(x, [(qkv[n]["weight"], qkv[n].get("bias")) for n in ("q_proj", "k_proj", "v_proj")])
    # q, k, v: [B, L, H] each, one kernel call (heads stay interleaved: the attention kernel reads them in place)
    if past is not None:  # [B, nh, P, d] cache in front of the new keys and values: [B, P + L, H]
        k = np.concatenate([_from_heads(past[0]), k], axis=1)
        v = np.concatenate([_from_heads(past[1]), v], axis=1)
    hm = None if head_mask is None else np.asarray(head_mask).reshape(n_heads)
    need_probs = need_probs or probes is not None
    ctx, probs = attention.attention(q, k, v, n_heads, mask, hm, scaling=flavor, need_probs=need_probs)
    x = norm.layer_norm(gemm.linear(ctx, **self_attn["out_proj"], residual=x), norm1["weight"], norm1["bias"], eps)
    if probes is not None:
        probes.update({"attn.q": _to_heads(q, n_heads), "attn.k": _to_heads(k, n_heads),
                       "attn.v": _to_heads(v, n_heads), "attn.probs": probs, "attn.context": ctx,
                       "norm1.out": x})  # fmt: skip
    if activation == "gelu":  # exact GELU fused into the GEMM (rational erf, within 1e-6 of erf GELU)
        h = gemm.linear(x, **linear1, activation="gelu")  # [B, L, H] -> [B, L, F]
    else:
        h = layers.ACTIVATIONS[activation](gemm.linear(x, **linear1))
    x = norm.layer_norm(gemm.linear(h, **linear2, residual=x), norm2["weight"], norm2["bias"], eps)
    if probes is not None:
        probes["out"] = x
    return x, probs, (_to_heads(k, n_heads), _to_heads(v, n_heads))


def linear(x, weight, bias=None):
    """layers.linear on the Numba GEMM (its serial twin for small shapes). Used for the pooler and the heads,
    so the numba backend makes no BLAS call at all: OpenBLAS threads spin for a while after each call and
    would take the cores from the next kernels."""
    from .kernels import gemm

    return gemm.linear(x, weight, bias)


def pooler(x, dense):
    """layers.pooler on the Numba GEMM: tanh(dense(x[:, 0])), [B, L, H] -> [B, H]."""
    return np.tanh(linear(x[:, 0], **dense))


def layer_norm(x, weight, bias, eps):
    from .kernels import norm

    return norm.layer_norm(x, weight, bias, eps)


def set_num_threads(n: int) -> None:
    """Threads the Numba kernels use in the calling thread (at most NUMBA_NUM_THREADS, fixed at start-up;
    Numba's setting is per Python thread). The numpy backend's BLAS threads follow OPENBLAS_NUM_THREADS."""
    from .kernels import settings

    settings.set_num_threads(n)


def warmup(dtypes=(np.float32,)) -> None:
    """Compile (or load from the cache) every kernel a forward pass may use, for each dtype: the parallel
    kernels and their serial twins (used below ``SERIAL_BELOW_FLOPS``)."""
    from .config import ErnieMConfig
    from .kernels import norm
    from .model import ErnieMModel

    config = ErnieMConfig(vocab_size=16, hidden_size=256, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=2048, max_position_embeddings=130)  # fmt: skip
    for dtype in dtypes:
        model = ErnieMModel(config, dtype=dtype, backend="numba")
        for L in (3, 64):  # serial and parallel sizes
            ids = np.full((1, L), 5)
            model(input_ids=ids, attention_mask=np.ones_like(ids), output_attentions=True)
            model(input_ids=ids)
        x = np.ones((1024, 400), dtype)
        norm.layer_norm(x, x[0], x[0], 1e-5)
        norm.layer_norm(x, x[0], x[0], 1e-5, residual=x)
