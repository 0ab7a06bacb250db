"""Pool several runs of ``erniem-np bench``: every timed call of each implementation and shape from all the
runs together, the median of those, and the ratios of the medians (how docs/performance.md and the README
pool runs).

    python scripts/bench/pool_runs.py scripts/bench/bench-results/runs/run3[0-3].json

Each argument is a results.json that ``erniem-np bench --out DIR`` wrote. Runs are pooled only if they timed
the same model size and thread count.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

PAIRS = (("erniem-np numba", "torch eager"), ("erniem-np numba", "onnxruntime optimized"),
         ("erniem-np int8", "onnxruntime int8"), ("erniem-np int8", "onnxruntime"))  # fmt: skip
MAX_BYTES = 16 << 20  # a results.json is about 13 KB


def pooled_medians(runs):
    """{implementation: {workload: median seconds over every call of every run}}."""
    calls = {}
    for run in runs:
        for impl, res in run["results"].items():
            for workload, r in res.items():
                if isinstance(r, dict) and "times_s" in r:
                    calls.setdefault(impl, {}).setdefault(workload, []).extend(r["times_s"])
    return {impl: {w: float(np.median(np.asarray(t, dtype=float))) for w, t in ws.items()} for impl, ws in calls.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results.json files of erniem-np bench")
    args = ap.parse_args()
    runs, keys = [], set()
    for path in args.results:
        try:
            with open(path, "rb") as f:
                text = f.read(MAX_BYTES + 1)  # at most that much read, whatever the file is
            if len(text) > MAX_BYTES:
                raise ValueError(f"over {MAX_BYTES} bytes")
            run = json.loads(text)
            keys.add((run["meta"]["size"], run["meta"]["threads"]))
            pooled_medians([run])  # every timing list is a list of numbers
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SystemExit(f"error: {path} is not a results.json of erniem-np bench ({type(e).__name__}: {e})") from None
        runs.append(run)
    if len(keys) != 1:
        raise SystemExit(f"error: these runs timed different sizes or thread counts: {sorted(keys, key=str)}")
    med = pooled_medians(runs)
    workloads = sorted({w for ws in med.values() for w in ws})
    print(f"{len(runs)} runs pooled; medians in ms")
    for impl in sorted(med):
        print(f"  {impl:22s} " + "  ".join(f"{w} {med[impl][w] * 1e3:.1f}" for w in workloads if w in med[impl]))
    for a, b in PAIRS:
        if a in med and b in med:
            ratios = [f"{w} {med[b][w] / med[a][w]:.2f}x" for w in workloads if w in med[a] and w in med[b]]
            print(f"{a} against {b}: " + "  ".join(ratios))


if __name__ == "__main__":
    main()
