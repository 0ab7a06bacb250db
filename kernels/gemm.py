"""GEMM for every Linear layer, y = x W^T + b with W stored [out, in]: the NumPy twin first, then Numba.

Dimension legend: M rows (B * L), K input features, N output features.

Epilogues fused into the same call: bias; bias then GELU; bias then a residual add.

Two kernels, one result (bit for bit: each output is the same chain of FMAs over k, then the same epilogue):
* ``_gemm`` takes the weight as it is stored, [N, K] (memory-mapped, never copied) and packs x per call; the
  attention products, the pooler and the heads use it, and its tile (``micro_tile``) is the one attention runs.
* ``_gemm_packed`` takes a weight packed once, at load (``PackedWeight``), and reads x in place: the encoder's
  Linear layers use it (``erniem_np/fused.py``). ``linear`` and ``linear_many`` pick by the weight they get.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload, register_jitable

from .norm import gelu_inplace, gelu_ref, gelu_row, gelu_row_f32
from .settings import JIT, cpu_features, get_num_threads, jit, run, serial_twin

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
# ------------------------------------------------------------------------------------------------ IR helpers
# The register tiles here and in qgemm.py are the same loop: accumulators carried as phi nodes (SSA values, so
# they live in registers) through ``for k in range(n): acc = step(k, acc)``.
def emit_phi_loop(builder, n, init, step, name):
    """Emit ``for k in range(n): acc = step(k, acc)`` with ``acc`` (the values ``init``) as phi nodes; return
    the accumulators after the loop, with the builder after it. ``n`` is an int64 value."""
    i64 = ir.IntType(64)
    entry = builder.block
    head = builder.append_basic_block(f"{name}.head")
    body = builder.append_basic_block(f"{name}.body")
    done = builder.append_basic_block(f"{name}.done")
    builder.branch(head)
    builder.position_at_end(head)
    k = builder.phi(i64)
    k.add_incoming(ir.Constant(i64, 0), entry)
    acc = [builder.phi(v.type) for v in init]
    for a, v in zip(acc, init, strict=True):
        a.add_incoming(v, entry)
    builder.cbranch(builder.icmp_signed("<", k, n), body, done)
    builder.position_at_end(body)
    new = step(k, acc)
    k.add_incoming(builder.add(k, ir.Constant(i64, 1)), builder.block)
    for a, v in zip(acc, new, strict=True):
        a.add_incoming(v, builder.block)
    builder.branch(head)
    builder.position_at_end(done)
    return acc


# A tile's last rows rarely fill it (M = 128 leaves 2 rows for the last 6-row tile): a tile of nr rows runs the
# smallest of these loops that holds them, so it pays for at most one row it does not need, not up to five.
TILE_ROW_FORMS = (2, 4)


def emit_row_forms(builder, nr, rows, per_row, zero, loop, name):
    """Emit ``loop(f)`` (the tile's loop over K for f rows, returning f * per_row accumulators) for the
    smallest f of TILE_ROW_FORMS + (rows,) that holds the tile's ``nr`` rows, chosen at run time; return
    rows * per_row accumulators, merged by phis: a form's rows past f are ``zero`` (past nr: dropped by the
    caller). ``nr`` is an int64 value."""
    i64 = ir.IntType(64)
    forms = [f for f in TILE_ROW_FORMS if f < rows] + [rows]
    bodies = [builder.append_basic_block(f"{name}.rows{f}") for f in forms]
    join = builder.append_basic_block(f"{name}.join")
    for f, body in zip(forms[:-1], bodies[:-1], strict=True):  # nr <= 2: the first form, else nr <= 4: ...
        other = builder.append_basic_block(f"{name}.over{f}")
        builder.cbranch(builder.icmp_signed("<=", nr, ir.Constant(i64, f)), body, other)
        builder.position_at_end(other)
    builder.branch(bodies[-1])
    ends = []
    for f, body in zip(forms, bodies, strict=True):
        builder.position_at_end(body)
        acc = loop(f) + [zero] * ((rows - f) * per_row)
        ends.append((acc, builder.block))
        builder.branch(join)
    builder.position_at_end(join)
    merged = []
    for i in range(rows * per_row):
        phi = builder.phi(zero.type)
        for acc, block in ends:
            phi.add_incoming(acc[i], block)
        merged.append(phi)
    return merged


def emit_splat(builder, value, vector_type):
    """``value`` in every lane of a vector (``insert_element`` + a shuffle with an all-zero mask: a broadcast)."""
    i32 = ir.IntType(32)
    mask = ir.Constant(ir.VectorType(i32, vector_type.count), [0] * vector_type.count)
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), mask)


def emit_row_pointers(builder, data, row_bytes, first, valid, count):
    """Byte pointers to rows ``min(first + r, first + valid - 1)`` of an array at ``data``, for r < ``count``:
    a tile's rows past the valid ones repeat the last valid row (the caller drops their results)."""
    i64 = ir.IntType(64)
    base = builder.bitcast(data, ir.IntType(8).as_pointer())
    last = builder.add(first, builder.sub(valid, ir.Constant(i64, 1)))
    rows = []
    for r in range(count):
        row = builder.select(builder.icmp_signed("<", ir.Constant(i64, r), valid),
                             builder.add(first, ir.Constant(i64, r)), last)  # fmt: skip
        rows.append(builder.gep(base, [builder.mul(row, row_bytes)]))
    return rows


def _vector_bytes() -> int:
    """64 (zmm) where the CPU Numba compiles for has AVX-512F, else 32 (ymm: AVX2, or SSE pairs below it)."""
    return 64 if cpu_features().get("avx512f") else 32


VECTOR_BYTES = _vector_bytes()
TILE_ROWS = VECTOR_BYTES // 2  # rows of x per packed panel: two float32 vectors (16 with AVX2, 32 with AVX-512)
TILE_COLS = 6  # rows of W (output columns) per register tile: 6 x 2 = 12 vector accumulators
BLOCK_M = 256  # rows of x packed per pass
BLOCK_K = 4096  # K slice per pass: whole K for ErnieM-base (768, 3072) and -large (1024, 4096)
ROW_CHUNKS_FROM = 256  # from this many rows, ``_gemm_packed`` gives each thread whole rows (its ``chunks``)


@register_jitable
def tile_width(rows):
    """How many panel columns ``micro_tile`` computes when the caller needs ``rows`` of them: the first half
    of the panel (one vector of float32) when that holds them, else the whole panel. A short input (one text of
    16 tokens on AVX-512) then pays for the rows it has, not for a panel of zeros."""
    return TILE_ROWS // 2 if rows <= TILE_ROWS // 2 else TILE_ROWS


def micro_tile(w, j0, nc, k0, kc, panel, c, rows):
    """c[:, :n] = w[j0 + j, k0:k0 + kc] @ panel[:kc, :n] for j < TILE_COLS, n = ``tile_width(rows)`` (rows past
    nc repeat the last valid row, whose results the caller drops; c[:, n:] is left as it was). panel
    [kc, TILE_ROWS] is a packed slice of x^T, c is [TILE_COLS, TILE_ROWS].

    This NumPy body is the twin and runs when the JIT is disabled; compiled code gets ``_micro_tile_ir``.
    """
    n = tile_width(rows)
    j = np.minimum(np.arange(TILE_COLS), nc - 1) + j0
    c[:, :n] = w[j, k0 : k0 + kc] @ panel[:kc, :n]


@intrinsic
def _micro_tile_ir(typingctx, w, j0, nc, k0, kc, panel, c, rows):
    """``micro_tile`` written in LLVM IR with vector types, the register tile BLAS uses.

    Numba's own loops cannot produce it: LLVM's loop vectorizer turns any k loop with scalar accumulators into
    one reduction per accumulator (a dot form, which reloads x for every 3 FMAs), and Numba disables the SLP
    vectorizer (enabled, it shuffled the accumulators across vectors). Here, per k step: load the packed
    panel row (TILE_ROWS values = NV vectors), broadcast w[j0 + j, k0 + k] for each of the TILE_COLS rows of W
    and accumulate with fma into TILE_COLS x NV vector accumulators held in registers (phis); after the loop,
    store them to c. For float32 that is 2 loads, 6 broadcasts and 12 FMAs per k, no spills: on zmm with
    AVX-512 (32 panel rows), on ymm with AVX2 (16). A second loop of the same form over the first NV / 2
    vectors runs when ``rows`` fit in them (``tile_width``).
    """
    if not (isinstance(w, types.Array) and w.dtype in (types.float32, types.float64)
            and panel.dtype == w.dtype and c.dtype == w.dtype):  # fmt: skip
        return None  # one float dtype throughout (linear() casts the weight to x's dtype)
    dtype = w.dtype

    def codegen(context, builder, sig, args):
        w_val, j0, nc, k0, kc, panel_val, c_val, rows = args
        T = context.get_value_type(dtype)
        itemsize = context.get_abi_sizeof(T)
        VW = VECTOR_BYTES // itemsize  # values per vector
        NV = TILE_ROWS // VW  # vectors per panel row: 2 (float32) or 4 (float64)
        VT = ir.VectorType(T, VW)
        i64 = ir.IntType(64)

        def const(v):
            return ir.Constant(i64, v)

        w_arr = context.make_array(sig.args[0])(context, builder, w_val)
        panel_arr = context.make_array(sig.args[5])(context, builder, panel_val)
        c_arr = context.make_array(sig.args[6])(context, builder, c_val)
        w_row_bytes = cgutils.unpack_tuple(builder, w_arr.strides, 2)[0]
        w_rows = [  # pointer to w[min(j0 + j, j0 + nc - 1), k0] for each row j of the tile
            builder.bitcast(builder.gep(p, [builder.mul(k0, const(itemsize))]), T.as_pointer())
            for p in emit_row_pointers(builder, w_arr.data, w_row_bytes, j0, nc, TILE_COLS)
        ]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(VT, [VT, VT, VT]),
                                             f"llvm.fma.v{VW}f{8 * itemsize}")  # fmt: skip
        zeros = ir.Constant(VT, [ir.Constant(T, 0.0)] * VW)
        finish = builder.append_basic_block("tile.finish")

        def tile_loop(nv, name):
            """for k in range(kc): the TILE_COLS x nv accumulators (phis) += w[., k] * panel[k, :nv vectors];
            then store them to c[:, :nv vectors] and go to ``finish``."""

            def step(k, acc):  # one k: nv vector loads of the panel row, a broadcast and nv FMAs per row of W
                panel_row = builder.gep(panel_arr.data, [builder.mul(k, const(TILE_ROWS))])
                xv = [builder.load(builder.bitcast(builder.gep(panel_row, [const(v * VW)]), VT.as_pointer()),
                                   align=itemsize) for v in range(nv)]  # fmt: skip
                new = []
                for j in range(TILE_COLS):
                    splat = emit_splat(builder, builder.load(builder.gep(w_rows[j], [k])), VT)  # w[j, k]
                    new += [builder.call(fma, [splat, xv[v], acc[j * nv + v]]) for v in range(nv)]
                return new

            acc = emit_phi_loop(builder, kc, [zeros] * (TILE_COLS * nv), step, name)
            for j in range(TILE_COLS):  # c[j, v * VW : (v + 1) * VW] = acc
                for v in range(nv):
                    ptr = builder.gep(c_arr.data, [const(j * TILE_ROWS + v * VW)])
                    builder.store(acc[j * nv + v], builder.bitcast(ptr, VT.as_pointer()), align=itemsize)
            builder.branch(finish)

        full = builder.append_basic_block("tile.full")
        half = builder.append_basic_block("tile.half")
        builder.cbranch(builder.icmp_signed("<=", rows, const(TILE_ROWS // 2)), half, full)
        builder.position_at_end(full)
        tile_loop(NV, "tile")
        builder.position_at_end(half)
        tile_loop(NV // 2, "half")
        builder.position_at_end(finish)
        return context.get_dummy_value()

    sig = types.none(w, types.int64, types.int64, types.int64, types.int64, panel, c, types.int64)
    return sig, codegen


@overload(micro_tile, jit_options=JIT)
def _micro_tile_jit(w, j0, nc, k0, kc, panel, c, rows):
    def impl(w, j0, nc, k0, kc, panel, c, rows):
        _micro_tile_ir(w, np.int64(j0), np.int64(nc), np.int64(k0), np.int64(kc), panel, c, np.int64(rows))

    return impl


@jit(parallel=True)
def _gemm(x, ws, bs, residual, outs, epilogue, scratch):
    """outs[p] = x ws[p]^T + bs[p] (+ residual) for x [M, K], ws[p] [N_p, K] (torch's Linear layout), outs[p]
    [M, N_p]: one weight, or several that share the input (q, k and v), in one pass over one packing of x.

    The BLAS design (a broadcast-form register tile over one packed operand), with x as the packed one so
    the weights are used in place (memory-mapped, never copied) and packing costs M*K per call, not N*K
    (``_gemm_packed`` below is the other choice, for weights packed once at load).
    Blocking, from the registers out:
    * register tile (``micro_tile``): out^T[j0:j0 + 6, i0:i0 + TILE_ROWS] over a K slice, 6 rows of W
      broadcast against a packed panel of TILE_ROWS rows of x^T (32 with AVX-512, 16 with AVX2), 12 vector
      accumulators (2 loads + 6 broadcasts per 12 FMAs); a last panel whose rows fit in one vector runs the
      half tile (``tile_width``). It is emitted as LLVM vector IR (``_micro_tile_ir``); the NumPy
      ``micro_tile`` is its twin.
    * packing: per pass, the x block x[m0:m0 + BLOCK_M, k0:k0 + BLOCK_K] is copied transposed into panels
      [BLOCK_M / TILE_ROWS, BLOCK_K, TILE_ROWS] (rows past M are zeros), in parallel over panels, in ``scratch``
      (a buffer kept per Python thread: a fresh one per call cost ~6,300 page faults per B=8 L=128 forward).
    * cache: a task owns a strip of 6 rows of W (streamed from L2/L3, one value per 12 FMAs) and sweeps the
      packed x block, whose panels (TILE_ROWS x BLOCK_K floats, 384 KB at K = 3072 with AVX-512) stream from
      L2/L3 with 2 vector loads per 12 FMAs; partial sums of earlier K slices are read back from out.
    * epilogue, on the finished tile while it is in L1 (bias; bias then GELU, ``norm.gelu_row``; bias then
      the residual), then scattered to out: the same bits as a separate GELU pass over out, at the same
      speed within noise (M = 128 and 1024, N = 3072, 2 threads, 40 interleaved calls each: -2% to 0%).
    * parallelism: one level, over the W strips of a pass (never BLAS inside); with several weights the
      strips of all of them form one parallel loop, so x is packed once and the pool is woken twice per
      pass, not twice per weight.
    Remainders: rows past M are zero panel rows whose results are dropped; a narrow last strip (N % 6)
    repeats its last W row and drops those results. float64 runs the same tile with 4-double vectors (24
    accumulators, which spill: correct, not tuned).
    Its speed against OpenBLAS sgemm on ErnieM's shapes: ``scripts/bench/bench_kernels.py --threads 2 --only gemm``
    (and ``--only model-gemms`` for one forward's 48 calls); the measured runs are in docs/performance.md.
    """
    M, K = x.shape
    n_parts = len(ws)
    strips = np.empty(n_parts + 1, dtype=np.int64)  # strips[p]: first strip of weight p (cumulative)
    strips[0] = 0
    for p in range(n_parts):
        strips[p + 1] = strips[p] + (ws[p].shape[0] + TILE_COLS - 1) // TILE_COLS
    bm = min(M, BLOCK_M)
    bk = min(K, BLOCK_K)
    n_packed = (bm + TILE_ROWS - 1) // TILE_ROWS * bk * TILE_ROWS  # scratch holds at least this many values
    packed = scratch[:n_packed].reshape(((bm + TILE_ROWS - 1) // TILE_ROWS, bk, TILE_ROWS))
    for m0 in range(0, M, BLOCK_M):
        m1 = min(M, m0 + BLOCK_M)
        n_panels = (m1 - m0 + TILE_ROWS - 1) // TILE_ROWS
        for k0 in range(0, K, BLOCK_K):
            kc = min(BLOCK_K, K - k0)
            for q in prange(n_panels):  # x[i0:i0 + 16, k0:k0 + kc] -> packed[q, :kc, :] (x^T, zero-padded)
                i0 = m0 + q * TILE_ROWS
                rows = min(TILE_ROWS, m1 - i0)
                panel = packed[q]
                for r in range(rows):
                    xr = x[i0 + r, k0 : k0 + kc]
                    for k in range(kc):
                        panel[k, r] = xr[k]
                for r in range(rows, TILE_ROWS):
                    for k in range(kc):
                        panel[k, r] = 0
            last = k0 + kc == K
            for s in prange(strips[n_parts]):
                p = 0
                while s >= strips[p + 1]:
                    p += 1
                w, b, out = ws[p], bs[p], outs[p]
                j0 = (s - strips[p]) * TILE_COLS
                nc = min(TILE_COLS, w.shape[0] - j0)
                c = np.empty((TILE_COLS, TILE_ROWS), dtype=x.dtype)  # out^T tile
                for q in range(n_panels):
                    i0 = m0 + q * TILE_ROWS
                    rows = min(TILE_ROWS, m1 - i0)
                    width = tile_width(rows)  # the columns of c the tile computes
                    micro_tile(w, j0, nc, k0, kc, packed[q], c, rows)
                    if k0 > 0:  # partial sums of the earlier K slices
                        for r in range(rows):
                            for j in range(nc):
                                c[j, r] += out[i0 + r, j0 + j]
                    if last:  # epilogue on the tile, still in L1: bias, then GELU, or bias then residual
                        for j in range(nc):
                            cj = c[j, :width]
                            bj = b[j0 + j]
                            for r in range(width):
                                cj[r] += bj
                            if epilogue == EPILOGUE_GELU:
                                gelu_row(cj)
                        if epilogue == EPILOGUE_RESIDUAL:
                            for r in range(rows):
                                for j in range(nc):
                                    c[j, r] += residual[i0 + r, j0 + j]
                    for r in range(rows):  # out[i0 + r, j0:j0 + nc] = c[:nc, r]
                        o = out[i0 + r, j0 : j0 + nc]
                        for j in range(nc):
                            o[j] = c[j, r]


_gemm_serial = serial_twin(_gemm, "_gemm_serial")


# ================================================================================================ packed weights
PACK_LANES = VECTOR_BYTES // 4  # float32 lanes per vector: 16 (zmm) or 8 (ymm)
PACK_NV = 4 if VECTOR_BYTES == 64 else 2  # vectors of output columns per tile: 6 x 4 = 24 zmm or 6 x 2 = 12 ymm
PACK_COLS = PACK_NV * PACK_LANES  # output columns per strip of a packed weight: 64 (AVX-512) or 16 (AVX2)
PACK_ROWS = 6  # rows of x per tile


class PackedWeight:
    """A float32 Linear weight [N, K] packed once for ``_gemm_packed``: ``packed`` is
    [ceil(N / PACK_COLS), K, PACK_COLS] (strip s, input k, column j holds w[s * PACK_COLS + j, k]; zeros past
    N), so that one step k of a tile loads PACK_NV whole vectors of consecutive output columns. Read-only."""

    def __init__(self, weight):
        w = np.asarray(weight)
        if w.ndim != 2 or w.dtype != np.float32:
            raise ValueError(f"a packed weight is a 2-D float32 [out, in] array, got {w.dtype} {w.shape}")
        N, K = w.shape
        S = -(-N // PACK_COLS)
        packed = np.zeros((S, K, PACK_COLS), dtype=np.float32)
        for s in range(S):  # one strip at a time: no full-size temporary
            rows = w[s * PACK_COLS : (s + 1) * PACK_COLS]
            packed[s, :, : rows.shape[0]] = rows.T
        packed.flags.writeable = False
        self.packed, self.shape, self.dtype = packed, (N, K), np.dtype(np.float32)

    def __setstate__(self, state):  # an unpickled copy is read-only again: one Numba type, no second compile
        self.__dict__.update(state)
        self.packed.flags.writeable = False

    def unpack(self):
        """The weight [N, K] again (a copy)."""
        N, K = self.shape
        return np.ascontiguousarray(self.packed.transpose(0, 2, 1).reshape(self.packed.shape[0] * PACK_COLS, K)[:N])

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes


def packed_tile(x, i0, nr, wp, s, c):
    """c [PACK_ROWS, PACK_COLS] = x[i0 + r] @ wp[s] for r < nr: x [M, K] read in place, wp a
    ``PackedWeight.packed``. c's rows past nr hold whatever the tile's form left there (the twin repeats the
    last valid row, the compiled tile may leave zeros: ``emit_row_forms``); the caller drops them.

    This NumPy body is the twin and runs when the JIT is disabled; compiled code gets ``_packed_tile_ir``."""
    rows = np.minimum(np.arange(PACK_ROWS), nr - 1) + i0
    c[:, :] = x[rows] @ wp[s]


@register_jitable
def finish_narrow_strip(tile, out, i0, nr, j0, nc, gelu, gelu_f32, residual, add_res):
    """The last strip of a weight whose N is not a multiple of the tile's columns: copy the nc valid columns of
    the tile's nr rows (finished up to the bias) into out's rows from i0, columns from j0, then GELU
    (``gelu_row``, or ``gelu_row_f32`` with gelu_f32) or the residual add, (y + b) + r as whole strips add it."""
    for r in range(nr):
        o = out[i0 + r, j0 : j0 + nc]
        o[:] = tile[r, :nc]
        if gelu:
            if gelu_f32:
                gelu_row_f32(o)
            else:
                gelu_row(o)
        elif add_res:
            res = residual[i0 + r, j0 : j0 + nc]
            for j in range(nc):
                o[j] += res[j]


def packed_tile_out(x, i0, nr, wp, s, y, yi, yj, b, res, add_res):
    """The tile finished in registers: for r < nr, ``y[yi + r, yj + t] = (x[i0 + r] @ wp[s])[t] + b[s PACK_COLS
    + t]``, then ``+ res[i0 + r, yj + t]`` when ``add_res`` (two adds, in that order), for t < PACK_COLS; b
    covers whole strips (zeros past N); y's rows past nr are not touched.

    This NumPy body is the twin and runs when the JIT is disabled; compiled code gets ``_packed_tile_out_ir``."""
    c = np.empty((PACK_ROWS, PACK_COLS), dtype=np.float32)
    packed_tile(x, i0, nr, wp, s, c)
    v = c[:nr] + b[s * PACK_COLS : (s + 1) * PACK_COLS]
    if add_res:
        v = v + res[i0 : i0 + nr, yj : yj + PACK_COLS]
    y[yi : yi + nr, yj : yj + PACK_COLS] = v


def _packed_products(context, builder, sig, args):
    """The tile's PACK_ROWS x PACK_NV accumulator vectors after the loop over K (``packed_tile``'s loop: args
    begin x, i0, nr, wp, s), for its first nr rows (``emit_row_forms``: the others are zeros or repeats)."""
    _, i0, nr, _, s = args[:5]
    f32, VT = ir.FloatType(), ir.VectorType(ir.FloatType(), PACK_LANES)
    const = functools.partial(ir.Constant, ir.IntType(64))
    x_arr, w_arr = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 3))
    K = cgutils.unpack_tuple(builder, w_arr.shape, 3)[1]
    x_row_bytes = cgutils.unpack_tuple(builder, x_arr.strides, 2)[0]
    x_rows = [  # pointer to x[min(i0 + r, i0 + nr - 1), 0] for each row r of the tile
        builder.bitcast(p, f32.as_pointer())
        for p in emit_row_pointers(builder, x_arr.data, x_row_bytes, i0, nr, PACK_ROWS)
    ]
    strip_bytes = cgutils.unpack_tuple(builder, w_arr.strides, 3)[0]
    w_bytes = builder.bitcast(w_arr.data, ir.IntType(8).as_pointer())
    strip = builder.bitcast(builder.gep(w_bytes, [builder.mul(s, strip_bytes)]), f32.as_pointer())
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(VT, [VT, VT, VT]),
                                         f"llvm.fma.v{PACK_LANES}f32")  # fmt: skip
    zeros = ir.Constant(VT, [ir.Constant(f32, 0.0)] * PACK_LANES)

    def loop(rows):  # for k in range(K), over the first ``rows`` rows of the tile
        def step(k, acc):  # one k: PACK_NV vector loads of the strip's row k, a broadcast and PACK_NV FMAs per row
            w_row = builder.gep(strip, [builder.mul(k, const(PACK_COLS))])
            wv = [builder.load(builder.bitcast(builder.gep(w_row, [const(v * PACK_LANES)]), VT.as_pointer()),
                               align=4) for v in range(PACK_NV)]  # fmt: skip
            new = []
            for r in range(rows):
                splat = emit_splat(builder, builder.load(builder.gep(x_rows[r], [k])), VT)  # x[i0 + r, k]
                new += [builder.call(fma, [splat, wv[v], acc[r * PACK_NV + v]]) for v in range(PACK_NV)]
            return new

        return emit_phi_loop(builder, K, [zeros] * (rows * PACK_NV), step, f"ptile{rows}")

    return emit_row_forms(builder, nr, PACK_ROWS, PACK_NV, zeros, loop, "ptile")


def emit_write_prefetch(builder, rows, nbytes):
    """Ask for the cache lines of ``nbytes`` bytes at each of the byte pointers ``rows``, for writing: a tile
    that writes them after its loop then finds them in cache instead of each store waiting for its line."""
    i8, i32 = ir.IntType(8), ir.IntType(32)
    # the unmangled name, which LLVM's IR reader maps to the pointer type's overload (checked: LLVM 14 and 22)
    prefetch = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]), "llvm.prefetch"
    )
    for row in rows:
        for offset in range(0, nbytes, 64):  # write, keep in all cache levels, data
            line = builder.gep(row, [ir.Constant(ir.IntType(64), offset)])
            builder.call(prefetch, [line, *(ir.Constant(i32, v) for v in (1, 3, 1))])


def _float_arrays(*arrays_ndim):
    return all(isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == n and a.layout == "C"
               for a, n in arrays_ndim)  # fmt: skip


@intrinsic
def _packed_tile_ir(typingctx, x, i0, nr, wp, s, c):
    """``packed_tile`` in LLVM IR: the register tile with its vectors along N, as BLAS's sgemm kernels lay it
    out when the weight is packed. Per k: PACK_NV vector loads of the strip's row k (PACK_COLS consecutive
    output columns), and for each of the PACK_ROWS rows of x a broadcast of x[i0 + r, k] (read in place) and
    PACK_NV FMAs into that row's accumulators (phis). After the loop the accumulators are stored to c, whose
    rows are rows of the output."""
    if not (isinstance(x, types.Array) and x.dtype == types.float32 and _float_arrays((wp, 3), (c, 2))):
        return None

    def codegen(context, builder, sig, args):
        acc = _packed_products(context, builder, sig, args)
        VT = ir.VectorType(ir.FloatType(), PACK_LANES)
        c_data = context.make_array(sig.args[5])(context, builder, args[5]).data
        for r in range(PACK_ROWS):  # c[r, v * LANES : (v + 1) * LANES] = acc
            for v in range(PACK_NV):
                ptr = builder.gep(c_data, [ir.Constant(ir.IntType(64), r * PACK_COLS + v * PACK_LANES)])
                builder.store(acc[r * PACK_NV + v], builder.bitcast(ptr, VT.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(x, types.int64, types.int64, wp, types.int64, c), codegen


@intrinsic
def _packed_tile_out_ir(typingctx, x, i0, nr, wp, s, y, yi, yj, b, res, add_res):
    """``packed_tile_out`` in LLVM IR: write prefetches for the tile's rows of y, ``packed_tile``'s loop, then
    per valid row the bias add, the residual add when asked, and the stores into y."""
    if not (isinstance(x, types.Array) and x.dtype == types.float32
            and _float_arrays((wp, 3), (y, 2), (b, 1), (res, 2))):  # fmt: skip
        return None

    def codegen(context, builder, sig, args):
        _, i0, nr, _, s, _, yi, yj, _, _, add_res = args
        i8, i64, f32 = ir.IntType(8), ir.IntType(64), ir.FloatType()
        VT = ir.VectorType(f32, PACK_LANES)
        const = functools.partial(ir.Constant, i64)
        y_arr, b_arr, res_arr = (context.make_array(sig.args[k])(context, builder, args[k]) for k in (5, 8, 9))

        def row_pointer(arr, row):  # a float32 pointer to element 0 of row ``row`` of a 2-D array
            row_bytes = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
            base = builder.bitcast(arr.data, i8.as_pointer())
            return builder.bitcast(builder.gep(base, [builder.mul(row, row_bytes)]), f32.as_pointer())

        def vector_at(ptr, index):  # an unaligned vector address: element ``index`` of ptr
            return builder.bitcast(builder.gep(ptr, [index]), VT.as_pointer())

        y_rows = [row_pointer(y_arr, builder.add(yi, builder.select(builder.icmp_signed("<", const(r), nr),
                                                                    const(r), const(0))))
                  for r in range(PACK_ROWS)]  # fmt: skip
        emit_write_prefetch(builder, [builder.bitcast(builder.gep(row, [yj]), i8.as_pointer()) for row in y_rows],
                            PACK_COLS * 4)  # fmt: skip
        acc = _packed_products(context, builder, sig, args)
        j0 = builder.mul(s, const(PACK_COLS))
        b_v = [builder.load(vector_at(b_arr.data, builder.add(j0, const(v * PACK_LANES))), align=4)
               for v in range(PACK_NV)]  # fmt: skip
        y_cols = [builder.add(yj, const(v * PACK_LANES)) for v in range(PACK_NV)]
        for r in range(PACK_ROWS):
            with builder.if_then(builder.icmp_signed("<", const(r), nr)):
                out = [builder.fadd(acc[r * PACK_NV + v], b_v[v]) for v in range(PACK_NV)]
                with builder.if_else(add_res) as (then, otherwise):
                    with then:  # (y + b) + r, never y + (b + r)
                        res_row = row_pointer(res_arr, builder.add(i0, const(r)))
                        for v in range(PACK_NV):
                            total = builder.fadd(out[v], builder.load(vector_at(res_row, y_cols[v]), align=4))
                            builder.store(total, vector_at(y_rows[r], y_cols[v]), align=4)
                    with otherwise:
                        for v in range(PACK_NV):
                            builder.store(out[v], vector_at(y_rows[r], y_cols[v]), align=4)
        return context.get_dummy_value()

    i64 = types.int64
    return types.none(x, i64, i64, wp, i64, y, i64, i64, b, res, types.boolean), codegen


@overload(packed_tile, jit_options=JIT)
def _packed_tile_jit(x, i0, nr, wp, s, c):
    def impl(x, i0, nr, wp, s, c):
        _packed_tile_ir(x, np.int64(i0), np.int64(nr), wp, np.int64(s), c)

    return impl


@overload(packed_tile_out, jit_options=JIT)
def _packed_tile_out_jit(x, i0, nr, wp, s, y, yi, yj, b, res, add_res):
    def impl(x, i0, nr, wp, s, y, yi, yj, b, res, add_res):
        _packed_tile_out_ir(x, np.int64(i0), np.int64(nr), wp, np.int64(s), y, np.int64(yi), np.int64(yj), b, res,
                            add_res)  # fmt: skip

    return impl


@jit(parallel=True)
def _gemm_packed(x, wps, bs, residual, outs, epilogue, chunks):
    """outs[p] = x W_p^T + bs[p] (+ GELU, or + residual) for x [M, K] float32 (read in place) and weights
    packed at load (``PackedWeight.packed``, [S_p, K, PACK_COLS]); one weight or several that share x (q, k
    and v), whose strips form one parallel loop.

    A task owns one strip of PACK_COLS output columns (K x PACK_COLS floats: 192 KB at K = 768 with AVX-512,
    read from memory once and then from L2) and BLOCK_M rows of x, which it sweeps PACK_ROWS rows at a time
    through ``packed_tile_out``: the tile adds the bias (bs[p] covers whole strips, zeros past N) and the
    residual in registers and stores into out's rows; GELU (``norm.gelu_row``) then runs on those rows while
    they are in L1. A strip narrower than PACK_COLS (N not a multiple of it) is finished in a scratch tile and
    copied. One level of parallelism, over ``chunks`` x strips x row blocks: with one chunk of rows per
    thread (from ROW_CHUNKS_FROM rows) each thread computes whole rows, the rows LayerNorm and attention
    give the same thread, so each reads what its own core wrote. Against ``_gemm``: no packing of x per call,
    one weight stream per task, and an epilogue in registers instead of a transposing scatter.
    Its speed: ``scripts/bench/bench_kernels.py --threads 2 --only model-gemms``; docs/performance.md."""
    M = x.shape[0]
    n_parts = len(wps)
    n_blocks = ((M + chunks - 1) // chunks + BLOCK_M - 1) // BLOCK_M  # row blocks per chunk (a last one may be empty)
    strips = np.empty(n_parts + 1, dtype=np.int64)  # strips[p]: first strip of weight p (cumulative)
    strips[0] = 0
    for p in range(n_parts):
        strips[p + 1] = strips[p] + wps[p].shape[0]
    n_strips = strips[n_parts]
    add_res = epilogue == EPILOGUE_RESIDUAL
    for task in prange(chunks * n_strips * n_blocks):
        chunk, rest = task // (n_strips * n_blocks), task % (n_strips * n_blocks)
        t = rest // n_blocks  # the strip; the row blocks of one strip are neighbouring tasks
        m0 = chunk * M // chunks + (rest % n_blocks) * BLOCK_M
        m1 = min((chunk + 1) * M // chunks, m0 + BLOCK_M)
        p = 0
        while t >= strips[p + 1]:
            p += 1
        wp, b, out = wps[p], bs[p], outs[p]
        s = t - strips[p]
        j0 = s * PACK_COLS
        nc = min(PACK_COLS, out.shape[1] - j0)
        c = np.empty((PACK_ROWS, PACK_COLS), dtype=np.float32)
        for i0 in range(m0, m1, PACK_ROWS):
            nr = min(PACK_ROWS, m1 - i0)
            if nc == PACK_COLS:
                packed_tile_out(x, i0, nr, wp, s, out, i0, j0, b, residual, add_res)
                if epilogue == EPILOGUE_GELU:
                    for r in range(nr):
                        gelu_row(out[i0 + r, j0 : j0 + nc])
            else:  # the last, narrower strip: the whole tile into scratch, then its nc columns
                packed_tile_out(x, i0, nr, wp, s, c, 0, 0, b, residual, False)
                finish_narrow_strip(c, out, i0, nr, j0, nc, epilogue == EPILOGUE_GELU, False, residual, add_res)


_gemm_packed_serial = serial_twin(_gemm_packed, "_gemm_packed_serial")


def linear(x, weight, bias=None, activation=None, residual=None):
    """Numba x [..., K] @ weight[N, K]^T + bias [N] -> [..., N]; activation "gelu" or a residual [..., N] fused.

    float32 or float64 (the weight and bias are cast to x's dtype). K = 0 gives the bias (and its epilogue).
    ``weight`` may be a ``PackedWeight`` (float32 x only): the same numbers from ``_gemm_packed``.
    """
    if activation is not None and residual is not None:
        raise ValueError("fuse either an activation or a residual add, not both")
    if activation not in (None, "gelu"):
        raise ValueError(f"the fused activation must be 'gelu', got {activation!r}")
    (out,) = _linear_parts(x, [(weight, bias)], residual, activation == "gelu")
    return out


def linear_many(x, params):
    """Several Linear layers on one input, in one kernel call: params [(weight [N_p, K], bias [N_p] or None),
    ...] -> [x @ weight^T + bias for each]. The q, k and v projections use it: x is packed once and the
    strips of all the weights share one parallel loop (at B = 1, L = 128 three separate calls pay three
    packings and six wake-ups of the thread pool for 0.15 GFLOP each)."""
    return _linear_parts(x, list(params), None)


_scratch_local = threading.local()


def _scratch(M, K, dtype):
    """The packing buffer for an M x K input: kept per Python thread and dtype and grown when needed, so a
    forward pass does not allocate (and page-fault in) a fresh one of up to 4 MB per GEMM."""
    n = (min(M, BLOCK_M) + TILE_ROWS - 1) // TILE_ROWS * min(K, BLOCK_K) * TILE_ROWS
    buffers = _scratch_local.__dict__.setdefault("buffers", {})
    buf = buffers.get(np.dtype(dtype))
    if buf is None or buf.size < n:
        buf = buffers[np.dtype(dtype)] = np.empty(n, dtype=dtype)
    return buf


def _readonly(a):
    """A read-only view, so that memory-mapped and in-memory weights have one Numba type (one tuple type)."""
    v = a.view()
    v.flags.writeable = False
    return v


def _linear_parts(x, params, residual, gelu=False):
    lead = x.shape[:-1]
    K = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(math.prod(lead), K)  # (-1, K) fails for K = 0
    M = x2.shape[0]
    ws, bs, outs = [], [], []
    n_packed = sum(isinstance(weight, PackedWeight) for weight, _ in params)
    if n_packed and (n_packed < len(params) or x2.dtype != np.float32):
        raise ValueError("packed weights take float32 inputs, and one call takes packed weights only or none, "
                         f"got {n_packed} packed of {len(params)} and {x2.dtype} inputs")  # fmt: skip
    for weight, bias in params:
        if isinstance(weight, PackedWeight):
            w = weight.packed
            if weight.shape[1] != K:
                raise ValueError(f"packed weight of shape {weight.shape} does not take inputs of {K} features")
            N = weight.shape[0]
        else:
            w = np.ascontiguousarray(weight, dtype=x2.dtype)  # no copy when it matches
            if w.ndim != 2 or w.shape[1] != K:
                raise ValueError(f"weight of shape {w.shape} does not take inputs of {K} features ([out, in] layout)")
            N = w.shape[0]
        b = np.zeros(N, dtype=x2.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x2.dtype)
        if b.shape != (N,):
            raise ValueError(f"bias of shape {b.shape} does not match a weight with {N} outputs")
        ws.append(_readonly(w))
        bs.append(_readonly(b))
        outs.append(np.empty((M, N), dtype=x2.dtype))
    results = [out.reshape(lead + (out.shape[1],)) for out in outs]
    if M == 0:
        return results
    epilogue = EPILOGUE_GELU if gelu else EPILOGUE_BIAS
    r2 = outs[0]
    if residual is not None:
        epilogue = EPILOGUE_RESIDUAL
        r2 = np.ascontiguousarray(residual, dtype=x2.dtype).reshape(outs[0].shape)
    if K == 0:
        for out, b in zip(outs, bs, strict=True):
            out[:] = b
            if gelu:
                gelu_inplace(out)
        if residual is not None:
            outs[0] += r2
    else:
        flops = 2 * M * K * sum(out.shape[1] for out in outs)
        if n_packed:
            strip_bs = []  # the biases over whole strips (zeros past N): a tile reads whole vectors
            for w, b in zip(ws, bs, strict=True):
                padded = np.zeros(w.shape[0] * PACK_COLS, np.float32)
                padded[: b.shape[0]] = b
                strip_bs.append(_readonly(padded))
            chunks = get_num_threads() if M >= ROW_CHUNKS_FROM else 1
            run(_gemm_packed, _gemm_packed_serial, flops, x2, tuple(ws), tuple(strip_bs), r2, tuple(outs), epilogue,
                chunks)  # fmt: skip
        else:
            run(_gemm, _gemm_serial, flops, x2, tuple(ws), tuple(bs), r2, tuple(outs), epilogue,
                _scratch(M, K, x2.dtype))  # fmt: skip
    return results
