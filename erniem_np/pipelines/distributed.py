"""Every task on a Dask cluster (``dask.distributed``): ``DaskRunner``, and ``DaskEncoder`` on top of it.

    spec = TaskSpec.of("tag", "/shared/ner-ckpt", {"batch_size": 8})
    with DaskRunner(spec, address="tcp://scheduler:8786") as runner:            # None: a local cluster
        for chunk, results in runner.map_chunks(chunk_inputs(texts, 64)):
            ...                                                                 # in input order
    with DaskEncoder("path/to/checkpoint", pooling="mean") as enc:              # Encoder's interface
        vectors = enc.encode(texts)

How it runs: the input is cut into chunks on the client, read lazily; each chunk is a Dask task
(``chunks.run_chunk``). A worker loads the pipeline once (a per-process cache keyed by the ``TaskSpec``) and
runs the chunk exactly as one process does, so with the same chunk and batch sizes the results are the ones a
single-process run gives (tests/test_dask.py and tests/test_dask_tasks.py compare them exactly). At most
``max_in_flight`` chunks are out at a time and results come back in input order, so the client's memory stays
flat on an input of any size.

A lost worker loses nothing: the client holds a future for every chunk not yet collected, so the scheduler
recomputes on another worker whatever a dead worker was running or holding. A poison chunk, one whose workers
die again and again (more often than the scheduler's ``distributed.scheduler.allowed-failures``, 3 by
default), is failed by the scheduler (``KilledWorker``): the chunks before it are delivered, then an
``InputError`` names its inputs. A bad input fails its chunk with an ``InputError`` naming the input's line,
and the chunks before it are delivered, as in one process; chunks still out after it are cancelled. An input
the client cannot read (an error while reading the next chunk) likewise ends the run after the chunks read
before it.

Kernel threads: each worker process runs its kernels with ``cores // threads``, where ``cores`` is the number
of cores its machine lets it use and ``threads`` the sum of the worker threads of all worker processes on that
machine (grouped by host name, asked of the workers when the runner starts), at least 1. So two
single-threaded workers on a 2-core machine get 1 kernel thread each; one single-threaded worker alone on an
8-core machine gets 8. A worker that joins later on an unknown host takes ``cores // its own threads``.
``kernel_threads=N`` overrides the rule; NUMBA_NUM_THREADS in a worker's environment caps it.

The checkpoint path must be readable at the same path on every worker (a shared file system, or the same
directory copied to each machine), and erniem-np installed there: workers load the model themselves; only
inputs and results travel over the network. Needs ``pip install "erniem-np[dask]"``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .base import ProgressFn, check_texts
from .chunks import Chunk, InputError, TaskSpec, build_pipeline, chunk_inputs, run_chunk
from .encode import EncodeMethods


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _host_and_cores() -> tuple[str, int]:
    return socket.gethostname(), usable_cores()


def kernel_thread_plan(client) -> dict[str, int]:
    """Kernel threads per host name: the host's usable cores divided by the worker threads on it (at least 1)."""
    info = client.run(_host_and_cores)  # {worker address: (host, cores)}
    nthreads = client.nthreads()  # {worker address: threads}
    cores: dict[str, int] = {}
    threads: dict[str, int] = {}
    for address, (host, n) in info.items():
        cores[host] = max(cores.get(host, 1), int(n))
        threads[host] = threads.get(host, 0) + int(nthreads.get(address, 1))
    return {host: max(1, cores[host] // max(1, threads[host])) for host in cores}


def _worker_kernel_threads(plan: dict[str, int] | int | None) -> int | None:
    """On a worker: its kernel threads under ``plan`` (see the module docstring)."""
    if plan is None or isinstance(plan, int):
        return plan
    share = plan.get(socket.gethostname())
    if share is None:  # a host that joined after the plan was made: assume this worker is alone there
        from distributed import get_worker

        share = max(1, usable_cores() // max(1, get_worker().state.nthreads))
    return share


@contextlib.contextmanager
def _log_level(level: int | str) -> Iterator[None]:
    """Within the block, distributed's log handlers in this process print messages of ``level`` and above."""
    handlers = [h for h in logging.getLogger("distributed").handlers if isinstance(h, logging.StreamHandler)]
    before = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(level)
    try:
        yield
    finally:
        for h, old in zip(handlers, before, strict=True):
            h.setLevel(old)


def run_chunk_task(spec: TaskSpec, chunk: Chunk, plan: dict[str, int] | int | None = None):
    """The Dask task: ``chunks.run_chunk`` with this worker's kernel threads."""
    return run_chunk(spec, chunk, _worker_kernel_threads(plan))


class DaskRunner:
    """Chunks of a ``TaskSpec`` run on a Dask cluster, collected in input order.

    Args:
        spec: the task, checkpoint path (readable on every worker) and options.
        address: a scheduler address ("tcp://host:8786"); None: start a local cluster.
        client: an existing ``distributed.Client`` (overrides ``address``).
        n_workers, threads_per_worker, processes: the local cluster's shape (default: one single-threaded
            worker process per usable core).
        max_in_flight: chunks submitted and not yet collected (default: 2 per worker thread).
        kernel_threads: Numba threads per task (default: the per-host rule of the module docstring).
        silence_logs: while the runner is open, distributed's log messages below this level are not printed in
            this process (the client's; a local cluster's scheduler and nannies), nor by the worker processes
            of a local cluster it starts (LocalCluster's ``silence_logs``, whose default this is); None: as
            configured. The command line passes ``logging.CRITICAL``: what matters reaches it as an exception
            (a lost worker's chunks are run again, a poison chunk fails the run).

    The pipeline is built once on the client first, so a wrong path or option fails there, before a cluster
    starts (weights are memory-mapped: this costs little). Use it as a context manager (or call ``close``): a
    cluster or client it started is shut down.
    """

    def __init__(self, spec: TaskSpec, *, address: str | None = None, client=None, n_workers: int | None = None,
                 threads_per_worker: int = 1, processes: bool = True, max_in_flight: int | None = None,
                 kernel_threads: int | None = None, silence_logs: int | str = logging.WARNING):  # fmt: skip
        self.spec = spec
        self.pipeline = build_pipeline(spec)  # checks the checkpoint and options here
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ImportError('Dask is not installed: pip install "erniem-np[dask]" (dask[distributed])') from None
        self._own_client = self._own_cluster = None
        self._logs = contextlib.ExitStack()
        try:
            if silence_logs:
                self._logs.enter_context(_log_level(silence_logs))
            if client is None and address is None:
                self._own_cluster = LocalCluster(n_workers=n_workers or usable_cores(),
                                                 threads_per_worker=threads_per_worker, processes=processes,
                                                 dashboard_address=":0",  # 8787 may be taken
                                                 silence_logs=silence_logs)  # fmt: skip
                client = self._own_client = Client(self._own_cluster)
            elif client is None:
                try:
                    client = self._own_client = Client(address)
                except OSError as e:
                    raise OSError(f"cannot connect to the Dask scheduler at {address}: {e}") from None
            self.client = client
            self.plan: dict[str, int] | int = (
                kernel_threads if kernel_threads is not None else kernel_thread_plan(client))
            if max_in_flight is None:
                max_in_flight = 2 * (sum(client.nthreads().values()) or 1)
            self.max_in_flight = max(1, int(max_in_flight))
        except BaseException:
            self.close()
            raise

    def map_chunks(self, chunks: Iterable[Chunk], progress: ProgressFn | None = None, what: str = "inputs"
                   ) -> Iterator[tuple[Chunk, Any]]:  # fmt: skip
        """``(chunk, results)`` for each chunk, in input order, computed on the cluster."""
        from distributed import KilledWorker

        pending: deque = deque()
        done = 0

        def collect():
            nonlocal done
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except KilledWorker as e:  # the scheduler's own allowed-failures, not this process's config
                allowed = e.allowed_failures
                raise InputError(f"{chunk.where[0]} to {chunk.where[-1]}: {allowed + 1} workers died running this "
                                 f"chunk (more than distributed.scheduler.allowed-failures, {allowed}); an input "
                                 "there may be too large for a worker's memory") from None  # fmt: skip
            done += len(chunk)
            if progress is not None:
                progress(what, done, None)
            return chunk, results

        chunks = iter(chunks)
        try:
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except Exception:  # a bad input read on the client: the inputs before it are still delivered
                    while pending:
                        yield collect()
                    raise
                key = f"{self.spec.task}_chunk-{uuid.uuid4().hex}"  # "encode_chunk-...", in the dashboard too
                future = self.client.submit(run_chunk_task, self.spec, chunk, self.plan, key=key)
                pending.append((chunk, future))
                if len(pending) >= self.max_in_flight:
                    yield collect()
            while pending:
                yield collect()
        finally:  # an error, or the caller stopped early: nothing keeps running for nobody
            if pending:
                self.client.cancel([f for _, f in pending])

    def close(self) -> None:
        """Shut down the client and local cluster this object started (an outside client stays open), and
        give distributed's log handlers their levels back."""
        if self._own_client is not None:
            self._own_client.close()
            self._own_client = None
        if self._own_cluster is not None:
            self._own_cluster.close()
            self._own_cluster = None
        self._logs.close()

    def __enter__(self) -> DaskRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DaskEncoder(DaskRunner, EncodeMethods):
    """``Encoder``'s interface (``encode``, ``encode_chunks``, ``encode_iter``) running on a Dask cluster.

    Args:
        model: a checkpoint path (readable on every worker) or a cached hub id. Not a loaded model: workers
            load their own.
        address, client, n_workers, threads_per_worker, processes, max_in_flight, kernel_threads: as
            ``DaskRunner``.
        encoder_options: ``Encoder``'s keyword arguments (pooling, tokenizer as a path, max_length, batch_size,
            chunk_size, normalize, flavor, dtype, backend).
    """

    def __init__(self, model: str | os.PathLike, *, address: str | None = None, client=None,
                 n_workers: int | None = None, threads_per_worker: int = 1, processes: bool = True,
                 max_in_flight: int | None = None, kernel_threads: int | None = None,
                 **encoder_options):  # fmt: skip
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("DaskEncoder takes a checkpoint path (each worker loads its own model), got "
                            f"{type(model).__name__}")  # fmt: skip
        super().__init__(TaskSpec.of("encode", model, encoder_options), address=address, client=client,
                         n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                         max_in_flight=max_in_flight, kernel_threads=kernel_threads)  # fmt: skip
        self.path, self.options = self.spec.model, self.spec.options
        self.pooling, self.dim, self.dtype = self.pipeline.pooling, self.pipeline.dim, self.pipeline.dtype
        self.chunk_size = self.pipeline.chunk_size

    def encode_chunks(self, texts: Iterable[str], progress: ProgressFn | None = None
                      ) -> Iterator[np.ndarray | list[np.ndarray]]:  # fmt: skip
        """One block per ``chunk_size`` texts, in input order, computed on the cluster."""
        done = 0
        for _, block in self.map_chunks(chunk_inputs(check_texts(texts), self.chunk_size), progress, "encoding"):
            done += len(block)
            yield block
        if progress is not None and done:
            progress("encoding", done, done)
