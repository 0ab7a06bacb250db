"""PyTorch ``pytorch_model.bin`` (``torch.save`` of a state dict), read without torch and without running it.

Two layouts:

* zip (torch >= 1.6, what ``save_pretrained(safe_serialization=False)`` writes): ``<stem>/data.pkl`` is a
  pickle whose tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``, each
  storage a persistent id ``('storage', torch.FloatStorage, key, location, numel)`` whose bytes are the zip
  member ``<stem>/data/<key>``. torch stores members uncompressed (and 64-byte aligned), so each storage is a
  view of the memory-mapped file; a compressed member is read into memory instead.
* legacy (``_use_new_zipfile_serialization=False``): consecutive pickles (magic number, protocol 1001, sys
  info, the object, the list of storage keys) followed by each storage as an 8-byte element count and its
  bytes, in the order of that list.

The pickles go through the restricted unpickler: the only globals are the storage types (dtype tokens here),
the tensor/parameter rebuild functions (re-implemented here over NumPy) and ``collections.OrderedDict``.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from .errors import CheckpointError, UnsafePickleError
from .safetensors_file import map_file, page_releaser, read_file
from .tensors import NUMPY_DTYPES, StoredTensor
from .unpickler import MappedReader, unpickle

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> storage dtype name
STORAGE_TYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}  # fmt: skip


class StorageType:
    """Stands for ``torch.<Name>Storage``: only a dtype."""

    def __init__(self, dtype: str):
        self.dtype = dtype


class Storage:
    """A torch storage: ``numel`` elements of ``dtype``; ``data()`` gives them as a 1-D array."""

    def __init__(self, key: str, dtype: str, numel: int, offset: int = 0, root: Storage | None = None):
        self.key, self.dtype, self.numel, self.offset, self.root = key, dtype, numel, offset, root
        self._fetch = None  # set by the reader: () -> 1-D array of the root storage

    def data(self) -> np.ndarray:
        if self.root is not None:  # a legacy storage view
            return self.root.data()[self.offset : self.offset + self.numel]
        return self._fetch()


class TensorRef:
    """A tensor as the pickle describes it: a strided view of a storage."""

    def __init__(self, storage: Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        flat = self.storage.data()
        count = int(np.prod(self.size, dtype=np.int64))
        contiguous = tuple(int(np.prod(self.size[i + 1 :], dtype=np.int64)) for i in range(len(self.size)))
        if count == 0:
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= flat.size or min(self.stride, default=0) < 0:
            raise ValueError(f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride}) "
                             f"reaches past its storage of {flat.size} elements")  # fmt: skip
        if all(n == 1 or s == c for n, s, c in zip(self.size, self.stride, contiguous)):
            return flat[self.offset : self.offset + count].reshape(self.size)
        item = flat.itemsize
        return np.lib.stride_tricks.as_strided(flat[self.offset :], self.size, [s * item for s in self.stride],
                                               writeable=False)  # fmt: skip


def _check_tensor_args(storage, offset, size, stride):
    if not isinstance(storage, Storage):
        raise UnsafePickleError("refused to load: a tensor rebuilt from something other than a storage")
    ints = lambda t: isinstance(t, (tuple, list)) and all(isinstance(x, int) for x in t)
    if not isinstance(offset, int) or not ints(size) or not ints(stride) or len(size) != len(stride):
        raise ValueError(f"bad tensor geometry: offset {offset!r}, size {size!r}, stride {stride!r}")
    return TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):  # fmt: skip
    return _check_tensor_args(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _check_tensor_args(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, TensorRef):
        raise UnsafePickleError("refused to load: a parameter rebuilt from something other than a tensor")
    return data


def _ordered_dict(*args):
    if args and not (len(args) == 1 and isinstance(args[0], (list, tuple, dict))):
        raise UnsafePickleError("refused to load: OrderedDict with unexpected arguments")
    return OrderedDict(*args)


TORCH_GLOBALS: dict[tuple[str, str], Any] = {("torch", name): StorageType(dt) for name, dt in STORAGE_TYPES.items()}
TORCH_GLOBALS.update({
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
})  # fmt: skip


def _storage_handler(path: str, storages: dict[str, Storage]):
    """persistent_load for both layouts: ('storage', type, key, location, numel[, view_metadata])."""

    def persistent_load(pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsafePickleError(f"{path}: refused to load: unexpected persistent id {pid!r}")
        stype, key, _location, numel = pid[1:5]
        if not isinstance(stype, StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise UnsafePickleError(f"{path}: refused to load: malformed storage id {pid!r}")
        root = storages.setdefault(key, Storage(key, stype.dtype, numel))
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        view_key, offset, view_size = view  # legacy storage views share their root's bytes
        return Storage(view_key, stype.dtype, view_size, offset, root)

    return persistent_load


def _state_dict(path: str, obj, release=None) -> dict[str, StoredTensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a pickled {type(obj).__name__}, not a state dict ({{name: tensor}})")
    tensors = {}
    for key, ref in obj.items():
        if not isinstance(ref, TensorRef):
            what = f"a dict (keys: {', '.join(map(str, list(ref)[:5]))})" if isinstance(ref, dict) else \
                type(ref).__name__  # fmt: skip
            raise CheckpointError(f"{path}: entry {key!r} is {what}, not a tensor; a state dict maps names to "
                                  "tensors (a training checkpoint keeps it under a key such as 'state_dict')")
        tensors[key] = StoredTensor(path, key, ref.storage.dtype, ref.size, ref.array, release=release)
    return tensors


def read_torch(path: str, use_mmap: bool = True) -> dict[str, StoredTensor]:
    """The tensors of a ``torch.save`` file (zip or legacy layout) by name."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK":
        return _read_zip(path, use_mmap)
    if magic[:1] == b"\x80":
        return _read_legacy(path, use_mmap)
    if not magic:
        raise CheckpointError(f"{path}: the file is empty")
    raise CheckpointError(f"{path}: not a torch.save file (neither a zip archive nor a pickle; very old "
                          "tar-format torch files are not supported)")  # fmt: skip


def _read_zip(path: str, use_mmap: bool) -> dict[str, StoredTensor]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: not a readable zip archive ({e}); the file may be truncated") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        pickles = [n for n in infos if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: a torch zip holds exactly one */data.pkl, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in infos else "little"
        data_pkl = zf.read(pickles[0])
    if byteorder not in ("little", "big"):
        raise CheckpointError(f"{path}: unknown byteorder {byteorder!r}")
    storages: dict[str, Storage] = {}
    obj = unpickle(io.BytesIO(data_pkl), path=f"{path} ({pickles[0]})", allowed=TORCH_GLOBALS,
                   persistent_load=_storage_handler(path, storages))  # fmt: skip

    buf = None
    if use_mmap and any(infos.get(f"{prefix}data/{k}", zipfile.ZipInfo()).compress_type == zipfile.ZIP_STORED
                        for k in storages):  # fmt: skip
        buf = map_file(path)
    for key, storage in storages.items():
        member = f"{prefix}data/{key}"
        info = infos.get(member)
        if info is None:
            raise CheckpointError(f"{path}: storage {member} is missing from the archive (truncated file?)")
        dtype = NUMPY_DTYPES[storage.dtype].newbyteorder("<" if byteorder == "little" else ">")
        need = storage.numel * dtype.itemsize
        if info.file_size < need:
            raise CheckpointError(f"{path}: storage {member} has {info.file_size} bytes, its tensors need {need}")
        storage._fetch = _zip_member_fetch(path, buf, info, dtype, storage.numel)
    return _state_dict(path, obj, page_releaser(buf) if buf is not None else None)


def _zip_member_fetch(path, buf, info: zipfile.ZipInfo, dtype: np.dtype, numel: int):
    if buf is not None and info.compress_type == zipfile.ZIP_STORED:
        header = bytes(buf[info.header_offset : info.header_offset + 30])
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{path}: bad local header for {info.filename}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + numel * dtype.itemsize > len(buf):
            raise CheckpointError(f"{path}: truncated: {info.filename} runs past the end of the file")

        def fetch():
            return _native(np.frombuffer(buf, dtype=dtype, count=numel, offset=start))

        return fetch

    def read():
        with zipfile.ZipFile(path) as zf:
            raw = zf.read(info.filename)
        return _native(np.frombuffer(raw, dtype=dtype, count=numel).copy())

    return read


def _native(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a


def _read_legacy(path: str, use_mmap: bool) -> dict[str, StoredTensor]:
    buf = map_file(path) if use_mmap else read_file(path)
    reader = MappedReader(buf)
    magic = unpickle(reader, path=path, allowed={})
    if magic != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: a pickle, but not a torch.save file (no torch magic number)")
    protocol = unpickle(reader, path=path, allowed={})
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: unsupported legacy torch protocol {protocol!r}")
    sys_info = unpickle(reader, path=path, allowed={})
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    storages: dict[str, Storage] = {}
    obj = unpickle(reader, path=path, allowed=TORCH_GLOBALS, persistent_load=_storage_handler(path, storages))
    keys = unpickle(reader, path=path, allowed={})
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise CheckpointError(f"{path}: the storage key list does not match the storages the tensors use")
    offset = reader.tell()
    for key in keys:
        storage = storages[key]
        dtype = NUMPY_DTYPES[storage.dtype].newbyteorder("<" if little else ">")
        if offset + 8 > len(buf):
            raise CheckpointError(f"{path}: truncated: storage {key} starts past the end of the file")
        numel = int.from_bytes(bytes(buf[offset : offset + 8]), "little" if little else "big")
        start, offset = offset + 8, offset + 8 + numel * dtype.itemsize
        if numel != storage.numel or offset > len(buf):
            raise CheckpointError(f"{path}: truncated or corrupt: storage {key} should hold {storage.numel} "
                                  f"elements, the file has {numel} (ending at byte {offset} of {len(buf)})")

        def fetch(start=start, dtype=dtype, numel=numel):
            return _native(np.frombuffer(buf, dtype=dtype, count=numel, offset=start))

        storage._fetch = fetch
    return _state_dict(path, obj, page_releaser(buf))
