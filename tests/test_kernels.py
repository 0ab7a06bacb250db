"""Every Numba kernel against its NumPy twin, over awkward shapes, both float dtypes and non-finite inputs.

These tests also run with NUMBA_DISABLE_JIT=1 (test_kernels_pass_without_jit does that in a subprocess).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erniem_np.kernels import attention, gemm, norm, settings as ksettings

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
dtypes = st.sampled_from([np.float32, np.float64])


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
def test_micro_tile_matches_its_twin(dtype, nc, kc):
    rng = np.random.default_rng(nc * 100 + kc)
    w = rng.standard_normal((9, 60)).astype(dtype)
    panel = rng.standard_normal((64, gemm.TILE_ROWS)).astype(dtype)
    j0, k0 = 9 - nc, 60 - kc  # the strip ends at the last row of w, the K slice at its last column
    c = np.full((gemm.TILE_COLS, gemm.TILE_ROWS), np.nan, dtype)
    numba.njit(lambda *a: gemm.micro_tile(*a))(w, j0, nc, k0, kc, panel, c)
    rows = np.minimum(np.arange(gemm.TILE_COLS), nc - 1) + j0  # rows past nc repeat the last valid one
    expected = w[rows, k0:].astype(np.float64) @ panel[:kc].astype(np.float64)
    _close(c, expected.astype(dtype), dtype, f"micro_tile nc={nc} kc={kc}")


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no machine code without the JIT")
def test_micro_tile_compiles_to_packed_fma():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    if " avx2 " not in flags or " fma " not in flags:
        pytest.skip("the check is written for AVX2 with FMA")
    tile = numba.njit(cache=False)(lambda *a: gemm.micro_tile(*a))
    w = np.ones((6, 8), np.float32)
    tile(w, 0, 6, 0, 8, np.ones((8, gemm.TILE_ROWS), np.float32), np.empty((6, gemm.TILE_ROWS), np.float32))
    asm = tile.inspect_asm(tile.signatures[0])
    fmas = [line for line in asm.splitlines() if "vfmadd" in line and "ps" in line and "%ymm" in line]
    assert len(fmas) >= 12, f"expected the 12 ymm FMAs of the 6 x 16 tile, found {len(fmas)}:\n" + "\n".join(fmas)


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


# ------------------------------------------------------------------------------------------------ norm, GELU
@SETTINGS
@given(M=st.integers(0, 9), H=st.integers(1, 70), dtype=dtypes, seed=st.integers(0, 99), residual=st.booleans())
def test_layer_norm_matches_twin(M, H, dtype, seed, residual):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((M, H)) * 3 + 1).astype(dtype)
    r = rng.standard_normal((M, H)).astype(dtype) if residual else None
    w, b = rng.standard_normal(H).astype(dtype), rng.standard_normal(H).astype(dtype)
    _close(norm.layer_norm(x, w, b, 1e-5, r), norm.layer_norm_ref(x, w, b, 1e-5, r), dtype, f"layer_norm {M}x{H}")


def test_layer_norm_non_finite_rows():
    x = np.array([[1.0, np.nan, 2.0], [np.inf, 1.0, 0.5], [1.0, 2.0, 3.0]], np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    out, ref = norm.layer_norm(x, w, b, 1e-5), norm.layer_norm_ref(x, w, b, 1e-5)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out[2], ref[2], rtol=1e-6)


def test_gelu_within_1e6_of_exact_gelu_over_float32():
    # every 64th float32 in [0, 10] and its negative (20 million values), plus the extremes
    pos = np.arange(0, np.float32(10).view(np.int32) + 1, 64, dtype=np.int32).view(np.float32)
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
    exp_shifted = numba.njit(lambda r, n, m, s: attention.exp_shifted(r, n, m, s))
    grid = np.round(np.linspace(-90, 0, 200_001) * 1024) / 1024  # x + m and back are exact in float32
    x = np.concatenate([grid, [-np.inf, np.finfo(np.float32).min, -1e4, np.nan, -0.0]]).astype(dtype)
    m = dtype(1.5)
    row = x + m
    exp_shifted(row, len(row) - 1, m, np.empty(len(row), np.int32))  # the last value must stay as it is
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
    exp_shifted = numba.njit(cache=False)(lambda r, n, m, s: attention.exp_shifted(r, n, m, s))
    exp_shifted(np.zeros(64, np.float32), 64, np.float32(0), np.empty(64, np.int32))
    asm = exp_shifted.inspect_asm(exp_shifted.signatures[0])
    assert re.search(r"vcvttps2dq\s+%ymm", asm), "2^n is not computed on 8 float32 lanes"
    assert len(re.findall(r"vfmadd\w+ps\s+%ymm", asm)) >= 6, "the polynomial is not evaluated on ymm float32 lanes"
    assert not re.search(r"\bvcvtps2pd\b", asm), "the polynomial is widened to float64"


# ------------------------------------------------------------------------------------------------ settings
def test_threading_layer_is_thread_safe_or_serialised():
    assert ksettings.THREADING_LAYER in ("omp", "tbb", "workqueue", "threadsafe", "safe", "forksafe", "default")
    if ksettings.THREADING_LAYER == "workqueue":
        assert not ksettings.THREAD_SAFE  # then the model serialises calls with kernel_lock


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


def test_cache_dir_falls_back_when_the_package_is_read_only(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(ksettings.os, "access", lambda path, mode: str(path).startswith(str(tmp_path)))
    assert ksettings._choose_cache_dir() == os.path.join(str(tmp_path), "erniem-np", "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere")
    assert ksettings._choose_cache_dir() is None  # the user's choice wins


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
