"""Files written whole or not at all: each output is written to a temporary file beside its destination and
renamed over it once complete. A reader never sees half a file, an interrupted or failed write (a full disk,
Ctrl-C) leaves the old file as it was, and a process still mapping the old file keeps its data."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO


def mapped_by_this_process(path: str | os.PathLike) -> bool:
    """Whether this process has ``path`` memory-mapped (Linux: /proc/self/maps; elsewhere False). Writing onto
    such a file in place would kill the process with SIGBUS when its pages are touched."""
    try:
        st = os.stat(path)
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read().splitlines()
    except OSError:
        return False
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[4] == str(st.st_ino) and fields[5].startswith("/"):
            try:
                if os.path.samefile(fields[5], path):
                    return True
            except OSError:
                continue
    return False


def check_output_path(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse an output path that is a file this process has mapped (a checkpoint it is using)."""
    if mapped_by_this_process(path):
        raise ValueError(f"{os.fspath(path)}: refusing to write the {what} over a file this process is using "
                         "(a loaded checkpoint); choose another path")  # fmt: skip


def open_beside(path: str | os.PathLike, mode: str = "w+b", encoding: str | None = None) -> tuple[IO, str]:
    """A new temporary file in ``path``'s directory, open for writing, and its name: write it, then
    ``commit`` it over ``path`` (or remove it)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        return os.fdopen(fd, mode, encoding=encoding), tmp
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise


def commit(tmp: str, path: str | os.PathLike) -> None:
    """Give ``tmp`` the usual mode (0666 less the umask, as ``open`` would) and rename it over ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def discard(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """``with atomic_file(path) as f: f.write(...)``: ``path`` is replaced when the block completes; if it
    raises, the temporary file is removed and ``path`` is untouched."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    f, tmp = open_beside(path, mode, encoding)
    try:
        with f:
            yield f
        commit(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data``, atomically (see ``atomic_file``)."""
    with atomic_file(path) as f:
        f.write(data)
