"""The comparator: statistics, first divergence, and the negative controls that prove it can fail.

Each control is a candidate computed by this implementation with one classic ErnieM porting bug, compared
with the shipped tiny bundle; it must fail at the probe where the bug first shows, with the debug tier and
with the core tier only.
"""

from __future__ import annotations

import numpy as np
import pytest

from erniem_np.parity import produce
from erniem_np.parity.bundle import load_bundle
from erniem_np.parity.compare import EXIT_NUMERIC, EXIT_PASS, compare_bundles, probe_stats

TINY = produce.BUNDLE_DIR / "tiny.hf.safetensors"


@pytest.fixture(scope="module")
def ref():
    return load_bundle(TINY)


def candidate(ref, config=None, weights=None, pos_shift=0, no_mask=False, tier="debug", dtype=np.float32):
    """Every probe of every case of ``ref`` computed by this implementation, optionally with a bug."""
    config = config or ref.config()
    weights = weights if weights is not None else ref.weights()
    models = produce._models(config, weights, tuple(ref.metadata["heads"]), dtype, "numpy")
    out = {}
    for case in ref.case_names():
        inp = ref.inputs(case)
        got = produce.record_case(models, inp["input_ids"], None if no_mask else inp["attention_mask"],
                                  inp["position_ids"] + pos_shift, tier)  # fmt: skip
        out.update({f"{case}/{k}": v for k, v in got.items()})
    return out


def permuted_heads(ref):
    """q/k/v split as [B, L, d, nh] instead of [B, L, nh, d] (and merged back the same wrong way)."""
    cfg, w = ref.config(), dict(ref.weights())
    H, nh = cfg.hidden_size, cfg.num_attention_heads
    perm = np.arange(H).reshape(nh, H // nh).T.reshape(-1)
    for i in range(cfg.num_hidden_layers):
        for proj in "qkv":
            p = f"encoder.layers.{i}.self_attn.self_attn.{proj}_proj."
            w[p + "weight"], w[p + "bias"] = w[p + "weight"][perm], w[p + "bias"][perm]
        p = f"encoder.layers.{i}.self_attn.out_proj.weight"
        w[p] = w[p][:, perm]
    return w


def transposed_out_proj(ref):
    w = dict(ref.weights())
    name = "encoder.layers.1.self_attn.out_proj.weight"
    w[name] = np.ascontiguousarray(w[name].T)
    return w


# control -> (candidate builder, first diverging probe with the debug tier, with the core tier only, hint word)
CONTROLS = {
    "tanh_gelu": (lambda r: candidate(r, config=r.config().replace(hidden_act="gelu_new")),
                  "layer.00.ffn.act", "layer.00.out", "tanh"),
    "no_position_offset": (lambda r: candidate(r, pos_shift=-2), "emb.out", "emb.out", "+2"),
    "permuted_heads": (lambda r: candidate(r, weights=permuted_heads(r)), "layer.00.attn.q", "layer.00.attn.probs",
                       "head"),
    "layer_norm_eps_1e-12": (lambda r: candidate(r, config=r.config().replace(layer_norm_eps=1e-12)), "emb.out",
                             "emb.out", "eps"),
    "paddle_default_mask": (lambda r: candidate(r, config=r.config().replace(flavor="paddle"), no_mask=True),
                            "layer.00.attn.probs", "layer.00.attn.probs", "ids == 0"),
    "transposed_out_proj": (lambda r: candidate(r, weights=transposed_out_proj(r)), "layer.01.attn.out",
                            "layer.01.out", "out_proj"),
}  # fmt: skip


def core_only(ref, cand):
    core = {p["name"] for p in ref.probes() if p["tier"] == "core"}
    return {k: v for k, v in cand.items() if k.split("/", 1)[1] in core}


def test_this_implementation_passes_its_own_bundle_and_float64_passes_strict(ref):
    assert compare_bundles(ref, candidate(ref)).exit_code == EXIT_PASS
    report = compare_bundles(ref, candidate(ref, dtype=np.float64), profile="fp32-strict")
    assert report.exit_code == EXIT_PASS, report.to_text()


@pytest.mark.parametrize("control", list(CONTROLS))
def test_negative_control_is_caught_at_the_expected_probe(ref, control):
    build, first_debug, first_core, hint_word = CONTROLS[control]
    cand = build(ref)
    for tier_cand, expected in ((cand, first_debug), (core_only(ref, cand), first_core)):
        report = compare_bundles(ref, tier_cand)
        assert report.exit_code == EXIT_NUMERIC, control
        assert report.first_divergence.probe == expected, (control, report.to_text())
        assert not report.structural
    # the debug-tier report names the probe before it as the last passing one, and hints at the cause
    report = compare_bundles(ref, cand)
    assert any(hint_word in h for h in report.hints), (control, report.hints)
    order = [p["name"] for p in ref.probes()]
    if first_debug != "emb.out":
        assert report.last_passing == order[order.index(first_debug) - 1]


def test_tanh_gelu_also_fails_the_strict_and_passes_only_a_loose_tolerance(ref):
    cand = CONTROLS["tanh_gelu"][0](ref)
    assert compare_bundles(ref, cand, profile="fp32-strict").exit_code == EXIT_NUMERIC
    assert compare_bundles(ref, cand, atol=1e-2, rtol=0).exit_code == EXIT_PASS  # the bug is ~5e-4


def test_fp16_rounding_passes_fp16_and_fails_fp32(ref):
    cand = {k: v.astype(np.float16) for k, v in candidate(ref).items()}
    assert compare_bundles(ref, cand, profile="fp16").exit_code == EXIT_PASS
    assert compare_bundles(ref, cand, profile="fp32").exit_code == EXIT_NUMERIC


def test_padding_is_excluded_unless_asked(ref):
    cand = candidate(ref)
    name = "c01_batch_pad/layer.01.out"
    mask = ref.get("c01_batch_pad", "input.attention_mask")
    b, t = np.argwhere(mask == 0)[0]
    cand[name] = cand[name].copy()
    cand[name][b, t] += 1.0  # garbage on a padded token
    assert compare_bundles(ref, cand).exit_code == EXIT_PASS
    report = compare_bundles(ref, cand, include_padding=True)
    assert report.exit_code == EXIT_NUMERIC
    assert report.first_divergence.probe == "layer.01.out"
    assert report.first_divergence.stats["worst_index"][:2] == [int(b), int(t)]


def test_report_renders(ref):
    report = compare_bundles(ref, CONTROLS["tanh_gelu"][0](ref))
    md = report.to_markdown()
    assert "## First divergence" in md and "c00_single/layer.00.ffn.act" in md.replace("**", "")
    import json

    d = json.loads(report.to_json())
    assert d["exit_code"] == 1 and d["first_divergence"]["probe"] == "layer.00.ffn.act"
    assert "RESULT: FAIL" in report.to_text()


# ------------------------------------------------------------------------------------------ statistics
def test_probe_stats_on_known_arrays():
    ref = np.array([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])  # [B=1, L=3, H=2]
    cand = ref.copy()
    cand[0, 1, 0] += 0.5  # token 1, channel 0
    cand[0, 2, 1] = 100.0  # token 2 is padding
    valid = np.array([[1, 1, 0]], bool)
    ids = np.array([[0, 42, 1]])
    s = probe_stats(ref, cand, 1e-3, 0.0, valid, 1, ids)
    assert s["count"] == 4 and s["mismatch"] == 1
    assert s["max_abs"] == pytest.approx(0.5) and s["worst_index"] == [0, 1, 0] and s["worst_token"] == 42
    assert s["max_rel"] == pytest.approx(0.5 / 3.0)
    assert s["nmse"] == pytest.approx(0.25 / 30.0)
    s = probe_stats(ref, cand, 1e-3, 0.0, None, 1, ids)  # padding included
    assert s["worst_index"] == [0, 2, 1] and s["max_rel"] == pytest.approx(100.0 / 1e-3)  # floored at atol


def test_non_finite_values_must_agree():
    ref = np.array([[1.0, np.nan, np.inf]])
    assert probe_stats(ref, ref.copy(), 1e-5, 0)["mismatch"] == 0
    cand = np.array([[1.0, 0.0, np.inf]])
    s = probe_stats(ref, cand, 1e-5, 0)
    assert s["nonfinite_disagree"] == 1 and s["mismatch"] == 1
    s = probe_stats(ref, np.array([[1.0, np.nan, -np.inf]]), 1e-5, 0)
    assert s["nonfinite_disagree"] == 1  # -inf where +inf


def test_nan_in_a_candidate_probe_fails_numerically(ref):
    cand = candidate(ref)
    cand["c00_single/layer.00.out"] = cand["c00_single/layer.00.out"].copy()
    cand["c00_single/layer.00.out"][0, 3, 5] = np.nan
    report = compare_bundles(ref, cand)
    assert report.exit_code == EXIT_NUMERIC
    assert report.first_divergence.probe == "layer.00.out"
    assert "non-finite" in report.first_divergence.message


def test_argmax_agreement_gates_logits(ref):
    cand = candidate(ref)
    key = "c01_batch_pad/head.seq_cls.logits"
    s = probe_stats(ref.array(key), cand[key][:, ::-1], 1e9, 0, None, None, kind="logits")
    assert s["argmax_agree"] < 1.0
    s = probe_stats(ref.array(key), cand[key], 1e-4, 0, None, None, kind="logits")
    assert s["argmax_agree"] == 1.0


# ------------------------------------------------------------------------------------------ layer-local mode
def test_layer_local_candidate_passes_strict_and_localises_a_bug(ref):
    cfg, w = ref.config(), ref.weights()
    assert compare_bundles(ref, produce.layer_local_probes(ref, cfg, w), profile="fp32-strict").exit_code == 0
    tanh = produce.layer_local_probes(ref, cfg.replace(hidden_act="gelu_new"), w)
    end_to_end = CONTROLS["tanh_gelu"][0](ref)
    local = compare_bundles(ref, tanh, profile="fp32-strict", mode="layer_local")
    assert local.mode == "layer_local" and local.first_divergence.probe == "layer.00.ffn.act"
    # end to end the bug spreads into layer 01's attention; fed the reference's input, layer 01's q is right
    status = {(r.case, r.probe): r.status for r in local.rows}
    assert status[("c00_single", "layer.01.attn.q")] == "ok" and status[("c00_single", "layer.01.ffn.act")] == "FAIL"
    e2e = {(r.case, r.probe): r.status for r in compare_bundles(ref, end_to_end, profile="fp32-strict").rows}
    assert e2e[("c00_single", "layer.01.attn.q")] == "FAIL"


# ------------------------------------------------------------------------------------------ calibration
def test_shipped_calibration_is_the_float32_runs_own_error(ref):
    noise = ref.metadata["tolerances"]["calibration"]
    assert len(noise) == len(ref.case_names()) * len(ref.probes())
    assert all(0 <= v < 1e-5 for v in noise.values())  # tiny.hf: at most 6.9e-6
    assert max(noise.values()) > 0  # float32 is not float64
    # measured again: the bundle's float32 numbers against a float64 run
    exact = candidate(ref, dtype=np.float64)
    key = "c03_long/layer.01.out"
    assert np.abs(ref.array(key) - exact[key]).max() == pytest.approx(noise[key])


def test_calibrated_tolerance_follows_the_recorded_noise(ref):
    cand = candidate(ref)
    key = "c00_single/layer.00.ffn.up"
    cand[key] = cand[key] + np.float32(2e-3)
    assert compare_bundles(ref, cand, calibrated=True).first_divergence.probe == "layer.00.ffn.up"
    import copy

    loud = copy.copy(ref)
    loud.metadata = copy.deepcopy(ref.metadata)
    loud.metadata["tolerances"]["calibration"][key] = 1e-3  # pretend the reference's own noise were 1e-3 here
    assert compare_bundles(loud, cand, calibrated=True).exit_code == EXIT_PASS
    assert compare_bundles(loud, cand).exit_code == EXIT_NUMERIC
    # the real calibration does not let the tanh-GELU bug through
    assert compare_bundles(ref, CONTROLS["tanh_gelu"][0](ref), calibrated=True).exit_code == EXIT_NUMERIC
