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
def _transpose_values(v, n_heads, vt):
    """vt[b, h, t, j] = v[b, j, h*d + t]: each head's values as [d, Lk] rows, so the context is a product of
    contiguous rows (probabilities x value channels) like the GEMM's."""
    B, Lk, H = v.shape
    d = H // n_heads
    for bh in prange(B * n_heads):
        b = bh // n_heads
        h = bh % n_heads
        for j in range(Lk):
            for t in range(d):
                vt[b, h, t, j] = v[b, j, h * d + t]


@njit(**PARALLEL_JIT)
def _attention(q, k, vt, mask, head_mask, n_heads, hf_scaling, has_mask, need_probs, ctx, probs):
    """One task per (batch, head, block of 4 query rows).

    Scores: a 4 x 3 register tile (4 query rows by 3 keys, 12 accumulators) of dot products over the head's d
    channels, the same tile as the GEMM's, reading contiguous query and key rows. Softmax row by row in an
    L1 buffer. Context: another 4 x 3 tile, 4 probability rows by 3 value channels, dot products over the
    keys against the transposed values. Remainder rows, keys and channels take plain dot products.
    """
    B, L, H = q.shape
    Lk = k.shape[1]
    d = H // n_heads
    mb, mh, mq = mask.shape[0], mask.shape[1], mask.shape[2]
    sqrt_d = q.dtype.type(math.sqrt(d))  # HF: scores / sqrt(d), the divisor rounded to the compute dtype
    q_scale = q.dtype.type(d**-0.5)  # Paddle: q * d^-0.5, likewise
    zero = q.dtype.type(0)
    n_blocks = (L + 3) // 4
    for task in prange(B * n_heads * n_blocks):
        b = task // (n_heads * n_blocks)
        h = (task // n_blocks) % n_heads
        i0 = (task % n_blocks) * 4
        nr = min(4, L - i0)
        c0 = h * d
        Q = np.zeros((4, d), dtype=q.dtype)  # the block's query rows (Paddle: scaled first)
        for r in range(nr):
            for t in range(d):
                Q[r, t] = q[b, i0 + r, c0 + t] if hf_scaling else q[b, i0 + r, c0 + t] * q_scale
        S = np.zeros((4, Lk), dtype=q.dtype)  # scores, then probabilities
        q0 = Q[0]
        q1 = Q[1]
        q2 = Q[2]
        q3 = Q[3]
        j_full = Lk - Lk % 3 if nr == 4 else 0
        for j0 in range(0, j_full, 3):  # S[r, j] = q_r . k_j
            k0 = k[b, j0, c0 : c0 + d]
            k1 = k[b, j0 + 1, c0 : c0 + d]
            k2 = k[b, j0 + 2, c0 : c0 + d]
            s00 = s01 = s02 = s10 = s11 = s12 = zero
            s20 = s21 = s22 = s30 = s31 = s32 = zero
            for t in range(d):
                a0 = k0[t]
                a1 = k1[t]
                a2 = k2[t]
                x = q0[t]
                s00 += x * a0
                s01 += x * a1
                s02 += x * a2
                x = q1[t]
                s10 += x * a0
                s11 += x * a1
                s12 += x * a2
                x = q2[t]
                s20 += x * a0
                s21 += x * a1
                s22 += x * a2
                x = q3[t]
                s30 += x * a0
                s31 += x * a1
                s32 += x * a2
            S[0, j0] = s00
            S[0, j0 + 1] = s01
            S[0, j0 + 2] = s02
            S[1, j0] = s10
            S[1, j0 + 1] = s11
            S[1, j0 + 2] = s12
            S[2, j0] = s20
            S[2, j0 + 1] = s21
            S[2, j0 + 2] = s22
            S[3, j0] = s30
            S[3, j0 + 1] = s31
            S[3, j0 + 2] = s32
        for r in range(nr):  # remainder keys (and every key of a short last block)
            qr = Q[r]
            for j in range(j_full, Lk):
                kj = k[b, j, c0 : c0 + d]
                acc = zero
                for t in range(d):
                    acc += qr[t] * kj[t]
                S[r, j] = acc
        for r in range(nr):  # scale, mask, softmax, head mask: one row at a time
            i = i0 + r
            row = S[r]
            if hf_scaling:
                for j in range(Lk):
                    row[j] = row[j] / sqrt_d
            if has_mask:
                mrow = mask[b if mb > 1 else 0, h if mh > 1 else 0, i if mq > 1 else 0]
                for j in range(Lk):
                    row[j] += mrow[j]
            m = row[0]
            for j in range(1, Lk):
                m = max(m, row[j])
            total = 0.0
            for j in range(Lk):
                e = math.exp(row[j] - m)
                row[j] = e
                total += e
            scale = head_mask[h] / total
            for j in range(Lk):
                row[j] *= scale
            if need_probs:
                probs[b, h, i, :] = row
        vtb = vt[b, h]
        p0 = S[0]
        p1 = S[1]
        p2 = S[2]
        p3 = S[3]
        t_full = d - d % 3 if nr == 4 else 0
        for t0 in range(0, t_full, 3):  # ctx[r, t] = p_r . v[:, t]
            v0 = vtb[t0]
            v1 = vtb[t0 + 1]
            v2 = vtb[t0 + 2]
            s00 = s01 = s02 = s10 = s11 = s12 = zero
            s20 = s21 = s22 = s30 = s31 = s32 = zero
            for j in range(Lk):
                a0 = v0[j]
                a1 = v1[j]
                a2 = v2[j]
                x = p0[j]
                s00 += x * a0
                s01 += x * a1
                s02 += x * a2
                x = p1[j]
                s10 += x * a0
                s11 += x * a1
                s12 += x * a2
                x = p2[j]
                s20 += x * a0
                s21 += x * a1
                s22 += x * a2
                x = p3[j]
                s30 += x * a0
                s31 += x * a1
                s32 += x * a2
            ctx[b, i0, c0 + t0] = s00
            ctx[b, i0, c0 + t0 + 1] = s01
            ctx[b, i0, c0 + t0 + 2] = s02
            ctx[b, i0 + 1, c0 + t0] = s10
            ctx[b, i0 + 1, c0 + t0 + 1] = s11
            ctx[b, i0 + 1, c0 + t0 + 2] = s12
            ctx[b, i0 + 2, c0 + t0] = s20
            ctx[b, i0 + 2, c0 + t0 + 1] = s21
            ctx[b, i0 + 2, c0 + t0 + 2] = s22
            ctx[b, i0 + 3, c0 + t0] = s30
            ctx[b, i0 + 3, c0 + t0 + 1] = s31
            ctx[b, i0 + 3, c0 + t0 + 2] = s32
        for r in range(nr):  # remainder channels (and every channel of a short last block)
            pr = S[r]
            for t in range(t_full, d):
                vr = vtb[t]
                acc = zero
                for j in range(Lk):
                    acc += pr[j] * vr[j]
                ctx[b, i0 + r, c0 + t] = acc


_transpose_values_serial = serial_twin(_transpose_values, "_transpose_values_serial")
_attention_serial = serial_twin(_attention, "_attention_serial")


@locked
def attention(q, k, v, n_heads, mask=None, head_mask=None, scaling="hf", need_probs=False):
    """Numba twin of ``attention_ref``: same arguments, same results up to summation order."""
    B, L, H = q.shape
    Lk = k.shape[1]
    d = H // n_heads
    dtype = q.dtype
    q = np.ascontiguousarray(q)
    k = np.ascontiguousarray(k, dtype=dtype)
    vt = np.empty((B, n_heads, d, Lk), dtype=dtype)
    ctx = np.empty((B, L, H), dtype=dtype)
    probs = np.empty((B, n_heads, L, Lk) if need_probs else (1, 1, 1, 1), dtype=dtype)
    if B * L == 0:
        return ctx, (probs if need_probs else None)
    small = 4 * B * L * Lk * H < SERIAL_BELOW_FLOPS
    (_transpose_values_serial if small else _transpose_values)(np.ascontiguousarray(v, dtype=dtype), n_heads, vt)
    if mask is None:
        m4 = np.zeros((1, 1, 1, Lk), dtype=dtype)
    else:
        m4 = np.asarray(mask, dtype=dtype)
        m4 = np.ascontiguousarray(m4.reshape((1,) * (4 - m4.ndim) + m4.shape))
    hm = np.ones(n_heads, dtype=dtype) if head_mask is None else np.ascontiguousarray(head_mask, dtype=dtype).reshape(n_heads)
    (_attention_serial if small else _attention)(q, k, vt, m4, hm, n_heads, scaling == "hf", mask is not None,
                                                 need_probs, ctx, probs)  # fmt: skip
    return ctx, (probs if need_probs else None)
