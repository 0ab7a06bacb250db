"""Texts to embeddings, streamed: ``Encoder`` and the .npy / .safetensors writers behind ``erniem-np encode``.

    enc = Encoder("path/to/checkpoint", pooling="mean")
    enc.encode(["Hello world", "北京欢迎你"])          # [N, H] float32
    for block in enc.encode_chunks(lines):           # a generator of any length: one [n, H] block per chunk
        ...
    encode_to_file(enc, lines, "out.npy")             # memory stays flat: rows go to disk chunk by chunk

Poolings (``H`` hidden size, ``L`` tokens of one text including [CLS] and [SEP]):

    pooled   pooler_output: tanh(dense(h[CLS])), what the classification head reads          [H]
    cls      the last hidden state of [CLS]                                                 [H]
    mean     the mean of the last hidden states over the text's tokens, [CLS] and [SEP]
             included, padding excluded (as sentence-transformers' mean pooling)             [H]
    last     the last hidden state of every token (no padding)                               [L, H]

Texts are cut to ``max_length`` tokens (default: what the position table allows, 512 for ErnieM), processed
``chunk_size`` at a time; within a chunk they are sorted by length and batched ``batch_size`` at a time,
each batch padded to its own longest, and the results put back in input order. The attention mask is always
passed, so a text's embedding does not depend on the batch it landed in (to fp32 rounding; see base.py).

Files (``encode_to_file``): the rows are written as each chunk finishes, never held all at once.

    .npy           pooled / cls / mean: one [N, H] array. The header is written with a placeholder row count
                   and rewritten with the final count at the end.
    .safetensors   pooled / cls / mean: tensor "embeddings" [N, H].
                   last: tensor "last_hidden_state" [T, H], every text's tokens one after another (T tokens
                   in all), and "offsets" [N + 1] int64: text i is rows offsets[i]:offsets[i + 1].
                   The header (in a space-padded reserved block, as the format allows) is written at the end.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator

import numpy as np

from ..atomic import check_output_path, commit, discard, open_beside
from ..model import ErnieMModel, ErnieMPreTrainedModel
from .base import ProgressFn, check_texts, iter_chunks, load_model_and_tokenizer, map_bucketed, max_tokens, pad_batch

POOLINGS = ("pooled", "cls", "mean", "last")


class _ErnieMModelNoPooler(ErnieMModel):
    """The encoder without its pooler: for cls / mean / last pooling, and for checkpoints saved without one
    (HF's token-classification and QA heads)."""

    has_pooler = False


class EncodeMethods:
    """``encode``, ``encode_iter`` and calling, over a class's ``encode_chunks(texts, progress)`` (which yields
    one block of embeddings per input chunk) and its ``pooling``, ``dim`` and ``dtype``: shared by ``Encoder``
    and ``distributed.DaskEncoder``."""

    def encode(self, texts: str | Iterable[str], progress: ProgressFn | None = None) -> np.ndarray | list[np.ndarray]:
        """Embeddings of all ``texts``: [N, H] (a single str: [H]); for "last" a list of [L_i, H] arrays."""
        if isinstance(texts, str):
            one = self.encode([texts])
            return one[0]
        blocks = list(self.encode_chunks(texts, progress))
        if self.pooling == "last":
            return [v for block in blocks for v in block]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.dim), dtype=self.dtype)

    def encode_iter(self, texts: Iterable[str]) -> Iterator[np.ndarray]:
        """One embedding per text ([H], or [L_i, H] for "last"), streamed chunk by chunk."""
        for block in self.encode_chunks(texts):
            yield from block

    def __call__(self, texts, progress: ProgressFn | None = None):
        return self.encode(texts, progress)


class Encoder(EncodeMethods):
    """Embeddings of texts from any ErnieM checkpoint (a head, if any, is ignored).

    Args:
        model: a checkpoint path (or hub id in the local cache), or a loaded model of any ErnieM class.
        pooling: "pooled", "cls", "mean" or "last" (module docstring).
        tokenizer: a tokenizer directory or ErnieMTokenizer (default: the checkpoint's directory).
        max_length: truncate texts to this many tokens (default and cap: the position table's limit).
        batch_size: texts per forward pass. chunk_size: texts read from the input before they are sorted by
            length and batched (larger: less padding; memory grows with it).
        normalize: divide each embedding by its L2 norm (not for "last").
        flavor, dtype, backend, checkpoint_options: as ``from_pretrained``.
    """

    def __init__(self, model, *, pooling: str = "pooled", tokenizer=None, max_length: int | None = None,
                 batch_size: int = 32, chunk_size: int = 1024, normalize: bool = False, flavor: str | None = None,
                 dtype=np.float32, backend: str | None = None, **checkpoint_options):  # fmt: skip
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        if normalize and pooling == "last":
            raise ValueError("normalize applies to one vector per text; pooling='last' gives one per token")
        if batch_size < 1 or chunk_size < 1:
            raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
        if isinstance(model, ErnieMPreTrainedModel):
            if pooling == "pooled" and not model.has_pooler:
                raise ValueError(f"pooling='pooled' needs the pooler, and this {type(model).__name__} has none; "
                                 "use pooling='cls' or 'mean'")  # fmt: skip
            model_class = type(model)
        else:
            model_class = ErnieMModel if pooling == "pooled" else _ErnieMModelNoPooler
        try:
            self.model, self.tokenizer = load_model_and_tokenizer(
                model, model_class, task="encode", tokenizer=tokenizer, flavor=flavor, dtype=dtype,
                backend=backend, quiet_unused=True, **checkpoint_options)  # fmt: skip
        except ValueError as e:
            if pooling == "pooled" and "pooler.dense" in str(e):
                raise ValueError(f"{model}: pooling 'pooled' needs the pooler weights and this checkpoint has "
                                 "none (saved from a token-classification or QA model?); use --pooling cls or "
                                 "mean") from None  # fmt: skip
            raise
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.batch_size = int(batch_size)
        self.chunk_size = int(chunk_size)
        self.max_length = max_tokens(self.model, self.tokenizer, max_length)

    @property
    def dim(self) -> int:
        """H, the width of an embedding."""
        return self.model.config.hidden_size

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    # ---------------------------------------------------------------------------------------------- core
    def _embed_batch(self, rows: list[list[int]]) -> list[np.ndarray]:
        """One forward pass over a batch of id lists; one embedding per row, in the order given."""
        ids, mask = pad_batch(rows, self.tokenizer.pad_token_id)  # [B, L] each
        out = self.model.encode(ids, attention_mask=mask)  # always with the mask: padding never attended (base.py)
        x = out.last_hidden_state  # [B, L, H]
        if self.pooling == "pooled":
            v = out.pooler_output  # [B, H]
        elif self.pooling == "cls":
            v = x[:, 0]  # [B, L, H] -> [B, H]
        elif self.pooling == "mean":
            m = mask[:, :, None].astype(x.dtype)  # [B, L, 1]
            v = (x * m).sum(axis=1) / m.sum(axis=1)  # [B, L, H] -> [B, H]
        else:
            return [np.ascontiguousarray(x[i, : len(r)]) for i, r in enumerate(rows)]  # [L_i, H] each
        if self.normalize:  # as torch.nn.functional.normalize: v / max(||v||, 1e-12)
            v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12).astype(v.dtype)
        return list(v)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Unpadded ids of each text, [CLS] text [SEP], cut to max_length."""
        if not texts:
            return []
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def _encode_chunk(self, texts: list[str], on_rows=None) -> np.ndarray | list[np.ndarray]:
        rows = self.tokenize(texts)
        vectors = map_bucketed(rows, self.batch_size, self._embed_batch, on_rows)
        if self.pooling == "last":
            return vectors
        if not vectors:
            return np.zeros((0, self.dim), dtype=self.dtype)
        return np.stack(vectors)  # [N, H]

    # ---------------------------------------------------------------------------------------------- API
    def encode_chunks(self, texts: Iterable[str], progress: ProgressFn | None = None
                      ) -> Iterator[np.ndarray | list[np.ndarray]]:  # fmt: skip
        """One block per ``chunk_size`` texts, in order: [n, H] arrays, or lists of [L_i, H] for "last".
        The input is read lazily, one chunk at a time."""
        done = 0
        for chunk in iter_chunks(check_texts(texts), self.chunk_size):
            on_rows = None if progress is None else (lambda n, base=done: progress("encoding", base + n, None))
            yield self._encode_chunk(chunk, on_rows)
            done += len(chunk)
        if progress is not None and done:
            progress("encoding", done, done)  # the total, known now: marks the end




# ================================================================================================ files
class NpyWriter:
    """An [N, H] .npy file written row block by row block; N is known only at ``close``.

    The header has a fixed size (128 bytes, format 1.0), written first with a placeholder shape and again with
    the final one, so the file is never held in memory."""

    HEADER = 128

    def __init__(self, path: str, dim: int, dtype=np.float32, file=None, rows: int = 0):
        self.path, self.dim, self.dtype = path, int(dim), np.dtype(dtype)
        self.rows = int(rows)
        # renamed over path by close(); abort() removes it. ``file``: (open file, its name), holding ``rows``
        # rows already (a resumed output, see resumable.py)
        self.f, self.tmp = file or open_beside(path)
        self._write_header()

    def _write_header(self) -> None:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.rows, self.dim)}
        text = repr(d).encode("latin1")
        pad = self.HEADER - 10 - len(text) - 1
        if pad < 0:  # pragma: no cover - 128 bytes hold any 20-digit shape
            raise AssertionError("npy header too long")
        self.f.seek(0)
        self.f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", self.HEADER - 10) + text + b" " * pad + b"\n")
        self.f.seek(0, os.SEEK_END)

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"expected rows of width {self.dim}, got shape {block.shape}")
        self.f.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        if not self.f.closed:
            self._write_header()
            self.f.close()
            commit(self.tmp, self.path)

    def abort(self) -> None:
        """Drop what was written; ``path`` stays as it was."""
        self.f.close()
        discard(self.tmp)


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}


class SafetensorsWriter:
    """A .safetensors file of embeddings written as they come; the header goes last into a reserved block.

    Fixed-size poolings: "embeddings" [N, H]. ``ragged=True`` ("last"): "last_hidden_state" [T, H] and
    "offsets" [N + 1] int64 (text i is rows offsets[i]:offsets[i + 1]); the offsets (8 bytes per text) are
    the one thing held in memory until the end."""

    RESERVED = 4096  # header bytes; the JSON is padded with spaces, which the format allows

    def __init__(self, path: str, dim: int, dtype=np.float32, *, ragged: bool = False, metadata=None, file=None,
                 rows: int = 0):  # fmt: skip
        self.path, self.dim, self.dtype, self.ragged = path, int(dim), np.dtype(dtype), ragged
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.rows = int(rows)  # embeddings written (texts)
        self.tokens = 0  # rows of last_hidden_state written
        self.offsets = [0]
        if ragged and rows:
            raise ValueError("a ragged (pooling 'last') .safetensors output cannot be continued")
        # as NpyWriter: renamed over path by close(); ``file``: (open file, its name), ``rows`` rows in it
        self.f, self.tmp = file or open_beside(path)
        if self.f.tell() == 0:
            self.f.write(b"\0" * (8 + self.RESERVED))

    def write(self, block) -> None:
        if self.ragged:
            for v in block:
                v = np.ascontiguousarray(v, dtype=self.dtype)
                if v.ndim != 2 or v.shape[1] != self.dim:
                    raise ValueError(f"expected [tokens, {self.dim}] per text, got shape {v.shape}")
                self.f.write(v.tobytes())
                self.tokens += len(v)
                self.offsets.append(self.tokens)
                self.rows += 1
        else:
            block = np.ascontiguousarray(block, dtype=self.dtype)
            if block.ndim != 2 or block.shape[1] != self.dim:
                raise ValueError(f"expected rows of width {self.dim}, got shape {block.shape}")
            self.f.write(block.tobytes())
            self.rows += len(block)

    def close(self) -> None:
        if self.f.closed:
            return
        item = self.dtype.itemsize
        if self.ragged:
            end = self.tokens * self.dim * item
            offsets = np.asarray(self.offsets, dtype=np.int64)
            self.f.write(offsets.tobytes())
            header = {
                "last_hidden_state": {"dtype": _ST_DTYPES[self.dtype], "shape": [self.tokens, self.dim],
                                      "data_offsets": [0, end]},
                "offsets": {"dtype": "I64", "shape": [len(offsets)], "data_offsets": [end, end + offsets.nbytes]},
            }  # fmt: skip
        else:
            end = self.rows * self.dim * item
            header = {"embeddings": {"dtype": _ST_DTYPES[self.dtype], "shape": [self.rows, self.dim],
                                     "data_offsets": [0, end]}}  # fmt: skip
        if self.metadata:
            header["__metadata__"] = self.metadata
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > self.RESERVED:
            raise ValueError(f"safetensors metadata too long ({len(text)} bytes; at most {self.RESERVED})")
        self.f.seek(0)
        self.f.write(struct.pack("<Q", self.RESERVED) + text + b" " * (self.RESERVED - len(text)))
        self.f.close()
        commit(self.tmp, self.path)

    abort = NpyWriter.abort


def open_writer(path: str, pooling: str, dim: int, dtype=np.float32, metadata=None, file=None, rows: int = 0):
    """The writer for ``path``'s extension; .npy cannot hold "last" (one array per text). ``file``, ``rows``:
    write into this (open file, name) that already holds ``rows`` rows, not a new temporary file."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        if pooling == "last":
            raise ValueError("pooling 'last' gives a different number of rows per text: write a .safetensors "
                             "file (last_hidden_state + offsets), not .npy")  # fmt: skip
        return NpyWriter(path, dim, dtype, file, rows)
    if ext == ".safetensors":
        return SafetensorsWriter(path, dim, dtype, ragged=pooling == "last", metadata=metadata, file=file, rows=rows)
    raise ValueError(f"{path}: the output must end in .npy or .safetensors")


def encode_to_file(encoder, texts: Iterable[str], path: str, progress: ProgressFn | None = None) -> int:
    """Encode ``texts`` into ``path`` (.npy or .safetensors, module docstring) chunk by chunk; returns N.

    ``encoder`` is an ``Encoder`` or a ``distributed.DaskEncoder`` (anything with ``encode_chunks``,
    ``pooling``, ``dim`` and ``dtype``). The file is written beside ``path`` and renamed over it when complete:
    a failure midway leaves ``path`` as it was. A file this process has mapped (a loaded checkpoint) is refused."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{path}: directory {parent} does not exist")
    check_output_path(path, "embeddings")
    writer = open_writer(path, encoder.pooling, encoder.dim, encoder.dtype,
                         metadata={"pooling": encoder.pooling, "format": "np"})  # fmt: skip
    try:
        for block in encoder.encode_chunks(texts, progress):
            writer.write(block)
        writer.close()
    except BaseException:
        writer.abort()  # an interrupted run (an error, Ctrl-C, a full disk) leaves path as it was
        raise
    return writer.rows


def read_embeddings(path: str) -> np.ndarray | list[np.ndarray]:
    """Read a file ``encode_to_file`` wrote: [N, H], or for "last" a list of [L_i, H] arrays."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    from safetensors.numpy import load_file

    d = load_file(path)
    if "embeddings" in d:
        return d["embeddings"]
    x, off = d["last_hidden_state"], d["offsets"]
    return [x[off[i] : off[i + 1]] for i in range(len(off) - 1)]
