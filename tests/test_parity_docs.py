"""docs/parity-testing.md runs as written: the four-step writer, the Python API, the worked example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from erniem_np.parity.bundle import load_bundle, validate
from erniem_np.parity.produce import BUNDLE_DIR

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "parity-testing.md").read_text(encoding="utf-8")


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)


def test_four_step_writer_writes_a_file_the_comparator_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    writer, api = blocks("python")
    exec(compile(writer, "parity-testing.md", "exec"), {})
    cand = load_bundle(tmp_path / "my-port.candidate.safetensors")
    assert cand.metadata["producer"]["library"] == "my-port"
    from safetensors.numpy import load_file  # the reference reader agrees

    assert load_file(tmp_path / "my-port.candidate.safetensors")["c00_single/emb.out"].shape == (1, 8, 32)
    problems = validate(cand, against=load_bundle(BUNDLE_DIR / "tiny.hf.safetensors"))
    assert "c00_single/layer.00.attn.probs: missing core probe" in problems
    assert not any("emb.out" in p and p.startswith("c00_single") for p in problems)
    namespace: dict = {}
    exec(compile(api.replace("print(", "str("), "parity-testing.md", "exec"), namespace)
    assert namespace["report"].exit_code == 2  # the one-probe candidate misses every other core probe


def test_worked_example_runs_as_written(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    (script,) = blocks("sh")
    # the only change: the two environments' interpreters are this one (which has torch and transformers)
    script = script.replace(".venv-ref-hf/bin/python", sys.executable)
    script = script.replace(".venv/bin/erniem-np", f"{sys.executable} -m erniem_np.cli")
    os.symlink(ROOT / "scripts", tmp_path / "scripts")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", "-ec", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "RESULT: PASS (132 probe(s) compared under profile fp32)" in res.stdout
    assert (tmp_path / "report.md").read_text().startswith("# Parity report: PASS")
