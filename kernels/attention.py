"""Fused attention: scaled QK^T + additive mask + softmax (+ head mask) + PV, the NumPy twin first, then Numba.

Dimension legend: B batch, L queries, Lk keys (= past + L), nh heads, d head size, H = nh * d.

q [B, L, H], k and v [B, Lk, H] are the projections in the layout the Linear layers give them (head h in
channels h*d .. (h+1)*d - 1); the context comes back in the same layout, so no head split/merge copies are
made. ``mask`` is additive and broadcastable to [B, nh, L, Lk] (4-D, any axis but the last may be 1).
``scaling`` is "hf" ((q k^T) / sqrt(d)) or "paddle" ((q d^-0.5) k^T): identical maths, different rounding.
Fully-masked rows follow from the mask values, exactly as in the twin (uniform for HF's float32-min fill).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .settings import locked, PARALLEL_JIT, SERIAL_BELOW_FLOPS, serial_twin


# ================================================================================================ NumPy twin
def attention_ref(q, k, v, n_heads, mask=None, head_mask=None, scaling="hf", need_probs=False):
    """-> (context [B, L, H], probs [B, nh, L, Lk] or None)."""
    B, L, H = q.shape
    Lk = k.shape[1]
    d = H // n_heads
    qh = q.reshape(B, L, n_heads, d).transpose(0, 2, 1, 3)  # [B, L, H] -> [B, nh, L, d]
    kh = k.reshape(B, Lk, n_heads, d).transpose(0, 2, 1, 3)
    vh = v.reshape(B, Lk, n_heads, d).transpose(0, 2, 1, 3)
    if scaling == "hf":
        s = (qh @ kh.transpose(0, 1, 3, 2)) / math.sqrt(d)  # [B, nh, L, Lk]
    else:
        s = (qh * d**-0.5) @ kh.transpose(0, 1, 3, 2)
    if mask is not None:
        s = s + mask
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    if head_mask is not None:
        p = p * head_mask.reshape(1, n_heads, 1, 1)
    ctx = (p @ vh).transpose(0, 2, 1, 3).reshape(B, L, H)  # [B, nh, L, d] -> [B, L, H]
    return ctx, (p if need_probs else None)


# ================================================================================================ Numba kernel
@njit(**PARALLEL_JIT)
def _transpose_keys(k, n_heads, kt):
    """kt[b, h, t, j] = k[b, j, h*d + t]: each head's keys as [d, Lk] rows, so scores vectorise over keys."""
    B, Lk, H = k.shape
    d = H // n_heads
    for bh in prange(B * n_heads):
        b = bh // n_heads
        h = bh % n_heads
        for j in range(Lk):
            for t in range(d):
                kt[b, h, t, j] = k[b, j, h * d + t]


@njit(**PARALLEL_JIT)
def _attention(q, kt, v, mask, head_mask, n_heads, hf_scaling, has_mask, need_probs, ctx, probs):
    """One task per (batch, head, query row): scores over all keys in a row buffer (L1), the row's softmax,
    then the context row as a probability-weighted sum of value rows; inner loops run over contiguous keys or
    head channels and vectorise."""
    B, L, H = q.shape
    Lk = v.shape[1]
    d = H // n_heads
    mb, mh, mq = mask.shape[0], mask.shape[1], mask.shape[2]
    sqrt_d = q.dtype.type(math.sqrt(d))  # HF: scores / sqrt(d), the divisor rounded to the compute dtype
    q_scale = q.dtype.type(d**-0.5)  # Paddle: q * d^-0.5, likewise
    for task in prange(B * n_heads * L):
        b = task // (n_heads * L)
        h = (task // L) % n_heads
        i = task % L
        s = np.zeros(Lk, dtype=q.dtype)  # the row of scores, then of probabilities
        qrow = q[b, i, h * d : (h + 1) * d]
        ktb = kt[b, h]
        for t in range(d):  # s[j] = sum_t q[t] k[j, t], vectorised over j
            qt = qrow[t] if hf_scaling else qrow[t] * q_scale  # Paddle scales q before the product
            kr = ktb[t]
            for j in range(Lk):
                s[j] += qt * kr[j]
        if hf_scaling:
            for j in range(Lk):
                s[j] = s[j] / sqrt_d
        if has_mask:
            mrow = mask[b if mb > 1 else 0, h if mh > 1 else 0, i if mq > 1 else 0]
            for j in range(Lk):
                s[j] += mrow[j]
        m = s[0]
        for j in range(1, Lk):
            m = max(m, s[j])
        total = 0.0
        for j in range(Lk):
            e = math.exp(s[j] - m)
            s[j] = e
            total += e
        scale = head_mask[h] / total
        for j in range(Lk):
            s[j] *= scale
        if need_probs:
            probs[b, h, i, :] = s
        crow = ctx[b, i, h * d : (h + 1) * d]
        crow[:] = 0
        for j in range(Lk):  # context = sum_j p[j] v[j], vectorised over the head's channels
            pj = s[j]
            vr = v[b, j, h * d : (h + 1) * d]
            for t in range(d):
                crow[t] += pj * vr[t]


_transpose_keys_serial = serial_twin(_transpose_keys, "_transpose_keys_serial")
_attention_serial = serial_twin(_attention, "_attention_serial")


@locked
def attention(q, k, v, n_heads, mask=None, head_mask=None, scaling="hf", need_probs=False):
    """Numba twin of ``attention_ref``: same arguments, same results up to summation order."""
    B, L, H = q.shape
    Lk = k.shape[1]
    d = H // n_heads
    dtype = q.dtype
    q = np.ascontiguousarray(q)
    v = np.ascontiguousarray(v, dtype=dtype)
    kt = np.empty((B, n_heads, d, Lk), dtype=dtype)
    ctx = np.empty((B, L, H), dtype=dtype)
    probs = np.empty((B, n_heads, L, Lk) if need_probs else (1, 1, 1, 1), dtype=dtype)
    if B * L == 0:
        return ctx, (probs if need_probs else None)
    small = 4 * B * L * Lk * H < SERIAL_BELOW_FLOPS
    (_transpose_keys_serial if small else _transpose_keys)(np.ascontiguousarray(k, dtype=dtype), n_heads, kt)
    if mask is None:
        m4 = np.zeros((1, 1, 1, Lk), dtype=dtype)
    else:
        m4 = np.asarray(mask, dtype=dtype)
        m4 = np.ascontiguousarray(m4.reshape((1,) * (4 - m4.ndim) + m4.shape))
    hm = np.ones(n_heads, dtype=dtype) if head_mask is None else np.ascontiguousarray(head_mask, dtype=dtype).reshape(n_heads)
    (_attention_serial if small else _attention)(q, kt, v, m4, hm, n_heads, scaling == "hf", mask is not None,
                                                 need_probs, ctx, probs)  # fmt: skip
    return ctx, (probs if need_probs else None)
