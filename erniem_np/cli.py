"""The ``erniem-np`` command line. Library code never prints; this module and ``erniem_np.commands`` do.

Each module in ``erniem_np/commands/`` (except ``_common``) defines ``register(subparsers)``; this module finds
them, builds the parser and turns a user's mistake into one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from . import __version__, commands
from .commands._common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, IntermixedParser, Progress, UserError

_Progress = Progress  # older name, kept for callers

# The order subcommands are listed in --help; modules not named here follow in alphabetical order.
ORDER = ("demo", "encode", "classify", "tag", "qa", "choose", "extract", "golden", "parity", "convert", "inspect",
         "bench")

EPILOG = """exit codes: 0 success; 1 bad input or checkpoint (one line on stderr says what); 2 bad command line.
'erniem-np parity' adds 1 numeric mismatch, 2 structural mismatch, 3 unreadable file."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="erniem-np", description="ErnieM (ERNIE-M) in plain NumPy.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--version", action="version", version=f"erniem-np {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=IntermixedParser)
    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    for name in names:
        importlib.import_module(f"{commands.__name__}.{name}").register(sub)
    # argparse lists subcommands in the order they were added; put them in ORDER.
    rank = {n: i for i, n in enumerate(ORDER)}
    actions = sub._choices_actions
    actions.sort(key=lambda a: (rank.get(a.dest, len(rank)), a.dest))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    with warnings.catch_warnings(record=True) as caught:  # shown after success; a failure prints one line only
        warnings.simplefilter("default")
        try:
            code = args.func(args)
        except BrokenPipeError:  # `erniem-np ... | head`
            return EXIT_OK
        except Exception as e:  # noqa: BLE001 - the one place a failure becomes one line
            message = _failure(e)
            if message is None:
                raise
            print(f"erniem-np: error: {message}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("erniem-np: interrupted", file=sys.stderr)
            return 130
    for w in caught:
        print(f"erniem-np: warning: {w.message}", file=sys.stderr)
    return code


def _failure(e: Exception) -> str | None:
    """The one line for a failure the user can act on (bad input, a broken file, a full disk, too little
    memory), or None for an error in erniem-np itself, which keeps its traceback."""
    if isinstance(e, KeyError):
        return str(e.args[0]) if e.args else "missing key"
    if isinstance(e, (UserError, ValueError, TypeError, OSError)):  # OSError: missing files, full disk, ...
        return str(e)
    if isinstance(e, OverflowError):
        return f"a number is out of range: {e}"
    if isinstance(e, MemoryError):
        return "out of memory: the input or checkpoint needs more memory than this machine has"
    if isinstance(e, RecursionError):
        return "an input file is nested too deeply to read"
    return None


if __name__ == "__main__":
    sys.exit(main())
