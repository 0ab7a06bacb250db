"""Where a forward pass spends its time, kernel by kernel (ErnieM-base shapes, random weights).

    NUMBA_NUM_THREADS=2 .venv/bin/python scripts/bench/time_breakdown.py [--backend numba|int8] [--batch 1]
        [--length 128] [--reps 7] [--pause 0.2]

Wraps the kernels the encoder calls (gemm.linear, gemm.linear_many, attention.attention, norm.layer_norm; for
int8 qgemm's quantize_rows and its int8 GEMM) and the embeddings and pooler with timers, runs --reps forwards after two warm-up ones, and prints the mean time of
each per forward and its share; "other" is the rest (Python glue, allocation), then the minor page faults
per forward (fresh memory touched: none once the forward reuses what it allocates). The wrappers add a few
microseconds per call, about 0.1% of a base-size forward.
"""

from __future__ import annotations

import argparse
import collections
import resource
import time

import numpy as np
from erniem_np.kernels import attention, gemm, norm, qgemm, settings

from erniem_np import ErnieMConfig, ErnieMModel, fused, quantized


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("numba", "int8"), default="numba")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--pause", type=float, default=0.2, help="seconds of idle before each timed forward")
    args = ap.parse_args()
    config = ErnieMConfig(vocab_size=1000)  # base shapes; a small vocabulary is all the timing needs
    model = ErnieMModel(config, backend=args.backend)
    ids = np.random.default_rng(0).integers(5, 1000, (args.batch, args.length))
    mask = np.ones_like(ids)
    spent = collections.defaultdict(float)

    def timed(module, name, label):
        f = getattr(module, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t

        setattr(module, name, wrapper)

    wrapped = [(gemm, "linear"), (gemm, "linear_many"), (attention, "attention"), (norm, "layer_norm"),
               (fused, "embeddings"), (fused, "pooler")]  # fmt: skip
    if args.backend == "int8":  # the int8 GEMM is settings.run of qgemm's kernels; quantize_rows is its own call
        wrapped += [(qgemm, "quantize_rows"), (quantized, "embeddings")]
        run = settings.run

        def run_split(kernel, *a, **k):
            label = "qgemm._qgemm" if kernel is qgemm._qgemm else None
            if label is None:
                return run(kernel, *a, **k)
            t = time.perf_counter()
            try:
                return run(kernel, *a, **k)
            finally:
                spent[label] += time.perf_counter() - t

        qgemm.run = run_split
    for module, name in wrapped:
        timed(module, name, f"{module.__name__.rsplit('.', 1)[-1]}.{name}")
    for _ in range(2):
        model(input_ids=ids, attention_mask=mask)
    spent.clear()
    totals = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.reps):
        time.sleep(args.pause)
        t = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        totals.append(time.perf_counter() - t)
    mean = sum(totals) / args.reps
    print(f"B={args.batch} L={args.length}: forward mean {mean * 1e3:.1f} ms (median {np.median(totals) * 1e3:.1f})")
    for label, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:24s} {s / args.reps * 1e3:8.1f} ms  {100 * s / args.reps / mean:5.1f}%")
    print(f"  {'other':24s} {(mean - sum(spent.values()) / args.reps) * 1e3:8.1f} ms")
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.reps
    print(f"minor page faults per forward: {faults:.0f} (memory the forward touched for the first time)")


if __name__ == "__main__":
    main()
