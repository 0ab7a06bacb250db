"""Fused attention: scaled QK^T + additive mask + softmax (+ head mask) + PV, the NumPy twin first, then Numba.

Dimension legend: B batch, L queries, Lk keys (= past + L), nh heads, d head size, H = nh * d.

q [B, L, H], k and v [B, Lk, H] are the projections in the layout the Linear layers give them (head h in
channels h*d .. (h+1)*d - 1); the context comes back in the same layout, so no head split/merge copies are
made. ``mask`` is additive and broadcastable to [B, nh, L, Lk] (4-D, any axis but the last may be 1).
``scaling`` is "hf" ((q k^T) / sqrt(d)) or "paddle" ((q d^-0.5) k^T): identical maths, different rounding.
Fully-masked rows follow from the mask values, exactly as in the twin (uniform for HF's float32-min fill).

Two kernels: ``_attention`` computes the references' numbers (float32 or float64 throughout); the int8
backend's ``_attention_bf16`` rounds q, k, the probabilities and v to bfloat16 for the two products
(``attention(..., products="bf16")``, "bfloat16 products" below).

Its speed against the twin and a per-head np.matmul formulation:
``scripts/bench/bench_kernels.py --threads 2 --reps 7 --only attention``; the measured runs are in docs/performance.md.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .gemm import TILE_COLS, TILE_ROWS, emit_phi_loop, emit_row_pointers, emit_splat, micro_tile
from .norm import bits_float32, float32_bits, order_key
from .settings import JIT, cpu_features, jit, run, serial_twin


# ================================================================================================ NumPy twin
def attention_ref(q, k, v, n_heads, mask=None, head_mask=None, scaling="hf", need_probs=False, products="float32"):
    """-> (context [B, L, H], probs [B, nh, L, Lk] or None). ``products="bf16"``: the twin of the int8
    backend's attention (``_attention_bf16``), float32 inputs only."""
    if products == "bf16":
        return attention_bf16_ref(q, k, v, n_heads, mask, head_mask, scaling, need_probs)
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


@jit
def scores_into(c, nr, w, S, j0, mask, b, h, i0, d, hf_scaling, has_mask):
    """S[r, j0 + col] = c[r, col] (/ sqrt(d) for HF) + mask[b, h, i0 + r, j0 + col], for r < nr, col < w: a
    tile of products q . k made scores."""
    mb, mh, mq = mask.shape[0], mask.shape[1], mask.shape[2]
    sqrt_d = S.dtype.type(math.sqrt(d))  # HF: scores / sqrt(d), the divisor rounded to the compute dtype
    inv_sqrt_d = S.dtype.type(1) / sqrt_d
    exact_inverse = math.frexp(sqrt_d)[0] == 0.5  # sqrt_d a power of two (d = 4^n: 64 in ErnieM)
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


@jit
def softmax_scale(row, Lk, hm):
    """row[:Lk] = exp(row - max(row)) in place; returns the multiplier that makes them the probabilities (times
    the head mask ``hm``): the sum in float64, the multiplier in the row's dtype."""
    m = row_max(row, Lk)
    exp_shifted(row, Lk, m)
    total = 0.0
    for j in range(Lk):
        total += row[j]
    return row.dtype.type(hm / total)


@jit
def softmax_rows(S, nr, Lk, hm, need_probs, probs, b, h, i0):
    """Rows S[:nr, :Lk] of scores -> probabilities in place (the softmax, times the head mask ``hm``), copied to
    probs[b, h, i0 + r] when ``need_probs``."""
    for r in range(nr):
        row = S[r]
        scale = softmax_scale(row, Lk, hm)
        for j in range(Lk):
            row[j] *= scale
        if need_probs:
            probs[b, h, i0 + r, :] = row[:Lk]


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
                scores_into(c, nr, w, S, j0, mask, b, h, i0, d, hf_scaling, has_mask)
            softmax_rows(S, nr, Lk, head_mask[h], need_probs, probs, b, h, i0)
            for p in range(n_vp):  # ctx[i0 + r, t0 + col] = P_r . v[:, t0 + col]
                t0 = c0 + p * TILE_ROWS
                w = min(TILE_ROWS, d - p * TILE_ROWS)
                micro_tile(S, 0, nr, 0, Lk, vp[p], c, w)
                for r in range(nr):
                    out = ctx[b, i0 + r, t0 : t0 + w]
                    for col in range(w):
                        out[col] = c[r, col]


_attention_serial = serial_twin(_attention, "_attention_serial")


# ================================================================================================ bfloat16 products
# The int8 backend's attention: the float32 kernel's steps, with q, k, the probabilities P and v rounded to
# bfloat16 (float32's sign and exponent, 8 significant bits: an error of at most 2^-8 of the value) and both
# products summed in float32 by ``vdpbf16ps`` (AVX512_BF16), which multiplies pairs of bfloat16 values and so
# does 32 multiply-adds per instruction where ``vfmadd231ps`` does 16. The product of two bfloat16 values is
# exact in float32; only the sums round. No scales or zero points: each value keeps its own exponent, so a small
# probability next to a large one keeps 8 bits (an int8 P scaled by its row's maximum would round it to 0).
# The softmax runs in float32 between the products, as in the float32 kernel. docs/quantization.md has the
# accuracy this costs (``scripts/bench/int8_attention_accuracy.py``) and docs/performance.md the speed.
BF16_ROWS = 6  # rows of x (queries, or rows of P) per register tile
BF16_LANES = 16  # float32 accumulators per zmm
BF16_NV = 2  # zmm accumulators per row
BF16_COLS = BF16_NV * BF16_LANES  # output columns per tile (keys for the scores, head channels for the context)


@functools.cache
def bf16_supported() -> bool:
    """Whether the CPU Numba compiles for has the instructions ``_attention_bf16`` needs (AVX512_BF16).
    Asked once (LLVM's feature query takes ~0.2 ms)."""
    f = cpu_features()
    return bool(f.get("avx512bf16") and f.get("avx512f") and f.get("avx512bw"))


def bf16_bits(x):
    """float32 -> the bits of the nearest bfloat16, ties to even (uint16); a NaN stays a (quiet) NaN. The
    rounding both the kernel (``to_bf16``) and the twin use."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
    r = np.where(np.isnan(x), (b >> 16) | 0x40, r)
    return r.astype(np.uint16)


def bf16_float(bits):
    """bfloat16 bits (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)  # NumPy 1.x too


def to_bf16(x):
    """One float32 -> its bfloat16 bits (``bf16_bits``), a uint16 scalar. This NumPy body is the twin; compiled
    code gets the integer form below, which vectorises."""
    return bf16_bits(np.array([x], dtype=np.float32))[0]


@overload(to_bf16, jit_options=JIT)
def _to_bf16_jit(x):
    def impl(x):
        i32 = np.int32
        b = float32_bits(x)  # int32; the sums below wrap exactly as uint32 ones would
        # a NaN (exponent all ones, mantissa not 0): its quiet bit set and its low half cleared, so the rounding
        # below gives (b >> 16) | 0x40 as the twin does; masks, not a select, which halves this loop's time
        m = -i32(i32(b & i32(0x7FFFFFFF)) > i32(0x7F800000))  # -1 for a NaN, else 0
        b = i32((b | (m & i32(0x400000))) & ~(m & i32(0xFFFF)))
        r = i32(i32(b + i32(0x7FFF) + ((b >> i32(16)) & i32(1))) >> i32(16))  # nearest, ties to even
        return np.uint16(r & i32(0xFFFF))

    return impl


def attention_bf16_ref(q, k, v, n_heads, mask=None, head_mask=None, scaling="hf", need_probs=False):
    """The twin of ``attention(..., products="bf16")``: q (after Paddle's scaling), k, v and the probabilities
    rounded to bfloat16, the products of the rounded values summed exactly (float64) and rounded to float32.
    The kernel sums in float32, pair by pair (``bf16_tile``), so the two agree to float32 rounding."""
    q, k, v = (np.asarray(a, dtype=np.float32) for a in (q, k, v))
    B, L, H = q.shape
    Lk = k.shape[1]
    d = H // n_heads

    def rounded(a, n):  # [B, n, H] float32 -> [B, nh, n, d] float64 of its bfloat16 values
        return bf16_float(bf16_bits(a)).astype(np.float64).reshape(B, n, n_heads, d).transpose(0, 2, 1, 3)

    if scaling != "hf":
        q = q * np.float32(d**-0.5)
    s = (rounded(q, L) @ rounded(k, Lk).transpose(0, 1, 3, 2)).astype(np.float32)  # [B, nh, L, Lk]
    if scaling == "hf":
        s = s / np.float32(math.sqrt(d))
    p = softmax_ref(s, mask, head_mask, n_heads).astype(np.float32)
    pr = bf16_float(bf16_bits(p)).astype(np.float64)
    ctx = (pr @ rounded(v, Lk)).astype(np.float32).transpose(0, 2, 1, 3).reshape(B, L, H)
    return ctx, (p if need_probs else None)


def bf16_tile(x, i0, nr, kp, panel, c):
    """c[r, :] = sum over t < kp of x[i0 + r, 2t : 2t + 2] . panel[t, 2j : 2j + 2] (each column j < BF16_COLS) for
    r < BF16_ROWS (rows past nr repeat the last valid one). x [R, >= 2 kp] and panel [>= kp, 2 BF16_COLS] hold
    bfloat16 bits (uint16) in pairs: two consecutive values of K side by side, as ``vdpbf16ps`` reads them; c is
    float32 [BF16_ROWS, BF16_COLS]. The instruction's order of operations: per pair, the product of the second
    values added first, then that of the first, each sum rounded to float32 (the products are exact), so this
    twin and the instruction agree bit for bit, except that the instruction flushes subnormal inputs and
    results to zero.

    This NumPy body is the twin and runs when the JIT is disabled; compiled code gets ``_bf16_tile_ir``."""
    rows = np.minimum(np.arange(BF16_ROWS), nr - 1) + i0
    xs = bf16_float(x[rows, : 2 * kp])  # [ROWS, 2 kp]
    w = bf16_float(panel[:kp])  # [kp, 2 COLS]
    acc = np.zeros((BF16_ROWS, BF16_COLS), np.float32)
    for t in range(kp):
        acc = acc + xs[:, 2 * t + 1, None] * w[None, t, 1::2]
        acc = acc + xs[:, 2 * t, None] * w[None, t, 0::2]
    c[:] = acc


@intrinsic
def _bf16_tile_ir(typingctx, x, i0, nr, kp, panel, c):
    """``bf16_tile`` in LLVM IR: per pair t, BF16_NV zmm loads of panel[t] (16 pairs each), and for each of the
    BF16_ROWS rows a broadcast of the 32 bits of pair t of its row of x and BF16_NV ``vdpbf16ps`` into that
    row's accumulators (phis): 2 loads, 6 broadcasts and 12 instructions per pair, 12 accumulators. After the
    loop the accumulators are stored to c."""
    u16, f32t = types.uint16, types.float32
    if not (isinstance(x, types.Array) and x.dtype == u16 and x.ndim == 2 and x.layout == "C"
            and isinstance(panel, types.Array) and panel.dtype == u16 and panel.ndim == 2 and panel.layout == "C"
            and isinstance(c, types.Array) and c.dtype == f32t and c.ndim == 2 and c.layout == "C"):  # fmt: skip
        return None

    def codegen(context, builder, sig, args):
        _, i0, nr, kp, _, _ = args
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        IV, FV = ir.VectorType(i32, BF16_LANES), ir.VectorType(f32, BF16_LANES)

        def const(v):
            return ir.Constant(i64, v)

        x_arr, panel_arr, c_arr = (context.make_array(sig.args[k])(context, builder, args[k]) for k in (0, 4, 5))
        x_row_bytes = cgutils.unpack_tuple(builder, x_arr.strides, 2)[0]
        x_rows = [builder.bitcast(p, i32.as_pointer())  # row min(i0 + r, i0 + nr - 1) of x, as pairs (int32)
                  for p in emit_row_pointers(builder, x_arr.data, x_row_bytes, i0, nr, BF16_ROWS)]  # fmt: skip
        # the intrinsic as LLVM before 17 declares it, pairs as int32 lanes; LLVM 17 and later take <32 x bfloat>
        # and upgrade this form when they read the IR (checked on LLVM 22: the tile equals its twin)
        dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(FV, [FV, IV, IV]),
                                             "llvm.x86.avx512bf16.dpbf16ps.512")  # fmt: skip
        panel_vectors = builder.bitcast(panel_arr.data, IV.as_pointer())

        def step(k, acc):
            wv = [builder.load(builder.gep(panel_vectors, [builder.add(builder.mul(k, const(BF16_NV)), const(v))]),
                               align=4) for v in range(BF16_NV)]  # fmt: skip
            new = []
            for r in range(BF16_ROWS):
                pair = emit_splat(builder, builder.load(builder.gep(x_rows[r], [k]), align=4), IV)
                new += [builder.call(dot, [acc[r * BF16_NV + v], pair, wv[v]]) for v in range(BF16_NV)]
            return new

        zeros = ir.Constant(FV, [ir.Constant(f32, 0.0)] * BF16_LANES)
        acc = emit_phi_loop(builder, kp, [zeros] * (BF16_ROWS * BF16_NV), step, "bf16")
        c_data = builder.bitcast(c_arr.data, f32.as_pointer())
        for r in range(BF16_ROWS):
            for v in range(BF16_NV):
                ptr = builder.gep(c_data, [const(r * BF16_COLS + v * BF16_LANES)])
                builder.store(acc[r * BF16_NV + v], builder.bitcast(ptr, FV.as_pointer()), align=4)
        return context.get_dummy_value()

    sig = types.none(x, types.int64, types.int64, types.int64, panel, c)
    return sig, codegen


@overload(bf16_tile, jit_options=JIT)
def _bf16_tile_jit(x, i0, nr, kp, panel, c):
    def impl(x, i0, nr, kp, panel, c):
        _bf16_tile_ir(x, np.int64(i0), np.int64(nr), np.int64(kp), panel, c)

    return impl


@jit
def bf16_into(src, n, dst):
    """dst[j] = to_bf16(src[j]) for j < n, zeros in dst[n:] (the padding of an odd count)."""
    for j in range(n):
        dst[j] = to_bf16(src[j])
    for j in range(n, dst.shape[0]):
        dst[j] = 0


@jit(parallel=True)
def _attention_bf16(q, k, v, mask, head_mask, n_heads, hf_scaling, has_mask, need_probs, ctx, probs):
    """``_attention`` with bfloat16 products (float32 arrays only). Every operand is bfloat16 bits (uint16) with
    the values of the products' K in pairs side by side (``bf16_tile``). Per (batch, head) task: the head's
    queries, qb [L, 2 dp] (dp = d / 2 rounded up); its keys, kb [Lk, 2 dp], then transposed pair by pair into
    panels of BF16_COLS keys, kp [n_kp, dp, 2 BF16_COLS]; its values in panels of BF16_COLS channels, vp [n_vp,
    kh, 2 BF16_COLS] (kh = Lk / 2 rounded up: channel c of keys 2j and 2j + 1 side by side). Per block of 6
    query rows: scores = qb rows . key panels over dp pairs, scaled and masked; the float32 softmax, its
    probabilities rounded as they are made into pb [6, 2 kh]; the context = pb . value panels over kh pairs.
    Zeros pad an odd d or Lk and the last panels."""
    B, L, H = q.shape
    Lk = k.shape[1]
    d = H // n_heads
    dp = (d + 1) // 2
    kh = (Lk + 1) // 2
    n_kp = (Lk + BF16_COLS - 1) // BF16_COLS
    n_vp = (d + BF16_COLS - 1) // BF16_COLS
    for task in prange(B * n_heads):
        b = task // n_heads
        h = task % n_heads
        c0 = h * d
        qb = np.empty((L, 2 * dp), dtype=np.uint16)
        for i in range(L):
            bf16_into(q[b, i, c0 : c0 + d], d, qb[i])
        kb = np.empty((Lk, 2 * dp), dtype=np.uint16)
        for j in range(Lk):
            bf16_into(k[b, j, c0 : c0 + d], d, kb[j])
        kp = np.zeros((n_kp, dp, BF16_COLS), dtype=np.uint32)  # kp[p, t] = pair t of keys 32p .. 32p + 31
        kb_pairs = kb.view(np.uint32)  # [Lk, dp]
        for p in range(n_kp):
            for t in range(dp):
                dst = kp[p, t]
                for r in range(min(BF16_COLS, Lk - p * BF16_COLS)):
                    dst[r] = kb_pairs[p * BF16_COLS + r, t]
        vp = np.zeros((n_vp, kh, 2 * BF16_COLS), dtype=np.uint16)
        vp32 = vp.view(np.uint32)  # [n_vp, kh, BF16_COLS]: a pair per channel, value row 2t in its low half
        for t in range(Lk // 2):  # rows 2t and 2t + 1 together: whole pairs stored, so the loop vectorises
            v0 = v[b, 2 * t, c0 : c0 + d]
            v1 = v[b, 2 * t + 1, c0 : c0 + d]
            for p in range(n_vp):
                dst = vp32[p, t]
                for r in range(min(BF16_COLS, d - p * BF16_COLS)):
                    j = p * BF16_COLS + r
                    dst[r] = np.uint32(to_bf16(v0[j])) | (np.uint32(to_bf16(v1[j])) << np.uint32(16))
        if Lk % 2:  # an odd last row: the high halves of its pairs stay zero
            v0 = v[b, Lk - 1, c0 : c0 + d]
            for p in range(n_vp):
                dst = vp32[p, kh - 1]
                for r in range(min(BF16_COLS, d - p * BF16_COLS)):
                    dst[r] = np.uint32(to_bf16(v0[p * BF16_COLS + r]))
        S = np.empty((BF16_ROWS, Lk), dtype=np.float32)  # scores, then probabilities
        pb = np.empty((BF16_ROWS, 2 * kh), dtype=np.uint16)
        c = np.empty((BF16_ROWS, BF16_COLS), dtype=np.float32)
        kp16 = kp.view(np.uint16)  # [n_kp, dp, 2 BF16_COLS]
        for i0 in range(0, L, BF16_ROWS):
            nr = min(BF16_ROWS, L - i0)
            for p in range(n_kp):
                j0 = p * BF16_COLS
                w = min(BF16_COLS, Lk - j0)
                bf16_tile(qb, i0, nr, dp, kp16[p], c)
                scores_into(c, nr, w, S, j0, mask, b, h, i0, d, hf_scaling, has_mask)
            for r in range(nr):  # the softmax, its last multiply and the rounding to bfloat16 in one pass
                row, dst = S[r], pb[r]
                scale = softmax_scale(row, Lk, head_mask[h])
                for j in range(Lk):
                    dst[j] = to_bf16(row[j] * scale)  # the float32 probability, rounded
                if Lk % 2:
                    dst[Lk] = 0
                if need_probs:
                    for j in range(Lk):
                        probs[b, h, i0 + r, j] = row[j] * scale
            for p in range(n_vp):
                t0 = c0 + p * BF16_COLS
                w = min(BF16_COLS, d - p * BF16_COLS)
                bf16_tile(pb, 0, nr, kh, vp[p], c)
                for r in range(nr):
                    out = ctx[b, i0 + r, t0 : t0 + w]
                    for col in range(w):
                        out[col] = c[r, col]


_attention_bf16_serial = serial_twin(_attention_bf16, "_attention_bf16_serial")


# What the kernels do beyond the products, per query or key row of a (batch, head) task (converting and packing
# its q, k and v, the softmax's per-row steps), in the float32 GEMM's flops that ``settings.run`` weighs, per
# channel: 1-2 ns a value at ErnieM-base (12 heads at L=4 on one thread: 13 us). It is counted where there are
# at least PARALLEL_TASKS tasks to share: then ErnieM-base's 12 heads run in parallel from 4 tokens. Hot on 2
# Zen 4 cores, both kernels were as fast or faster in parallel from there (L=16: 22-31 against 34-36 us in
# bfloat16, 25-32 against 35-37 in float32; one query on 64 cached keys: 26-30 against 42-51), a toss-up at
# 1-2 tokens (9-14 against 10 us), and slower or a toss-up with 1-4 heads of 32-64 channels (L=16, 2 heads:
# 7-11 against 7-8 us), which stay serial (``NUMBA_NUM_THREADS=2 python scripts/bench/bench_kernels.py
# --only crossover`` shows both).
ROW_FLOPS = 300
PARALLEL_TASKS = 8


def attention(q, k, v, n_heads, mask=None, head_mask=None, scaling="hf", need_probs=False, products="float32"):
    """Numba twin of ``attention_ref``: same arguments, same results up to summation order. ``products``:
    "float32" (the references' numbers), or "bf16" (the int8 backend's: ``_attention_bf16``; float32 inputs,
    a CPU with AVX512_BF16, ``bf16_supported()``)."""
    if products not in ("float32", "bf16"):
        raise ValueError(f"products must be 'float32' or 'bf16', got {products!r}")
    if products == "bf16" and not bf16_supported():
        raise ValueError("bf16 attention products need a CPU with AVX512_BF16 (bf16_supported() is False here)")
    if products == "bf16" and q.dtype != np.float32:
        raise ValueError(f"bf16 attention products take float32 q, k and v, got {q.dtype}")
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
    kernels = (_attention_bf16, _attention_bf16_serial) if products == "bf16" else (_attention, _attention_serial)
    run(*kernels, work_estimate(B, L, Lk, H, n_heads),
        q, k, v, m4, hm, n_heads, scaling == "hf", mask is not None, need_probs, ctx, probs)  # fmt: skip
    return ctx, (probs if need_probs else None)


def work_estimate(B, L, Lk, H, n_heads) -> int:
    """The attention's work as ``settings.run`` weighs it: the products, and (``ROW_FLOPS``) the rest."""
    work = 4 * B * L * Lk * H
    if B * n_heads >= PARALLEL_TASKS:
        work += ROW_FLOPS * B * (L + Lk) * H
    return work
