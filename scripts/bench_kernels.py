"""The Numba GEMM against NumPy/OpenBLAS sgemm on ErnieM shapes, in one run, same threads.

    .venv/bin/python scripts/bench_kernels.py [--threads 2] [--reps 15]

For each shape (M rows, K in, N out) it times y = x W^T + b both ways (best of --reps, so a busy machine's
noise shows as less, not more) and prints GFLOP/s and the kernel's fraction of OpenBLAS. The Numba kernel is
timed first and the script sleeps after each BLAS call: OpenBLAS's threads spin-wait for a while after a call
and, timed right after one, the kernel loses a core to them (that cost up to 2x in earlier measurements).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    import numpy as np

    from erniem_np.kernels import gemm

    def best(f):
        f()
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    rng = np.random.default_rng(0)
    print(f"{'M':>5} {'K':>5} {'N':>5}  {'OpenBLAS GF/s':>13}  {'Numba GF/s':>10}  fraction")
    for M in (128, 1024, 4096):
        for K, N in ((768, 768), (768, 3072), (3072, 768), (1024, 4096), (4096, 1024)):
            x = rng.standard_normal((M, K), dtype=np.float32)
            w = rng.standard_normal((N, K), dtype=np.float32)
            b = rng.standard_normal(N, dtype=np.float32)
            flop = 2 * M * K * N
            t_numba = best(lambda: gemm.linear(x, w, b))  # noqa: B023
            t_blas = best(lambda: x @ w.T + b)  # noqa: B023
            time.sleep(0.5)  # OpenBLAS threads spin after a call and would take the cores from the next kernel
            print(f"{M:>5} {K:>5} {N:>5}  {flop / t_blas / 1e9:>13.0f}  {flop / t_numba / 1e9:>10.0f}  "
                  f"{t_blas / t_numba:>7.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
