"""The ``erniem-np`` command line. Library code never prints; this module does."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import __version__

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TINY_MODEL = os.path.join(DATA_DIR, "tiny-random")

EXIT_OK, EXIT_USAGE, EXIT_ERROR = 0, 2, 1


def _parse_ids(text: str, vocab_size: int) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(f"erniem-np: error: --ids takes integers separated by spaces or commas, got {text!r}")
    if not ids:
        raise SystemExit("erniem-np: error: --ids is empty")
    return ids


def cmd_demo(args: argparse.Namespace) -> int:
    from safetensors.numpy import load_file

    from .model import ErnieMForSequenceClassification

    path = args.model or TINY_MODEL
    t0 = time.perf_counter()
    model = ErnieMForSequenceClassification.from_pretrained(path)
    t_load = time.perf_counter() - t0
    cfg = model.config
    print(f"erniem-np {__version__}: ErnieM sequence classifier from {path}")
    print(f"  {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
          f"FFN {cfg.intermediate_size}, vocabulary {cfg.vocab_size}, {model.num_parameters():,} parameters, "
          f"flavor {cfg.flavor}; loaded in {t_load * 1e3:.1f} ms")
    if args.ids:
        input_ids = np.array([_parse_ids(args.ids, cfg.vocab_size)])
        attention_mask = None
        reference = None
    else:
        ref_path = os.path.join(path, "reference_outputs.safetensors")
        if not os.path.isfile(ref_path):
            raise SystemExit(f"erniem-np: error: {path} has no reference_outputs.safetensors; pass --ids")
        reference = load_file(ref_path)
        input_ids, attention_mask = reference["input_ids"], reference["attention_mask"]
    t0 = time.perf_counter()
    model(input_ids=input_ids, attention_mask=attention_mask)  # the first call compiles (or loads) the kernels
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    t_run = time.perf_counter() - t0
    probs = np.exp(out.logits - out.logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    labels = cfg.id2label or {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
    for i, row in enumerate(input_ids):
        n = int(np.asarray(attention_mask)[i].sum()) if attention_mask is not None else len(row)
        k = int(probs[i].argmax())
        print(f"  sequence {i}: ids {list(map(int, row[:n]))}")
        print(f"    -> {labels[k]} p={probs[i, k]:.4f}   logits {np.array2string(out.logits[i], precision=5)}")
    print(f"  forward pass: {len(input_ids)} sequence(s) in {t_run * 1e3:.1f} ms ({model.backend} backend; the "
          f"first call took {t_first * 1e3:.0f} ms, compiling or loading the cached kernels)")
    if reference is not None:
        err = float(np.abs(out.logits - reference["logits"]).max())
        verdict = "agrees" if err <= 1e-4 else "DISAGREES"
        print(f"  {verdict} with HF transformers' logits for the same weights and inputs: max |difference| {err:.2e}")
        return EXIT_OK if err <= 1e-4 else EXIT_ERROR
    return EXIT_OK


class _Progress:
    """Progress of a long checkpoint step on stderr; silent for anything that finishes within half a second."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.last_shown = 0.0
        self.open_line = False

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        finished = done >= total
        if now - self.start < 0.5 or (now - self.last_shown < 0.2 and not finished):
            return
        self.last_shown = now
        if total > 1 << 20:
            text = f"{what}: {done / total:4.0%} ({done / 1e6:,.0f} / {total / 1e6:,.0f} MB)"
        else:
            text = f"{what}: {done}/{total}"
        tty = self.stream.isatty()
        self.stream.write(("\r" if tty else "") + text + ("" if tty and not finished else "\n"))
        self.open_line = tty and not finished
        self.stream.flush()

    def close(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False


def _megabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n:,} bytes"


def _checkpoint_options(args: argparse.Namespace) -> dict:
    return {"config": args.config, "flavor": args.flavor, "download": args.download, "revision": args.revision}


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert_checkpoint

    progress = None if args.quiet else _Progress()
    try:
        out = convert_checkpoint(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite,
                                 verify=not args.no_verify, progress=progress, **_checkpoint_options(args))
    except FileExistsError as e:
        raise ValueError(str(e)) from None
    finally:
        if progress is not None:
            progress.close()
    print(f"wrote {args.dst}: {out.architecture}, {out.num_parameters:,} parameters, {args.dtype}, "
          f"{_megabytes(out.size_on_disk)}, flavor {out.flavor}")
    tokenizer = sorted(out.tokenizer_files)
    print(f"  tokenizer files copied: {', '.join(tokenizer) if tokenizer else 'none found beside the source'}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from .checkpoints import inspect_checkpoint

    progress = None if args.json else _Progress()
    try:
        info = inspect_checkpoint(args.path, progress=progress, **_checkpoint_options(args))
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    c = info["config"]
    files = ", ".join(f"{f['name']} ({_megabytes(f['bytes'])})" for f in info["files"])
    where = f"{info['path']}" + (f" (hub {info['hub_id']})" if info["hub_id"] else "")
    flavor_why = {"argument": "as requested", "config": "recorded in the config",
                  "weights format": "from the weights format"}[info["flavor_source"]]  # fmt: skip
    rows = [
        ("checkpoint", where),
        ("format", f"{info['format']}: {files}"),
        ("size on disk", _megabytes(info["size_on_disk"])),
        ("config", info["config_file"] or "none in the checkpoint (given, or from the named checkpoint)"),
        ("model", (f"{c['num_hidden_layers']} layers, hidden {c['hidden_size']}, {c['num_attention_heads']} "
                   f"heads, FFN {c['intermediate_size']}, vocabulary {c['vocab_size']}, positions "
                   f"{c['max_position_embeddings']}, {c['hidden_act']}")),
        ("head", f"{info['architecture']}" + (f" ({c['num_labels']} labels)" if info["head"] in
                                              ("seq_cls", "token_cls") else "")
         + (" -- a guess: the config does not name the class, and a 'classifier' head may also be token "
            "classification or multiple choice" if info["head_source"] == "guess" else "")),
        ("parameters", f"{info['parameters']:,} in {info['tensors']} tensors"),
        ("dtype", ", ".join(f"{k} ({v} tensors)" for k, v in sorted(info["dtypes"].items()))),
        ("flavor", f"{info['flavor']} ({flavor_why})"),
        ("tokenizer", (", ".join(info["tokenizer_files"]) or "no tokenizer files")
         + (f"; missing: {', '.join(info['tokenizer_missing'])}" if info["tokenizer_missing"] else "")),
    ]  # fmt: skip
    rows += [("note", n) for n in info["notes"]]
    for label, value in rows:
        print(f"{label + ':':<14}{value}")
    return EXIT_OK


def _add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config.json to use instead of the checkpoint's (needed for a bare weights "
                   "file whose shapes match no named checkpoint)")  # fmt: skip
    p.add_argument("--flavor", choices=("hf", "paddle"), help="reference behaviour to record (default: a "
                   "recorded flavor, else paddle for .pdparams and hf for the HF formats)")  # fmt: skip
    p.add_argument("--download", action="store_true", help="fetch a hub id that is not in the local cache "
                   "(needs huggingface_hub)")  # fmt: skip
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="erniem-np", description="ErnieM (ERNIE-M) in plain NumPy.")
    p.add_argument("--version", action="version", version=f"erniem-np {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the bundled tiny checkpoint and check it against the HF reference",
        description="Run a sequence classifier (by default the bundled tiny random-weight checkpoint) on "
        "token ids and print its predictions. Without --ids it runs the inputs stored with the bundled "
        "model and compares the logits with those HF transformers computed for the same weights.",
    )
    demo.add_argument("--model", help="checkpoint directory (default: the bundled tiny model)")
    demo.add_argument("--ids", help='token ids of one sequence, e.g. "0 5 17 42 2"')
    demo.set_defaults(func=cmd_demo)

    convert = sub.add_parser(
        "convert",
        help="convert a checkpoint (HF .safetensors/.bin, sharded, Paddle .pdparams) to the native layout",
        description="Read SRC (a directory in HF or PaddleNLP layout, a single weights file, or a hub id in "
        "the local cache) without torch or paddle, and write DST/model.safetensors (HF names and layout, "
        "memory-mapped on load) and DST/config.json (flavor and architecture recorded), copying the tokenizer "
        "files. The written file is read back and compared.",
    )
    convert.add_argument("src", metavar="SRC")
    convert.add_argument("dst", metavar="DST")
    convert.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                         help="stored float type (default float32: loads without a copy)")  # fmt: skip
    convert.add_argument("--overwrite", action="store_true", help="replace DST's config.json and weights")
    convert.add_argument("--no-verify", action="store_true", help="skip reading the result back")
    convert.add_argument("--quiet", action="store_true", help="no progress output")
    _add_checkpoint_options(convert)
    convert.set_defaults(func=cmd_convert)

    inspect = sub.add_parser(
        "inspect",
        help="describe a checkpoint: config, head, parameters, dtype, size, flavor, tokenizer files",
        description="Describe a checkpoint in any supported layout without loading its weights.",
    )
    inspect.add_argument("path", metavar="PATH")
    inspect.add_argument("--json", action="store_true", help="print the description as JSON")
    _add_checkpoint_options(inspect)
    inspect.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"erniem-np: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
