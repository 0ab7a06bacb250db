"""Faults on a run: a worker killed mid-run loses nothing; a killed command continues with --resume.

A local cluster of two worker processes (each under a nanny, which starts a new worker when one dies) serves
the module, with the bundled language-ID model.

- A worker killed (SIGKILL) while it holds chunks: the run completes, every input comes back exactly once and
  in order, and the results equal a run in this process.
- The command killed (SIGKILL, in a subprocess) in the middle of writing ``-o OUT --resume``: OUT is not there,
  ``OUT.partial`` holds complete records only up to the length its state file names (a torn record is added
  after it here, as a kill inside a write would leave), and the same command run again finishes it; OUT then
  equals, byte for byte, the output of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from test_dask_tasks import langid_lines
from test_pipelines import make_checkpoint

from erniem_np.bundled import LANGID_MODEL
from erniem_np.cli import main
from erniem_np.pipelines.chunks import LocalRunner, TaskSpec, chunk_inputs
from erniem_np.pipelines.distributed import DaskRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c:  # fmt: skip
        yield c


def _chunks_held(client) -> dict[str, int]:
    """{worker address: chunks it is running or holds the results of}; waits (up to 5 s) for one to hold any."""
    deadline = time.monotonic() + 5
    while True:
        running, stored = client.processing(), client.has_what()
        held = {w: len(running.get(w, ())) + len(stored.get(w, ())) for w in client.nthreads()}
        if any(held.values()) or time.monotonic() > deadline:
            return held
        time.sleep(0.01)


def test_a_killed_worker_loses_nothing(cluster):
    texts = [t[:40] for t in langid_lines(200)]
    spec = TaskSpec.of("classify", LANGID_MODEL, {"chunk_size": 8, "batch_size": 4}, {"top_k": 3})
    with LocalRunner(spec) as local:
        want = [r for _, results in local.map_chunks(chunk_inputs(texts, 8)) for r in results]
    with distributed.Client(cluster) as client, DaskRunner(spec, client=client, max_in_flight=6) as runner:
        pids = client.run(os.getpid)  # {worker address: pid}
        seen, got, killed = [], [], None
        for n, (chunk, results) in enumerate(runner.map_chunks(chunk_inputs(texts, 8)), 1):
            seen.extend(chunk.items)
            got.extend(results)
            if n == 3:
                held = _chunks_held(client)
                killed = max(held, key=held.get)
                assert held[killed], "the killed worker held chunks"
                os.kill(pids[killed], signal.SIGKILL)
        assert killed not in client.nthreads(), "the killed worker is gone"
    assert seen == texts  # every input exactly once, in order
    assert got == want


def _kill_midway(argv, state_path, at_least):
    """Run the command in a subprocess and SIGKILL it once its state file counts ``at_least`` inputs done."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "erniem_np.cli", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with open(state_path, encoding="utf-8") as f:
                    if json.load(f)["inputs"] >= at_least:
                        break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        assert proc.poll() is None, f"the command ended before it was killed: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("task", ["classify-dask", "encode"])
def test_a_killed_command_resumes(task, cluster, tmp_path, capsys):
    """classify on the cluster, written as JSON Lines; encode in one process, written as .npy."""
    n = 400
    texts = [t[:40] for t in langid_lines(n)]
    path = tmp_path / "in.txt"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    if task == "encode":
        model = make_checkpoint(tmp_path / "base", None, seed=3)
        argv, suffix = ["encode", model, "--pooling", "mean", "--chunk-size", "10"], ".npy"
    else:
        argv = ["classify", LANGID_MODEL, "--top-k", "2", "--chunk-size", "10", "--dask", cluster.scheduler_address]
        suffix = ".jsonl"
    argv += ["-i", str(path), "--quiet"]
    whole, out = tmp_path / f"whole{suffix}", tmp_path / f"out{suffix}"
    assert main([*argv, "-o", str(whole)]) == 0

    partial, state_path = tmp_path / f"out{suffix}.partial", tmp_path / f"out{suffix}.partial.json"
    _kill_midway([*argv, "-o", str(out), "--resume"], state_path, at_least=30)
    state = json.loads(state_path.read_text())
    assert not out.exists() and 30 <= state["inputs"] < n
    done = partial.read_bytes()[: state["bytes"]]
    if suffix == ".jsonl":  # complete records up to the state's length, the first inputs in order
        records = [json.loads(line) for line in done.decode().splitlines()]
        assert len(records) == state["inputs"] and done.endswith(b"\n")
        assert [r["text"] for r in records] == texts[: state["inputs"]]
    with open(partial, "ab") as f:
        f.write(b'{"text": "a torn rec')  # what a kill inside a write leaves after the last complete chunk

    capsys.readouterr()
    assert main([*argv, "-o", str(out), "--resume"]) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists() and not state_path.exists()
    if suffix == ".npy":
        assert np.load(out).shape == (n, 32)


def test_a_full_disk_leaves_complete_chunks_and_resume_checks_its_input(tmp_path, capsys, monkeypatch):
    """ENOSPC in the middle of the third chunk's write: one error line, OUT.partial cut back to two complete
    chunks. --resume refuses other options and another input (one line each), then finishes the output."""
    import errno

    from erniem_np.commands import _common

    texts = [t[:40] for t in langid_lines(30)]
    path = tmp_path / "in.txt"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    argv = ["classify", LANGID_MODEL, "-i", str(path), "--chunk-size", "5", "--quiet"]
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    assert main([*argv, "-o", str(whole)]) == 0
    real_write, calls = _common.JsonLinesFile.write, []

    def write(self, items, results):
        calls.append(len(items))
        if len(calls) == 3:
            self.journal.f.write(b'{"text": "half a rec')
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, items, results)

    monkeypatch.setattr(_common.JsonLinesFile, "write", write)
    capsys.readouterr()
    assert main([*argv, "-o", str(out), "--resume"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setattr(_common.JsonLinesFile, "write", real_write)
    partial = tmp_path / "out.jsonl.partial"
    assert partial.read_bytes() == whole.read_bytes()[: len(partial.read_bytes())]
    assert partial.read_bytes().count(b"\n") == 10 and not out.exists()

    assert main([*argv, "--top-k", "2", "-o", str(out), "--resume"]) == 1
    assert "another task, model or options" in capsys.readouterr().err
    other = tmp_path / "other.txt"
    other.write_text("".join(t + "\n" for t in reversed(texts)), encoding="utf-8")
    assert main([*argv, "-i", str(other), "-o", str(out), "--resume"]) == 1
    assert "differ from those of the run" in capsys.readouterr().err
    assert main([*argv, "-o", str(out), "--resume"]) == 0
    assert out.read_bytes() == whole.read_bytes()
