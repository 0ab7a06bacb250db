"""UIE-M extraction against PaddleNLP 2.8.1's Taskflow, and its decoding pieces one by one.

The fixture (tests/fixtures/uie/, made by scripts/reference/make_uie_fixtures_paddle.py) holds a tiny random UIEM
checkpoint and, per case (schema, options, texts), Taskflow's result and the probabilities Taskflow decoded
(every position above position_prob, exact float32 values). Three checks per case:

- replay: our pipeline with Taskflow's own probabilities in place of our model's gives Taskflow's result
  exactly, order included (prompts, chunking, tokenizer offsets, pairing, set order, voting, nesting);
- model: our probabilities agree with Taskflow's within 1e-5 at every position either side finds above the
  threshold, and the same positions clear it;
- end to end: our model and our pipeline give Taskflow's result: the same spans, offsets, texts and nesting,
  probabilities within 1e-5. Only the order of the spans of one row is borrowed from Taskflow's run: it is
  a Python set's hash order, which follows the exact bits of the probabilities (see the module doc of
  erniem_np.pipelines.extract).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from erniem_np.pipelines.extract import (
    Extractor,
    auto_joiner,
    auto_splitter,
    build_prompt,
    build_schema_tree,
    convert_ids_to_results,
    cut_chinese_sent,
    dbc2sbc,
    get_bool_ids_greater_than,
    get_id_and_prob,
    get_span,
)

HERE = Path(__file__).parent
UIE_DIR = HERE / "fixtures" / "uie"
MODEL = str(UIE_DIR / "tiny-uiem")
ROOT = HERE.parent


def load_cases() -> list[dict]:
    with gzip.open(UIE_DIR / "taskflow.json.gz", "rt", encoding="utf-8") as f:
        data = json.load(f)
    assert data["meta"]["format"] == "erniem-np-uie-taskflow/1"
    return data["cases"]


CASES = load_cases()
CASE_IDS = [c["name"] for c in CASES]


def recorded_rows(case: dict) -> list[tuple[int, dict[int, float], dict[int, float]]]:
    """Taskflow's rows in order: (length, {position: start prob}, {position: end prob}) above the limit."""
    calls = case["decoded"]
    assert len(calls) % 2 == 0, "start and end calls come in pairs, one pair per batch"
    rows = []
    for s, e in zip(calls[0::2], calls[1::2], strict=True):
        assert s["shape"] == e["shape"]
        n_rows, length = s["shape"]
        starts: list[dict[int, float]] = [{} for _ in range(n_rows)]
        ends: list[dict[int, float]] = [{} for _ in range(n_rows)]
        for call, out in ((s, starts), (e, ends)):
            for r, c, p in zip(call["rows"], call["cols"], call["probs"], strict=True):
                out[r][c] = p
        rows.extend((length, st, en) for st, en in zip(starts, ends, strict=True))
    return rows


def dense(length: int, sparse: dict[int, float]) -> np.ndarray:
    a = np.zeros(length, dtype=np.float32)
    for i, p in sparse.items():
        a[i] = p
    return a


class ReplayExtractor(Extractor):
    """Our pipeline, with Taskflow's probabilities instead of our model's."""

    def __init__(self, *args, rows, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows, self.next_row = rows, 0

    def _run_model(self, input_ids, position_ids):
        n = len(input_ids)
        for b0 in range(0, n, self.batch_size):
            group = list(range(b0, min(n, b0 + self.batch_size)))
            starts, ends = [], []
            for r in group:
                length, st, en = self.rows[self.next_row]
                assert len(input_ids[r]) == length, (
                    f"row {self.next_row}: {len(input_ids[r])} tokens, Taskflow {length}"
                )
                starts.append(dense(length, st))
                ends.append(dense(length, en))
                self.next_row += 1
            yield group, np.array(starts), np.array(ends)


class OrderedExtractor(Extractor):
    """Our model and pipeline; each row's spans are compared with Taskflow's and put in Taskflow's set order."""

    def __init__(self, *args, rows, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows, self.next_row = rows, 0
        self.max_diff, self.n_compared = 0.0, 0

    def _row_spans(self, start_prob, end_prob):
        ours = super()._row_spans(start_prob, end_prob)
        row = self.next_row
        length, st, en = self.rows[row]
        self.next_row += 1
        assert len(start_prob) == length, f"row {row}: {len(start_prob)} tokens, Taskflow {length}"
        limit = self.position_prob
        for name, probs, theirs in (("start", start_prob, st), ("end", end_prob, en)):
            above = set(np.flatnonzero(probs > limit).tolist())
            for i in above | set(theirs):
                p_ours, p_theirs = float(probs[i]), theirs.get(i, None)
                if p_theirs is None or i not in above:  # one side only: must be at the threshold
                    p = p_ours if p_theirs is None else p_theirs
                    assert abs(p - limit) <= 1e-5, (
                        f"row {row} {name} position {i}: ours {p_ours}, Taskflow's {p_theirs}"
                    )
                    continue
                self.max_diff = max(self.max_diff, abs(p_ours - p_theirs))
                self.n_compared += 1
                assert abs(p_ours - p_theirs) <= 1e-5, f"row {row} {name} position {i}: {p_ours} vs {p_theirs}"
        theirs_set = get_span(get_bool_ids_greater_than(dense(length, st), limit),
                              get_bool_ids_greater_than(dense(length, en), limit))  # fmt: skip
        by_pos = {(s[0], e[0]): (s, e) for s, e in ours}
        assert set(by_pos) == {(s[0], e[0]) for s, e in theirs_set}, f"row {row}: different spans"
        return [by_pos[(s[0], e[0])] for s, e in theirs_set]  # QUIRK borrowed: Taskflow's set order


def assert_same(ours, theirs, where="result", tol=0.0):
    """Exact structure and order; probabilities within tol; the path of the first difference in the message."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), f"{where}: keys {list(ours)} vs {list(theirs)}"
        for k in theirs:
            assert_same(ours[k], theirs[k], f"{where}.{k}", tol)
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), f"{where}: {len(ours)} items vs {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{where}[{i}]", tol)
    elif isinstance(theirs, float):
        assert abs(ours - theirs) <= tol, f"{where}: {ours!r} vs Taskflow's {theirs!r}"
    else:
        assert ours == theirs, f"{where}: {ours!r} vs Taskflow's {theirs!r}"


@pytest.fixture(scope="module")
def model():
    from erniem_np import ErnieMForInformationExtraction
    from erniem_np.tokenizer import ErnieMTokenizer

    return ErnieMForInformationExtraction.from_pretrained(MODEL), ErnieMTokenizer.from_pretrained(MODEL)


def test_fixture_covers_the_issue():
    """>= 50 texts in several scripts, the three kinds of schema in both languages, long texts split."""
    texts = {t for c in CASES for t in c["texts"]}
    assert len(texts) >= 50
    scripts = {"cjk": "\u4e00", "hangul": "\uac00", "kana": "\u3041", "cyrillic": "\u0400", "arabic": "\u0600",
               "devanagari": "\u0900"}  # fmt: skip
    for name, first in scripts.items():
        lo = ord(first)
        assert any(any(lo <= ord(ch) < lo + 0x100 for ch in t) for t in texts), name
    names = set(CASE_IDS)
    for lang in ("ch", "en"):
        assert {f"{lang}-entity", f"{lang}-relation", f"{lang}-classification"} <= names
    assert any(len(t) > c["options"]["max_seq_len"] for c in CASES for t in c["texts"])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_replay_taskflow_probabilities_gives_taskflow_result(case, model):
    rows = recorded_rows(case)
    ex = ReplayExtractor(model[0], case["schema"], tokenizer=model[1], rows=rows, **case["options"])
    ours = ex(case["texts"])
    assert ex.next_row == len(rows), f"{ex.next_row} rows run, Taskflow ran {len(rows)}"
    assert_same(ours, case["result"], case["name"], tol=0.0)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_end_to_end_matches_taskflow(case, model):
    rows = recorded_rows(case)
    ex = OrderedExtractor(model[0], case["schema"], tokenizer=model[1], rows=rows, **case["options"])
    ours = ex(case["texts"])
    assert ex.next_row == len(rows)
    assert ex.n_compared > 0
    assert_same(ours, case["result"], case["name"], tol=1e-5)


def test_results_have_every_kind_of_answer():
    """The fixture exercises what the decoder must handle: text spans, prompt spans, relations, chunks."""
    kinds = set()

    def walk(items):
        for it in items:
            kinds.add("span" if "start" in it else "prompt")
            if "relations" in it:
                kinds.add("relations")
                for v in it["relations"].values():
                    walk(v)

    for c in CASES:
        for r in c["result"]:
            for v in r.values():
                walk(v)
    assert kinds == {"span", "prompt", "relations"}


# ============================================================================================ pieces
def test_get_span_pairs_nearest_preceding_start():
    s = [(1, 0.9), (3, 0.8), (7, 0.6)]
    e = [(4, 0.7), (7, 0.95), (9, 0.55)]
    spans = {(a[0], b[0]) for a, b in get_span(s, e)}
    # starts 1 and 3 precede end 4: 3 (the nearest) wins and 1 is dropped; 7 == 7 pairs; end 9 has no start
    assert spans == {(3, 4), (7, 7)}
    assert get_span([(5, 0.9)], [(2, 0.9)]) == set()  # an end before every start pairs with nothing
    assert get_span([], [(2, 0.9)]) == set()
    # unsorted input is sorted by position first
    assert {(a[0], b[0]) for a, b in get_span([(6, 0.6), (2, 0.7)], [(8, 0.9), (3, 0.8)])} == {(2, 3), (6, 8)}


def test_get_bool_ids_is_strictly_greater():
    probs = np.array([0.5, 0.50001, 0.2, 0.9], dtype=np.float32)
    got = get_bool_ids_greater_than(probs, 0.5)
    assert [i for i, _ in got] == [1, 3]
    assert got[1][1] == float(np.float32(0.9))  # the float32 value as a Python float, as Taskflow sees it


def test_get_id_and_prob_rebases_prompt_offsets():
    # [CLS] 情 感 [SEP] [SEP] a b [SEP] [PAD]: prompt offsets 0..2, text offsets 0..2
    offsets = [[0, 0], [0, 1], [1, 2], [0, 0], [0, 0], [0, 1], [1, 2], [0, 0], [0, 0]]
    spans = {((1, 0.5), (2, 0.5)), ((5, 0.8), (6, 0.5)), ((8, 0.9), (8, 0.9))}
    ids, probs = get_id_and_prob(spans, offsets)
    got = dict(zip(ids, probs, strict=True))
    assert got[(-3, -1)] == 0.25  # the whole prompt, shifted by end of prompt + 1 = 3
    assert got[(0, 2)] == 0.4
    assert got[(0, 0)] == pytest.approx(0.81)  # padding: the empty span at 0
    results = convert_ids_to_results([{"text": "ab", "prompt": "情感"}], [ids], [probs])[0]
    assert {"text": "情感", "probability": 0.25} in results
    assert {"text": "ab", "start": 0, "end": 2, "probability": 0.4} in results
    assert convert_ids_to_results([{"text": "ab", "prompt": "情感"}], [[(-2, 1)]], [[0.9]]) == [[]]


def test_dbc2sbc():
    assert dbc2sbc("Ｏｒｇａｎｉｚａｔｉｏｎ！～") == "Organization!~"
    assert dbc2sbc("情感倾向[正向，负向]") == "情感倾向[正向,负向]"
    assert dbc2sbc("a\u3000b") == "a\u3000b"  # QUIRK: the ideographic space is left alone
    assert dbc2sbc("ｈｅｌｌｏ world") == "hello world"


def test_prompts_ch_and_en():
    assert build_prompt("人物", None, "ch") == "人物"
    assert build_prompt("出生地", "张三", "ch") == "张三的出生地"
    assert build_prompt("情感倾向[正向,负向]", "味道", "ch") == "味道的情感倾向[正向,负向]"
    assert build_prompt("birthplace", "Steve", "en") == "birthplace of Steve"
    assert build_prompt("sentiment [positive, negative]", "taste", "en") == "sentiment of taste [positive, negative]"
    assert build_prompt("sentiment[pos]", "x", "en") == "sentiment of x [pos]"


def test_schema_tree_and_errors():
    tree = build_schema_tree({"人物": ["出生地", {"公司": ["职位"]}]})
    assert [c.name for c in tree.children] == ["人物"]
    assert [c.name for c in tree.children[0].children] == ["出生地", "公司"]
    assert tree.children[0].children[1].children[0].name == "职位"
    assert [c.name for c in build_schema_tree("情感倾向[正向,负向]").children] == ["情感倾向[正向,负向]"]
    with pytest.raises(TypeError, match="got int"):
        build_schema_tree([1])
    with pytest.raises(TypeError, match="value of 'a'"):
        build_schema_tree({"a": 3})
    with pytest.raises(ValueError, match="empty"):
        build_schema_tree([])


def test_auto_splitter_and_joiner_rebase_offsets():
    chunks, mapping = auto_splitter(["abcdefg", "hi", ""], 3)
    assert chunks == ["abc", "def", "g", "hi", ""]
    assert mapping == {0: [0, 1, 2], 1: [3], 2: [4]}
    short = [[{"text": "b", "start": 1, "end": 2, "probability": 0.9}], [{"text": "e", "start": 1, "end": 2,
             "probability": 0.8}, {"text": "正", "probability": 0.7}], [], [], []]  # fmt: skip
    joined = auto_joiner(short, chunks, mapping)
    assert [(r["text"], r.get("start")) for r in joined[0]] == [("b", 1), ("e", 4), ("正", None)]
    assert joined[1:] == [[], []]
    with pytest.raises(ValueError, match="no room"):
        auto_splitter(["abc"], 0)


def test_auto_joiner_votes_classification_across_chunks():
    mapping = {0: [0, 1, 2], 1: [3]}
    short = [[{"text": "负向", "probability": 0.6}], [{"text": "正向", "probability": 0.9}],
             [{"text": "负向", "probability": 0.8}, {"text": "正向", "probability": 0.99}], []]  # fmt: skip
    joined = auto_joiner(short, ["a", "b", "c", "d"], mapping)
    assert joined[0] == [{"text": "负向", "probability": pytest.approx(0.7)}]  # 2 votes beat 1; mean prob
    assert joined[1] == []


# Head weights for the tiny checkpoint that steer test_classification_switch_follows_the_first_text: over the
# 32-token rows of prompt 组织 with texts SWITCH_A and SWITCH_B, start logits clear 0 only at 组 (prompt, row of A)
# and A (text, row of B), end logits only at 织 and C; every other position, padding included, is at least 11.9
# logits from 0 (found by a linear program over the rows' last hidden states; float32 noise moves these logits
# by well under 0.1).
SWITCH_A, SWITCH_B = "上海", "李四任职于ABC公司，他的同事王五来自北京。"
SWITCH_HEADS = {
    "linear_start": ([21.53, -277.65, -1123.88, 0.0, 0.0, 0.0, 0.0, -2036.92, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                     -3624.28),
    "linear_end": ([832.42, -1646.81, -290.21, 158.96, 0.0, 0.0, 0.0, -896.17, -267.48, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                    0.0], -2659.97),
}  # fmt: skip


def test_classification_switch_follows_the_first_text():
    """QUIRK (auto_joiner's is_cls_task): whether a stage is a classification is decided once per call, by the
    first item of the first non-empty result. SWITCH_A's only span is the prompt 组织, so when it comes first,
    SWITCH_B's text span ABC is reduced to a classification label with no offsets; when SWITCH_B comes first,
    both keep what they found. The expected results are what Taskflow (PaddleNLP 2.8.1) returned for
    ``Taskflow("information_extraction", schema=["组织"], model="uie-m-base", task_path=<tiny-uiem with these
    heads>, max_seq_len=32)`` on the same two orders."""
    from erniem_np import ErnieMForInformationExtraction
    from erniem_np.tokenizer import ErnieMTokenizer

    steered = ErnieMForInformationExtraction.from_pretrained(MODEL)  # its own copy: the module fixture is shared
    for name, (weight, bias) in SWITCH_HEADS.items():
        steered.params[name]["weight"] = np.array([weight], dtype=np.float32)  # [1, hidden]
        steered.params[name]["bias"] = np.array([bias], dtype=np.float32)
    ex = Extractor(steered, ["组织"], tokenizer=ErnieMTokenizer.from_pretrained(MODEL), max_seq_len=32)
    taskflow_a_first = [{"组织": [{"text": "组织", "probability": 0.9999877810851459}]},
                        {"组织": [{"text": "ABC", "probability": 0.9999939799308777}]}]  # fmt: skip
    taskflow_b_first = [{"组织": [{"text": "ABC", "start": 5, "end": 8, "probability": 0.9999939799308777}]},
                        {"组织": [{"text": "组织", "probability": 0.9999877810851459}]}]  # fmt: skip
    assert_same(ex([SWITCH_A, SWITCH_B]), taskflow_a_first, "A first", tol=1e-6)
    assert_same(ex([SWITCH_B, SWITCH_A]), taskflow_b_first, "B first", tol=1e-6)
    assert_same(ex([SWITCH_B]), taskflow_b_first[:1], "B alone", tol=1e-6)


def test_cut_chinese_sent():
    assert cut_chinese_sent("今天好。明天呢？好的") == ["今天好。", "明天呢？", "好的"]
    assert cut_chinese_sent("a\nb  ") == ["a", "b"]  # QUIRK: newlines and trailing spaces are lost


def test_max_predict_len_uses_lexicographic_max(model):
    """QUIRK: the chunk length follows max(prompts) by string order, not the longest prompt."""
    seen = []

    class Spy(Extractor):
        def _encode(self, prompts, texts):
            seen.append(texts)
            return super()._encode(prompts, texts)

    ex = Spy(model[0], ["z", "aaaaaaaaaa"], tokenizer=model[1], max_seq_len=20)
    ex(["x" * 30])
    # the stage of "aaaaaaaaaa" alone: 20 - 10 - 3 = 7 characters per chunk; max("z") alone: 16
    assert [len(t) for t in seen[0]] == [16, 14]
    assert [len(t) for t in seen[1]] == [7, 7, 7, 7, 2]


def test_padding_changes_results_under_paddle_mask(model):
    """Taskflow's numbers depend on the padding (pads attended): 32 and 64 tokens give other probabilities."""
    probs = {}

    class Spy(Extractor):
        def _row_spans(self, start_prob, end_prob):
            probs[self.max_seq_len] = start_prob.copy()
            return super()._row_spans(start_prob, end_prob)

    for n in (32, 64):
        Spy(model[0], "人物", tokenizer=model[1], max_seq_len=n)(["张三"])
    assert np.abs(probs[32][:8] - probs[64][:8]).max() > 1e-4


def test_hf_flavor_masks_padding_and_leaves_the_callers_model(model):
    """flavor="hf": padding masked, so the padded length no longer matters; the caller's model keeps "paddle"."""
    from erniem_np.tokenizer import ErnieMTokenizer

    tok = ErnieMTokenizer.from_pretrained(MODEL, flavor="hf")
    probs = {}

    class Spy(Extractor):
        def _row_spans(self, start_prob, end_prob):
            probs[self.max_seq_len] = start_prob.copy()
            return super()._row_spans(start_prob, end_prob)

    for n in (32, 64):
        Spy(model[0], "人物", tokenizer=tok, max_seq_len=n, flavor="hf")(["张三"])
    assert model[0].config.flavor == "paddle"
    np.testing.assert_allclose(probs[32][:8], probs[64][:8], atol=1e-6)


def test_native_layout_gives_the_same_results(model, tmp_path):
    """A checkpoint saved in the native layout (config.json + model.safetensors) with the tokenizer files."""
    import shutil

    model[0].save_pretrained(tmp_path)
    for name in ("sentencepiece.bpe.model", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(MODEL, name), tmp_path / name)
    case = next(c for c in CASES if c["name"] == "ch-entity")
    texts = case["texts"][:10]
    a = Extractor(str(tmp_path), case["schema"], **case["options"])(texts)
    b = Extractor(MODEL, case["schema"], **case["options"])(texts)
    assert a == b


def test_extractor_errors(model):
    with pytest.raises(ValueError, match="max_seq_len 512 is beyond"):
        Extractor(MODEL, "人物")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        Extractor("/nonexistent/uie", "人物")
    with pytest.raises(ValueError, match="extract needs a checkpoint with a UIE-M extraction head"):
        Extractor(str(ROOT / "tests" / "fixtures" / "checkpoints" / "paddle-base"), "人物", max_seq_len=8)
    with pytest.raises(ValueError, match="schema_lang"):
        Extractor(model[0], "x", tokenizer=model[1], schema_lang="fr", max_seq_len=64)
    ex = Extractor(model[0], tokenizer=model[1], max_seq_len=64)
    with pytest.raises(ValueError, match="no schema"):
        ex(["a"])
    ex.set_schema(["人物"])
    assert ex([]) == []
    with pytest.raises(ValueError, match="leaves no room for the text in max_seq_len 8"):
        Extractor(model[0], "名字很长的一个", tokenizer=model[1], max_seq_len=8)(["abc"])
    with pytest.raises(TypeError, match="each text must be a str"):
        ex([3])
    assert ex({"text": "abc"}) == ex("abc")


# ============================================================================================ command line
def run_cli(*args, stdin=None):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "erniem_np.cli", "extract", *args], input=stdin,
                          capture_output=True, text=True, env=env, cwd=ROOT)  # fmt: skip


def test_cli_json_from_stdin_equals_python(model):
    case = next(c for c in CASES if c["name"] == "en-entity")
    texts = [t for t in case["texts"][:6] if t.strip() and "\n" not in t]
    r = run_cli(MODEL, "--schema", json.dumps(case["schema"]), "--schema-lang", "en", "--max-seq-len", "64",
                "--json", stdin="\n".join(texts) + "\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    want = Extractor(model[0], case["schema"], tokenizer=model[1], schema_lang="en", max_seq_len=64)(texts)
    assert_same(got, json.loads(json.dumps(want)), "cli", tol=0.0)


def test_cli_readable_output_and_text_after_options():
    r = run_cli(MODEL, "--schema", "情感倾向[正向,负向]", "--max-seq-len", "64", "这家店很好", "味道一般")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("[1] 这家店很好\n")
    assert "[2] 味道一般" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ((MODEL, "--schema", "[1, 2", "x"), "--schema is not valid JSON"),
        ((MODEL, "--schema", "[1]", "x"), "invalid schema"),
        (("/nonexistent/uie", "--schema", "a", "x"), "no such checkpoint directory"),
        ((str(ROOT / "tests/fixtures/checkpoints/paddle-base"), "--schema", "a", "--max-seq-len", "8", "x"),
         "extract needs a checkpoint with a UIE-M extraction head"),
        ((str(ROOT / "tests/fixtures/checkpoints/hf-seq_cls-bin"), "--schema", "a", "--max-seq-len", "8", "x"),
         "extract needs a checkpoint with a UIE-M extraction head"),
        ((MODEL, "x"), "no schema"),
        ((MODEL, "--schema-file", "/nonexistent.json", "x"), "no such file"),
    ],
)  # fmt: skip
def test_cli_user_errors_are_one_line(args, message):
    r = run_cli(*args)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("erniem-np: error: ") and message in lines[0], r.stderr


def test_cli_jsonl_input_and_schema_file(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"body": "张三在北京"}\n{"body": "李四"}\n', encoding="utf-8")
    (tmp_path / "schema.json").write_text('{"人物": ["地点"]}', encoding="utf-8")
    r = run_cli(MODEL, "--schema-file", str(tmp_path / "schema.json"), "--input", str(tmp_path / "in.jsonl"),
                "--field", "body", "--max-seq-len", "64", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    want = Extractor(MODEL, {"人物": ["地点"]}, max_seq_len=64)(["张三在北京", "李四"])
    assert got == json.loads(json.dumps(want))


def test_cli_empty_stdin_is_an_error():
    r = run_cli(MODEL, "--schema", "a", "--max-seq-len", "64", stdin="")
    assert r.returncode == 1 and r.stderr.strip() == "erniem-np: error: the input is empty: no texts to process"


def test_cli_help_names_exit_codes_and_flavor():
    from erniem_np.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command").choices["extract"]
    out = io.StringIO()
    sub.print_help(out)
    text = out.getvalue()
    assert "exit codes" in text and "paddle flavor" in text and "--schema-lang" in text
