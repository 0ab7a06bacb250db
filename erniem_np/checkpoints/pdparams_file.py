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

import os

import numpy as np

from .errors import CheckpointError, UnsafePickleError
from .safetensors_file import map_file, page_releaser, read_file
from .tensors import StoredTensor
from .unpickler import NUMPY_GLOBALS, MappedReader, PendingArray, resolve_arrays, unpickle

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
        raise UnsafePickleError(f"refused to load: the pickle asks to eval {expression!r}; only Paddle's "
                                "eval('data', {'data': array}) form of a saved LoDTensor is accepted, and it is "
                                "not evaluated")  # fmt: skip
    return namespace["data"]


PADDLE_GLOBALS = {
    **NUMPY_GLOBALS,
    ("builtins", "tuple"): _tuple,
    ("builtins", "eval"): _eval_data,
}


def read_pdparams(path: str, use_mmap: bool = True) -> dict[str, StoredTensor]:
    """The arrays of a .pdparams file by their structured names (``StructuredToParameterName@@`` dropped)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    buf = map_file(path) if use_mmap else read_file(path)
    obj = resolve_arrays(unpickle(MappedReader(buf), path=path, allowed=PADDLE_GLOBALS))
    release = page_releaser(buf)  # Linear weights are transposed (copied) on load: free their source pages
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a pickled {type(obj).__name__}, not a state dict "
                              "({name: array})")  # fmt: skip
    obj = _join_slices(path, obj)
    tensors = {}
    for key, value in obj.items():
        if key == NAME_TABLE_KEY:
            continue
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # (internal name, ndarray) from paddle.save of a non-state-dict object
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")
        if value.dtype.byteorder == ">":
            value = value.astype(value.dtype.newbyteorder("<"))
        dtype = "bfloat16" if value.dtype == np.uint16 else value.dtype.name  # Paddle writes bf16 as uint16
        tensors[key] = StoredTensor(path, key, dtype, tuple(value.shape), (lambda v=value: v), release=release)
    return tensors


def _join_slices(path: str, obj: dict) -> dict:
    """Undo paddle.save's slicing of big arrays (protocol 2 and 3): ``{key: {"OriginShape", "slices"}}``."""
    info = obj.get(SLICES_KEY)
    if info is None:
        return obj
    obj = {k: v for k, v in obj.items() if k != SLICES_KEY}
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: {SLICES_KEY} is not a dict")
    for key, spec in info.items():
        try:
            parts = [obj.pop(part) for part in spec["slices"]]
            shape = tuple(spec["OriginShape"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: {key} is saved in slices, but slice {e} is missing") from None
        obj[key] = np.concatenate([np.ravel(p) for p in parts]).reshape(shape)
    return obj
