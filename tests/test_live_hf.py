"""Live parity with HuggingFace transformers' ErnieM (4.46.3, torch 2.13.0 CPU): HF and ours side by side.

Hypothesis draws small configs (every activation HF accepts, odd FFN widths, tiny position tables, varying
pad ids and LayerNorm eps) and inputs (right padding with int/bool/float 2-D masks, no mask, explicit position
ids, head masks, past key/values, inputs_embeds); the weights come from ``erniem_np.testing.random_weights``
and are loaded into both models. Every output is compared at the fp32 profile of tests/goldens.py, and a
failure lists each tensor out of tolerance with its max error.

"Ours" is every backend (``numba``, the default, and ``numpy``, the reference layers), plus the numba
backend called without output_attentions/output_hidden_states (its attention kernel then skips the
probabilities: another code path); failures are labelled ``[numba]``, ``[numpy]``, ``[numba/plain]``.

Needs the ``reference`` extra (torch, transformers); skips cleanly without it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from goldens import MODEL_CLASS, PROFILE_FP32, compare
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from erniem_np import ErnieMConfig
from erniem_np import backend as backends
from erniem_np.config import ACTIVATION_NAMES
from erniem_np.testing import HEAD_LABELS, random_weights, split_head

torch.set_num_threads(1)
backends.set_num_threads(1)  # tiny matrices: threads only cost (and oversubscribe a loaded CI machine)
transformers.logging.set_verbosity_error()

# Head short name (erniem_np.testing) -> HF class name; the same names are ours (goldens.MODEL_CLASS).
HF_CLASS = {
    "base": "ErnieMModel",
    "seq_cls": "ErnieMForSequenceClassification",
    "seq_cls_reg": "ErnieMForSequenceClassification",
    "token_cls": "ErnieMForTokenClassification",
    "qa": "ErnieMForQuestionAnswering",
    "mc": "ErnieMForMultipleChoice",
    "ie": "ErnieMForInformationExtraction",
}


def live(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,  # reproducible in CI: the same examples every run
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        # no "explain" phase: on these composite draws it costs minutes per failure and adds little
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    )


# ============================================================================================ building models
def num_labels(head: str) -> int:
    return HEAD_LABELS.get(head, 2)


class PerBackend(dict):
    """One value per variant of ours ({"numba": ..., "numpy": ...}); reading an attribute maps over them
    (``outs.logits`` is a PerBackend of the logits)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return PerBackend({b: getattr(v, name) for b, v in self.items()})


PLAIN = "numba/plain"  # the numba backend called without output_attentions / output_hidden_states


def build_pair(cfg_dict: dict, weights: dict, head: str):
    """(HF model in eval mode, our model on each backend) of one class with the same weights; HF loads with
    strict=True, ours with the class constructor."""
    cfg = dict(cfg_dict, num_labels=num_labels(head))
    sd = split_head(weights, None if head == "base" else head)
    hf = getattr(transformers, HF_CLASS[head])(transformers.ErnieMConfig(**cfg))
    hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    hf.eval()
    config = ErnieMConfig.from_dict(cfg, flavor="hf")
    ours = PerBackend({b: MODEL_CLASS[head](config, sd, backend=b) for b in backends.FLOAT_BACKENDS})
    return hf, ours


def to_torch(kwargs: dict) -> dict:
    """Copies, never views: HF adds 2 to position_ids in place (the clone keeps our array intact)."""
    out = {}
    for k, v in kwargs.items():
        if v is None:
            continue
        if k == "past_key_values":
            out[k] = tuple((torch.tensor(a), torch.tensor(b)) for a, b in v)
        else:
            out[k] = torch.tensor(np.array(v))
    return out


def run_hf(model, kwargs: dict, **extra):
    with torch.no_grad():
        return model(**to_torch(kwargs), **extra, output_hidden_states=True, output_attentions=True,
                     return_dict=True)  # fmt: skip


def run_ours(models: PerBackend, kwargs: dict, plain: bool = True, **extra) -> PerBackend:
    """Each backend's outputs with hidden states and attentions, and (``plain``) numba's without them."""
    frozen = {k: np.array(v, copy=True) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    kw = {k: v for k, v in kwargs.items() if v is not None}
    outs = PerBackend({b: m(**kw, **extra, output_hidden_states=True, output_attentions=True)
                       for b, m in models.items()})  # fmt: skip
    if plain and "numba" in models:
        outs[PLAIN] = models["numba"](**kw, **extra)
    for k, v in frozen.items():  # we never mutate the caller's arrays (HF does, for position_ids)
        assert np.array_equal(kwargs[k], v), f"our forward modified the caller's {k}"
    return outs


# ============================================================================================ comparing
def _np(t):
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


class Report:
    """Collects every tensor out of tolerance; ``check()`` fails once with all of them (tensor + max error)."""

    def __init__(self, context: str = ""):
        self.context = context
        self.errors: list[str] = []

    def tensor(self, name: str, ours, ref, kind: str) -> None:
        if isinstance(ours, PerBackend):  # each of ours against HF (or against the same variant of ours)
            for b, o in ours.items():
                self.tensor(f"[{b}] {name}", o, ref[b] if isinstance(ref, PerBackend) else ref, kind)
            return
        ours, ref = _np(ours), _np(ref)
        if ours is None or ref is None:
            if (ours is None) != (ref is None):
                self.errors.append(f"{name}: ours is {'None' if ours is None else 'set'}, "
                                   f"HF is {'None' if ref is None else 'set'}")  # fmt: skip
            return
        atol, rtol = PROFILE_FP32[kind]
        msg = compare(name, ours, ref, atol, rtol)
        if msg:
            self.errors.append(msg)

    def stack(self, prefix: str, ours, ref) -> None:
        """hidden_states and attentions: same count, then every layer."""
        if isinstance(ours, PerBackend):
            for b, o in ours.items():
                if b != PLAIN:  # called without them
                    self.stack(f"[{b}] {prefix}", o, ref)
            return
        kind = "probs" if prefix.endswith("attentions") else "hidden"
        if ours is None or ref is None or len(ours) != len(ref):
            self.errors.append(f"{prefix}: ours has {None if ours is None else len(ours)} tensors, "
                               f"HF {None if ref is None else len(ref)}")  # fmt: skip
            return
        for i, (a, b) in enumerate(zip(ours, ref)):
            self.tensor(f"{prefix}.{i}", a, b, kind)

    def encoder(self, prefix: str, ours, ref) -> None:
        self.stack(f"{prefix}hidden_states", ours.hidden_states, ref.hidden_states)
        self.stack(f"{prefix}attentions", ours.attentions, ref.attentions)

    def check(self) -> None:
        if self.errors:
            head = f"{self.context}: " if self.context else ""
            raise AssertionError(head + f"{len(self.errors)} tensor(s) differ from HF:\n  " + "\n  ".join(self.errors))


# ============================================================================================ strategies
@st.composite
def model_configs(draw, min_positions: int = 3) -> dict:
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(2, 16))
    vocab = draw(st.integers(5, 50))
    max_pos = draw(st.integers(min_positions, 24))
    cfg = {
        "vocab_size": vocab,
        "hidden_size": heads * head_dim,
        "num_hidden_layers": draw(st.integers(1, 3)),
        "num_attention_heads": heads,
        "intermediate_size": draw(st.integers(1, 64)),
        "hidden_act": draw(st.sampled_from(ACTIVATION_NAMES)),
        "max_position_embeddings": max_pos,
        "layer_norm_eps": draw(st.sampled_from([1e-5, 1e-12, 1e-3])),
        # HF also uses pad_token_id as padding_idx of the position table: it must be < max_position_embeddings
        "pad_token_id": draw(st.sampled_from([1, 0, min(vocab, max_pos) - 1])),
    }
    event(f"hidden_act={cfg['hidden_act']}")
    event(f"layers={cfg['num_hidden_layers']}")
    return cfg


MASK_FORMS = {"int": np.int64, "bool": np.bool_, "float": np.float32}
# How the inputs are given; each test runs every mode so that each gets its share of examples.
#   mask: input_ids + explicit 2-D mask; implicit: input_ids, no mask (HF masks ids == pad_token_id);
#   past: input_ids + past_key_values + explicit mask of length P + L; embeds: inputs_embeds + explicit mask.
MODES = ("mask", "implicit", "past", "embeds")
MODES_NO_PAST = ("mask", "implicit", "embeds")  # HF's QA, IE and multiple-choice heads take no past


@st.composite
def encoder_inputs(draw, cfg: dict, mode: str, batch: int | None = None) -> dict:
    """Keyword arguments of one forward call (NumPy), drawn to be valid for HF (its crashes are pinned in the
    quirk tests): past and inputs_embeds always come with an explicit 2-D mask of length P + L."""
    T, V, pad = cfg["max_position_embeddings"], cfg["vocab_size"], cfg["pad_token_id"]
    nh, n_layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    H = cfg["hidden_size"]
    d = H // nh
    max_len = T - 2
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    B = batch if batch is not None else draw(st.integers(1, 3))
    use_past = mode == "past"  # needs max_len >= 2 (scenarios() draws max_position_embeddings >= 4)
    use_embeds = mode == "embeds"
    P = draw(st.integers(1, max_len - 1)) if use_past else 0
    L = draw(st.integers(1, max_len - P))
    mask_form = "none" if mode == "implicit" else draw(st.sampled_from(sorted(MASK_FORMS)))

    # right padding: row b keeps lens[b] tokens (sometimes none: a fully-masked row)
    lens = np.array([draw(st.integers(1, L)) for _ in range(B)])
    if mask_form != "none":
        lens[np.array([draw(st.integers(0, 5)) == 0 for _ in range(B)])] = 0
    keep = np.arange(L)[None, :] < lens[:, None]  # [B, L]
    ids = rng.integers(0, V, size=(B, L))
    ids = np.where(keep, ids, pad).astype(np.int64)

    kw: dict = {}
    if use_embeds:
        kw["inputs_embeds"] = rng.standard_normal((B, L, H)).astype(np.float32)
    else:
        kw["input_ids"] = ids
    if mask_form != "none":
        past_part = rng.random((B, P)) < 0.8  # the cached keys: mostly attended
        kw["attention_mask"] = np.concatenate([past_part, keep], axis=1).astype(MASK_FORMS[mask_form])
    if use_past:
        kw["past_key_values"] = tuple(
            tuple(rng.standard_normal((B, nh, P, d)).astype(np.float32) for _ in "kv") for _ in range(n_layers)
        )
    pos_form = draw(st.sampled_from(["random", "default", "arange", "default"]))
    if pos_form == "arange":
        kw["position_ids"] = np.broadcast_to(np.arange(P, P + L, dtype=np.int64), (B, L)).copy()
    elif pos_form == "random":  # row id + 2 must exist: ids in [-2, T - 2)
        kw["position_ids"] = rng.integers(-2, T - 2, size=(B, L)).astype(np.int64)
    hm_form = draw(st.sampled_from(["layers", "none", "heads", "none"]))
    if hm_form != "none":
        shape = (nh,) if hm_form == "heads" else (n_layers, nh)
        kw["head_mask"] = rng.choice(np.array([0.0, 0.5, 1.0, 1.0, 1.7], dtype=np.float32), size=shape)
    # visible with --hypothesis-show-statistics: what the examples covered
    event(f"mask={mask_form}")
    event(f"B={B} P={P} L={L}")
    event(f"position_ids={pos_form}")
    event(f"head_mask={hm_form}")
    event(f"fully-masked row={bool((lens == 0).any())}")
    return kw


@st.composite
def scenarios(draw, mode: str):
    cfg = draw(model_configs(min_positions=4 if mode == "past" else 3))
    seed = draw(st.integers(0, 2**31 - 1))
    kw = draw(encoder_inputs(cfg, mode))
    return cfg, seed, kw


def weights_for(cfg, seed):
    return random_weights(cfg, seed, ffn_size=cfg["intermediate_size"])


def batch_and_length(kw):
    src = kw.get("input_ids", kw.get("inputs_embeds"))
    return src.shape[0], src.shape[1]


# ============================================================================================ base model
@pytest.mark.parametrize("mode", MODES)
@live(60)
@given(data=st.data())
def test_base_model_matches_hf(mode, data):
    cfg, seed, kw = data.draw(scenarios(mode), label="scenario")
    hf, ours = build_pair(cfg, weights_for(cfg, seed), "base")
    ref, out = run_hf(hf, kw), run_ours(ours, kw)
    r = Report(f"ErnieMModel cfg={cfg} seed={seed} inputs={sorted(kw)}")
    r.tensor("last_hidden_state", out.last_hidden_state, ref.last_hidden_state, "hidden")
    r.tensor("pooler_output", out.pooler_output, ref.pooler_output, "hidden")
    r.encoder("", out, ref)
    r.check()


@pytest.mark.parametrize("act", ACTIVATION_NAMES)
def test_every_activation_matches_hf(act):
    """Each hidden_act HF accepts, on a padded batch (hypothesis may not draw all of them)."""
    cfg = {"vocab_size": 30, "hidden_size": 12, "num_hidden_layers": 2, "num_attention_heads": 3,
           "intermediate_size": 37, "hidden_act": act, "max_position_embeddings": 16}  # fmt: skip
    rng = np.random.default_rng(7)
    ids = rng.integers(2, 30, size=(2, 9))
    ids[1, 6:] = 1
    mask = (ids != 1).astype(np.int64)
    for head in ("base", "seq_cls"):
        hf, ours = build_pair(cfg, weights_for(cfg, 11), head)
        kw = {"input_ids": ids, "attention_mask": mask}
        ref, out = run_hf(hf, kw), run_ours(ours, kw)
        r = Report(f"{HF_CLASS[head]} hidden_act={act!r}")
        if head == "base":
            r.tensor("last_hidden_state", out.last_hidden_state, ref.last_hidden_state, "hidden")
            r.tensor("pooler_output", out.pooler_output, ref.pooler_output, "hidden")
        else:
            r.tensor("logits", out.logits, ref.logits, "logits")
        r.encoder("", out, ref)
        r.check()


# ============================================================================================ heads
def _head_run(head, cfg, seed, kw, **labels):
    """(HF output, our output) of one head class, labels given to both."""
    hf, ours = build_pair(cfg, weights_for(cfg, seed), head)
    return run_hf(hf, kw, **{k: torch.tensor(v) for k, v in labels.items()}), run_ours(ours, kw, **labels)


@pytest.mark.parametrize("mode", MODES)
@live(40)
@given(data=st.data())
def test_sequence_classification_matches_hf(mode, data):
    cfg, seed, kw = data.draw(scenarios(mode), label="scenario")
    B, _ = batch_and_length(kw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = weights_for(cfg, seed)
    hf, ours = build_pair(cfg, w, "seq_cls")
    r = Report(f"ErnieMForSequenceClassification cfg={cfg} seed={seed} inputs={sorted(kw)}")

    ref, out = run_hf(hf, kw), run_ours(ours, kw)  # no labels
    r.tensor("logits", out.logits, ref.logits, "logits")
    r.encoder("", out, ref)
    assert ref.loss is None and all(v is None for v in out.loss.values())

    int_labels = rng.integers(0, 3, size=(B,)).astype(np.int64)  # -> single_label_classification (CE)
    hf.config.problem_type = None  # HF stores the inferred problem type in its config; start afresh each call
    ref = run_hf(hf, kw, labels=torch.tensor(int_labels))
    out = run_ours(ours, kw, labels=int_labels)
    r.tensor("loss[int labels, CE]", out.loss, ref.loss, "loss")
    r.tensor("logits[int labels]", out.logits, ref.logits, "logits")

    multi = (rng.random((B, 3)) < 0.5).astype(np.float32)  # float labels -> multi_label_classification (BCE)
    hf.config.problem_type = None
    ref = run_hf(hf, kw, labels=torch.tensor(multi))
    out = run_ours(ours, kw, labels=multi)
    r.tensor("loss[float multi-label, BCE]", out.loss, ref.loss, "loss")

    hf_reg, ours_reg = build_pair(cfg, w, "seq_cls_reg")  # num_labels=1 -> regression (MSE)
    target = rng.standard_normal((B,)).astype(np.float32)
    ref = run_hf(hf_reg, kw, labels=torch.tensor(target))
    out = run_ours(ours_reg, kw, labels=target)
    r.tensor("regression logits", out.logits, ref.logits, "logits")
    r.tensor("loss[regression, MSE]", out.loss, ref.loss, "loss")
    r.check()


@pytest.mark.parametrize("mode", MODES)
@live(40)
@given(data=st.data())
def test_token_classification_matches_hf(mode, data):
    cfg, seed, kw = data.draw(scenarios(mode), label="scenario")
    B, L = batch_and_length(kw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    labels = rng.integers(0, 5, size=(B, L)).astype(np.int64)
    labels[rng.random((B, L)) < 0.3] = -100  # ignored (can be every label: NaN loss in both)
    ref, out = _head_run("token_cls", cfg, seed, kw, labels=labels)
    r = Report(f"ErnieMForTokenClassification cfg={cfg} seed={seed} inputs={sorted(kw)}")
    r.tensor("logits", out.logits, ref.logits, "logits")
    r.tensor("loss", out.loss, ref.loss, "loss")
    r.encoder("", out, ref)
    r.check()


@pytest.mark.parametrize("mode", MODES_NO_PAST)
@live(40)
@given(data=st.data())
def test_question_answering_matches_hf(mode, data):
    cfg, seed, kw = data.draw(scenarios(mode), label="scenario")
    B, L = batch_and_length(kw)
    # positions outside [0, L) are clamped to [0, L] and L is ignored
    start = np.array([data.draw(st.integers(-2, L + 3)) for _ in range(B)], dtype=np.int64)
    end = np.array([data.draw(st.integers(-2, L + 3)) for _ in range(B)], dtype=np.int64)
    if data.draw(st.booleans()):  # [B, 1] is squeezed
        start, end = start[:, None], end[:, None]
    ref, out = _head_run("qa", cfg, seed, kw, start_positions=start, end_positions=end)
    r = Report(f"ErnieMForQuestionAnswering cfg={cfg} seed={seed} inputs={sorted(kw)} start={start} end={end}")
    r.tensor("start_logits", out.start_logits, ref.start_logits, "logits")
    r.tensor("end_logits", out.end_logits, ref.end_logits, "logits")
    r.tensor("loss", out.loss, ref.loss, "loss")
    r.encoder("", out, ref)
    r.check()


@pytest.mark.parametrize("mode", MODES_NO_PAST)
@live(40)
@given(data=st.data())
def test_information_extraction_matches_hf(mode, data):
    cfg, seed, kw = data.draw(scenarios(mode), label="scenario")
    B, L = batch_and_length(kw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    soft = data.draw(st.booleans())
    draw_t = (lambda: rng.random((B, L))) if soft else (lambda: (rng.random((B, L)) < 0.2) * 1.0)
    start, end = draw_t().astype(np.float32), draw_t().astype(np.float32)
    if data.draw(st.booleans()):  # [B, L, 1] targets are squeezed to [B, L]
        start, end = start[..., None], end[..., None]
    if L == 1 and start.ndim == 2:
        # QUIRK (HF): [B, 1] targets are squeezed to [B] while the logits stay [B, 1] -> BCE shape error.
        hf, ours = build_pair(cfg, weights_for(cfg, seed), "ie")
        with pytest.raises(ValueError):
            run_hf(hf, kw, start_positions=torch.tensor(start), end_positions=torch.tensor(end))
        for model in ours.values():
            with pytest.raises(ValueError):
                model(**kw, start_positions=start, end_positions=end)
        start = end = None  # compare the logits alone
    labels = {} if start is None else {"start_positions": start, "end_positions": end}
    ref, out = _head_run("ie", cfg, seed, kw, **labels)
    r = Report(f"ErnieMForInformationExtraction cfg={cfg} seed={seed} inputs={sorted(kw)}")
    r.tensor("start_logits", out.start_logits, ref.start_logits, "logits")  # HF: logits, not probabilities
    r.tensor("end_logits", out.end_logits, ref.end_logits, "logits")
    r.tensor("start_prob", out.start_prob, torch.sigmoid(ref.start_logits), "logits")
    r.tensor("end_prob", out.end_prob, torch.sigmoid(ref.end_logits), "logits")
    r.tensor("loss", out.loss, ref.loss, "loss")
    r.encoder("", out, ref)
    r.check()


@pytest.mark.parametrize("mode", MODES_NO_PAST)
@live(40)
@given(cfg=model_configs(), seed=st.integers(0, 2**31 - 1), B=st.integers(1, 3), C=st.integers(1, 3),
       data=st.data())  # fmt: skip
def test_multiple_choice_matches_hf(mode, cfg, seed, B, C, data):
    flat = data.draw(encoder_inputs(cfg, mode, batch=B * C), label="inputs")  # [B*C, ...] -> [B, C, ...]
    kw = {k: (v if k == "head_mask" else v.reshape((B, C) + v.shape[1:])) for k, v in flat.items()}
    labels = np.array([data.draw(st.integers(0, C - 1)) for _ in range(B)], dtype=np.int64)
    ref, out = _head_run("mc", cfg, seed, kw, labels=labels)
    r = Report(f"ErnieMForMultipleChoice cfg={cfg} seed={seed} B={B} C={C} inputs={sorted(kw)}")
    r.tensor("logits", out.logits, ref.logits, "logits")
    r.tensor("loss", out.loss, ref.loss, "loss")
    r.encoder("", out, ref)
    r.check()


# ============================================================================================ checkpoints
SMALL = {"vocab_size": 40, "hidden_size": 12, "num_hidden_layers": 2, "num_attention_heads": 3,
         "intermediate_size": 19, "hidden_act": "gelu", "max_position_embeddings": 20}  # fmt: skip
HEADS = ("base", "seq_cls", "mc", "token_cls", "qa", "ie")


def _sample_inputs(head):
    rng = np.random.default_rng(3)
    ids = rng.integers(2, SMALL["vocab_size"], size=(2, 3, 8) if head == "mc" else (2, 8))
    ids[..., 1, 5:] = 1
    return {"input_ids": ids.astype(np.int64), "attention_mask": (ids != 1).astype(np.int64)}


def _compare_outputs(r: Report, head, out, ref):
    names = {"base": ("last_hidden_state", "pooler_output"), "qa": ("start_logits", "end_logits"),
             "ie": ("start_logits", "end_logits")}.get(head, ("logits",))  # fmt: skip
    for name in names:
        r.tensor(name, getattr(out, name), getattr(ref, name), "hidden" if head == "base" else "logits")
    r.encoder("", out, ref)


@pytest.mark.parametrize("head", HEADS)
def test_our_save_pretrained_loads_in_hf(head, tmp_path):
    cfg = dict(SMALL, num_labels=num_labels(head))
    sd = split_head(weights_for(SMALL, 5), None if head == "base" else head)
    config = ErnieMConfig.from_dict(cfg, flavor="hf")
    ours = PerBackend({b: MODEL_CLASS[head](config, sd, backend=b) for b in backends.FLOAT_BACKENDS})
    ours["numba"].save_pretrained(tmp_path)
    hf, info = getattr(transformers, HF_CLASS[head]).from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    assert type(hf).__name__ == HF_CLASS[head]
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[key], f"HF {HF_CLASS[head]}.from_pretrained of our checkpoint: {key} = {info[key]}"
    assert hf.config.num_labels == num_labels(head)
    kw = _sample_inputs(head)
    r = Report(f"ours.save_pretrained -> HF {HF_CLASS[head]}")
    _compare_outputs(r, head, run_ours(ours, kw), run_hf(hf, kw))
    r.check()


@pytest.mark.parametrize("head", HEADS)
def test_hf_save_pretrained_loads_in_ours(head, tmp_path):
    hf, _ = build_pair(SMALL, weights_for(SMALL, 6), head)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class's own checkpoint: no unused weights to warn about
        ours = PerBackend({b: MODEL_CLASS[head].from_pretrained(tmp_path, backend=b) for b in backends.FLOAT_BACKENDS})
    for model in ours.values():
        assert model.config.flavor == "hf"
        assert model.config.num_labels == num_labels(head)
    kw = _sample_inputs(head)
    r = Report(f"HF {HF_CLASS[head]}.save_pretrained -> ours")
    _compare_outputs(r, head, run_ours(ours, kw), run_hf(hf, kw))
    r.check()


# ============================================================================================ HF quirks
QUIRK_CFG = dict(SMALL, pad_token_id=1)


def _base_pair(seed=9):
    return build_pair(QUIRK_CFG, weights_for(QUIRK_CFG, seed), "base")


def test_fully_masked_row_is_uniform_like_hf():
    """HF fills masked keys with float32-min: a row with every key masked collapses to uniform attention."""
    hf, ours = _base_pair()
    ids = np.array([[0, 5, 6, 7, 2, 1], [0, 8, 9, 2, 1, 1]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=np.int64)
    kw = {"input_ids": ids, "attention_mask": mask}
    ref, out = run_hf(hf, kw), run_ours(ours, kw)
    uniform = np.full((QUIRK_CFG["num_attention_heads"], 6, 6), 1 / 6)
    for i, a in enumerate(ref.attentions):  # pin HF's behaviour itself
        msg = compare(f"HF attentions.{i}[row 1] vs uniform", _np(a)[1], uniform, *PROFILE_FP32["probs"])
        assert msg is None, msg
    for b, o in out.items():
        for i, a in enumerate(o.attentions or ()):
            msg = compare(f"[{b}] attentions.{i}[row 1] vs uniform", a[1], uniform, *PROFILE_FP32["probs"])
            assert msg is None, msg
    r = Report("fully-masked row")
    r.tensor("last_hidden_state", out.last_hidden_state, ref.last_hidden_state, "hidden")
    r.tensor("pooler_output", out.pooler_output, ref.pooler_output, "hidden")
    r.encoder("", out, ref)
    r.check()

    # all-pad input without a mask: the implicit mask masks every key -> uniform as well
    pads = np.ones((1, 4), dtype=np.int64)
    ref, out = run_hf(hf, {"input_ids": pads}), run_ours(ours, {"input_ids": pads})
    r = Report("all-pad input, implicit mask")
    r.tensor("attentions.0 vs uniform (HF)", ref.attentions[0], np.full((1, 3, 4, 4), 0.25), "probs")
    r.encoder("", out, ref)
    r.tensor("last_hidden_state", out.last_hidden_state, ref.last_hidden_state, "hidden")
    r.check()


@pytest.mark.parametrize("pad", [1, 0, 7])
def test_implicit_mask_equals_explicit_pad_mask(pad):
    """HF with no mask masks ids == pad_token_id (not [CLS] = 0): the same as the mask (ids != pad)."""
    cfg = dict(QUIRK_CFG, pad_token_id=pad)
    hf, ours = build_pair(cfg, weights_for(cfg, 12), "base")
    ids = np.array([[0, 5, 6, pad, 8, 2, pad, pad], [0, 9, 3, 4, 2, pad, pad, pad]], dtype=np.int64)
    explicit = {"input_ids": ids, "attention_mask": (ids != pad).astype(np.int64)}
    implicit = {"input_ids": ids}
    ref_i, ref_e = run_hf(hf, implicit), run_hf(hf, explicit)
    out_i, out_e = run_ours(ours, implicit), run_ours(ours, explicit)
    r = Report(f"implicit mask, pad_token_id={pad}")
    r.tensor("HF implicit vs HF explicit: last_hidden_state", ref_i.last_hidden_state, ref_e.last_hidden_state,
             "hidden")  # fmt: skip
    r.tensor("ours implicit vs HF explicit: last_hidden_state", out_i.last_hidden_state, ref_e.last_hidden_state,
             "hidden")  # fmt: skip
    r.tensor("ours implicit vs ours explicit: last_hidden_state", out_i.last_hidden_state, out_e.last_hidden_state,
             "hidden")  # fmt: skip
    r.encoder("ours implicit vs HF implicit: ", out_i, ref_i)
    r.check()
    # [CLS] (id 0) is attended when it is not the pad id; pads get exactly zero weight
    probs = _np(ref_i.attentions[0])  # [B, nh, L, L]
    for b in range(len(ids)):
        assert (probs[b][..., ids[b] == pad] == 0).all(), "HF gives weight to a pad key"
        if pad != 0:
            assert (probs[b][..., 0] > 0).all(), "HF masks [CLS] (id 0) although it is not the pad id"
        for backend, o in out_i.items():
            if backend != PLAIN:
                np.testing.assert_array_equal(o.attentions[0][b][..., ids[b] == pad], 0, err_msg=backend)


def test_position_ids_mutated_in_place_by_hf_not_by_us():
    """HF adds 2 to the caller's position_ids tensor; a reused tensor shifts again. We never mutate."""
    hf, ours = _base_pair()
    ids = np.array([[0, 5, 6, 7, 2]], dtype=np.int64)
    pos_np = np.arange(5, dtype=np.int64)[None]
    pos_t = torch.tensor(pos_np)
    with torch.no_grad():
        first = hf(input_ids=torch.tensor(ids), position_ids=pos_t).last_hidden_state
        assert pos_t.tolist() == [[2, 3, 4, 5, 6]], "HF no longer shifts position_ids in place"
        second = hf(input_ids=torch.tensor(ids), position_ids=pos_t).last_hidden_state
    assert not torch.allclose(first, second), "HF's second call with the shifted tensor should differ"
    for b, model in ours.items():
        out1 = model(ids, position_ids=pos_np).last_hidden_state
        out2 = model(ids, position_ids=pos_np).last_hidden_state
        assert pos_np.tolist() == [[0, 1, 2, 3, 4]], f"[{b}] our forward modified position_ids"
        np.testing.assert_array_equal(out1, out2)
        msg = compare(f"[{b}] last_hidden_state (explicit arange positions)", out1, _np(first),
                      *PROFILE_FP32["hidden"])  # fmt: skip
        assert msg is None, msg


def test_past_without_mask_crashes_in_hf_and_ours_matches_equivalent_mask():
    """HF cannot use past_key_values or inputs_embeds without an explicit mask (it crashes). We extend both:
    past keys attended + implicit pad mask, and no mask without ids. Pin HF's crash and check our extension
    against HF given the equivalent explicit mask."""
    hf, ours = _base_pair()
    rng = np.random.default_rng(4)
    nh, d, P = 3, 4, 3
    ids = np.array([[5, 6, 1, 1], [7, 8, 9, 2]], dtype=np.int64)
    past = tuple((rng.standard_normal((2, nh, P, d)).astype(np.float32),
                  rng.standard_normal((2, nh, P, d)).astype(np.float32)) for _ in range(2))  # fmt: skip
    with pytest.raises(RuntimeError):
        run_hf(hf, {"input_ids": ids, "past_key_values": past})
    mask = np.concatenate([np.ones((2, P), np.int64), (ids != 1).astype(np.int64)], axis=1)
    ref = run_hf(hf, {"input_ids": ids, "past_key_values": past, "attention_mask": mask})
    out = run_ours(ours, {"input_ids": ids, "past_key_values": past})
    r = Report("past without a mask")
    r.tensor("last_hidden_state", out.last_hidden_state, ref.last_hidden_state, "hidden")
    r.encoder("", out, ref)
    r.check()

    emb = rng.standard_normal((2, 4, 12)).astype(np.float32)
    with pytest.raises(AttributeError):
        run_hf(hf, {"inputs_embeds": emb})
    ref = run_hf(hf, {"inputs_embeds": emb, "attention_mask": np.ones((2, 4), np.int64)})
    out = run_ours(ours, {"inputs_embeds": emb})
    r = Report("inputs_embeds without a mask")
    r.tensor("last_hidden_state", out.last_hidden_state, ref.last_hidden_state, "hidden")
    r.encoder("", out, ref)
    r.check()


def test_hf_returns_no_cache_and_ours_feeds_back_like_hf():
    """HF ignores use_cache (no cache returned). Ours returns the keys/values (as Paddle does); fed back as
    past_key_values they give what HF gives for the same tensors."""
    hf, ours = _base_pair()
    ids = np.array([[0, 5, 6, 2], [0, 7, 2, 1]], dtype=np.int64)
    mask = (ids != 1).astype(np.int64)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), use_cache=True)
    assert ref.past_key_values is None, "HF now returns a cache"
    nxt = np.array([[8, 9, 2], [10, 2, 1]], dtype=np.int64)
    for b, model in ours.items():
        out = model(ids, attention_mask=mask, use_cache=True)
        assert len(out.past_key_values) == 2 and out.past_key_values[0][0].shape == (2, 3, 4, 4), b
        kw = {"input_ids": nxt, "past_key_values": out.past_key_values,
              "attention_mask": np.concatenate([mask, (nxt != 1).astype(np.int64)], axis=1)}  # fmt: skip
        ref2, out2 = run_hf(hf, kw), run_ours(ours, kw)
        r = Report(f"second call with the cache [{b}] returned")
        r.tensor("last_hidden_state", out2.last_hidden_state, ref2.last_hidden_state, "hidden")
        r.encoder("", out2, ref2)
        r.check()
