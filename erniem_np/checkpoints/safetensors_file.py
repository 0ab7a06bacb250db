"""The safetensors format: a validating reader that memory-maps the data, and a streaming writer.

Layout (huggingface/safetensors): an 8-byte little-endian unsigned header length N, N bytes of UTF-8 JSON, then
the data section. The header maps each tensor name to ``{"dtype": "F32", "shape": [...], "data_offsets":
[begin, end]}`` (offsets relative to the data section) and may hold ``"__metadata__": {str: str}``. The format
requires the tensors to tile the data section exactly: no overlap, no gap, nothing after the last one.

Reading parses and checks the header here (the ``safetensors`` package is not used to read), then maps the
file copy-on-write: each tensor is ``np.frombuffer`` over the mapping, so a float32 checkpoint costs no copy and
no resident memory until its pages are touched, and writing into an array never changes the file.
"""

from __future__ import annotations

import json
import mmap
import os
import weakref
from collections.abc import Callable, Mapping

import numpy as np

from ..atomic import atomic_file
from .errors import CheckpointError, clip, short_repr
from .tensors import NUMPY_DTYPES, StoredTensor, float32_to_bfloat16, is_count, shape_problem

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
ROW_READER_MIN_BYTES = 1 << 24  # tables of 16 MB or more are read row by row (StoredTensor.row_reader)
ALIGNMENT = 8  # the writer pads the header so the data section starts 8-byte aligned, as safetensors does

# Format dtype code -> storage dtype name (tensors.NUMPY_DTYPES), and back.
CODES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
_CODE_OF = {v: k for k, v in CODES.items()}

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)


def _fail(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: cannot read safetensors file: {why}")


def read_header(path: str) -> tuple[dict[str, dict], dict[str, str], int, int]:
    """Parse and validate the header: ``(entries, metadata, data_start, file_size)``.

    ``entries[name] = {"dtype": storage dtype name, "shape": tuple, "begin": abs offset, "end": abs offset}``.
    Raises CheckpointError naming the file (and the tensor) for every malformed or truncated header.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _fail(path, f"the file has {size} bytes, fewer than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            raise _fail(path, f"header length {n} exceeds {MAX_HEADER_BYTES} bytes (not a safetensors file?)")
        if 8 + n > size:
            raise _fail(path, f"truncated: the header needs {n} bytes but only {size - 8} follow its length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"the header is not UTF-8 JSON ({e})") from None
    except RecursionError:
        raise _fail(path, "the header's JSON nests too deeply") from None
    except ValueError as e:  # a duplicate name, an integer too long to read
        raise _fail(path, clip(str(e))) from None
    if not isinstance(header, dict):
        raise _fail(path, f"the header is a JSON {type(header).__name__}, not an object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):  # fmt: skip
        raise _fail(path, "__metadata__ must map strings to strings")

    data_start, data_size = 8 + n, size - 8 - n
    entries: dict[str, dict] = {}
    for name, info in header.items():
        where = f"tensor {clip(repr(name), 120)}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"{where}: an entry must hold exactly dtype, shape and data_offsets, got "
                              f"{short_repr(info)}")  # fmt: skip
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in CODES:
            raise _fail(path, f"{where}: unsupported dtype {short_repr(code)} (supported: {', '.join(CODES)})")
        if not isinstance(shape, list) or shape_problem(shape):
            raise _fail(path, f"{where}: shape must be a list of non-negative integers, got {short_repr(shape)} "
                              f"({shape_problem(shape)})")  # fmt: skip
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_count(o) for o in offsets)):
            raise _fail(path, f"{where}: data_offsets must be two non-negative integers, got {short_repr(offsets)}")
        begin, end = offsets
        dtype = CODES[code]
        want = int(np.prod(shape, dtype=object)) * NUMPY_DTYPES[dtype].itemsize
        if end < begin or end - begin != want:
            raise _fail(path, f"{where}: data_offsets {offsets} span {end - begin} bytes, but {code} "
                              f"{tuple(shape)} needs {want}")  # fmt: skip
        entries[name] = {"dtype": dtype, "shape": tuple(shape), "begin": begin, "end": end}

    # The tensors must tile the data section: sorted by offset, each starts where the previous one ended.
    cursor, previous = 0, None
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1]["begin"], kv[1]["end"])):
        if e["begin"] < cursor:
            raise _fail(path, f"tensor {name!r} (bytes {e['begin']}..{e['end']}) overlaps tensor {previous!r}")
        if e["begin"] > cursor:
            raise _fail(path, f"a gap of {e['begin'] - cursor} bytes before tensor {name!r} "
                              "(the format does not allow holes)")  # fmt: skip
        if e["end"] > data_size:
            raise _fail(path, f"truncated: tensor {name!r} needs data bytes {e['begin']}..{e['end']} but the "
                              f"file holds only {data_size} data bytes ({size} bytes in all)")  # fmt: skip
        cursor, previous = e["end"], name
    if cursor != data_size:
        raise _fail(path, f"{data_size - cursor} bytes follow the last tensor (the header does not describe them)")
    for e in entries.values():
        e["begin"] += data_start
        e["end"] += data_start
    return entries, metadata, data_start, size


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"the name {k!r} appears twice in the header")
        d[k] = v
    return d


def read_file(path: str) -> bytearray:
    """The whole file in memory, writable (the ``mmap=False`` path)."""
    buf = bytearray(os.path.getsize(path))
    with open(path, "rb") as f:
        n = f.readinto(buf)
    return buf[:n]


def map_file(path: str) -> mmap.mmap:
    """The whole file mapped copy-on-write (pages are read on first touch; writes stay private)."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


def page_releaser(buf) -> Callable[[np.ndarray], None] | None:
    """A function that tells the kernel the pages of ``buf`` (an mmap) under an array are no longer needed.

    Used after a mapped tensor has been copied (transposed, converted): its pages would otherwise stay
    resident and count twice. The mapping is private and never written, so the pages simply reload from the
    file if touched again. None where madvise is unavailable.
    """
    if not isinstance(buf, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or len(buf) == 0:
        return None
    import ctypes

    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds
    page = mmap.PAGESIZE

    def release(a: np.ndarray) -> None:
        lo, hi = byte_bounds(a)
        start, end = lo - base, hi - base
        if start < 0 or end > len(buf):
            return  # not a view of this mapping
        start, end = -(-start // page) * page, end // page * page  # whole pages inside the array only
        if end > start:
            buf.madvise(mmap.MADV_DONTNEED, start, end - start)

    return release


def release_mapped(a: np.ndarray) -> None:
    """``page_releaser`` for an array that may be a view of a mapped file (``np.frombuffer`` over the mapping,
    then any views of that): its pages are released after a copy of it was made. Other arrays are left as
    they are."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer keeps the buffer it was given as a memoryview
        base = base.obj
    release = page_releaser(base)
    if release is not None:
        release(a)


def array_at(buf, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """A view of ``buf`` (C order) at ``offset`` (StoredTensor.array copies it if it is unaligned)."""
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)


def row_reader(path: str, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> Callable[[np.ndarray], np.ndarray]:
    """``ids -> rows`` of the 2-D C-order array stored at ``offset`` in ``path``, read with ``os.pread``.

    The file stays open (one descriptor, closed when the function is collected), so a file replaced after
    loading (``write_safetensors`` renames over it) is still read as it was when mapped. Each distinct id is
    read once; ids are checked against the row count. Returns a new array ``ids.shape + (row length,)``.
    """
    n_rows, row_len = shape
    row_bytes = row_len * dtype.itemsize
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def read(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        flat = ids.reshape(-1).astype(np.int64, copy=False)
        if flat.size and (flat.min() < 0 or flat.max() >= n_rows):
            raise IndexError(f"{path}: row ids must be in [0, {n_rows}), got {int(flat.min())}..{int(flat.max())}")
        unique, inverse = np.unique(flat, return_inverse=True)
        rows = np.empty((unique.size, row_len), dtype=dtype)
        for i, r in enumerate(unique.tolist()):
            got = os.preadv(fd, [memoryview(rows[i]).cast("B")], offset + r * row_bytes)
            if got != row_bytes:
                raise OSError(f"{path}: short read of row {r} ({got} of {row_bytes} bytes): truncated file?")
        return rows[inverse].reshape(ids.shape + (row_len,))

    weakref.finalize(read, os.close, fd)
    return read


def read_safetensors(path: str, use_mmap: bool = True) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Every tensor of a .safetensors file, lazily (see StoredTensor), and the file's metadata."""
    path = os.fspath(path)
    entries, metadata, _, size = read_header(path)
    buf = map_file(path) if use_mmap and size > 0 else read_file(path)

    def loader(e):
        return lambda: array_at(buf, NUMPY_DTYPES[e["dtype"]], e["shape"], e["begin"])

    def rows(e):  # only for a mapped file's large 2-D tables (the word embeddings), opened on first use
        if not use_mmap or len(e["shape"]) != 2 or e["end"] - e["begin"] < ROW_READER_MIN_BYTES:
            return None
        reader = []

        def read(ids):
            if not reader:
                reader.append(row_reader(path, NUMPY_DTYPES[e["dtype"]], e["shape"], e["begin"]))
            return reader[0](ids)

        return read

    release = page_releaser(buf)
    tensors = {name: StoredTensor(path, name, e["dtype"], e["shape"], loader(e), release=release,
                                  read_rows=rows(e)) for name, e in entries.items()}  # fmt: skip
    return tensors, metadata


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None,
                      dtype: str | None = None, progress: ProgressFn | None = None) -> None:  # fmt: skip
    """Write ``tensors`` as a safetensors file, streaming: one tensor at a time is converted and written.

    ``dtype`` ("float32", "float16" or "bfloat16") converts every floating tensor on the way out (bfloat16
    rounds to nearest even); None keeps each array's dtype. Tensors go in order of decreasing item size, then
    name, so every tensor stays aligned. The file is written beside ``path`` and renamed over it at the end:
    a reader never sees half a file, and a model still mapping the old file keeps its data.
    """
    path = os.fspath(path)
    if dtype is not None and dtype not in ("float32", "float16", "bfloat16", "float64"):
        raise ValueError(f"dtype must be float32, float16, bfloat16 or float64, got {dtype!r}")
    plan = {}  # name -> (array, stored dtype name)
    for name, a in tensors.items():
        a = np.asarray(a)
        stored = dtype if dtype is not None and a.dtype.kind == "f" else a.dtype.name
        if stored not in _CODE_OF:
            raise ValueError(f"{name}: dtype {a.dtype} cannot be stored in safetensors")
        plan[name] = (a, stored)
    order = sorted(plan, key=lambda k: (-NUMPY_DTYPES[plan[k][1]].itemsize, k))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in order:
        a, stored = plan[name]
        nbytes = a.size * NUMPY_DTYPES[stored].itemsize
        header[name] = {"dtype": _CODE_OF[stored], "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-(8 + len(blob)) % ALIGNMENT)
    total = offset

    with atomic_file(path) as f:  # written beside path, renamed over it when complete
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        done = 0
        for name in order:
            a, stored = plan[name]
            if stored == "bfloat16":
                a = float32_to_bfloat16(np.asarray(a, dtype=np.float32))
            flat = np.ascontiguousarray(a, dtype=NUMPY_DTYPES[stored]).reshape(-1).view(np.uint8)
            for start in range(0, flat.size, 1 << 26):  # 64 MiB at a time, for progress on big tensors
                chunk = flat[start : start + (1 << 26)]
                f.write(memoryview(chunk))
                done += chunk.size
                if progress is not None:
                    progress(done, total)


