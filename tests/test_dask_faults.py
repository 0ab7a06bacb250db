"""Faults on a run, for every task: a worker killed mid-run loses nothing; a killed command continues with
--resume; a chunk that kills every worker it runs on stops the run with one line, its output resumable.

A local cluster of two worker processes (each under a nanny, which starts a new worker when one dies) serves
the module (conftest.py's ``dask_cluster``); the commands, inputs and models are tests/dask_cases.py's. Each
result is compared with the same command run in this process without Dask.

- A worker killed (SIGKILL) while it runs a chunk: the run completes, every input comes back exactly once and
  in order, and the results equal the run in one process.
- The command killed (SIGKILL, in a subprocess) in the middle of writing ``-o OUT --resume``: OUT is not there,
  ``OUT.partial`` holds complete results only up to the length its state file names (a torn record is added
  after it here, as a kill inside a write would leave), and the same command run again finishes it; OUT then
  equals, byte for byte, the output of the run in one process.
- A poison chunk (one whose input kills the worker process running it, here by a test-only Dask task): after
  Dask gives up on it (``distributed.scheduler.allowed-failures``) the command exits 1 with one line on its
  stderr naming the chunk's input lines; ``OUT.partial`` holds the chunks before it, and ``--resume``
  continues there.
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

from dask_cases import POISON, TASKS, case, langid_lines, run_chunk_dying_once, write_inputs

from erniem_np.bundled import LANGID_MODEL
from erniem_np.cli import main
from erniem_np.pipelines import distributed as dask_runner
from erniem_np.pipelines.chunks import LocalRunner
from erniem_np.pipelines.encode import NpyWriter, SafetensorsWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = {".npy": NpyWriter.HEADER, ".safetensors": 8 + SafetensorsWriter.RESERVED, ".jsonl": 0}


def _inputs_file(tmp_path, c) -> str:
    path = tmp_path / f"in{c.suffix}"
    write_inputs(path, c.inputs)
    return str(path)


def _recording(monkeypatch, runner, seen: list) -> None:
    """Make ``runner.map_chunks`` add the items of each chunk it delivers to ``seen``."""
    real = runner.map_chunks

    def map_chunks(self, chunks, *args, **kwargs):
        for chunk, results in real(self, chunks, *args, **kwargs):
            seen.extend(chunk.items)
            yield chunk, results

    monkeypatch.setattr(runner, "map_chunks", map_chunks)


@pytest.mark.parametrize("task", TASKS)
def test_a_killed_worker_loses_nothing(task, task_ckpts, dask_cluster, tmp_path, capsys, monkeypatch):
    """The worker that runs the third chunk SIGKILLs itself (a test-only task function, dask_cases.py), while
    the other worker runs another chunk and either may hold finished ones: its nanny starts a new worker, and the
    command's output equals the one-process run's; the chunks came back whole and in order."""
    c = case(task, task_ckpts)
    path = _inputs_file(tmp_path, c)
    argv = [*c.argv, "-i", path, "--json", "--quiet"]
    in_one, on_dask = [], []
    _recording(monkeypatch, LocalRunner, in_one)
    assert main(argv) == 0
    one = json.loads(capsys.readouterr().out)

    _recording(monkeypatch, dask_runner.DaskRunner, on_dask)
    monkeypatch.setattr(dask_runner, "run_chunk_task", run_chunk_dying_once)
    with distributed.Client(dask_cluster) as client:
        client.wait_for_workers(2, timeout=60)  # the one a test before this killed has come back
        pids = set(client.run(os.getpid).values())
        assert main([*argv, "--dask", dask_cluster.scheduler_address]) == 0
        assert os.path.exists(f"{path}.killed") and len(pids - set(client.run(os.getpid).values())) == 1
    assert len(in_one) == len(c.inputs) and on_dask == in_one  # every input exactly once, in order
    assert json.loads(capsys.readouterr().out) == one


# The command as `python -m erniem_np.cli` runs it, but each chunk's commit waits 0.1 s, so that a kill lands
# in the middle of the run however fast the machine is (and most often between a chunk's write and its commit).
SLOW_COMMITS = """import sys, time
from erniem_np.pipelines.resumable import ChunkJournal
commit = ChunkJournal.commit
def slow_commit(self, items):
    time.sleep(0.1)
    commit(self, items)
ChunkJournal.commit = slow_commit
from erniem_np.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_midway(argv, state_path, at_least):
    """Run the command in a subprocess and SIGKILL it once its state file counts ``at_least`` inputs done."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COMMITS, *argv], cwd=ROOT, env=env,
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


RESUMED = [(task, ".jsonl", True) for task in TASKS if task != "encode"]
RESUMED += [("encode", ".safetensors", True), ("encode", ".npy", False)]


@pytest.mark.parametrize(("task", "suffix", "on_dask"), RESUMED,
                         ids=[f"{t}{s}{'-dask' if d else ''}" for t, s, d in RESUMED])  # fmt: skip
def test_a_killed_command_resumes(task, suffix, on_dask, task_ckpts, dask_cluster, tmp_path, capsys):
    """Killed once a quarter of the inputs are done, then resumed (on the cluster, or for encode .npy in one
    process): the output equals the one-process run's byte for byte."""
    c = case(task, task_ckpts)
    n = len(c.inputs)
    argv = [*c.argv, "-i", _inputs_file(tmp_path, c), "--quiet"]
    whole, out = tmp_path / f"whole{suffix}", tmp_path / f"out{suffix}"
    assert main([*argv, "-o", str(whole)]) == 0
    if on_dask:
        argv += ["--dask", dask_cluster.scheduler_address]

    partial, state_path = tmp_path / f"out{suffix}.partial", tmp_path / f"out{suffix}.partial.json"
    _kill_midway([*argv, "-o", str(out), "--resume"], state_path, at_least=n // 4)
    state = json.loads(state_path.read_text())
    assert not out.exists() and n // 4 <= state["inputs"] < n
    done, header = partial.read_bytes()[: state["bytes"]], HEADER[suffix]
    assert done[header:] == whole.read_bytes()[header : len(done)]  # the first inputs' results
    if suffix == ".jsonl":  # complete records only
        assert done.endswith(b"\n") and done.count(b"\n") == state["inputs"]
    else:
        assert (len(done) - header) % state["inputs"] == 0
    with open(partial, "ab") as f:
        f.write(b'{"text": "a torn rec')  # what a kill inside a write leaves after the last complete chunk

    capsys.readouterr()
    assert main([*argv, "-o", str(out), "--resume"]) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists() and not state_path.exists()
    if suffix == ".npy":
        assert np.load(out).shape == (n, 32)


# The command as `python -m erniem_np.cli` runs it, with the chunk task of dask_cases.py that kills its worker
# on a chunk holding POISON (the workers find dask_cases.py through PYTHONPATH).
POISONED = """import sys
from erniem_np.pipelines import distributed
from dask_cases import run_chunk_or_die
distributed.run_chunk_task = run_chunk_or_die
from erniem_np.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("where", ["address", "local"])
def test_a_poison_chunk_stops_the_run_and_resume_continues(where, dask_cluster, tmp_path, capsys, monkeypatch):
    """Line 23 of 40 kills every worker that runs its chunk (lines 21-24; a test-only task function, not the
    product's), on a scheduler that gives up on a task after two deaths (allowed-failures 1). The command, in a
    subprocess, on the module's cluster (``--dask ADDRESS``, whose scheduler is told so here: the command's own
    Dask config still says 3) or on a local cluster it starts (``--dask``), exits 1 with one line on its stderr,
    distributed's log messages included, naming the chunk's lines; it wrote the five chunks before it. With the
    chunk's input harmless again, --resume finishes the output."""
    texts = [t[:40] for t in langid_lines(40)]
    texts[22] = f"{POISON} {texts[22]}"
    path = tmp_path / "in.txt"
    write_inputs(path, texts)
    argv = ["classify", LANGID_MODEL, "-i", str(path), "--chunk-size", "4", "--quiet"]
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    assert main([*argv, "-o", str(whole)]) == 0
    argv += ["-o", str(out), "--resume"]

    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    if where == "address":
        monkeypatch.setattr(dask_cluster.scheduler, "allowed_failures", 1)
        dask = ["--dask", dask_cluster.scheduler_address]
    else:
        env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "1"
        dask = ["--dask", "--dask-workers", "2"]
    run = subprocess.run([sys.executable, "-c", POISONED, *argv, *dask], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300, check=False)  # fmt: skip
    monkeypatch.undo()
    assert run.returncode == 1
    assert run.stderr == (f"erniem-np: error: {path}:21 to {path}:24: 2 workers died running this chunk (more than "
                          "distributed.scheduler.allowed-failures, 1); an input there may be too large for a "
                          "worker's memory\n")  # fmt: skip
    partial, state = tmp_path / "out.jsonl.partial", json.loads((tmp_path / "out.jsonl.partial.json").read_text())
    assert not out.exists() and state["inputs"] == 20
    assert partial.read_bytes() == whole.read_bytes()[: state["bytes"]]
    assert partial.read_bytes().count(b"\n") == 20

    assert main([*argv, "--dask", dask_cluster.scheduler_address]) == 0
    assert out.read_bytes() == whole.read_bytes()


UNRETRIEVED = """import asyncio, gc, logging, sys, types
from erniem_np.commands import _common
from erniem_np.pipelines import distributed
distributed.DaskRunner = lambda *a, **k: None  # no cluster: only what the command line does around it
if sys.argv[1] == "--dask":
    _common.make_runner(types.SimpleNamespace(chunk_size=4, resume=False, output=None, dask="local",
                                              dask_workers=None), spec=None)
async def forever():
    await asyncio.Event().wait()
loop = asyncio.new_event_loop()
future = loop.create_future()
future.set_exception(TimeoutError("Timeout"))  # and nobody asks for it
task = loop.create_task(forever())  # never run: destroyed pending
loop.close()
logging.getLogger("asyncio").error("another asyncio message")
del future, task
gc.collect()
"""


@pytest.mark.parametrize("dask", [False, True])
def test_unretrieved_future_messages_do_not_follow_the_error_line(dask):
    """After a poison chunk, distributed can leave a future holding a TimeoutError nobody retrieves; asyncio
    prints "Future exception was never retrieved" and its traceback when it is collected, after the command's
    one error line (seen once in CI, in the suite's run on the oldest versions pyproject.toml allows). The
    command line, run with --dask, drops exactly those messages, and "Task was destroyed but it is pending!",
    for the rest of its process; another asyncio message still prints. Without --dask nothing is dropped (this
    run shows the messages are really printed here)."""
    run = subprocess.run([sys.executable, "-c", UNRETRIEVED, "--dask" if dask else "-"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert ("Future exception was never retrieved" in run.stderr) is not dask
    assert ("Task was destroyed but it is pending!" in run.stderr) is not dask
    assert "another asyncio message" in run.stderr


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
