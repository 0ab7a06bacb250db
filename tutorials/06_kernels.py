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
# # 6. Kernels: a GEMM from a naive loop to a 6 x 16 (or 6 x 32) register tile in LLVM IR; fused softmax, LayerNorm, GELU
#
# The code this chapter explains: `kernels/gemm.py` (`linear_ref`, the NumPy twin; `micro_tile`, the register
# tile, and its LLVM form `_micro_tile_ir`; `_gemm`, the kernel behind `linear` and `linear_many`),
# `kernels/attention.py` (`attention_ref`, `_attention`), `kernels/norm.py` (`layer_norm_ref`, `_layer_norm`,
# `erf_approx`, `gelu_row`, `gelu`), `kernels/settings.py` (`JIT`). Installed: `erniem_np.kernels.*`.
#
# Most of an encoder's time goes into the Linear layer, $y = x W^\top + b$, $x$ of shape $M \times K$ ($M$ =
# batch $\times$ sequence) and $W$ of shape $N \times K$ (`[out, in]`, as in the checkpoint). Each of the $MN$
# outputs is a dot product of length $K$: $\text{FLOP} = 2\,M K N$.
#
# We build the kernel up step by step, check each version against the NumPy twin `gemm.linear_ref`, then time
# it against OpenBLAS (what `x @ W.T` calls) on the same shape, on your machine as this runs (a busy machine
# slows every rate, parallel ones most). Nothing here asserts a speed.

# %%
import inspect
import math
import os
import re
import time
import types as pytypes
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import llvmlite.binding as llvm
import matplotlib.pyplot as plt
import numba
import numpy as np
from erniem_np.kernels import attention, gemm, norm
from erniem_np.kernels.settings import JIT, get_num_threads, set_num_threads
from numba import njit
from numba.extending import intrinsic

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
COMPILED = not numba.config.DISABLE_JIT  # NUMBA_DISABLE_JIT=1 runs every kernel as Python: small shapes then

rng = np.random.default_rng(0)
M, K, N = (128, 768, 768) if COMPILED else (32, 64, 48)  # 128 tokens through ErnieM-base's q_proj
x = rng.standard_normal((M, K), dtype=np.float32)
W = rng.standard_normal((N, K), dtype=np.float32) * 0.03
b = rng.standard_normal(N, dtype=np.float32)
reference = gemm.linear_ref(x, W, b)  # the NumPy twin: x @ W.T + b
results, errors = {}, {}


def check_then_time(name, fn, *args, calls=5, seconds=0.5):
    """Check against the twin (this call also compiles), then time: the best of >= `calls` calls, >= `seconds`."""
    errors[name] = float(np.abs(fn(*args) - reference).max())
    assert errors[name] < 1e-4, f"{name}: max |error| {errors[name]:.2e} against linear_ref, M={M} K={K} N={N}"
    best, n, end = math.inf, 0, time.perf_counter() + seconds
    while n < calls or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn(*args)
        best, n = min(best, time.perf_counter() - t0), n + 1
    results[name] = 2 * M * K * N / best / 1e9  # GFLOP/s


check_then_time("OpenBLAS (numpy)", lambda: x @ W.T + b)

# %% [markdown]
# ## 1. The naive loop
#
# One source, compiled in strict IEEE order (`njit`: each add waits for the previous one) and with the package's
# flags (`JIT` in `kernels/settings.py`, `fastmath={"reassoc", "contract", "nsz"}`: LLVM may split the sum into
# 8-lane partial sums and fuse multiply and add into one FMA). Either way each FMA needs two fresh loads.


# %%
def naive(x, w, b):
    M, K = x.shape
    y = np.empty((M, w.shape[0]), dtype=x.dtype)
    for i in range(M):
        for j in range(w.shape[0]):
            acc = np.float32(0.0)
            for k in range(K):
                acc += x[i, k] * w[j, k]
            y[i, j] = acc + b[j]
    return y


check_then_time("1a. naive, strict", njit(naive), x, W, b)
check_then_time("1b. naive, fastmath", njit(**JIT)(naive), x, W, b)

# %% [markdown]
# ## 2. Register tiling
#
# A tile of $m_r$ rows of $W$ by $n_r$ rows of $x$ keeps $m_r n_r$ sums in registers; per step $k$ it loads
# $m_r + n_r$ values for $m_r n_r$ multiply-adds, an *arithmetic intensity* of
#
# $$I_\text{tile} = \frac{2\, m_r n_r}{m_r + n_r}\ \text{FLOP per value loaded}$$
#
# (1 for the dot product). The package's tile, `micro_tile`, is `TILE_COLS` = 6 rows of $W$ by `TILE_ROWS` rows
# of $x$ in *broadcast form*: per $k$, load `TILE_ROWS` values of $x$ as 2 vectors, broadcast each $W_{j,k}$ to
# a vector, and do $6 \times 2 = 12$ vector FMAs into 12 accumulators:
#
# $$C_{j,:} \mathrel{+}= W_{j,k}\, x^\top_{k,:}, \qquad j = 0, \dots, 5 .$$
#
# The vector is as wide as the CPU's (`gemm.VECTOR_BYTES`, from the features of the CPU Numba compiles for):
# with AVX2, ymm registers of 8 floats and `TILE_ROWS` = 16; with AVX-512, zmm registers of 16 floats and
# `TILE_ROWS` = 32. Why 6 rows: AVX2 has 16 vector registers, and 12 accumulators + 2 vectors of $x$ + 1
# broadcast = 15. An FMA takes 4-5 cycles and a core starts 2 per cycle: 8-10 independent accumulators keep it
# busy, so 12 are enough, and 8 x 16 (16 accumulators) would not fit. AVX-512 has 32 registers; the wider
# vector halves the loads and broadcasts per FLOP, which is what it buys on a core (like Zen 4) that runs a zmm
# FMA as two ymm halves.
#
# One text of 16 tokens would leave half of a 32-row panel empty. So the tile has a second form, over the first
# vector only (6 accumulators), that runs when the rows fit in it: `gemm.tile_width(rows)` says which.

# %%
TR, TC = gemm.TILE_ROWS, gemm.TILE_COLS
VW = gemm.VECTOR_BYTES // 4  # float32 lanes per vector register: 8 (ymm) or 16 (zmm)
TARGET = numba.config.CPU_FEATURES if numba.config.CPU_FEATURES is not None else llvm.get_host_cpu_features().flatten()
REGISTERS = 32 if "+avx512f" in TARGET else 16  # vector registers the compiler may use (AVX-512 adds 16)
assert (VW, gemm.TILE_ROWS) == ((16, 32) if "+avx512f" in TARGET else (8, 16)) and gemm.TILE_COLS == 6
assert TC * TR // VW == 12 and 12 + TR // VW + 1 <= REGISTERS  # accumulators + x loads + a broadcast
assert (gemm.tile_width(TR // 2), gemm.tile_width(TR // 2 + 1)) == (TR // 2, TR)  # the half tile, the full one
intensity = 2 * TC * TR / (TC + TR)
print(f"tile {TC}x{TR} ({VW} floats a vector): 12 accumulators, I = {intensity:.2f} FLOP per value loaded")

# %% [markdown]
# The `TILE_ROWS` values of $x$ a step needs sit in as many rows of `x`, cache lines apart, so the kernel first
# *packs* those rows into a panel, `panel[k, r] = x[i0 + r, k]` ($x^\top$, `[K, TILE_ROWS]`): a step reads
# contiguous bytes (64 or 128), and
# $k$ walks memory in order. Packing `x`, not `W`, leaves the weights in place (memory-mapped, never copied) and
# costs $MK$ per call, not $NK$. One tile, by the NumPy twin (`micro_tile` called from Python runs its NumPy
# body) and as the accumulators build it, an outer product per $k$:

# %%
panel = np.ascontiguousarray(x[:TR].T)  # [K, TILE_ROWS]: rows 0..TR-1 of x, packed
c = np.empty((TC, TR), dtype=np.float32)  # the tile holds out^T: c[j, r] = y[r, j] - b[j]
gemm.micro_tile(W, 0, TC, 0, K, panel, c, TR)  # c = W[0:6] @ panel, all TR rows wanted: the full tile
acc = np.zeros((TC, TR), dtype=np.float32)
for k in range(K):
    acc += np.outer(W[:TC, k], panel[k])  # 6 broadcasts times TR lanes
assert np.allclose(acc, c, atol=1e-4) and np.allclose(c.T + b[:TC], reference[:TR, :TC], atol=1e-4)

# %% [markdown]
# ## 3. The tile as Numba loops, then as an intrinsic
#
# One driver (one thread, no cache blocking, multiples of the tile) packs `TILE_ROWS` rows of `x` and sweeps `W` 6 rows
# at a time with a tile function: first plain loops, `tile_loops`, then `gemm.micro_tile`.


# %%
@njit(**JIT)
def tile_loops(w, j0, nc, k0, kc, panel, c, rows):
    c[:] = 0
    for k in range(kc):
        for j in range(nc):
            for r in range(TR):
                c[j, r] += w[j0 + j, k0 + k] * panel[k, r]


def tiled(tile):
    @njit(**JIT)
    def gemm_tiled(x, w, b):  # x [M, K] @ w[N, K]^T + b for M % TILE_ROWS == 0, N % 6 == 0
        M, K = x.shape
        y = np.empty((M, w.shape[0]), dtype=x.dtype)
        panel = np.empty((K, TR), dtype=x.dtype)
        c = np.empty((TC, TR), dtype=x.dtype)
        for i0 in range(0, M, TR):
            for r in range(TR):  # pack: panel = x[i0:i0 + TR].T
                for k in range(K):
                    panel[k, r] = x[i0 + r, k]
            for j0 in range(0, w.shape[0], TC):
                tile(w, j0, TC, 0, K, panel, c, TR)
                for j in range(TC):
                    for r in range(TR):
                        y[i0 + r, j0 + j] = c[j, r] + b[j0 + j]
        return y

    return gemm_tiled


assert M % TR == 0 and N % TC == 0
check_then_time(f"2. 6x{TR} tile, Numba loops", tiled(tile_loops), x, W, b)
check_then_time(f"3. 6x{TR} tile, intrinsic", tiled(gemm.micro_tile), x, W, b)
if COMPILED:
    asm = tile_loops.inspect_asm(tile_loops.signatures[0])
    scalar, vector = (len(re.findall(rf"vfmadd\w+{t}\s", asm)) for t in ("ss", "ps"))
    print(f"tile_loops: {scalar} scalar FMAs (ss), {vector} vector FMAs (ps)")

# %% [markdown]
# With FMA, the count shows what LLVM made of `tile_loops`: scalar FMAs (`ss`), each accumulator loaded from and
# stored back to `c` (LLVM cannot prove that `c` does not overlap `panel`). From scalar accumulators its loop
# vectoriser makes one reduction each, the dot product again, never the broadcast form. Hence the intrinsic.
#
# ## 4. The intrinsic, step by step
#
# `@intrinsic` lets a function write LLVM IR itself. In `kernels/gemm.py` the tile has three pieces:
#
# 1. `micro_tile(w, j0, nc, k0, kc, panel, c, rows)`, the twin (printed below): rows of `w` past `nc` repeat the
#    last valid one (the caller drops those results); it fills `tile_width(rows)` columns of `c`. Python and
#    `NUMBA_DISABLE_JIT=1` run it.
# 2. `@overload(micro_tile, jit_options=JIT)`: inside compiled code, `micro_tile` calls `_micro_tile_ir`.
# 3. `_micro_tile_ir` runs at compile time, on Numba *types*: one float dtype throughout, or no match (`None`).
#    It returns the signature `none(w, int64 x 4, panel, c, int64)` and `codegen`, which emits the IR:
#    - sizes: `VW = VECTOR_BYTES // itemsize` lanes (8 or 16 floats), `NV = TILE_ROWS // VW` = 2,
#      `VT = <8 x float>` or `<16 x float>`;
#    - `w_rows`: six pointers to `w[j0 + j, k0]`, from `w`'s row stride (past `nc`, a `select`:
#      `gemm.emit_row_pointers`);
#    - `fma` (`llvm.fma.v8f32` or `.v16f32`) and a zero vector;
#    - `tile_loop(nv, name)` emits one loop; `codegen` emits it twice, for all `NV` vectors and for the first
#      half, and branches on `rows` to one of them. In each, `gemm.emit_phi_loop` builds the blocks:
#    - block `tile.head`: `k` and the 12 accumulators are **phi nodes**, SSA values rather than memory: that is
#      what lets them live in registers;
#    - block `tile.body`: what `step(k, acc)` (printed below) emits, 2 vector loads of panel row `k`, and per
#      row of `W` a load of `w[j, k]`, its splat (`gemm.emit_splat`: `insert_element` + `shuffle_vector`, a
#      `vbroadcastss`) and 2 `fma` calls, whose results feed the phis;
#    - block `tile.done`: then `tile_loop` stores the 12 vectors to `c`.

# %%
twin = inspect.getsource(gemm.micro_tile).splitlines()
body_ir = inspect.getsource(gemm._micro_tile_ir._defn).splitlines()
start = next(i for i, s in enumerate(body_ir) if "def step(k, acc)" in s)  # what the loop body emits
end = next(i for i, s in enumerate(body_ir) if "return new" in s and i > start)
print("the twin:", *twin[-2:], "tile.body, as step(k, acc) emits it:", *body_ir[start : end + 1], sep="\n")

# %% [markdown]
# `codegen` reads `TILE_COLS` from the module's globals when it runs, so a copy of the generator (Numba keeps it
# as `_defn`) with other globals compiles another tile: `tile_variant(6)` is the package's; exercises try others.


# %%
def tile_variant(w_rows):
    """gemm's intrinsic with TILE_COLS = w_rows, as tile(w, j0, nc, k0, kc, panel, c, rows), c [w_rows, TR]."""
    defn = gemm._micro_tile_ir._defn
    tile_ir = intrinsic(pytypes.FunctionType(defn.__code__, {**vars(gemm), "TILE_COLS": w_rows}, defn.__name__))

    @njit(**JIT)
    def tile(w, j0, nc, k0, kc, panel, c, rows):
        tile_ir(w, j0, nc, k0, kc, panel, c, rows)

    return tile


if COMPILED:
    assert np.array_equal(tiled(tile_variant(TC))(x, W, b), tiled(gemm.micro_tile)(x, W, b))

# %% [markdown]
# ## 5. Reading the machine code
#
# We compile `_gemm`'s source again, serial and uncached (the package's cached copy keeps no assembly), take its
# tile loop (of the loops that are one block, the one whose FMAs write the most registers: the full tile, not
# its half), and count per step $k$: FMAs on vector registers of the tile's width, accumulators (the registers
# they write), vector loads, broadcasts (a `vbroadcastss`, or an FMA that reads its operand with `{1to16}`),
# vector spills (vector registers to or from the stack, `(%rsp)`). FMAs / accumulators is how often LLVM
# unrolled the loop.


# %%
def hot_loop(asm):
    """The one-block loop in `asm` whose FMAs write the most registers, as a list of instructions ([] if no
    loop has an FMA)."""
    loops = re.findall(r"^(\.LBB\w+):[^\n]*\n((?:(?!\.LBB)[^\n]*\n)*?)\s+j\w+\s+\1\n", asm, re.MULTILINE)
    bodies = [[s.strip() for s in body.splitlines() if s.strip()[:1] not in ("", ".", "#")] for _, body in loops]
    written = [len({s.rsplit(",", 1)[-1] for s in body if s.startswith("vfmadd")}) for body in bodies]
    return bodies[written.index(max(written))] if any(written) else []


def census(body):
    """Per-k counts in a tile loop's instructions (see the text above)."""
    fmas = [s for s in body if re.match(rf"vfmadd\d+ps\s.*%{REGISTER}", s)]
    accumulators = len({s.rsplit(",", 1)[-1] for s in fmas})
    unroll = max(1, len(fmas) // max(1, accumulators))
    per_k = lambda pattern: sum(bool(re.match(pattern, s)) for s in body) // unroll
    loads, broadcasts = per_k(r"vmov\w*ps\s+-?\w*\("), per_k(r"vbroadcastss|vfmadd.*\{1to")
    spills = sum("(%rsp)" in s and "mm" in s for s in body)
    return {"fma": len(fmas) // unroll, "accumulators": accumulators, "loads": loads, "broadcasts": broadcasts,
            "spills": spills, "unroll": unroll}  # fmt: skip


REGISTER = "zmm" if VW == 16 else "ymm"  # the tile's vector registers
if COMPILED:
    kernel = njit(**JIT)(gemm._gemm.py_func)  # the same source and flags, serial, uncached
    out = np.empty((M, N), dtype=np.float32)
    kernel(x, (W,), (b,), out, (out,), gemm.EPILOGUE_BIAS, gemm._scratch(M, K, np.float32))
    assert np.abs(out - reference).max() < 1e-4
    body = hot_loop(kernel.inspect_asm(kernel.signatures[0]))
    found = census(body)
    print(f"_gemm's hot loop, per k: {found}")
    if found["fma"]:
        print("\n".join(body[:10]), "\n...")
        assert [found[n] for n in ("fma", "accumulators", "loads", "broadcasts", "spills")] == [12, 12, 2, 6, 0]
    else:
        print(f"no {REGISTER} FMA: this CPU (or NUMBA_CPU_NAME / NUMBA_CPU_FEATURES) gives no AVX2 + FMA target")
else:
    print("NUMBA_DISABLE_JIT=1: nothing is compiled, there is no assembly to read")

# %% [markdown]
# ## 6. Cache blocking, parallelism, remainders: `_gemm`
#
# `_gemm` (its docstring is the reference) runs the tile inside the loops a real layer needs:
#
# * **Blocking.** A pass packs `BLOCK_M` = 256 rows of `x` by `BLOCK_K` = 4096 of $K$ into panels
#   `[BLOCK_M / TILE_ROWS, kc, TILE_ROWS]` (a buffer kept per Python thread, `_scratch`). 4096 is the whole $K$ of ErnieM-base
#   (768, 3072) and -large (1024, 4096); a wider $K$ takes several passes, each adding to the output.
# * **Parallelism**, one level, never BLAS inside: `prange` over strips of 6 rows of `W`; a task keeps its strip
#   in cache and sweeps every panel of the block. Packing is parallel over panels. `linear_many` puts the strips
#   of several weights (q, k, v) into one parallel loop over one packing of `x`.
# * **Remainders.** Rows past $M$ are zero rows of the last panel, which runs the half tile when its rows fit
#   in one vector; a narrow last strip repeats its last row.

# %%
assert gemm.BLOCK_M % gemm.TILE_ROWS == 0 and gemm.BLOCK_K >= max(768, 3072, 1024, 4096)
xr, wr, br = (rng.standard_normal(s, dtype=np.float32) for s in ((37, gemm.BLOCK_K + 9), (29, gemm.BLOCK_K + 9), 29))
assert np.allclose(gemm.linear(xr, wr, br), gemm.linear_ref(xr, wr, br), atol=1e-3)  # remainders, two K passes

threads = get_num_threads()
set_num_threads(1)
check_then_time("4. package linear, 1 thread", gemm.linear, x, W, b)
set_num_threads(threads)
check_then_time(f"5. package linear, {threads} threads", gemm.linear, x, W, b)

# %% [markdown]
# ## 7. Fused epilogues
#
# After a tile's last $K$ slice its values are still in L1: `_gemm` finishes them there and writes the output
# once. `EPILOGUE_BIAS` adds the bias; `EPILOGUE_GELU` then applies `norm.gelu_row` to each row of the tile;
# `EPILOGUE_RESIDUAL` then adds a residual. The encoder (`erniem_np/fused.py`) uses `linear_many` for q, k, v,
# GELU for the FFN's first Linear, the residual for `out_proj` and the FFN's second.

# %%
h = rng.standard_normal((M, N), dtype=np.float32)
assert np.allclose(gemm.linear(x, W, b, activation="gelu"), gemm.linear_ref(x, W, b, activation="gelu"), atol=1e-4)
assert np.allclose(gemm.linear(x, W, b, residual=h), gemm.linear_ref(x, W, b, residual=h), atol=1e-4)
three = [(W, b), (W[::-1].copy(), None), (W[:29], b[:29])]
for got, (w_, b_) in zip(gemm.linear_many(x, three), three, strict=True):
    assert np.allclose(got, gemm.linear_ref(x, w_, b_), atol=1e-4)

# %% [markdown]
# ## 8. The other layout: weights packed once, vectors along $N$
#
# `_gemm` leaves $W$ where it is stored and packs $x$ on every call; its tile holds $y^\top$, so the epilogue
# ends in a scatter, each value to another row of `out`. A Linear layer of a loaded model has a weight that
# never changes, so it can be laid out once for the kernel, as BLAS libraries do for a constant operand. The
# encoder's Linear layers and the pooler's do that: `erniem_np/fused.py`'s `load_parameters` wraps each in a
# `gemm.PackedWeight`, strips of `PACK_COLS` output columns, `packed[s, k, j] = W[s * PACK_COLS + j, k]`, and
# `gemm.linear` then runs `_gemm_packed`. Its tile (`packed_tile`, `_packed_tile_ir`) turns the roles round:
# per $k$ it loads `PACK_NV` vectors of the strip (consecutive output columns) and broadcasts $x_{r,k}$ for
# each of `PACK_ROWS` = 6 rows, read in place:
#
# $$C_{r,:} \mathrel{+}= x_{r,k}\, \text{packed}_{s,k,:}, \qquad r = 0, \dots, 5 .$$
#
# With AVX-512 that is 6 rows x 4 zmm = 24 accumulators (64 columns); with AVX2, 6 x 2 ymm = 12 (16 columns).
# A row of the tile is a piece of a row of `out`, so the tile finishes in registers (`packed_tile_out`): it adds
# the bias and the residual to its accumulators and stores them straight into `out`'s rows, whose cache lines
# it asked for before its loop (a write prefetch); GELU then runs along those rows while they are in L1. No
# $x$ is packed, and a task reads its strip as one stream. On a long input (from `ROW_CHUNKS_FROM` rows) the
# tasks are grouped into one chunk of whole rows per thread: LayerNorm and attention split rows among the
# threads the same way, so each reads the rows its own core wrote. Each output is still the same chain of FMAs over
# $k$ followed by the same adds, so the two kernels agree bit for bit:

# %%
assert (gemm.PACK_ROWS, gemm.PACK_COLS) == (6, 4 * VW if VW == 16 else 2 * VW)
packed_W = gemm.PackedWeight(W)
assert packed_W.packed.shape == (-(-N // gemm.PACK_COLS), K, gemm.PACK_COLS)
assert np.array_equal(packed_W.packed[0, :, 3], W[3]) and np.array_equal(packed_W.unpack(), W)
for kw in ({}, {"activation": "gelu"}, {"residual": h}):
    assert np.array_equal(gemm.linear(x, packed_W, b, **kw), gemm.linear(x, W, b, **kw))
check_then_time(f"6. packed weight, {threads} threads", gemm.linear, x, packed_W, b)

# %% [markdown]
# The packing costs one pass over the weights at load, not per call; where the weight came from a
# memory-mapped checkpoint, `load_parameters` releases the mapped pages afterwards, so the model holds one copy.

# %%
# The measurements, checked before drawing: every rate positive and finite, every version within 1e-4.
blas = results["OpenBLAS (numpy)"]
print(f"M={M} K={K} N={N} float32; Numba {threads} threads, OpenBLAS its default"
      + ("" if COMPILED else "; NUMBA_DISABLE_JIT=1: all ran as Python"))  # fmt: skip
for name, rate in results.items():
    assert math.isfinite(rate) and rate > 0 and errors[name] < 1e-4, name
    print(f"{name:30} {rate:8.2f} GFLOP/s {rate / blas:7.0%} of OpenBLAS   max |error| {errors[name]:.1e}")

names = [n for n in results if n != "OpenBLAS (numpy)"]
fig, ax = plt.subplots(figsize=(8, 4))
ax.bar(names, [results[n] for n in names], color="tab:blue")
ax.axhline(blas, color="tab:red", linestyle="--", label="OpenBLAS, same shape")
ax.set(yscale="log", ylabel="GFLOP/s (log scale)", title=f"y = x W^T + b, M={M}, K={K}, N={N}, float32, this machine")
ax.legend()
plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
fig.tight_layout()
fig.savefig(FIGURES / "06_gemm_gflops.png", dpi=100)

# %% [markdown]
# ## Softmax, fused into attention
#
# Per head, attention is $\mathrm{softmax}(q k^\top / \sqrt{d} + \text{mask})\, v$. The softmax must subtract
# the row's maximum before `exp`: scores of a few hundred overflow float32's `exp` (which tops out near 88.7),
# and a masked key holds a large negative number (HF fills with float32's minimum, Paddle with -1e4).

# %%
scores = np.array([[10.0, 100.0, 95.0, np.finfo(np.float32).min]], dtype=np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    naive_softmax = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
stable = np.exp(scores - scores.max(-1, keepdims=True))
stable /= stable.sum(-1, keepdims=True)
print("naive :", naive_softmax, "\nstable:", stable)
assert np.isnan(naive_softmax).any() and np.isfinite(stable).all() and abs(stable.sum() - 1) < 1e-6

# %% [markdown]
# `_attention` (`kernels/attention.py`) runs both products on the GEMM's tile, one task per (batch, head). It
# packs the head's keys into `TILE_ROWS`-key panels of $k^\top$ and its values into `TILE_ROWS`-channel panels; per block of 6
# query rows (read in place: the broadcast operand), `micro_tile` gives the scores, which are scaled, masked and
# soft-maxed in an L1 buffer (`exp_shifted`: a vectorised polynomial `exp`), and `micro_tile` again multiplies
# the probabilities by the value panels. `[B, heads, L, L]` is built only if asked for. The twin,
# `attention_ref`, is the textbook version; they agree:

# %%
assert attention.micro_tile is gemm.micro_tile and (attention.TILE_ROWS, attention.TILE_COLS) == (TR, TC)
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
# $\mathrm{LN}(x) = (x - \mu) / \sqrt{\sigma^2 + \varepsilon} \cdot w + b$, biased variance (divide by $H$), in
# both references. The one-pass $\sigma^2 = E[x^2] - E[x]^2$ cancels catastrophically in float32 when the mean
# is large next to the spread. `_layer_norm` makes two passes (mean, then squared deviations) accumulated in
# float64, and can add a residual first (the encoder adds its residuals in the GEMM's epilogue instead). The
# third pass, $(x - \mu) \cdot \mathrm{inv} \cdot w + b$, runs in float32 (`normalize_row`; in float64 it took
# 2.2x as long): $\mu$ is split into two float32 parts, $x - \mu_{hi}$ is exact near the mean and
# $- \mu_{lo}$ adds back what rounding $\mu$ lost, so the centring is as exact as float64's. Rounding $\mu$
# to one float32 would cost up to half a step of float32 at 1000, 3e-5, in every centred value.

# %%
row = (1000.0 + rng.standard_normal((1, 768))).astype(np.float32)  # mean 1000, spread 1
one_pass = float(np.mean(row * row) - np.mean(row) ** 2)
two_pass = float(np.mean((row - row.mean()) ** 2))
exact = float(np.var(row.astype(np.float64)))
print(f"variance: one pass {one_pass:.4f}, two passes {two_pass:.6f}, float64 {exact:.6f}")
assert abs(two_pass - exact) < 1e-3 < abs(one_pass - exact)
w_ln, b_ln, res = (rng.standard_normal(s, dtype=np.float32) for s in (768, 768, (1, 768)))
exact_ln = norm.layer_norm_ref((row + res).astype(np.float64), w_ln, b_ln, 1e-5)  # the float32 sum, then float64
err_kernel, err_twin = (
    np.abs(f(row, w_ln, b_ln, 1e-5, res) - exact_ln).max() for f in (norm.layer_norm, norm.layer_norm_ref)
)
print(f"LN(x + residual) against float64: kernel {err_kernel:.1e}, float32 twin {err_twin:.1e}")
assert err_kernel < min(1e-5, err_twin) or not COMPILED  # as Python, `s = 0.0` + float32 stays float32 (NumPy 2)

# %% [markdown]
# ## GELU: exact erf, vectorised
#
# Both references use the exact GELU, $\tfrac12 x\,(1 + \mathrm{erf}(x/\sqrt2))$, not the tanh approximation
# (off by up to about 5e-4, enough to fail a parity test). libm's `erf` does not vectorise, so the float32
# kernels use a rational approximation (`erf_approx` in `kernels/norm.py`, evaluated in float64) within 1e-6 of
# the exact GELU, in `gelu` and in the GEMM's GELU epilogue (`gelu_row`). Its error against float64 erf:

# %%
grid = np.linspace(-10, 10, 200_001 if COMPILED else 20_001, dtype=np.float32)
exact_gelu = norm.gelu_ref(grid.astype(np.float64))
err = np.abs(norm.gelu(grid.copy()).astype(np.float64) - exact_gelu)
tanh_gelu = 0.5 * grid * (1 + np.tanh(np.sqrt(2 / np.pi) * (grid + 0.044715 * grid**3)))
err_tanh = np.abs(tanh_gelu.astype(np.float64) - exact_gelu)
print(f"max |error|: kernel GELU {err.max():.2e}, tanh approximation {err_tanh.max():.2e}")
assert err.max() < 1e-6 < err_tanh.max()

fig, ax = plt.subplots(figsize=(8, 3.5))
ax.semilogy(grid, np.maximum(err_tanh, 1e-12), label="tanh approximation", color="tab:red")
ax.semilogy(grid, np.maximum(err, 1e-12), label="kernel (rational erf, float32)", color="tab:blue")
ax.set(xlabel="x", ylabel="|GELU(x) - exact|")
ax.legend()
fig.tight_layout()
fig.savefig(FIGURES / "06_gelu_error.png", dpi=100)

# %% [markdown]
# ## Exercises
#
# 1. Build a 4-row tile, `tile_variant(4)` (4 x `TILE_ROWS`). How many accumulators, FMAs and broadcasts per
#    $k$, and what arithmetic intensity? Check with `census(hot_loop(tile.inspect_asm(tile.signatures[0])))`.
# 2. Build an 8-row tile. How many vector registers does it need, and what does the assembly show here?
#
# **Answers** (spoilers: the next cell is collapsed in Jupyter; it asserts them).

# %% jupyter={"source_hidden": true} tags=["answers"]
assert [rows * TR // VW for rows in (4, 8)] == [8, 16] and 2 * 4 * TR / (4 + TR) < intensity
print(f"1. 4x{TR}: 4 x 2 = 8 accumulators, 8 FMAs and 4 broadcasts per k; I = {2 * 4 * TR / (4 + TR):.2f} FLOP per "
      f"value, less than 6x{TR}'s")  # fmt: skip
print(
    f"2. 8x{TR}: 16 accumulators + 2 + 1 = 19 registers; this target has {REGISTERS}: with 16, some accumulators spill"
)
for rows in (4, 8) if COMPILED else ():
    tile, out = tile_variant(rows), np.empty((rows, TR), dtype=np.float32)
    tile(W, 0, rows, 0, K, panel, out, TR)
    assert np.allclose(out, W[:rows] @ panel, atol=1e-4)
    found = census(hot_loop(tile.inspect_asm(tile.signatures[0])))
    print(f"   {rows}x{TR}, per k: {found}")
    if found["fma"]:
        assert found["fma"] == 2 * rows and found["broadcasts"] == rows
        assert (found["spills"] > 0) == (2 * rows + 3 > REGISTERS)  # accumulators that do not fit live on the stack

# %% [markdown]
# **Next:** chapter 7 loads real checkpoints.
