"""Every task on Dask (erniem_np/pipelines/distributed.py, chunks.py) gives what one process gives.

One local cluster of two single-threaded worker processes serves the module (conftest.py's ``dask_cluster``).
For each task the command is run three ways on the same input file, with the same --chunk-size and
--batch-size: in this process, with ``--dask ADDRESS``, and through the pipeline class's own streaming call;
the three results are equal (JSON values, exactly). The commands, inputs and models are tests/dask_cases.py's.

Also: a bad input line stops a run on Dask as it stops one process (the same results before it, the same one
error line naming FILE:LINE), and the kernel threads each worker takes (its host's cores divided among the
worker threads there).
"""

from __future__ import annotations

import json

import pytest

distributed = pytest.importorskip("distributed")

from dask_cases import TASKS, case, contexts, langid_lines, write_inputs

from erniem_np.bundled import LANGID_MODEL
from erniem_np.cli import main


def run_json(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("task", TASKS)
def test_task_on_dask_equals_one_process(task, task_ckpts, dask_cluster, tmp_path, capsys):
    c = case(task, task_ckpts)
    path = tmp_path / f"in{c.suffix}"
    write_inputs(path, c.inputs)
    argv = [*c.argv, "-i", str(path), "--json", "--quiet"]
    one = run_json(capsys, argv)
    with distributed.Client(dask_cluster) as client, distributed.get_task_stream(client) as stream:
        on_dask = run_json(capsys, [*argv, "--dask", dask_cluster.scheduler_address])
    workers = {t["worker"] for t in stream.data if f"{task}_chunk" in t["key"]}
    assert len(workers) == 2, "both workers took chunks"
    assert on_dask == one
    assert one == json.loads(json.dumps(c.want(), ensure_ascii=False))
    assert len(one) == len(c.inputs)


@pytest.mark.parametrize("bad", ["undecodable", "over-long"])
def test_bad_input_is_one_line_naming_it_as_in_one_process(bad, task_ckpts, dask_cluster, tmp_path, capsys):
    """Line 7 of the input is bad: the command stops with exit 1 and one stderr line naming ``FILE:7``, after
    printing the results of the chunks before it (a valid JSON array), on Dask exactly as in one process.
    Undecodable: not UTF-8, found by the client's reader; over-long: a question that leaves a QA window no
    room for its context, found by the worker that runs its chunk."""
    path = tmp_path / ("in.txt" if bad == "undecodable" else "in.jsonl")
    if bad == "undecodable":
        lines = [t.encode() for t in langid_lines(12)]
        lines[6] = b"caf\xe9 au lait"  # Latin-1, not UTF-8
        argv = ["classify", LANGID_MODEL]
    else:
        items = contexts(12)
        items[6]["question"] = "why " * 40
        lines = [json.dumps(x).encode() for x in items]
        argv = ["qa", task_ckpts["qa"], "--max-seq-len", "32", "--doc-stride", "8"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    argv += ["-i", str(path), "--chunk-size", "2", "--json", "--quiet"]
    runs = []
    for extra in ([], ["--dask", dask_cluster.scheduler_address]):
        code = main(argv + extra)
        out, err = capsys.readouterr()
        assert code == 1 and err.count("\n") == 1 and err.startswith(f"erniem-np: error: {path}:7: "), err
        runs.append((json.loads(out), err))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == 6  # the three chunks before the bad line
    assert ("not valid UTF-8" if bad == "undecodable" else "leaves no room for the context") in runs[0][1]


def test_kernel_threads_share_each_hosts_cores(dask_cluster):
    """cores // worker threads on the host: two 2-thread workers on an 8-core host get 2 kernel threads, one
    single-threaded worker alone on a 4-core host 4; the module's cluster (2 x 1 thread here) splits this
    machine's cores in two."""
    from erniem_np.pipelines import distributed as d

    class FakeClient:
        def run(self, fn):
            return {"w1": ("a", 8), "w2": ("a", 8), "w3": ("b", 4)}

        def nthreads(self):
            return {"w1": 2, "w2": 2, "w3": 1}

    assert d.kernel_thread_plan(FakeClient()) == {"a": 2, "b": 4}
    import socket

    with distributed.Client(dask_cluster) as client:
        assert d.kernel_thread_plan(client) == {socket.gethostname(): max(1, d.usable_cores() // 2)}
