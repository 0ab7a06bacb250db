"""Every task on Dask (erniem_np/pipelines/distributed.py, chunks.py) gives what one process gives.

One local cluster of two single-threaded worker processes serves the module. For each task the command is run
three ways on the same input file, with the same --chunk-size and --batch-size: in this process, with
``--dask ADDRESS``, and through the pipeline class's own streaming call; the three results are equal (JSON
values, exactly). Models: the bundled language-ID classifier (classify), random checkpoints with the fixture
tokenizer (choose, tag, qa), and the tiny UIE-M fixture (extract).

Also: a bad input line stops a run on Dask as it stops one process (the same results before it, the same one
error line naming FILE:LINE), and the kernel threads each worker takes (its host's cores divided among the
worker threads there).
"""

from __future__ import annotations

import json
import os

import pytest

distributed = pytest.importorskip("distributed")

from test_pipelines import make_checkpoint
from test_pipelines_tag_qa import CONTEXT, _build

from erniem_np.bundled import LANGID_MODEL
from erniem_np.cli import main
from erniem_np.pipelines.base import iter_chunks

HERE = os.path.dirname(__file__)
UIE_MODEL = os.path.join(HERE, "fixtures", "uie", "tiny-uiem")


def langid_lines(n: int) -> list[str]:
    """``n`` held-out lines of the language-ID model's sample (31 languages), repeated with a counter."""
    path = os.path.join(LANGID_MODEL, "heldout_sample.jsonl")
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"].replace("\n", " ").strip() for line in f]
    texts = [t for t in texts if t]
    return [f"{texts[i % len(texts)]} {i}" for i in range(n)]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c:  # fmt: skip
        yield c


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask-tasks")
    return {"mc": make_checkpoint(root / "mc", "mc", seed=2), "tag": _build(root / "tag", "token_cls", seed=11),
            "qa": _build(root / "qa", "qa", seed=12)}  # fmt: skip


def _questions(n):
    words = ["mat", "moon", "idea", "北京", "Zürich", "a very long choice of several words"]
    return [{"question": f"The cat number {i} sat on the", "choices": words[: 2 + i % 4]} for i in range(n)]


def _contexts(n):
    qs = ["Who visited Paris?", "Where is Zürich?", "When?", "What jumps?"]
    return [{"question": qs[i % 4], "context": CONTEXT[: 40 + 7 * i]} for i in range(n)]


def case(name, ckpts):
    """(command arguments, inputs, file suffix, the pipeline's own result list as the command's records)."""
    from erniem_np.pipelines.choose import Chooser
    from erniem_np.pipelines.classify import Classifier
    from erniem_np.pipelines.extract import Extractor
    from erniem_np.pipelines.qa import QuestionAnswerer
    from erniem_np.pipelines.tag import Tagger

    if name == "classify":
        texts = langid_lines(120)
        results = Classifier(LANGID_MODEL, chunk_size=16, batch_size=4).iter(texts, top_k=2)
        want = [{"text": t, "labels": r} for t, r in zip(texts, results, strict=True)]
        argv = ["classify", LANGID_MODEL, "--top-k", "2", "--chunk-size", "16", "--batch-size", "4"]
        return argv, texts, ".txt", want
    if name == "choose":
        items = _questions(40)
        results = Chooser(ckpts["mc"], chunk_size=6, batch_size=4).iter([(q["question"], q["choices"]) for q in items])
        want = [{**q, **r} for q, r in zip(items, results, strict=True)]
        return ["choose", ckpts["mc"], "--chunk-size", "6", "--batch-size", "4"], items, ".jsonl", want
    if name == "tag":
        texts = langid_lines(60)
        results = Tagger(ckpts["tag"], batch_size=4).iter_tag(texts, chunk_size=8)
        want = [{"text": t, "entities": e} for t, e in zip(texts, results, strict=True)]
        return ["tag", ckpts["tag"], "--chunk-size", "8", "--batch-size", "4"], texts, ".txt", want
    if name == "qa":
        items = _contexts(30)
        qa = QuestionAnswerer(ckpts["qa"], batch_size=4, top_k=2, max_seq_len=32, doc_stride=8)
        results = qa.iter_answer([(p["question"], p["context"]) for p in items], chunk_size=4)
        want = [{"question": p["question"], "answers": r if isinstance(r, list) else [r]}
                for p, r in zip(items, results, strict=True)]  # fmt: skip
        return (["qa", ckpts["qa"], "--chunk-size", "4", "--batch-size", "4", "--top-k", "2", "--max-seq-len", "32",
                 "--doc-stride", "8"], items, ".jsonl", want)  # fmt: skip
    texts = [t[:30] for t in langid_lines(24)] + ["张三出生于上海，任职于ABC公司。" * 3, "这家店很好"]
    schema = ["人物", "地点"]
    ex = Extractor(UIE_MODEL, schema, max_seq_len=48, batch_size=4)
    want = [r for chunk in iter_chunks(texts, 8) for r in ex(chunk)]
    return (["extract", UIE_MODEL, "--schema", json.dumps(schema), "--max-seq-len", "48", "--batch-size", "4",
             "--chunk-size", "8"], texts, ".txt", want)  # fmt: skip


def write_inputs(path, inputs):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines((json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x) + "\n" for x in inputs)


def run_json(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("task", ["classify", "choose", "tag", "qa", "extract"])
def test_task_on_dask_equals_one_process(task, ckpts, cluster, tmp_path, capsys):
    argv, inputs, suffix, want = case(task, ckpts)
    path = tmp_path / f"in{suffix}"
    write_inputs(path, inputs)
    argv = [*argv, "-i", str(path), "--json", "--quiet"]
    one = run_json(capsys, argv)
    with distributed.Client(cluster) as client, distributed.get_task_stream(client) as stream:
        on_dask = run_json(capsys, [*argv, "--dask", cluster.scheduler_address])
    workers = {t["worker"] for t in stream.data if f"{task}_chunk" in t["key"]}
    assert len(workers) == 2, "both workers took chunks"
    assert on_dask == one
    assert one == json.loads(json.dumps(want, ensure_ascii=False))
    assert len(one) == len(inputs)


@pytest.mark.parametrize("bad", ["undecodable", "over-long"])
def test_bad_input_is_one_line_naming_it_as_in_one_process(bad, ckpts, cluster, tmp_path, capsys):
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
        items = _contexts(12)
        items[6]["question"] = "why " * 40
        lines = [json.dumps(x).encode() for x in items]
        argv = ["qa", ckpts["qa"], "--max-seq-len", "32", "--doc-stride", "8"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    argv += ["-i", str(path), "--chunk-size", "2", "--json", "--quiet"]
    runs = []
    for extra in ([], ["--dask", cluster.scheduler_address]):
        code = main(argv + extra)
        out, err = capsys.readouterr()
        assert code == 1 and err.count("\n") == 1 and err.startswith(f"erniem-np: error: {path}:7: "), err
        runs.append((json.loads(out), err))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == 6  # the three chunks before the bad line
    assert ("not valid UTF-8" if bad == "undecodable" else "leaves no room for the context") in runs[0][1]


def test_kernel_threads_share_each_hosts_cores(cluster):
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

    with distributed.Client(cluster) as client:
        assert d.kernel_thread_plan(client) == {socket.gethostname(): max(1, d.usable_cores() // 2)}
