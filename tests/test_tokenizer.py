"""ErnieMTokenizer: the API, the reference facts it encodes, the model taking its output, and bad input.

The tokenizers are the fixture models of tests/fixtures/tokenizer/ (a 4,000-piece BPE SentencePiece model
trained on a multilingual corpus, with an ERNIE-M style vocab.txt).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from erniem_np import ErnieMConfig, ErnieMModel, ErnieMTokenizer
from erniem_np.tokenizer import split_piece

FIX = Path(__file__).parent / "fixtures" / "tokenizer"
BPE = FIX / "bpe"


@pytest.fixture(scope="module")
def hf():
    return ErnieMTokenizer.from_pretrained(BPE, flavor="hf")


@pytest.fixture(scope="module")
def pd():
    return ErnieMTokenizer.from_pretrained(BPE, flavor="paddle")


def copy_model(tmp_path: Path) -> Path:
    d = tmp_path / "tok"
    shutil.copytree(BPE, d)
    return d


# ------------------------------------------------------------------------------------------ reference facts
def test_special_ids_and_layout(hf):
    assert [hf.cls_token_id, hf.pad_token_id, hf.sep_token_id, hf.unk_token_id] == [0, 1, 2, 3]
    assert hf.mask_token_id == len(hf) - 1
    a, b = [10, 11], [12]
    assert hf.build_inputs_with_special_tokens(a) == [0, 10, 11, 2]
    assert hf.build_inputs_with_special_tokens(a, b) == [0, 10, 11, 2, 2, 12, 2]
    assert hf.create_token_type_ids_from_sequences(a, b) == [0, 0, 0, 1, 1, 1, 1]  # first [SEP] is type 1
    assert hf.get_special_tokens_mask(a, b) == [1, 0, 0, 1, 1, 0, 1]
    assert hf.get_special_tokens_mask([0, 10, 2, 1], already_has_special_tokens=True) == [1, 0, 1, 0]
    assert hf.build_offset_mapping_with_special_tokens([(0, 1)], [(0, 2)]) == [(0, 0), (0, 1), (0, 0), (0, 0),
                                                                                (0, 2), (0, 0)]  # fmt: skip


def test_post_split_of_pieces():
    assert split_piece("▁92000") == ["92000"]
    assert split_piece("▁我爱") == ["我", "爱"]
    assert split_piece("abc123def") == ["abc", "123", "def"]
    assert split_piece("▁a,b") == ["▁a", ",", "b"]
    assert split_piece("▁。") == ["。"]
    assert split_piece("x٣٤y") == ["x", "٣٤", "y"]  # Unicode isdigit


def test_lone_underline_hf_vs_paddle(hf, pd):
    text = "x ▁ y"  # SentencePiece: "▁", "x", "▁y" -> a lone "▁" first: both drop it
    assert hf.sp_model.encode(text, out_type=str) == ["▁", "x", "▁y"]
    assert hf.tokenize(text) == pd.tokenize(text) == ["x", "▁y"]
    uni_hf = ErnieMTokenizer.from_pretrained(FIX / "unigram", flavor="hf")
    uni_pd = ErnieMTokenizer.from_pretrained(FIX / "unigram", flavor="paddle")
    assert uni_hf.sp_model.encode(text, out_type=str) == ["▁", "x", "▁", "y"]
    assert uni_hf.tokenize(text) == ["x", "▁", "y"]  # HF keeps the lone "▁" before a piece without "▁"
    assert uni_pd.tokenize(text) == ["x", "y"]


def test_lone_underline_last_piece_is_dropped(hf):
    # HF reads pieces[pi + 1] before checking: a lone "▁" as the last piece raises IndexError there.
    tokens, ids = [], []
    hf._extend_from_pieces(["▁a", "▁"], tokens, ids)
    assert tokens == ["▁a"] and ids == [hf.convert_tokens_to_ids("▁a")]
    tokens = []
    hf._extend_from_pieces(["▁a", "▁", "b"], tokens, [])
    assert tokens == ["▁a", "▁", "b"]


def test_special_tokens_in_text(hf, pd):
    for t in (hf, pd):
        assert t.tokenize("a[SEP]b") == ["▁a", "[SEP]", "▁b"]
        assert t.tokenize("[sep]")[0] != "[sep]"  # only the exact string is special
    lower = ErnieMTokenizer.from_pretrained(BPE, do_lower_case=True)
    assert lower.tokenize("HELLO [SEP] World") == lower.tokenize("hello [SEP] world")
    assert "[SEP]" in lower.tokenize("HELLO [SEP] World")


def test_decode(hf, pd):
    ids = hf("Hello world.")["input_ids"]
    assert hf.decode(ids) == "[CLS] Hello world.[SEP]"  # special tokens join like any token: "[CLS]▁Hello..."
    assert hf.decode(ids, skip_special_tokens=True) == "Hello world."
    assert hf.batch_decode([ids, ids], skip_special_tokens=True) == ["Hello world."] * 2
    assert hf.decode(np.array(ids)) == hf.decode(ids)
    assert hf.convert_ids_to_tokens(10**6) == "[UNK]"
    assert hf.convert_tokens_to_ids("no-such-token") == 3
    assert pd.decode(hf.encode("a , b", add_special_tokens=False)) == "a, b"  # Paddle cleans up spaces
    assert hf.decode(hf.encode("a , b", add_special_tokens=False)) == "a , b"  # HF 4.46 does not


def test_vocab_size_per_flavour(hf, pd):
    assert hf.vocab_size == len(hf) == 4002
    assert pd.vocab_size == pd.sp_model.get_piece_size() == 4000  # PaddleNLP's vocab_size is the SP size
    assert len(pd) == 4002
    assert hf.get_vocab()["[MASK]"] == 4001


# ------------------------------------------------------------------------------------------ __call__
def test_defaults_feed_the_model(hf, pd):
    texts = ["Hello world", "我爱北京天安门。", "abc123def and more words here"]
    enc = hf(texts, padding=True, return_tensors="np")
    assert set(enc) == {"input_ids", "attention_mask"}
    assert enc["input_ids"].dtype == np.int64 and enc["input_ids"].shape == enc["attention_mask"].shape
    config = ErnieMConfig(vocab_size=len(hf), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=66)  # fmt: skip
    model = ErnieMModel(config)
    out = model(**enc)
    assert out.last_hidden_state.shape == (*enc["input_ids"].shape, 16)
    single = hf("one text", return_tensors="np")
    assert single["input_ids"].shape[0] == 1
    model(**single)
    # Paddle's position ids (padded with 0) go in as well; token_type_ids are for the user to drop
    enc = pd(texts, padding="max_length", max_length=24, return_position_ids=True, return_token_type_ids=True,
             return_tensors="np")  # fmt: skip
    assert enc["position_ids"].shape == (3, 24)
    assert (enc["position_ids"][enc["attention_mask"] == 0] == 0).all()
    enc.pop("token_type_ids")
    model(**enc)


def test_single_pair_and_batch_shapes(hf):
    one = hf("Hello world")
    assert isinstance(one["input_ids"][0], int) and one.input_ids == one["input_ids"]
    pair = hf("Hello", "world", return_token_type_ids=True)
    n = len(pair["input_ids"])
    assert pair["token_type_ids"] == [0] * (len(hf.tokenize("Hello")) + 1) + [1] * (n - len(hf.tokenize("Hello")) - 1)
    batch = hf(["a", "b c d"], ["x", "y"])
    assert len(batch["input_ids"]) == 2
    assert hf([])["input_ids"] == []


def test_max_length_padding_and_truncation(hf):
    long = "word " * 50
    enc = hf([long, "short"], padding="max_length", truncation=True, max_length=16)
    assert [len(x) for x in enc["input_ids"]] == [16, 16]
    assert enc["input_ids"][0][-1] == hf.sep_token_id
    assert enc["attention_mask"][1].count(0) == 16 - len(hf.encode("short"))
    enc = hf([long, "short"], padding=True, pad_to_multiple_of=8, max_length=20)  # padding=True: no truncation
    assert len(hf.encode(long)) == 102 and {len(x) for x in enc["input_ids"]} == {104}
    assert len(hf(long, max_length=10)["input_ids"]) == 10  # max_length alone turns truncation on
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        hf("x", padding=True, truncation=True, max_length=10, pad_to_multiple_of=8)


def test_truncation_flavour_difference(hf, pd):
    long = "word " * 50
    # QUIRK: an explicit truncation=False with max_length stays off in HF, but PaddleNLP's default is False
    assert len(hf(long, max_length=10, truncation=False)["input_ids"]) > 10
    assert len(pd(long, max_length=10, truncation=False)["input_ids"]) == 10


def test_paddle_aliases(hf, pd):
    enc = pd(["prompt"], ["a long text " * 20], max_seq_len=32, pad_to_max_seq_len=True, truncation=True,
             return_position_ids=True, return_offsets_mapping=True)  # fmt: skip
    assert len(enc["input_ids"][0]) == 32 and len(enc["offset_mapping"][0]) == 32
    with pytest.raises(TypeError, match="PaddleNLP"):
        hf("x", max_seq_len=8)
    with pytest.raises(TypeError, match="unexpected"):
        hf("x", max_lenght=8)


def test_offsets_in_call(pd, hf):
    text = "ｈｅｌｌｏ　ｗｏｒｌｄ！１２３"
    enc = pd(text, return_offsets_mapping=True)
    assert enc["offset_mapping"][0] == (0, 0) and enc["offset_mapping"][-1] == (0, 0)
    spans = enc["offset_mapping"][1:-1]
    pieces = [text[s:e] for s, e in spans]
    assert "".join(pieces[-len(pd.tokenize("１２３")) :]) == "１２３" and pieces[0] == "ｈｅｌｌｏ"[: len(pieces[0])]
    enc = hf(["Hello World"], ["我爱北京"], return_offsets_mapping=True, padding="max_length", max_length=20)
    offs = enc["offset_mapping"][0]
    assert offs[-1] == (0, 0) and len(offs) == 20
    ids = enc["input_ids"][0]
    assert all(o == (0, 0) for o, i in zip(offs, ids) if i in (0, 1, 2))


def test_overflow_windows(hf):
    question, context = "Where?", " ".join(f"w{i}" for i in range(60))
    enc = hf([question, "Who?"], [context, "short"], truncation="only_second", max_length=24, stride=6,
             return_overflowing_tokens=True, return_offsets_mapping=True, padding=True)  # fmt: skip
    m = enc["overflow_to_sample_mapping"]
    assert m[0] == 0 and m[-1] == 1 and m.count(1) == 1 and m.count(0) > 2
    assert all(len(r) == 24 for r in enc["input_ids"])
    ids_ctx = hf.encode(context, add_special_tokens=False)
    q = len(hf.encode(question, add_special_tokens=False))
    w0, w1 = enc["input_ids"][0][q + 3 : -1], enc["input_ids"][1][q + 3 : -1]
    assert w0 == ids_ctx[: len(w0)] and w1[:6] == w0[-6:]  # 6 tokens shared
    with pytest.raises(ValueError, match="longest_first"):
        hf("a", "b", truncation="longest_first", max_length=5, return_overflowing_tokens=True)


def test_paddle_doc_stride(pd):
    enc = pd(["q"], ["w " * 40], max_length=16, stride=5)  # no return_overflowing_tokens needed in Paddle
    assert "offset_mapping" in enc and enc["overflow_to_sample"] == enc["overflow_to_sample_mapping"]
    assert len(enc["input_ids"]) > 1
    with pytest.raises(ValueError, match="max_length"):
        pd(["q"], ["w w"], stride=5)
    with pytest.raises(ValueError, match="no room"):
        pd(["a b c d e f g h"], ["w w"], stride=5, max_length=6)


def test_return_tensors(hf):
    enc = hf(["a", "b c"], padding=True, return_offsets_mapping=True, return_tensors="np")
    assert enc["offset_mapping"].shape == (*enc["input_ids"].shape, 2)
    with pytest.raises(ValueError, match="padding"):
        hf(["a", "b c d e"], return_tensors="np")
    with pytest.raises(ValueError, match="'np'"):
        hf("a", return_tensors="pt")


def test_batch_equals_single(hf):
    texts = ["Hello world", "", "[SEP] x", "ＡＢＣ 123"]
    batch = hf(texts)["input_ids"]
    assert batch == [hf(t)["input_ids"] for t in texts]


def test_sampling_is_accepted():
    tok = ErnieMTokenizer.from_pretrained(BPE, sp_model_kwargs={"enable_sampling": True, "alpha": 0.1,
                                                                "nbest_size": -1})  # fmt: skip
    assert tok.tokenize("hello world")


# ------------------------------------------------------------------------------------------ files
def test_save_and_load_round_trip(tmp_path, pd):
    out = tmp_path / "saved"
    tok = ErnieMTokenizer.from_pretrained(BPE, flavor="paddle", do_lower_case=True)
    paths = tok.save_pretrained(out)
    assert all(os.path.isfile(p) for p in paths)
    again = ErnieMTokenizer.from_pretrained(out)
    assert again.flavor == "paddle" and again.do_lower_case and again.model_max_length == 512
    assert again.get_vocab() == tok.get_vocab()
    assert again.tokenize("HELLO Wörld") == tok.tokenize("HELLO Wörld")
    assert ErnieMTokenizer.from_pretrained(out, flavor="hf").flavor == "hf"
    (vocab,) = tok.save_vocabulary(str(out), filename_prefix="x")
    assert vocab.endswith("x-vocab.txt") and (out / "sentencepiece.bpe.model").exists()


def test_flavor_from_model_config(tmp_path):
    d = copy_model(tmp_path)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("flavor", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert ErnieMTokenizer.from_pretrained(d).flavor == "hf"
    (d / "config.json").write_text(json.dumps({"vocab_size": 4002, "paddlenlp_version": None}))
    assert ErnieMTokenizer.from_pretrained(d).flavor == "paddle"
    (d / "config.json").unlink()
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "special_tokens_map_file": "x.json"}))  # PaddleNLP
    assert ErnieMTokenizer.from_pretrained(d).flavor == "paddle"
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "added_tokens_decoder": {}}))  # transformers
    assert ErnieMTokenizer.from_pretrained(d).flavor == "hf"


def test_constructor_arguments():
    tok = ErnieMTokenizer(str(BPE / "sentencepiece.bpe.model"), str(BPE / "vocab.txt"))
    assert tok.flavor == "hf" and not tok.do_lower_case
    with pytest.raises(ValueError, match="flavor"):
        ErnieMTokenizer(BPE / "sentencepiece.bpe.model", BPE / "vocab.txt", flavor="torch")


# ------------------------------------------------------------------------------------------ bad input
def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ErnieMTokenizer.from_pretrained(tmp_path / "nowhere")
    d = copy_model(tmp_path)
    (d / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        ErnieMTokenizer.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        ErnieMTokenizer(d / "missing.model", BPE / "vocab.txt")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        ErnieMTokenizer(bad, BPE / "vocab.txt")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("[CLS]\n[PAD]\n[SEP]\n[UNK]\ncaf\xe9\n[MASK]\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        ErnieMTokenizer(BPE / "sentencepiece.bpe.model", latin1)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        ErnieMTokenizer(BPE / "sentencepiece.bpe.model", empty)
    d2 = copy_model(tmp_path / "b")
    (d2 / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        ErnieMTokenizer.from_pretrained(d2)


def test_vocab_without_special_tokens(tmp_path):
    v = tmp_path / "vocab.txt"
    lines = (BPE / "vocab.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    v.write_text("".join(line for line in lines if line != "[MASK]\n"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the special tokens mask_token='\[MASK\]'"):
        ErnieMTokenizer(BPE / "sentencepiece.bpe.model", v)


@pytest.mark.parametrize("bad", [None, 3, 2.5, b"bytes", ["ok", None], [["nested"]], {"a": 1}])
def test_non_string_input(hf, bad):
    with pytest.raises(TypeError):
        hf(bad)
    if bad is not None and not isinstance(bad, list):
        with pytest.raises(TypeError):
            hf.tokenize(bad)


def test_pair_mismatch(hf):
    with pytest.raises(ValueError, match="2 items"):
        hf(["a", "b"], ["c"])
    with pytest.raises(TypeError):
        hf(["a"], "c")
    with pytest.raises(TypeError):
        hf("a", ["c"])


def test_lone_surrogate(hf):
    with pytest.raises(ValueError, match=r"lone surrogate .* index 1"):
        hf("a\ud800b")
    with pytest.raises(ValueError, match="surrogate"):
        hf.tokenize("\udfff")


def test_bad_options(hf):
    with pytest.raises(ValueError, match="padding"):
        hf("a", padding="left")
    with pytest.raises(ValueError, match="truncation"):
        hf("a", truncation="middle")
    with pytest.raises(ValueError, match="max_length"):
        hf("a", max_length=-1)
    with pytest.raises(ValueError, match="stride"):
        hf("a", stride=-1)
    with pytest.raises(ValueError, match="add_special_tokens"):
        hf("a", add_special_tokens=False, return_token_type_ids=True)


def test_cannot_truncate_warns(hf):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        enc = hf("a b c d e f g h i j", "x", truncation="only_second", max_length=6)
    assert any("cannot remove" in str(x.message) for x in w)
    assert len(enc["input_ids"]) > 6  # as both references: left as it is


def test_extremely_long_string(pd):
    text = ("ERNIE-M 多语言 ภาษา текст 123 ½ ｆｕｌｌ " * 40000)[:1_000_000]
    t0 = time.perf_counter()
    enc = pd(text, return_offsets_mapping=True)
    elapsed = time.perf_counter() - t0
    offs = enc["offset_mapping"]
    assert len(offs) == len(enc["input_ids"]) > 100_000
    assert offs[-2][1] <= len(text)
    assert elapsed < 60, f"1M characters took {elapsed:.1f} s"


# ------------------------------------------------------------------------------------------ offsets
def test_offsets_where_paddle_raises():
    lower = ErnieMTokenizer.from_pretrained(BPE, flavor="paddle", do_lower_case=True)
    text = "HELLO [SEP] World"  # PaddleNLP: ValueError (it looks for "[SEP]" in the lower-cased text)
    spans = lower.get_offset_mapping(text)
    tokens = lower.tokenize(text)
    assert [text[s:e] for s, e in spans][tokens.index("[SEP]")] == "[SEP]"
    assert "".join(text[s:e] for s, e in spans).replace(" ", "") == "HELLO[SEP]World"


def test_offsets_fill_between_overlapping_neighbours(pd):
    # "½" normalises to "1⁄2": two found tokens share the source character; an unfound one between them
    # must not step back
    spans = pd._offsets("½", ["1", "X", "⁄2"])
    assert spans == [(0, 1), (0, 1), (0, 1)]
    spans = pd._offsets("ab  cd", ["▁ab", "??", "!!", "▁cd"])
    assert spans == [(0, 2), (4, 4), (4, 4), (4, 6)]  # nothing but whitespace between: empty spans
    spans = pd._offsets("ab ?? !! cd", ["▁ab", "??", "xx", "▁cd"])
    assert spans == [(0, 2), (3, 5), (6, 8), (9, 11)]  # "xx" takes the source between its neighbours


def test_hf_lone_underline_offsets():
    uni = ErnieMTokenizer.from_pretrained(FIX / "unigram", flavor="hf")
    text = "x ▁ y"
    assert uni.tokenize(text) == ["x", "▁", "y"]
    (s0, e0), (s1, e1), (s2, e2) = uni.get_offset_mapping(text)
    assert (s0, e0) == (0, 1) and s1 == e1 and e0 <= s1 <= s2 and text[s2:e2] == "y"
