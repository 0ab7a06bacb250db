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

What the pickle declares is checked against what the file holds before any tensor is read: every storage
against the bytes of its zip member (or of its legacy record), every tensor view against its storage (inside
it, no stride 0, no element reached twice), tensors against each other (no two share storage elements) and
zip members against each other (no two share bytes of the file). A compressed member must declare exactly its
storage's size, no more than deflate can produce from its compressed bytes, and is inflated as it is read, at
most that size. A member's CRC-32 is checked the first time its storage is read (about 0.4 s per GB once the
file is in the page cache; listing a checkpoint reads no storage and so checks none).
"""

from __future__ import annotations

import collections
import io
import itertools
import math
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np

from .errors import CheckpointError, UnsafePickleError, clip, short_repr
from .safetensors_file import map_file, page_releaser, read_file
from .tensors import MAX_NDIM, NUMPY_DTYPES, StoredTensor, first_overlap, is_count, shape_problem
from .unpickler import MappedReader, check_pairs, unpickle

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

MAX_PICKLE_BYTES = 256 << 20  # a state dict's data.pkl holds names and geometry only: a few KB per tensor
MAX_DEFLATE_RATIO = 1032  # deflate cannot expand its input by more than this (RFC 1951: 258 bytes per 2 bits)
CHUNK = 16 << 20  # bytes inflated or checksummed at a time

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

    def extent(self) -> tuple[str | None, int]:
        """``(problem, span)``: why this view cannot be read (None if it can), and how many storage elements
        from its offset it covers. A view may not leave its storage, repeat an element (stride 0 in a
        dimension of size > 1, a broadcast), or reach one element by two indices (overlapping strides)."""
        if math.prod(self.size) == 0:
            return None, 0
        span = 1  # elements from the offset covered by the dimensions so far, smallest stride first
        for s, n in sorted((s, n) for n, s in zip(self.size, self.stride) if n > 1):
            if s == 0:
                return (f"has stride 0 in a dimension of size {n} (size {self.size}, stride {self.stride}): a "
                        "broadcast view, one stored element standing for many"), 0  # fmt: skip
            if s < span:
                return f"has strides {self.stride} for size {self.size}: its elements overlap", 0
            span += (n - 1) * s
        if self.offset + span > self.storage.numel:
            return (f"is a view (offset {self.offset}, size {self.size}, stride {self.stride}) that reaches past "
                    f"its storage of {self.storage.numel} elements"), 0  # fmt: skip
        return None, span

    def array(self) -> np.ndarray:
        flat = self.storage.data()
        count = math.prod(self.size)
        contiguous = tuple(math.prod(self.size[i + 1 :]) for i in range(len(self.size)))
        if count == 0:
            return np.zeros(self.size, flat.dtype)
        problem, span = self.extent()
        if problem or self.offset + span > flat.size:
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
    counts = lambda t: isinstance(t, (tuple, list)) and len(t) <= MAX_NDIM and all(is_count(x) for x in t)
    if not is_count(offset) or not counts(size) or not counts(stride) or len(size) != len(stride) \
            or shape_problem(size):  # fmt: skip
        raise ValueError(f"bad tensor geometry: offset {short_repr(offset)}, size {short_repr(size)}, stride "
                         f"{short_repr(stride)} (each must be integers in [0, 2**62], size and stride of one "
                         "length)")  # fmt: skip
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
    if args and not isinstance(args[0], dict):
        check_pairs(args[0])
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
            raise UnsafePickleError(f"{path}: refused to load: unexpected persistent id {short_repr(pid)}")
        stype, key, _location, numel = pid[1:5]
        if not isinstance(stype, StorageType) or not isinstance(key, str) or not is_count(numel):
            raise UnsafePickleError(f"{path}: refused to load: malformed storage id {short_repr(pid)}")
        root = storages.setdefault(key, Storage(key, stype.dtype, numel))
        if (root.dtype, root.numel) != (stype.dtype, numel):
            raise ValueError(f"storage {clip(key, 60)} is declared as {root.numel} {root.dtype} and as {numel} "
                             f"{stype.dtype}")  # fmt: skip
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        # legacy storage views share their root's bytes
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str) and is_count(view[1])
                and is_count(view[2])):  # fmt: skip
            raise UnsafePickleError(f"{path}: refused to load: malformed storage view {short_repr(view)}")
        view_key, offset, view_size = view
        return Storage(view_key, stype.dtype, view_size, offset, root)

    return persistent_load


def _state_dict(path: str, obj, release=None) -> dict[str, StoredTensor]:
    """The tensors of the unpickled state dict, each view checked against its storage and the others."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a pickled {type(obj).__name__}, not a state dict ({{name: tensor}})")
    tensors = {}
    spans: dict[int, list[tuple[int, int, str]]] = {}  # root storage -> element ranges its tensors cover
    for key, ref in obj.items():
        if not isinstance(ref, TensorRef):
            keys = ", ".join(clip(str(k), 60) for k in itertools.islice(ref, 5)) if isinstance(ref, dict) else ""
            what = f"a dict (keys: {keys})" if isinstance(ref, dict) else type(ref).__name__
            raise CheckpointError(f"{path}: entry {short_repr(key)} is {what}, not a tensor; a state dict maps "
                                  "names to tensors (a training checkpoint keeps it under a key such as "
                                  "'state_dict')")  # fmt: skip
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: a tensor is named by a {type(key).__name__}, not a string")
        problem, span = ref.extent()
        root = ref.storage.root or ref.storage
        if ref.storage.root is not None and ref.storage.offset + ref.storage.numel > root.numel:
            problem = (f"uses a storage view (offset {ref.storage.offset}, {ref.storage.numel} elements) that "
                       f"reaches past its storage of {root.numel} elements")  # fmt: skip
        if problem:
            raise CheckpointError(f"{path}: tensor {clip(repr(key), 120)} {problem}")
        start = (ref.storage.offset if ref.storage.root is not None else 0) + ref.offset
        spans.setdefault(id(root), []).append((start, start + span, key))
        tensors[key] = StoredTensor(path, key, ref.storage.dtype, ref.size, ref.array, release=release)
    for group in spans.values():
        shared = first_overlap(group)
        if shared:
            raise CheckpointError(f"{path}: tensors {shared[0]!r} and {shared[1]!r} share elements of one "
                                  "storage (tied or overlapping views); each tensor must have its own")  # fmt: skip
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
    file_size = os.path.getsize(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as e:
        raise CheckpointError(f"{path}: not a readable zip archive ({e}); the file may be truncated") from None
    with zf:
        infolist = zf.infolist()
        infos = {i.filename: i for i in infolist}
        if len(infos) != len(infolist):
            twice = next(n for n, c in collections.Counter(i.filename for i in infolist).items() if c > 1)
            raise CheckpointError(f"{path}: the archive holds two members named {clip(twice, 100)}")
        pickles = [n for n in infos if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: a torch zip holds exactly one */data.pkl, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in infos:
            raw = _read_member(path, zf, infos[prefix + "byteorder"], limit=16)
            byteorder = raw.decode("ascii", "replace").strip()
        data_pkl = _read_member(path, zf, infos[pickles[0]], limit=MAX_PICKLE_BYTES)
    if byteorder not in ("little", "big"):
        raise CheckpointError(f"{path}: unknown byteorder {byteorder!r}")
    storages: dict[str, Storage] = {}
    obj = unpickle(io.BytesIO(data_pkl), path=f"{path} ({pickles[0]})", allowed=TORCH_GLOBALS,
                   persistent_load=_storage_handler(path, storages))  # fmt: skip

    members = {}  # storage key -> (ZipInfo, start of its data in the file)
    with open(path, "rb") as f:
        spans = [(*_member_span(path, f, infos[pickles[0]], file_size), pickles[0])]
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            info = infos.get(member)
            if info is None:
                raise CheckpointError(f"{path}: storage {clip(member, 100)} is missing from the archive "
                                      "(truncated file?)")  # fmt: skip
            itemsize = NUMPY_DTYPES[storage.dtype].itemsize
            need = storage.numel * itemsize
            if info.file_size < need:
                raise CheckpointError(f"{path}: storage {member} has {info.file_size} bytes, its tensors need {need}")
            if info.compress_type != zipfile.ZIP_STORED and info.file_size != need:
                raise CheckpointError(f"{path}: storage {member} is compressed and declares {info.file_size} bytes "
                                      f"inflated, but its storage holds {need}: refused before inflating")  # fmt: skip
            start, end = _member_span(path, f, info, file_size)
            spans.append((start, end, member))
            members[key] = (info, start)
    shared = first_overlap(spans)
    if shared:
        raise CheckpointError(f"{path}: the zip members {shared[0]} and {shared[1]} share bytes of the file "
                              "(one stored data block standing for two)")  # fmt: skip

    buf = None
    if use_mmap and any(info.compress_type == zipfile.ZIP_STORED for info, _ in members.values()):
        buf = map_file(path)
    for key, storage in storages.items():
        info, start = members[key]
        dtype = NUMPY_DTYPES[storage.dtype].newbyteorder("<" if byteorder == "little" else ">")
        storage._fetch = _zip_member_fetch(path, buf, info, start, dtype, storage.numel)
    return _state_dict(path, obj, page_releaser(buf) if buf is not None else None)


def _member_span(path: str, f, info: zipfile.ZipInfo, file_size: int) -> tuple[int, int]:
    """``(start, end)`` of the member's data in the file, from its local header; its compression and sizes
    checked (stored, or deflated by at most what deflate can produce)."""
    name = clip(info.filename, 100)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"{path}: {name} uses zip compression method {info.compress_type}; only stored "
                              "and deflated members are read (torch stores them uncompressed)")  # fmt: skip
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{path}: {name} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise CheckpointError(f"{path}: {name} is stored uncompressed but declares {info.compress_size} bytes "
                              f"in the file and {info.file_size} bytes of data")  # fmt: skip
    if info.file_size > info.compress_size * MAX_DEFLATE_RATIO + 64:
        raise CheckpointError(f"{path}: {name} declares {info.file_size} bytes inflated from {info.compress_size}: "
                              "more than deflate can produce (a forged size)")  # fmt: skip
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: bad local header for {name}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.compress_size > file_size:
        raise CheckpointError(f"{path}: truncated: {name} runs past the end of the file")
    return start, start + info.compress_size


def _read_member(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A small member (data.pkl, byteorder) whole, its size bounded and its CRC-32 checked by zipfile."""
    name = clip(info.filename, 100)
    if info.file_size > limit:
        raise CheckpointError(f"{path}: {name} declares {info.file_size} bytes, more than the {limit} such a member "
                              "may have")  # fmt: skip
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"{path}: {name} uses zip compression method {info.compress_type}; only stored "
                              "and deflated members are read (torch stores them uncompressed)")  # fmt: skip
    try:
        with zf.open(info) as m:
            data = m.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read {name}: {clip(str(e))}") from None
    if len(data) != info.file_size:
        raise CheckpointError(f"{path}: {name} holds {len(data)} bytes, its header says {info.file_size}")
    return data


def _zip_member_fetch(path, buf, info: zipfile.ZipInfo, start: int, dtype: np.dtype, numel: int):
    """``() -> 1-D array`` of a storage: a view of the mapping for a stored member, else inflated (or read)
    into a new array of the storage's size. The member's CRC-32 is checked on the first call."""
    checked = []

    if buf is not None and info.compress_type == zipfile.ZIP_STORED:

        def fetch():
            if not checked:
                _check_crc(path, info, start)
                checked.append(True)
            return _native(np.frombuffer(buf, dtype=dtype, count=numel, offset=start))

        return fetch

    def read():
        out = np.empty(numel, dtype)
        view = memoryview(out).cast("B")
        name = clip(info.filename, 100)
        try:
            with zipfile.ZipFile(path) as zf, zf.open(info.filename) as m:
                done = 0
                while done < info.file_size:  # the whole member, so that zipfile checks its CRC-32 at the end
                    chunk = m.read(min(CHUNK, info.file_size - done))
                    if not chunk:
                        break
                    if done < len(view):
                        view[done : done + min(len(chunk), len(view) - done)] = chunk[: len(view) - done]
                    done += len(chunk)
                m.read(1)  # at the end: zipfile compares the CRC-32 here if it has not yet
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path}: {name} is corrupt: {clip(str(e))}") from None
        except (zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
            raise CheckpointError(f"{path}: cannot read {name}: {clip(str(e))}") from None
        if done != info.file_size:
            raise CheckpointError(f"{path}: truncated: {name} holds {done} bytes, its header says {info.file_size}")
        return _native(out)

    return read


def _check_crc(path: str, info: zipfile.ZipInfo, start: int) -> None:
    """Compare the CRC-32 of a stored member's bytes with the archive's record. Read with pread into one
    buffer, not through the mapping: checking adds no resident memory."""
    crc, done = 0, 0
    chunk = bytearray(min(CHUNK, info.file_size))
    with open(path, "rb") as f:
        fd = f.fileno()
        while done < info.file_size:
            view = memoryview(chunk)[: min(len(chunk), info.file_size - done)]
            n = os.preadv(fd, [view], start + done)
            if n <= 0:
                raise CheckpointError(f"{path}: truncated: {clip(info.filename, 100)} runs past the end of the file")
            crc = zlib.crc32(view[:n], crc)
            done += n
    if crc != info.CRC:
        raise CheckpointError(f"{path}: {clip(info.filename, 100)} is corrupt: its CRC-32 is {crc:08x}, the archive "
                              f"records {info.CRC:08x}")  # fmt: skip


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
        raise CheckpointError(f"{path}: unsupported legacy torch protocol {short_repr(protocol)}")
    sys_info = unpickle(reader, path=path, allowed={})
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    storages: dict[str, Storage] = {}
    obj = unpickle(reader, path=path, allowed=TORCH_GLOBALS, persistent_load=_storage_handler(path, storages))
    keys = unpickle(reader, path=path, allowed={})
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys) \
            or set(keys) != set(storages):  # fmt: skip
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
