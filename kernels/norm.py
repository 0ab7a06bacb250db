"""LayerNorm with a fused residual add, and GELU: NumPy twins first, then the Numba kernels.

Dimension legend: M rows (B * L), H features.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload
from scipy.special import erf

from .settings import JIT, jit, run, serial_twin


# ================================================================================================ NumPy twins
def layer_norm_ref(x, weight, bias, eps, residual=None):
    """LN(x + residual) over the last axis, biased variance: [M, H] -> [M, H]."""
    if residual is not None:
        x = x + residual
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu_ref(x):
    """Exact GELU 0.5 x (1 + erf(x / sqrt 2)), the references' ``gelu``."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


# ================================================================================================ Numba kernels
@jit
def order_key(bits):
    """The int32 bits of a float32 mapped to an int32 of the same order (negative floats have their magnitude
    bits flipped), and back: the map is its own inverse. A min/max reduction over these keys vectorises, where
    one over floats, which must honour NaN, does not. A NaN maps beyond +-inf (by its sign bit).

    The result is cast back to int32: Numba widens int32 arithmetic to int64, and a reduction over int64 keys
    runs on 8 lanes per zmm instead of 16. Callers keep their running min/max int32 (``np.int32(max(m, k))``)
    for the same reason."""
    return np.int32(bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF)))


def float32_bits(x):
    """The int32 with the bits of a float32. This NumPy body is the twin and runs when the JIT is disabled;
    compiled code gets an LLVM bitcast (``_float32_bits_ir``), free, which vectorises."""
    return np.array(x, dtype=np.float32).view(np.int32)[()]


def bits_float32(bits):
    """The float32 with the bits of an int32 (``float32_bits`` the other way). This NumPy body is the twin."""
    return np.array(bits, dtype=np.int32).view(np.float32)[()]


@intrinsic
def _float32_bits_ir(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_float32_ir(typingctx, bits):
    if bits != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@overload(float32_bits, jit_options=JIT)
def _float32_bits_jit(x):
    if x == types.float32:
        return lambda x: _float32_bits_ir(x)
    return None


@overload(bits_float32, jit_options=JIT)
def _bits_float32_jit(bits):
    if bits == types.int32:
        return lambda bits: _bits_float32_ir(bits)
    return None


def normalize_row(row, mean_hi, mean_lo, inv, weight, bias):
    """row = (row - mean) * inv * weight + bias in place, in the row's dtype, the mean given as two parts of
    that dtype (mean_hi + mean_lo): ``row - mean_hi`` is exact where the row is near its mean (Sterbenz), so
    the centred value is right to its own last bit, as if taken in float64, and no value is converted.
    This NumPy body is the twin and runs when the JIT is disabled."""
    row[:] = ((row - mean_hi) - mean_lo) * inv * weight + bias


# No reassociation here: it would merge the mean's two parts into one (their float32 sum is the high part).
@overload(normalize_row, jit_options=dict(JIT, fastmath={"contract", "nsz"}))
def _normalize_row_jit(row, mean_hi, mean_lo, inv, weight, bias):
    def impl(row, mean_hi, mean_lo, inv, weight, bias):
        for j in range(row.shape[0]):
            row[j] = ((row[j] - mean_hi) - mean_lo) * inv * weight[j] + bias[j]

    return impl


@jit(parallel=True)
def _layer_norm(x, residual, weight, bias, eps, out, has_residual):
    """out[m] = (y - mean(y)) / sqrt(var(y) + eps) * weight + bias with y = x[m] (+ residual[m]).

    Two passes per row for the statistics like the twin (the mean, then the mean of squared deviations),
    accumulated in float64 so a row of 4096 float32 values keeps its precision; the normalising pass runs in
    the row's dtype (``normalize_row``): in float64 it converts every value twice and takes 2.2x as long
    (56 against 27 us for 128 rows of 768 on one Zen 4 core). Each pass is a contiguous, vectorised loop.
    """
    M, H = x.shape
    stats = np.empty((M, 3), dtype=out.dtype)  # each row's mean (two parts) and 1 / std in the row's dtype
    for m in prange(M):
        row = out[m]
        s = 0.0
        if has_residual:
            for j in range(H):
                y = x[m, j] + residual[m, j]
                row[j] = y
                s += y
        else:
            for j in range(H):
                y = x[m, j]
                row[j] = y
                s += y
        mean = s / H
        v = 0.0
        for j in range(H):
            d = row[j] - mean
            v += d * d
        stats[m, 0] = mean
        stats[m, 1] = mean - stats[m, 0]  # what rounding the mean to the row's dtype left out
        stats[m, 2] = 1.0 / math.sqrt(v / H + eps)
        normalize_row(row, stats[m, 0], stats[m, 1], stats[m, 2], weight, bias)


_layer_norm_serial = serial_twin(_layer_norm, "_layer_norm_serial")


def layer_norm(x, weight, bias, eps, residual=None):
    """Numba LayerNorm(x + residual): x [..., H] -> [..., H], same dtype as x."""
    shape = x.shape
    x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])
    r2 = x2 if residual is None else np.ascontiguousarray(residual, dtype=x.dtype).reshape(x2.shape)
    out = np.empty_like(x2)
    weight, bias = (_readonly(np.ascontiguousarray(a, dtype=x.dtype)) for a in (weight, bias))  # one Numba type
    # work in GEMM-flop equivalents: a value costs LayerNorm about what 20 flops cost the float32 GEMM
    run(_layer_norm, _layer_norm_serial, 20 * x2.size, x2, r2, weight, bias, eps, out, residual is not None)
    return out.reshape(shape)


def _readonly(a):
    """A read-only view, so that memory-mapped and in-memory weights have one Numba type."""
    v = a.view()
    v.flags.writeable = False
    return v


# Exact-GELU through a rational approximation of erf that vectorises (scalar math.erf does not, and costs
# 8-16 ns per element). erf(z) ~ z P(z^2) / Q(z^2) on |z| <= 4 (Eigen's float erf coefficients), evaluated in
# float64; beyond 4, erf is +-1 to float32 precision. Measured against float64 exact GELU (SciPy's erf) on
# every finite float32, 4,278,190,080 values (scripts/bench/check_gelu_float32.py, 2026-12-03): max abs error
# 4.01e-7, at x = 5.558; the tests check a sample of it (tests/test_kernels.py).
_A = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
      -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)  # fmt: skip
_B = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
      -1.42647390514189e-02)  # fmt: skip


@jit
def erf_approx(z):
    a = abs(z)
    c = a if a < 4.0 else 4.0
    z2 = c * c
    p = _A[0]
    p = p * z2 + _A[1]
    p = p * z2 + _A[2]
    p = p * z2 + _A[3]
    p = p * z2 + _A[4]
    p = p * z2 + _A[5]
    p = p * z2 + _A[6]
    q = _B[0]
    q = q * z2 + _B[1]
    q = q * z2 + _B[2]
    q = q * z2 + _B[3]
    q = q * z2 + _B[4]
    r = c * p / q
    r = r if a < 4.0 else 1.0  # |z| >= 4: erf is 1 to float32 precision (and inf stays exact)
    return r if z >= 0 else -r


@jit
def gelu_scalar(x):
    xd = np.float64(x)
    return 0.5 * xd * (1.0 + erf_approx(xd * 0.7071067811865476))


def gelu_row(row):
    """In place on a 1-D array: GELU, the rational erf for float32, libm's erf for float64 (as gelu_inplace).
    The GEMM's GELU epilogue calls it on each row of its register tile while the values are in L1. This
    NumPy body is the twin and runs when the JIT is disabled; compiled code gets ``_gelu_row_jit``."""
    row[:] = gelu_ref(row.astype(np.float64)).astype(row.dtype)


@overload(gelu_row, jit_options=JIT)
def _gelu_row_jit(row):
    if row.dtype == types.float64:
        def impl(row):
            for j in range(row.shape[0]):
                v = row[j]
                row[j] = 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))
    else:
        def impl(row):
            for j in range(row.shape[0]):
                v = row[j]
                g = gelu_scalar(v)
                row[j] = v if v != v else g  # NaN stays NaN (the clamp inside erf_approx would hide it)
    return impl


def gelu_row_f32(row):
    """In place on a float32 row: GELU with the same rational erf as ``gelu_row``, evaluated in float32 (2.4x
    faster: 16 lanes per zmm and a float32 division). Its error, at most 1.5e-6 against exact GELU on [-10, 10]
    (``tests/test_kernels.py``), is far below the step of the 8-bit quantization that follows it: the int8
    GEMM's GELU epilogue uses it, the float32 layers use ``gelu_row``. This NumPy body is the twin."""
    f = np.float32
    x = row.astype(np.float32)
    a = np.abs(x * f(0.7071067811865476))
    c = np.minimum(a, f(4.0))
    z2 = c * c
    p = np.full_like(z2, f(_A[0]))
    for coef in _A[1:]:
        p = p * z2 + f(coef)
    q = np.full_like(z2, f(_B[0]))
    for coef in _B[1:]:
        q = q * z2 + f(coef)
    r = np.where(a < f(4.0), c * p / q, f(1.0))
    r = np.where(x >= 0, r, -r)
    row[:] = np.where(np.isnan(x), x, f(0.5) * x * (f(1.0) + r))


@overload(gelu_row_f32, jit_options=JIT)
def _gelu_row_f32_jit(row):
    A = tuple(np.float32(a) for a in _A)
    B = tuple(np.float32(b) for b in _B)

    def impl(row):
        f = np.float32
        for j in range(row.shape[0]):
            v = row[j]
            a = abs(v * f(0.7071067811865476))
            c = a if a < f(4.0) else f(4.0)
            z2 = c * c
            p = ((((((A[0] * z2 + A[1]) * z2 + A[2]) * z2 + A[3]) * z2 + A[4]) * z2 + A[5]) * z2 + A[6])
            q = ((((B[0] * z2 + B[1]) * z2 + B[2]) * z2 + B[3]) * z2 + B[4])
            r = c * p / q if a < f(4.0) else f(1.0)
            r = r if v >= f(0) else -r
            g = f(0.5) * v * (f(1.0) + r)
            row[j] = v if v != v else g  # NaN stays NaN

    return impl


@jit(parallel=True)
def _gelu_rows(y):
    """In place, row-parallel: y = GELU(y), [M, N]."""
    M, N = y.shape
    for m in prange(M):
        row = y[m]
        for j in range(N):
            v = row[j]
            g = gelu_scalar(v)
            row[j] = v if v != v else g  # NaN stays NaN (the clamp inside erf_approx would hide it)


@jit(parallel=True)
def _gelu_rows_exact(y):
    """In place, row-parallel, with libm's erf: the float64 path, where the approximation's ~1e-9 would show."""
    M, N = y.shape
    for m in prange(M):
        row = y[m]
        for j in range(N):
            v = row[j]
            row[j] = 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))


_gelu_rows_serial = serial_twin(_gelu_rows, "_gelu_rows_serial")
_gelu_rows_exact_serial = serial_twin(_gelu_rows_exact, "_gelu_rows_exact_serial")


def gelu_inplace(y):
    """GELU in place on a C-contiguous 2-D array: the rational erf in float32, libm's erf in float64."""
    if y.dtype == np.float64:
        run(_gelu_rows_exact, _gelu_rows_exact_serial, 40 * y.size, y)
    else:
        run(_gelu_rows, _gelu_rows_serial, 40 * y.size, y)
    return y


def gelu(x):
    """Numba GELU on a copy: [..., N] -> [..., N]."""
    y = np.array(x, copy=True, order="C")
    gelu_inplace(y.reshape(-1, y.shape[-1]) if y.ndim else y.reshape(1, 1))
    return y
