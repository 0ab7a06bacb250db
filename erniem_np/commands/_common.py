"""What every ``erniem-np`` subcommand shares: exit codes, progress on stderr, reading inputs, printing JSON.

Library code never prints; the command modules in this package do. Each module defines
``register(subparsers)``, which adds its subcommands and sets ``func`` on each to a handler
``(args) -> exit code``.

Exit codes (documented in ``erniem-np --help``):
    0  success
    1  the input or the checkpoint was wrong (one line on stderr says what)
    2  the command line was wrong (argparse's usage message)
``erniem-np parity`` adds its own: 1 numeric mismatch, 2 structural mismatch, 3 unreadable file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A mistake of the user's (missing file, bad schema, empty input): reported as one line, exit code 1."""


class Progress:
    """Progress of a long step on stderr; silent for anything that finishes within half a second."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.last_shown = 0.0
        self.open_line = False

    def __call__(self, what: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        finished = total is not None and done >= total
        if now - self.start < 0.5 or (now - self.last_shown < 0.2 and not finished):
            return
        self.last_shown = now
        if total is None:
            text = f"{what}: {done:,}"
        elif total > 1 << 20:
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


def megabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n:,} bytes"


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config.json to use instead of the checkpoint's (needed for a bare weights "
                   "file whose shapes match no named checkpoint)")  # fmt: skip
    p.add_argument("--flavor", choices=("hf", "paddle"), help="reference behaviour to record (default: a "
                   "recorded flavor, else paddle for .pdparams and hf for the HF formats)")  # fmt: skip
    p.add_argument("--download", action="store_true", help="fetch a hub id that is not in the local cache "
                   "(needs huggingface_hub)")  # fmt: skip
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")


def checkpoint_options(args: argparse.Namespace) -> dict:
    return {"config": args.config, "flavor": args.flavor, "download": args.download, "revision": args.revision}


def wrap(text: str) -> str:
    """A --help description wrapped to 79 columns (the parsers use RawDescriptionHelpFormatter for their
    examples, which would print it as one line)."""
    return "\n".join(textwrap.wrap(text, 79))


def add_model_options(p: argparse.ArgumentParser, *, batch_size: int = 32) -> None:
    """MODEL and the options every pipeline command shares."""
    p.add_argument("model", metavar="MODEL", help="checkpoint directory (HF or PaddleNLP layout), weights file, or "
                   "hub id in the local cache")  # fmt: skip
    p.add_argument("--tokenizer", metavar="DIR", help="directory with sentencepiece.bpe.model and vocab.txt "
                   "(default: MODEL's directory)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"sequences per forward pass, grouped by "
                   f"length (default {batch_size})")  # fmt: skip
    p.add_argument("--max-length", type=int, help="cut inputs to this many tokens (default: the model's limit, "
                   "512 for ErnieM)")  # fmt: skip
    p.add_argument("--backend", choices=("numba", "numpy"), default="numba", help="compute kernels (default numba)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    add_checkpoint_options(p)


def pipeline_options(args: argparse.Namespace) -> dict:
    opts = checkpoint_options(args)
    flavor = opts.pop("flavor")
    if opts.get("config") is None:
        opts.pop("config")
    if opts.get("revision") is None:
        opts.pop("revision")
    return {"tokenizer": args.tokenizer, "max_length": args.max_length, "batch_size": args.batch_size,
            "flavor": flavor, "backend": args.backend, **opts}  # fmt: skip


def add_input_options(p: argparse.ArgumentParser, *, field_help: str = "the text") -> None:
    """TEXT arguments, or --input FILE (.txt: one text per line; .jsonl: one object per line), or stdin ('-')."""
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to process; '-' or none with --input unset "
                   "reads stdin, one text per line")  # fmt: skip
    p.add_argument("--input", "-i", metavar="FILE", help="a .txt file (one text per line) or a .jsonl file "
                   "(one JSON object per line; see --field)")  # fmt: skip
    p.add_argument("--field", default="text", help=f"the JSON key holding {field_help} in .jsonl input "
                   "(default: text)")  # fmt: skip


def iter_inputs(args: argparse.Namespace, *, stdin=None) -> Iterator[Any]:
    """Yield the inputs one by one without reading a file whole (a file larger than RAM streams).

    Plain lines give strings; .jsonl lines give the value under --field, or the whole object when the
    command wants objects (args.field is None). Empty input is a UserError, named at the end.
    """
    stdin = stdin if stdin is not None else sys.stdin
    n = 0
    if args.input and args.texts:
        raise UserError("give texts as arguments or --input FILE, not both")
    if args.texts and args.texts != ["-"]:
        for t in args.texts:
            n += 1
            yield t
    elif args.input:
        yield from _iter_file(args.input, args.field)
        return
    else:
        if stdin.isatty():
            raise UserError("no input: pass texts as arguments, --input FILE, or pipe text on stdin")
        for line in stdin:
            line = line.rstrip("\n")
            if line:
                n += 1
                yield line
    if n == 0:
        raise UserError("the input is empty: no texts to process")


def _iter_file(path: str, field: str | None) -> Iterator[Any]:
    import os

    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a .txt or .jsonl file")
    jsonl = path.endswith((".jsonl", ".ndjson"))
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if jsonl:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if field is not None:
                    if not isinstance(obj, dict) or field not in obj:
                        raise UserError(f"{path}:{lineno}: no {field!r} key in this line (set --field)")
                    obj = obj[field]
                n += 1
                yield obj
            else:
                n += 1
                yield line
    if n == 0:
        raise UserError(f"{path}: the file is empty: no texts to process")


class JsonOutput:
    """Results printed as they come: one JSON value per line (JSON Lines), or with ``array=True`` one JSON
    array written item by item (``--json``), so nothing is held until the end."""

    def __init__(self, array: bool, stream=None):
        self.array, self.stream, self.n, self.closed = array, stream or sys.stdout, 0, False

    def write(self, obj) -> None:
        text = json.dumps(obj, ensure_ascii=False)
        if self.array:
            text = ("[\n  " if self.n == 0 else ",\n  ") + text
        self.stream.write(text if self.array else text + "\n")
        self.n += 1

    def close(self) -> None:
        """End the output; called however the command ends, so an error after some results still leaves a
        valid JSON array of those results on stdout (the error itself goes to stderr)."""
        if self.closed:
            return
        self.closed = True
        if self.array:
            self.stream.write("[]\n" if self.n == 0 else "\n]\n")
        self.stream.flush()

    def __enter__(self) -> JsonOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def json_output(enabled: bool, array: bool = True) -> contextlib.AbstractContextManager[JsonOutput | None]:
    """``with json_output(args.json) as out:``: a JsonOutput closed however the block ends, or None."""
    return JsonOutput(array) if enabled else contextlib.nullcontext()


class IntermixedParser(argparse.ArgumentParser):
    """Lets TEXT arguments follow options (``encode MODEL --max-length 8 TEXT``).

    Before Python 3.12, argparse gives a ``nargs="*"`` positional nothing when an option separates it from
    the positional before it ("unrecognized arguments"); intermixed parsing reads the options first, then the
    positionals. cli.py makes every subcommand's parser one of these (and their own subcommands' parsers are
    of the same class).
    """

    _intermixed = False

    def parse_known_args(self, args=None, namespace=None):
        # parse_known_intermixed_args calls back here twice; and it cannot parse a parser that has subcommands
        # of its own (``parity compare``): those parse plainly (their subcommands are intermixed in turn)
        if self._intermixed or any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def print_json(obj: Any, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
