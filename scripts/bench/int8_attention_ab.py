"""The int8 forward with its attention products in bfloat16 against float32, alternating in one process.

    NUMBA_NUM_THREADS=2 .venv/bin/python scripts/bench/int8_attention_ab.py [--reps 20] [--shapes 1x128 8x128 1x512]

An ErnieM-base-shaped int8 model (random weights, a vocabulary of 1000: the timing needs no more) runs each shape
with ``ERNIEM_NP_INT8_ATTENTION=float32`` and ``=bf16`` in turn, round after round, so both see the same state of
a VM whose speed drifts; it prints the median time of each and their ratio, and the largest difference of the
last hidden states (random weights: it says the two compute nearly the same thing, not how accurate either is;
docs/quantization.md has the accuracy on trained weights). Needs a CPU with AVX512_BF16.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from erniem_np.kernels import attention

from erniem_np import ErnieMConfig, ErnieMModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20, help="rounds at B=1 L=128 (fewer for the larger shapes)")
    ap.add_argument("--shapes", nargs="*", default=["1x128", "8x128", "1x512"], help="BxL")
    args = ap.parse_args()
    if not attention.bf16_supported():
        raise SystemExit("this CPU has no AVX512_BF16: nothing to compare")
    model = ErnieMModel(ErnieMConfig(vocab_size=1000), backend="int8")
    rng = np.random.default_rng(0)
    modes = ("float32", "bf16")
    for shape in args.shapes:
        B, L = (int(v) for v in shape.split("x"))
        ids = rng.integers(5, 1000, (B, L))
        mask = np.ones_like(ids)
        outs, times = {}, {m: [] for m in modes}
        for m in modes:  # warm-up, and the outputs compared
            os.environ["ERNIEM_NP_INT8_ATTENTION"] = m
            outs[m] = model(ids, attention_mask=mask).last_hidden_state
        for _ in range(max(4, args.reps * 128 // (B * L))):
            for m in modes:
                os.environ["ERNIEM_NP_INT8_ATTENTION"] = m
                t = time.perf_counter()
                model(ids, attention_mask=mask)
                times[m].append(time.perf_counter() - t)
        a, b = (float(np.median(times[m])) for m in modes)
        print(f"B={B} L={L}: float32 attention {a * 1e3:.1f} ms, bf16 attention {b * 1e3:.1f} ms, "
              f"{a / b:.3f}x (medians of {len(times['bf16'])}; max |difference| of the outputs "
              f"{np.abs(outs['float32'] - outs['bf16']).max():.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
