"""PaddleNLP 2.8.1 as a candidate: tests/fixtures/parity/tiny.paddle.paddlenlp-candidate.safetensors was written by

    .venv-ref-paddle/bin/python scripts/reference/produce_bundle_paddle.py \
        erniem_np/data/bundles/tiny.paddle.safetensors -o tests/fixtures/parity/tiny.paddle.paddlenlp-candidate.safetensors

(paddle is not installed in CI, so its output is a committed fixture). Every probe, debug tier included,
must pass the shipped bundle at fp32-strict; a rerun of the script after a change to the shipped bundle
refreshes it.
"""

from __future__ import annotations

from pathlib import Path

from erniem_np.parity import produce
from erniem_np.parity.bundle import load_bundle
from erniem_np.parity.compare import compare_bundles

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "tiny.paddle.paddlenlp-candidate.safetensors"


def test_paddlenlp_candidate_passes_the_shipped_paddle_bundle():
    ref = produce.BUNDLE_DIR / "tiny.paddle.safetensors"
    cand = load_bundle(FIXTURE)
    assert cand.metadata["producer"]["library"] == "paddlenlp"
    report = compare_bundles(ref, cand, profile="fp32-strict")
    assert report.exit_code == 0, report.to_text()
    expected = len(load_bundle(ref).probes()) * len(load_bundle(ref).case_names())
    assert sum(r.status == "ok" for r in report.rows) == expected
