"""The int8 backend's attention with bfloat16 products (kernels/attention.py, "bfloat16 products"): the rounding
to bfloat16, the register tile against its NumPy twin bit for bit, the kernel against ``attention_bf16_ref``,
and the int8 model's switch between bfloat16 and float32 products."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from erniem_np.kernels import attention
from erniem_np.kernels import settings as ksettings
from hypothesis import given, settings
from hypothesis import strategies as st

from erniem_np import ErnieMConfig, ErnieMModel, quantized

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"  # the kernels run as Python: fewer cases
SETTINGS = settings(max_examples=8 if NO_JIT else 40, deadline=None, derandomize=True)
FMIN = np.finfo(np.float32).min
needs_bf16 = pytest.mark.skipif(not attention.bf16_supported(), reason="this CPU has no AVX512_BF16")
to_bf16 = numba.njit(lambda x: attention.to_bf16(x))


def _round_by_hand(x):
    """Nearest bfloat16 to a finite float32 (ties to even), worked out on the real numbers: the float64 value
    with the 16 low bits of the float32 cleared or rounded up, compared by distance."""
    bits = np.float32(x).view(np.uint32)
    down = np.uint32(bits & 0xFFFF0000)
    up = np.uint32(down + 0x10000)
    xd = float(np.float32(x))
    lo, hi = float(down.view(np.float32)), float(up.view(np.float32)) if (up >> 23) & 0xFF != 0xFF else np.inf
    if abs(hi - xd) < abs(xd - lo) or (abs(hi - xd) == abs(xd - lo) and (up >> 16) & 1 == 0):
        return np.uint16(up >> 16)
    return np.uint16(down >> 16)


@SETTINGS
@given(bits=st.integers(0, 2**32 - 1))
def test_bf16_rounding_is_nearest_ties_to_even_compiled_and_twin(bits):
    """Any float32 bit pattern: the twin ``bf16_bits`` and the compiled ``to_bf16`` give the same bits; for a
    finite value the nearest bfloat16 (ties to even, overflowing to inf as IEEE rounding does), for inf itself,
    for a NaN a NaN."""
    x = np.uint32(bits).view(np.float32)
    twin = attention.bf16_bits(np.array([x]))[0]
    assert to_bf16(x) == twin
    y = attention.bf16_float(twin)
    if np.isnan(x):
        assert np.isnan(y)
    elif np.isinf(x):
        assert y == x
    else:
        assert twin == _round_by_hand(x)


def test_bf16_rounding_ties_and_exact_values():
    ones = np.float32([1.0, -2.5, 2.0**127, -0.0, 2.0**-133])  # exactly representable in bfloat16: unchanged
    assert np.array_equal(attention.bf16_float(attention.bf16_bits(ones)).view(np.uint32), ones.view(np.uint32))
    tie_even = np.uint32([0x3F808000]).view(np.float32)  # halfway between 0x3F80 and 0x3F81: to 0x3F80
    tie_odd = np.uint32([0x3F818000]).view(np.float32)  # halfway between 0x3F81 and 0x3F82: to 0x3F82
    assert attention.bf16_bits(tie_even)[0] == 0x3F80 and to_bf16(tie_even[0]) == 0x3F80
    assert attention.bf16_bits(tie_odd)[0] == 0x3F82 and to_bf16(tie_odd[0]) == 0x3F82
    big = np.uint32([0x7F7FFFFF]).view(np.float32)  # float32 max rounds up to inf
    assert attention.bf16_bits(big)[0] == 0x7F80 and to_bf16(big[0]) == 0x7F80


@needs_bf16
@pytest.mark.parametrize("kp, nr", [(1, 6), (1, 1), (7, 6), (32, 4), (65, 5), (64, 6)])
def test_bf16_tile_equals_its_twin_bit_for_bit(kp, nr):
    """``vdpbf16ps`` against the twin's order (per pair: the high product, then the low, each sum rounded):
    equal bits on values of normal range, for short and odd K, a partial row block, and rows past nr that
    repeat the last valid one."""
    rng = np.random.default_rng(kp * 10 + nr)
    x = rng.standard_normal((9, 2 * kp)).astype(np.float32) * 3
    w = rng.standard_normal((kp, attention.BF16_COLS, 2)).astype(np.float32)
    xw = attention.bf16_bits(x)  # [9, 2 kp]: pairs of K side by side
    ww = attention.bf16_bits(w).reshape(kp, 2 * attention.BF16_COLS)  # [kp, 2 COLS]: column c's pair at 2c, 2c + 1
    tile = numba.njit(lambda x, i0, nr, kp, p, c: attention.bf16_tile(x, i0, nr, kp, p, c))
    c_kernel = np.full((attention.BF16_ROWS, attention.BF16_COLS), np.nan, np.float32)
    c_twin = c_kernel.copy()
    tile(xw, 2, nr, kp, ww, c_kernel)
    attention.bf16_tile(xw, 2, nr, kp, ww, c_twin)
    np.testing.assert_array_equal(c_kernel, c_twin)
    exact = attention.bf16_float(attention.bf16_bits(x)).astype(np.float64)[2 : 2 + nr] @ \
        attention.bf16_float(attention.bf16_bits(w)).astype(np.float64).reshape(kp, -1, 2).transpose(0, 2, 1) \
        .reshape(2 * kp, -1)  # fmt: skip
    np.testing.assert_allclose(c_kernel[:nr], exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    if nr < attention.BF16_ROWS:
        np.testing.assert_array_equal(c_kernel[nr:], np.broadcast_to(c_kernel[nr - 1], c_kernel[nr:].shape))


def _inputs(rng, B, L, P, nh, d, mask_kind):
    Lk, H = L + P, nh * d
    q, k, v = (rng.standard_normal((B, n, H)).astype(np.float32) * 2 for n in (L, Lk, Lk))
    mask = None
    if mask_kind == "2d":
        mask = np.where(rng.random((B, 1, 1, Lk)) < 0.3, np.float32(-1e4), np.float32(0))
    elif mask_kind == "4d":
        mask = np.where(rng.random((B, nh, L, Lk)) < 0.3, FMIN, np.float32(0))
    elif mask_kind == "hf_full_row":
        mask = np.full((B, 1, 1, Lk), FMIN, np.float32)
    return q, k, v, mask


def _check_against_twin(q, k, v, nh, mask, hm, scaling, what):
    """The kernel's probabilities against the twin's (the scores use the same bfloat16 q and k; only the float32
    sums and the exp differ), and its context against the kernel's own probabilities rounded to bfloat16 times
    the rounded v, summed exactly: a probability a few float32 ulps from the twin's may round to the
    neighbouring bfloat16, so the twin's context can differ by up to one bfloat16 step of a probability."""
    ctx, probs = attention.attention(q, k, v, nh, mask, hm, scaling, True, products="bf16")
    _, probs_r = attention.attention_ref(q, k, v, nh, mask, hm, scaling, True, products="bf16")
    assert ctx.dtype == probs.dtype == np.float32 and probs.shape == probs_r.shape, what
    np.testing.assert_allclose(probs, probs_r, rtol=1e-5, atol=1e-6, err_msg=what + " probs")
    B, Lk, H = v.shape
    v16 = attention.bf16_float(attention.bf16_bits(v)).astype(np.float64).reshape(B, Lk, nh, H // nh)
    p16 = attention.bf16_float(attention.bf16_bits(probs)).astype(np.float64)  # [B, nh, L, Lk]
    expected = np.einsum("bhij,bjhd->bihd", p16, v16).reshape(ctx.shape)
    np.testing.assert_allclose(ctx, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max(initial=0))),
                               err_msg=what + " context")  # fmt: skip
    return ctx, probs


@needs_bf16
@SETTINGS
@given(B=st.integers(0, 3), L=st.integers(1, 9), P=st.integers(0, 4), nh=st.integers(1, 3), d=st.integers(1, 9),
       seed=st.integers(0, 99), mask_kind=st.sampled_from(["none", "2d", "4d", "hf_full_row"]),
       scaling=st.sampled_from(["hf", "paddle"]), head_mask=st.booleans(), need_probs=st.booleans())  # fmt: skip
def test_bf16_attention_matches_its_twin(B, L, P, nh, d, seed, mask_kind, scaling, head_mask, need_probs):
    rng = np.random.default_rng(seed)
    q, k, v, mask = _inputs(rng, B, L, P, nh, d, mask_kind)
    hm = rng.random(nh).astype(np.float32) if head_mask else None
    what = f"bf16 attention B={B} L={L} P={P} nh={nh} d={d} {mask_kind} {scaling}"
    ctx, _ = _check_against_twin(q, k, v, nh, mask, hm, scaling, what)
    ctx2, probs2 = attention.attention(q, k, v, nh, mask, hm, scaling, need_probs, products="bf16")
    np.testing.assert_array_equal(ctx2, ctx)  # need_probs changes nothing else
    assert (probs2 is None) == (not need_probs)


@needs_bf16
@pytest.mark.parametrize("scaling", ["hf", "paddle"])
def test_bf16_attention_parallel_kernel_several_panels(scaling, monkeypatch):
    """Above SERIAL_BELOW_FLOPS (the prange kernel runs): several 32-key panels with a partial one (Lk = 80), an
    odd number of keys, two value panels with a partial one (d = 40), query blocks with a remainder, past keys,
    a head mask; against the twin, and within bfloat16's error of float32 attention."""
    calls = []
    kernel = attention._attention_bf16
    monkeypatch.setattr(attention, "_attention_bf16", lambda *a: calls.append(1) or kernel(*a))
    B, L, P, nh, d = 2, 75, 6, 3, 40
    assert 4 * B * L * (L + P) * nh * d >= ksettings.SERIAL_BELOW_FLOPS
    rng = np.random.default_rng(5)
    q, k, v, mask = _inputs(rng, B, L, P, nh, d, "2d")
    hm = rng.random(nh).astype(np.float32)
    ctx, probs = _check_against_twin(q, k, v, nh, mask, hm, scaling, f"parallel bf16 attention {scaling}")
    assert calls, "the parallel kernel did not run"
    assert np.all(probs[np.broadcast_to(mask != 0, probs.shape)] == 0)  # masked keys: exactly 0
    ctx32, _ = attention.attention_ref(q, k, v, nh, mask, hm, scaling)
    rel = np.linalg.norm(ctx - ctx32) / np.linalg.norm(ctx32)
    assert 1e-4 < rel < 1e-2, f"bf16 products should move the context by bfloat16's step, not {rel:.2e}"


@needs_bf16
def test_bf16_attention_nan_query_makes_its_row_nan():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 5, 8)).astype(np.float32) for _ in range(3))
    q[0, 2, 1] = np.nan
    ctx, probs = attention.attention(q, k, v, 2, None, None, "hf", True, products="bf16")
    ctx_r, _ = attention.attention_ref(q, k, v, 2, None, None, "hf", True, products="bf16")
    np.testing.assert_array_equal(np.isnan(ctx), np.isnan(ctx_r))
    assert np.isnan(probs[0, 0, 2]).all() and not np.isnan(probs[0, 1]).any()


def test_bf16_products_refused_where_the_cpu_lacks_them(monkeypatch):
    q = np.ones((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="products must be"):
        attention.attention(q, q, q, 1, products="int8")
    monkeypatch.setattr(attention, "bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="AVX512_BF16"):
        attention.attention(q, q, q, 1, products="bf16")
    monkeypatch.delenv("ERNIEM_NP_INT8_ATTENTION", raising=False)
    assert quantized.attention_products() == "float32"


def test_int8_attention_switch(monkeypatch):
    """``ERNIEM_NP_INT8_ATTENTION`` chooses the int8 model's attention products: float32 gives exactly the
    float32 kernel's numbers, bf16 (where the CPU has it) numbers within bfloat16's error of them; any other
    value is refused by name."""
    cfg = ErnieMConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128, max_position_embeddings=40)  # fmt: skip
    model = ErnieMModel(cfg, backend="int8", seed=0)
    ids = np.random.default_rng(0).integers(3, 50, (2, 17))
    monkeypatch.setenv("ERNIEM_NP_INT8_ATTENTION", "float32")
    out32 = model(ids).last_hidden_state
    calls = []
    kernel = attention.attention
    monkeypatch.setattr(attention, "attention", lambda *a, **kw: calls.append(kw["products"]) or kernel(*a, **kw))
    assert np.array_equal(model(ids).last_hidden_state, out32) and set(calls) == {"float32"}
    if attention.bf16_supported():
        monkeypatch.setenv("ERNIEM_NP_INT8_ATTENTION", "bf16")
        out16 = model(ids).last_hidden_state
        assert calls[-1] == "bf16"
        assert 0 < np.abs(out16 - out32).max() < 0.1
    monkeypatch.setenv("ERNIEM_NP_INT8_ATTENTION", "fp8")
    with pytest.raises(ValueError, match="ERNIEM_NP_INT8_ATTENTION"):
        model(ids)


def test_bf16_attention_passes_without_jit():
    """The same tests with NUMBA_DISABLE_JIT=1: the kernel runs as Python, on the NumPy twins of the tile and
    of the rounding."""
    if NO_JIT:
        pytest.skip("already without the JIT")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                        "-k", "not without_jit"],
                       env=env, capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
