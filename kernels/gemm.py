"""GEMM for every Linear layer, y = x W^T + b with W stored [out, in]: the NumPy twin first, then Numba.

Dimension legend: M rows (B * L), K input features, N output features.

Epilogues fused into the same call: bias; bias then GELU; bias then a residual add.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .norm import gelu_inplace, gelu_ref
from .settings import locked, PARALLEL_JIT, SERIAL_BELOW_FLOPS, serial_twin

EPILOGUE_BIAS, EPILOGUE_GELU, EPILOGUE_RESIDUAL = 0, 1, 2


# ================================================================================================ NumPy twin
def linear_ref(x, weight, bias=None, activation=None, residual=None):
    """x [M, K] @ weight[N, K]^T + bias [N] -> [M, N]; then GELU (activation="gelu") or + residual [M, N]."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    if activation == "gelu":
        y = gelu_ref(y)
    if residual is not None:
        y = y + residual
    return y


# ================================================================================================ Numba kernel
TILE_M = 4  # rows of x per register tile
TILE_N = 3  # rows of W (output columns) per register tile: 12 accumulators + 7 operands fit 16 ymm registers
BLOCK_K = 3072  # K slice: whole for ErnieM-base (768, 3072); measured faster than 768-wide slices at K = 3072
BLOCK_M = 128  # rows of x per pass: the pass's x block is shared by all tasks from L2/L3


@njit(**PARALLEL_JIT)
def _gemm(x, w, b, residual, out, epilogue):
    """out = x w^T + b (+ residual) for x [M, K], w [N, K] (torch's Linear layout), out [M, N].

    Blocking, from the registers out:
    * register tile: 4 rows of x by 3 rows of W = 12 scalar accumulators. The k loop reads 4 contiguous slices
      of x and 3 of W; with reassociation allowed (fastmath) LLVM turns the 12 reductions into 12 ymm
      accumulators fed by 7 vector loads per 12 vector FMAs, which fits AVX2's 16 registers (4 x 4 spills).
      Slices start at 0 so Numba can drop its negative-index wraparound from the loop (with ``range(k0, k1)``
      it adds 8 integer ops per iteration, costing ~30%).
    * cache: x is processed in blocks of BLOCK_M rows and BLOCK_K columns, one parallel pass per block; in a
      pass each task owns a strip of 3 output columns, keeps its 3 x BLOCK_K slice of W in L1/L2 and sweeps
      the x block, which all tasks share. Partial sums of earlier K blocks are read back from out. (768-wide
      K slices, which keep the W slice in L1, measured 5-20% slower at K = 3072 on the 2-core AVX2 machine:
      the extra passes and partial-sum traffic cost more than the misses they save.)
    * parallelism: one level, over the column strips of a block (never BLAS inside).
    Remainder rows (M % 4) and columns (N % 3) take a vectorised dot-product path.
    Measured fraction of OpenBLAS sgemm (scripts/bench_kernels.py --threads 2 --reps 7, 2-core AMD EPYC with
    AVX2, 2026-11-24): M = 128: 78-95%; M = 1024: 61-76%; M = 4096: 66-77%. The goal of 90% is met only at
    some M = 128 shapes; K = 4096 (ErnieM-large's FFN down) is the weakest. The register tile is limited by
    its 7 loads per 12 FMAs; packing W into panels for a broadcast-form tile is the known next step.
    """
    M, K = x.shape
    N = w.shape[0]
    n_strips = (N + TILE_N - 1) // TILE_N
    zero = x.dtype.type(0)
    for m0 in range(0, M, BLOCK_M):
        m1 = min(M, m0 + BLOCK_M)
        m_full = m0 + (m1 - m0) // TILE_M * TILE_M
        for k0 in range(0, K, BLOCK_K):
            k1 = min(K, k0 + BLOCK_K)
            nk = k1 - k0
            first = k0 == 0
            last = k1 == K
            for s in prange(n_strips):
                j0 = s * TILE_N
                jn = min(TILE_N, N - j0)
                row_start = m0
                if jn == TILE_N:
                    w0 = w[j0, k0:k1]
                    w1 = w[j0 + 1, k0:k1]
                    w2 = w[j0 + 2, k0:k1]
                    for i0 in range(m0, m_full, TILE_M):
                        x0 = x[i0, k0:k1]
                        x1 = x[i0 + 1, k0:k1]
                        x2 = x[i0 + 2, k0:k1]
                        x3 = x[i0 + 3, k0:k1]
                        s00 = s01 = s02 = s10 = s11 = s12 = zero
                        s20 = s21 = s22 = s30 = s31 = s32 = zero
                        for k in range(nk):
                            c0 = w0[k]
                            c1 = w1[k]
                            c2 = w2[k]
                            a = x0[k]
                            s00 += a * c0
                            s01 += a * c1
                            s02 += a * c2
                            a = x1[k]
                            s10 += a * c0
                            s11 += a * c1
                            s12 += a * c2
                            a = x2[k]
                            s20 += a * c0
                            s21 += a * c1
                            s22 += a * c2
                            a = x3[k]
                            s30 += a * c0
                            s31 += a * c1
                            s32 += a * c2
                        if not first:
                            s00 += out[i0, j0]
                            s01 += out[i0, j0 + 1]
                            s02 += out[i0, j0 + 2]
                            s10 += out[i0 + 1, j0]
                            s11 += out[i0 + 1, j0 + 1]
                            s12 += out[i0 + 1, j0 + 2]
                            s20 += out[i0 + 2, j0]
                            s21 += out[i0 + 2, j0 + 1]
                            s22 += out[i0 + 2, j0 + 2]
                            s30 += out[i0 + 3, j0]
                            s31 += out[i0 + 3, j0 + 1]
                            s32 += out[i0 + 3, j0 + 2]
                        out[i0, j0] = s00
                        out[i0, j0 + 1] = s01
                        out[i0, j0 + 2] = s02
                        out[i0 + 1, j0] = s10
                        out[i0 + 1, j0 + 1] = s11
                        out[i0 + 1, j0 + 2] = s12
                        out[i0 + 2, j0] = s20
                        out[i0 + 2, j0 + 1] = s21
                        out[i0 + 2, j0 + 2] = s22
                        out[i0 + 3, j0] = s30
                        out[i0 + 3, j0 + 1] = s31
                        out[i0 + 3, j0 + 2] = s32
                    row_start = m_full
                for i in range(row_start, m1):  # remainder rows, and every row of a narrow last strip
                    xi = x[i, k0:k1]
                    for j in range(j0, j0 + jn):
                        wj = w[j, k0:k1]
                        acc = zero
                        for k in range(nk):
                            acc += xi[k] * wj[k]
                        out[i, j] = acc if first else out[i, j] + acc
                if last:  # epilogue on this strip: bias (+ residual)
                    for i in range(m0, m1):
                        for j in range(j0, j0 + jn):
                            v = out[i, j] + b[j]
                            if epilogue == 2:
                                v += residual[i, j]
                            out[i, j] = v


_gemm_serial = serial_twin(_gemm, "_gemm_serial")


@locked
def linear(x, weight, bias=None, activation=None, residual=None):
    """Numba x [..., K] @ weight[N, K]^T + bias [N] -> [..., N]; activation "gelu" or a residual [..., N] fused.

    float32 or float64 (x, weight and bias of one dtype). K = 0 gives the bias (and its epilogue).
    """
    if activation is not None and residual is not None:
        raise ValueError("fuse either an activation or a residual add, not both")
    if activation not in (None, "gelu"):
        raise ValueError(f"the fused activation must be 'gelu', got {activation!r}")
    lead = x.shape[:-1]
    K = x.shape[-1]
    N = weight.shape[0]
    x2 = np.ascontiguousarray(x).reshape(int(np.prod(lead)), K)  # (-1, K) fails for K = 0
    out = np.empty((x2.shape[0], N), dtype=x2.dtype)
    if bias is None:
        bias = np.zeros(N, dtype=x2.dtype)
    if x2.shape[0] == 0:
        return out.reshape(lead + (N,))
    epilogue = EPILOGUE_BIAS
    r2 = out
    if residual is not None:
        epilogue = EPILOGUE_RESIDUAL
        r2 = np.ascontiguousarray(residual, dtype=x2.dtype).reshape(x2.shape[0], N)
    if K == 0:
        out[:] = bias
        if residual is not None:
            out += r2
    else:
        kernel = _gemm if 2 * x2.shape[0] * K * N >= SERIAL_BELOW_FLOPS else _gemm_serial
        kernel(x2, np.ascontiguousarray(weight), bias, r2, out, epilogue)
    if activation == "gelu":
        gelu_inplace(out)
    return out.reshape(lead + (N,))
