"""Errors raised while reading checkpoints. Every message names the file, and the key where there is one."""

from __future__ import annotations

import reprlib


class CheckpointError(ValueError):
    """A checkpoint file is malformed, truncated, inconsistent with its config, or of an unknown layout."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for something other than rebuilding arrays; it was refused before anything ran."""


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x, level):
        if x.bit_length() > 128:  # the decimal text of a huge int is slow to make, and refused past 4300 digits
            return f"<an int of {x.bit_length()} bits>"
        return repr(x)


_REPR = _ShortRepr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6


def short_repr(obj) -> str:
    """``repr(obj)`` cut to a few levels and items: bounded in time and length whatever a file nests or shares
    (the plain repr of a pickle's shared references can take exponential time)."""
    return _REPR.repr(obj)


def clip(text: str, limit: int = 200) -> str:
    """``text`` cut to about ``limit`` characters (a file's names and messages can be arbitrarily long)."""
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]}"
