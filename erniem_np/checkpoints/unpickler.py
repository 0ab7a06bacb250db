"""A pickle reader that can only rebuild arrays: safe by construction.

A pickle is a program: its GLOBAL opcodes name any importable callable and REDUCE calls it, so
``pickle.load`` on a downloaded checkpoint runs whatever the file says. This reader never imports anything a
file names. ``find_class`` looks ``(module, name)`` up in a fixed table of stand-ins written here (a torch
storage type becomes a dtype token, ``numpy.core.multiarray._reconstruct`` a placeholder that only accepts
array state); any other global is refused with UnsafePickleError naming it, before anything runs. The opcodes
that could reach a callable another way are refused too: INST/OBJ/NEWOBJ/NEWOBJ_EX (instantiate a class),
EXT1/2/4 (copyreg's extension registry), and BUILD on anything but our placeholders (BUILD would set attributes
or call ``__setstate__``). Persistent ids go to the reader's own handler or are refused.

It is Python's pure-Python unpickler (``pickle._Unpickler``) with those entries of its dispatch table replaced;
being pure Python it also lets the Paddle reader hand the tensor bytes over as views of a memory-mapped file.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import CheckpointError, UnsafePickleError

# Python 2 module names a protocol < 3 pickle may use for the same globals.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

_REFUSED_OPCODES = {
    pickle.INST: "INST", pickle.OBJ: "OBJ", pickle.NEWOBJ: "NEWOBJ", pickle.NEWOBJ_EX: "NEWOBJ_EX",
    pickle.EXT1: "EXT1", pickle.EXT2: "EXT2", pickle.EXT4: "EXT4",
}  # fmt: skip


class Buildable:
    """Base of the placeholders a pickle may BUILD (give state to). Nothing else accepts BUILD."""

    def __setstate__(self, state):  # pragma: no cover - every subclass defines it
        raise NotImplementedError


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickle with ``allowed[(module, name)]`` as the only globals; see the module docstring."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: RUF012  (pickle looks it up on the class)

    def __init__(self, file, *, path: str, allowed: Mapping[tuple[str, str], Any],
                 persistent_load: Callable[[Any], Any] | None = None):  # fmt: skip
        # latin1: NumPy arrays pickled by Python 2 carry their bytes as str
        super().__init__(file, fix_imports=False, encoding="latin1")
        self._path = path
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module: str, name: str):
        key = (_PY2_MODULES.get(module, module), name)
        if key not in self._allowed:
            raise UnsafePickleError(
                f"{self._path}: refused to load: the pickle asks for the global {module}.{name}, which does not "
                f"rebuild an array (allowed: {', '.join(sorted({f'{m}.{n}' for m, n in self._allowed}))}); "
                "nothing from the file was executed"
            )
        return self._allowed[key]

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError(f"{self._path}: refused to load: unexpected persistent id {pid!r}")
        return self._persistent(pid)

    def _refuse(self, opcode: bytes):
        raise UnsafePickleError(
            f"{self._path}: refused to load: pickle opcode {_REFUSED_OPCODES[opcode]} (it would instantiate an "
            "arbitrary class or use the extension registry); nothing from the file was executed"
        )

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Buildable):
            inst.__setstate__(state)
        elif type(inst) is OrderedDict:
            pass  # torch's state_dict OrderedDict carries `_metadata` (module versions): not needed, dropped
        else:
            raise UnsafePickleError(
                f"{self._path}: refused to load: pickle BUILD on a {type(inst).__name__} object (only arrays "
                "are rebuilt); nothing from the file was executed"
            )

    for _op in _REFUSED_OPCODES:
        dispatch[_op[0]] = lambda self, _op=_op: self._refuse(_op)
    dispatch[pickle.BUILD[0]] = _load_build
    del _op

    def current_name(self) -> str | None:
        """The dict key whose value was being read when loading stopped (for error messages): the last string
        on any stack level that is followed by nothing or by an array being built."""
        levels = [*getattr(self, "metastack", []), getattr(self, "stack", [])]
        for level in reversed(levels):
            for i in range(len(level) - 1, -1, -1):
                if isinstance(level[i], str) and (i + 1 == len(level) or not isinstance(level[i + 1], str)):
                    return level[i]
        return None


def unpickle(file, *, path: str, allowed: Mapping[tuple[str, str], Any],
             persistent_load: Callable[[Any], Any] | None = None) -> Any:  # fmt: skip
    """Run RestrictedUnpickler over ``file``; every failure becomes a CheckpointError naming ``path``."""
    u = RestrictedUnpickler(file, path=path, allowed=allowed, persistent_load=persistent_load)
    try:
        return u.load()
    except CheckpointError as e:
        if str(e).startswith(path):
            raise
        raise type(e)(f"{path}: {e}") from None
    except EOFError as e:
        raise CheckpointError(_truncated(path, u, e)) from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error,
            RecursionError, MemoryError) as e:  # fmt: skip
        if "truncated" in str(e) or "exhausted" in str(e):
            raise CheckpointError(_truncated(path, u, e)) from None
        name = u.current_name()
        where = f" (while reading {name!r})" if name else ""
        raise CheckpointError(f"{path}: corrupt pickle{where}: {type(e).__name__}: {e}") from None


def _truncated(path: str, u: RestrictedUnpickler, e: Exception) -> str:
    name = u.current_name()
    where = f" while reading {name!r}" if name else ""
    return f"{path}: truncated: the pickle ends before its STOP opcode{where} ({e})"


# ------------------------------------------------------------------------------------------ NumPy arrays
# An ndarray pickles (protocol 2-4) as
#     numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')  BUILD (1, shape, dtype, fortran, bytes)
# and its dtype as numpy.dtype('f4', False, True)  BUILD (3, '<', None, None, None, -1, -1, 0).
# (NumPy 2 writes numpy._core.*; protocol 2 wraps the bytes in _codecs.encode(str, 'latin1').)

ARRAY_DTYPES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}


class _NdarrayType:
    """Stands for ``numpy.ndarray``; only _reconstruct accepts it."""


NDARRAY = _NdarrayType()


class PendingDtype(Buildable):
    """``numpy.dtype(spec, align, copy)``: only plain numeric dtypes, byte order from the BUILD state."""

    def __init__(self, spec, align=False, copy=True):
        if not isinstance(spec, str) or spec not in ARRAY_DTYPES:
            raise UnsafePickleError(f"refused to load: array dtype {spec!r} (only numeric dtypes are rebuilt)")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2:
            raise ValueError(f"unexpected dtype state {state!r}")
        order, names = state[1], state[3] if len(state) > 3 else None
        if names is not None:
            raise UnsafePickleError("refused to load: structured array dtypes are not rebuilt")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


class PendingArray(Buildable):
    """``numpy.core.multiarray._reconstruct(ndarray, ...)`` then BUILD: becomes ``.array`` (a view of the raw
    bytes when they are a memoryview of a mapped file)."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ValueError("unexpected ndarray state")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, PendingDtype):
            raise ValueError("ndarray state without a dtype")
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"bad array shape {shape!r}")
        if isinstance(raw, str):
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise UnsafePickleError("refused to load: an array whose data is not raw bytes (object arrays are "
                                    "not rebuilt)")  # fmt: skip
        count = int(np.prod(shape, dtype=np.int64))
        if len(raw) != count * dtype.dtype.itemsize:
            raise ValueError(f"array data has {len(raw)} bytes, {shape} {dtype.dtype} needs "
                             f"{count * dtype.dtype.itemsize}")  # fmt: skip
        a = np.frombuffer(raw, dtype=dtype.dtype, count=count)
        if isinstance(raw, bytes):  # small tensors arrive as bytes (read-only): take a copy
            a = a.copy()
        self.array = a.reshape(shape, order="F" if fortran else "C")


def _reconstruct(cls, shape, typecode):
    if cls is not NDARRAY:
        raise UnsafePickleError("refused to load: _reconstruct of something other than numpy.ndarray")
    return PendingArray()


def _scalar(dtype, raw=None):
    if not isinstance(dtype, PendingDtype) or not isinstance(raw, (bytes, str)):
        raise UnsafePickleError("refused to load: a NumPy scalar that is not numeric")
    raw = raw.encode("latin1") if isinstance(raw, str) else raw
    return np.frombuffer(raw, dtype=dtype.dtype, count=1)[0]


def _frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, PendingDtype) or not isinstance(buf, (bytes, bytearray, memoryview)):
        raise UnsafePickleError("refused to load: _frombuffer of something other than numeric bytes")
    return np.frombuffer(buf, dtype=dtype.dtype).reshape(shape, order=order)


def _codecs_encode(text, encoding="utf-8"):
    # protocol 2 pickles carry bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError("refused to load: _codecs.encode other than text -> latin1 bytes")
    return text.encode("latin1")


def _ordered_dict(*args):
    if args and not (len(args) == 1 and isinstance(args[0], (list, tuple, dict))):
        raise UnsafePickleError("refused to load: OrderedDict with unexpected arguments")
    return OrderedDict(*args)


NUMPY_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    NUMPY_GLOBALS[(_mod, "_reconstruct")] = _reconstruct
    NUMPY_GLOBALS[(_mod, "scalar")] = _scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    NUMPY_GLOBALS[(_mod, "_frombuffer")] = _frombuffer
NUMPY_GLOBALS[("numpy", "ndarray")] = NDARRAY
NUMPY_GLOBALS[("numpy", "dtype")] = PendingDtype
NUMPY_GLOBALS[("_codecs", "encode")] = _codecs_encode
NUMPY_GLOBALS[("collections", "OrderedDict")] = _ordered_dict
del _mod


def resolve_arrays(obj: Any) -> Any:
    """Replace every PendingArray in a nested dict/list/tuple by its array."""
    if isinstance(obj, PendingArray):
        if obj.array is None:
            raise ValueError("an array placeholder never received its data")
        return obj.array
    if isinstance(obj, dict):
        return type(obj)((k, resolve_arrays(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(resolve_arrays(v) for v in obj)
    return obj


class MappedReader(io.RawIOBase):
    """A read-only file over a buffer (an mmap) whose large reads return memoryviews instead of copies.

    The pure-Python unpickler reads a tensor's bytes with one ``read(n)``; handing back a view of the mapping
    makes the array zero-copy. Short reads raise EOFError (the pure-Python unpickler does not check lengths).
    """

    def __init__(self, buf, big: int = 1 << 16):
        super().__init__()
        self._buf = buf
        self._view = memoryview(buf)
        self._pos = 0
        self._big = big

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1):
        if n is None or n < 0:
            n = len(self._view) - self._pos
        if self._pos + n > len(self._view):
            raise EOFError(f"truncated: {n} bytes requested at offset {self._pos} of {len(self._view)}")
        start, self._pos = self._pos, self._pos + n
        if n >= self._big:
            return self._view[start : self._pos]
        return bytes(self._view[start : self._pos])

    def readinto(self, b) -> int:
        data = self.read(min(len(b), len(self._view) - self._pos))
        b[: len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        end = self._buf.find(b"\n", self._pos)
        end = len(self._view) if end < 0 else end + 1
        return self.read(end - self._pos)
