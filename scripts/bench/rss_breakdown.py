"""Where the resident memory of an ErnieM-base forward goes: a stage-by-stage breakdown of RSS.

    .venv/bin/python scripts/bench/rss_breakdown.py [--ckpt DIR] [--backend numba|numpy|both] [--threads 2]

Writes (or reuses, with --ckpt) an ErnieM-base-shaped checkpoint of random weights (the same recipe as the
whole-model benchmark, erniem_np/bench.py, run by scripts/bench/bench_model.py: 250,002-token vocabulary, 1.11 GB
of float32), then, in a fresh process per backend, reads /proc/self/status after each stage: imports, kernels
loaded (numba), the checkpoint opened, and each of the benchmark's workloads. For each stage it prints RssAnon
(memory the process allocated: arrays, Numba/LLVM, thread stacks), RssFile (pages of mapped files: the weights,
shared libraries) and VmHWM (the peak so far), so the peak RSS that the benchmark reports can be told apart into
its causes. Memory, unlike time, is not
disturbed by other work on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def status() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile, VmHWM of this process in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def worker(backend: str, ckpt: str, threads: int) -> list[tuple[str, dict]]:
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    os.environ["NUMBA_NUM_THREADS"] = str(threads)
    stages = [("python started", status())]
    import numpy as np

    stages.append(("numpy imported", status()))
    import erniem_np
    from erniem_np.bench import make_batch, mixed_lengths

    stages.append(("erniem_np imported", status()))
    if backend == "numba":
        erniem_np.warmup()
        stages.append(("kernels loaded (warmup)", status()))
    model = erniem_np.ErnieMModel.from_pretrained(ckpt, backend=backend)
    stages.append(("checkpoint opened (mmap)", status()))
    for B, L in ((1, 128), (8, 128), (1, 512)):
        ids, mask = make_batch(B, L)
        model(input_ids=ids, attention_mask=mask)
        stages.append((f"forward B={B} L={L}", status()))
    lengths, _ = mixed_lengths()
    ids, mask = make_batch(len(lengths), 0, lengths)
    order = np.argsort(lengths)
    for s in range(0, len(order), 8):
        rows = order[s : s + 8]
        n = int(max(lengths[i] for i in rows))
        model(input_ids=ids[rows, :n], attention_mask=mask[rows, :n])
    stages.append(("mixed64 (buckets of 8)", status()))
    return stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="an ErnieM-base-shaped checkpoint directory (default: write one to a temp dir)")
    ap.add_argument("--backend", choices=("numba", "numpy", "both"), default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.ckpt, args.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            from erniem_np import ErnieMConfig, ErnieMModel

            ckpt = os.path.join(tmp, "base")
            ErnieMModel(ErnieMConfig(), seed=0, backend="numpy").save_pretrained(ckpt)
        weights_mb = os.path.getsize(os.path.join(ckpt, "model.safetensors")) / 2**20
        print(f"checkpoint: {ckpt} ({weights_mb:,.0f} MB of weights)")
        for backend in ("numba", "numpy") if args.backend == "both" else (args.backend,):
            r = subprocess.run([sys.executable, __file__, "--worker", backend, "--ckpt", ckpt, "--threads",
                                str(args.threads)], capture_output=True, text=True, check=True)  # fmt: skip
            stages = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"\nbackend {backend} ({args.threads} threads): MB")
            print(f"{'stage':28} {'RSS':>7} {'anon':>7} {'file':>7} {'peak':>7} {'peak/weights':>13}")
            for name, s in stages:
                print(f"{name:28} {s['VmRSS']:7.0f} {s['RssAnon']:7.0f} {s['RssFile']:7.0f} {s['VmHWM']:7.0f} "
                      f"{s['VmHWM'] / weights_mb:13.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
