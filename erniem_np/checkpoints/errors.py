"""Errors raised while reading checkpoints. Every message names the file, and the key where there is one."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is malformed, truncated, inconsistent with its config, or of an unknown layout."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for something other than rebuilding arrays; it was refused before anything ran."""
