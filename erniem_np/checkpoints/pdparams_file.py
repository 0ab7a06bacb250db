"""Paddle ``.pdparams``: a pickle of NumPy arrays, read without Paddle and without running the pickle.

``paddle.save(state_dict, path)`` (protocol 4 by default) turns every tensor into a plain ``numpy.ndarray``
and adds ``"StructuredToParameterName@@": {structured name: internal name}``; PaddleNLP's ``save_pretrained``
writes ``model_state.pdparams`` the same way. ``paddle.save`` of other objects reduces each tensor to a
``(name, ndarray)`` tuple (via ``builtins.tuple``) and each LoDTensor to ``eval('data', {'data': ndarray})``;
both forms are accepted, the second without calling eval. bfloat16 tensors are saved as uint16 arrays.

The file is memory-mapped and read by the restricted unpickler (unpickler.py): a tensor's bytes become a view
of the mapping, so a float32 file costs no copy.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import CheckpointError, UnsafePickleError, short_repr
from .safetensors_file import map_file, page_releaser, read_file
from .tensors import StoredTensor, first_overlap, shape_problem
from .unpickler import NUMPY_GLOBALS, MappedReader, PendingArray, array_of, unpickle

NAME_TABLE_KEY = "StructuredToParameterName@@"
SLICES_KEY = "UnpackBigParamInfor@@"  # protocol 2/3 saves split arrays over 2**30 bytes into key@@.0, key@@.1 ...


def _tuple(items=()):
    # Paddle's reduce of a Tensor: (tuple, ((name, ndarray),)) -> (name, ndarray)
    if not isinstance(items, (tuple, list)):
        raise UnsafePickleError("refused to load: builtins.tuple of something other than a tuple or list")
    return tuple(items)


def _eval_data(expression, namespace=None, *_):
    # Paddle's reduce of a LoDTensor: (eval, ('data', {'data': ndarray})). Never evaluated: only that exact form
    # is recognised, and it returns the array.
    if expression != "data" or not isinstance(namespace, dict) or set(namespace) != {"data"} \
            or not isinstance(namespace["data"], (PendingArray, np.ndarray)):  # fmt: skip
        raise UnsafePickleError(f"refused to load: the pickle asks to eval {short_repr(expression)}; only Paddle's "
                                "eval('data', {'data': array}) form of a saved LoDTensor is accepted, and it is "
                                "not evaluated")  # fmt: skip
    return namespace["data"]


PADDLE_GLOBALS = {
    **NUMPY_GLOBALS,
    ("builtins", "tuple"): _tuple,
    ("builtins", "eval"): _eval_data,
}


def read_pdparams(path: str, use_mmap: bool = True) -> dict[str, StoredTensor]:
    """The arrays of a .pdparams file by their structured names (``StructuredToParameterName@@`` dropped).

    Only the entries of the top-level dict are looked at (never walked into: see unpickler.py). Two entries
    may not share their bytes, and arrays saved in slices are checked whole here and joined only when read.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    buf = map_file(path) if use_mmap else read_file(path)
    obj = unpickle(MappedReader(buf), path=path, allowed=PADDLE_GLOBALS)
    release = page_releaser(buf)  # Linear weights are transposed (copied) on load: free their source pages
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a pickled {type(obj).__name__}, not a state dict "
                              "({name: array})")  # fmt: skip
    arrays: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if key in (NAME_TABLE_KEY, SLICES_KEY):
            continue
        a = array_of(value)
        if a is None and isinstance(value, tuple) and len(value) == 2:
            a = array_of(value[1])  # (internal name, ndarray) from paddle.save of a non-state-dict object
        if not isinstance(key, str) or a is None:
            raise CheckpointError(f"{path}: entry {short_repr(key)} is a {type(value).__name__}, not an array")
        arrays[key] = a
    _refuse_shared_bytes(path, arrays)
    sliced, parts = _slices(path, obj.get(SLICES_KEY), arrays)

    tensors = {}
    for key, value in arrays.items():
        if key not in parts:
            tensors[key] = StoredTensor(path, key, _dtype_name(value), tuple(value.shape), _loader(value),
                                        release=release)  # fmt: skip
    for key, (pieces, shape) in sliced.items():
        tensors[key] = StoredTensor(path, key, _dtype_name(pieces[0]), shape, _joiner(pieces, shape))
    return tensors


def _dtype_name(a: np.ndarray) -> str:
    native = a.dtype.newbyteorder("<")
    return "bfloat16" if native == np.dtype("<u2") else native.name  # Paddle writes bfloat16 as uint16


def _loader(a: np.ndarray):
    if a.dtype.byteorder == ">":  # converted when read, not now: listing a checkpoint copies nothing
        return lambda: a.astype(a.dtype.newbyteorder("<"))
    return lambda: a


def _joiner(pieces: list[np.ndarray], shape: tuple[int, ...]):
    def join():
        a = np.concatenate([np.ravel(p) for p in pieces]).reshape(shape)
        return a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a

    return join


def _refuse_shared_bytes(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Each array must hold its own bytes: two entries sharing them (one array under two names, or views of one
    buffer) would let a small file stand for many times its size."""
    byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds
    spans = [(*byte_bounds(a), key) for key, a in arrays.items() if a.size]
    shared = first_overlap(spans)
    if shared:
        raise CheckpointError(f"{path}: entries {shared[0]!r} and {shared[1]!r} share their data (one array "
                              "saved under two names, or overlapping views); each tensor must hold its own "
                              "bytes")  # fmt: skip


def _slices(path: str, info, arrays: dict[str, np.ndarray]):
    """Paddle's slicing of big arrays (protocol 2 and 3 saves): ``{key: {"OriginShape", "slices"}}``, checked.
    Returns ``({key: (pieces, shape)}, names of the slice entries)``."""
    sliced: dict[str, tuple[list[np.ndarray], tuple[int, ...]]] = {}
    used: set[str] = set()
    if info is None:
        return sliced, used
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: {SLICES_KEY} is not a dict")
    for key, spec in info.items():
        names = spec.get("slices") if isinstance(spec, dict) else None
        shape = spec.get("OriginShape") if isinstance(spec, dict) else None
        if not isinstance(key, str) or not isinstance(names, (list, tuple)) or not names \
                or not isinstance(shape, (list, tuple)):  # fmt: skip
            raise CheckpointError(f"{path}: {SLICES_KEY} entry {short_repr(key)} must hold a non-empty list "
                                  "'slices' and a shape 'OriginShape'")  # fmt: skip
        problem = shape_problem(shape)
        if problem:
            raise CheckpointError(f"{path}: {key} is saved in slices with OriginShape {short_repr(shape)}: {problem}")
        if key in arrays or key in sliced:
            raise CheckpointError(f"{path}: {key} is saved both whole and in slices")
        pieces = []
        for name in names:
            if not isinstance(name, str) or name not in arrays:
                raise CheckpointError(f"{path}: {key} is saved in slices, but slice {short_repr(name)} is missing")
            if name in used:
                raise CheckpointError(f"{path}: the slice {name!r} is used twice in {SLICES_KEY}")
            used.add(name)
            pieces.append(arrays[name])
        if len({p.dtype for p in pieces}) != 1:
            raise CheckpointError(f"{path}: the slices of {key} differ in dtype")
        held, needed = sum(p.size for p in pieces), math.prod(shape)
        if held != needed:
            raise CheckpointError(f"{path}: the slices of {key} hold {held} elements, its OriginShape "
                                  f"{tuple(shape)} needs {needed}")  # fmt: skip
        sliced[key] = (pieces, tuple(shape))
    return sliced, used
