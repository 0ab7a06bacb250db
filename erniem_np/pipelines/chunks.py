"""Chunks of inputs through a task's pipeline: the unit of work of every command, whichever process runs it.

    spec = TaskSpec.of("classify", "path/to/ckpt", {"batch_size": 32, "chunk_size": 1024}, {"top_k": 2})
    runner = LocalRunner(spec)                   # this process; distributed.DaskRunner(spec, ...) for a cluster
    for chunk, results in runner.map_chunks(chunk_inputs(items, 1024)):
        ...                                      # one result per item of the chunk, in order

A ``TaskSpec`` names a task, a checkpoint path and the pipeline's arguments; it is small and picklable, so a
Dask worker rebuilds the same pipeline from it (once per process, ``pipeline_for``) and runs a chunk exactly as
one process does: the chunk is handed whole to the pipeline's own chunk-level call (``Encoder._encode_chunk``,
``Classifier.iter``, ``Chooser.iter``, ``Tagger.tag``, ``QuestionAnswerer.answer``, ``Extractor.__call__``),
which sorts it by length and batches it. So the results depend on the chunk size and the batch size, never on
which process ran the chunk.

Bad input: when a chunk fails with an input error (ValueError, TypeError, KeyError), the chunk's items are
bisected to the first one that fails alone, and an ``InputError`` names it by where it came from (``FILE:LINE``,
``input line N`` for stdin, ``input N``). Items after the failing one are never reported as done.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import ProgressFn

TASKS = ("encode", "classify", "choose", "tag", "qa", "extract")
INPUT_ERRORS = (ValueError, TypeError, KeyError)


class InputError(ValueError):
    """An input the task cannot take, named by where it came from (``texts.txt:17: ...``)."""


@dataclass(frozen=True)
class TaskSpec:
    """What runs on each chunk: ``task`` (one of TASKS) on the checkpoint at ``model`` (a path every worker can
    read, or a cached hub id), built with ``options`` (the pipeline class's keyword arguments) and called with
    ``call`` (classify's ``top_k`` and ``function_to_apply``; nothing for the other tasks)."""

    task: str
    model: str
    options: dict = field(default_factory=dict)
    call: dict = field(default_factory=dict)

    @classmethod
    def of(cls, task: str, model: str | os.PathLike, options: dict | None = None, call: dict | None = None
           ) -> TaskSpec:  # fmt: skip
        """A spec with local paths made absolute (a worker's working directory is not the client's)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"{task} on chunks takes a checkpoint path (each worker loads its own model), got "
                            f"{type(model).__name__}")  # fmt: skip
        options = dict(options or {})
        tok = options.get("tokenizer")
        if tok is not None:
            if not isinstance(tok, (str, os.PathLike)):
                raise TypeError("tokenizer= must be a directory path here (each worker loads its own)")
            options["tokenizer"] = os.path.abspath(os.fspath(tok))
        if "dtype" in options:
            import numpy as np

            options["dtype"] = np.dtype(options["dtype"]).name
        path = os.fspath(model)
        return cls(task, os.path.abspath(path) if os.path.exists(path) else path, options, dict(call or {}))

    def key(self) -> str:
        """A stable text naming the spec: the worker cache's key, and what a resumed run must match."""
        return json.dumps([self.task, self.model, self.options, self.call], sort_keys=True, default=repr)


@dataclass
class Chunk:
    """Consecutive inputs: ``items`` and, for each, where it came from (for error messages)."""

    items: list
    where: list[str]

    def __len__(self) -> int:
        return len(self.items)


def chunk_inputs(items: Iterable[Any], size: int, start: int = 0) -> Iterator[Chunk]:
    """Chunks of ``size`` inputs. ``items`` are inputs, or ``(where, input)`` pairs from ``numbered``;
    bare inputs are named ``input N`` (counted from ``start`` + 1). Read lazily, one chunk at a time."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    it = iter(items)
    n = start
    while block := list(itertools.islice(it, size)):
        if isinstance(block[0], Numbered):
            yield Chunk([b.item for b in block], [b.where for b in block])
        else:
            yield Chunk(block, [f"input {n + i + 1}" for i in range(len(block))])
        n += len(block)


@dataclass(frozen=True)
class Numbered:
    """An input and where it came from (``texts.txt:17``, ``input line 3`` of stdin, ``argument 2``)."""

    where: str
    item: Any


# ============================================================================================ one process
_PIPELINES: dict[str, Any] = {}  # (in each process) spec key -> the loaded pipeline
_LOCK = threading.Lock()


def build_pipeline(spec: TaskSpec):
    """A new pipeline object for ``spec`` (the task's class, loaded from ``spec.model``)."""
    model, options = spec.model, spec.options
    if spec.task == "encode":
        from .encode import Encoder

        return Encoder(model, **options)
    if spec.task == "classify":
        from .classify import Classifier

        return Classifier(model, **options)
    if spec.task == "choose":
        from .choose import Chooser

        return Chooser(model, **options)
    if spec.task == "tag":
        from .tag import Tagger

        return Tagger(model, **options)
    if spec.task == "qa":
        from .qa import QuestionAnswerer

        return QuestionAnswerer(model, **options)
    from .extract import Extractor

    return Extractor(model, **options)


def pipeline_for(spec: TaskSpec):
    """This process's pipeline for ``spec``, built on first use and kept (threads of a worker share it)."""
    key = spec.key()
    with _LOCK:  # only one thread loads
        pipeline = _PIPELINES.get(key)
        if pipeline is None:
            pipeline = _PIPELINES[key] = build_pipeline(spec)
    return pipeline


def run_items(pipeline, spec: TaskSpec, items: list):
    """One chunk through the pipeline's chunk-level call: a list with one result per item (encode: an [n, H]
    array, or a list of [L_i, H] arrays for pooling "last")."""
    if spec.task == "encode":
        return pipeline._encode_chunk(items)
    if spec.task == "classify":
        return list(pipeline.iter(items, **spec.call))
    if spec.task == "choose":
        return list(pipeline.iter(items))
    if spec.task == "tag":
        return pipeline.tag(items)
    if spec.task == "qa":
        return pipeline.answer(items)
    return pipeline(items)


def run_chunk(spec: TaskSpec, chunk: Chunk, kernel_threads: int | None = None, pipeline=None):
    """``run_items`` on ``pipeline`` (default: this process's cached one for ``spec``); an input error becomes
    an ``InputError`` naming the input. ``kernel_threads``: Numba threads for this call (capped by
    NUMBA_NUM_THREADS)."""
    if kernel_threads is not None:
        import numba

        from ..backend import set_num_threads

        set_num_threads(max(1, min(int(kernel_threads), numba.config.NUMBA_NUM_THREADS)))
    if pipeline is None:
        pipeline = pipeline_for(spec)
    try:
        return run_items(pipeline, spec, chunk.items)
    except INPUT_ERRORS as e:
        raise locate_error(pipeline, spec, chunk, e) from None


def locate_error(pipeline, spec: TaskSpec, chunk: Chunk, error: Exception) -> InputError:
    """The first input of ``chunk`` that fails alone (found by bisection: about twice the chunk's work), as an
    ``InputError`` with its place; if none fails alone, the chunk's range is named."""

    def fails(lo: int, hi: int) -> Exception | None:
        try:
            run_items(pipeline, spec, chunk.items[lo:hi])
        except INPUT_ERRORS as e:
            return e
        return None

    lo, hi, found = 0, len(chunk), error
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (e := fails(lo, mid)) is not None:
            hi, found = mid, e
        elif (e := fails(mid, hi)) is not None:
            lo, found = mid, e
        else:  # only together do they fail
            return InputError(f"{chunk.where[lo]} to {chunk.where[hi - 1]}: {_message(found)}")
    return InputError(f"{chunk.where[lo]}: {_message(found)}")


def _message(e: Exception) -> str:
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


class LocalRunner:
    """Chunks run one after another in this process, on the same code a Dask worker runs."""

    def __init__(self, spec: TaskSpec, kernel_threads: int | None = None):
        self.spec, self.kernel_threads = spec, kernel_threads
        self.pipeline = build_pipeline(spec)  # a wrong path or option fails here, before any input is read

    def map_chunks(self, chunks: Iterable[Chunk], progress: ProgressFn | None = None, what: str = "inputs"
                   ) -> Iterator[tuple[Chunk, Any]]:  # fmt: skip
        """``(chunk, results)`` for each chunk, in order."""
        done = 0
        for chunk in chunks:
            results = run_chunk(self.spec, chunk, self.kernel_threads, self.pipeline)
            done += len(chunk)
            if progress is not None:
                progress(what, done, None)
            yield chunk, results

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
