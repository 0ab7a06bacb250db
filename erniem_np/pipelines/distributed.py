"""Scale-out of ``Encoder`` over a Dask cluster (``dask.distributed``): ``DaskEncoder``.

    with DaskEncoder("path/to/checkpoint", pooling="mean") as enc:                 # a local cluster
        vectors = enc.encode(texts)
    with DaskEncoder("/shared/ckpt", address="tcp://scheduler:8786") as enc:       # an existing cluster
        encode_to_file(enc, open("big.txt"), "out.npy")

How it runs: the input is cut into chunks of ``chunk_size`` texts on the client, read lazily; each chunk is a
Dask task. A worker loads the model once (a per-process cache keyed by the checkpoint path and the options)
and encodes its chunk exactly as a single-process ``Encoder`` does (same tokenizer call, same length
bucketing inside the chunk, same batches); at most ``max_in_flight`` chunks are out at a time, and results
come back in input order, so the client's memory stays flat on an input of any size.

Same results as one process: with the same ``chunk_size`` and ``batch_size`` every forward pass has the same
inputs, so the embeddings are the ones ``Encoder`` computes for the same chunks (tests/test_dask.py compares
them with ``np.array_equal``).

The checkpoint path must be readable at the same path on every worker (a shared file system, or the same
directory copied to each machine), and erniem-np installed there: workers load the model themselves; only
texts and embeddings travel over the network. Needs ``pip install "erniem-np[dask]"``.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .base import ProgressFn, check_texts, iter_chunks
from .encode import EncodeMethods, Encoder

_ENCODERS: dict[tuple, Encoder] = {}  # on each worker process: (path, options) -> the loaded Encoder
_LOCK = threading.Lock()


def _options_key(path: str, options: dict[str, Any]) -> tuple:
    return (path, tuple(sorted((k, repr(v)) for k, v in options.items())))


def worker_encoder(path: str, options: dict[str, Any]) -> Encoder:
    """The Encoder of this worker process for ``(path, options)``, loaded on first use and kept."""
    key = _options_key(path, options)
    with _LOCK:  # threads of one worker share the cache; only one loads
        enc = _ENCODERS.get(key)
        if enc is None:
            enc = _ENCODERS[key] = Encoder(path, **options)
    return enc


def encode_chunk_task(path: str, options: dict[str, Any], texts: list[str], kernel_threads: int | None = None):
    """The Dask task: one chunk through the worker's cached Encoder ([n, H], or a list of [L_i, H]).
    ``kernel_threads``: Numba threads for this task (a per-thread setting, capped by NUMBA_NUM_THREADS)."""
    if kernel_threads is not None:
        import numba

        from ..backend import set_num_threads

        set_num_threads(max(1, min(int(kernel_threads), numba.config.NUMBA_NUM_THREADS)))
    return worker_encoder(path, options)._encode_chunk(texts)


class DaskEncoder(EncodeMethods):
    """``Encoder``'s interface (``encode``, ``encode_chunks``, ``encode_iter``) running on a Dask cluster.

    Args:
        model: a checkpoint path (readable on every worker) or a cached hub id. Not a loaded model: workers
            load their own.
        address: a scheduler address ("tcp://host:8786"); None: start a local cluster.
        client: an existing ``distributed.Client`` (overrides ``address``).
        n_workers, threads_per_worker, processes: the local cluster's shape (default: one single-threaded
            worker process per core).
        max_in_flight: chunks submitted and not yet collected (default: 2 per worker thread).
        kernel_threads: Numba threads per task. Default: for the local cluster, the cores divided among its
            worker threads (so workers do not oversubscribe the machine); on a given cluster, Numba's default
            (every core of the worker's machine).
        encoder_options: ``Encoder``'s keyword arguments (pooling, tokenizer as a path, max_length, batch_size,
            chunk_size, normalize, flavor, dtype, backend).

    Use it as a context manager (or call ``close``): a cluster or client it started is shut down.
    """

    def __init__(self, model: str | os.PathLike, *, address: str | None = None, client=None,
                 n_workers: int | None = None, threads_per_worker: int = 1, processes: bool = True,
                 max_in_flight: int | None = None, kernel_threads: int | None = None,
                 **encoder_options):  # fmt: skip
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("DaskEncoder takes a checkpoint path (each worker loads its own model), got "
                            f"{type(model).__name__}")  # fmt: skip
        tok = encoder_options.get("tokenizer")
        if tok is not None and not isinstance(tok, (str, os.PathLike)):
            raise TypeError("DaskEncoder takes tokenizer= as a directory path (workers load their own)")
        path = os.fspath(model)
        self.path = os.path.abspath(path) if os.path.exists(path) else path
        if tok is not None:
            encoder_options["tokenizer"] = os.path.abspath(os.fspath(tok))
        if "dtype" in encoder_options:
            encoder_options["dtype"] = np.dtype(encoder_options["dtype"]).name
        self.options = encoder_options
        # Check everything here, before any cluster starts: a wrong path, a missing tokenizer or pooler is
        # the user's error on the client. Weights are memory-mapped, so this costs little.
        self._local = Encoder(self.path, **encoder_options)
        self.pooling, self.dim, self.dtype = self._local.pooling, self._local.dim, self._local.dtype
        self.chunk_size = self._local.chunk_size

        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ImportError('Dask is not installed: pip install "erniem-np[dask]" (dask[distributed])') from None
        self._own_client = self._own_cluster = None
        if client is None:
            if address is None:
                n = n_workers or os.cpu_count() or 1
                self._own_cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                                                 processes=processes, dashboard_address=None)  # fmt: skip
                client = self._own_client = Client(self._own_cluster)
                if kernel_threads is None:
                    kernel_threads = max(1, (os.cpu_count() or 1) // (n * threads_per_worker))
            else:
                client = self._own_client = Client(address)
        self.client = client
        self.kernel_threads = kernel_threads
        if max_in_flight is None:
            threads = sum(client.nthreads().values()) or 1
            max_in_flight = 2 * threads
        self.max_in_flight = max(1, int(max_in_flight))

    def encode_chunks(self, texts: Iterable[str], progress: ProgressFn | None = None
                      ) -> Iterator[np.ndarray | list[np.ndarray]]:  # fmt: skip
        """One block per ``chunk_size`` texts, in input order, computed on the cluster."""
        pending: deque = deque()
        done = 0
        chunks = iter_chunks(check_texts(texts), self.chunk_size)
        for chunk in chunks:
            future = self.client.submit(encode_chunk_task, self.path, self.options, chunk, self.kernel_threads,
                                        pure=False)  # fmt: skip
            pending.append((len(chunk), future))
            if len(pending) >= self.max_in_flight:
                n, fut = pending.popleft()
                yield fut.result()
                done += n
                if progress is not None:
                    progress("encoding", done, None)
        while pending:
            n, fut = pending.popleft()
            yield fut.result()
            done += n
            if progress is not None:
                progress("encoding", done, None)
        if progress is not None and done:
            progress("encoding", done, done)

    def close(self) -> None:
        """Shut down the client and local cluster this object started (an outside client stays open)."""
        if self._own_client is not None:
            self._own_client.close()
            self._own_client = None
        if self._own_cluster is not None:
            self._own_cluster.close()
            self._own_cluster = None

    def __enter__(self) -> DaskEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
