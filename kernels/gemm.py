"""GEMM for every Linear layer, y = x W^T + b with W stored [out, in]: the NumPy twin first, then Numba.

Dimension legend: M rows (B * L), K input features, N output features.

Epilogues fused into the same call: bias; bias then GELU; bias then a residual add.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload, register_jitable

from .norm import gelu_inplace, gelu_ref, gelu_row
from .settings import JIT, cpu_features, jit, run, serial_twin

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
def _vector_bytes() -> int:
    """64 (zmm) where the CPU Numba compiles for has AVX-512F, else 32 (ymm: AVX2, or SSE pairs below it)."""
    return 64 if cpu_features().get("avx512f") else 32


VECTOR_BYTES = _vector_bytes()
TILE_ROWS = VECTOR_BYTES // 2  # rows of x per packed panel: two float32 vectors (16 with AVX2, 32 with AVX-512)
TILE_COLS = 6  # rows of W (output columns) per register tile: 6 x 2 = 12 vector accumulators
BLOCK_M = 256  # rows of x packed per pass
BLOCK_K = 4096  # K slice per pass: whole K for ErnieM-base (768, 3072) and -large (1024, 4096)


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
        w_bytes = builder.bitcast(w_arr.data, ir.IntType(8).as_pointer())
        w_rows = []  # pointer to w[min(j0 + j, j0 + nc - 1), k0] for each row j of the tile
        for j in range(TILE_COLS):
            row = builder.select(builder.icmp_signed("<", const(j), nc), builder.add(j0, const(j)),
                                 builder.add(j0, builder.sub(nc, const(1))))  # fmt: skip
            offset = builder.add(builder.mul(row, w_row_bytes), builder.mul(k0, const(itemsize)))
            w_rows.append(builder.bitcast(builder.gep(w_bytes, [offset]), T.as_pointer()))
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(VT, [VT, VT, VT]),
                                             f"llvm.fma.v{VW}f{8 * itemsize}")  # fmt: skip
        zeros = ir.Constant(VT, [ir.Constant(T, 0.0)] * VW)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), VW), [0] * VW)
        finish = builder.append_basic_block("tile.finish")

        def tile_loop(nv, name):
            """for k in range(kc): the TILE_COLS x nv accumulators (phis) += w[., k] * panel[k, :nv vectors];
            then store them to c[:, :nv vectors] and go to ``finish``."""
            entry = builder.block
            head = builder.append_basic_block(f"{name}.head")
            body = builder.append_basic_block(f"{name}.body")
            done = builder.append_basic_block(f"{name}.done")
            builder.branch(head)
            builder.position_at_end(head)
            k = builder.phi(i64)
            k.add_incoming(const(0), entry)
            acc = [builder.phi(VT) for _ in range(TILE_COLS * nv)]
            for a in acc:
                a.add_incoming(zeros, entry)
            builder.cbranch(builder.icmp_signed("<", k, kc), body, done)

            builder.position_at_end(body)
            panel_row = builder.gep(panel_arr.data, [builder.mul(k, const(TILE_ROWS))])
            xv = [builder.load(builder.bitcast(builder.gep(panel_row, [const(v * VW)]), VT.as_pointer()),
                               align=itemsize) for v in range(nv)]  # fmt: skip
            new = []
            for j in range(TILE_COLS):
                wjk = builder.load(builder.gep(w_rows[j], [k]))
                splat = builder.shuffle_vector(builder.insert_element(ir.Constant(VT, ir.Undefined), wjk,
                                                                      ir.Constant(ir.IntType(32), 0)),
                                               ir.Constant(VT, ir.Undefined), splat_mask)  # fmt: skip
                new += [builder.call(fma, [splat, xv[v], acc[j * nv + v]]) for v in range(nv)]
            k.add_incoming(builder.add(k, const(1)), builder.block)
            for a, n in zip(acc, new, strict=True):
                a.add_incoming(n, builder.block)
            builder.branch(head)

            builder.position_at_end(done)  # c[j, v * VW : (v + 1) * VW] = acc
            for j in range(TILE_COLS):
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
    the weights are used in place (memory-mapped, never copied) and packing costs M*K per call, not N*K.
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


def linear(x, weight, bias=None, activation=None, residual=None):
    """Numba x [..., K] @ weight[N, K]^T + bias [N] -> [..., N]; activation "gelu" or a residual [..., N] fused.

    float32 or float64 (the weight and bias are cast to x's dtype). K = 0 gives the bias (and its epilogue).
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
    for weight, bias in params:
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
        run(_gemm, _gemm_serial, flops, x2, tuple(ws), tuple(bs), r2, tuple(outs), epilogue, _scratch(M, K, x2.dtype))
    return results
