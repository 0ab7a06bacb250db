"""Encoding on a Dask cluster (erniem_np/pipelines/distributed.py) gives what one process gives, bit for bit.

Local clusters only (no network): one of threads in this process, one of a worker process started and shut
down by DaskEncoder itself, and the command line against a scheduler address.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from test_pipelines import make_checkpoint

from erniem_np.cli import main
from erniem_np.pipelines.distributed import DaskEncoder
from erniem_np.pipelines.encode import Encoder

TEXTS = [f"text number {i}: " + "word " * (i % 11) + "北京" * (i % 3) for i in range(150)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("dask") / "seq", "seq_cls")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as c:  # fmt: skip
        yield c


def _children():
    """Child processes, except multiprocessing's resource tracker (one per interpreter, lives until exit)."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_dask_equals_one_process(ckpt, cluster, pooling):
    """Two workers, chunks of 16 texts, at most 3 chunks out at a time: the same arrays, in input order."""
    options = {"pooling": pooling, "chunk_size": 16, "batch_size": 4}
    want = Encoder(ckpt, **options).encode(TEXTS)
    with distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as stream, DaskEncoder(ckpt, client=client, max_in_flight=3,
                                                                         **options) as enc:  # fmt: skip
            got = enc.encode(iter(TEXTS))
        assert client.status == "running"  # an outside client is left open
    tasks = [t for t in stream.data if "encode_chunk" in t["key"]]
    assert len(tasks) == 10 and len({t["worker"] for t in tasks}) == 2  # 150 texts / 16 per chunk, both workers
    if pooling == "last":
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    else:
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_dask_local_worker_processes_shut_down(ckpt):
    """DaskEncoder's own local cluster (one worker process): same numbers, and no process left after close."""
    before = {p.pid for p in _children()}
    with DaskEncoder(ckpt, pooling="cls", chunk_size=40, n_workers=1) as enc:
        assert len(enc.client.nthreads()) == 1
        got = enc.encode(TEXTS)
    assert np.array_equal(got, Encoder(ckpt, pooling="cls", chunk_size=40).encode(TEXTS))
    deadline = time.monotonic() + 10
    while {p.pid for p in _children()} - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not {p.pid for p in _children()} - before, "worker processes left behind"


def test_cli_encode_on_a_scheduler_address(ckpt, cluster, tmp_path, capsys):
    out = str(tmp_path / "e.npy")
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    code = main(["encode", ckpt, "-i", str(data), "-o", out, "--pooling", "mean", "--chunk-size", "32",
                 "--dask", cluster.scheduler_address, "--json", "-q"])  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)["texts"] == len(TEXTS)
    assert np.array_equal(np.load(out), Encoder(ckpt, pooling="mean", chunk_size=32).encode(TEXTS))


def test_cli_unreachable_scheduler_is_one_line(ckpt, capsys):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        code = main(["encode", ckpt, "hi", "--dask", "tcp://127.0.0.1:9", "-q"])
    err = capsys.readouterr().err
    assert (
        code == 1 and err.startswith("erniem-np: error: cannot connect to the Dask scheduler") and err.count("\n") == 1
    )


def test_dask_encoder_takes_paths_only(ckpt):
    with pytest.raises(TypeError, match="checkpoint path"):
        DaskEncoder(Encoder(ckpt).model)
