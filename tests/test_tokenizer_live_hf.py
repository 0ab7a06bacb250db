"""Live fuzz against HF transformers' ErnieMTokenizer (4.46.3): hypothesis draws text, both tokenize it.

Tokens and ids must be equal on both fixture models, with and without do_lower_case, and so must a padded,
truncated batch of pairs. Needs the ``reference`` extra (transformers); skips cleanly without it.
"""

from __future__ import annotations

import json
import logging
import warnings
from functools import cache
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_tokenizer_properties import texts

from erniem_np import ErnieMTokenizer

FIX = Path(__file__).parent / "fixtures" / "tokenizer"
transformers.logging.set_verbosity_error()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def pair(model: str, lower: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = transformers.ErnieMTokenizer.from_pretrained(str(FIX / model), do_lower_case=lower)
    return ref, ErnieMTokenizer.from_pretrained(FIX / model, flavor="hf", do_lower_case=lower)


@pytest.mark.parametrize("model", ["bpe", "unigram"])
@SETTINGS
@given(text=texts, lower=st.booleans())
def test_tokens_and_ids_match_hf(model, text, lower):
    ref, ours = pair(model, lower)
    try:
        expected = ref.tokenize(text)
    except IndexError:  # HF's lone "▁" as the last piece (pieces[pi + 1]); ours drops it
        assume(False)
    assert ours.tokenize(text) == expected
    assert ours.convert_tokens_to_ids(expected) == ref.convert_tokens_to_ids(expected)


@SETTINGS
@given(a=st.lists(texts, min_size=1, max_size=4), data=st.data())
def test_calls_match_hf(a, data):
    ref, ours = pair("bpe", False)
    b = data.draw(st.lists(texts, min_size=len(a), max_size=len(a)))
    kwargs = data.draw(st.fixed_dictionaries({
        "padding": st.sampled_from([False, True, "max_length"]),
        "truncation": st.sampled_from(["longest_first", "only_first", "only_second"]),
        "max_length": st.integers(6, 40),
        "return_token_type_ids": st.booleans(),
        "return_special_tokens_mask": st.booleans(),
        "return_attention_mask": st.booleans(),
        "add_special_tokens": st.booleans(),
    }))  # fmt: skip
    assume(not (kwargs["return_token_type_ids"] and not kwargs["add_special_tokens"]))
    logging.disable(logging.ERROR)  # HF logs "We need to remove N tokens..."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = dict(ref(a, b, **kwargs))
            got = dict(ours(a, b, **kwargs))
    finally:
        logging.disable(logging.NOTSET)
    assert got == expected


def test_directories_load_both_ways(tmp_path):
    ref, ours = pair("bpe", True)
    text = "HELLO Wörld [SEP] 我爱北京 ｆｕｌｌ 123abc"
    ours.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_ours = transformers.ErnieMTokenizer.from_pretrained(str(tmp_path / "ours"))
        ref.save_pretrained(str(tmp_path / "hf"))
    assert from_ours.do_lower_case and from_ours.tokenize(text) == ref.tokenize(text)
    from_hf = ErnieMTokenizer.from_pretrained(tmp_path / "hf")
    assert from_hf.flavor == "hf" and from_hf.do_lower_case and from_hf.tokenize(text) == ref.tokenize(text)
    assert from_hf.get_vocab() == ref.get_vocab()


def test_special_token_text_matches_hf():
    # The texts of tests/fixtures/tokenizer/special_text_paddle.json: HF keeps each special-token string whole
    # too (an added token), lower-casing or not.
    texts = sorted({r["text"] for r in json.loads((FIX / "special_text_paddle.json").read_text("utf-8"))["records"]})
    for model in ("bpe", "unigram"):
        for lower in (False, True):
            ref, ours = pair(model, lower)
            for text in texts:
                assert ours.tokenize(text) == ref.tokenize(text), (model, lower, text)
                assert ours(text)["input_ids"] == ref(text)["input_ids"], (model, lower, text)
