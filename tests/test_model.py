"""The model's API, its behaviour per flavor, and its errors (no reference library needed)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erniem_np import (
    ErnieMConfig,
    ErnieMForInformationExtraction,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)
from erniem_np.testing import random_weights, split_head

CFG = dict(vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=30,
           max_position_embeddings=16)
HEADS = {
    "seq_cls": ErnieMForSequenceClassification, "token_cls": ErnieMForTokenClassification,
    "qa": ErnieMForQuestionAnswering, "mc": ErnieMForMultipleChoice, "ie": ErnieMForInformationExtraction,
}  # fmt: skip


def make(cls=ErnieMModel, head=None, flavor="hf", dtype=np.float32, backend="numpy", **cfg):
    d = {**CFG, **cfg}
    n_labels = {"seq_cls": 3, "token_cls": 5, "qa": 2, "mc": 1, "ie": 1}.get(head, 2)
    config = ErnieMConfig.from_dict({**d, "num_labels": n_labels}, flavor=flavor)
    return cls(config, split_head(random_weights(d, seed=3), head), dtype=dtype, backend=backend)


def ids_batch(lengths, L, V=CFG["vocab_size"], seed=0):
    rng = np.random.default_rng(seed)
    ids = np.ones((len(lengths), L), np.int64)
    mask = np.zeros((len(lengths), L), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = np.concatenate([[0], rng.integers(3, V, n - 2), [2]]) if n >= 2 else [0]
        mask[i, :n] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------------ outputs
def test_outputs_have_hf_names_shapes_and_dtypes():
    model = make()
    ids, mask = ids_batch([7, 5], 7)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True,
                use_cache=True)
    assert out.last_hidden_state.shape == (2, 7, 24) and out.last_hidden_state.dtype == np.float32
    assert out.pooler_output.shape == (2, 24)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1] is out.last_hidden_state
    assert [a.shape for a in out.attentions] == [(2, 3, 7, 7)] * 2
    assert [k.shape for k, v in out.past_key_values] == [(2, 3, 7, 8)] * 2
    assert out["pooler_output"] is out.pooler_output
    assert out.keys() == ["last_hidden_state", "pooler_output", "hidden_states", "attentions", "past_key_values"]
    plain = model(input_ids=ids, attention_mask=mask)
    assert plain.hidden_states is None and plain.attentions is None and plain.past_key_values is None


def test_nested_lists_and_arrays_give_the_same_result():
    model = make()
    ids, mask = ids_batch([6, 4], 6)
    a = model(input_ids=ids, attention_mask=mask).last_hidden_state
    b = model(input_ids=ids.tolist(), attention_mask=mask.tolist()).last_hidden_state
    np.testing.assert_array_equal(a, b)


def test_position_ids_of_the_caller_are_never_mutated():
    # QUIRK of HF: it adds 2 in place, so a reused tensor drifts; ours must not
    model = make()
    ids, mask = ids_batch([6], 6)
    pos = np.arange(6)[None].copy()
    first = model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    np.testing.assert_array_equal(pos, np.arange(6)[None])
    second = model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    np.testing.assert_array_equal(first, second)
    default = model(input_ids=ids, attention_mask=mask).last_hidden_state
    np.testing.assert_array_equal(first, default)


def test_position_offset_is_two():
    # the embeddings read row id + 2: zeroing rows 0 and 1 of the table changes nothing by default
    model = make()
    ids, mask = ids_batch([5], 5)
    before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    model.params["embeddings"]["position_embeddings"]["weight"][:2] = 0
    np.testing.assert_array_equal(before, model(input_ids=ids, attention_mask=mask).last_hidden_state)
    model.params["embeddings"]["position_embeddings"]["weight"][2] += 1
    assert not np.array_equal(before, model(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_float64_is_float64_and_close_to_float32():
    ids, mask = ids_batch([6, 3], 6)
    a = make(dtype=np.float32)(input_ids=ids, attention_mask=mask).last_hidden_state
    b = make(dtype=np.float64)(input_ids=ids, attention_mask=mask).last_hidden_state
    assert b.dtype == np.float64
    np.testing.assert_allclose(a, b, atol=2e-5)


# ------------------------------------------------------------------------------------------------ masks
def test_implicit_mask_per_flavor():
    ids, _ = ids_batch([7, 4], 7)
    hf, pd = make(flavor="hf"), make(flavor="paddle")
    # hf: ids == pad_token_id (1) masked
    np.testing.assert_array_equal(hf(input_ids=ids).last_hidden_state,
                                  hf(input_ids=ids, attention_mask=ids != 1).last_hidden_state)
    # paddle: ids == 0 ([CLS]) masked, padding attended
    np.testing.assert_array_equal(pd(input_ids=ids).last_hidden_state,
                                  pd(input_ids=ids, attention_mask=ids != 0).last_hidden_state)
    probs = pd(input_ids=ids, output_attentions=True).attentions[0]
    assert (probs[..., 0] == 0).all() and (probs[1, :, :, 4:] > 0).all()


def test_fully_masked_row_per_flavor():
    ids, mask = ids_batch([6, 6], 6)
    mask[1] = 0
    hf = make(flavor="hf")(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0]
    np.testing.assert_allclose(hf[1], 1 / 6, rtol=1e-6)  # HF: uniform
    pd = make(flavor="paddle")(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0]
    unmasked = make(flavor="paddle")(input_ids=ids, attention_mask=np.ones_like(mask), output_attentions=True)
    np.testing.assert_allclose(pd[1], unmasked.attentions[0][1], atol=2e-3)  # Paddle: the unmasked softmax
    assert not np.allclose(pd[1], 1 / 6, atol=1e-2)


@pytest.mark.parametrize("flavor", ["hf", "paddle"])
def test_3d_and_4d_masks_match_the_2d_mask(flavor):
    model = make(flavor=flavor)
    ids, mask = ids_batch([7, 4], 7)
    ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m3 = np.broadcast_to(mask[:, None, :], (2, 7, 7)).astype(bool)  # bool 3-D [B, L, Lk]
    np.testing.assert_allclose(model(input_ids=ids, attention_mask=m3).last_hidden_state, ref, atol=1e-6)
    fill = np.float32(np.finfo(np.float32).min) if flavor == "hf" else np.float32(-1e4)
    m4 = ((1 - mask) * fill).astype(np.float32)[:, None, None, :]  # additive 4-D [B, 1, 1, Lk]
    np.testing.assert_array_equal(model(input_ids=ids, attention_mask=m4).last_hidden_state, ref)


def test_4d_mask_can_differ_per_query_row():
    model = make()
    ids, _ = ids_batch([6], 6)
    causal = np.tril(np.ones((6, 6), bool))[None, None]
    probs = model(input_ids=ids, attention_mask=causal, output_attentions=True).attentions[0]
    assert (probs[0, :, np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0).all()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.lists(st.integers(2, 8), min_size=1, max_size=3), st.integers(0, 5))
def test_hf_flavor_is_padding_invariant(lengths, extra):
    # with pads masked (explicitly or by the hf implicit mask) the real tokens do not see the padding length
    model = make()
    L = max(lengths)
    ids, mask = ids_batch(lengths, L)
    ids2, mask2 = ids_batch(lengths, L + extra)
    a = model(input_ids=ids, attention_mask=mask).last_hidden_state
    b = model(input_ids=ids2).last_hidden_state
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(a[i, :n], b[i, :n], atol=1e-5)


def test_paddle_implicit_mask_attends_padding():
    # QUIRK (Paddle, and so UIE-M): pads are attended, so outputs depend on the padding length
    model = make(flavor="paddle")
    a = model(input_ids=ids_batch([5], 5)[0]).last_hidden_state
    b = model(input_ids=ids_batch([5], 9)[0]).last_hidden_state
    assert np.abs(a[0, :5] - b[0, :5]).max() > 1e-3


# ------------------------------------------------------------------------------------------------ heads
def test_head_mask_zeroes_a_head():
    model = make()
    ids, mask = ids_batch([6], 6)
    hm = np.ones((2, 3), np.float32)
    hm[0, 1] = 0
    out = model(input_ids=ids, attention_mask=mask, head_mask=hm, output_attentions=True)
    assert (out.attentions[0][:, 1] == 0).all() and (out.attentions[1][:, 1] > 0).any()
    one_d = model(input_ids=ids, attention_mask=mask, head_mask=np.ones(3), output_attentions=True)
    np.testing.assert_array_equal(one_d.last_hidden_state, model(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_cache_is_returned_and_continues():
    model = make()
    ids, mask = ids_batch([5, 5], 5)
    first = model(input_ids=ids, attention_mask=mask, use_cache=True)
    nxt = ids_batch([3, 3], 3, seed=1)[0]
    out = model(input_ids=nxt, attention_mask=np.ones((2, 8)), past_key_values=first.past_key_values,
                use_cache=True, output_attentions=True)
    for (pk, pv), (k, v) in zip(first.past_key_values, out.past_key_values):
        np.testing.assert_array_equal(k[:, :, :5], pk)
        np.testing.assert_array_equal(v[:, :, :5], pv)
    assert out.attentions[0].shape == (2, 3, 3, 8)
    # default positions continue after the cache: the same as explicit positions 5, 6, 7
    explicit = model(input_ids=nxt, attention_mask=np.ones((2, 8)), past_key_values=first.past_key_values,
                     position_ids=np.arange(5, 8)[None].repeat(2, 0))
    np.testing.assert_array_equal(out.last_hidden_state, explicit.last_hidden_state)


def test_inputs_embeds_equals_the_ids_path():
    model = make()
    ids, mask = ids_batch([6, 4], 6)
    emb = model.params["embeddings"]["word_embeddings"]["weight"][ids]
    np.testing.assert_array_equal(model(inputs_embeds=emb, attention_mask=mask).last_hidden_state,
                                  model(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_multiple_choice_is_the_flattened_sequence_classifier():
    mc = make(ErnieMForMultipleChoice, "mc")
    ids, mask = ids_batch([6, 5, 4, 6, 3, 2], 6)
    out = mc(input_ids=ids.reshape(2, 3, 6), attention_mask=mask.reshape(2, 3, 6), labels=[2, 0])
    pooled = make()(input_ids=ids, attention_mask=mask).pooler_output
    w = mc.params["classifier"]
    np.testing.assert_allclose(out.logits, (pooled @ w["weight"].T + w["bias"]).reshape(2, 3), atol=1e-6)
    lse = np.log(np.exp(out.logits).sum(-1))
    np.testing.assert_allclose(out.loss, np.mean(lse - out.logits[[0, 1], [2, 0]]), rtol=1e-6)


def test_losses_by_problem_type():
    ids, mask = ids_batch([6, 4, 5], 6)
    model = make(ErnieMForSequenceClassification, "seq_cls")
    out = model(input_ids=ids, attention_mask=mask, labels=[0, 2, 1])
    lg = out.logits.astype(np.float64)
    ce = np.mean(np.log(np.exp(lg).sum(-1)) - lg[[0, 1, 2], [0, 2, 1]])
    np.testing.assert_allclose(out.loss, ce, rtol=1e-5)
    y = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], np.float32)
    multi = model(input_ids=ids, attention_mask=mask, labels=y).loss
    p = 1 / (1 + np.exp(-lg))
    np.testing.assert_allclose(multi, np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))), rtol=1e-5)


def test_qa_loss_clamps_and_ignores_positions_past_the_input():
    model = make(ErnieMForQuestionAnswering, "qa")
    ids, mask = ids_batch([6, 6], 6)
    out = model(input_ids=ids, attention_mask=mask, start_positions=[1, 99], end_positions=[2, 3])
    only = model(input_ids=ids[:1], attention_mask=mask[:1], start_positions=[1], end_positions=[2])
    s = out.start_logits[0].astype(np.float64)
    start0 = np.log(np.exp(s).sum()) - s[1]
    e = out.end_logits.astype(np.float64)
    end = np.mean(np.log(np.exp(e).sum(-1)) - e[[0, 1], [2, 3]])
    np.testing.assert_allclose(out.loss, (start0 + end) / 2, rtol=1e-5)
    assert np.isfinite(only.loss)
    nan = model(input_ids=ids, attention_mask=mask, start_positions=[50, 60], end_positions=[2, 3]).loss
    assert np.isnan(nan)  # HF (torch): every start position ignored -> NaN mean
    zero_ok = make(ErnieMForQuestionAnswering, "qa", flavor="paddle")(
        input_ids=ids, attention_mask=mask, start_positions=[50, 60], end_positions=[2, 3]).loss
    assert np.isfinite(zero_ok)  # Paddle: 0 for the ignored side


def test_information_extraction_gives_logits_and_probabilities():
    model = make(ErnieMForInformationExtraction, "ie")
    ids, mask = ids_batch([6, 4], 6)
    out = model(input_ids=ids, attention_mask=mask, start_positions=np.eye(2, 6), end_positions=np.eye(2, 6, 1))
    np.testing.assert_allclose(out.start_prob, 1 / (1 + np.exp(-out.start_logits)), rtol=1e-6)
    assert out.loss.shape == () and np.isfinite(out.loss)


# ------------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("head", [None, *HEADS])
def test_save_then_load_round_trips_exactly(tmp_path, head):
    cls = HEADS.get(head, ErnieMModel)
    model = make(cls, head, flavor="paddle")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [cls.architecture] and config["model_type"] == "ernie_m"
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.config.flavor == "paddle"
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v, err_msg=k)


@pytest.mark.parametrize("head", [None, "seq_cls"])
def test_numba_packs_the_encoder_linears_once_and_keeps_the_state_dict(tmp_path, head):
    """The numba layer set holds each encoder Linear weight packed (float32; float64 keeps arrays); the state
    dict keeps the weights as stored, including after the mapped pages under them were released, and the
    outputs are the numpy backend's."""
    from erniem_np.kernels.gemm import PackedWeight

    cls = HEADS.get(head, ErnieMModel)
    make(cls, head).save_pretrained(tmp_path)
    model = cls.from_pretrained(tmp_path, backend="numba")  # memory-mapped: the packed sources are released
    layer = model.base_params["encoder"]["layers"][0]
    names = {"q_proj": layer["self_attn"]["self_attn"]["q_proj"], "out_proj": layer["self_attn"]["out_proj"],
             "linear1": layer["linear1"], "linear2": layer["linear2"]}  # fmt: skip
    assert all(isinstance(p["weight"], PackedWeight) for p in names.values())
    assert isinstance(model.base_params["pooler"]["dense"]["weight"], PackedWeight)
    stored = cls.from_pretrained(tmp_path, backend="numpy", mmap=False).state_dict()
    for k, v in model.state_dict().items():
        assert isinstance(v, np.ndarray), k
        np.testing.assert_array_equal(v, stored[k], err_msg=k)
    stored_linear1 = stored[cls.base_prefix + "encoder.layers.0.linear1.weight"]
    np.testing.assert_array_equal(layer["linear1"]["weight"].unpack(), stored_linear1)
    ids, mask = ids_batch([7, 4], 7)
    got = model(input_ids=ids, attention_mask=mask)
    want = cls.from_pretrained(tmp_path, backend="numpy")(input_ids=ids, attention_mask=mask)
    key = "last_hidden_state" if head is None else "logits"
    np.testing.assert_allclose(got[key], want[key], atol=2e-5, rtol=1e-5)
    double = make(cls, head, dtype=np.float64, backend="numba")
    assert isinstance(double.base_params["encoder"]["layers"][0]["linear1"]["weight"], np.ndarray)


@pytest.mark.parametrize("backend", ["numpy", "numba", "int8"])
def test_state_dict_edits_reach_the_model_or_are_refused(backend):
    """The numba and int8 backends run their Linear layers on weights packed at load: an edit in place of such a
    weight in the state dict would not reach them, so those entries are read-only (the numpy backend's, and the
    unpacked ones, such as the embeddings, stay writable and an edit changes the outputs); a model built from a
    changed dict changes."""
    model = make(backend=backend)
    sd = model.state_dict()
    name = "encoder.layers.0.linear1.weight"
    ids, mask = ids_batch([5], 5)
    before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    if backend == "numpy":
        assert sd[name].flags.writeable
    else:
        with pytest.raises(ValueError, match="read-only"):
            sd[name][0, 0] = 1.0
        if backend == "int8":
            assert not sd[name + "_scale"].flags.writeable
        with pytest.raises(ValueError, match="read-only"):  # the pooler's float32 weight is packed too
            sd["pooler.dense.weight"][0, 0] = 1.0
    np.testing.assert_array_equal(model(input_ids=ids, attention_mask=mask).last_hidden_state, before)
    if backend == "int8":  # the int8 dict holds the quantized weight beside its scales
        sd[name + "_scale"] = sd[name + "_scale"] * np.float32(3)
    else:
        sd[name] = sd[name] * 3
    after = ErnieMModel(model.config, sd, backend=backend)(input_ids=ids, attention_mask=mask).last_hidden_state
    assert np.abs(after - before).max() > 1e-3
    table = model.state_dict()["embeddings.position_embeddings.weight"]  # not packed: an edit reaches the model
    table[2:, :4] += np.float32(1)  # not a shift of whole rows, which LayerNorm would remove
    assert np.abs(model(input_ids=ids, attention_mask=mask).last_hidden_state - before).max() > 1e-3


def test_load_takes_the_ffn_width_from_the_weights(tmp_path):
    # Paddle ignores intermediate_size (it builds 4 * hidden): a Paddle config may carry a wrong one
    model = make(intermediate_size=96)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 3072
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert ErnieMModel.from_pretrained(tmp_path).config.intermediate_size == 96


def test_a_head_checkpoint_loads_as_the_bare_model_and_back(tmp_path):
    make(ErnieMForSequenceClassification, "seq_cls").save_pretrained(tmp_path / "cls")
    with pytest.warns(UserWarning, match="classifier.weight"):
        base = ErnieMModel.from_pretrained(tmp_path / "cls")
    base.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match=r"missing \(2\): classifier.weight, classifier.bias"):
        ErnieMForSequenceClassification.from_pretrained(tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ErnieMForSequenceClassification.from_pretrained(tmp_path / "cls")


def test_float64_on_request(tmp_path):
    make().save_pretrained(tmp_path)
    model = ErnieMModel.from_pretrained(tmp_path, dtype=np.float64)
    assert all(v.dtype == np.float64 for v in model.state_dict().values())


# ------------------------------------------------------------------------------------------------ errors
def err(model, match, **kw):
    with pytest.raises((ValueError, TypeError), match=match):
        model(**kw)


def test_bad_inputs_get_clear_errors():
    model = make()
    ids, mask = ids_batch([6, 4], 6)
    err(model, "exactly one of input_ids and inputs_embeds")
    err(model, "exactly one", input_ids=ids, inputs_embeds=np.zeros((2, 6, 24)))
    err(model, r"id 40 at \(1, 2\), outside the vocabulary \[0, 40\)", input_ids=np.where(ids == ids[1, 2], 40, ids))
    err(model, r"id -\d+ at", input_ids=-ids)
    err(model, "must hold integers, got dtype float64", input_ids=ids.astype(float))
    err(model, "rectangular", input_ids=[[0, 5, 2], [0, 2]])
    err(model, r"must be \[batch, sequence\]", input_ids=ids[0])
    err(model, "sequence length is 0", input_ids=np.zeros((1, 0), np.int64))
    err(model, "exceeds the position table: at most 14", input_ids=np.zeros((1, 15), np.int64))
    err(model, r"position_ids must lie in \[-2, 14\)", input_ids=ids, position_ids=np.arange(6) + 9)
    err(model, r"position_ids has shape \(7,\)", input_ids=ids, position_ids=np.arange(7))
    err(model, r"attention_mask has shape \(2, 5\), expected \(2, 6\)", input_ids=ids, attention_mask=mask[:, :5])
    err(model, "bools or numbers", input_ids=ids, attention_mask=np.array([["a"] * 6] * 2))
    err(model, "must be 2-D, 3-D or 4-D", input_ids=ids, attention_mask=mask[0])
    err(model, r"head_mask must be \[3\] or \[2, 3\]", input_ids=ids, head_mask=np.ones(4))
    err(model, r"inputs_embeds must be \[batch, sequence, 24\]", inputs_embeds=np.zeros((2, 6, 5)))


def test_cache_errors_name_the_problem():
    model = make()
    ids, mask = ids_batch([4, 4], 4)
    past = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
    err(model, r"with 4 cached positions the mask covers them too", input_ids=ids, attention_mask=mask,
        past_key_values=past)
    err(model, "must hold 2", input_ids=ids, past_key_values=past[:1])
    err(model, r"tensors must be \[1, 3, past, 8\], got \(2, 3, 4, 8\)", input_ids=ids[:1], past_key_values=past)
    err(model, "after 4 cached positions exceeds", input_ids=np.zeros((2, 11), np.int64), past_key_values=past)


def test_weight_problems_are_all_listed():
    config = ErnieMConfig.from_dict(CFG)
    sd = split_head(random_weights(CFG, 3), None)
    sd.pop("pooler.dense.bias")
    sd.pop("encoder.layers.1.norm2.weight")
    sd["encoder.layers.0.linear1.weight"] = sd["encoder.layers.0.linear1.weight"][:, :5]
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        ErnieMModel(config, sd)
    msg = str(e.value)
    assert "missing (2): encoder.layers.1.norm2.weight, pooler.dense.bias" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "encoder.layers.0.linear1.weight: (30, 5) (expected (30, 24))" in msg
    with pytest.raises(TypeError, match="must be floating point"):
        ErnieMModel(config, {**split_head(random_weights(CFG, 3), None), "pooler.dense.bias": np.zeros(24, int)})
    with pytest.raises(ValueError, match="float32 or float64"):
        ErnieMModel(config, dtype=np.float16)


def test_label_errors():
    ids, mask = ids_batch([6, 4], 6)
    model = make(ErnieMForTokenClassification, "token_cls")
    with pytest.raises(ValueError, match=r"label 7 is outside \[0, 5\)"):
        model(input_ids=ids, attention_mask=mask, labels=np.full((2, 6), 7))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 6\)"):
        model(input_ids=ids, attention_mask=mask, labels=np.zeros((2, 5), int))
    with pytest.raises(TypeError, match="integer class indices"):
        model(input_ids=ids, attention_mask=mask, labels=np.zeros((2, 6)))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ErnieMModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ErnieMModel.from_pretrained(tmp_path)
    ErnieMConfig.from_dict(CFG).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        ErnieMModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="cannot read safetensors"):
        ErnieMModel.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------ backends
def test_backends_agree_and_are_checked():
    ids, mask = ids_batch([7, 4], 7)
    outs = {b: make(ErnieMForTokenClassification, "token_cls", backend=b)(input_ids=ids, attention_mask=mask,
                                                                           output_attentions=True)
            for b in ("numpy", "numba")}  # fmt: skip
    np.testing.assert_allclose(outs["numba"].logits, outs["numpy"].logits, atol=2e-5)
    for a, b in zip(outs["numba"].attentions, outs["numpy"].attentions):
        np.testing.assert_allclose(a, b, atol=1e-5)  # the fp32 profile for probabilities
    with pytest.raises(ValueError, match="backend must be one of"):
        make(backend="torch")


def test_model_calls_from_several_python_threads():
    import concurrent.futures

    model = make(backend="numba")
    ids, mask = ids_batch([7, 4], 7)
    expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: model(input_ids=ids, attention_mask=mask).last_hidden_state, range(12)))
    for r in results:
        np.testing.assert_array_equal(r, expected)


# The dispatchers warmup() compiles (fused.warmup: "every kernel a forward pass calls ... the serial twins ...
# and ... the parallel kernels"), and the ones it leaves alone, by name; a new dispatcher fails the test until listed.
WARMUP_COMPILES = {"gemm._gemm", "gemm._gemm_serial", "gemm._gemm_packed", "gemm._gemm_packed_serial",
                   "attention._attention", "attention._attention_serial",
                   "norm._layer_norm", "norm._layer_norm_serial"}  # fmt: skip
WARMUP_LEAVES = {
    "norm._gelu_rows", "norm._gelu_rows_serial", "norm._gelu_rows_exact", "norm._gelu_rows_exact_serial",  # only
    # gelu_inplace, which a forward pass calls only for a K = 0 GEMM (the GEMM fuses the GELU)
    "norm.erf_approx", "norm.gelu_scalar", "norm.order_key", "qgemm.quantize_row",  # called inside other kernels
    # (the GEMM's GELU epilogue; the softmax maximum, the int8 row quantizer): compiled into them (they show
    # signatures of their own only when compiled afresh, not when the GEMM is loaded from the cache)
    "qgemm._qgemm", "qgemm._qgemm_serial", "qgemm._quantize_rows", "qgemm._quantize_rows_serial",  # the int8
    "attention._attention_bf16", "attention._attention_bf16_serial",  # layers': warmup(int8=True) compiles them
    # (the bfloat16 attention where the CPU has AVX512_BF16)
    "attention.scores_into", "attention.softmax_rows", "attention.softmax_scale",  # inside the attention
    "attention.bf16_into",  # kernels
}  # fmt: skip

_COMPILE_CHECK = """
import importlib, pkgutil
import numpy as np
from numba.core.dispatcher import Dispatcher

def dispatchers():  # every Numba dispatcher defined in a module of erniem_np.kernels, serial twins included
    import erniem_np.kernels as kernels
    found = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module("erniem_np.kernels." + info.name)
        for name, obj in vars(module).items():
            if isinstance(obj, Dispatcher) and obj.py_func.__module__ == module.__name__:
                found[info.name + "." + name] = obj
    return found

def compiled():
    return {name: set(d.signatures) for name, d in dispatchers().items() if d.signatures}

import erniem_np
from erniem_np import ErnieMConfig, ErnieMModel, ErnieMForTokenClassification
from erniem_np.testing import random_weights, split_head
found = sorted(dispatchers())
print("FOUND", *found)
assert not compiled(), f"compiled at import: {sorted(compiled())}"

models = []
for cfg, L in ((dict(vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=30, max_position_embeddings=70), (3, 9)),  # serial twins
               (dict(vocab_size=40, hidden_size=256, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=1024, max_position_embeddings=70), (64,))):  # parallel kernels
    for cls, head in ((ErnieMModel, None), (ErnieMForTokenClassification, "token_cls")):
        config = ErnieMConfig.from_dict({**cfg, "num_labels": 5})
        models.append((cls(config, split_head(random_weights(cfg, seed=3), head), backend="numba"), L))
assert not compiled(), f"compiled by constructing a model: {sorted(compiled())}"

erniem_np.warmup()
after_warmup = compiled()
print("WARMUP", *sorted(after_warmup))
for model, lengths in models:  # a forward pass after warmup compiles nothing more
    for L in lengths:
        ids = np.full((2, L), 5)
        mask = np.ones_like(ids)
        mask[1, L // 2 :] = 0
        model(input_ids=ids)
        if isinstance(model, ErnieMForTokenClassification):
            model(input_ids=ids, attention_mask=mask, output_attentions=True)
        else:
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=True)
            model(input_ids=ids[:, :2], past_key_values=out.past_key_values)
new = {n: s - after_warmup.get(n, set()) for n, s in compiled().items() if s - after_warmup.get(n, set())}
assert not new, f"compiled by a forward pass after warmup: {new}"
print("ok")
"""


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no dispatchers without the JIT")
def test_nothing_compiles_at_import_and_warmup_compiles():
    """No Numba dispatcher in erniem_np.kernels (found by type, serial twins included) has a signature after
    ``import erniem_np`` or after constructing numba-backend models; warmup() compiles the ones it documents,
    and a forward pass after it (serial and parallel sizes, masks, probabilities, a cache) compiles nothing."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _COMPILE_CHECK], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]
    lines = {line.split()[0]: set(line.split()[1:]) for line in r.stdout.splitlines() if line.strip()}
    found, after_warmup = lines["FOUND"], lines["WARMUP"]
    assert WARMUP_COMPILES <= found, f"dispatchers not found: {sorted(WARMUP_COMPILES - found)}"
    listed = WARMUP_COMPILES | WARMUP_LEAVES
    assert found == listed, f"unlisted: {sorted(found - listed)}, listed but not found: {sorted(listed - found)}"
    assert WARMUP_COMPILES <= after_warmup, f"not compiled by warmup(): {sorted(WARMUP_COMPILES - after_warmup)}"
    assert after_warmup <= found, after_warmup


def test_random_init_with_a_pad_id_beyond_the_position_table():
    cfg = ErnieMConfig(vocab_size=20, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                       intermediate_size=8, max_position_embeddings=5, pad_token_id=7)  # fmt: skip
    model = ErnieMModel(cfg, backend="numpy")
    assert (model.state_dict()["embeddings.word_embeddings.weight"][7] == 0).all()
