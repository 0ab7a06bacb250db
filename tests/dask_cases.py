"""Every task as the Dask tests run it (tests/test_dask_tasks.py, tests/test_dask_faults.py).

``case(task, ckpts)`` gives a task's command line, its inputs and, lazily, what the pipeline class itself
returns on them; ``task_checkpoints(root)`` builds the random checkpoints those commands use (conftest.py's
``task_ckpts`` fixture). Models: the bundled language-ID classifier (classify), random checkpoints with the
fixture tokenizers (encode, choose, tag, qa), and the tiny UIE-M fixture (extract).

``run_chunk_or_die`` and ``run_chunk_dying_once`` are Dask tasks for the tests only, which kill the worker
process running a chunk: every time for a chunk holding ``POISON``, once for the third chunk of a file. Workers
import this module to run them, so its imports are light (the test helpers load lazily).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from erniem_np.bundled import LANGID_MODEL
from erniem_np.pipelines.distributed import run_chunk_task

HERE = os.path.dirname(os.path.abspath(__file__))
UIE_MODEL = os.path.join(HERE, "fixtures", "uie", "tiny-uiem")
TASKS = ("encode", "classify", "choose", "tag", "qa", "extract")
POISON = "POISON"


def langid_lines(n: int) -> list[str]:
    """``n`` held-out lines of the language-ID model's sample (31 languages), repeated with a counter."""
    path = os.path.join(LANGID_MODEL, "heldout_sample.jsonl")
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"].replace("\n", " ").strip() for line in f]
    texts = [t for t in texts if t]
    return [f"{texts[i % len(texts)]} {i}" for i in range(n)]


def task_checkpoints(root) -> dict[str, str]:
    """Random checkpoints for encode ("base"), choose ("mc"), tag and qa, saved under ``root``."""
    from test_pipelines import make_checkpoint
    from test_pipelines_tag_qa import _build

    return {"base": make_checkpoint(root / "base", None, seed=3),
            "mc": make_checkpoint(root / "mc", "mc", seed=2),
            "tag": _build(root / "tag", "token_cls", seed=11),
            "qa": _build(root / "qa", "qa", seed=12)}  # fmt: skip


def questions(n: int) -> list[dict]:
    words = ["mat", "moon", "idea", "北京", "Zürich", "a very long choice of several words"]
    return [{"question": f"The cat number {i} sat on the", "choices": words[: 2 + i % 4]} for i in range(n)]


def contexts(n: int) -> list[dict]:
    from test_pipelines_tag_qa import CONTEXT

    qs = ["Who visited Paris?", "Where is Zürich?", "When?", "What jumps?"]
    return [{"question": qs[i % 4], "context": CONTEXT[: 40 + 7 * i]} for i in range(n)]


@dataclass
class Case:
    """A task's command line (MODEL and options, no input or output), its inputs, the input file's suffix,
    and ``want()``: the pipeline class's own results as the records ``--json`` prints."""

    argv: list[str]
    inputs: list
    suffix: str
    want: Callable[[], list]


def case(name: str, ckpts: dict[str, str]) -> Case:
    """Each task on 30 to 120 inputs in 5 to 8 chunks, batches of 4."""
    from erniem_np.pipelines.base import iter_chunks
    from erniem_np.pipelines.choose import Chooser
    from erniem_np.pipelines.classify import Classifier
    from erniem_np.pipelines.encode import Encoder
    from erniem_np.pipelines.extract import Extractor
    from erniem_np.pipelines.qa import QuestionAnswerer
    from erniem_np.pipelines.tag import Tagger

    if name == "encode":
        texts = langid_lines(40)

        def want():
            vectors = Encoder(ckpts["base"], pooling="mean", chunk_size=6, batch_size=4).encode(texts)
            return [{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors, strict=True)]

        argv = ["encode", ckpts["base"], "--pooling", "mean", "--chunk-size", "6", "--batch-size", "4"]
        return Case(argv, texts, ".txt", want)
    if name == "classify":
        texts = langid_lines(120)

        def want():
            results = Classifier(LANGID_MODEL, chunk_size=16, batch_size=4).iter(texts, top_k=2)
            return [{"text": t, "labels": r} for t, r in zip(texts, results, strict=True)]

        argv = ["classify", LANGID_MODEL, "--top-k", "2", "--chunk-size", "16", "--batch-size", "4"]
        return Case(argv, texts, ".txt", want)
    if name == "choose":
        items = questions(40)

        def want():
            chooser = Chooser(ckpts["mc"], chunk_size=6, batch_size=4)
            results = chooser.iter([(q["question"], q["choices"]) for q in items])
            return [{**q, **r} for q, r in zip(items, results, strict=True)]

        return Case(["choose", ckpts["mc"], "--chunk-size", "6", "--batch-size", "4"], items, ".jsonl", want)
    if name == "tag":
        texts = langid_lines(60)

        def want():
            results = Tagger(ckpts["tag"], batch_size=4).iter_tag(texts, chunk_size=8)
            return [{"text": t, "entities": e} for t, e in zip(texts, results, strict=True)]

        return Case(["tag", ckpts["tag"], "--chunk-size", "8", "--batch-size", "4"], texts, ".txt", want)
    if name == "qa":
        items = contexts(30)

        def want():
            qa = QuestionAnswerer(ckpts["qa"], batch_size=4, top_k=2, max_seq_len=32, doc_stride=8)
            results = qa.iter_answer([(p["question"], p["context"]) for p in items], chunk_size=4)
            return [{"question": p["question"], "answers": r if isinstance(r, list) else [r]}
                    for p, r in zip(items, results, strict=True)]  # fmt: skip

        argv = ["qa", ckpts["qa"], "--chunk-size", "4", "--batch-size", "4", "--top-k", "2", "--max-seq-len", "32",
                "--doc-stride", "8"]  # fmt: skip
        return Case(argv, items, ".jsonl", want)
    if name != "extract":
        raise ValueError(name)
    texts = [t[:30] for t in langid_lines(24)] + ["张三出生于上海，任职于ABC公司。" * 3, "这家店很好"]
    schema = ["人物", "地点"]

    def want():
        ex = Extractor(UIE_MODEL, schema, max_seq_len=48, batch_size=4)
        return [r for chunk in iter_chunks(texts, 6) for r in ex(chunk)]

    argv = ["extract", UIE_MODEL, "--schema", json.dumps(schema), "--max-seq-len", "48", "--batch-size", "4",
            "--chunk-size", "6"]  # fmt: skip
    return Case(argv, texts, ".txt", want)


def write_inputs(path, inputs) -> None:
    """One input per line: texts as they are, objects as JSON."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines((json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x) + "\n" for x in inputs)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would


def run_chunk_or_die(spec, chunk, plan=None):
    """The erniem-np chunk task, except that a chunk with an input containing POISON SIGKILLs the worker
    process that runs it, every time."""
    if any(POISON in json.dumps(item, ensure_ascii=False) for item in chunk.items):
        _die()
    return run_chunk_task(spec, chunk, plan)


def run_chunk_dying_once(spec, chunk, plan=None):
    """The erniem-np chunk task, except that the worker process that first runs the third chunk of an input file
    (one input per line) SIGKILLs itself, once per file: ``FILE.killed`` is created then."""
    path, line = chunk.where[0].rsplit(":", 1)
    if int(line) == 2 * len(chunk) + 1:
        try:
            os.close(os.open(f"{path}.killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            _die()
    return run_chunk_task(spec, chunk, plan)
