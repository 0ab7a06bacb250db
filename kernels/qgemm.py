"""Int8 GEMM for the quantized Linear layers: y = x W^T + b with W quantized once and x at run time.

Dimension legend: M rows (B * L), K input features, N output features; Kp = K rounded up to the group G.

The scheme (docs/quantization.md says why and what it costs in accuracy):
* weights: symmetric int8 per output row, ``wq[j] = rint(w[j] / sw[j])`` with ``sw[j] = max|w[j]| / 127``,
  so ``wq`` lies in [-127, 127] (``quantize_weight``);
* activations: asymmetric uint8 per row (per token), at run time: the row's range [min(x, 0), max(x, 0)] is
  cut into 255 steps ``sx``, ``zx = rint(-min / sx)`` is the code of 0.0, ``xq = clip(rint(x / sx) + zx, 0, 255)``
  (``quantize_rows_ref``). GELU's outputs (the second FFN linear's input) lie in [-0.17, +inf): an asymmetric
  range gives them all 256 codes where a symmetric one would give them 128;
* the product, exact in int32: ``acc[i, j] = sum_k xq[i, k] wq[j, k] - zx[i] colsum[j]`` with
  ``colsum[j] = sum_k wq[j, k]``; ``|acc| <= 255 * 127 * K`` fits int32 for K <= 66,000 (checked);
* the epilogue in float32: ``y = float32(acc) * (sx[i] * sw[j]) + b[j]``, then GELU or + residual.

No step can saturate: every instruction below sums products in 32 bits (``vpdpbusd`` multiplies u8 x s8 and
adds groups of 4 into int32; ``vpmaddwd`` multiplies int16 pairs, each |product| <= 255 * 127, into int32).
The saturating ``vpmaddubsw`` (u8 x s8 pairs summed into int16, which 255 * 127 * 2 overflows) is not used.

The instruction set is chosen at run time (``int8_isa``), from the features of the CPU Numba compiles for
(``settings.cpu_features``: the host's unless ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` say otherwise):
* ``vnni512``: AVX-512 VNNI, ``vpdpbusd`` on zmm, 64 multiply-adds per instruction;
* ``vnni256``: AVX-VNNI (or AVX-512 VNNI with VL), ``vpdpbusd`` on ymm, 32 per instruction;
* ``avx2``: ``vpmovsxbw`` widens the weights to int16 and ``vpmaddwd`` + ``vpaddd`` accumulate, 16 per pair
  (where the CPU also has AVX-512 VNNI, LLVM fuses the pair into ``vpdpwssd``, as exact);
* none of these: the NumPy twin runs, after one ``Int8FallbackWarning``.
``ERNIEM_NP_INT8_ISA`` picks one of them by name (one the CPU has), for tests and measurements.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .gemm import emit_phi_loop, emit_row_forms, emit_row_pointers, emit_splat, emit_write_prefetch, finish_narrow_strip
from .norm import bits_float32, float32_bits, gelu_row_f32, order_key
from .settings import JIT, cpu_features, get_num_threads, jit, run, serial_twin

EPILOGUE_BIAS, EPILOGUE_GELU, EPILOGUE_RESIDUAL, EPILOGUE_RAW = 0, 1, 2, 3
MAX_K = 66_000  # 255 * 127 * K < 2**31


# ================================================================================================ quantization
def quantize_weight(w, block_rows=4096):
    """Symmetric int8 per output row: w [N, K] float -> (wq int8 [N, K], scale float32 [N]), w ~ wq * scale.
    A row of zeros gets scale 1 (any scale represents it exactly). Works ``block_rows`` rows at a time, so
    quantizing a memory-mapped word table (768 MB at ErnieM-base) needs a few MB besides the result."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"a weight to quantize must be 2-D, got shape {w.shape}")
    N, K = w.shape
    wq = np.empty((N, K), dtype=np.int8)
    scale = np.ones(N, dtype=np.float32)
    for i in range(0, N, block_rows):
        block = np.asarray(w[i : i + block_rows], dtype=np.float32)
        amax = np.abs(block).max(axis=1) if K else np.zeros(len(block), np.float32)
        if not np.all(np.isfinite(amax)):
            raise ValueError("cannot quantize a weight holding NaN or inf")
        s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
        wq[i : i + block_rows] = np.clip(np.rint(block / s[:, None]), -127, 127)
        scale[i : i + block_rows] = s
    return wq, scale


def quantize_rows_ref(x):
    """Asymmetric uint8 per row: x [M, K] float32 -> (xq uint8 [M, K], sx float32 [M], zx int32 [M]),
    x ~ (xq - zx) * sx. A row of zeros gets sx = 1, zx = 0; a row holding NaN or inf gets sx = NaN (its
    outputs become NaN, as the float32 layers' would)."""
    x = np.asarray(x, dtype=np.float32)
    M, K = x.shape
    lo = np.minimum(x.min(axis=1), 0) if K else np.zeros(M, np.float32)
    hi = np.maximum(x.max(axis=1), 0) if K else np.zeros(M, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        sx = ((hi - lo) / np.float32(255)).astype(np.float32)
        finite = np.isfinite(sx)
        sx = np.where(~finite, np.float32(np.nan), np.where(sx > 0, sx, np.float32(1))).astype(np.float32)
        safe = np.where(finite, sx, np.float32(1))[:, None]
        zx = np.where(finite, np.rint(-lo / safe[:, 0]), 0).astype(np.int32)
        q = np.where(finite[:, None], np.rint(x / safe) + zx[:, None], 0)
    return np.clip(q, 0, 255).astype(np.uint8), sx, zx


def qmatmul_ref(xq, zx, wq):
    """The exact integer product: sum_k xq[i, k] wq[j, k] - zx[i] colsum[j] -> int64 [M, N]. float64 BLAS
    is exact here (every partial sum is an integer below 2**53)."""
    acc = xq.astype(np.float64) @ wq.astype(np.float64).T
    colsum = wq.astype(np.int64).sum(axis=1)
    return acc.astype(np.int64) - zx.astype(np.int64)[:, None] * colsum[None, :]


def qlinear_ref(x, wq, sw, bias=None, activation=None, residual=None):
    """The NumPy twin of ``qlinear``: x [M, K] float32 -> [M, N] float32 through the int8 product."""
    xq, sx, zx = quantize_rows_ref(x)
    acc = qmatmul_ref(xq, zx, wq).astype(np.int32)
    y = acc.astype(np.float32) * (sx[:, None] * sw[None, :])  # the kernel's order: the scales multiplied first
    if bias is not None:
        y = y + bias
    if activation == "gelu":
        y = y.astype(np.float32)
        gelu_row_f32(y)  # in place, the epilogue's float32 GELU
    if residual is not None:
        y = y + residual
    return y.astype(np.float32)


# ================================================================================================ instruction sets
class Int8FallbackWarning(UserWarning):
    """The CPU has none of the instructions the int8 kernel needs: the NumPy twin runs (slowly)."""


@dataclass(frozen=True)
class Isa:
    """One instruction set's register tile: ROWS rows of x against NV vectors of LANES output columns,
    over groups of G values of K. A weight strip is COLS = NV * LANES output columns."""

    name: str
    G: int  # K values per int32 lane: 4 (vpdpbusd) or 2 (vpmaddwd)
    LANES: int  # int32 lanes per vector
    NV: int  # vectors of output columns per tile
    ROWS: int  # rows of x per tile
    x_dtype: type  # how x is stored for the kernel: uint8 (vpdpbusd) or int16 (vpmaddwd)

    @property
    def COLS(self) -> int:
        return self.NV * self.LANES


ISAS = {
    "vnni512": Isa("vnni512", 4, 16, 4, 6, np.uint8),  # 24 zmm accumulators: 6 rows x 64 columns
    "vnni256": Isa("vnni256", 4, 8, 2, 6, np.uint8),  # 12 ymm accumulators
    "avx2": Isa("avx2", 2, 8, 2, 6, np.int16),  # 12 ymm accumulators
}


def supported_isas() -> list[str]:
    """The int8 instruction sets this CPU runs, best first."""
    f = cpu_features()
    out = []
    if f.get("avx512vnni") and f.get("avx512bw") and f.get("avx512f"):
        out.append("vnni512")
    if f.get("avxvnni") or (f.get("avx512vnni") and f.get("avx512vl")):
        out.append("vnni256")
    if f.get("avx2"):
        out.append("avx2")
    return out


_chosen: list[str | None] = []


def int8_isa() -> str | None:
    """The instruction set the int8 kernel uses here (None: the NumPy twin). ``ERNIEM_NP_INT8_ISA`` names one
    to use instead of the best; a name the CPU lacks is refused (the CPU would fault on it)."""
    if not _chosen:
        supported = supported_isas()
        wanted = os.environ.get("ERNIEM_NP_INT8_ISA", "").strip()
        if wanted:
            if wanted not in ISAS:
                raise ValueError(f"ERNIEM_NP_INT8_ISA must be one of {sorted(ISAS)}, got {wanted!r}")
            if wanted not in supported:
                raise ValueError(f"ERNIEM_NP_INT8_ISA={wanted}: this CPU lacks it (it has {supported or 'none'})")
            _chosen.append(wanted)
        else:
            _chosen.append(supported[0] if supported else None)
        if _chosen[0] is None:
            warnings.warn("this CPU has neither AVX2 nor VNNI: the int8 layers run their NumPy twin, slowly",
                          Int8FallbackWarning, stacklevel=3)  # fmt: skip
    return _chosen[0]


# ================================================================================================ packed weights
class PackedInt8:
    """A quantized weight [N, K] with what the kernel needs: ``q`` (int8 [N, K], the portable layout a
    checkpoint stores), ``scale`` (float32 [N]), ``colsum`` (int32 [N], sum of each row of ``q``) and
    ``packed``: for the chosen instruction set, [N / COLS strips, Kp / G, COLS, G] int8, zero-padded, so that
    one vector load reads G consecutive K values of LANES consecutive output columns."""

    def __init__(self, q, scale, isa: str | None = "auto"):
        """``isa``: the instruction set to pack for ("auto": ``int8_isa()``; None: no packing, the twin runs)."""
        q = np.asarray(q)
        if q.dtype != np.int8 or q.ndim != 2:
            raise ValueError(f"an int8 weight must be a 2-D int8 array, got {q.dtype} {q.shape}")
        if q.shape[1] > MAX_K:
            raise ValueError(f"an int8 weight may have at most {MAX_K} inputs (int32 sums), got {q.shape[1]}")
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        if scale.shape != (q.shape[0],):
            raise ValueError(f"an int8 weight [{q.shape[0]}, {q.shape[1]}] needs {q.shape[0]} scales, got {scale.shape}")
        self.q, self.scale = q, scale
        self.shape = q.shape
        self.colsum = q.astype(np.int32).sum(axis=1, dtype=np.int32)
        self.isa = int8_isa() if isa == "auto" else isa
        self.packed = self.strip_colsum = self.strip_scale = None
        if self.isa is not None:
            self.packed = pack(q, ISAS[self.isa])
            padded = self.packed.shape[0] * ISAS[self.isa].COLS  # whole strips: a tile reads whole vectors
            self.strip_colsum = np.zeros(padded, np.int32)
            self.strip_colsum[: q.shape[0]] = self.colsum
            self.strip_scale = np.zeros(padded, np.float32)
            self.strip_scale[: q.shape[0]] = self.scale
        self._make_readonly()

    def _make_readonly(self):
        # read-only, so that weights from a mapped checkpoint and from memory have one Numba type (the kernel
        # is compiled once) without a call making views of them each time
        self.scale, self.colsum = _readonly((self.scale, self.colsum))
        if self.packed is not None:
            self.packed, self.strip_colsum, self.strip_scale = _readonly((self.packed, self.strip_colsum,
                                                                          self.strip_scale))  # fmt: skip

    _bias_view = None  # (bias, its read-only view): ``_kernel_bias``'s last answer for this weight

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_bias_view", None)  # a view pickles as a copy: the unpickled weight makes its own
        return state

    def __setstate__(self, state):  # an unpickled copy is read-only again: one Numba type, no second compile
        self.__dict__.update(state)
        self._make_readonly()

    @classmethod
    def quantize(cls, w, isa: str | None = "auto") -> PackedInt8:
        return cls(*quantize_weight(w), isa=isa)

    def dequantize(self):
        return self.q.astype(np.float32) * self.scale[:, None]

    @property
    def nbytes(self) -> int:
        if self.packed is None:
            return self.scale.nbytes + self.colsum.nbytes + self.q.nbytes
        return self.scale.nbytes + self.colsum.nbytes + self.packed.nbytes + 2 * self.strip_scale.nbytes


def pack(q, isa: Isa):
    """int8 [N, K] -> [ceil(N / COLS), ceil(K / G), COLS, G], zeros in the padding (they add nothing)."""
    N, K = q.shape
    Np = -(-N // isa.COLS) * isa.COLS
    Kp = -(-K // isa.G) * isa.G
    w = np.zeros((Np, Kp), dtype=np.int8)
    w[:N, :K] = q
    return np.ascontiguousarray(w.reshape(Np // isa.COLS, isa.COLS, Kp // isa.G, isa.G).transpose(0, 2, 1, 3))


# ================================================================================================ the register tile
ISA_CODES = {name: code for code, name in enumerate(ISAS)}  # the kernels take the instruction set as an int


def micro_tile(xq, i0, nr, wp, s, kg, c, code):
    """c [ROWS, COLS] (int32) = xq[i0 + r] . strip s of wp, summed over the kg groups of K, for r < nr (c's
    rows past nr: whatever the tile's form left there, which the caller drops; ``gemm.emit_row_forms``).
    Integer arithmetic: exact. ``code`` names the instruction set (``ISA_CODES``) the packing was made for.

    This NumPy body is the twin and runs when the JIT is disabled; compiled code gets the tile of ``code``."""
    _, _, cols, G = wp.shape
    rows = np.minimum(np.arange(c.shape[0]), nr - 1) + i0
    x = xq[rows, : kg * G].astype(np.int64)  # [ROWS, Kp]
    w = wp[s, :kg].transpose(1, 0, 2).reshape(cols, kg * G).astype(np.int64)  # [COLS, Kp]
    c[:, :] = x @ w.T


def dequant_tile(xq, i0, nr, wp, s, kg, y, yi, yj, zx, sx, colsum, sw, b, res, add_res, code):
    """The tile's products finished in registers and stored as float32: for r < nr, i = i0 + r and the strip's
    columns j = s COLS + t (t < COLS),
    ``y[yi + r, yj + t] = fma(float32(c[r, t] - zx[i] colsum[j]), sx[i] sw[j], b[j])`` (one rounding for the
    multiply-add), then ``+ res[i, yj + t]`` when ``add_res`` (a separate add: (y + b) + r, never y + (b + r)).
    ``colsum``, ``sw`` and ``b`` cover whole strips (zeros past N); y's rows past nr are not touched.

    This NumPy body is the twin (the fused multiply-add emulated in float64: the product of two float32 is
    exact there, so only the sum rounds twice, rarely one ulp away from the kernel's)."""
    cols = wp.shape[2]
    c = np.empty((nr, cols), dtype=np.int32)
    micro_tile(xq, i0, nr, wp, s, kg, c, code)
    i = np.arange(i0, i0 + nr)
    j = np.arange(s * cols, (s + 1) * cols)
    t = (c.astype(np.int64) - zx[i, None].astype(np.int64) * colsum[None, j]).astype(np.int32).astype(np.float32)
    scale = sx[i, None] * sw[None, j]  # float32
    v = (t.astype(np.float64) * scale.astype(np.float64) + b[None, j]).astype(np.float32)
    if add_res:
        v = v + res[i, yj : yj + cols]
    y[yi : yi + nr, yj : yj + cols] = v


def _tile_intrinsic(isa: Isa, dequant: bool):
    """``micro_tile`` (``dequant`` False) or ``dequant_tile`` for one instruction set, written in LLVM IR with
    vector types.

    Per group g of G values of K: load the strip's NV weight vectors (G values of each of LANES columns; for
    avx2 16 int8 sign-extended to int16, ``vpmovsxbw``), then for each of the ROWS rows broadcast its 4 bytes
    of x (G values) and multiply-accumulate into that row's NV int32 accumulators (``vpdpbusd``, or
    ``vpmaddwd`` + ``vpaddd``), held in registers as phis. After the loop the accumulators are stored to c,
    or finished in registers (``_emit_tile_dequant``) and stored to y.

    The kernel compiles the tiles of every instruction set and calls the one its weight was packed for; a
    tile whose instructions this CPU lacks, or whose x dtype is not the one given, compiles to a trap that
    is never reached (the CPU could not even compile its instructions)."""

    def usable(xq):
        return np.dtype(isa.x_dtype) == np.dtype(str(xq.dtype)) and isa.name in supported_isas()

    def codegen_for(emit, is_usable):
        def codegen(context, builder, sig, args):
            if not is_usable:
                trap = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.trap")
                builder.call(trap, [])
            else:
                emit(isa, context, builder, sig, args)
            return context.get_dummy_value()

        return codegen

    def arrays(*pairs):  # (array type, dtype, ndim): C-contiguous arrays of that dtype and rank
        return all(isinstance(a, types.Array) and a.dtype == d and a.ndim == n and a.layout == "C"
                   for a, d, n in pairs)  # fmt: skip

    if not dequant:

        @intrinsic
        def tile(typingctx, xq, i0, nr, wp, s, kg, c):
            if not (arrays((wp, types.int8, 4), (c, types.int32, 2)) and isinstance(xq, types.Array)):
                return None
            return (types.none(xq, types.int64, types.int64, wp, types.int64, types.int64, c),
                    codegen_for(_emit_tile, usable(xq)))  # fmt: skip

        return tile

    @intrinsic
    def tile_dequant(typingctx, xq, i0, nr, wp, s, kg, y, yi, yj, zx, sx, colsum, sw, b, res, add_res):
        f32, i32 = types.float32, types.int32
        y_dtype, res_dtype = getattr(y, "dtype", None), getattr(res, "dtype", None)
        if not isinstance(xq, types.Array) or not arrays((wp, types.int8, 4), (y, y_dtype, 2), (res, res_dtype, 2),
                                                         (zx, i32, 1), (sx, f32, 1), (colsum, i32, 1), (sw, f32, 1),
                                                         (b, f32, 1)):  # fmt: skip
            return None
        i64 = types.int64
        sig = types.none(xq, i64, i64, wp, i64, i64, y, i64, i64, zx, sx, colsum, sw, b, res, types.boolean)
        float_out = y_dtype == f32 and res_dtype == f32  # the raw sums' float64 out types this call, never runs it
        return sig, codegen_for(_emit_tile_dequant, usable(xq) and float_out)

    return tile_dequant


def _emit_products(isa: Isa, context, builder, xq_type, xq_val, i0, nr, wp_type, wp_val, s, kg):
    """The tile's ROWS x NV int32 accumulator vectors after the loop over the kg groups of K, for its first nr
    rows (``emit_row_forms``: the others are zeros or repeats)."""
    i8, i16, i32, i64 = (ir.IntType(n) for n in (8, 16, 32, 64))
    VT = ir.VectorType(i32, isa.LANES)

    def const(v):
        return ir.Constant(i64, v)

    x_arr = context.make_array(xq_type)(context, builder, xq_val)
    w_arr = context.make_array(wp_type)(context, builder, wp_val)
    x_row_bytes = cgutils.unpack_tuple(builder, x_arr.strides, 2)[0]
    x_rows = emit_row_pointers(builder, x_arr.data, x_row_bytes, i0, nr, isa.ROWS)  # to xq[min(i0 + r, ...), 0]
    w_strides = cgutils.unpack_tuple(builder, w_arr.strides, 4)
    w_strip = builder.gep(builder.bitcast(w_arr.data, i8.as_pointer()), [builder.mul(s, w_strides[0])])
    group_bytes = isa.COLS * isa.G
    if isa.name == "avx2":
        pmadd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(VT, [ir.VectorType(i16, 16), ir.VectorType(i16, 16)]),
            "llvm.x86.avx2.pmadd.wd")  # fmt: skip
    else:
        dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(VT, [VT, VT, VT]),
                                            f"llvm.x86.avx512.vpdpbusd.{32 * isa.LANES}")  # fmt: skip
    zeros = ir.Constant(VT, [ir.Constant(i32, 0)] * isa.LANES)

    def step(g, acc, rows):  # one group of G values of K: NV weight vectors, then per row a broadcast and NV products
        group = builder.gep(w_strip, [builder.mul(g, const(group_bytes))])
        wv = []
        for v in range(isa.NV):
            ptr = builder.gep(group, [const(v * isa.LANES * isa.G)])
            if isa.name == "avx2":  # 16 int8 -> 16 int16: 8 columns x 2 values of K
                raw = builder.load(builder.bitcast(ptr, ir.VectorType(i8, 16).as_pointer()), align=1)
                wv.append(builder.sext(raw, ir.VectorType(i16, 16)))
            else:  # LANES columns x 4 int8 values of K, one int32 lane each
                wv.append(builder.load(builder.bitcast(ptr, VT.as_pointer()), align=1))
        x_offset = builder.mul(g, const(4))  # the G values of x are 4 bytes (4 uint8, or 2 int16)
        new = []
        for r in range(rows):
            xg = builder.load(builder.bitcast(builder.gep(x_rows[r], [x_offset]), i32.as_pointer()), align=1)
            splat = emit_splat(builder, xg, VT)
            for v in range(isa.NV):
                a = acc[r * isa.NV + v]
                if isa.name == "avx2":
                    product = builder.call(pmadd, [builder.bitcast(splat, ir.VectorType(i16, 16)), wv[v]])
                    new.append(builder.add(a, product))
                else:  # vpdpbusd(acc, the uint8 operand, the int8 operand)
                    new.append(builder.call(dp, [a, splat, wv[v]]))
        return new

    def loop(rows):  # for g in range(kg), over the first ``rows`` rows of the tile
        return emit_phi_loop(builder, kg, [zeros] * (rows * isa.NV), lambda g, acc: step(g, acc, rows), f"qtile{rows}")

    return emit_row_forms(builder, nr, isa.ROWS, isa.NV, zeros, loop, "qtile")


def _emit_tile(isa: Isa, context, builder, sig, args):
    xq_val, i0, nr, wp_val, s, kg, c_val = args
    acc = _emit_products(isa, context, builder, sig.args[0], xq_val, i0, nr, sig.args[3], wp_val, s, kg)
    VT = ir.VectorType(ir.IntType(32), isa.LANES)
    c_arr = context.make_array(sig.args[6])(context, builder, c_val)
    for r in range(isa.ROWS):  # c[r, v * LANES : (v + 1) * LANES] = acc
        for v in range(isa.NV):
            ptr = builder.gep(c_arr.data, [ir.Constant(ir.IntType(64), r * isa.COLS + v * isa.LANES)])
            builder.store(acc[r * isa.NV + v], builder.bitcast(ptr, VT.as_pointer()), align=4)


def _emit_tile_dequant(isa: Isa, context, builder, sig, args):
    """Write prefetches for the tile's rows of y, the products, then per valid row: the zero-point correction
    in int32, the conversion to float32, one fused multiply-add with the scales and the bias, the residual add
    when asked, and the stores into y."""
    xq, i0, nr, wp, s, kg, _, yi, yj, *_, add_res = args
    i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
    IV, FV = ir.VectorType(i32, isa.LANES), ir.VectorType(f32, isa.LANES)

    def const(v):
        return ir.Constant(i64, v)

    def data(k):  # the data pointer of array argument k
        return context.make_array(sig.args[k])(context, builder, args[k]).data

    def row_bytes(k):  # the row stride of 2-D array argument k
        return cgutils.unpack_tuple(builder, context.make_array(sig.args[k])(context, builder, args[k]).strides, 2)[0]

    def row_pointer(k, row):  # a float32 pointer to element 0 of row ``row`` of 2-D array argument k
        base = builder.bitcast(data(k), i8.as_pointer())
        return builder.bitcast(builder.gep(base, [builder.mul(row, row_bytes(k))]), f32.as_pointer())

    def vector_at(ptr, index, vt):  # an unaligned vector load or store address: element ``index`` of ptr
        return builder.bitcast(builder.gep(ptr, [index]), vt.as_pointer())

    # the tile's output lines, asked for before the loop: the stores then find them in cache rather than each
    # waiting for its line (docs/performance.md, "The GEMM epilogues in registers", has what each step costs)
    y_rows = [row_pointer(6, builder.add(yi, builder.select(builder.icmp_signed("<", const(r), nr), const(r), const(0))))
              for r in range(isa.ROWS)]  # fmt: skip
    emit_write_prefetch(builder, [builder.bitcast(builder.gep(row, [yj]), i8.as_pointer()) for row in y_rows],
                        isa.COLS * 4)  # fmt: skip

    acc = _emit_products(isa, context, builder, sig.args[0], xq, i0, nr, sig.args[3], wp, s, kg)

    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(FV, [FV, FV, FV]), f"llvm.fma.v{isa.LANES}f32")
    zx, sx, colsum, sw, b = (data(k) for k in (9, 10, 11, 12, 13))
    j0 = builder.mul(s, const(isa.COLS))  # the strip's first column in colsum, sw and b
    strip = [builder.add(j0, const(v * isa.LANES)) for v in range(isa.NV)]
    cs_v = [builder.load(vector_at(colsum, j, IV), align=4) for j in strip]
    sw_v = [builder.load(vector_at(sw, j, FV), align=4) for j in strip]
    b_v = [builder.load(vector_at(b, j, FV), align=4) for j in strip]
    y_cols = [builder.add(yj, const(v * isa.LANES)) for v in range(isa.NV)]
    for r in range(isa.ROWS):
        with builder.if_then(builder.icmp_signed("<", const(r), nr)):
            i = builder.add(i0, const(r))
            z = emit_splat(builder, builder.load(builder.gep(zx, [i])), IV)
            si = emit_splat(builder, builder.load(builder.gep(sx, [i])), FV)
            out = []
            for v in range(isa.NV):
                t = builder.sitofp(builder.sub(acc[r * isa.NV + v], builder.mul(z, cs_v[v])), FV)  # int32: exact
                out.append(builder.call(fma, [t, builder.fmul(si, sw_v[v]), b_v[v]]))  # (x sx) sw: scales first
            with builder.if_else(add_res) as (then, otherwise):
                with then:  # (y + b) + r, never y + (b + r)
                    res_row = row_pointer(14, i)
                    for v in range(isa.NV):
                        total = builder.fadd(out[v], builder.load(vector_at(res_row, y_cols[v], FV), align=4))
                        builder.store(total, vector_at(y_rows[r], y_cols[v], FV), align=4)
                with otherwise:
                    for v in range(isa.NV):
                        builder.store(out[v], vector_at(y_rows[r], y_cols[v], FV), align=4)


_tile_vnni512, _tile_vnni256, _tile_avx2 = (_tile_intrinsic(ISAS[n], False) for n in ISAS)  # in ISAS order
_dequant_vnni512, _dequant_vnni256, _dequant_avx2 = (_tile_intrinsic(ISAS[n], True) for n in ISAS)


@overload(micro_tile, jit_options=JIT)
def _micro_tile_jit(xq, i0, nr, wp, s, kg, c, code):
    def impl(xq, i0, nr, wp, s, kg, c, code):
        if code == 0:
            _tile_vnni512(xq, np.int64(i0), np.int64(nr), wp, np.int64(s), np.int64(kg), c)
        elif code == 1:
            _tile_vnni256(xq, np.int64(i0), np.int64(nr), wp, np.int64(s), np.int64(kg), c)
        else:
            _tile_avx2(xq, np.int64(i0), np.int64(nr), wp, np.int64(s), np.int64(kg), c)

    return impl


@overload(dequant_tile, jit_options=JIT)
def _dequant_tile_jit(xq, i0, nr, wp, s, kg, y, yi, yj, zx, sx, colsum, sw, b, res, add_res, code):
    def impl(xq, i0, nr, wp, s, kg, y, yi, yj, zx, sx, colsum, sw, b, res, add_res, code):
        i0, nr, s, kg, yi, yj = np.int64(i0), np.int64(nr), np.int64(s), np.int64(kg), np.int64(yi), np.int64(yj)
        if code == 0:
            _dequant_vnni512(xq, i0, nr, wp, s, kg, y, yi, yj, zx, sx, colsum, sw, b, res, add_res)
        elif code == 1:
            _dequant_vnni256(xq, i0, nr, wp, s, kg, y, yi, yj, zx, sx, colsum, sw, b, res, add_res)
        else:
            _dequant_avx2(xq, i0, nr, wp, s, kg, y, yi, yj, zx, sx, colsum, sw, b, res, add_res)

    return impl


# ================================================================================================ the kernels
@jit
def quantize_row(row, out):
    """One row of ``quantize_rows_ref``: row [K] float32 -> out[:K] its uint8 codes (out's dtype: uint8, or int16
    holding 0..255 for vpmaddwd), zeros in out[K:]; returns (sx, zx).

    The range is found on the float bits mapped to integers of the same order (``norm.order_key``), because an
    integer min/max reduction vectorises and a float one, which must honour NaN, does not (7x slower). A NaN
    maps beyond +-inf, so a row holding NaN or inf gets a bound that is NaN or inf, a scale that is not
    finite, and then sx = NaN and codes of 0."""
    K = row.shape[0]
    lo = np.int32(0)  # the key of +0.0
    hi = np.int32(0)
    for k in range(K):
        key = order_key(float32_bits(row[k]))
        lo = np.int32(min(lo, key))  # int32: 16 lanes per zmm (``order_key``)
        hi = np.int32(max(hi, key))
    lo_f = bits_float32(order_key(lo))  # the key back to float32
    s = (bits_float32(order_key(hi)) - lo_f) / np.float32(255)
    if not np.isfinite(s):  # NaN or inf in the row
        for k in range(out.shape[0]):
            out[k] = 0
        return np.float32(np.nan), np.int32(0)
    if not s > 0:
        s = np.float32(1)
    z = np.rint(-lo_f / s)
    for k in range(K):
        q = np.rint(row[k] / s) + z
        q = q if q > np.float32(0) else np.float32(0)  # noqa: FURB136 (a select vectorises; float min/max, honouring NaN, does not)
        out[k] = q if q < np.float32(255) else np.float32(255)  # noqa: FURB136
    for k in range(K, out.shape[0]):
        out[k] = 0
    return s, np.int32(z)


@jit(parallel=True)
def _quantize_rows(x, xq, sx, zx):
    """quantize_rows_ref into xq [M, Kp] (uint8, or int16 holding 0..255 for vpmaddwd), zeros past K: one row
    per iteration (``quantize_row``)."""
    for i in prange(x.shape[0]):
        sx[i], zx[i] = quantize_row(x[i], xq[i])


_quantize_rows_serial = serial_twin(_quantize_rows, "_quantize_rows_serial")


@jit(parallel=True)
def _qgemm(xq, sx, zx, wps, colsums, sws, bs, residual, outs, epilogue, rows, cols, code, blocks):
    """outs[p] = dequant(xq . wps[p]) + bs[p] (+ GELU, or + residual): xq [M, Kp] quantized rows, wps[p]
    [S_p, Kp / G, COLS, G] a packed weight with colsums[p], sws[p] and bs[p] covering its S_p COLS columns
    (zeros past N: ``PackedInt8.strip_colsum``, ``strip_scale``), outs[p] [M, N_p]; one weight, or several
    that share the input (q, k and v), whose strips form one parallel loop (one wake-up of the pool, not three).

    A task owns one strip of COLS output columns (its K x COLS int8 weights, 24-96 KB, stay in L2) for one of
    ``blocks`` equal blocks of rows, and sweeps the block's rows, ``rows`` at a time, through the register
    tile, which dequantizes, biases and adds the residual in registers (``dequant_tile``) and stores into
    out's rows; GELU then runs on those rows while they are in L1. A strip narrower than COLS (N not a
    multiple of it) is finished in a scratch tile and copied. One level of parallelism, over the tasks,
    block-major: with one block per thread, each thread computes whole rows, the rows the row-parallel
    kernels around it (quantizing, LayerNorm) give the same thread, so what one writes the next reads from
    its own core's caches (``ROW_BLOCKS_FROM``).
    ``epilogue`` EPILOGUE_RAW writes the exact integer sums (for tests, into a float64 out)."""
    M = xq.shape[0]
    kg = wps[0].shape[1]
    n_parts = len(wps)
    strips = np.empty(n_parts + 1, dtype=np.int64)  # strips[p]: first strip of weight p (cumulative)
    strips[0] = 0
    for p in range(n_parts):
        strips[p + 1] = strips[p] + wps[p].shape[0]
    add_res = epilogue == EPILOGUE_RESIDUAL
    n_strips = strips[n_parts]
    for task in prange(blocks * n_strips):
        block, strip = task // n_strips, task % n_strips
        row0, row1 = block * M // blocks, (block + 1) * M // blocks
        p = 0
        while strip >= strips[p + 1]:
            p += 1
        wp, colsum, sw, b, out = wps[p], colsums[p], sws[p], bs[p], outs[p]
        s = strip - strips[p]
        N = out.shape[1]
        j0 = s * cols
        nc = min(cols, N - j0)
        c = np.empty((rows, cols), dtype=np.int32)
        tile = np.empty((rows, cols), dtype=np.float32)
        for i0 in range(row0, row1, rows):
            nr = min(rows, row1 - i0)
            if epilogue == EPILOGUE_RAW:
                micro_tile(xq, i0, nr, wp, s, kg, c, code)
                for r in range(nr):
                    z = zx[i0 + r]
                    o = out[i0 + r, j0 : j0 + nc]
                    for j in range(nc):
                        o[j] = np.int32(c[r, j] - np.int32(z * colsum[j0 + j]))
            elif nc == cols:
                dequant_tile(xq, i0, nr, wp, s, kg, out, i0, j0, zx, sx, colsum, sw, b, residual, add_res, code)
                if epilogue == EPILOGUE_GELU:  # float32 GELU: its error is far below the next 8-bit step
                    for r in range(nr):
                        gelu_row_f32(out[i0 + r, j0 : j0 + nc])
            else:  # the last, narrower strip: the whole tile into scratch, then its nc columns
                dequant_tile(xq, i0, nr, wp, s, kg, tile, 0, 0, zx, sx, colsum, sw, b, residual, False, code)
                finish_narrow_strip(tile, out, i0, nr, j0, nc, epilogue == EPILOGUE_GELU, True, residual, add_res)


_qgemm_serial = serial_twin(_qgemm, "_qgemm_serial")



# From this many rows of x, the kernel gives each thread one block of whole rows (``_qgemm``'s ``blocks``):
# the quantizer, LayerNorm and attention before and after it split rows the same way, so each thread reads
# what its own core wrote; split by strips, half of every row would come from the other core's cache
# (docs/performance.md has the measurement; ``NUMBA_NUM_THREADS=2 python scripts/bench/time_breakdown.py
# --backend int8 --batch 8`` shows the split per kernel). Below it, strips: each thread would stream every
# weight, and a short input has too few row tiles to share evenly.
ROW_BLOCKS_FROM = 256


def quantize_rows(x2, isa: Isa):
    """x [M, K] -> (xq [M, Kp] in the isa's x dtype, sx [M], zx [M]); the buffers are new arrays. x is read as
    float32 (the kernel reads its bits), converted first when it is not."""
    x2 = np.ascontiguousarray(x2, dtype=np.float32)
    M, K = x2.shape
    Kp = -(-K // isa.G) * isa.G
    xq = np.empty((M, Kp), dtype=isa.x_dtype)
    sx = np.empty(M, dtype=np.float32)
    zx = np.empty(M, dtype=np.int32)
    run(_quantize_rows, _quantize_rows_serial, 20 * M * K, x2, xq, sx, zx)
    return xq, sx, zx


def _check(activation, residual):
    if activation is not None and residual is not None:
        raise ValueError("fuse either an activation or a residual add, not both")
    if activation not in (None, "gelu"):
        raise ValueError(f"the fused activation must be 'gelu', got {activation!r}")


def qlinear(x, weight: PackedInt8, bias=None, activation=None, residual=None, raw=False, out=None):
    """The int8 Linear layer: x [..., K] float32 -> [..., N] float32, ``weight`` a ``PackedInt8``; GELU
    (activation="gelu") or a residual [..., N] fused into the epilogue. ``raw=True`` returns the exact integer
    sums (float64, for tests). On a CPU with no int8 instructions, the NumPy twin ``qlinear_ref``.
    ``out``: a C-contiguous float32 array of M x N values to write the result into (and return, shaped
    [..., N]) instead of a new one; it must not overlap x or the residual."""
    _check(activation, residual)
    if out is not None and raw:
        raise ValueError("raw sums are float64: they take no float32 out")
    (result,) = _qlinear_parts(x, [(weight, bias)], activation, residual, raw, out)
    return result


def qlinear_many(x, params):
    """Several int8 Linear layers on one input, quantized once: params [(PackedInt8, bias or None), ...] ->
    [x W^T + b for each] (the q, k and v projections), in one kernel call: the strips of all the weights
    share one parallel loop."""
    return _qlinear_parts(x, list(params), None, None, False)


def _readonly(arrays):
    """A tuple of read-only views: arrays from a memory-mapped checkpoint and from memory then have one Numba
    type, so the weights' tuple is homogeneous and each kernel is compiled once."""
    views = []
    for a in arrays:
        v = a.view()
        v.flags.writeable = False
        views.append(v)
    return tuple(views)


def _kernel_bias(weight: PackedInt8, bias):
    """The bias as the kernel reads it: float32, one value per column of whole strips (zeros past N), read-only
    (one Numba type). A float32 bias that already covers whole strips (N a multiple of COLS, as in every
    ErnieM layer) is used as it is, through a view, which the weight keeps for its next call with the same
    bias (a view sees edits made in place; a copy would not, so a copy is made anew each call)."""
    cached = weight._bias_view
    if cached is not None and cached[0] is bias:
        return cached[1]
    n = weight.strip_scale.shape[0]
    if n == weight.shape[0] and isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.shape == (n,) \
            and bias.flags.c_contiguous:  # fmt: skip
        b = bias.view()
        b.flags.writeable = False
        weight._bias_view = (bias, b)
        return b
    b = np.zeros(n, np.float32)
    if bias is not None:
        b[: weight.shape[0]] = bias
    b.flags.writeable = False
    return b


def _qlinear_parts(x, params, activation, residual, raw, out_given=None):
    # Python that runs 48 times a forward (4 Linear calls a layer): at B=1 L=128 each microsecond here is
    # about 0.1% of the int8 forward, so the arguments are built in one pass, with no copies of the biases
    # (the glue is in "other" of ``NUMBA_NUM_THREADS=2 python scripts/bench/time_breakdown.py --backend int8``)
    lead = x.shape[:-1]
    K = x.shape[-1]
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(math.prod(lead), K)
    M = x2.shape[0]
    r2 = None
    if residual is not None:
        r2 = np.ascontiguousarray(residual, dtype=np.float32).reshape(M, params[0][0].shape[0])
    results, kernel_parts = [], []  # kernel_parts: (weight, bias, out) for the int8 kernel
    for weight, bias in params:
        N = weight.shape[0]
        if weight.shape[1] != K:
            raise ValueError(f"an int8 weight {list(weight.shape)} does not take inputs of {K} features")
        if out_given is None:
            out = np.empty((M, N), dtype=np.float64 if raw else np.float32)
        elif out_given.dtype != np.float32 or not out_given.flags.c_contiguous or out_given.size != M * N:
            raise ValueError(f"out must be a C-contiguous float32 array of {M} x {N} values")
        else:
            out = out_given.reshape(M, N)
        if weight.packed is None:  # no int8 instructions on this CPU: the twin
            if raw:
                xq, _, zx = quantize_rows_ref(x2)
                out[:] = qmatmul_ref(xq, zx, weight.q)
            else:
                b = np.zeros(N, np.float32)
                if bias is not None:
                    b[:] = bias
                out[:] = qlinear_ref(x2, weight.q, weight.scale, b, activation, r2)
        else:
            kernel_parts.append((weight, _kernel_bias(weight, bias), out))
        results.append(out.reshape(lead + (N,)))
    if not kernel_parts or not M:
        return results
    epilogue = EPILOGUE_RAW if raw else EPILOGUE_GELU if activation == "gelu" else \
        EPILOGUE_RESIDUAL if r2 is not None else EPILOGUE_BIAS  # fmt: skip
    blocks = get_num_threads() if M >= ROW_BLOCKS_FROM else 1
    by_isa: dict[str, list] = {}  # one call per instruction set (a model's weights are all packed for one;
    for part in kernel_parts:  # PackedInt8(..., isa=...) can mix them)
        by_isa.setdefault(part[0].isa, []).append(part)
    for name in sorted(by_isa):
        isa, parts = ISAS[name], by_isa[name]
        ws, colsums, scales, bs, outs = zip(*[(w.packed, w.strip_colsum, w.strip_scale, b, out) for w, b, out in parts])
        xq, sx, zx = quantize_rows(x2, isa)
        flops = 2 * M * K * sum(w.shape[0] for w, _, _ in parts)
        run(_qgemm, _qgemm_serial, flops, xq, sx, zx, ws, colsums, scales, bs, outs[0] if r2 is None else r2,
            outs, epilogue, isa.ROWS, isa.COLS, ISA_CODES[name], blocks)  # fmt: skip
    return results
