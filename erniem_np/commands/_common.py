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
import itertools
import json
import logging
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

from ..pipelines.chunks import Numbered

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
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"at most this many sequences per forward "
                   f"pass, grouped by length (default {batch_size})")  # fmt: skip
    p.add_argument("--max-length", type=int, help="cut inputs to this many tokens (default: the model's limit, "
                   "512 for ErnieM)")  # fmt: skip
    add_backend_options(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    add_checkpoint_options(p)


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """--backend and --quantize, which every command that runs a model takes."""
    p.add_argument("--backend", choices=("numba", "numpy", "int8"), help="compute kernels: numba (the default), "
                   "numpy (the reference layers) or int8 (the default for an int8 checkpoint)")  # fmt: skip
    p.add_argument("--quantize", choices=("int8",), help="quantize the weights to int8 as they load (the same "
                   "as --backend int8; docs/quantization.md)")  # fmt: skip


def backend_option(args: argparse.Namespace) -> str | None:
    """The backend --backend and --quantize ask for (None: the checkpoint decides, numba or int8)."""
    if args.quantize and args.backend not in (None, "int8"):
        raise UserError(f"--quantize int8 runs on the int8 layers: it does not combine with --backend {args.backend}")
    return "int8" if args.quantize else args.backend


def pipeline_options(args: argparse.Namespace) -> dict:
    opts = checkpoint_options(args)
    flavor = opts.pop("flavor")
    if opts.get("config") is None:
        opts.pop("config")
    if opts.get("revision") is None:
        opts.pop("revision")
    return {"tokenizer": args.tokenizer, "max_length": args.max_length, "batch_size": args.batch_size,
            "flavor": flavor, "backend": backend_option(args), **opts}  # fmt: skip


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
    for numbered in numbered_inputs(args, stdin=stdin):
        yield numbered.item


def numbered_inputs(args: argparse.Namespace, *, stdin=None) -> Iterator[Numbered]:
    """``iter_inputs``'s inputs as ``Numbered(where, input)``: where is ``FILE:LINE``, ``input line N`` (stdin) or
    ``argument N``, the place an error message names. A line that is not UTF-8 is a UserError naming it."""
    stdin = stdin if stdin is not None else sys.stdin
    n = 0
    if args.input and args.texts:
        raise UserError("give texts as arguments or --input FILE, not both")
    if args.texts and args.texts != ["-"]:
        for t in args.texts:
            n += 1
            yield Numbered(f"argument {n}", t)
    elif args.input:
        yield from _iter_file(args.input, args.field)
        return
    else:
        if stdin.isatty():
            raise UserError("no input: pass texts as arguments, --input FILE, or pipe text on stdin")
        for lineno, line in _decoded_lines(stdin, "input line "):
            if line:
                n += 1
                yield Numbered(f"input line {lineno}", line)
    if n == 0:
        raise UserError("the input is empty: no texts to process")


def _decoded_lines(stream, where: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its end of line) of a text or binary stream; a line that is not UTF-8 is a
    UserError naming ``where`` + its number."""
    binary = getattr(stream, "buffer", stream)
    if isinstance(binary.read(0), str):  # a text stream without a buffer (io.StringIO)
        for lineno, line in enumerate(stream, 1):
            yield lineno, line.rstrip("\n")
        return
    for lineno, raw in enumerate(binary, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{where}{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                            "of the line)") from None  # fmt: skip
        line = line.rstrip("\n")
        yield lineno, line.removesuffix("\r")


def _iter_file(path: str, field: str | None) -> Iterator[Numbered]:
    import os

    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a .txt or .jsonl file")
    jsonl = path.endswith((".jsonl", ".ndjson"))
    n = 0
    with open(path, "rb") as f:
        for lineno, line in _decoded_lines(f, f"{path}:"):
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
                yield Numbered(f"{path}:{lineno}", obj)
            else:
                n += 1
                yield Numbered(f"{path}:{lineno}", line)
    if n == 0:
        raise UserError(f"{path}: the file is empty: no texts to process")


def strings(items: Iterator[Numbered], name: str = "text") -> Iterator[Numbered]:
    """``items`` checked to be strings (a .jsonl --field may hold anything else)."""
    for numbered in items:
        if not isinstance(numbered.item, str):
            raise UserError(f"{numbered.where}: the {name} must be a string, got {type(numbered.item).__name__} "
                            "(see --field)")  # fmt: skip
        yield numbered


# ============================================================================================ running
def add_run_options(p: argparse.ArgumentParser, *, chunk_size: int, what: str = "inputs",
                    output_help: str | None = None) -> None:  # fmt: skip
    """--chunk-size, --output/-o, --resume, --dask [ADDRESS] and --dask-workers: how a pipeline command runs
    (``run_chunked`` reads them)."""
    p.add_argument("--chunk-size", type=int, default=chunk_size, help=f"{what} read at a time, sorted by length "
                   f"and batched together; one Dask task each with --dask (default {chunk_size})")  # fmt: skip
    p.add_argument("--output", "-o", metavar="OUT", help=output_help or "write the results to OUT, one JSON "
                   "object per input per line (JSON Lines, the objects --json prints), chunk by chunk")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="with -o: continue OUT's interrupted run (OUT.partial) "
                   "after its last complete chunk, or start a run that can be continued so")  # fmt: skip
    p.add_argument("--dask", nargs="?", const="local", metavar="ADDRESS", help="run on Dask: alone, a local "
                   "cluster; with a scheduler address (tcp://host:8786), that cluster (MODEL must be readable at "
                   "the same path on every worker)")  # fmt: skip
    p.add_argument("--dask-workers", type=int, help="workers of the local cluster (default: one per core)")
    if "--quiet" not in p._option_string_actions:
        p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def make_runner(args: argparse.Namespace, spec):
    """The runner ``args`` ask for: this process, or Dask (--dask, --dask-workers)."""
    from ..pipelines.chunks import LocalRunner

    if args.chunk_size < 1:
        raise UserError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    if args.resume and not args.output:
        raise UserError("--resume continues an output file: give -o OUT")
    if args.dask is None:
        return LocalRunner(spec)
    from ..pipelines.distributed import DaskRunner

    _drop_unretrieved_future_messages()
    try:  # distributed's own log lines would break the one-line error (what matters arrives as an exception)
        return DaskRunner(spec, address=None if args.dask == "local" else args.dask, n_workers=args.dask_workers,
                          silence_logs=logging.CRITICAL)  # fmt: skip
    except ImportError as e:
        raise UserError(str(e)) from None


class _UnretrievedFutures(logging.Filter):
    """Drops asyncio's messages about futures and tasks left behind: "Future exception was never retrieved",
    "Task exception was never retrieved" and "Task was destroyed but it is pending!"."""

    def filter(self, record: logging.LogRecord) -> bool:
        first_line = str(record.msg).partition("\n")[0]  # then "future: <Future ...>" and the traceback
        return not (first_line.endswith("exception was never retrieved")
                    or first_line == "Task was destroyed but it is pending!")  # fmt: skip


def _drop_unretrieved_future_messages() -> None:
    """For the rest of this process, asyncio's messages about futures and tasks left behind are not printed.
    With --dask, distributed leaves such futures behind when a run stops early (a timeout of its own after the
    client closed); their message arrives when they are garbage-collected, after the command's one error line,
    often at exit, so it cannot be silenced only while the runner is open. Other asyncio messages still print."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedFutures) for f in logger.filters):
        logger.addFilter(_UnretrievedFutures())


def run_chunked(args: argparse.Namespace, spec, inputs, record, render=None, what: str = "inputs",
                output=None) -> int:  # fmt: skip
    """Run a pipeline command: ``inputs`` (``Numbered``) cut into --chunk-size chunks, run in this process or
    on Dask, each result written as its chunk completes: to -o OUT (resumable with --resume, see
    pipelines/resumable.py) by ``output(pipeline, journal, record)`` (default ``JsonLinesFile``), as one JSON
    array of ``record(input, result)`` (--json), as JSON Lines of them on stdout (no ``render``), or printed by
    ``render(n, input, result)`` (n counts inputs from 1)."""
    from ..pipelines.chunks import chunk_inputs
    from ..pipelines.resumable import ChunkJournal

    inputs = iter(inputs)
    first = next(inputs)  # an empty input fails here, before the model loads
    inputs = itertools.chain([first], inputs)
    progress = journal = sink = None
    try:
        with make_runner(args, spec) as runner:
            progress = None if getattr(args, "quiet", False) else Progress()  # the model's loading not counted
            if args.output:
                journal = ChunkJournal(args.output, f"{spec.key()} chunk {args.chunk_size}", resume=args.resume)
                inputs = journal.skip_done(inputs)
                sink = (output or JsonLinesFile)(runner.pipeline, journal, record)
            n = start = journal.done if journal is not None else 0
            with json_output(sink is None and (args.json or render is None), array=args.json) as out:
                for chunk, results in runner.map_chunks(chunk_inputs(inputs, args.chunk_size, start), progress,
                                                        what):  # fmt: skip
                    n += len(chunk)
                    if sink is not None:
                        sink.write(chunk.items, results)
                        journal.commit(chunk.items)
                        continue
                    for i, (item, result) in enumerate(zip(chunk.items, results, strict=True)):
                        if out is not None:
                            out.write(record(item, result))
                        else:
                            render(n - len(chunk) + i + 1, item, result)
            if sink is not None:
                sink.close()
    except BaseException:
        if journal is not None:
            journal.abort()
        raise
    finally:
        if progress is not None:
            progress.close()
    if sink is not None:
        print(json.dumps(sink.summary(n)) if args.json else sink.describe(n))
    return EXIT_OK


class JsonLinesFile:
    """-o OUT for the JSON tasks: one ``record(input, result)`` per line (JSON Lines), a chunk at a time."""

    def __init__(self, pipeline, journal, record):
        self.journal, self.record = journal, record

    def write(self, items: list, results) -> None:
        lines = [json.dumps(self.record(x, r), ensure_ascii=False) + "\n" for x, r in zip(items, results, strict=True)]
        self.journal.f.write("".join(lines).encode())

    def close(self) -> None:
        self.journal.finish()

    def summary(self, n: int) -> dict:
        return {"output": self.journal.path, "inputs": n}

    def describe(self, n: int) -> str:
        return f"wrote the results of {n} inputs to {self.journal.path}"


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
