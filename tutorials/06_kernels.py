# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Kernels: a GEMM in Numba from a naive loop to a register-blocked kernel; fused softmax and LayerNorm
#
# The code this chapter explains: `kernels/gemm.py` (`linear_ref`, the NumPy twin, and `_gemm`, the Numba
# kernel behind `linear`), `kernels/attention.py` (`attention_ref` and `_attention`), `kernels/norm.py`
# (`layer_norm_ref`, `_layer_norm`, `erf_approx`, `gelu`), and `kernels/settings.py` (the Numba flags). In the
# installed package they are `erniem_np.kernels.*`.
#
# Almost all of an encoder's time goes into one operation: `y = x W^T + b`, the Linear layer, with `x` of
# shape `[M, K]` (M = batch x sequence rows), `W` of shape `[N, K]` (stored `[out, in]` as in the
# checkpoint). It costs `2 M K N` floating-point operations. We write it four times in Numba, each step
# removing one bottleneck, and measure each against the BLAS library NumPy calls (OpenBLAS), which is the
# roofline here: what this machine's CPU can do for this operation.
#
# Timings below are from *your* machine, when you run this; nothing here asserts a speed (speed is measured
# by `scripts/bench_kernels.py` and `scripts/bench_model.py`, not by tests). What is asserted is that every
# version computes the same numbers as the NumPy twin.

# %%
import math
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
from numba import njit

from erniem_np.kernels import attention, gemm, norm
from erniem_np.kernels.settings import FASTMATH, get_num_threads

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)

rng = np.random.default_rng(0)
M, K, N = 128, 768, 768  # one sequence of 128 tokens through ErnieM-base's q_proj
x = rng.standard_normal((M, K), dtype=np.float32)
W = rng.standard_normal((N, K), dtype=np.float32) * 0.03
b = rng.standard_normal(N, dtype=np.float32)
reference = gemm.linear_ref(x, W, b)  # the NumPy twin: x @ W.T + b
FLOPS = 2 * M * K * N


def gflops(fn, *args, repeat=10):
    """Best of `repeat` calls, in GFLOP/s (the first call, which compiles, is not counted)."""
    fn(*args)
    best = min(_timed(fn, *args) for _ in range(repeat))
    return FLOPS / best / 1e9


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def check(y, name):
    err = float(np.abs(y - reference).max())
    assert err < 1e-3, f"{name}: max |error| {err:.2e}"  # float32 sums of 768 products, in another order
    return err


# %% [markdown]
# ## The roofline: BLAS
#
# NumPy hands `x @ W.T` to OpenBLAS, decades of hand-written assembly, on all cores. That is the number to
# approach. (On a busy machine every rate here drops, and BLAS's spinning threads suffer most: compare the
# ratios of one run, and run it again when the machine is quiet.)

# %%
results = {}
results["NumPy / OpenBLAS"] = gflops(lambda: x @ W.T + b)
print(f"OpenBLAS: {results['NumPy / OpenBLAS']:.1f} GFLOP/s")

# %% [markdown]
# ## Version 1: the textbook triple loop
#
# `y[i, j] = sum_k x[i, k] * W[j, k]`. Numba compiles it to machine code, so there is no interpreter
# overhead, and still it is slow: the sum is a chain of dependent additions (each waits for the previous
# one, about 4 cycles), and in strict IEEE arithmetic the compiler may not reorder them, so it cannot use
# the CPU's vector units (8 float32 lanes with AVX2).


# %%
@njit(cache=False)
def gemm_naive(x, w, b):
    M, K = x.shape
    N = w.shape[0]
    y = np.empty((M, N), dtype=x.dtype)
    for i in range(M):
        for j in range(N):
            acc = np.float32(0.0)
            for k in range(K):
                acc += x[i, k] * w[j, k]
            y[i, j] = acc + b[j]
    return y


check(gemm_naive(x, W, b), "naive")
results["1. naive loop"] = gflops(gemm_naive, x, W, b)

# %% [markdown]
# ## Version 2: allow reassociation (fastmath) and take contiguous slices
#
# `fastmath` with `reassoc` (and `contract`, for fused multiply-add) lets LLVM split one sum into several
# partial sums held in vector registers: the loop becomes 8-wide and pipelined. These flags are set once for
# the whole package in `kernels/settings.py` (`FASTMATH`). Taking each row as a slice that starts at 0 also
# lets Numba drop its negative-index checks inside the loop. The result differs from the strict order only by
# float32 rounding.


# %%
@njit(fastmath=FASTMATH, cache=False)
def gemm_dot(x, w, b):
    M, K = x.shape
    N = w.shape[0]
    y = np.empty((M, N), dtype=x.dtype)
    for i in range(M):
        xi = x[i, :]
        for j in range(N):
            wj = w[j, :]
            acc = np.float32(0.0)
            for k in range(K):
                acc += xi[k] * wj[k]
            y[i, j] = acc + b[j]
    return y


check(gemm_dot(x, W, b), "dot")
results["2. fastmath dot"] = gflops(gemm_dot, x, W, b)

# %% [markdown]
# ## Version 3: a register tile, 4 rows of x by 3 rows of W
#
# Version 2 loads two numbers from memory for each multiply-add. A register tile reuses them: for each `k`,
# load `x[i0..i0+3, k]` (4 values) and `W[j0..j0+2, k]` (3 values) and do all 12 products into 12
# accumulators. That is 7 loads per 12 multiply-adds. With reassociation each accumulator becomes a vector
# register, and 12 accumulators + 7 operands still fit the 16 vector registers of AVX2, which is why the
# package's kernel uses 4 x 3 (the docstring of `_gemm` in `kernels/gemm.py`). For brevity this version needs
# M to be a multiple of 4 and N of 3; the package's kernel handles the remainders.


# %%
@njit(fastmath=FASTMATH, cache=False)
def gemm_tile(x, w, b):
    M, K = x.shape
    N = w.shape[0]
    y = np.empty((M, N), dtype=x.dtype)
    for i0 in range(0, M, 4):
        x0, x1, x2, x3 = x[i0, :], x[i0 + 1, :], x[i0 + 2, :], x[i0 + 3, :]
        for j0 in range(0, N, 3):
            w0, w1, w2 = w[j0, :], w[j0 + 1, :], w[j0 + 2, :]
            s00 = s01 = s02 = s10 = s11 = s12 = np.float32(0.0)
            s20 = s21 = s22 = s30 = s31 = s32 = np.float32(0.0)
            for k in range(K):
                c0, c1, c2 = w0[k], w1[k], w2[k]
                s00 += x0[k] * c0
                s01 += x0[k] * c1
                s02 += x0[k] * c2
                s10 += x1[k] * c0
                s11 += x1[k] * c1
                s12 += x1[k] * c2
                s20 += x2[k] * c0
                s21 += x2[k] * c1
                s22 += x2[k] * c2
                s30 += x3[k] * c0
                s31 += x3[k] * c1
                s32 += x3[k] * c2
            y[i0, j0], y[i0, j0 + 1], y[i0, j0 + 2] = s00 + b[j0], s01 + b[j0 + 1], s02 + b[j0 + 2]
            y[i0 + 1, j0], y[i0 + 1, j0 + 1], y[i0 + 1, j0 + 2] = s10 + b[j0], s11 + b[j0 + 1], s12 + b[j0 + 2]
            y[i0 + 2, j0], y[i0 + 2, j0 + 1], y[i0 + 2, j0 + 2] = s20 + b[j0], s21 + b[j0 + 1], s22 + b[j0 + 2]
            y[i0 + 3, j0], y[i0 + 3, j0 + 1], y[i0 + 3, j0 + 2] = s30 + b[j0], s31 + b[j0 + 1], s32 + b[j0 + 2]
    return y


assert M % 4 == 0 and N % 3 == 0
check(gemm_tile(x, W, b), "tile")
results["3. 4x3 register tile"] = gflops(gemm_tile, x, W, b)

# %% [markdown]
# ## Version 4: the package's kernel, cache-blocked and parallel
#
# `erniem_np.kernels.gemm.linear` adds what a real layer needs: blocks of 128 rows of x that stay in cache
# while every thread sweeps them with its own strip of 3 rows of W (parallel over output columns with
# `prange`, one level of parallelism, never BLAS inside), a K blocking for very wide inputs, remainders, and
# fused epilogues (bias, bias + GELU, bias + residual) so the output is written once.

# %%
check(gemm.linear(x, W, b), "package")
results[f"4. package kernel ({get_num_threads()} threads)"] = gflops(gemm.linear, x, W, b)
# The same product with the bias + GELU epilogue fused, against the twin:
assert np.allclose(gemm.linear(x, W, b, activation="gelu"), gemm.linear_ref(x, W, b, activation="gelu"), atol=1e-4)

# %% [markdown]
# The figure: GFLOP/s of each version, with the BLAS rate as the roofline. Before drawing, the data are
# checked: every rate is a positive finite number, and every version above agreed with the NumPy twin.

# %%
for name, rate in results.items():
    assert math.isfinite(rate) and rate > 0, (name, rate)
    print(f"{name:32} {rate:7.1f} GFLOP/s  ({rate / results['NumPy / OpenBLAS']:.0%} of OpenBLAS)")

names = [n for n in results if n != "NumPy / OpenBLAS"]
fig, ax = plt.subplots(figsize=(8, 4))
ax.bar(names, [results[n] for n in names], color="tab:blue")
ax.axhline(results["NumPy / OpenBLAS"], color="tab:red", linestyle="--", label="OpenBLAS (roofline)")
ax.set_ylabel("GFLOP/s")
ax.set_title(f"y = x W^T + b, M={M}, K={K}, N={N}, float32, this machine")
ax.legend()
plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
fig.tight_layout()
fig.savefig(FIGURES / "06_gemm_gflops.png", dpi=100)

# %% [markdown]
# On the project's 2-core AVX2 machine the package kernel reaches 61-95% of OpenBLAS depending on the shape
# (`scripts/bench_kernels.py`); its remaining gap is the 7 loads per 12 multiply-adds of the tile. BLAS
# packs W into panels so that one broadcast value meets a whole vector of W: that is the next step for the
# kernel.
#
# ## Softmax, fused into attention
#
# Attention computes, per head, `softmax(q k^T / sqrt(d) + mask) v`. The softmax must subtract the row's
# maximum before `exp`: scores of a few hundred overflow float32's `exp` (which tops out near 88.7), and a
# masked key holds a large negative number (HF fills with float32's minimum, Paddle with -1e4).

# %%
scores = np.array([[10.0, 100.0, 95.0, np.finfo(np.float32).min]], dtype=np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
stable = np.exp(scores - scores.max(-1, keepdims=True))
stable /= stable.sum(-1, keepdims=True)
print("naive :", naive)
print("stable:", stable)
assert np.isnan(naive).any() and np.isfinite(stable).all() and abs(stable.sum() - 1) < 1e-6

# %% [markdown]
# `kernels/attention.py` does the whole of it in one pass per (batch, head, 4 query rows): scores by 4 x 3
# register tiles over the head channels, add the mask, subtract the row max, `exp`, normalise, multiply by the
# values, without materialising the `[B, heads, L, L]` probabilities unless they are asked for. Its twin,
# `attention_ref`, is the textbook version; they agree:

# %%
B, L, H, nh = 2, 33, 96, 4
q, k, v = (rng.standard_normal((B, L, H), dtype=np.float32) for _ in range(3))
mask = np.zeros((B, 1, 1, L), dtype=np.float32)
mask[1, ..., 20:] = np.finfo(np.float32).min  # the second sequence has 20 real tokens (HF's fill value)
ctx, probs = attention.attention(q, k, v, nh, mask=mask, need_probs=True)
ctx_ref, probs_ref = attention.attention_ref(q, k, v, nh, mask=mask, need_probs=True)
assert np.allclose(ctx, ctx_ref, atol=1e-5) and np.allclose(probs, probs_ref, atol=1e-6)
assert np.allclose(probs.sum(-1), 1, atol=1e-5) and probs[1, :, :, 20:].max() == 0.0
print("fused attention == attention_ref; masked keys get probability exactly 0")

# %% [markdown]
# ## LayerNorm: two passes, summed in float64
#
# `LN(x) = (x - mean) / sqrt(var + eps) * weight + bias`, with the biased variance (divide by H), in both
# references. The one-pass formula `var = E[x^2] - E[x]^2` is cheaper but cancels catastrophically in float32
# when the mean is large compared with the spread. The kernel (`_layer_norm`) makes two passes, mean then
# squared deviations, and accumulates them in float64, fused with the residual add that precedes every
# LayerNorm in the post-LN encoder.

# %%
row = (1000.0 + rng.standard_normal((1, 768))).astype(np.float32)  # mean 1000, spread 1
one_pass = float(np.mean(row * row) - np.mean(row) ** 2)
two_pass = float(np.mean((row - row.mean()) ** 2))
exact = float(np.var(row.astype(np.float64)))
print(f"variance: one pass {one_pass:.4f}, two passes {two_pass:.6f}, float64 {exact:.6f}")
assert abs(two_pass - exact) < 1e-3 < abs(one_pass - exact)

w_ln, b_ln = rng.standard_normal(768, dtype=np.float32), rng.standard_normal(768, dtype=np.float32)
residual = rng.standard_normal((1, 768), dtype=np.float32)
assert np.allclose(
    norm.layer_norm(row, w_ln, b_ln, 1e-5, residual=residual),
    norm.layer_norm_ref(row, w_ln, b_ln, 1e-5, residual=residual),
    atol=2e-4,
)
print("layer_norm kernel == layer_norm_ref")

# %% [markdown]
# ## GELU: exact erf, vectorised
#
# Both references use the exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, not the tanh approximation (which is off
# by up to about 5e-4, enough to fail a parity test). libm's `erf` does not vectorise, so the float32 kernel
# uses a rational approximation of erf (`erf_approx` in `kernels/norm.py`) accurate to within 1e-6 of the
# exact GELU. Here is its error over a dense grid, against float64 erf:

# %%
grid = np.linspace(-10, 10, 200_001, dtype=np.float32)
exact_gelu = norm.gelu_ref(grid.astype(np.float64))
err = np.abs(norm.gelu(grid.copy()).astype(np.float64) - exact_gelu)
tanh_gelu = 0.5 * grid * (1 + np.tanh(np.sqrt(2 / np.pi) * (grid + 0.044715 * grid**3)))
err_tanh = np.abs(tanh_gelu.astype(np.float64) - exact_gelu)
print(f"max |error|: kernel GELU {err.max():.2e}, tanh approximation {err_tanh.max():.2e}")
assert err.max() < 1e-6 < err_tanh.max()

fig, ax = plt.subplots(figsize=(8, 3.5))
ax.semilogy(grid, np.maximum(err_tanh, 1e-12), label="tanh approximation", color="tab:red")
ax.semilogy(grid, np.maximum(err, 1e-12), label="kernel (rational erf, float32)", color="tab:blue")
ax.set_xlabel("x")
ax.set_ylabel("|GELU(x) - exact|")
ax.legend()
fig.tight_layout()
fig.savefig(FIGURES / "06_gelu_error.png", dpi=100)

# %% [markdown]
# **Next:** chapter 7 loads real checkpoints.
