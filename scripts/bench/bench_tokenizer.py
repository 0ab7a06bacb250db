# Benchmark: batch tokenisation throughput of erniem_np.ErnieMTokenizer against the slow ErnieMTokenizer of
# HF transformers 4.46.3 and of PaddleNLP 2.8.1, on 10,000 lines of the multilingual fixture corpus
# (tests/fixtures/tokenizer/corpus.txt.gz, 28+ languages) with the fixture BPE SentencePiece model.
#
# Run from the repository root (the references run as subprocesses in their own environments):
#
#     .venv/bin/python scripts/bench/bench_tokenizer.py [--lines 10000] [--batch 64] [--repeat 3] [--json out.json]
#
# Every implementation makes the same call on the same batches:
#     tokenizer(batch, padding=True, truncation=True, max_length=512, return_attention_mask=True)
# and the best of --repeat passes is reported (lines/s). Ours is measured with a fresh tokenizer per pass
# ("cold": its piece cache starts empty) and again with the cache warm, with SentencePiece on all cores and on
# one thread. A reference missing its environment is reported as skipped.

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "tokenizer"
CALL = {"padding": True, "truncation": True, "max_length": 512, "return_attention_mask": True}
OFFSETS = {**CALL, "return_offsets_mapping": True}  # PaddleNLP and ours only (HF's slow tokenizer has none)


def corpus(n: int) -> list[str]:
    with gzip.open(FIX / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t", 1)[1] for line in f if line.strip()]
    random.Random(0).shuffle(lines)
    while len(lines) < n:  # (the corpus has 13,782 lines; only a larger --lines repeats them)
        lines += lines
    return lines[:n]


def batches(lines: list[str], size: int) -> list[list[str]]:
    return [lines[i : i + size] for i in range(0, len(lines), size)]


def timed(make, lines, size, repeat, fresh=True, call=CALL) -> tuple[float, int]:
    """Best lines/s over `repeat` passes; `make()` builds the tokenizer (per pass when `fresh`)."""
    tok = make()
    best, n_ids = 0.0, 0
    for _ in range(repeat):
        if fresh:
            tok = make()
        t0 = time.perf_counter()
        n_ids = 0
        for b in batches(lines, size):
            n_ids += sum(len(x) for x in tok(b, **call)["input_ids"])
        best = max(best, len(lines) / (time.perf_counter() - t0))
    return best, n_ids


def worker(kind: str, n: int, size: int, repeat: int, offsets: bool = False) -> None:
    """Runs inside a reference environment; prints one JSON line."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    lines = corpus(n)
    if kind == "hf":
        import transformers

        transformers.logging.set_verbosity_error()
        make = lambda: transformers.ErnieMTokenizer.from_pretrained(str(FIX / "bpe"))
        version = f"transformers {transformers.__version__}"
    else:
        import aiohttp  # noqa: F401  -- before paddle (paddle 2.6.2's zlib breaks aiohttp)
        import paddlenlp
        from paddlenlp.transformers import ErnieMTokenizer

        make = lambda: ErnieMTokenizer.from_pretrained(str(FIX / "bpe"))
        version = f"paddlenlp {paddlenlp.__version__}"
    rate, n_ids = timed(make, lines, size, repeat, fresh=False, call=OFFSETS if offsets else CALL)  # one instance
    print(json.dumps({"kind": kind, "version": version, "lines_per_s": rate, "ids": n_ids}))


def run_reference(kind: str, args, offsets: bool = False) -> dict:
    venv = ROOT / (".venv-ref-hf" if kind == "hf" else ".venv-ref-paddle")
    python = venv / "bin" / "python"
    if not python.exists():
        return {"kind": kind, "skipped": f"{venv.name} not found"}
    cmd = [str(python), __file__, "--worker", kind, "--lines", str(args.lines), "--batch", str(args.batch),
           "--repeat", str(args.repeat)] + (["--offsets"] if offsets else [])  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode:
        return {"kind": kind, "skipped": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--worker", choices=["hf", "paddle"], help=argparse.SUPPRESS)
    ap.add_argument("--offsets", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.lines, args.batch, args.repeat, args.offsets)

    sys.path.insert(0, str(ROOT))
    from erniem_np import ErnieMTokenizer

    lines = corpus(args.lines)
    results = {}
    for flavor in ("hf", "paddle"):
        for threads in (None, 1):
            make = lambda: ErnieMTokenizer.from_pretrained(FIX / "bpe", flavor=flavor, num_threads=threads)  # noqa
            label = f"ours ({flavor}, {'all cores' if threads is None else '1 thread'})"
            cold, n_ids = timed(make, lines, args.batch, args.repeat, fresh=True)
            warm, _ = timed(make, lines, args.batch, args.repeat, fresh=False)
            results[label] = {"cold": cold, "warm": warm, "ids": n_ids}
    make = lambda: ErnieMTokenizer.from_pretrained(FIX / "bpe", flavor="paddle")
    offsets_ours, _ = timed(make, lines, args.batch, args.repeat, fresh=True, call=OFFSETS)
    refs = {kind: run_reference(kind, args) for kind in ("hf", "paddle")}
    offsets_ref = run_reference("paddle", args, offsets=True)

    print(f"{args.lines:,} lines, batches of {args.batch}, best of {args.repeat}; {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"{'implementation':38s} {'lines/s':>10s} {'x HF':>7s} {'x Paddle':>9s}")
    base = {k: r.get("lines_per_s") for k, r in refs.items()}

    def row(name, rate):
        ratios = [f"{rate / base[k]:7.2f}" if base[k] else "      -" for k in ("hf", "paddle")]
        print(f"{name:38s} {rate:10,.0f} {ratios[0]} {ratios[1]:>9s}")

    for k, r in refs.items():
        if "skipped" in r:
            print(f"{k + ' reference':38s} skipped: {r['skipped']}")
        else:
            row(f"{r['version']} (slow)", r["lines_per_s"])
    for label, r in results.items():
        row(label + " cold", r["cold"])
        row(label + " warm", r["warm"])
        ref = refs["hf" if "(hf" in label else "paddle"]
        if "ids" in ref and ref["ids"] != r["ids"]:
            print(f"  WARNING: {label} produced {r['ids']} ids, the reference {ref['ids']}")
    print("with return_offsets_mapping=True (PaddleNLP's get_offset_mapping tokenizes every text again):")
    if "skipped" in offsets_ref:
        print(f"  paddlenlp: failed on this corpus: {offsets_ref['skipped']}")
    else:
        print(f"  {offsets_ref['version']} (slow) {offsets_ref['lines_per_s']:10,.0f} lines/s")
    ratio = f" ({offsets_ours / offsets_ref['lines_per_s']:.2f} x Paddle)" if "lines_per_s" in offsets_ref else ""
    print(f"  ours (paddle, all cores) cold {offsets_ours:10,.0f} lines/s{ratio}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"lines": args.lines, "batch": args.batch, "references": refs, "ours": results,
                       "offsets": {"paddle": offsets_ref, "ours_paddle_cold": offsets_ours}}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
