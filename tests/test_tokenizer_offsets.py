"""Offsets in linear time: the search behind them examines each character of the text a bounded number of times.

``ErnieMTokenizer._offsets`` finds every token in the normalised text from a cursor that only moves forward
(PaddleNLP's get_offset_mapping, docs/reference.md#t4-offsets). A token absent from the rest of the text (a
``[SEP]`` of the text with ``do_lower_case``, a composed "é" from a decomposed source...) would cost a scan of
the whole rest each time it occurs. The tests count the characters that ``_SuffixFinder`` examines and hold
them to its stated bound, check that it answers exactly as ``str.find``, and that ``_offsets`` gives the same
spans as with a plain ``str.find`` at every token.
"""

from __future__ import annotations

import contextlib
import itertools
import unicodedata
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tokenizer_properties import texts

import erniem_np.tokenizer as tokenizer_module
from erniem_np import ErnieMTokenizer
from erniem_np.tokenizer import _SuffixFinder

FIX = Path(__file__).parent / "fixtures" / "tokenizer"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def tok(model: str, flavor: str, lower: bool) -> ErnieMTokenizer:
    return ErnieMTokenizer.from_pretrained(FIX / model, flavor=flavor, do_lower_case=lower)


@contextlib.contextmanager
def finder_class(cls):
    """Make ``_offsets`` use ``cls`` as its finder; yields the list of the finders it creates."""
    made = []

    class Recording(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    saved = tokenizer_module._SuffixFinder
    tokenizer_module._SuffixFinder = Recording
    try:
        yield made
    finally:
        tokenizer_module._SuffixFinder = saved


class PlainFinder(_SuffixFinder):
    """PaddleNLP's search as it is written: ``str.find`` from the cursor for every token."""

    def find(self, needle: str, cursor: int) -> int:
        return self.hay.find(needle, cursor)


def bound(f: _SuffixFinder) -> int:
    """The finder's documented bound on the characters it examines."""
    return (1 + (f._INDEX_AFTER + 1) * len(f._misses)) * len(f.hay)


@pytest.mark.parametrize("flavor", ["hf", "paddle"])
def test_special_token_text_with_lower_case_scans_the_text_once(flavor):
    # 1 MB of "[SEP]": lower-cased, the normalised text holds "[sep]" and no token "[SEP]" is found, so a search
    # from the cursor at every token examined about 10**11 characters (minutes); now one scan of the text.
    text = "[SEP]" * 200_000
    t = tok("bpe", flavor, True)
    with finder_class(_SuffixFinder) as made:
        enc = t(text, return_offsets_mapping=True, truncation=True, max_length=512)
    assert len(made) == 1
    f = made[0]
    assert len(f.hay) == len(text) and f.scanned <= len(text)
    assert enc["input_ids"] == [t.cls_token_id] + [t.sep_token_id] * 511
    assert enc["offset_mapping"][1:-1] == [(5 * i, 5 * i + 5) for i in range(510)]


def test_many_distinct_missing_tokens_scan_linearly():
    # A decomposed source ("e" + U+0301): SentencePiece composes "é", the per-character normalisation of the
    # offsets does not, so every token holding an accented letter is missing from the normalised text; many
    # different missing tokens of the same few lengths must not cost a scan of the rest each.
    words = ["café", "élève", "naïve", "über", "señor", "Tiếng", "Việt", "déjà", "crème", "brûlée", "façade", "à"]
    text = " ".join(unicodedata.normalize("NFD", words[i % 12] + words[i % 7]) for i in range(3000))
    t = tok("unigram", "paddle", False)
    tokens = t.tokenize(text)
    with finder_class(_SuffixFinder) as made:
        spans = t._offsets(text, tokens)
    (f,) = made
    assert sum(f._misses.values()) >= 2 and f.scanned <= bound(f) <= 10 * len(f.hay)
    with finder_class(PlainFinder):
        assert t._offsets(text, tokens) == spans


def test_finder_bound_with_many_missing_needles():
    # 300 different needles (every string of "abc" of length 2 to 5 holding a "c") absent from a text of "a"
    # and "b", between present ones that move the cursor: one scan each would be 300 scans of the text.
    hay = "ab" * 5_000 + "aab" * 2_000
    missing = ["".join(p) for n in range(2, 6) for p in itertools.product("abc", repeat=n) if "c" in p]
    needles = [x for pair in zip(missing, itertools.cycle(["ab", "aab", "ba"])) for x in pair]
    f = _SuffixFinder(hay, needles)
    cursor = 0
    for x in needles:
        s = f.find(x, cursor)
        assert s == hay.find(x, cursor)
        if s >= 0:
            cursor = s + len(x)
    assert len(missing) == 300 and f.scanned <= bound(f) == 13 * len(hay)


@SETTINGS
@given(
    hay=st.text(alphabet="abcς", max_size=60),
    asks=st.lists(st.tuples(st.text(alphabet="abcd", min_size=1, max_size=4), st.integers(0, 6)), max_size=40),
    all_known=st.booleans(),
)
def test_finder_answers_as_str_find(hay, asks, all_known):
    # the finder is told the needles to come (or only every other one: the rest must still be exact)
    f = _SuffixFinder(hay, [x for x, _ in asks] if all_known else [x for x, _ in asks[::2]])
    cursor = 0
    for needle, step in asks:
        cursor += step
        got = f.find(needle, cursor)
        assert got == hay.find(needle, cursor), (hay, needle, cursor)
        if got >= 0:  # as _offsets uses it: the cursor moves past each match (the bound counts on that)
            cursor = got + len(needle)
    if all_known:
        assert f.scanned <= bound(f)


@SETTINGS
@given(hay=st.text(alphabet="aσςb", max_size=30), needle=st.text(alphabet="aσςb", min_size=1, max_size=3),
       cursor=st.integers(0, 30))  # fmt: skip
def test_sigma_folded_search_is_the_nearer_match(hay, needle, cursor):
    # _offsets searches the text with every "ς" read as "σ": that is the nearer of the plain match and the
    # folded one, because a plain match is also a folded one at the same place.
    def fold(s):
        return s.replace("ς", "σ")

    plain, folded = hay.find(needle, cursor), fold(hay).find(fold(needle), cursor)
    nearest = min((x for x in (plain, folded) if x >= 0), default=-1)
    assert folded == nearest


@pytest.mark.parametrize("model", ["bpe", "unigram"])
@SETTINGS
@given(text=texts, flavor=st.sampled_from(["hf", "paddle"]), lower=st.booleans(), extra=st.lists(
    st.sampled_from(["[SEP]", "▁", "▁▁", "ς", "σ", "é", "X", "▁ab"]), max_size=4))  # fmt: skip
def test_offsets_equal_the_plain_search(model, text, flavor, lower, extra):
    t = tok(model, flavor, lower)
    tokens = t.tokenize(text)
    for toks in (tokens, tokens + extra, extra + tokens[::-1]):
        ours = t._offsets(text, toks)
        with finder_class(PlainFinder):
            assert t._offsets(text, toks) == ours, (text, toks)
