"""The int8 path: the kernel against its exact integer twin on every instruction set this CPU has, the sums
that could saturate, the quantizers, and an int8 model built, saved and loaded again."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from erniem_np.kernels import qgemm

from erniem_np import ErnieMConfig
from erniem_np.model import ErnieMForSequenceClassification, ErnieMModel

ISAS = qgemm.supported_isas()
needs_int8_cpu = pytest.mark.skipif(not ISAS, reason="this CPU has no AVX2 or VNNI")
SHAPES = [(1, 1, 1), (1, 3, 5), (5, 33, 7), (7, 2, 33), (17, 770, 70), (9, 4, 64), (130, 768, 97)]


def _data(M, K, N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K)).astype(np.float32) * rng.uniform(0.1, 10, (M, 1)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    return x, w, b


@needs_int8_cpu
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_sums_equal_the_integer_twin_bit_for_bit(isa, shape):
    M, K, N = shape
    x, w, _ = _data(M, K, N)
    weight = qgemm.PackedInt8.quantize(w, isa=isa)
    xq, _, zx = qgemm.quantize_rows_ref(x)
    expected = qgemm.qmatmul_ref(xq, zx, weight.q)
    got = qgemm.qlinear(x, weight, raw=True)
    assert got.dtype == np.float64 and np.array_equal(got, expected)


@needs_int8_cpu
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("epilogue", ["bias", "gelu", "residual"])
def test_kernel_epilogues_match_the_twin(isa, epilogue):
    M, K, N = 37, 96, 173  # whole strips of 64 (and of 16) columns, then a narrower one
    x, w, b = _data(M, K, N, seed=1)
    residual = np.random.default_rng(2).standard_normal((M, N)).astype(np.float32)
    weight = qgemm.PackedInt8.quantize(w, isa=isa)
    kwargs = {"gelu": {"activation": "gelu"}, "residual": {"residual": residual}}.get(epilogue, {})
    got = qgemm.qlinear(x, weight, b, **kwargs)
    ref = qgemm.qlinear_ref(x, weight.q, weight.scale, b, **kwargs)
    # the same integer sums; float32 epilogues differ by contraction into FMA and GELU's rational erf
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())


@needs_int8_cpu
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("add_res", [False, True])
def test_the_register_epilogue_equals_its_twin(isa, add_res):
    from numba import njit

    info = qgemm.ISAS[isa]
    M, K, N = 11, 70, 2 * info.COLS
    x, w, b = _data(M, K, N, seed=3)
    weight = qgemm.PackedInt8.quantize(w, isa=isa)
    xq, sx, zx = qgemm.quantize_rows(x, info)
    bias = np.zeros_like(weight.strip_scale)
    bias[:N] = b
    res = np.random.default_rng(4).standard_normal((M + 3, N + info.COLS)).astype(np.float32)
    args = (weight.packed, 1, weight.packed.shape[1])  # strip 1
    tails = (zx, sx, weight.strip_colsum, weight.strip_scale, bias, res, add_res, qgemm.ISA_CODES[isa])
    call = njit(lambda xq, i0, nr, wp, s, kg, y, yi, yj, *t: qgemm.dequant_tile(xq, i0, nr, wp, s, kg, y, yi, yj, *t))
    for i0, nr in ((0, info.ROWS), (6, 5), (7, 4), (8, 3), (9, 2), (10, 1)):  # whole, and each shorter form
        got = np.full((M + 3, N + info.COLS), 7.0, np.float32)
        want = got.copy()
        call(xq, i0, nr, *args, got, i0 + 2, 5, *tails)  # into rows i0 + 2.., columns 5..
        qgemm.dequant_tile(xq, i0, nr, *args, want, i0 + 2, 5, *tails)  # the NumPy twin
        assert np.sum(got != 7.0) == np.sum(want != 7.0) == nr * info.COLS  # nothing outside the tile's rows
        ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
        assert ulps.max() <= 1 and np.mean(ulps == 0) > 0.99  # the twin's float64 sum can round twice


@needs_int8_cpu
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("epilogue", ["bias", "gelu", "residual"])
def test_a_narrower_last_strip_gives_the_bits_of_a_whole_one(isa, epilogue):
    cols = qgemm.ISAS[isa].COLS
    M, K, n = 13, 50, cols // 2 + 3
    x, w, b = _data(M, K, cols, seed=5)
    residual = np.random.default_rng(6).standard_normal((M, cols)).astype(np.float32)
    whole = qgemm.PackedInt8.quantize(w, isa=isa)
    part = qgemm.PackedInt8(whole.q[:n], whole.scale[:n], isa=isa)
    kw = {"gelu": ({"activation": "gelu"},) * 2, "residual": ({"residual": residual}, {"residual": residual[:, :n]})}
    kw_whole, kw_part = kw.get(epilogue, ({}, {}))
    np.testing.assert_array_equal(qgemm.qlinear(x, part, b[:n], **kw_part), qgemm.qlinear(x, whole, b, **kw_whole)[:, :n])


@needs_int8_cpu
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("epilogue", [qgemm.EPILOGUE_BIAS, qgemm.EPILOGUE_GELU, qgemm.EPILOGUE_RESIDUAL])
def test_rows_split_into_blocks_give_the_bits_of_one_sweep(isa, epilogue):
    """The kernel's row blocks (one per thread on long inputs, so each thread computes whole rows) change
    which task computes a row, not its bits: block edges that cut a tile, more blocks than tiles, both kernels."""
    info = qgemm.ISAS[isa]
    M, K, N = 37, 96, 173
    x, w, b = _data(M, K, N, seed=7)
    weight = qgemm.PackedInt8.quantize(w, isa=isa)
    xq, sx, zx = qgemm.quantize_rows(x, info)
    bias = np.zeros_like(weight.strip_scale)
    bias[:N] = b
    residual = np.random.default_rng(8).standard_normal((M, N)).astype(np.float32)
    results = []
    for kernel in (qgemm._qgemm, qgemm._qgemm_serial):
        for blocks in (1, 2, 3, 8):
            out = np.full((M, N), np.nan, np.float32)
            kernel(xq, sx, zx, (weight.packed,), (weight.strip_colsum,), (weight.strip_scale,), qgemm._readonly((bias,)),
                   residual, (out,), epilogue, info.ROWS, info.COLS, qgemm.ISA_CODES[isa], blocks)  # fmt: skip
            results.append(out)
    assert not np.isnan(results[0]).any()
    for out in results[1:]:
        np.testing.assert_array_equal(out, results[0])


@needs_int8_cpu
@pytest.mark.parametrize("isa", ISAS)
def test_the_extreme_sums_do_not_saturate(isa):
    """Codes 255 against weights +-127 at K = 4099: every pair, quad and total at its largest magnitude.
    A u8 x s8 pair summed in int16 (vpmaddubsw) would clip 2 * 255 * 127 = 64,770 to 32,767."""
    K = 4099
    w = np.stack([np.full(K, 1.0), np.full(K, -1.0), np.where(np.arange(K) % 2, 1.0, -1.0)]).astype(np.float32)
    x = np.stack([np.full(K, 5.0), np.where(np.arange(K) % 2, 5.0, -5.0), np.full(K, -3.0)]).astype(np.float32)
    weight = qgemm.PackedInt8.quantize(w, isa=isa)
    assert set(np.unique(weight.q)) <= {-127, 127}
    xq, _, zx = qgemm.quantize_rows_ref(x)
    assert xq.max() == 255
    got = qgemm.qlinear(x, weight, raw=True)
    expected = qgemm.qmatmul_ref(xq, zx, weight.q)
    assert np.array_equal(got, expected)
    assert np.abs(expected).max() >= 255 * 127 * K // 2  # the test reaches the magnitudes it claims


def test_the_kernel_refuses_a_k_whose_sums_could_overflow():
    with pytest.raises(ValueError, match="at most"):
        qgemm.PackedInt8(np.zeros((2, qgemm.MAX_K + 1), np.int8), np.ones(2, np.float32), isa=None)


@needs_int8_cpu
def test_row_quantizer_equals_its_twin_on_awkward_rows():
    isa = qgemm.ISAS[ISAS[0]]
    rows = [np.zeros(7), np.full(7, 3.5), np.full(7, -2.0), np.array([0, 1e-30, -1e-30, 5, -5, 2.5, -2.5]),
            np.array([np.nan, 1, 2, 3, 4, 5, 6]), np.array([np.inf, 1, 2, 3, 4, 5, 6]),
            np.array([-0.17, 0.0, 3.0, 100.0, -0.01, 0.5, 7.0]), np.array([3.4e38, -3.4e38, 0, 1, 2, 3, 4])]  # fmt: skip
    x = np.array(rows, dtype=np.float32)
    xq, sx, zx = qgemm.quantize_rows(x, isa)
    rq, rs, rz = qgemm.quantize_rows_ref(x)
    assert np.array_equal(xq[:, :7].astype(np.int64), rq.astype(np.int64))
    assert not xq[:, 7:].any()  # the padding to the group size is zero
    np.testing.assert_array_equal(sx, rs)  # NaN where the row is not finite, in both
    assert np.array_equal(zx, rz)
    assert np.isnan(sx[4]) and np.isnan(sx[5]) and np.isnan(sx[7])


@needs_int8_cpu
def test_row_quantizer_reads_float64_as_float32():
    """quantize_rows reads the float32 bits: a float64 array is converted first, not read as halves."""
    x = np.random.default_rng(0).standard_normal((4, 8))
    xq, sx, zx = qgemm.quantize_rows(x, qgemm.ISAS[ISAS[0]])
    rq, rs, rz = qgemm.quantize_rows_ref(x)
    assert np.array_equal(xq[:, :8].astype(np.int64), rq.astype(np.int64))
    np.testing.assert_array_equal(sx, rs)
    assert np.array_equal(zx, rz)


FRESH_OR_CACHED = """
import sys, numpy as np
from erniem_np.kernels import qgemm, settings
rng = np.random.default_rng(0)
x, r = rng.standard_normal((1035, 64)).astype(np.float32), rng.standard_normal((1035, 128)).astype(np.float32)
w, b = qgemm.PackedInt8.quantize(rng.standard_normal((128, 64)).astype(np.float32)), rng.standard_normal(128).astype(np.float32)
settings.SERIAL_BELOW_FLOPS = 0  # the parallel kernel
np.save(sys.argv[1], np.stack([qgemm.qlinear(x, w, b), qgemm.qlinear(x, w, b, activation="gelu"),
                               qgemm.qlinear(x, w, b, residual=r)]))
"""


@needs_int8_cpu
def test_a_kernel_loaded_from_the_cache_rounds_as_the_one_compiled(tmp_path):
    """The parallel int8 GEMM compiled in a process and the same kernel loaded from the cache by the next one
    give the same bits, for each epilogue. (With the epilogue in one expression, the fast-math flags let each
    compilation pick its own rounding order, and these two differed by up to 3.8e-6.)"""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    env = dict(os.environ, ERNIEM_NP_CACHE_DIR=str(cache))
    for run in ("compiled", "cached"):
        r = subprocess.run([sys.executable, "-c", FRESH_OR_CACHED, str(tmp_path / run)], env=env,
                           capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
    assert any(cache.rglob("*.nbi")), "nothing was cached: the second run compiled again"
    compiled, cached = np.load(tmp_path / "compiled.npy"), np.load(tmp_path / "cached.npy")
    assert np.array_equal(compiled, cached), f"max |difference| {np.abs(compiled - cached).max():.3g}"




def test_an_int8_weight_survives_pickling_read_only():
    """As the float packed weight: an unpickled PackedInt8 is read-only again and computes the same."""
    import pickle

    w = qgemm.PackedInt8.quantize(np.random.default_rng(7).standard_normal((70, 9)).astype(np.float32))
    copy = pickle.loads(pickle.dumps(w))
    arrays = (copy.scale, copy.colsum) + (() if copy.packed is None else (copy.packed,))
    assert not any(a.flags.writeable for a in arrays)
    x = np.ones((4, 9), np.float32)
    np.testing.assert_array_equal(qgemm.qlinear(x, copy), qgemm.qlinear(x, w))


@needs_int8_cpu
def test_the_kernel_bias_a_weight_keeps_follows_its_bias():
    """A weight keeps the read-only view of the bias it was last called with (``_kernel_bias``): the next call
    with that bias sees an edit made in place, a call with another bias array uses that one, and a pickled
    weight leaves the view behind. N = 64, a multiple of every instruction set's strip: the bias is viewed,
    not copied."""
    import pickle

    rng = np.random.default_rng(8)
    w = qgemm.PackedInt8.quantize(rng.standard_normal((64, 32)).astype(np.float32))
    x = rng.standard_normal((5, 32)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    first = qgemm.qlinear(x, w, bias)
    assert w._bias_view is not None and w._bias_view[0] is bias
    bias += 1  # in place: the view the weight keeps sees it
    np.testing.assert_allclose(qgemm.qlinear(x, w, bias), first + 1, rtol=1e-6, atol=1e-5)
    other = np.zeros(64, np.float32)
    np.testing.assert_allclose(qgemm.qlinear(x, w, other), first - bias + 1, rtol=1e-5, atol=1e-5)
    assert w._bias_view[0] is other
    assert "_bias_view" not in pickle.loads(pickle.dumps(w)).__dict__


@pytest.mark.skipif(len(ISAS) < 2, reason="the CPU runs one int8 instruction set")
def test_weights_packed_for_different_instruction_sets_in_one_call():
    """qlinear_many with weights packed for two instruction sets (PackedInt8(..., isa=...)) runs each set's
    kernel on x quantized for it: both results equal the exact integer product."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 96)).astype(np.float32)
    a, b = (qgemm.PackedInt8.quantize(rng.standard_normal((65, 96)).astype(np.float32), isa=n) for n in ISAS[:2])
    for first, second in ((a, b), (b, a)):
        y1, y2 = qgemm.qlinear_many(x, [(first, None), (second, None)])
        for y, w in ((y1, first), (y2, second)):
            np.testing.assert_allclose(y, qgemm.qlinear_ref(x, w.q, w.scale), rtol=1e-5, atol=1e-5)


def test_weight_quantizer_is_symmetric_per_row_and_refuses_nan():
    w = np.array([[0.0, 0.0], [1.0, -2.0], [-0.5, 0.25]], np.float32)
    q, s = qgemm.quantize_weight(w)
    assert q.dtype == np.int8 and q.tolist() == [[0, 0], [64, -127], [-127, 64]]
    np.testing.assert_allclose(s, [1.0, 2.0 / 127, 0.5 / 127], rtol=1e-7)
    with pytest.raises(ValueError, match="NaN"):
        qgemm.quantize_weight(np.array([[np.nan, 1.0]], np.float32))


def test_without_int8_instructions_the_numpy_twin_runs():
    x, w, b = _data(6, 10, 4)
    weight = qgemm.PackedInt8(*qgemm.quantize_weight(w), isa=None)
    assert weight.packed is None
    assert np.array_equal(qgemm.qlinear(x, weight, b), qgemm.qlinear_ref(x, weight.q, weight.scale, b))


def test_the_isa_can_be_named_and_a_missing_one_is_refused(monkeypatch):
    monkeypatch.setattr(qgemm, "_chosen", [])
    monkeypatch.setenv("ERNIEM_NP_INT8_ISA", "sse2")
    with pytest.raises(ValueError, match="must be one of"):
        qgemm.int8_isa()
    monkeypatch.setattr(qgemm, "supported_isas", lambda: ["avx2"])
    monkeypatch.setenv("ERNIEM_NP_INT8_ISA", "vnni512")
    with pytest.raises(ValueError, match="lacks it"):
        qgemm.int8_isa()
    monkeypatch.setattr(qgemm, "supported_isas", list)
    monkeypatch.delenv("ERNIEM_NP_INT8_ISA")
    with pytest.warns(qgemm.Int8FallbackWarning):
        assert qgemm.int8_isa() is None


# ------------------------------------------------------------------------------------------------ the model
CONFIG = ErnieMConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, num_labels=3)  # fmt: skip


def _ids(seed=0):
    ids = np.random.default_rng(seed).integers(3, 300, (3, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


@needs_int8_cpu
def test_an_int8_model_stays_close_to_float32():
    ref = ErnieMForSequenceClassification(CONFIG, seed=3)
    q = ErnieMForSequenceClassification(CONFIG, ref.state_dict(), backend="int8")
    ids, mask = _ids()
    a = ref(ids, attention_mask=mask)
    b = q(ids, attention_mask=mask)
    h_ref, h_q = ref.encode(ids, attention_mask=mask).last_hidden_state, q.encode(ids, attention_mask=mask).last_hidden_state
    cos = (h_ref * h_q).sum(-1) / np.linalg.norm(h_ref, axis=-1) / np.linalg.norm(h_q, axis=-1)
    assert cos.min() > 0.999
    assert np.abs(a.logits - b.logits).max() < 0.05 * np.abs(a.logits).max()
    assert not np.array_equal(a.logits, b.logits)  # it really ran the int8 layers


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_the_feed_forward_in_blocks_of_rows_gives_the_bits_of_one_pass(activation, monkeypatch):
    """The int8 FFN runs in blocks of FFN_ROWS rows (to bound its [rows, F] intermediate): each row is quantized
    and normalised on its own, so 33 rows in blocks of 5 (a short last one) equal one block, bit for bit."""
    from erniem_np import quantized

    model = ErnieMModel(dataclasses.replace(CONFIG, hidden_act=activation), seed=5, backend="int8")
    ids = np.random.default_rng(1).integers(3, 300, (3, 11))
    whole = model(ids).last_hidden_state
    monkeypatch.setattr(quantized, "FFN_ROWS", 5)
    assert np.array_equal(model(ids).last_hidden_state, whole)


def test_qlinear_writes_into_a_given_out():
    """``out=`` receives the same values a new array would, is what comes back (shaped like the input's rows),
    and is refused when it is not a C-contiguous float32 array of M x N values, or for the float64 raw sums."""
    rng = np.random.default_rng(4)
    w = qgemm.PackedInt8.quantize(rng.standard_normal((7, 12)).astype(np.float32))
    x, b = rng.standard_normal((2, 5, 12)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    out = np.full(70, np.nan, np.float32)
    got = qgemm.qlinear(x, w, b, activation="gelu", out=out)
    assert got.shape == (2, 5, 7) and np.shares_memory(got, out)
    np.testing.assert_array_equal(got, qgemm.qlinear(x, w, b, activation="gelu"))
    for bad in (np.empty(70, np.float64), np.empty(69, np.float32), np.empty((7, 20), np.float32)[:, ::2]):
        with pytest.raises(ValueError, match="out must be"):
            qgemm.qlinear(x, w, b, out=bad)
    with pytest.raises(ValueError, match="raw sums"):
        qgemm.qlinear(x, w, raw=True, out=out)


@needs_int8_cpu
@pytest.mark.parametrize("N", [128, 70])  # whole strips (the bias is read in place), and a narrower last one
def test_a_bias_in_any_form_gives_the_bits_of_a_float32_one_and_a_wrong_length_is_refused(N):
    """The kernel reads a float32 bias of whole strips where it lies and pads or converts any other; each form
    gives the same bits, the caller's bias is not written to, and a bias of the wrong length (also one
    of the padded length, when N is not whole strips) is refused as before."""
    rng = np.random.default_rng(5)
    w = qgemm.PackedInt8.quantize(rng.standard_normal((N, 40)).astype(np.float32))
    x, b = rng.standard_normal((9, 40)).astype(np.float32), rng.standard_normal(N).astype(np.float32)
    kept = b.copy()
    expected = qgemm.qlinear(x, w, b)
    assert np.array_equal(b, kept)
    for other in (b.astype(np.float64), list(b), np.repeat(b, 2)[::2]):
        np.testing.assert_array_equal(qgemm.qlinear(x, w, other), expected)
    (many,) = qgemm.qlinear_many(x, [(w, b)])
    np.testing.assert_array_equal(many, expected)
    padded = w.strip_scale.shape[0]
    for bad_length in {N + 1, N - 1, padded, 2 * padded} - {N}:
        with pytest.raises(ValueError):
            qgemm.qlinear(x, w, np.zeros(bad_length, np.float32))
    zero = qgemm.qlinear(x, w, np.zeros(N, np.float32))
    np.testing.assert_array_equal(qgemm.qlinear(x, w), zero)


def test_the_feed_forward_reuses_its_intermediate_buffer_per_thread():
    """The [rows, F] intermediate is one buffer per Python thread, grown when a longer batch needs it, reused
    by the next forward (a new one each layer was mapped and page-faulted in afresh); another thread gets its
    own, and reusing it changes no result."""
    import threading

    from erniem_np import quantized

    model = ErnieMModel(CONFIG, seed=5, backend="int8")
    ids = np.random.default_rng(1).integers(3, 300, (3, 11))
    quantized._ffn_local.__dict__.pop("buf", None)  # this thread's buffer as a fresh thread has it (none yet)
    first = model(ids).last_hidden_state
    buf = quantized._ffn_local.buf
    assert buf.size == 3 * 11 * CONFIG.intermediate_size
    assert np.array_equal(model(ids[:1]).last_hidden_state, first[:1]) and quantized._ffn_local.buf is buf
    np.testing.assert_array_equal(model(ids).last_hidden_state, first)
    assert quantized._ffn_local.buf is buf
    longer = np.random.default_rng(2).integers(3, 300, (4, 11))
    model(longer)
    assert quantized._ffn_local.buf.size == 4 * 11 * CONFIG.intermediate_size
    other = {}

    def in_another_thread():
        other["out"] = model(ids).last_hidden_state
        other["buf"] = quantized._ffn_local.buf

    t = threading.Thread(target=in_another_thread)
    t.start()
    t.join()
    assert other["buf"] is not quantized._ffn_local.buf
    np.testing.assert_array_equal(other["out"], first)


@needs_int8_cpu
def test_an_int8_model_saves_int8_and_loads_as_stored(tmp_path):
    q = ErnieMModel(ErnieMModel(CONFIG, seed=4).config, ErnieMModel(CONFIG, seed=4).state_dict(), backend="int8")
    q.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["quantization"] == "int8"
    loaded = ErnieMModel.from_pretrained(tmp_path)  # no argument: the config says int8
    assert loaded.backend == "int8"
    sd = loaded.state_dict()
    assert sd["encoder.layers.1.linear2.weight"].dtype == np.int8
    assert sd["embeddings.word_embeddings.weight_scale"].shape == (CONFIG.vocab_size,)
    ids, mask = _ids(1)
    assert np.array_equal(loaded(ids, attention_mask=mask).last_hidden_state,
                          q(ids, attention_mask=mask).last_hidden_state)  # fmt: skip
    with pytest.raises(ValueError, match="int8 checkpoint"):
        ErnieMModel.from_pretrained(tmp_path, backend="numba")


@needs_int8_cpu
def test_the_pooler_stays_float32_packed_at_load_with_the_numba_bits(tmp_path):
    from erniem_np.kernels.gemm import PackedWeight

    from erniem_np import fused

    ErnieMModel(CONFIG, seed=6).save_pretrained(tmp_path)
    q = ErnieMModel.from_pretrained(tmp_path, quantize="int8")  # mapped: the packed source's pages are released
    dense = q.params["pooler"]["dense"]
    assert isinstance(dense["weight"], PackedWeight)
    stored = ErnieMModel.from_pretrained(tmp_path, backend="numpy", mmap=False).state_dict()["pooler.dense.weight"]
    np.testing.assert_array_equal(q.state_dict()["pooler.dense.weight"], stored)
    ids, mask = _ids(3)
    out = q(ids, attention_mask=mask)
    want = fused.pooler(out.last_hidden_state, {"weight": stored, "bias": dense["bias"]})  # unpacked: same bits
    np.testing.assert_array_equal(out.pooler_output, want)


@needs_int8_cpu
def test_quantize_at_load_equals_quantizing_the_float_model(tmp_path):
    ref = ErnieMModel(CONFIG, seed=5)
    ref.save_pretrained(tmp_path)
    loaded = ErnieMModel.from_pretrained(tmp_path, quantize="int8")
    built = ErnieMModel(CONFIG, ref.state_dict(), backend="int8")
    ids, mask = _ids(2)
    assert loaded.backend == "int8"
    assert np.array_equal(loaded(ids, attention_mask=mask).last_hidden_state,
                          built(ids, attention_mask=mask).last_hidden_state)  # fmt: skip
    with pytest.raises(ValueError, match="quantize"):
        ErnieMModel.from_pretrained(tmp_path, quantize="int4")
    with pytest.raises(ValueError, match="cannot run on backend"):
        ErnieMModel.from_pretrained(tmp_path, quantize="int8", backend="numpy")


def test_an_int8_checkpoint_with_float_weights_is_refused(tmp_path):
    from erniem_np.checkpoints.safetensors_file import write_safetensors

    q = ErnieMModel(CONFIG, seed=6, backend="int8")
    q.save_pretrained(tmp_path)
    sd = dict(q.state_dict())
    sd["encoder.layers.0.linear1.weight"] = sd["encoder.layers.0.linear1.weight"].astype(np.float32)
    write_safetensors(os.path.join(tmp_path, "model.safetensors"), sd, metadata={"format": "pt"})
    with pytest.raises(TypeError, match="encoder.layers.0.linear1.weight has dtype float32"):
        ErnieMModel.from_pretrained(tmp_path)


def test_the_int8_layers_compute_in_float32_only():
    with pytest.raises(ValueError, match="float32"):
        ErnieMModel(CONFIG, seed=0, dtype=np.float64, backend="int8")


# ------------------------------------------------------------------------------------------------ files
def test_convert_quantize_writes_a_quarter_size_checkpoint_that_loads_as_int8(tmp_path, capsys):
    from erniem_np.bundled import LANGID_MODEL
    from erniem_np.cli import main as cli

    dst = tmp_path / "int8"
    assert cli(["convert", LANGID_MODEL, str(dst), "--quantize", "int8", "--quiet"]) == 0
    ratio = (dst / "model.safetensors").stat().st_size / os.path.getsize(os.path.join(LANGID_MODEL, "model.safetensors"))
    assert ratio <= 0.30, ratio
    assert cli(["inspect", str(dst)]) == 0
    assert "an int8 checkpoint" in capsys.readouterr().out
    stored = ErnieMForSequenceClassification.from_pretrained(dst)
    at_load = ErnieMForSequenceClassification.from_pretrained(LANGID_MODEL, quantize="int8")
    ids = np.random.default_rng(3).integers(5, 1000, (2, 17))
    assert stored.backend == "int8" and np.array_equal(stored(ids).logits, at_load(ids).logits)
    # an int8 checkpoint converts to int8 again (unchanged), never silently back to float
    assert cli(["convert", str(dst), str(tmp_path / "again"), "--quiet"]) == 1
    assert "converts only to int8" in capsys.readouterr().err
    assert cli(["convert", LANGID_MODEL, str(tmp_path / "x"), "--quantize", "int8", "--dtype", "float16"]) == 1


def test_quantizing_a_large_table_works_in_row_blocks():
    w = np.random.default_rng(0).standard_normal((10_001, 8)).astype(np.float32)
    q, s = qgemm.quantize_weight(w, block_rows=4096)
    q1, s1 = qgemm.quantize_weight(w, block_rows=10**6)
    assert np.array_equal(q, q1) and np.array_equal(s, s1)


@needs_int8_cpu
def test_a_mapped_int8_word_table_is_read_row_by_row(tmp_path, monkeypatch):
    from erniem_np.checkpoints import safetensors_file
    from erniem_np.checkpoints.tensors import RowReadTable

    monkeypatch.setattr(safetensors_file, "ROW_READER_MIN_BYTES", 0)
    ErnieMModel(CONFIG, seed=7, backend="int8").save_pretrained(tmp_path)
    mapped = ErnieMModel.from_pretrained(tmp_path)
    in_memory = ErnieMModel.from_pretrained(tmp_path, mmap=False)
    assert isinstance(mapped.base_params["embeddings"]["word_embeddings"]["weight"].q, RowReadTable)
    ids, mask = _ids(4)
    assert np.array_equal(mapped(ids, attention_mask=mask).last_hidden_state,
                          in_memory(ids, attention_mask=mask).last_hidden_state)  # fmt: skip


@needs_int8_cpu
def test_the_demo_runs_int8_and_checks_it_against_hf_float32(capsys, monkeypatch):
    from erniem_np.cli import main as cli
    from erniem_np.commands import demo

    assert cli(["demo", "--quantize", "int8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    check = out["reference_check"]
    assert out["backend"] == "int8" and check["agrees"] and check["same_top_label"]
    assert 0 < check["max_abs_difference"] <= demo.INT8_TOLERANCE  # int8 differs from float32, within bounds
    monkeypatch.setattr(demo, "INT8_TOLERANCE", check["max_abs_difference"] / 2)
    assert cli(["demo", "--quantize", "int8"]) == 1  # the check can fail
    assert "DISAGREES" in capsys.readouterr().out


@needs_int8_cpu
def test_a_layer_by_layer_report_of_int8_against_float32(tmp_path, capsys):
    from erniem_np.bundled import LANGID_MODEL
    from erniem_np.cli import main as cli

    texts = ["The train to the mountains leaves every morning at seven.", "我们明天早上一起去图书馆看书吧。"]
    f32, i8 = str(tmp_path / "f32.safetensors"), str(tmp_path / "int8.safetensors")
    assert cli(["golden", LANGID_MODEL, "--tier", "core", "-o", f32, "--texts", *texts]) == 0
    assert cli(["golden", LANGID_MODEL, "--tier", "core", "--quantize", "int8", "-o", i8, "--texts", *texts]) == 0
    assert cli(["golden", LANGID_MODEL, "--quantize", "int8", "-o", i8, "--texts", *texts]) == 1  # debug tier
    capsys.readouterr()
    assert cli(["parity", "compare", f32, i8, "--profile", "int8", "--tier", "core"]) == 0
    assert cli(["parity", "compare", f32, i8, "--profile", "fp32", "--tier", "core"]) == 1  # int8 is not float32


@needs_int8_cpu
@pytest.mark.parametrize("command", ["classify", "encode"])
def test_task_commands_take_quantize_int8(tmp_path, capsys, command):
    from erniem_np.bundled import LANGID_MODEL
    from erniem_np.cli import main as cli
    from erniem_np.pipelines.classify import Classifier
    from erniem_np.pipelines.encode import Encoder

    texts = ["The train to the mountains leaves every morning at seven.", "Nous avons mangé une tarte aux pommes."]
    if command == "classify":
        assert cli(["classify", LANGID_MODEL, "--quantize", "int8", "--json", "-q", *texts]) == 0
        got = [row["score"] for row in json.loads(capsys.readouterr().out)]
        want = [r["score"] for r in Classifier(LANGID_MODEL, backend="int8")(texts)]
        assert got == pytest.approx(want, rel=1e-6)
        assert want != pytest.approx([r["score"] for r in Classifier(LANGID_MODEL)(texts)], rel=1e-6)
    else:
        out = str(tmp_path / "v.npy")
        assert cli(["encode", LANGID_MODEL, "--quantize", "int8", "-o", out, "-q", *texts]) == 0
        assert np.array_equal(np.load(out), Encoder(LANGID_MODEL, backend="int8").encode(texts))
    assert cli([command, LANGID_MODEL, "--quantize", "int8", "--backend", "numpy", *texts]) == 1
    assert "does not combine" in capsys.readouterr().err


@needs_int8_cpu
def test_the_isa_follows_the_cpu_numba_compiles_for():
    """Numba told to compile for an AVX2-only CPU must not be handed VNNI instructions (LLVM would abort)."""
    import subprocess
    import sys

    code = ("import numpy as np; from erniem_np.kernels import qgemm as q; print(q.supported_isas()); "
            "w = q.PackedInt8.quantize(np.ones((5, 9), np.float32)); x = np.ones((3, 9), np.float32); "
            "print(w.isa, np.array_equal(q.qlinear(x, w, raw=True), q.qmatmul_ref(*q.quantize_rows_ref(x)[::2], w.q))); "
            "rng = np.random.default_rng(0); x = rng.standard_normal((13, 40), np.float32); "
            "w = q.PackedInt8.quantize(rng.standard_normal((37, 40), np.float32)); b = rng.standard_normal(37, np.float32); "
            "r = rng.standard_normal((13, 37), np.float32); kws = ({}, {'activation': 'gelu'}, {'residual': r}); "
            "print(all(np.allclose(q.qlinear(x, w, b, **k), q.qlinear_ref(x, w.q, w.scale, b, **k), rtol=1e-5, atol=1e-5) "
            "for k in kws))")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "ERNIEM_NP_INT8_ISA"}  # the fake CPU picks its own
    env.update(NUMBA_CPU_NAME="haswell", ERNIEM_NP_CACHE_DIR="",
               NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+sse4.2,+popcnt,+bmi,+bmi2,+f16c,+lzcnt,+movbe,-avx512f,-avx512vnni,-avxvnni")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:3] == ["['avx2']", "avx2 True", "True"], r.stdout  # sums, then epilogues


@needs_int8_cpu
def test_an_int8_checkpoint_missing_a_scale_is_named_not_taken_for_a_missing_head(tmp_path, capsys):
    from erniem_np.bundled import LANGID_MODEL
    from erniem_np.checkpoints.safetensors_file import write_safetensors
    from erniem_np.cli import main as cli

    dst = tmp_path / "int8"
    assert cli(["convert", LANGID_MODEL, str(dst), "--quantize", "int8", "--quiet"]) == 0
    sd = dict(ErnieMForSequenceClassification.from_pretrained(dst).state_dict())
    del sd["ernie_m.encoder.layers.0.linear1.weight_scale"]
    write_safetensors(os.path.join(dst, "model.safetensors"), sd, metadata={"format": "pt"})
    capsys.readouterr()
    assert cli(["classify", str(dst), "hello world", "-q"]) == 1
    err = capsys.readouterr().err
    assert "encoder.layers.0.linear1.weight_scale" in err and "head" not in err
