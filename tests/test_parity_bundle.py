"""Bundle files: writing, reading, validation, and every kind of bad file with its error and exit code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from erniem_np.parity import produce
from erniem_np.parity.bundle import BundleError, check, load_bundle, validate, write_bundle
from erniem_np.parity.compare import EXIT_STRUCTURAL, compare_bundles

SHIPPED = sorted(produce.BUNDLE_DIR.glob("*.safetensors"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_bundles_are_valid_and_reproduced_by_this_implementation(path):
    """The shipped numbers are what this implementation computes today (fp32-strict, every probe)."""
    ref = load_bundle(path)
    assert validate(ref) == []
    assert ref.metadata["role"] == "reference" and ref.metadata["tier"] == "debug"
    assert path.stat().st_size < 1_000_000
    config = ref.config()
    tensors, meta = produce.make_bundle(config, ref.weights(), [
        {**ref.case(c), **ref.inputs(c)} for c in ref.case_names()])  # fmt: skip
    assert [p["name"] for p in meta["probes"]] == [p["name"] for p in ref.probes()]
    report = compare_bundles(ref, tensors, profile="fp32-strict")
    assert report.exit_code == 0, report.to_text()
    # and the weights are the documented recipe's
    preset = ref.metadata["weights"]["preset"]
    cfg, seed = produce.parity_config(preset, flavor=config.flavor)
    assert ref.metadata["weights"]["digest"] == produce.weights_digest(produce.parity_weights(cfg, seed))


def test_round_trip_keeps_names_dtypes_and_metadata(tmp_path):
    cfg, seed = produce.parity_config("tiny")
    cases = produce.default_cases(cfg)[:1]
    tensors, meta = produce.make_bundle(cfg, produce.parity_weights(cfg, seed), cases, dtype=np.float64,
                                        tier="core", store_weights=False)  # fmt: skip
    path = tmp_path / "b.safetensors"
    write_bundle(path, tensors, meta)
    b = load_bundle(path)
    assert b.metadata["compute_dtype"] == "float64" and b.metadata["config"]["hidden_size"] == 32
    assert set(b.tensors) == set(tensors)
    assert b.array("c00_single/layer.01.out").dtype == np.float64
    assert b.array("c00_single/input.input_ids").dtype == np.int64
    assert "c00_single/layer.00.ffn.up" not in b.tensors  # core tier only
    assert validate(b) == []


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_unreadable_files_raise_unreadable(tmp_path):
    good = SHIPPED[0].read_bytes()
    cases = {
        "empty.safetensors": b"",
        "truncated.safetensors": good[: len(good) // 2],
        "header.safetensors": (100).to_bytes(8, "little") + b"{not json" + b" " * 91,
    }
    for name, data in cases.items():
        with pytest.raises(BundleError) as e:
            load_bundle(_write(tmp_path, name, data))
        assert e.value.kind == "unreadable", name
        assert name in str(e.value)
    with pytest.raises(BundleError, match="no such file") as e:
        load_bundle(tmp_path / "missing.safetensors")
    assert e.value.kind == "unreadable"


def test_metadata_that_is_not_json_or_another_format_is_unreadable(tmp_path):
    from erniem_np.checkpoints.safetensors_file import write_safetensors

    p = tmp_path / "m.safetensors"
    write_safetensors(p, {"c/emb.out": np.zeros(2, np.float32)}, metadata={"config": "{oops"})
    with pytest.raises(BundleError, match="'config' is not JSON"):
        load_bundle(p)
    write_safetensors(p, {"c/emb.out": np.zeros(2, np.float32)}, metadata={"format": "erniem-np-parity/2"})
    with pytest.raises(BundleError, match="format"):
        load_bundle(p)
    write_safetensors(p, {"emb.out": np.zeros(2, np.float32)})
    with pytest.raises(BundleError, match="not named <case>/<probe>"):
        load_bundle(p)


def test_candidate_problems_are_structural(tmp_path):
    ref = load_bundle(SHIPPED[-1])
    names = [n for n in ref.tensors if not n.startswith("weights/") and "/input." not in n and "/derived." not in n]
    cand = {n: ref.array(n) for n in names}
    assert validate(load_bundle(SHIPPED[-1]), against=ref) == []

    missing = {k: v for k, v in cand.items() if k != "c01_batch_pad/layer.01.attn.probs"}
    assert validate(_bundle(missing), against=ref) == ["c01_batch_pad/layer.01.attn.probs: missing core probe"]
    report = compare_bundles(ref, missing)
    assert report.exit_code == EXIT_STRUCTURAL and "missing core probe" in report.structural[0]

    no_debug = {k: v for k, v in cand.items() if "ffn.up" not in k}
    assert compare_bundles(ref, no_debug).exit_code == 0  # debug probes are optional

    wrong = dict(cand)
    wrong["c00_single/emb.out"] = cand["c00_single/emb.out"][:, :-1]
    assert compare_bundles(ref, wrong).exit_code == EXIT_STRUCTURAL
    assert "shape" in validate(_bundle(wrong), against=ref)[0]

    extra = dict(cand)
    extra["c99_mine/emb.out"] = cand["c00_single/emb.out"]
    assert any("c99_mine" in p for p in validate(_bundle(extra), against=ref))

    other_inputs = dict(cand)
    other_inputs["c00_single/input.input_ids"] = ref.array("c00_single/input.input_ids") + 1
    report = compare_bundles(ref, other_inputs)
    assert report.exit_code == EXIT_STRUCTURAL and "different inputs" in report.structural[0]


def _bundle(tensors):
    from erniem_np.parity.bundle import Bundle

    return Bundle({}, tensors)


def test_reference_without_metadata_is_rejected(tmp_path):
    from erniem_np.checkpoints.safetensors_file import write_safetensors

    p = tmp_path / "bare.safetensors"
    write_safetensors(p, {"c/emb.out": np.zeros((1, 2, 3), np.float32)})
    b = load_bundle(p)
    assert "metadata has no 'config'" in validate(b)[0]
    with pytest.raises(BundleError):
        check(b)
    with pytest.raises(BundleError, match="not a reference bundle"):
        compare_bundles(b, b)


def test_cases_from_json_validates():
    cfg, _ = produce.parity_config("tiny")
    cases = produce.cases_from_json([{"name": "mine", "input_ids": [[0, 5, 2]]}], cfg)
    assert cases[0]["attention_mask"].tolist() == [[1, 1, 1]]
    for bad, msg in (([], "non-empty"), ([{"ids": 1}], "input_ids"), ([{"input_ids": [[0, 1], [2]]}], "rectangular"),
                     ([{"input_ids": [[0]], "attention_mask": [[1, 1]]}], "shape"),
                     ([{"name": "a/b", "input_ids": [[0]]}], "'/'")):  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            produce.cases_from_json(bad, cfg)
    json.dumps(produce.default_cases(cfg)[0]["description"])


def test_numba_backend_records_the_core_tier_only():
    ref = load_bundle(produce.BUNDLE_DIR / "tiny.hf.safetensors")
    cases = [{**ref.case(c), **ref.inputs(c)} for c in ref.case_names()]
    tensors, meta = produce.make_bundle(ref.config(), ref.weights(), cases, backend="numba", tier="core")
    assert meta["producer"]["backend"] == "numba" and not any("ffn.up" in k for k in tensors)
    assert compare_bundles(ref, tensors, tier="core").exit_code == 0
    with pytest.raises(ValueError, match="debug tier"):
        produce.make_bundle(ref.config(), ref.weights(), cases, backend="numba", tier="debug")
