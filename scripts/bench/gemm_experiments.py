"""Scratch harness for the GEMM kernel: dot-form register-tile variants against kernels/gemm.py and OpenBLAS.

    NUMBA_NUM_THREADS=2 .venv/bin/python scripts/bench/gemm_experiments.py --threads 2 --rounds 5 \
        [--variants 4x3:128:3072 2x6:128:3072]

A variant ``TMxTN:BLOCK_M:BLOCK_K`` is the previous kernel's dot-form loop nest (a TM x TN register tile over
rows of x and rows of W, each a dot product along K that LLVM vectorises into one ymm accumulator per output;
the x block shared by all column-strip tasks) generated for that tile and blocking: ``4x3:128:3072`` is the
kernel kernels/gemm.py had before 2026-11-24. ``packed:BLOCK_M:BLOCK_K`` is the current kernel
(kernels/gemm.py ``_gemm``) with other blocking constants.
Each round times, per shape, OpenBLAS, the current kernel and every variant in a rotating order, with a pause
after each BLAS call (its threads spin and would steal the cores); the table gives best-of-rounds and median
time as a ratio to OpenBLAS's best (above 100% = faster than OpenBLAS).
"""

from __future__ import annotations

import argparse
import os
import time

SHAPES = [(M, K, N) for M in (128, 1024, 4096)
          for K, N in ((768, 768), (768, 3072), (3072, 768), (1024, 4096), (4096, 1024))]  # fmt: skip


def dot_tile_kernel(TM, TN, BLOCK_M, BLOCK_K):
    """Source of a dot-form kernel with a TM x TN tile (bias epilogue only; remainders by plain dot products)."""
    accs = [(r, c) for r in range(TM) for c in range(TN)]
    L = ["def kernel(x, w, b, out):",
         "    M, K = x.shape", "    N = w.shape[0]", f"    n_strips = (N + {TN - 1}) // {TN}",
         "    zero = x.dtype.type(0)",
         f"    for m0 in range(0, M, {BLOCK_M}):",
         f"        m1 = min(M, m0 + {BLOCK_M})", f"        m_full = m0 + (m1 - m0) // {TM} * {TM}",
         f"        for k0 in range(0, K, {BLOCK_K}):",
         f"            k1 = min(K, k0 + {BLOCK_K})", "            nk = k1 - k0", "            first = k0 == 0",
         "            for s in prange(n_strips):",
         f"                j0 = s * {TN}", f"                jn = min({TN}, N - j0)", "                row_start = m0",
         f"                if jn == {TN}:"]  # fmt: skip
    L += [f"                    w{c} = w[j0 + {c}, k0:k1]" for c in range(TN)]
    L += [f"                    for i0 in range(m0, m_full, {TM}):"]
    L += [f"                        x{r} = x[i0 + {r}, k0:k1]" for r in range(TM)]
    L += [
        "                        " + " = ".join(f"s{r}{c}" for r, c in accs) + " = zero",
        "                        for k in range(nk):",
    ]
    L += [f"                            c{c} = w{c}[k]" for c in range(TN)]
    for r in range(TM):
        L += [f"                            a = x{r}[k]"]
        L += [f"                            s{r}{c} += a * c{c}" for c in range(TN)]
    L += ["                        if not first:"]
    L += [f"                            s{r}{c} += out[i0 + {r}, j0 + {c}]" for r, c in accs]
    L += [f"                        out[i0 + {r}, j0 + {c}] = s{r}{c}" for r, c in accs]
    L += ["                    row_start = m_full",
          "                for i in range(row_start, m1):",
          "                    xi = x[i, k0:k1]",
          "                    for j in range(j0, j0 + jn):",
          "                        wj = w[j, k0:k1]", "                        acc = zero",
          "                        for k in range(nk):", "                            acc += xi[k] * wj[k]",
          "                        out[i, j] = acc if first else out[i, j] + acc",
          "                if k1 == K:",
          "                    for i in range(m0, m1):",
          "                        for j in range(j0, j0 + jn):", "                            out[i, j] += b[j]"]  # fmt: skip
    return "\n".join(L)


def build(spec):
    import numba
    import numpy as np
    from erniem_np.kernels.settings import PARALLEL_JIT

    tile, bm, bk = spec.split(":")
    if tile == "packed":  # kernels/gemm.py's _gemm with other blocking constants
        import types

        from erniem_np.kernels import gemm

        f = gemm._gemm.py_func
        clone = types.FunctionType(f.__code__, dict(f.__globals__, BLOCK_M=int(bm), BLOCK_K=int(bk)), "packed")
        kernel = numba.njit(**dict(PARALLEL_JIT, cache=False))(clone)
        return lambda x, w, b, out: kernel(x, (w,), (b,), out, (out,), 0, gemm._scratch(*x.shape, x.dtype))
    TM, TN = (int(v) for v in tile.split("x"))
    ns = {"prange": numba.prange, "np": np}
    exec(dot_tile_kernel(TM, TN, int(bm), int(bk)), ns)
    return numba.njit(**dict(PARALLEL_JIT, cache=False))(ns["kernel"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="timed calls per candidate per round")
    ap.add_argument("--variants", nargs="*", default=["4x3:128:3072", "packed:256:3072", "packed:128:1024"])
    ap.add_argument("--shapes", default="all", help="'all' or a comma list of MxKxN")
    ap.add_argument("--asm", help="write the assembly of the first variant to this file")
    args = ap.parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    import numpy as np
    from erniem_np.kernels import gemm

    shapes = SHAPES if args.shapes == "all" else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    kernels = {v: build(v) for v in args.variants}
    rng = np.random.default_rng(0)
    names = ["openblas", "current"] + list(kernels)
    print(
        f"{'M':>5} {'K':>5} {'N':>5}  "
        + "  ".join(f"{n:>16}" for n in names[1:])
        + "   (best / median, % of OpenBLAS speed)"
    )
    for M, K, N in shapes:
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((N, K), dtype=np.float32)
        b = rng.standard_normal(N, dtype=np.float32)
        out = np.empty((M, N), np.float32)
        calls = {"openblas": lambda: x @ w.T + b, "current": lambda: gemm.linear(x, w, b)}  # noqa: B023
        for v, k in kernels.items():
            calls[v] = lambda k=k: k(x, w, b, out)  # noqa: B023
            k(x, w, b, out)
            ref = x @ w.T + b
            assert np.allclose(out, ref, rtol=1e-3, atol=1e-2 * np.sqrt(K)), v
        times = {n: [] for n in names}
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for n in order:
                calls[n]()
                for _ in range(args.reps):
                    t = time.perf_counter()
                    calls[n]()
                    times[n].append(time.perf_counter() - t)
                if n == "openblas":
                    time.sleep(0.3)
        blas = min(times["openblas"])
        cells = [f"{blas / min(times[n]):>7.0%} / {blas / np.median(times[n]):>5.0%}" for n in names[1:]]
        print(f"{M:>5} {K:>5} {N:>5}  " + "  ".join(f"{c:>16}" for c in cells), flush=True)
    if args.asm:
        k = kernels[args.variants[0]]
        k = getattr(k, "inspect_asm", None) and k or gemm._gemm
        with open(args.asm, "w") as f:
            f.write(k.inspect_asm(k.signatures[0]))


if __name__ == "__main__":
    main()
