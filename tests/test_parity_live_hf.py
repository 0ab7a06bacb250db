"""The HF reference, driven by scripts/reference/produce_bundle_hf.py from exported inputs, passes against the shipped
bundles: the parity toolkit's acceptance test. Needs torch and transformers (the `reference` extra)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from erniem_np.cli import main  # noqa: E402
from erniem_np.parity import produce  # noqa: E402
from erniem_np.parity.bundle import load_bundle  # noqa: E402
from erniem_np.parity.compare import compare_bundles  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reference" / "produce_bundle_hf.py"


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # the script sets one thread


def _script():
    spec = importlib.util.spec_from_file_location("produce_bundle_hf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["tiny.hf", "odd.hf"])
def test_hf_candidate_from_exported_inputs_passes(name, tmp_path, capsys):
    ref = str(produce.BUNDLE_DIR / f"{name}.safetensors")
    inputs, cand = tmp_path / "in.safetensors", tmp_path / "hf.safetensors"
    assert main(["parity", "export-inputs", ref, "-o", str(inputs), "--with-weights"]) == 0
    _script().main([str(inputs), "-o", str(cand)])
    report = compare_bundles(ref, cand, profile="fp32-strict")
    assert report.exit_code == 0, report.to_text()
    n_probes = len(load_bundle(ref).probes()) * len(load_bundle(ref).case_names())
    assert sum(r.status == "ok" for r in report.rows) == n_probes  # every probe, the debug tier included
    assert main(["parity", "compare", ref, str(cand)]) == 0


def test_hf_candidate_with_a_bug_is_caught(tmp_path):
    """The same HF run with tanh GELU: caught at layer.00.ffn.act (the hooks see the real activation)."""
    ref = produce.BUNDLE_DIR / "tiny.hf.safetensors"
    script = _script()
    original = script.build

    def build_tanh(config_dict, weights, head, num_labels, dtype):
        return original({**config_dict, "hidden_act": "gelu_new"}, weights, head, num_labels, dtype)

    script.build = build_tanh
    cand = tmp_path / "hf-tanh.safetensors"
    script.main([str(ref), "-o", str(cand)])
    report = compare_bundles(ref, cand)
    assert report.exit_code == 1 and report.first_divergence.probe == "layer.00.ffn.act"
    assert np.isfinite(report.first_divergence.stats["max_abs"])
