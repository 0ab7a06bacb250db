"""Files written whole or not at all: each output is written to a temporary file beside its destination and
renamed over it once complete. A reader never sees half a file, an interrupted or failed write (a full disk,
Ctrl-C) leaves the old file as it was, and a process still mapping the old file keeps its data."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """``with atomic_file(path) as f: f.write(...)``: ``path`` is replaced when the block completes; if it
    raises, the temporary file is removed and ``path`` is untouched. The new file gets the usual mode (0666
    less the umask), as ``open`` would give it."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data``, atomically (see ``atomic_file``)."""
    with atomic_file(path) as f:
        f.write(data)
