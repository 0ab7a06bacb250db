"""StoredTensor: one tensor of a checkpoint file, described without reading it.

Every reader returns ``{name: StoredTensor}``. A StoredTensor knows its file, its name there, its storage dtype
and shape, and how to produce its data: for memory-mapped files that is a view of the mapping, so listing a
checkpoint (``erniem-np inspect``) or loading a float32 one reads no weight bytes until they are used.

The name map (names.py) may mark a tensor ``transposed`` (Paddle stores Linear weights [in, out]); the data is
then returned as a transposed view, and ``shape`` is the shape after the transpose.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from .errors import short_repr

# Storage dtype names, as torch and the safetensors format spell them.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
NUMPY_DTYPES = {
    "float64": np.dtype("<f8"), "float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # NumPy has no bfloat16: the raw bits are read as uint16 and widened (below)
    "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2"), "int8": np.dtype("i1"),
    "uint64": np.dtype("<u8"), "uint32": np.dtype("<u4"), "uint16": np.dtype("<u2"), "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}  # fmt: skip


# Bounds on what a file may declare. Every count (a dimension, an element count, an offset, a stride) must lie
# in [0, MAX_COUNT], so that sizes computed from it fit NumPy's int64; the readers then check each tensor
# against the bytes its file holds, which bounds what loading it can allocate.
MAX_COUNT = 1 << 62
MAX_NDIM = 32


def is_count(x) -> bool:
    """A non-negative int (not a bool) no larger than MAX_COUNT."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_COUNT


def shape_problem(shape) -> str | None:
    """Why ``shape`` (a tuple or list) cannot be a tensor's shape, or None if it can."""
    if not isinstance(shape, (tuple, list)):
        return f"a shape must be a sequence of integers, got a {type(shape).__name__}"
    if len(shape) > MAX_NDIM:
        return f"a shape has at most {MAX_NDIM} dimensions, got {len(shape)}"
    for d in shape:
        if not is_count(d):
            return f"every dimension must be an integer in [0, 2**62], got {short_repr(d)}"
    if math.prod(d or 1 for d in shape) > MAX_COUNT // 8:  # NumPy refuses such a shape even with a 0 in it
        return f"the shape {tuple(shape)} is too large for any array"
    return None


def first_overlap(spans: Iterable[tuple[int, int, str]]) -> tuple[str, str] | None:
    """The names of two of ``(start, end, name)`` byte or element ranges (end exclusive) that overlap, or None.
    Empty ranges overlap nothing."""
    previous_end, previous = None, None
    for start, end, name in sorted((s for s in spans if s[1] > s[0]), key=lambda s: (s[0], s[1])):
        if previous_end is not None and start < previous_end:
            return previous, name
        if previous_end is None or end > previous_end:
            previous_end, previous = end, name
    return None


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: widen the uint16 bit patterns by << 16 (exact, no rounding)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even as torch does; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


@dataclass(frozen=True)
class StoredTensor:
    file: str  # the file holding the data
    key: str  # the tensor's name in that file
    dtype: str  # storage dtype name (NUMPY_DTYPES)
    shape: tuple[int, ...]  # shape as returned by array() (after any transpose)
    load: Callable[[], np.ndarray]  # the stored array: a view of the file's mapping where possible
    transposed: bool = False
    release: Callable[[np.ndarray], None] | None = None  # drop a mapped source's pages once copied
    read_rows: Callable[[np.ndarray], np.ndarray] | None = None  # rows of the stored 2-D array, by pread

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * NUMPY_DTYPES[self.dtype].itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def transpose(self) -> StoredTensor:
        if len(self.shape) != 2:
            raise ValueError(f"{self.file}: {self.key} has shape {self.shape}; only 2-D weights are transposed")
        return replace(self, shape=self.shape[::-1], transposed=not self.transposed)

    def row_reader(self, dtype=np.float32) -> Callable[[np.ndarray], np.ndarray] | None:
        """A function ``ids -> array[ids]`` that reads just those rows from the file (``os.pread``), or None
        where the stored rows are not the rows of ``array(dtype)`` as they are (a transpose, a dtype change).

        For the word-embedding table: a lookup through the memory mapping makes the kernel map whole
        page-cache folios (measured on Linux 6.18/ext4: about 1.7 MB per random row of a 768 MB table, so a
        few hundred tokens made the whole table resident); reading the rows copies 3 KB per token instead.
        """
        if self.read_rows is None or self.transposed or len(self.shape) != 2:
            return None
        if self.dtype == "bfloat16" or NUMPY_DTYPES[self.dtype] != np.dtype(dtype).newbyteorder("<"):
            return None
        return self.read_rows

    def array(self, dtype=None) -> np.ndarray:
        """The data as a C-contiguous, aligned array, floating types converted to ``dtype``.

        float32 data stored contiguously stays a view of the mapped file (no copy, no resident memory until
        used). Anything that must be copied (a transpose, a dtype change, an unaligned or strided source) is
        copied once, and the source's pages of the mapping are then released, so the copy is not paid twice.
        """
        source = self.load()
        a = bfloat16_to_float32(source) if self.dtype == "bfloat16" else source
        if dtype is not None and self.is_float and a.dtype != np.dtype(dtype):
            a = a.astype(dtype)
        if self.transposed:
            a = a.T
        if not (a.flags.c_contiguous and a.flags.aligned):
            a = np.array(a, order="C", copy=True)
        if a is not source and self.release is not None and not np.may_share_memory(a, source):
            self.release(source)
        return a


class RowReadTable:
    """A 2-D table whose ``table[ids]`` (an integer array of ids) reads just those rows from the checkpoint
    file with ``read_rows`` (``StoredTensor.row_reader``) instead of indexing the memory mapping; every other
    use (``np.asarray(table)``, slicing, ``shape``) sees the mapped array itself. The model's word-embedding
    lookup indexes it as it would the array: the same numbers, read without mapping MB-sized page-cache
    folios per token."""

    def __init__(self, array: np.ndarray, read_rows: Callable[[np.ndarray], np.ndarray]):
        self.array = array
        self.read_rows = read_rows

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: self.array.ndim)
    size = property(lambda self: self.array.size)

    def __len__(self) -> int:
        return len(self.array)

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype, copy=False)

    def __getitem__(self, key):
        if isinstance(key, np.ndarray) and np.issubdtype(key.dtype, np.integer):
            return self.read_rows(key)  # [...] ids -> [..., H]
        return self.array[key]
