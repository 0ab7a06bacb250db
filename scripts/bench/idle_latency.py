"""A forward pass's latency after the process has been idle, under GNU OpenMP spin counts taken in turn.

    NUMBA_NUM_THREADS=2 .venv/bin/python scripts/bench/idle_latency.py [--backend int8] [--length 16]
        [--spin-counts 300000,1048576] [--pauses 0.02,0.2,1.0] [--processes 3] [--reps 8]

Each spin count runs in its own process (GNU OpenMP reads ``GOMP_SPINCOUNT`` once, when it loads; set here,
it stands over erniem-np's own ``POOL_SPIN_COUNT``, see ``kernels/settings.py``), the processes alternating
``--processes`` times. Each builds a random-weight ErnieM-base-shaped model (a 1,000-token vocabulary: the
word table plays no part in the timing), runs two warm-up forwards of B=1 and ``--length`` tokens, then for
each pause ``--reps`` times sleeps that long and times one forward. Printed: the median forward per spin count
and pause, over all of that count's processes, then each process's medians. 300,000 is GNU OpenMP's default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def child(backend: str, length: int, pauses: list[float], reps: int) -> None:
    from erniem_np import ErnieMConfig, ErnieMModel

    model = ErnieMModel(ErnieMConfig(vocab_size=1000), backend=backend)
    ids = np.random.default_rng(0).integers(5, 1000, (1, length))
    mask = np.ones_like(ids)
    for _ in range(2):
        model(input_ids=ids, attention_mask=mask)
    times = {}
    for pause in pauses:
        times[pause] = []
        for _ in range(reps):
            time.sleep(pause)
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            times[pause].append((time.perf_counter() - t) * 1e3)
    print(json.dumps({str(p): v for p, v in times.items()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("numba", "int8"), default="int8")
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--spin-counts", default="300000,1048576")
    ap.add_argument("--pauses", default="0.02,0.2,1.0", help="seconds of idle before each timed forward")
    ap.add_argument("--processes", type=int, default=3, help="processes per spin count, alternating")
    ap.add_argument("--reps", type=int, default=8, help="timed forwards per pause in each process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    pauses = [float(p) for p in args.pauses.split(",")]
    if args.child:
        child(args.backend, args.length, pauses, args.reps)
        return
    counts = [c.strip() for c in args.spin_counts.split(",")]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    runs = {c: [] for c in counts}  # per spin count: one {pause: [ms, ...]} per process
    for _ in range(args.processes):
        for c in counts:
            cmd = [sys.executable, __file__, "--child", "--backend", args.backend, "--length", str(args.length),
                   "--pauses", args.pauses, "--reps", str(args.reps)]  # fmt: skip
            out = subprocess.run(cmd, env=dict(env, GOMP_SPINCOUNT=c), capture_output=True, text=True, check=True)
            runs[c].append({float(p): v for p, v in json.loads(out.stdout.strip().splitlines()[-1]).items()})
    threads = os.environ.get("NUMBA_NUM_THREADS", "unset")
    print(f"{args.backend} B=1 L={args.length}, NUMBA_NUM_THREADS={threads}: median ms of a forward after each "
          f"pause ({args.processes} processes x {args.reps} forwards per cell)")  # fmt: skip
    print(f"  {'GOMP_SPINCOUNT':>14s} " + " ".join(f"{p:>8g} s" for p in pauses))
    for c in counts:
        print(f"  {c:>14s} " + " ".join(f"{np.median([t for r in runs[c] for t in r[p]]):8.1f}  " for p in pauses))
    print("each process:")
    for c in counts:
        for r in runs[c]:
            print(f"  {c:>14s} " + " ".join(f"{np.median(r[p]):8.1f}  " for p in pauses))


if __name__ == "__main__":
    main()
