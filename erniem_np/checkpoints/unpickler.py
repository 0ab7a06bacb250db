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

The work a pickle can ask for is bounded too. A pickle shares an object by memo reference, so a few bytes can
name a structure that is exponentially large when walked as a tree: nothing here walks what a pickle builds
(the readers look only at the entries they need), error messages use a bounded repr, and the opcodes that
hash (dict keys, set members) accept only strings, bytes and small integers, whose hashes cannot be made to
collide or to cost more than their own bytes. What the stand-ins allocate (a copy of array bytes, a tuple or
dict built from a list, latin1 bytes from text) and what BYTEARRAY8 declares is charged against a budget of
a few times the pickle's own size, so that rebuilding a pickle allocates at most that much, however often it
reuses a shared reference; and two arrays may not be built from one shared bytes object.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import CheckpointError, UnsafePickleError, clip, short_repr
from .tensors import shape_problem

# Python 2 module names a protocol < 3 pickle may use for the same globals.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# What rebuilding a pickle may allocate beyond the pickle itself: BUDGET_FACTOR times its size, plus
# BUDGET_SLACK. A valid file charges each of its objects once (at most about twice its size in all).
BUDGET_FACTOR = 4
BUDGET_SLACK = 16 << 20
MAX_MEMO_INDEX = 1 << 32  # what LONG_BINPUT can address; the text PUT opcode may not go further

_REFUSED_OPCODES = {
    pickle.INST: "INST", pickle.OBJ: "OBJ", pickle.NEWOBJ: "NEWOBJ", pickle.NEWOBJ_EX: "NEWOBJ_EX",
    pickle.EXT1: "EXT1", pickle.EXT2: "EXT2", pickle.EXT4: "EXT4",
}  # fmt: skip


def is_plain_key(key) -> bool:
    """A dict key or set member a pickle may use: str, bytes, bool, None, or an int below 2**61 in magnitude
    (these hash in time linear in their size and, short of knowing the process's hash seed, without
    collisions; a tuple's hash walks its elements, which a pickle may share)."""
    return type(key) in (str, bytes, bool) or key is None or (type(key) is int and -(1 << 61) < key < 1 << 61)


class Buildable:
    """Base of the placeholders a pickle may BUILD (give state to). Nothing else accepts BUILD."""

    def __setstate__(self, state):  # pragma: no cover - every subclass defines it
        raise NotImplementedError


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickle with ``allowed[(module, name)]`` as the only globals; see the module docstring."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: RUF012  (pickle looks it up on the class)

    def __init__(self, file, *, path: str, allowed: Mapping[tuple[str, str], Any],
                 persistent_load: Callable[[Any], Any] | None = None, size: int | None = None):  # fmt: skip
        # latin1: NumPy arrays pickled by Python 2 carry their bytes as str
        super().__init__(file, fix_imports=False, encoding="latin1")
        self._path = path
        self._allowed = allowed
        self._persistent = persistent_load
        self._size = _input_size(file) if size is None else size
        self._budget = BUDGET_FACTOR * self._size + BUDGET_SLACK
        self._spent = 0
        self._array_data: dict[int, Any] = {}  # id -> the raw bytes each array was built from (kept alive)

    def charge(self, n: int) -> None:
        """Count ``n`` more bytes of allocation; refuse the pickle once it exceeds the budget."""
        self._spent += n
        if self._spent > self._budget:
            raise CheckpointError(
                f"refused to load: rebuilding the pickle would allocate more than {self._budget:,} bytes for "
                f"its {self._size:,} (it reuses shared references, or declares data it does not hold)"
            )

    def find_class(self, module: str, name: str):
        key = (_PY2_MODULES.get(module, module), name)
        if key not in self._allowed:
            raise UnsafePickleError(
                f"{self._path}: refused to load: the pickle asks for the global {clip(f'{module}.{name}')}, "
                f"which does not rebuild an array (allowed: "
                f"{', '.join(sorted({f'{m}.{n}' for m, n in self._allowed}))}); nothing from the file was executed"
            )
        return self._allowed[key]

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError(f"{self._path}: refused to load: unexpected persistent id {short_repr(pid)}")
        return self._persistent(pid)

    def _refuse(self, opcode: bytes):
        raise UnsafePickleError(
            f"{self._path}: refused to load: pickle opcode {_REFUSED_OPCODES[opcode]} (it would instantiate an "
            "arbitrary class or use the extension registry); nothing from the file was executed"
        )

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        raw = state[-1] if isinstance(inst, PendingArray) and isinstance(state, tuple) and state else None
        # (CPython shares its empty and one-byte bytes and str objects, and so may a pickle made from them)
        if isinstance(raw, (bytes, bytearray, str, memoryview)) and len(raw) > 1:
            if id(raw) in self._array_data:
                raise CheckpointError("refused to load: two arrays are built from the same shared bytes (a "
                                      "pickle memo reference); each array must hold its own data")  # fmt: skip
            self._array_data[id(raw)] = raw
            if not isinstance(raw, memoryview):
                self.charge(len(raw))  # the copy PendingArray makes
        if isinstance(inst, Buildable):
            inst.__setstate__(state)
        elif type(inst) is OrderedDict:
            pass  # torch's state_dict OrderedDict carries `_metadata` (module versions): not needed, dropped
        else:
            raise UnsafePickleError(
                f"{self._path}: refused to load: pickle BUILD on a {type(inst).__name__} object (only arrays "
                "are rebuilt); nothing from the file was executed"
            )

    def _load_reduce(self):
        args = self.stack[-1]
        if isinstance(args, tuple):  # the stand-ins do at most linear work in the sizes of their arguments
            self.charge(sum(8 + _shallow_size(a) for a in args))
        super().load_reduce()

    @staticmethod
    def _check_key(key) -> None:
        if not is_plain_key(key):
            raise CheckpointError(f"refused to load: a dict key or set member of type {type(key).__name__} "
                                  "(only strings, bytes and small integers are accepted)")  # fmt: skip

    def _load_setitem(self):
        self._check_key(self.stack[-2])
        super().load_setitem()

    def _load_setitems(self):
        items = self.stack
        for i in range(0, len(items), 2):
            self._check_key(items[i])
        super().load_setitems()

    def _load_dict(self):
        items = self.stack
        for i in range(0, len(items), 2):
            self._check_key(items[i])
        super().load_dict()

    def _load_additems(self):
        for item in self.stack:
            self._check_key(item)
        super().load_additems()

    def _load_frozenset(self):
        for item in self.stack:
            self._check_key(item)
        super().load_frozenset()

    def _load_put(self):
        line = self.readline()[:-1]
        if len(line) > 20 or not line.isdigit() or int(line) >= MAX_MEMO_INDEX:
            raise CheckpointError(f"refused to load: PUT to memo index {clip(repr(line), 60)}")
        self.memo[int(line)] = self.stack[-1]

    def _load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        self.charge(n)  # bytearray(n) is allocated before its bytes are read
        b = bytearray(n)
        if self.readinto(b) != n:
            raise EOFError(f"truncated: BYTEARRAY8 of {n} bytes")
        self.append(b)

    for _op in _REFUSED_OPCODES:
        dispatch[_op[0]] = lambda self, _op=_op: self._refuse(_op)
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    dispatch[pickle.FROZENSET[0]] = _load_frozenset
    dispatch[pickle.PUT[0]] = _load_put
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
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
             persistent_load: Callable[[Any], Any] | None = None, size: int | None = None) -> Any:  # fmt: skip
    """Run RestrictedUnpickler over ``file``; every failure becomes a CheckpointError naming ``path``.

    ``size`` (bytes) sets the allocation budget; by default it is the size of ``file`` (a MappedReader or an
    in-memory file), else 64 MiB.
    """
    u = RestrictedUnpickler(file, path=path, allowed=allowed, persistent_load=persistent_load, size=size)
    try:
        return u.load()
    except CheckpointError as e:
        if str(e).startswith(path):
            raise
        raise type(e)(f"{path}: {e}") from None
    except EOFError as e:
        raise CheckpointError(_truncated(path, u, e)) from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error,
            RecursionError, MemoryError, OverflowError) as e:  # fmt: skip
        text = clip(str(e), 300)
        if "truncated" in text or "exhausted" in text:
            raise CheckpointError(_truncated(path, u, text)) from None
        name = u.current_name()
        where = f" (while reading {clip(repr(name), 120)})" if name else ""
        raise CheckpointError(f"{path}: corrupt pickle{where}: {type(e).__name__}: {text}") from None


def _truncated(path: str, u: RestrictedUnpickler, e) -> str:
    name = u.current_name()
    where = f" while reading {clip(repr(name), 120)}" if name else ""
    return f"{path}: truncated: the pickle ends before its STOP opcode{where} ({e})"


def _input_size(file) -> int:
    if isinstance(file, MappedReader):
        return file.nbytes
    if isinstance(file, io.BytesIO):
        return file.getbuffer().nbytes
    return 64 << 20


def _shallow_size(obj) -> int:
    """About the bytes a stand-in may allocate from ``obj``: its own bytes, 8 per list or tuple item (a
    pointer), 64 per dict or set item (an entry and its hash slot)."""
    if isinstance(obj, memoryview):
        return obj.nbytes
    if isinstance(obj, (str, bytes, bytearray)):
        return len(obj)
    if isinstance(obj, (list, tuple)):
        return 8 * len(obj)
    if isinstance(obj, (dict, set, frozenset)):
        return 64 * len(obj)
    return 0


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
            raise UnsafePickleError(f"refused to load: array dtype {short_repr(spec)} (only numeric dtypes are "
                                    "rebuilt)")  # fmt: skip
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2:
            raise ValueError(f"unexpected dtype state {short_repr(state)}")
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
        problem = shape_problem(shape) if isinstance(shape, tuple) else "a shape must be a tuple"
        if problem:
            raise ValueError(f"bad array shape: {problem}")
        if isinstance(raw, str):
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise UnsafePickleError("refused to load: an array whose data is not raw bytes (object arrays are "
                                    "not rebuilt)")  # fmt: skip
        count = math.prod(shape)
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
    problem = shape_problem(shape) if isinstance(shape, tuple) else "a shape must be a tuple"
    if problem or order not in ("C", "F"):
        raise ValueError(f"bad array shape or order: {problem or short_repr(order)}")
    return np.frombuffer(buf, dtype=dtype.dtype).reshape(shape, order=order)


def _codecs_encode(text, encoding="utf-8"):
    # protocol 2 pickles carry bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError("refused to load: _codecs.encode other than text -> latin1 bytes")
    return text.encode("latin1")


def _ordered_dict(*args):
    if args and not (len(args) == 1 and isinstance(args[0], (list, tuple, dict))):
        raise UnsafePickleError("refused to load: OrderedDict with unexpected arguments")
    if args and not isinstance(args[0], dict):
        check_pairs(args[0])
    return OrderedDict(*args)


def check_pairs(items) -> None:
    """Refuse ``(key, value)`` items whose keys are not strings, bytes or small integers (see the module
    docstring: the keys a pickle names must hash in time linear in their size)."""
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError("OrderedDict items must be (key, value) pairs")
        RestrictedUnpickler._check_key(item[0])


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


def array_of(obj: Any) -> np.ndarray | None:
    """The array ``obj`` stands for (a PendingArray or an ndarray), else None. It looks at ``obj`` only, never
    into containers: what a pickle builds may share references (see the module docstring)."""
    if isinstance(obj, PendingArray):
        if obj.array is None:
            raise ValueError("an array placeholder never received its data")
        return obj.array
    return obj if isinstance(obj, np.ndarray) else None


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

    @property
    def nbytes(self) -> int:
        return len(self._view)

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
