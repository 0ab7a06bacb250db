"""Every Numba kernel against its NumPy twin, over awkward shapes, both float dtypes and non-finite inputs.

These tests also run with NUMBA_DISABLE_JIT=1 (test_kernels_pass_without_jit does that in a subprocess).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import re
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest
from erniem_np.kernels import attention, gemm, norm
from erniem_np.kernels import settings as ksettings
from hypothesis import given, settings
from hypothesis import strategies as st

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"  # the kernels run as Python: fewer and smaller cases
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
dtypes = st.sampled_from([np.float32, np.float64])
FMIN = np.finfo(np.float32).min  # HF's mask fill; Paddle's is -1e4
NON_FINITE = st.sampled_from([np.nan, np.inf, -np.inf])

# Each parallel kernel and its serial twin, as the public wrappers look them up (module globals, at call time).
KERNELS = {"gemm": (gemm, "_gemm", "_gemm_serial"), "attention": (attention, "_attention", "_attention_serial"),
           "layer_norm": (norm, "_layer_norm", "_layer_norm_serial"), "gelu": (norm, "_gelu_rows", "_gelu_rows_serial"),
           "gelu64": (norm, "_gelu_rows_exact", "_gelu_rows_exact_serial")}  # fmt: skip


# The work estimates the wrappers compare with SERIAL_BELOW_FLOPS (gemm._linear_parts, attention.attention,
# norm.layer_norm, norm.gelu_inplace).
def linear_flops(M, K, Ns):
    return 2 * M * K * sum(Ns)


def attention_flops(B, L, Lk, H):  # the products; with 8 or more (batch, head) tasks the estimate adds more
    return 4 * B * L * Lk * H


def layer_norm_flops(M, H):
    return 20 * M * H


def gelu_flops(size):
    return 40 * size


def _above_threshold(flops, what):
    assert flops >= ksettings.SERIAL_BELOW_FLOPS, f"{what}: {flops} flops would run the serial twin"


@pytest.fixture
def kernel_calls(monkeypatch):
    """Records which kernel each wrapper call ran: calls[name] lists the Python thread ids that called it, for
    every parallel kernel and serial twin in KERNELS."""
    calls = {name: [] for _, *names in KERNELS.values() for name in names}
    for module, *names in KERNELS.values():
        for name in names:
            fn = getattr(module, name)

            def spy(*args, _fn=fn, _name=name):
                calls[_name].append(threading.get_ident())
                return _fn(*args)

            monkeypatch.setattr(module, name, spy)
    return calls


def _same_non_finite(actual, expected, dtype, what, scale=1.0):
    """NaN and inf at the same places (inf with the same sign), the finite values within TOL * scale."""
    assert actual.dtype == dtype and actual.shape == expected.shape, f"{what}: {actual.dtype} {actual.shape}"
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what + ": NaN mask")
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected), err_msg=what + ": +inf mask")
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected), err_msg=what + ": -inf mask")
    fin = np.isfinite(expected)
    np.testing.assert_allclose(actual[fin], expected[fin], rtol=TOL[dtype]["rtol"] * scale,
                               atol=TOL[dtype]["atol"] * scale, err_msg=what + ": finite values")  # fmt: skip


def _inject(a, positions):
    """A copy of a with a.flat[i % a.size] = value for each (i, value)."""
    a = a.copy()
    for i, value in positions:
        if a.size:
            a.flat[i % a.size] = value
    return a


def _padding_mask(rng, B, Lk, fill, dtype):
    """The additive mask [B, 1, 1, Lk] a 2-D attention_mask gives: trailing padding keys get ``fill``."""
    keep = np.ones((B, Lk))
    for b in range(B):
        keep[b, rng.integers(1, Lk + 1) :] = 0  # at least one key kept per row
    return ((1.0 - keep) * fill).astype(dtype)[:, None, None, :]


def _close(actual, expected, dtype, what):
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOL[dtype])


# ------------------------------------------------------------------------------------------------ GEMM
@SETTINGS
@given(M=st.integers(0, 21), K=st.integers(0, 40), N=st.integers(1, 14), dtype=dtypes, seed=st.integers(0, 99),
       epilogue=st.sampled_from(["bias", "gelu", "residual"]))  # fmt: skip
def test_linear_matches_twin(M, K, N, dtype, seed, epilogue):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    kw = {"gelu": {"activation": "gelu"}, "residual": {"residual": rng.standard_normal((M, N)).astype(dtype)},
          "bias": {}}[epilogue]  # fmt: skip
    tol_scale = max(1.0, np.sqrt(K))
    out = gemm.linear(x, w, b, **kw)
    ref = gemm.linear_ref(x, w, b, **kw)
    assert out.shape == (M, N) and out.dtype == dtype, f"shape {(M, K, N)}: {out.shape} {out.dtype}"
    np.testing.assert_allclose(
        out,
        ref,
        rtol=TOL[dtype]["rtol"] * tol_scale,
        atol=TOL[dtype]["atol"] * tol_scale,
        err_msg=f"linear {epilogue} M={M} K={K} N={N} {np.dtype(dtype)}",
    )


@pytest.mark.parametrize("shape", [(128, 768, 768), (130, 770, 771), (4, 3072, 769), (1, 1024, 1025)])
def test_linear_on_model_shapes_and_tile_remainders(shape):
    M, K, N = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32) / np.sqrt(K)
    b = rng.standard_normal(N, dtype=np.float32)
    ref = gemm.linear_ref(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(gemm.linear(x, w, b), ref, atol=5e-5, rtol=1e-5, err_msg=f"shape {shape}")


def test_linear_non_finite_inputs_agree_with_twin():
    x = np.array([[1.0, np.nan, 2.0], [np.inf, 1.0, 0.5], [1.0, 2.0, 3.0], [-np.inf, 1.0, 1.0], [1, 1, 1]],
                 np.float32)  # fmt: skip
    w = np.array([[1.0, 0.0, 1.0], [2.0, 1.0, -1.0], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0]], np.float32)
    b = np.zeros(4, np.float32)
    out, ref = gemm.linear(x, w, b), gemm.linear_ref(x, w, b)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(out[fin], ref[fin], rtol=1e-6)


non_finite_at = st.lists(st.tuples(st.integers(0, 10_000), NON_FINITE), max_size=4)


@SETTINGS
@given(M=st.integers(1, 12), K=st.integers(1, 20), N=st.integers(1, 14), dtype=dtypes, seed=st.integers(0, 99),
       epilogue=st.sampled_from(["bias", "gelu", "residual"]), in_x=non_finite_at, in_w=non_finite_at)  # fmt: skip
def test_linear_non_finite_matches_twin(M, K, N, dtype, seed, epilogue, in_x, in_w):
    """NaN, +inf and -inf at drawn places of x and of the weight: the same NaN and inf outputs as the twin
    (inf * 0, inf - inf and GELU(-inf) = -inf * 0 give NaN), the finite ones close."""
    rng = np.random.default_rng(seed)
    x = _inject(rng.standard_normal((M, K)).astype(dtype), in_x)
    w = _inject(rng.standard_normal((N, K)).astype(dtype), in_w)
    b = rng.standard_normal(N).astype(dtype)
    kw = {"gelu": {"activation": "gelu"}, "residual": {"residual": rng.standard_normal((M, N)).astype(dtype)},
          "bias": {}}[epilogue]  # fmt: skip
    with np.errstate(all="ignore"):
        out, ref = gemm.linear(x, w, b, **kw), gemm.linear_ref(x, w, b, **kw)
    what = f"linear {epilogue} M={M} K={K} N={N} {np.dtype(dtype)} x{in_x} w{in_w}"
    _same_non_finite(out, ref, dtype, what, scale=max(1.0, np.sqrt(K)))


def test_linear_leading_axes_and_errors():
    x = np.ones((2, 3, 5), np.float32)
    w = np.ones((4, 5), np.float32)
    assert gemm.linear(x, w, np.zeros(4, np.float32)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="not both"):
        gemm.linear(x, w, None, activation="gelu", residual=np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="must be 'gelu'"):
        gemm.linear(x, w, None, activation="relu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nc, kc", [(gemm.TILE_COLS, 37), (1, 1), (4, 50)])
@pytest.mark.parametrize("rows", [1, gemm.TILE_ROWS // 2, gemm.TILE_ROWS // 2 + 1, gemm.TILE_ROWS])
def test_micro_tile_matches_its_twin(dtype, nc, kc, rows):
    rng = np.random.default_rng(nc * 100 + kc)
    w = rng.standard_normal((9, 60)).astype(dtype)
    panel = rng.standard_normal((64, gemm.TILE_ROWS)).astype(dtype)
    j0, k0 = 9 - nc, 60 - kc  # the strip ends at the last row of w, the K slice at its last column
    c = np.full((gemm.TILE_COLS, gemm.TILE_ROWS), np.nan, dtype)
    numba.njit(lambda *a: gemm.micro_tile(*a))(w, j0, nc, k0, kc, panel, c, rows)
    n = gemm.tile_width(rows)  # half the panel for rows that fit in it, else all of it
    assert n == (gemm.TILE_ROWS // 2 if rows <= gemm.TILE_ROWS // 2 else gemm.TILE_ROWS)
    j = np.minimum(np.arange(gemm.TILE_COLS), nc - 1) + j0  # rows past nc repeat the last valid one
    expected = w[j, k0:].astype(np.float64) @ panel[:kc, :n].astype(np.float64)
    _close(c[:, :n], expected.astype(dtype), dtype, f"micro_tile nc={nc} kc={kc} rows={rows}")
    assert np.isnan(c[:, n:]).all(), "the tile wrote past the columns it computes"
    twin = np.full_like(c, np.nan)
    gemm.micro_tile(w, j0, nc, k0, kc, panel, twin, rows)
    np.testing.assert_array_equal(np.isnan(twin), np.isnan(c))


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no machine code without the JIT")
def test_micro_tile_compiles_to_packed_fma():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    if " avx2 " not in flags or " fma " not in flags:
        pytest.skip("the check is written for AVX2 with FMA")
    register = "%zmm" if gemm.VECTOR_BYTES == 64 else "%ymm"
    assert (gemm.VECTOR_BYTES == 64) == (" avx512f " in flags), "the vector width does not follow the CPU"
    tile = numba.njit(cache=False)(lambda *a: gemm.micro_tile(*a))
    w = np.ones((6, 8), np.float32)
    c = np.empty((6, gemm.TILE_ROWS), np.float32)
    tile(w, 0, 6, 0, 8, np.ones((8, gemm.TILE_ROWS), np.float32), c, gemm.TILE_ROWS)
    asm = tile.inspect_asm(tile.signatures[0])
    fmas = [line for line in asm.splitlines() if "vfmadd" in line and "ps" in line and register in line]
    # the full tile's 12 FMAs and the half tile's 6
    assert len(fmas) >= 18, (
        f"expected 18 {register} FMAs (a 6 x {gemm.TILE_ROWS} tile and its half), found "
        f"{len(fmas)}:\n" + "\n".join(fmas)
    )


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no machine code without the JIT")
def test_the_float32_tile_follows_the_cpu_numba_compiles_for():
    """Told to compile for an AVX2-only CPU, the GEMM takes ymm vectors and 16-row panels (zmm would abort LLVM
    or fault), and still matches the NumPy layers, half tiles and full; packed weights come in 16-column strips
    and give the same bits."""
    if not ksettings.cpu_features().get("avx2"):
        pytest.skip("an x86 CPU with AVX2 is needed to run AVX2 code")
    code = ("import numpy as np; from erniem_np.kernels import gemm; print(gemm.VECTOR_BYTES, gemm.TILE_ROWS); "
            "rng = np.random.default_rng(0); w = rng.standard_normal((13, 40)).astype(np.float32); "
            "b = rng.standard_normal(13).astype(np.float32); "
            "print(all(np.allclose(gemm.linear(x, w, b, activation='gelu'), gemm.linear_ref(x, w, b, 'gelu'), "
            "atol=1e-5) for x in [rng.standard_normal((m, 40)).astype(np.float32) for m in (1, 8, 9, 16, 17, 40)])); "
            "print(gemm.PACK_COLS, all(np.array_equal(gemm.linear(x, gemm.PackedWeight(w), b), gemm.linear(x, w, b)) "
            "for x in [rng.standard_normal((m, 40)).astype(np.float32) for m in (1, 6, 7, 40)]))")  # fmt: skip
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", ERNIEM_NP_CACHE_DIR="",
               NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+sse4.2,+popcnt,+bmi,+bmi2,+f16c,+lzcnt,+movbe,-avx512f")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:3] == ["32 16", "True", "16 True"], r.stdout  # 6 x 16 packed tiles on ymm


def test_linear_crosses_the_m_and_k_blocks():
    M, K, N = gemm.BLOCK_M + 3, gemm.BLOCK_K + 5, 13  # a second M pass and a second K slice (partial sums)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    b, r = rng.standard_normal(N).astype(np.float32), rng.standard_normal((M, N)).astype(np.float32)
    ref = gemm.linear_ref(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), residual=r)
    np.testing.assert_allclose(gemm.linear(x, w, b, residual=r), ref, atol=5e-5, rtol=1e-5, err_msg=f"{M, K, N}")


def test_linear_casts_the_weight_to_the_input_dtype():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 7), dtype=np.float32)
    w = rng.standard_normal((3, 7))  # float64
    out = gemm.linear(x, w, None)
    assert out.dtype == np.float32, out.dtype
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(M=st.integers(0, 40), K=st.integers(0, 30), Ns=st.lists(st.integers(1, 14), min_size=1, max_size=4),
       dtype=dtypes, seed=st.integers(0, 99), big=st.booleans())  # fmt: skip
def test_linear_many_equals_one_call_per_weight(M, K, Ns, dtype, seed, big):
    """One kernel call over several weights gives each output bit for bit what its own call gives (the same
    tiles, summed in the same order), whether the call runs in parallel (big) or on the serial twin."""
    rng = np.random.default_rng(seed)
    if big:  # above SERIAL_BELOW_FLOPS: the parallel kernel, with strips of every weight in one loop
        M, K = M + 200, K + 100
    x = rng.standard_normal((M, K)).astype(dtype)
    params = []
    for i, N in enumerate(Ns):
        w = rng.standard_normal((N, K)).astype(dtype)
        if i % 2:
            w.flags.writeable = False  # memory-mapped weights are read-only: mixed in one call
        params.append((w, None if i == 2 else rng.standard_normal(N).astype(dtype)))
    outs = gemm.linear_many(x, params)
    assert len(outs) == len(Ns)
    for (w, b), out in zip(params, outs, strict=True):
        np.testing.assert_array_equal(out, gemm.linear(x, w, b), err_msg=f"M={M} K={K} Ns={Ns}")
        scale = max(1.0, np.sqrt(K))
        np.testing.assert_allclose(out, gemm.linear_ref(x, w, b), rtol=TOL[dtype]["rtol"] * scale,
                                   atol=TOL[dtype]["atol"] * scale, err_msg=f"twin, M={M} K={K} Ns={Ns}")  # fmt: skip


def test_packing_buffer_is_kept_per_thread_and_grown():
    """The GEMM's packing buffer is reused by later calls of the same Python thread (a fresh one per call made
    glibc hand 3 MB blocks back to the kernel and page-fault them in again: ~6,300 faults per B=8 L=128
    forward), grown when a bigger input needs it, and never shared between threads."""
    small, big = gemm._scratch(20, 30, np.float32), gemm._scratch(300, 900, np.float32)
    assert big.size >= 256 * 900 and gemm._scratch(20, 30, np.float32) is big  # grown, then reused
    assert small.size >= 32 * 30 and gemm._scratch(20, 30, np.float64).dtype == np.float64
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        other = pool.submit(gemm._scratch, 300, 900, np.float32).result()
    assert other is not big


def test_linear_many_errors_name_the_mismatch():
    x = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match=r"weight of shape \(4, 6\) does not take inputs of 5 features"):
        gemm.linear_many(x, [(np.ones((4, 5), np.float32), None), (np.ones((4, 6), np.float32), None)])
    with pytest.raises(ValueError, match=r"bias of shape \(3,\) does not match a weight with 4 outputs"):
        gemm.linear_many(x, [(np.ones((4, 5), np.float32), np.ones(3, np.float32))])


# ------------------------------------------------------------------------------------------------ packed weights
def test_packed_weight_layout_round_trips_and_refuses_what_it_cannot_pack():
    rng = np.random.default_rng(5)
    for N, K in [(1, 1), (gemm.PACK_COLS, 3), (gemm.PACK_COLS + 1, 17), (130, 0)]:
        w = rng.standard_normal((N, K), dtype=np.float32)
        p = gemm.PackedWeight(w)
        S = -(-N // gemm.PACK_COLS)
        assert p.packed.shape == (S, K, gemm.PACK_COLS) and p.shape == (N, K) and not p.packed.flags.writeable
        np.testing.assert_array_equal(p.unpack(), w)
        if K:  # strip s, input k, column j holds w[s * PACK_COLS + j, k]; zeros past N
            assert p.packed[S - 1, K - 1, (N - 1) % gemm.PACK_COLS] == w[N - 1, K - 1]
            assert not p.packed[S - 1, :, (N - 1) % gemm.PACK_COLS + 1 :].any()
    for bad in (np.ones((3, 4)), np.ones(4, np.float32), np.ones((2, 3, 4), np.float32)):
        with pytest.raises(ValueError, match="2-D float32"):
            gemm.PackedWeight(bad)


@pytest.mark.parametrize("nr, K, s", [(gemm.PACK_ROWS, 37, 1), (1, 1, 0), (2, 9, 1), (3, 20, 0), (4, 64, 1), (5, 3, 0)])
def test_packed_tile_matches_its_twin(nr, K, s):
    """Every row count a tile can have (the compiled tile runs a shorter loop for 1-2 and 3-4 rows)."""
    rng = np.random.default_rng(nr * 100 + K)
    x = rng.standard_normal((9, K), dtype=np.float32)
    wp = gemm.PackedWeight(rng.standard_normal((2 * gemm.PACK_COLS - 3, K), dtype=np.float32)).packed
    i0 = 9 - nr  # the tile ends at the last row of x
    c = np.full((gemm.PACK_ROWS, gemm.PACK_COLS), np.nan, np.float32)
    numba.njit(lambda *a: gemm.packed_tile(*a))(x, i0, nr, wp, s, c)
    rows = np.minimum(np.arange(gemm.PACK_ROWS), nr - 1) + i0  # rows past nr repeat the last valid one
    expected = x[rows].astype(np.float64) @ wp[s].astype(np.float64)
    _close(c[:nr], expected[:nr].astype(np.float32), np.float32, f"packed_tile nr={nr} K={K} s={s}")
    twin = np.empty_like(c)
    gemm.packed_tile(x, i0, nr, wp, s, twin)
    _close(twin, expected.astype(np.float32), np.float32, f"packed_tile twin nr={nr} K={K} s={s}")
    # finished in registers: + bias, + residual, stored into rows 2.. and columns 3.. of y; the same two adds
    b = rng.standard_normal(wp.shape[0] * gemm.PACK_COLS, dtype=np.float32)
    res = rng.standard_normal((9, gemm.PACK_COLS + 5), dtype=np.float32)
    out_tile = numba.njit(lambda *a: gemm.packed_tile_out(*a))
    for add_res in (False, True):
        y, y_twin = (np.full((nr + 4, gemm.PACK_COLS + 5), 7.0, np.float32) for _ in range(2))
        out_tile(x, i0, nr, wp, s, y, 2, 3, b, res, add_res)
        gemm.packed_tile_out(x, i0, nr, wp, s, y_twin, 2, 3, b, res, add_res)
        np.testing.assert_array_equal(y, y_twin)
        want = c[:nr] + b[s * gemm.PACK_COLS : (s + 1) * gemm.PACK_COLS]
        want = want + res[i0 : i0 + nr, 3 : 3 + gemm.PACK_COLS] if add_res else want
        np.testing.assert_array_equal(y[2 : 2 + nr, 3 : 3 + gemm.PACK_COLS], want)
        assert np.sum(y != 7.0) == nr * gemm.PACK_COLS  # nothing outside the tile's rows and columns


@SETTINGS
@given(M=st.integers(0, 40), K=st.integers(0, 30), Ns=st.lists(st.integers(1, 140), min_size=1, max_size=3),
       seed=st.integers(0, 99), big=st.booleans(), epilogue=st.sampled_from(["bias", "gelu", "residual"]))  # fmt: skip
def test_packed_weights_give_the_same_bits_as_the_stored_layout(M, K, Ns, seed, big, epilogue):
    """The two kernels compute each output as the same chain of FMAs over k and the same epilogue: packed
    weights change the speed, not one bit, serial or parallel (big: above SERIAL_BELOW_FLOPS, and past one
    block of BLOCK_M rows)."""
    rng = np.random.default_rng(seed)
    if big:
        M, K = M + gemm.BLOCK_M + 5, K + 100
    x = rng.standard_normal((M, K), dtype=np.float32)
    ws = [rng.standard_normal((N, K), dtype=np.float32) for N in Ns]
    bs = [rng.standard_normal(N).astype(np.float32) if i != 1 else None for i, N in enumerate(Ns)]
    packed = [gemm.PackedWeight(w) for w in ws]
    for got, want in zip(gemm.linear_many(x, list(zip(packed, bs))), gemm.linear_many(x, list(zip(ws, bs))),
                         strict=True):  # fmt: skip
        np.testing.assert_array_equal(got, want, err_msg=f"linear_many M={M} K={K} Ns={Ns}")
    kw = {"gelu": {"activation": "gelu"}, "residual": {"residual": rng.standard_normal((M, Ns[0]), dtype=np.float32)}}
    np.testing.assert_array_equal(gemm.linear(x, packed[0], bs[0], **kw.get(epilogue, {})),
                                  gemm.linear(x, ws[0], bs[0], **kw.get(epilogue, {})), err_msg=f"{epilogue}")  # fmt: skip


@pytest.mark.parametrize("M", [37, 2 * gemm.BLOCK_M + 45])
def test_packed_rows_split_into_chunks_give_the_bits_of_one_sweep(M):
    """``_gemm_packed``'s row chunks (one per thread from ROW_CHUNKS_FROM rows, so each thread computes whole
    rows) change which task computes a row, not its bits: chunk edges that cut a tile or a block, more chunks
    than tiles, the parallel kernel and its serial twin, each epilogue."""
    rng = np.random.default_rng(M)
    K, N = 40, gemm.PACK_COLS + 7  # a whole strip, then a narrower one
    x = rng.standard_normal((M, K), dtype=np.float32)
    wp = gemm.PackedWeight(rng.standard_normal((N, K), dtype=np.float32)).packed
    b = rng.standard_normal(wp.shape[0] * gemm.PACK_COLS).astype(np.float32)
    res = rng.standard_normal((M, N), dtype=np.float32)
    for epilogue in (gemm.EPILOGUE_BIAS, gemm.EPILOGUE_GELU, gemm.EPILOGUE_RESIDUAL):
        results = []
        for kernel in (gemm._gemm_packed, gemm._gemm_packed_serial):
            for chunks in (1, 2, 3, 7):
                out = np.full((M, N), np.nan, np.float32)
                kernel(x, (wp,), (b,), res, (out,), epilogue, chunks)
                results.append(out)
        assert not np.isnan(results[0]).any()
        for out in results[1:]:
            np.testing.assert_array_equal(out, results[0])


def test_a_packed_weight_survives_pickling_read_only():
    """A model sent to another process by pickle keeps its packed weights read-only (a writable copy would be
    another Numba type: a second compile in that process), and computes the same."""
    import pickle

    w = np.random.default_rng(6).standard_normal((70, 9)).astype(np.float32)
    copy = pickle.loads(pickle.dumps(gemm.PackedWeight(w)))
    assert not copy.packed.flags.writeable and copy.shape == (70, 9)
    x = np.ones((4, 9), np.float32)
    np.testing.assert_array_equal(gemm.linear(x, copy), gemm.linear(x, w))


def test_packed_weights_refuse_other_dtypes_mixed_calls_and_other_widths():
    w = np.ones((4, 5), np.float32)
    p = gemm.PackedWeight(w)
    with pytest.raises(ValueError, match="packed weights take float32 inputs"):
        gemm.linear(np.ones((3, 5)), p)  # float64 x
    with pytest.raises(ValueError, match="packed weights only or none"):
        gemm.linear_many(np.ones((3, 5), np.float32), [(p, None), (w, None)])
    with pytest.raises(ValueError, match=r"packed weight of shape \(4, 5\) does not take inputs of 6 features"):
        gemm.linear(np.ones((3, 6), np.float32), p)


# ------------------------------------------------------------------------------------------------ norm, GELU
@SETTINGS
@given(M=st.integers(0, 9), H=st.integers(1, 70), dtype=dtypes, seed=st.integers(0, 99), residual=st.booleans())
def test_layer_norm_matches_twin(M, H, dtype, seed, residual):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((M, H)) * 3 + 1).astype(dtype)
    r = rng.standard_normal((M, H)).astype(dtype) if residual else None
    w, b = rng.standard_normal(H).astype(dtype), rng.standard_normal(H).astype(dtype)
    _close(norm.layer_norm(x, w, b, 1e-5, r), norm.layer_norm_ref(x, w, b, 1e-5, r), dtype, f"layer_norm {M}x{H}")


@pytest.mark.skipif(NO_JIT, reason="as Python the float64 sums are float32 (0.0 + float32 stays float32)")
@pytest.mark.parametrize("serial", [True, False])
def test_layer_norm_centres_a_row_far_from_zero_as_float64_would(serial, monkeypatch):
    """Rows whose mean is large next to their spread (mean 1000, spread 1): the float32 kernel, serial and
    parallel, is within 3e-6 of float64 LayerNorm (outputs up to 10: a few float32 roundings), because it centres
    with the mean in two float32 parts.
    Centring with the mean rounded to float32 alone is off by 8.2e-5 on these rows (computed in NumPy)."""
    monkeypatch.setattr(ksettings, "SERIAL_BELOW_FLOPS", 2**62 if serial else 0)
    rng = np.random.default_rng(5)
    x = (1000 + rng.standard_normal((64, 768))).astype(np.float32)
    r = rng.standard_normal((64, 768)).astype(np.float32)
    w, b = rng.standard_normal(768).astype(np.float32), rng.standard_normal(768).astype(np.float32)
    exact = norm.layer_norm_ref((x + r).astype(np.float64), w, b, 1e-5)  # the float32 sum, then float64
    assert np.abs(norm.layer_norm(x, w, b, 1e-5, r) - exact).max() < 3e-6


def test_layer_norm_non_finite_rows():
    x = np.array([[1.0, np.nan, 2.0], [np.inf, 1.0, 0.5], [1.0, 2.0, 3.0]], np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    out, ref = norm.layer_norm(x, w, b, 1e-5), norm.layer_norm_ref(x, w, b, 1e-5)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out[2], ref[2], rtol=1e-6)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_parallel_kernel_matches_twin(dtype, residual, kernel_calls):
    """Above SERIAL_BELOW_FLOPS: the prange kernel (not its serial twin) against layer_norm_ref."""
    M, H = 501, 800  # odd row count: the rows do not split evenly between the threads
    _above_threshold(layer_norm_flops(M, H), f"layer_norm {M}x{H}")
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((M, H)) * 3 + 1).astype(dtype)
    r = rng.standard_normal((M, H)).astype(dtype) if residual else None
    w, b = rng.standard_normal(H).astype(dtype), rng.standard_normal(H).astype(dtype)
    out = norm.layer_norm(x, w, b, 1e-5, r)
    assert len(kernel_calls["_layer_norm"]) == 1 and not kernel_calls["_layer_norm_serial"], "not the parallel kernel"
    _close(out, norm.layer_norm_ref(x, w, b, 1e-5, r), dtype, f"parallel layer_norm residual={residual}")


@SETTINGS
@given(M=st.integers(1, 9), H=st.integers(1, 40), dtype=dtypes, seed=st.integers(0, 99),
       in_x=non_finite_at, in_r=non_finite_at)  # fmt: skip
def test_layer_norm_non_finite_matches_twin(M, H, dtype, seed, in_x, in_r):
    """NaN, +inf and -inf at drawn places of x and of the residual: the rows they reach are NaN in the kernel
    exactly where the twin's are, the other rows close."""
    rng = np.random.default_rng(seed)
    x = _inject((rng.standard_normal((M, H)) * 3 + 1).astype(dtype), in_x)
    r = _inject(rng.standard_normal((M, H)).astype(dtype), in_r)
    w, b = rng.standard_normal(H).astype(dtype), rng.standard_normal(H).astype(dtype)
    with np.errstate(all="ignore"):
        out, ref = norm.layer_norm(x, w, b, 1e-5, r), norm.layer_norm_ref(x, w, b, 1e-5, r)
    _same_non_finite(out, ref, dtype, f"layer_norm {M}x{H} {np.dtype(dtype)} x{in_x} r{in_r}")


GELU_STRIDE = 4096 if NO_JIT else 64  # without the JIT each value is a Python call (~7 us)


def test_gelu_within_1e6_of_exact_gelu_on_strided_float32_sample():
    """Max abs error below 1e-6 against float64 erf GELU on a sample, not on every float32: every
    GELU_STRIDE-th float32 bit pattern in [0, 10] (at 64: 17 million; at 4096, without the JIT: 267,000) and
    their negatives, plus a few extremes. Stepping through bit patterns samples evenly per binade, so most of the
    sample is tiny (|x| < 1): ~420,000 of the values lie in [1, 10] at stride 64."""
    pos = np.arange(0, np.float32(10).view(np.int32) + 1, GELU_STRIDE, dtype=np.int32).view(np.float32)
    x = np.concatenate([pos, -pos, np.float32([5.5, -5.5, 1e30, -1e30, 3.4e38, -3.4e38, 1e-30, -1e-30])])
    with np.errstate(all="ignore"):
        exact = norm.gelu_ref(x.astype(np.float64))
    err = np.abs(norm.gelu(x).astype(np.float64) - exact)
    worst = int(err.argmax())
    assert err.max() < 1e-6, f"GELU max abs error {err.max():.3g} at x = {x[worst]!r}"


def test_gelu_non_finite_and_float64():
    x = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0])
    with np.errstate(invalid="ignore"):
        ref = norm.gelu_ref(x)
    np.testing.assert_array_equal(norm.gelu(x), ref)  # nan, inf, nan (-inf * 0), 0, -0
    x64 = np.linspace(-8, 8, 1001)
    np.testing.assert_allclose(norm.gelu(x64), norm.gelu_ref(x64), rtol=1e-14, atol=1e-15)  # libm erf


def test_float32_gelu_of_the_int8_epilogue_within_2e6_of_exact_gelu():
    """``gelu_row_f32`` (the int8 GEMM's GELU epilogue): compiled and twin within 2e-6 of float64 erf GELU on
    the same strided sample, and NaN, +-inf, +-0 as exact GELU gives them."""
    pos = np.arange(0, np.float32(10).view(np.int32) + 1, GELU_STRIDE, dtype=np.int32).view(np.float32)
    x = np.concatenate([pos, -pos, np.float32([5.5, -5.5, 1e30, -1e30, 3.4e38, -3.4e38, 1e-30, -1e-30])])
    special = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0])
    with np.errstate(all="ignore"):
        exact = norm.gelu_ref(x.astype(np.float64))
        special_exact = norm.gelu_ref(special)
    compiled = numba.njit(lambda r: norm.gelu_row_f32(r))
    for run_gelu in (compiled, norm.gelu_row_f32):
        y, z = x.copy(), special.copy()
        with np.errstate(all="ignore"):
            run_gelu(y)
            run_gelu(z)
        err = np.abs(y.astype(np.float64) - exact)
        assert err.max() < 2e-6, f"GELU max abs error {err.max():.3g} at x = {x[int(err.argmax())]!r}"
        np.testing.assert_array_equal(z, special_exact)


# ------------------------------------------------------------------------------------------------ attention
@SETTINGS
@given(B=st.integers(0, 3), L=st.integers(1, 9), P=st.integers(0, 4), nh=st.integers(1, 3), d=st.integers(1, 9),
       dtype=dtypes, seed=st.integers(0, 99), mask_kind=st.sampled_from(["none", "2d", "4d", "hf_full_row"]),
       scaling=st.sampled_from(["hf", "paddle"]), head_mask=st.booleans(), need_probs=st.booleans())  # fmt: skip
def test_attention_matches_twin(B, L, P, nh, d, dtype, seed, mask_kind, scaling, head_mask, need_probs):
    rng = np.random.default_rng(seed)
    Lk, H = P + L, nh * d
    q, k, v = (rng.standard_normal((B, n, H)).astype(dtype) * 2 for n in (L, Lk, Lk))
    mask = None
    if mask_kind == "2d":
        mask = np.where(rng.random((B, 1, 1, Lk)) < 0.3, -1e4, 0.0).astype(dtype)
    elif mask_kind == "4d":
        mask = np.where(rng.random((B, nh, L, Lk)) < 0.3, -1e9, 0.0).astype(dtype)
    elif mask_kind == "hf_full_row":  # HF's float32-min fill on every key: uniform rows
        mask = np.full((B, 1, 1, Lk), np.finfo(np.float32).min, dtype)
    hm = rng.random(nh).astype(dtype) if head_mask else None
    ctx, probs = attention.attention(q, k, v, nh, mask, hm, scaling, need_probs)
    ctx_r, probs_r = attention.attention_ref(q, k, v, nh, mask, hm, scaling, need_probs)
    what = f"attention B={B} L={L} Lk={Lk} nh={nh} d={d} {mask_kind} {scaling} {np.dtype(dtype)}"
    _close(ctx, ctx_r, dtype, what + " context")
    if need_probs:
        _close(probs, probs_r, dtype, what + " probs")
    else:
        assert probs is None


@pytest.mark.parametrize("scaling", ["hf", "paddle"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_several_tiles(scaling, dtype):
    # several 16-key panels (Lk = 40), two 16-channel value panels with a partial one (d = 20), query blocks
    # of 6 with a remainder (L = 37), a fully masked batch row (HF fill) next to a partly masked one
    rng = np.random.default_rng(7)
    B, L, P, nh, d = 2, 37, 3, 3, 20
    Lk, H = L + P, nh * d
    q, k, v = (rng.standard_normal((B, n, H)).astype(dtype) * 2 for n in (L, Lk, Lk))
    mask = np.where(rng.random((B, 1, 1, Lk)) < 0.3, np.finfo(np.float32).min, 0.0).astype(dtype)
    mask[1] = np.finfo(np.float32).min
    hm = rng.random(nh).astype(dtype)
    ctx, probs = attention.attention(q, k, v, nh, mask, hm, scaling, True)
    ctx_r, probs_r = attention.attention_ref(q, k, v, nh, mask, hm, scaling, True)
    what = f"attention several tiles {scaling} {np.dtype(dtype)}"
    _close(ctx, ctx_r, dtype, what + " context")
    _close(probs, probs_r, dtype, what + " probs")
    assert np.all(probs[0][np.broadcast_to(mask[0] != 0, probs[0].shape)] == 0)  # masked keys: exactly 0


def test_softmax_row_max_on_float_bits():
    """``row_max`` (the softmax's maximum, taken on integer keys of the float32 bits) against NumPy's max:
    negative values and -0.0, +-inf, one value, a row prefix; a NaN with the sign bit clear is the maximum."""
    row_max = numba.njit(lambda row, n: attention.row_max(row, n))
    rows = [[-3.0, -1.5, -7.0], [-0.0, 0.0, -1.0], [0.0, -0.0], [np.inf, 1.0], [-np.inf, -np.inf], [-np.inf, -5.0],
            [2.5], [-1e-45, -2e-45], [np.finfo(np.float32).min, np.finfo(np.float32).max]]  # fmt: skip
    for r in rows:
        x = np.float32(r + [99.0])  # the value past n is never read
        assert row_max(x, len(r)) == np.max(x[: len(r)]), r
    nan = np.float32([1.0, np.nan, 2.0])
    assert np.isnan(row_max(nan, 3)) and np.isnan(attention.row_max(nan, 3))


@pytest.mark.parametrize("sign", [1, -1])
def test_attention_nan_score_makes_the_row_nan_as_in_the_twin(sign):
    """A NaN in a query (either sign bit: x86 makes NaNs with it set) gives that query's probabilities and
    context NaN, and no other's, as the twin."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 5, 8)).astype(np.float32) for _ in range(3))
    q[0, 2, 1] = np.copysign(np.float32(np.nan), np.float32(sign))
    ctx, probs = attention.attention(q, k, v, 2, None, None, "hf", True)
    ctx_r, probs_r = attention.attention_ref(q, k, v, 2, None, None, "hf", True)
    np.testing.assert_array_equal(np.isnan(probs), np.isnan(probs_r))
    np.testing.assert_array_equal(np.isnan(ctx), np.isnan(ctx_r))
    assert np.isnan(probs[0, 0, 2]).all() and not np.isnan(probs[0, 1]).any()


@pytest.mark.parametrize("need_probs", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scaling, fill", [("hf", FMIN), ("paddle", -1e4)])
def test_attention_parallel_kernel_matches_twin(scaling, fill, dtype, need_probs, kernel_calls):
    """Above SERIAL_BELOW_FLOPS: the prange kernel (not its serial twin) against attention_ref, with the padding
    mask a 2-D attention_mask gives ([B, 1, 1, Lk], each flavor's fill), a head mask, past keys (Lk > L), and
    remainders everywhere (L % 6, Lk % 16, d % 16)."""
    B, L, P, nh, d = 2, 75, 5, 4, 24
    Lk, H = L + P, nh * d
    _above_threshold(attention_flops(B, L, Lk, H), f"attention B={B} L={L} Lk={Lk} H={H}")
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((B, n, H)).astype(dtype) * 2 for n in (L, Lk, Lk))
    mask = _padding_mask(rng, B, Lk, fill, dtype)
    hm = rng.random(nh).astype(dtype)
    ctx, probs = attention.attention(q, k, v, nh, mask, hm, scaling, need_probs)
    assert len(kernel_calls["_attention"]) == 1 and not kernel_calls["_attention_serial"], "not the parallel kernel"
    ctx_r, probs_r = attention.attention_ref(q, k, v, nh, mask, hm, scaling, need_probs)
    what = f"parallel attention {scaling} {np.dtype(dtype)}"
    _close(ctx, ctx_r, dtype, what + " context")
    if need_probs:
        _close(probs, probs_r, dtype, what + " probs")
        assert np.all(probs[np.broadcast_to(mask != 0, probs.shape)] == 0)  # masked keys: exactly 0
    else:
        assert probs is None


@SETTINGS
@given(B=st.integers(1, 2), L=st.integers(1, 7), P=st.integers(0, 3), nh=st.integers(1, 3), d=st.integers(1, 6),
       dtype=dtypes, seed=st.integers(0, 99), scaling=st.sampled_from(["hf", "paddle"]),
       in_q=non_finite_at, in_k=non_finite_at, in_v=non_finite_at)  # fmt: skip
def test_attention_non_finite_matches_twin(B, L, P, nh, d, dtype, seed, scaling, in_q, in_k, in_v):
    """NaN, +inf and -inf at drawn places of q, k and v: the context and the probabilities are NaN and inf
    where the twin's are (a NaN or inf score makes its row NaN; inf in v gives inf, or NaN where a
    probability is 0), the finite values close."""
    rng = np.random.default_rng(seed)
    Lk, H = P + L, nh * d
    q = _inject(rng.standard_normal((B, L, H)).astype(dtype) * 2, in_q)
    k = _inject(rng.standard_normal((B, Lk, H)).astype(dtype) * 2, in_k)
    v = _inject(rng.standard_normal((B, Lk, H)).astype(dtype) * 2, in_v)
    with np.errstate(all="ignore"):
        ctx, probs = attention.attention(q, k, v, nh, None, None, scaling, True)
        ctx_r, probs_r = attention.attention_ref(q, k, v, nh, None, None, scaling, True)
    what = f"attention B={B} L={L} Lk={Lk} nh={nh} d={d} {scaling} {np.dtype(dtype)} q{in_q} k{in_k} v{in_v}"
    _same_non_finite(probs, probs_r, dtype, what + " probs")
    _same_non_finite(ctx, ctx_r, dtype, what + " context")


@pytest.mark.parametrize(("B", "L", "nh", "d", "ran"), [
    (1, 4, 12, 64, "_attention"), (1, 16, 12, 64, "_attention"), (2, 8, 12, 64, "_attention"),
    (1, 2, 12, 64, "_attention_serial"), (1, 16, 2, 32, "_attention_serial"), (1, 64, 1, 64, "_attention_serial"),
])  # fmt: skip
def test_attention_goes_parallel_from_a_few_rows_of_many_heads(B, L, nh, d, ran, kernel_calls):
    """The attention's work estimate counts each task's rows beyond the products (``attention.ROW_FLOPS``)
    where there are at least 8 (batch, head) tasks: ErnieM-base's 12 heads take the parallel kernel from 4
    tokens on (products alone would send them parallel only from about 24), a few heads stay serial."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((B, L, nh * d)).astype(np.float32) for _ in range(3))
    ctx, _ = attention.attention(q, k, v, nh)
    assert len(kernel_calls[ran]) == 1 and sum(map(len, kernel_calls.values())) == 1, f"not {ran}"
    np.testing.assert_allclose(ctx, attention.attention_ref(q, k, v, nh)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("flavor", ["hf", "paddle"])
def test_fully_masked_row_follows_each_flavor(flavor, dtype, size, kernel_calls):
    """A batch row whose every key is masked (docs/reference.md#q5-fully-masked-rows: "Fully masked rows: HF -> uniform
    attention; Paddle -> unmasked softmax"). HF fills with float32-min, so every score collapses to the same
    value and the row is uniform; Paddle adds -1e4, which keeps the score differences, so the row is the
    softmax of the raw scaled scores (up to float32 rounding of score - 1e4). The kernel, serial and parallel,
    equals the twin, and the twin shows that behaviour."""
    B, L, nh, d = (2, 5, 2, 8) if size == "serial" else (2, 75, 4, 24)
    Lk, H = L, nh * d
    serial = attention_flops(B, L, Lk, H) < ksettings.SERIAL_BELOW_FLOPS
    assert serial == (size == "serial"), f"{size}: {attention_flops(B, L, Lk, H)} flops"
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((B, Lk, H)).astype(dtype) * 2 for _ in range(3))
    fill = FMIN if flavor == "hf" else -1e4
    mask = np.zeros((B, 1, 1, Lk), dtype)
    mask[0, ..., Lk // 2 :] = fill  # row 0: half masked
    mask[1] = fill  # row 1: every key masked
    ctx, probs = attention.attention(q, k, v, nh, mask, None, flavor, True)
    ran = "_attention_serial" if serial else "_attention"
    assert len(kernel_calls[ran]) == 1 and sum(map(len, kernel_calls.values())) == 1, "not the expected kernel"
    ctx_r, probs_r = attention.attention_ref(q, k, v, nh, mask, None, flavor, True)
    what = f"fully masked row {flavor} {np.dtype(dtype)} {size}"
    _close(ctx, ctx_r, dtype, what + " context")
    _close(probs, probs_r, dtype, what + " probs")

    full = probs_r[1]  # [nh, L, Lk]
    if flavor == "hf":
        np.testing.assert_allclose(full, 1.0 / Lk, rtol=1e-6, err_msg=what + ": not uniform")
        np.testing.assert_allclose(ctx_r[1], np.broadcast_to(v[1].mean(axis=0), (L, H)), **TOL[dtype])
    else:
        q64 = q[1].astype(np.float64).reshape(L, nh, d).transpose(1, 0, 2)
        k64 = k[1].astype(np.float64).reshape(Lk, nh, d).transpose(1, 0, 2)
        s = q64 @ k64.transpose(0, 2, 1) / math.sqrt(d)  # the raw scaled scores, no mask
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        expected = e / e.sum(axis=-1, keepdims=True)
        atol = 2e-3 if dtype == np.float32 else 1e-9  # score - 1e4 keeps ~1e-3 of a float32 score
        np.testing.assert_allclose(full, expected, atol=atol, rtol=0, err_msg=what + ": not the unmasked softmax")
        assert np.ptp(full, axis=-1).min() > 0.01, what + ": uniform, like HF"  # the flavors really differ


def test_attention_nan_row_stays_nan():
    q = np.ones((1, 2, 4), np.float32)
    k = np.ones((1, 3, 4), np.float32)
    k[0, 1, 0] = np.nan
    ctx, probs = attention.attention(q, k, k, 2, need_probs=True)
    ctx_r, probs_r = attention.attention_ref(q, k, k, 2, need_probs=True)
    np.testing.assert_array_equal(np.isnan(probs), np.isnan(probs_r))
    np.testing.assert_array_equal(np.isnan(ctx), np.isnan(ctx_r))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_shifted_matches_exp(dtype):
    # the softmax's exp: a float32 polynomial when compiled (np.exp when the JIT is disabled), libm for float64
    exp_shifted = numba.njit(lambda r, n, m: attention.exp_shifted(r, n, m))
    grid = np.round(np.linspace(-90, 0, 200_001) * 1024) / 1024  # x + m and back are exact in float32
    x = np.concatenate([grid, [-np.inf, np.finfo(np.float32).min, -1e4, np.nan, -0.0]]).astype(dtype)
    m = dtype(1.5)
    row = x + m
    exp_shifted(row, len(row) - 1, m)  # the last value must stay as it is
    assert row[-1] == x[-1] + m
    got, x = row[:-1], x[:-1]
    exact = np.exp(x.astype(np.float64))
    normal = x >= -86
    ulps = np.abs(got[normal] - exact[normal]) / np.spacing(np.exp(x[normal]))
    bound = 3 if os.environ.get("NUMBA_DISABLE_JIT") == "1" else 1.5  # NumPy's own SIMD expf reaches 2.2 ulp here
    assert ulps.max() <= bound, f"exp off by {ulps.max():.2f} ulp at x = {x[normal][ulps.argmax()]}"
    tiny = ~normal & ~np.isnan(x)
    assert np.all((got[tiny] >= 0) & (got[tiny] < 5e-38))  # flushed to 0 by the polynomial, or libm's tiny value
    assert np.all(got[x == -np.inf] == 0) and np.all(got[x == np.finfo(np.float32).min] == 0)  # masked keys: 0
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no machine code without the JIT")
def test_exp_shifted_compiles_to_vector_code():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    if " avx2 " not in flags or " fma " not in flags:
        pytest.skip("the check is written for AVX2 with FMA")
    exp_shifted = numba.njit(cache=False)(lambda r, n, m: attention.exp_shifted(r, n, m))
    exp_shifted(np.zeros(64, np.float32), 64, np.float32(0))
    asm = exp_shifted.inspect_asm(exp_shifted.signatures[0])
    # ymm (8 float32 lanes) on AVX2; LLVM takes zmm (16 lanes) where the CPU has AVX-512
    assert re.search(r"vcvttps2dq\s+%[yz]mm", asm), "2^n is not computed on 8 or 16 float32 lanes"
    assert len(re.findall(r"vfmadd\w+ps\s+%[yz]mm", asm)) >= 6, "the polynomial is not evaluated on vector lanes"
    assert not re.search(r"\bvcvtps2pd\b", asm), "the polynomial is widened to float64"


# ------------------------------------------------------------------------------------------------ settings
def _a_parallel_gemm():
    """One call of the parallel GEMM (above SERIAL_BELOW_FLOPS): it starts Numba's thread pool."""
    M, K, N = 64, 160, 200
    _above_threshold(linear_flops(M, K, [N]), "gemm")
    return gemm.linear(np.ones((M, K), np.float32), np.ones((N, K), np.float32), None)


def _parallel_kernel_calls():
    """A call of every public kernel wrapper, each above SERIAL_BELOW_FLOPS (so each runs its parallel kernel,
    under the kernel lock, ``settings._lock``)."""
    x, w = np.ones((64, 160), np.float32), np.ones((200, 160), np.float32)
    _above_threshold(linear_flops(64, 160, [200]), "linear")
    q = np.ones((2, 75, 96), np.float32)
    _above_threshold(attention_flops(2, 75, 75, 96), "attention")
    xn = np.ones((501, 800), np.float32)
    _above_threshold(layer_norm_flops(501, 800), "layer_norm")
    return {"linear": lambda: gemm.linear(x, w, None), "linear_many": lambda: gemm.linear_many(x, [(w, None)]),
            "attention": lambda: attention.attention(q, q, q, 4),
            "layer_norm": lambda: norm.layer_norm(xn, xn[0], xn[0], 1e-5),
            "gelu_inplace": lambda: norm.gelu_inplace(xn.copy())}  # fmt: skip


def _finishes_while_kernel_lock_held(call, within):
    """Whether ``call``, run in another thread, finishes within ``within`` seconds while this thread holds the
    kernel lock (it always finishes once the lock is released)."""
    done = threading.Event()
    worker = threading.Thread(target=lambda: (call(), done.set()), daemon=True)
    with ksettings._lock:
        worker.start()
        finished = done.wait(within)
    worker.join(60)
    assert done.is_set(), "the call never finished"
    return finished


@pytest.mark.skipif(NO_JIT, reason="no thread pool without the JIT")
def test_kernel_lock_follows_the_layer_numba_runs():
    """After a parallel call Numba's pool runs the layer Numba chose (erniem-np sets none); the kernel lock
    serialises exactly when that layer is not thread-safe (workqueue)."""
    _a_parallel_gemm()
    layer = ksettings.threading_layer()
    assert layer == numba.threading_layer() and layer in ("omp", "tbb", "workqueue"), layer
    assert ksettings._layer_is_thread_safe() == (layer in ("omp", "tbb"))
    assert _finishes_while_kernel_lock_held(_parallel_kernel_calls()["linear"], 20) == (layer != "workqueue")


@pytest.mark.parametrize("kernel", sorted(_parallel_kernel_calls()))
def test_kernel_lock_serialises_only_when_the_layer_is_not_thread_safe(kernel, monkeypatch):
    """The lock fallback (workqueue): every public kernel's parallel call waits for the kernel lock; with a
    thread-safe layer none takes it."""
    call = _parallel_kernel_calls()[kernel]
    call()  # compiled (or loaded from the cache) before the lock is held, so timing measures only the wait
    monkeypatch.setattr(ksettings, "_thread_safe", False)
    assert not _finishes_while_kernel_lock_held(call, 0.3), f"{kernel} ran while another thread held the lock"
    monkeypatch.setattr(ksettings, "_thread_safe", True)
    assert _finishes_while_kernel_lock_held(call, 20), f"{kernel} waited for the lock with a thread-safe layer"


def test_serial_twins_run_where_parallel_is_not_allowed(kernel_calls, monkeypatch):
    """In a fork child of a GNU OpenMP process (``parallel_allowed()`` False) every wrapper runs the serial
    twin, whatever the size; the results are the parallel kernels' (test_kernel_safety runs a real fork)."""
    calls = _parallel_kernel_calls()
    expected = {name: call() for name, call in calls.items()}
    assert not any(kernel_calls[twin] for _, _, twin in KERNELS.values())
    for spied in kernel_calls.values():
        spied.clear()
    monkeypatch.setattr(ksettings, "_forked_from_gnu_omp", True)
    for name, call in calls.items():
        got, want = call(), expected[name]
        for a, e in zip(got if isinstance(got, (tuple, list)) else (got,),
                        want if isinstance(want, (tuple, list)) else (want,), strict=True):  # fmt: skip
            if e is not None:
                np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6, err_msg=name)
    assert not any(kernel_calls[parallel] for _, parallel, _ in KERNELS.values()), kernel_calls
    assert all(kernel_calls[twin] for _, _, twin in KERNELS.values() if twin != "_gelu_rows_exact_serial")


def test_concurrent_calls_from_python_threads():
    # the default workqueue layer aborts the process here; omp/tbb run, or the lock serialises
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 96), dtype=np.float32)
    w = rng.standard_normal((80, 96), dtype=np.float32)
    b = np.zeros(80, np.float32)
    expected = gemm.linear(x, w, b)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: gemm.linear(x, w, b), range(16)))
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_concurrent_calls_of_the_parallel_kernels(kernel_calls):
    """Four Python threads, released together by a barrier, each call every parallel kernel above
    SERIAL_BELOW_FLOPS (GEMM with each epilogue, linear_many, attention with a padding mask and probabilities,
    LayerNorm with a residual, GELU in float32 and float64), each in its own order; every result equals, bit
    for bit, the same call made from this thread alone. The spies check that the parallel kernels ran, not
    the twins."""
    rng = np.random.default_rng(1)
    M, K, N = 96, 160, 200
    _above_threshold(linear_flops(M, K, [N]), "linear")
    x, x2, x3, x4 = (rng.standard_normal((M, K), dtype=np.float32) for _ in range(4))  # a shared buffer would show
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    res = rng.standard_normal((M, N), dtype=np.float32)
    many = [(w[:100], b[:100]), (w[100:160], None), (w[160:], b[160:])]
    _above_threshold(linear_flops(M, K, [len(p[0]) for p in many]), "linear_many")
    B, L, P, nh, d = 2, 75, 5, 4, 24
    _above_threshold(attention_flops(B, L, L + P, nh * d), "attention")
    q, k, v = (rng.standard_normal((B, n, nh * d), dtype=np.float32) for n in (L, L + P, L + P))
    mask = _padding_mask(rng, B, L + P, FMIN, np.float32)
    mask_paddle = np.where(mask != 0, -1e4, 0.0).astype(np.float32)
    Mn, H = 501, 800
    _above_threshold(layer_norm_flops(Mn, H), "layer_norm")
    xn, rn = rng.standard_normal((Mn, H), dtype=np.float32), rng.standard_normal((Mn, H), dtype=np.float32)
    gn, bn = rng.standard_normal(H, dtype=np.float32), rng.standard_normal(H, dtype=np.float32)
    g = rng.standard_normal((100, 1001)) * 3
    _above_threshold(gelu_flops(g.size), "gelu")
    calls = {
        "linear bias": lambda: gemm.linear(x, w, b),
        "linear gelu": lambda: gemm.linear(x2, w, b, activation="gelu"),
        "linear residual": lambda: gemm.linear(x3, w, b, residual=res),
        "linear_many": lambda: gemm.linear_many(x4, many),
        "attention": lambda: attention.attention(q, k, v, nh, mask, None, "hf", True),
        "attention paddle": lambda: attention.attention(q, k, v, nh, mask_paddle, None, "paddle", False),
        "layer_norm residual": lambda: norm.layer_norm(xn, gn, bn, 1e-5, rn),
        "gelu_inplace float32": lambda: norm.gelu_inplace(g.astype(np.float32)),
        "gelu_inplace float64": lambda: norm.gelu_inplace(g.copy()),
    }
    expected = {name: call() for name, call in calls.items()}
    for spied in kernel_calls.values():
        spied.clear()
    n_threads, rounds = 4, 1 if NO_JIT else 4
    barrier = threading.Barrier(n_threads)
    names = sorted(calls)

    def worker(t):
        barrier.wait(30)
        order = names[t:] + names[:t]  # each thread its own order: different kernels overlap
        return [(name, calls[name]()) for _ in range(rounds) for name in order]

    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        results = list(pool.map(worker, range(n_threads)))
    for name, got in (r for per_thread in results for r in per_thread):
        want = expected[name]
        got, want = (r if isinstance(r, (tuple, list)) else (r,) for r in (got, want))
        assert len(got) == len(want), name
        for a, e in zip(got, want, strict=True):
            if e is None:
                assert a is None, name
            else:
                np.testing.assert_array_equal(a, e, err_msg=f"{name}: another thread's call changed the result")
    per_round = n_threads * rounds
    expected_calls = {"_gemm": 4 * per_round, "_attention": 2 * per_round, "_layer_norm": per_round,
                      "_gelu_rows": per_round, "_gelu_rows_exact": per_round}  # fmt: skip
    assert {n: len(c) for n, c in kernel_calls.items() if c} == expected_calls, "a serial twin ran, or a call was lost"
    assert len(set(kernel_calls["_gemm"])) == n_threads, "the GEMM was not called from every thread"


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="thread count"):
        ksettings.set_num_threads(0)
    ksettings.set_num_threads(1)
    assert ksettings.get_num_threads() == 1
    ksettings.set_num_threads(ksettings.numba.config.NUMBA_NUM_THREADS)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="already running without JIT")
def test_kernels_pass_without_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                        "-k", "not model_shapes and not 1e6 and not concurrent"],
                       env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


_SPIN_PROBE = """
import ctypes, os, sys
import numpy as np
import erniem_np
from erniem_np.config import ErnieMConfig
from erniem_np.kernels import settings
from erniem_np.model import ErnieMModel
from erniem_np.testing import random_weights, split_head
start = sys.argv[1]
if start == "set_num_threads":
    erniem_np.set_num_threads(1)
else:  # a forward pass long enough for the parallel kernels, on the backend named
    config = ErnieMConfig(vocab_size=500, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=300)
    model = ErnieMModel(config, split_head(random_weights(config, 3), None), backend=start)
    model(input_ids=np.arange(5, 261).reshape(1, 256))
print(settings.threading_layer(), os.environ.get("GOMP_SPINCOUNT", "unset"), flush=True)
if settings.threading_layer() == "omp":
    ctypes.CDLL("libgomp.so.1").omp_display_env(1)  # GNU OpenMP prints its settings to stderr
"""


def test_only_settings_calls_numbas_thread_count_functions():
    """numba.get_num_threads/set_num_threads start Numba's pool without the spin count: the package calls
    settings.get_num_threads/set_num_threads, which start it through _launch_pool."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: erniem_np/ and kernels/
    sources = [os.path.join(d, n) for top in ("erniem_np", "kernels") for d, _, names in os.walk(os.path.join(root, top))
               for n in names if n.endswith(".py") and not (top == "kernels" and n == "settings.py")]  # fmt: skip
    assert len(sources) > 20
    offenders = []
    for path in sources:
        with open(path, encoding="utf-8") as f:
            if re.search(r"numba\.(get|set)_num_threads\(", f.read()):
                offenders.append(os.path.relpath(path, root))
    assert not offenders


@pytest.mark.skipif(NO_JIT, reason="no thread pool without the JIT")
@pytest.mark.parametrize(("start", "user_env", "spin_count"), [
    ("numba", {}, str(ksettings.POOL_SPIN_COUNT)),
    ("int8", {}, str(ksettings.POOL_SPIN_COUNT)),
    ("set_num_threads", {}, str(ksettings.POOL_SPIN_COUNT)),
    ("numba", {"GOMP_SPINCOUNT": "1234"}, "1234"),
    ("numba", {"OMP_WAIT_POLICY": "passive"}, "0"),
])  # fmt: skip
def test_the_pool_spins_2_to_the_20_unless_the_user_set_the_wait(start, user_env, spin_count):
    """GNU OpenMP's pool, however erniem-np starts it (a forward pass on either Numba backend, or
    ``set_num_threads``), polls POOL_SPIN_COUNT times before sleeping; a spin variable the user set wins; the
    environment is as it was afterwards (GOMP_SPINCOUNT is set only for the launch)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    r = subprocess.run([sys.executable, "-c", _SPIN_PROBE, start], env=dict(env, **user_env), capture_output=True,
                       text=True, timeout=300, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    layer, env_after = r.stdout.split()
    assert env_after == user_env.get("GOMP_SPINCOUNT", "unset")
    if layer != "omp":
        pytest.skip(f"Numba runs the {layer} layer here, not GNU OpenMP")
    if "GOMP_SPINCOUNT" not in r.stderr:
        pytest.skip("this GNU OpenMP's omp_display_env does not show its spin count")
    assert re.search(r"GOMP_SPINCOUNT = '(\d+)'", r.stderr).group(1) == spin_count, r.stderr
