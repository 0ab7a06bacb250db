"""Check the Numba GELU against exact GELU on every finite float32 (about 4.28e9 values, a few minutes).

    .venv/bin/python scripts/bench/check_gelu_float32.py

The float32 GELU (kernels/norm.py: a rational erf in float64, used by ``norm.gelu`` and the GEMM's GELU
epilogue) must stay within 1e-6 absolute of 0.5 x (1 + erf(x / sqrt 2)) computed in float64 with SciPy's erf.
The test suite checks a sample (tests/test_kernels.py); this walks all 2^32 bit patterns in slices of 2^24,
skips NaN and inf (tested separately), and prints the worst absolute error and where it occurs.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.special import erf

from erniem_np.kernels import norm

BOUND = 1e-6


def main() -> int:
    t0 = time.perf_counter()
    worst, worst_x, count = 0.0, None, 0
    step = 1 << 24
    for start in range(0, 1 << 32, step):
        x = np.arange(start, start + step, dtype=np.uint32).view(np.float32)
        x = x[np.isfinite(x)]
        count += x.size
        xd = x.astype(np.float64)
        exact = 0.5 * xd * (1.0 + erf(xd / np.sqrt(2.0)))
        err = np.abs(norm.gelu(x).astype(np.float64) - exact)
        if np.isnan(err).any():
            bad = x[np.isnan(err)][:5]
            print(f"NaN where exact GELU is finite, e.g. at {bad.tolist()}")
            return 1
        i = int(np.argmax(err))
        if err[i] > worst:
            worst, worst_x = float(err[i]), float(x[i])
    print(f"{count:,} finite float32 values: worst |GELU - exact GELU| = {worst:.3g} at x = {worst_x!r} "
          f"(bound {BOUND:g}) in {time.perf_counter() - t0:.0f} s")
    return 0 if worst <= BOUND else 1


if __name__ == "__main__":
    raise SystemExit(main())
