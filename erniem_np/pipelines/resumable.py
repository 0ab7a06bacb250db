"""Outputs written chunk by chunk that an interrupted run can continue (``--resume``).

    out = ChunkJournal("out.jsonl", fingerprint=spec.key(), resume=True)
    for chunk in chunks(out.skip_done(inputs)):          # the inputs a previous run finished are skipped
        out.f.write(lines_of(chunk)); out.commit(chunk.items)
    out.finish()                                        # out.jsonl.partial renamed to out.jsonl

Resumable (``resume=True``): the output is written to ``OUT.partial``, and after each chunk its bytes are
flushed to disk and ``OUT.partial.json`` is replaced (atomically, ``atomic.atomic_write``) with the state of
the run: the inputs done, the bytes of ``OUT.partial`` that hold them, a SHA-256 of those inputs and the
fingerprint of the task and options. A run that stops, however it stops, leaves a state that names complete
chunks only: an error, Ctrl-C or a full disk also cut ``OUT.partial`` back to that length; a killed process
or a lost machine may leave a torn tail after it, which the next ``--resume`` cuts off before it appends. The
next run with ``resume=True`` checks the fingerprint and the hash of the inputs it skips (other options or
another input are an error, never a silently mixed file) and continues after the last complete chunk. When
the run completes, ``OUT.partial`` is renamed over ``OUT`` and the state removed. With no state to resume,
a resumable run starts from the beginning.

Not resumable (``resume=False``): written beside ``OUT`` under a temporary name and renamed over it when
complete (``atomic.open_beside``); a failure removes it and leaves ``OUT`` as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ..atomic import atomic_write, check_output_path, commit, discard, open_beside
from .chunks import Numbered

STATE_FORMAT = "erniem-np-partial/1"


class ResumeError(ValueError):
    """The partial output cannot be continued with this input or these options."""


def _item_bytes(item: Any) -> bytes:
    if isinstance(item, Numbered):
        item = item.item
    return json.dumps(item, ensure_ascii=False, sort_keys=True, default=repr).encode() + b"\n"


class ChunkJournal:
    """``OUT`` written chunk by chunk (module docstring). ``header``: bytes the file starts with (a format's
    placeholder header, rewritten by the caller at the end); ``f`` is the open file, at its end."""

    def __init__(self, path: str | os.PathLike, fingerprint: str, *, resume: bool, header: bytes = b""):
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"{self.path}: directory {parent} does not exist")
        check_output_path(self.path)
        self.fingerprint, self.resume = fingerprint, resume
        self.partial, self.state_path = self.path + ".partial", self.path + ".partial.json"
        self.done, self.digest = 0, hashlib.sha256()
        self._resumed_digest: str | None = None
        self.extra: dict = {}
        if not resume:
            self.f, self.tmp = open_beside(self.path)
            self.f.write(header)
        else:
            self.tmp = self.partial
            state = self._read_state()
            if state is None:
                self.f = open(self.partial, "w+b")  # noqa: SIM115 - closed by finish / abort
                self.f.write(header)
            else:
                self.f = open(self.partial, "r+b")  # noqa: SIM115
                self.f.truncate(state["bytes"])  # a torn tail after the last complete chunk
                self.f.seek(0, os.SEEK_END)
                self.done, self._resumed_digest = int(state["inputs"]), state["sha256"]
                self.extra = state.get("extra", {})
        self.committed = self.f.tell()
        if resume and self._resumed_digest is None:
            self._write_state()

    def _read_state(self) -> dict | None:
        if not (os.path.exists(self.state_path) and os.path.exists(self.partial)):
            return None
        try:
            with open(self.state_path, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError) as e:
            raise ResumeError(f"{self.state_path}: unreadable ({e}); remove it and {self.partial} to start over"
                              ) from None  # fmt: skip
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ResumeError(f"{self.state_path}: not a state file this version of erniem-np wrote")
        if state.get("fingerprint") != self.fingerprint:
            raise ResumeError(f"{self.partial} was written with another task, model or options; run the same "
                              "command to resume, or without --resume to start over")  # fmt: skip
        if os.path.getsize(self.partial) < int(state["bytes"]):
            raise ResumeError(f"{self.partial} is shorter than its state file says: it cannot be continued")
        return state

    def _write_state(self) -> None:
        state = {"format": STATE_FORMAT, "fingerprint": self.fingerprint, "inputs": self.done,
                 "bytes": self.committed, "sha256": self.digest.hexdigest(), "extra": self.extra}  # fmt: skip
        atomic_write(self.state_path, json.dumps(state).encode())

    def skip_done(self, inputs: Iterable[Any]) -> Iterator[Any]:
        """``inputs`` without the ones a resumed run already finished, after checking that they are the same
        inputs (their SHA-256)."""
        it = iter(inputs)
        n = 0
        while n < self.done:
            try:
                item = next(it)
            except StopIteration:
                raise ResumeError(f"the input has {n} items, and {self.partial} already holds {self.done}: "
                                  "not the input of the interrupted run") from None  # fmt: skip
            self.digest.update(_item_bytes(item))
            n += 1
        if self._resumed_digest is not None and self.digest.hexdigest() != self._resumed_digest:
            raise ResumeError(f"the first {self.done} inputs differ from those of the run that wrote "
                              f"{self.partial}: resume with the same input, or run without --resume")  # fmt: skip
        yield from it

    def commit(self, items: list) -> None:
        """The bytes written since the last commit hold the results of ``items``: make them the new end of
        the complete part (flushed to disk, then the state file replaced)."""
        for item in items:
            self.digest.update(_item_bytes(item))
        self.done += len(items)
        if self.resume:
            self.f.flush()
            os.fsync(self.f.fileno())
        self.committed = self.f.tell()
        if self.resume:
            self._write_state()

    def finish(self) -> None:
        """Rename the complete output over ``path`` (the caller has closed ``f`` or leaves it to this)."""
        if not self.f.closed:
            self.f.close()
        commit(self.tmp, self.path)
        self.forget_state()

    def forget_state(self) -> None:
        if self.resume:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_path)

    def abort(self) -> None:
        """After a failure: a resumable output is cut back to its complete chunks and kept for ``--resume``;
        another is removed."""
        if self.resume:
            with contextlib.suppress(OSError):  # the disk may be full: the state still names the good part
                self.f.truncate(self.committed)
            with contextlib.suppress(OSError):
                self.f.close()
        else:
            with contextlib.suppress(OSError):
                self.f.close()
            discard(self.tmp)
