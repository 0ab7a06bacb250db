"""The whole-model benchmark, from a checkout: the same as ``erniem-np bench`` (erniem_np/bench.py).

    .venv/bin/pip install -e ".[reference,bench]"
    .venv/bin/python scripts/bench/bench_model.py --threads 2 --reps 7 --out scripts/bench/bench-results
"""

import sys

from erniem_np.bench import main

if __name__ == "__main__":
    sys.exit(main())
