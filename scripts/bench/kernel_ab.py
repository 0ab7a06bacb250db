"""A kernel module of your own against the package's: whole forwards, turn about, in one process.

    NUMBA_NUM_THREADS=2 .venv/bin/python scripts/bench/kernel_ab.py CANDIDATE.py [--replaces qgemm]
        [--backend int8|numba] [--shapes 1x16 1x128] [--reps 30] [--pause 0.0] [--tiny]

CANDIDATE.py is a copy of one of the kernel modules (``kernels/gemm.py``, ``qgemm.py``, ``attention.py`` or
``norm.py``; ``--replaces`` names which, by default its file name's) with the change you want to measure. It
is loaded as a module of the kernels package, so its relative imports (``from .settings import jit``) work,
and compiled without the kernel cache (the cache tells its entries apart by the package's own files, so it
could hand back a kernel of an earlier version of yours). It replaces the package's module where the layers
(``erniem_np/fused.py``, ``erniem_np/quantized.py``) use it; the other kernel modules keep the package's.

Two models of the ErnieM-base shape (random weights, a vocabulary of 1000; ``--tiny``: 2 small layers, for a
quick check) are built, one with each module, so a weight layout of the candidate's own is packed by it. For
each shape (BxL) both first compute the same inputs: the largest difference of the last hidden states is
printed, and a candidate whose output differs by more than ``--tolerance`` (relative to the largest value) is
not timed. Then ``--reps`` rounds, each calling both in turn (the order alternating from round to round), with
``--pause`` seconds of sleep before each call (0.5 is the benchmark's condition: a forward after a pause runs
slower on a VM, ``docs/performance.md``). It prints the medians, the median of the round-by-round ratios
(candidate over package) and their quartiles. Timings move with the machine: compare within one run.

Running it executes CANDIDATE.py: give it only code you would run yourself. A bad argument or a candidate
that cannot be loaded or differs gets one line naming the problem and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import time

import numpy as np
from erniem_np.kernels import attention, gemm, norm, qgemm, settings

from erniem_np import ErnieMConfig, ErnieMModel, fused, quantized

KERNEL_MODULES = {"gemm": gemm, "qgemm": qgemm, "attention": attention, "norm": norm}
LAYER_MODULES = (fused, quantized)  # where the forward pass reaches the kernels


def load_candidate(path: str, replaces: str):
    """CANDIDATE.py as ``erniem_np.kernels._candidate_<replaces>``, its kernels uncached."""
    name = f"erniem_np.kernels._candidate_{replaces}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    saved = settings._PrivateCache
    settings._PrivateCache = None  # ``settings.jit`` reads it as each kernel is decorated
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)  # no half-loaded module left behind
        raise
    finally:
        settings._PrivateCache = saved
    return module


def swaps_for(original, candidate):
    """(layer module, name, package's object, candidate's object) for every name a layer module takes from the
    original kernel module: the module itself, or one of its functions or classes the candidate also has."""
    found = []
    for layer in LAYER_MODULES:
        for name, value in vars(layer).items():
            if value is original:
                found.append((layer, name, value, candidate))
            elif callable(value) and getattr(original, getattr(value, "__name__", ""), None) is value:
                replacement = getattr(candidate, value.__name__, None)
                if replacement is not None:
                    found.append((layer, name, value, replacement))
    return found


@contextlib.contextmanager
def using(swaps, which):
    """The layer modules pointing at the package's objects (which=0) or the candidate's (which=1)."""
    for layer, name, *pair in swaps:
        setattr(layer, name, pair[which])
    try:
        yield
    finally:
        for layer, name, package_object, _ in swaps:
            setattr(layer, name, package_object)


def fail(message: str) -> None:
    print(f"kernel_ab: {message}", file=sys.stderr)
    sys.exit(1)


def first_line(e: BaseException) -> str:
    """An exception as one line (Numba's errors run over many)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def parse_shape(text: str) -> tuple[int, int]:
    try:
        B, L = (int(v) for v in text.lower().split("x"))
    except ValueError:
        fail(f"a shape is BxL, as 1x128, got {text!r}")
    if not (1 <= B <= 64 and 1 <= L <= 512):
        fail(f"a shape needs 1 <= B <= 64 and 1 <= L <= 512, got {text!r}")
    return B, L


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("candidate", help="a copy of one of the kernel modules, changed")
    ap.add_argument("--replaces", help=f"the module it replaces: one of {', '.join(KERNEL_MODULES)}")
    ap.add_argument("--backend", default="int8", help="int8 or numba")
    ap.add_argument("--shapes", nargs="+", default=["1x16", "1x128"], help="BxL")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds of sleep before each call")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest difference allowed, relative")
    ap.add_argument("--tiny", action="store_true", help="2 small layers instead of the base shape")
    args = ap.parse_args(argv)
    if not args.candidate.endswith(".py") or not os.path.isfile(args.candidate):
        fail(f"the candidate must be an existing .py file, got {args.candidate!r}")
    replaces = args.replaces or os.path.splitext(os.path.basename(args.candidate))[0]
    if replaces not in KERNEL_MODULES:
        fail(f"--replaces must be one of {', '.join(KERNEL_MODULES)}, got {replaces!r}")
    if args.backend not in ("int8", "numba"):
        fail(f"--backend must be int8 or numba, got {args.backend!r}")
    if not 1 <= args.reps <= 10_000 or not 0 <= args.pause <= 60 or not args.tolerance >= 0:
        fail("--reps must be 1-10000, --pause 0-60 seconds, --tolerance at least 0")
    shapes = [parse_shape(s) for s in args.shapes]
    try:
        candidate = load_candidate(args.candidate, replaces)
    except Exception as e:  # noqa: BLE001 (any error of the candidate's own code: one line, exit 1)
        fail(f"cannot load {args.candidate}: {first_line(e)}")
    swaps = swaps_for(KERNEL_MODULES[replaces], candidate)
    if not swaps:
        fail(f"the layers take nothing from kernels/{replaces}.py that the candidate replaces")
    config = ErnieMConfig(vocab_size=1000)
    if args.tiny:
        config = ErnieMConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128)  # fmt: skip
    models = []
    for which in (0, 1):
        with using(swaps, which):
            models.append(ErnieMModel(config, backend=args.backend))
    print(f"candidate {args.candidate} for kernels/{replaces}.py: {len(swaps)} names replaced in the layers; "
          f"{args.backend}, {args.reps} rounds, pause {args.pause} s")  # fmt: skip
    rng = np.random.default_rng(0)
    for B, L in shapes:
        ids = rng.integers(5, 1000, (B, L))
        mask = np.ones_like(ids)

        def forward(which, ids=ids, mask=mask):
            with using(swaps, which):
                return models[which](input_ids=ids, attention_mask=mask).last_hidden_state

        try:
            outs = [forward(which) for which in (0, 1)]
        except Exception as e:  # noqa: BLE001
            fail(f"{B}x{L}: the candidate's forward failed: {first_line(e)}")
        diff = float(np.max(np.abs(outs[1].astype(np.float64) - outs[0]))) if outs[0].size else 0.0
        scale = float(np.max(np.abs(outs[0]))) if outs[0].size else 0.0
        same = np.array_equal(outs[0], outs[1])
        print(f"{B}x{L}: {'the same bits' if same else f'largest difference {diff:.3g} (largest value {scale:.3g})'}")
        if not diff <= args.tolerance * max(scale, 1.0):
            fail(f"{B}x{L}: the candidate computes something else (difference {diff:.3g}): not timed")
        times = ([], [])
        for r in range(args.reps):
            for which in (0, 1) if r % 2 else (1, 0):
                time.sleep(args.pause)
                t = time.perf_counter()
                forward(which)
                times[which].append(time.perf_counter() - t)
        package, cand = (np.array(t) * 1e3 for t in times)
        ratio = cand / package
        q1, q3 = np.percentile(ratio, [25, 75])
        print(f"{B}x{L}: package {np.median(package):.2f} ms, candidate {np.median(cand):.2f} ms; candidate / "
              f"package per round: median {np.median(ratio):.3f} (quartiles {q1:.3f}-{q3:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
