"""Where a forward pass spends its time, kernel by kernel (ErnieM-base shapes, random weights).

    NUMBA_NUM_THREADS=2 .venv/bin/python scripts/bench/time_breakdown.py [--backend numba|int8] [--batch 1]
        [--length 128] [--reps 7] [--pause 0.2] [--compare-threads]

Wraps the kernels the encoder calls (gemm.linear, gemm.linear_many, attention.attention, norm.layer_norm; for
int8 qgemm's quantize_rows and its int8 GEMM, one line per weight shape) and the embeddings and pooler with
timers, runs --reps forwards after two warm-up ones, and prints the mean time of each per forward and its share;
"other" is the rest (Python glue, allocation), then the minor page faults per forward (fresh memory touched:
none once the forward reuses what it allocates). The wrappers add a few microseconds per call, about 0.1% of a
base-size forward.

--compare-threads alternates forwards on one thread and on all of them (``set_num_threads``, in one
process) and prints each kernel's median time per forward on both and the ratio: how well each part of the
forward, in place among the others, uses the second core.
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
    ap.add_argument("--compare-threads", action="store_true", help="alternate forwards on 1 thread and on all")
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
            if kernel is not qgemm._qgemm:
                return run(kernel, *a, **k)
            # a: serial twin, flops, xq [M, Kp], sx, zx, (packed weights [strips, Kp / G, COLS, G], ...), ...
            label = f"qgemm._qgemm N={sum(w.shape[0] * w.shape[2] for w in a[5])} K={a[2].shape[1]}"
            t = time.perf_counter()
            try:
                return run(kernel, *a, **k)
            finally:
                spent[label] += time.perf_counter() - t

        qgemm.run = run_split
    for module, name in wrapped:
        timed(module, name, f"{module.__name__.rsplit('.', 1)[-1]}.{name}")
    counts = (1, settings.get_num_threads()) if args.compare_threads else (settings.get_num_threads(),)
    for _ in range(2):
        for n in counts:
            settings.set_num_threads(n)
            model(input_ids=ids, attention_mask=mask)
    runs = {n: [] for n in counts}  # per thread count: one {label: seconds} per forward
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for rep in range(args.reps):
        for n in counts if rep % 2 else counts[::-1]:
            settings.set_num_threads(n)
            spent.clear()
            time.sleep(args.pause)
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            total = time.perf_counter() - t
            runs[n].append(dict(spent, forward=total, other=total - sum(spent.values())))
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.reps / len(counts)
    labels = sorted(runs[counts[-1]][0], key=lambda k: -runs[counts[-1]][0][k] if k not in ("forward", "other") else 0)
    if args.compare_threads:
        many = counts[1]
        print(f"B={args.batch} L={args.length}, {args.backend}: median ms per forward on 1 and {many} threads, "
              f"{args.reps} forwards each")  # fmt: skip
        for label in ["forward"] + [k for k in labels if k not in ("forward", "other")] + ["other"]:
            a, b = (np.median([r[label] for r in runs[c]]) * 1e3 for c in counts)
            print(f"  {label:32s} {a:8.2f} {b:8.2f}  {a / b:5.2f}x")
    else:
        forwards = runs[counts[0]]
        totals = [r["forward"] for r in forwards]
        mean = sum(totals) / args.reps
        print(f"B={args.batch} L={args.length}: forward mean {mean * 1e3:.1f} ms (median {np.median(totals) * 1e3:.1f})")
        for label in [k for k in labels if k not in ("forward", "other")]:
            s = sum(r[label] for r in forwards) / args.reps
            print(f"  {label:32s} {s * 1e3:8.1f} ms  {100 * s / mean:5.1f}%")
        print(f"  {'other':32s} {sum(r['other'] for r in forwards) / args.reps * 1e3:8.1f} ms")
    print(f"minor page faults per forward: {faults:.0f} (memory the forward touched for the first time)")


if __name__ == "__main__":
    main()
