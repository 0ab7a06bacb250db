"""Fused attention: scaled QK^T + additive mask + softmax (+ head mask) + PV, the NumPy twin first, then Numba.

Dimension legend: B batch, L queries, Lk keys (= past + L), nh heads, d head size, H = nh * d.

q [B, L, H], k and v [B, Lk, H] are the projections in the layout the Linear layers give them (head h in
channels h*d .. (h+1)*d - 1); the context comes back in the same layout, so no head split/merge copies are
made. ``mask`` is additive and broadcastable to [B, nh, L, Lk] (4-D, any axis but the last may be 1).
``scaling`` is "hf" ((q k^T) / sqrt(d)) or "paddle" ((q d^-0.5) k^T): identical maths, different rounding.
Fully-masked rows follow from the mask values, exactly as in the twin (uniform for HF's float32-min fill).

Its speed against the twin and a per-head np.matmul formulation:
``scripts/bench/bench_kernels.py --threads 2 --reps 7 --only attention``; the measured runs are in docs/performance.md.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from .gemm import TILE_COLS, TILE_ROWS, micro_tile
from .norm import bits_float32, float32_bits, order_key
from .settings import JIT, jit, run, serial_twin


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
    p = softmax_ref(s, mask, head_mask, n_heads)
    ctx = (p @ vh).transpose(0, 2, 1, 3).reshape(B, L, H)  # [B, nh, L, d] -> [B, L, H]
    return ctx, (p if need_probs else None)


def softmax_ref(s, mask, head_mask, n_heads):
    """scores [B, nh, L, Lk] -> probabilities: + mask, softmax over the keys, x head mask."""
    if mask is not None:
        s = s + mask
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    if head_mask is not None:
        p = p * head_mask.reshape(1, n_heads, 1, 1)
    return p


# ================================================================================================ Numba kernel
# Cephes expf: exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln 2 (ln 2 in two parts), exp(r) by a degree-7
# polynomial; within ~1 ulp of libm's expf on the softmax's range (x <= 0).
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_EXP_FLUSH = -86.0  # below this exp(x) < 4.5e-38 is returned as 0 (2^n stays a normal float32's exponent)


def exp_shifted(row, n, m):
    """row[:n] = exp(row[:n] - m) in place.

    This NumPy body is the twin and runs when the JIT is disabled; compiled float32 code gets the polynomial
    below (one vectorised loop: 16 lanes per zmm), float64 code libm's exp.
    """
    row[:n] = np.exp(row[:n] - m)


# No reassociation here: it would merge the two-part ln 2 of the range reduction (measured: 4.5 ulp, not 0.5).
@overload(exp_shifted, jit_options=dict(JIT, fastmath={"contract", "nsz"}))
def _exp_shifted_jit(row, n, m):
    if row.dtype == types.float32:

        def impl(row, n, m):
            f, i32 = np.float32, np.int32  # every constant float32 or int32: no lane is widened to 64 bits
            log2e, hi, lo, flush = f(_LOG2E), f(_LN2_HI), f(_LN2_LO), f(_EXP_FLUSH)
            p0, p1, p2, p3, p4, p5 = f(_EXP_P[0]), f(_EXP_P[1]), f(_EXP_P[2]), f(_EXP_P[3]), f(_EXP_P[4]), f(_EXP_P[5])
            one, half, zero = f(1.0), f(0.5), f(0.0)
            for j in range(n):  # branch-free, so the loop vectorises
                x = row[j] - m
                fn = np.floor(x * log2e + half)  # np: math.floor would return an int64
                r = x - fn * hi - fn * lo
                p = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
                y = p * r * r + r + one
                flushed = x < flush
                # times 2^n: n added to the exponent field (nothing added to 0, or to NaN)
                add = i32(0) if (flushed or x != x) else i32(i32(fn) << i32(23))
                row[j] = bits_float32(i32(float32_bits(zero if flushed else y) + add))

        return impl

    def impl(row, n, m):
        for j in range(n):
            row[j] = math.exp(row[j] - m)

    return impl


def row_max(row, n):
    """max(row[:n]) of a float row with n >= 1. This NumPy body is the twin and runs when the JIT is disabled.

    Compiled for float32 the maximum is taken on the float bits mapped to integers of the same order
    (``norm.order_key``): an integer max reduction vectorises, a float one (which must honour NaN) does not,
    and was a third of the softmax's time. A NaN with the sign bit clear maps above +inf and
    becomes the maximum; one with it set maps below -inf and does not, but its own exp is NaN, so the row's
    sum and every probability come out NaN as the twin's do."""
    return row[:n].max()


@overload(row_max, jit_options=JIT)
def _row_max_jit(row, n):
    if row.dtype == types.float32:

        def impl(row, n):
            m = order_key(float32_bits(row[0]))
            for j in range(1, n):
                m = np.int32(max(m, order_key(float32_bits(row[j]))))  # int32: 16 lanes per zmm (``order_key``)
            return bits_float32(order_key(m))  # the key back to float32 bits

        return impl

    def impl(row, n):
        m = row[0]
        for j in range(1, n):
            m = max(m, row[j])
        return m

    return impl


@jit(parallel=True)
def _attention(q, k, v, mask, head_mask, n_heads, hf_scaling, has_mask, need_probs, ctx, probs):
    """One task per (batch, head); both products on the GEMM's register tile (``micro_tile``).

    Per task: the head's keys are packed into panels of TILE_ROWS keys, k^T [d, TILE_ROWS], and its values
    into panels of TILE_ROWS channels, [Lk, TILE_ROWS] (zero-padded; TILE_ROWS is 32 with AVX-512, 16 with
    AVX2). Then per block of 6 query rows: scores = 6 query rows (read in place, the
    tile's broadcast operand) x each key panel, over K = d; scale, mask and softmax (vectorised exp) row by
    row in an L1 buffer; context = the 6 probability rows x each value panel, over K = Lk.
    q arrives pre-scaled for Paddle's scaling.
    """
    B, L, H = q.shape
    Lk = k.shape[1]
    d = H // n_heads
    mb, mh, mq = mask.shape[0], mask.shape[1], mask.shape[2]
    sqrt_d = q.dtype.type(math.sqrt(d))  # HF: scores / sqrt(d), the divisor rounded to the compute dtype
    inv_sqrt_d = q.dtype.type(1) / sqrt_d
    exact_inverse = math.frexp(sqrt_d)[0] == 0.5  # sqrt_d a power of two (d = 4^n: 64 in ErnieM)
    n_kp = (Lk + TILE_ROWS - 1) // TILE_ROWS
    n_vp = (d + TILE_ROWS - 1) // TILE_ROWS
    for task in prange(B * n_heads):
        b = task // n_heads
        h = task % n_heads
        c0 = h * d
        kp = np.empty((n_kp, d, TILE_ROWS), dtype=q.dtype)  # kp[p, t, r] = k[b, TILE_ROWS p + r, c0 + t]
        for j in range(Lk):
            kj = k[b, j, c0 : c0 + d]
            panel = kp[j // TILE_ROWS]
            r = j % TILE_ROWS
            for t in range(d):
                panel[t, r] = kj[t]
        for j in range(Lk, n_kp * TILE_ROWS):  # the last panel's padding: zeros (their scores are never read)
            kp[n_kp - 1, :, j % TILE_ROWS] = 0
        vp = np.empty((n_vp, Lk, TILE_ROWS), dtype=q.dtype)  # vp[p, j, r] = v[b, j, c0 + TILE_ROWS p + r]
        for p in range(n_vp):
            w = min(TILE_ROWS, d - p * TILE_ROWS)
            for j in range(Lk):
                vj = v[b, j, c0 + p * TILE_ROWS : c0 + p * TILE_ROWS + w]
                dst = vp[p, j]
                for r in range(w):
                    dst[r] = vj[r]
                for r in range(w, TILE_ROWS):
                    dst[r] = 0
        qb = q[b]
        S = np.empty((TILE_COLS, Lk), dtype=q.dtype)  # scores, then probabilities
        c = np.empty((TILE_COLS, TILE_ROWS), dtype=q.dtype)
        for i0 in range(0, L, TILE_COLS):
            nr = min(TILE_COLS, L - i0)
            for p in range(n_kp):  # S[r, j0 + col] = q_{i0 + r} . k_{j0 + col} (/ sqrt(d)) + mask
                j0 = p * TILE_ROWS
                w = min(TILE_ROWS, Lk - j0)
                micro_tile(qb, i0, nr, c0, d, kp[p], c, w)
                for r in range(nr):
                    srow = S[r, j0 : j0 + w]
                    mrow = mask[b if mb > 1 else 0, h if mh > 1 else 0, i0 + r if mq > 1 else 0, j0 : j0 + w]
                    for col in range(w):
                        x = c[r, col]
                        if hf_scaling:  # HF divides; by a power of two, the multiply gives the same bits
                            x = x * inv_sqrt_d if exact_inverse else x / sqrt_d
                        if has_mask:
                            x += mrow[col]
                        srow[col] = x
            for r in range(nr):  # softmax, head mask: one row at a time
                i = i0 + r
                row = S[r]
                m = row_max(row, Lk)
                exp_shifted(row, Lk, m)
                total = 0.0
                for j in range(Lk):
                    total += row[j]
                scale = q.dtype.type(head_mask[h] / total)  # the sum in float64, the multiplier in the dtype
                for j in range(Lk):
                    row[j] *= scale
                if need_probs:
                    probs[b, h, i, :] = row
            for p in range(n_vp):  # ctx[i0 + r, t0 + col] = P_r . v[:, t0 + col]
                t0 = c0 + p * TILE_ROWS
                w = min(TILE_ROWS, d - p * TILE_ROWS)
                micro_tile(S, 0, nr, 0, Lk, vp[p], c, w)
                for r in range(nr):
                    out = ctx[b, i0 + r, t0 : t0 + w]
                    for col in range(w):
                        out[col] = c[r, col]


_attention_serial = serial_twin(_attention, "_attention_serial")


def attention(q, k, v, n_heads, mask=None, head_mask=None, scaling="hf", need_probs=False):
    """Numba twin of ``attention_ref``: same arguments, same results up to summation order."""
    B, L, H = q.shape
    Lk = k.shape[1]
    d = H // n_heads
    dtype = q.dtype
    q = np.ascontiguousarray(q)
    if scaling != "hf":
        q = q * dtype.type(d**-0.5)  # Paddle: q * d^-0.5 first, the multiplier rounded to the compute dtype
    k = np.ascontiguousarray(k, dtype=dtype)
    v = np.ascontiguousarray(v, dtype=dtype)
    ctx = np.empty((B, L, H), dtype=dtype)
    probs = np.empty((B, n_heads, L, Lk) if need_probs else (1, 1, 1, 1), dtype=dtype)
    if B * L == 0:
        return ctx, (probs if need_probs else None)
    if mask is None:
        m4 = np.zeros((1, 1, 1, Lk), dtype=dtype)
    else:
        m4 = np.asarray(mask, dtype=dtype)
        m4 = np.ascontiguousarray(m4.reshape((1,) * (4 - m4.ndim) + m4.shape))
    hm = (
        np.ones(n_heads, dtype=dtype)
        if head_mask is None
        else np.array(head_mask, dtype=dtype).reshape(n_heads)  # a writable copy: one Numba type
    )
    run(_attention, _attention_serial, 4 * B * L * Lk * H,
        q, k, v, m4, hm, n_heads, scaling == "hf", mask is not None, need_probs, ctx, probs)
    return ctx, (probs if need_probs else None)
