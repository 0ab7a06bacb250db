"""``erniem-np bench``: the whole-model benchmark against torch eager and ONNX Runtime (erniem_np/bench.py)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from .. import bench

    return bench.run(args)


def register(sub) -> None:
    from .. import bench

    p = sub.add_parser(
        "bench",
        help="time an ErnieM-base forward pass: erniem-np (numba, numpy) against torch eager and ONNX Runtime",
        description=bench.__doc__.split("\n\n")[0] + " Each implementation runs in its own process on the same "
        "random weights; they take turns call by call, so the ratios compare calls seconds apart. Writes "
        "results.json, results.md and results.png into --out. torch/transformers and onnx/onnxruntime come with "
        "the 'reference' and 'bench' extras; without them only erniem-np is timed. The base size writes a "
        "1.1 GB temporary checkpoint and takes about 11 minutes on 2 cores.",
    )
    bench.add_arguments(p)
    p.set_defaults(func=run)
