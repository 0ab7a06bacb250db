"""Faults on a Dask run: a worker killed mid-run loses nothing.

A local cluster of two worker processes (each under a nanny, which starts a new worker when one dies). The
bundled language-ID classifier runs 50 chunks; after the third comes back one worker process gets SIGKILL
while it holds chunks. The run completes, every input comes back exactly once and in order, and the results
equal a run in this process.
"""

from __future__ import annotations

import os
import signal

import pytest

distributed = pytest.importorskip("distributed")

from test_dask_tasks import langid_lines

from erniem_np.bundled import LANGID_MODEL
from erniem_np.pipelines.chunks import LocalRunner, TaskSpec, chunk_inputs
from erniem_np.pipelines.distributed import DaskRunner


def test_a_killed_worker_loses_nothing():
    texts = langid_lines(400)
    spec = TaskSpec.of("classify", LANGID_MODEL, {"chunk_size": 8, "batch_size": 4}, {"top_k": 3})
    with LocalRunner(spec) as local:
        want = [r for _, results in local.map_chunks(chunk_inputs(texts, 8)) for r in results]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, DaskRunner(spec, client=client, max_in_flight=6) as runner:  # fmt: skip
        pids = client.run(os.getpid)  # {worker address: pid}
        seen, got, killed = [], [], None
        for n, (chunk, results) in enumerate(runner.map_chunks(chunk_inputs(texts, 8)), 1):
            seen.extend(chunk.items)
            got.extend(results)
            if n == 3:
                processing = client.processing()  # {worker address: keys it holds to run}
                killed = max(processing, key=lambda w: len(processing[w]))
                assert processing[killed], "the killed worker held chunks"
                os.kill(pids[killed], signal.SIGKILL)
        assert killed not in client.nthreads(), "the killed worker is gone"
    assert seen == texts  # every input exactly once, in order
    assert got == want
