"""The command line's contract under failure: one line on stderr and exit 1 (no warning, no traceback before
it), a --json array that stays valid when an input fails midway, and outputs that are replaced whole or not
at all, never written over a checkpoint the process is using."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from erniem_np.cli import main
from test_pipelines import make_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-ckpts")
    return {"seq": make_checkpoint(root / "seq", "seq_cls"), "base": make_checkpoint(root / "base", None, seed=3)}


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err, *words):
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("erniem-np: error: "), err
    for w in words:
        assert w in lines[0], err


def test_encode_refuses_to_write_over_the_loaded_checkpoint(ckpts, capsys, tmp_path):
    """`encode m hi -o m/model.safetensors` used to truncate the mapped weights under the running process
    (SIGBUS, a 4 KB checkpoint left); now it is refused and the checkpoint is intact."""
    import os
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(ckpts["base"], model_dir)
    weights = model_dir / "model.safetensors"
    before = weights.read_bytes()
    code, out, err = _run(capsys, "encode", str(model_dir), "hello", "-o", str(weights), "-q")
    assert code == 1
    _one_error_line(err, "refusing to write", str(weights))
    assert weights.read_bytes() == before
    assert sorted(os.listdir(model_dir)) == sorted(os.listdir(ckpts["base"])), "a temporary file was left"


def test_a_failed_encode_leaves_the_old_output_whole(ckpts, capsys, tmp_path, monkeypatch):
    """A full disk midway (ENOSPC on the second block): one error line, exit 1, and the file that was at the
    output path before is still there, byte for byte; no temporary file is left."""
    import os

    from erniem_np.pipelines import encode as encode_module

    out_path = tmp_path / "emb.npy"
    np.save(out_path, np.arange(6.0))
    before = out_path.read_bytes()
    real_write, calls = encode_module.NpyWriter.write, []

    def write(self, block):
        calls.append(len(block))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, block)

    monkeypatch.setattr(encode_module.NpyWriter, "write", write)
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"line {i}\n" for i in range(40)), encoding="utf-8")
    code, _, err = _run(capsys, "encode", ckpts["base"], "-i", str(texts), "-o", str(out_path), "--chunk-size",
                        "10", "-q")  # fmt: skip
    assert code == 1 and len(calls) == 2
    _one_error_line(err, "No space left on device")
    assert out_path.read_bytes() == before
    assert set(os.listdir(tmp_path)) == {"emb.npy", "texts.txt"}, "a temporary file was left"


@pytest.mark.parametrize("command", ["classify", "encode"])
def test_json_stays_valid_when_an_input_fails_midway(ckpts, capsys, tmp_path, command):
    """A .jsonl whose line 7 is broken, read two at a time: the results before it form a valid JSON array on
    stdout, and the error is one line on stderr."""
    lines = [json.dumps({"text": f"text number {i}"}) for i in range(1, 11)]
    lines[6] = '{"text": "broken'
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = ckpts["seq"] if command == "classify" else ckpts["base"]
    code, out, err = _run(capsys, command, model, "-i", str(path), "--json", "--chunk-size", "2", "-q")
    assert code == 1
    _one_error_line(err, "7")
    results = json.loads(out)  # valid JSON
    assert [r["text"] for r in results] == [f"text number {i}" for i in range(1, len(results) + 1)]
    assert 0 < len(results) <= 6


def test_warnings_do_not_precede_the_error_line(ckpts, capsys):
    """Loading a classifier from a base checkpoint warns nothing useful and then fails: the user sees the one
    error line. A warning from a command that succeeds is shown, after the output, as one line."""
    code, _, err = _run(capsys, "classify", ckpts["base"], "hi", "-q")
    assert code == 1
    _one_error_line(err, "sequence-classification head")


def test_a_deeply_nested_input_is_one_line(tmp_path, capsys):
    code, _, err = _run(capsys, "extract", str(tmp_path), "--schema", "[" * 100_000, "x")
    assert code == 1
    _one_error_line(err)


@pytest.mark.parametrize("ids", ["", "   "])
def test_empty_ids_are_an_error_not_the_default_demo(capsys, ids):
    code, out, err = _run(capsys, "demo", "--ids", ids)
    assert code == 1 and out == ""
    _one_error_line(err, "--ids is empty")
