import aiohttp, datasets  # noqa: E401,F401,I001  -- must come before paddle (paddle 2.6.2's zlib breaks aiohttp)

# Compare Taskflow("information_extraction", model="uie-m-base") with erniem-np's Extractor at full size.
#
# Run from the repository root inside the Paddle reference environment:
#
#     .venv-ref-paddle/bin/python scripts/reference/check_uie_full_size.py [--cases ch-entity,...] [--out FILE]
#
# The model: a random-weight UIEM with ErnieM-base's encoder (hidden 768, 12 layers, 12 heads, 514 positions)
# over the unigram tokenizer fixture's 4,002 pieces; paddle.seed(0) default initialisation, then the
# linear_start / linear_end weights redrawn from N(0, 0.5^2) (NumPy default_rng(1)) with bias -1, so spans
# clear 0.5. Saved with UIEM.save_pretrained and ErnieMTokenizer.save_pretrained into a temporary directory
# (about 340 MB, never kept). Taskflow gets a copy of it (it rewrites model_state.pdparams and writes static/);
# erniem-np reads the untouched original.
#
# The texts: 32 lines of erniem_np/data/langid/heldout_sample.jsonl longer than 20 characters (31 evenly
# spaced, plus "documente au fost șterse"; lines PaddleNLP's tokenizer cannot give offsets for are skipped:
# Taskflow raises on them), all in one call per case, both sides with their defaults
# (max_seq_len 512, batch_size 16, position_prob 0.5). The "-long" cases take three texts joined from those 32
# instead, which Taskflow cuts into chunks (see SCHEMAS). Threads: whatever the environment says (Taskflow's
# Paddle Inference uses 1 by default; set OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 for one on both sides).
#
# Each case runs four ways on the same (prompt, chunk) rows:
#   taskflow        Taskflow itself: Paddle Inference on the exported static model, CPU defaults (MKLDNN and
#                   IR optimisation on); its inputs and probabilities are recorded as it runs
#   static-plain    the same exported static model through Paddle Inference with IR optimisation and MKLDNN off
#   dygraph         paddlenlp.transformers.UIEM.from_pretrained(DIR) in eval mode, no attention mask (the
#                   implicit mask Taskflow's export uses)
#   erniem-np       erniem_np's Extractor(DIR, schema, schema_lang=...) (run in .venv through a subprocess:
#                   this environment pins NumPy 1); its model also runs on Taskflow's recorded input rows
#
# Printed and written (JSON, --out, default /tmp/check_uie_full_size.json): per case the texts whose results
# are identical, the results that differ, the largest probability gap on spans both sides found, the inputs'
# equality, the max abs difference of the start/end probabilities between every pair of runs, the positions
# where the runs fall on different sides of position_prob, per (text, prompt) chunk the first span of each
# side (and whether it is a prompt span: no start/end), and the time each side took.
#
# How the texts compare, per case: (a) identical as Taskflow returns them (probabilities aside: they differ
# by float rounding); (b) identical up to the order of list items; (c) for each text that still differs, why:
#   list order   the same items in another order (the order of a Python set keyed on the float probabilities)
#   set order    more than order, but with get_span's set replaced by a list sorted on (start, end) on both
#                sides the results agree (Taskflow: its pipeline on its recorded probabilities, its own
#                predictor for rows it never ran; erniem-np: run again so): the difference comes from the
#                set's hash order (auto_joiner's is_cls_task, a classification's first-span vote)
#   threshold    a position of the text's rows lies on different sides of 0.5 in the two runs, each such
#                position closer to 0.5 than Paddle's own paths differ among themselves (listed with every
#                run's probability there)
#   unexplained  anything else.
# The decoding replays feed Taskflow's pipeline recorded probabilities, looked up by input row, in place of
# its predictor; replaying Taskflow's own recorded probabilities must give Taskflow's result (checked).

import argparse
import copy
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paddle
import paddlenlp
from paddlenlp import Taskflow
from paddlenlp.taskflow import information_extraction as ie_module
from paddlenlp.transformers import UIEM, ErnieMConfig, ErnieMTokenizer

ROOT = Path(__file__).resolve().parents[2]
DEV_PYTHON = ROOT / ".venv" / "bin" / "python"
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "tokenizer" / "unigram"
HELDOUT = ROOT / "erniem_np" / "data" / "langid" / "heldout_sample.jsonl"
SEED = 0
HEAD_STD, HEAD_BIAS = 0.5, -1.0
REPORTED_TEXT = "documente au fost șterse"

CONFIG = dict(
    vocab_size=4002,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    pad_token_id=1,
)

# case -> (schema_lang, schema, texts): "short" is the 32 texts, "short8" the first 8 of them (relations: every
# answer of the first stage becomes two rows of the second, about 6 answers per text with these heads), "long"
# three texts joined from the 32 (about 1,960, 1,960 and 560 characters) that Taskflow's auto_splitter cuts
# into 4, 4 and 2 chunks.
SCHEMAS = {
    "ch-entity": ("ch", ["人物", "地点", "组织"], "short"),
    "en-entity": ("en", ["person", "location", "organization"], "short"),
    "ch-relation": ("ch", [{"人物": ["出生地", "公司"]}], "short8"),
    "en-relation": ("en", [{"person": ["birthplace", "company"]}], "short8"),
    "ch-classification": ("ch", "情感倾向[正向，负向]", "short"),
    "en-classification": ("en", "sentiment classification [positive, negative]", "short"),
    "ch-entity-long": ("ch", ["人物", "地点", "组织"], "long"),
    "ch-classification-long": ("ch", "情感倾向[正向，负向]", "long"),
}


def long_texts(texts: list[str]) -> list[str]:
    return [" ".join(texts), " ".join(reversed(texts)), " ".join(texts[5:12])]


def pick_texts(n: int = 32) -> list[str]:
    rows = [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok = ErnieMTokenizer.from_pretrained(str(TOKENIZER_DIR))
    long = [r["text"] for r in rows if len(r["text"]) > 20 and offsets_ok(tok, r["text"])]
    texts = [long[(i * len(long)) // (n - 1)] for i in range(n - 1)]
    assert REPORTED_TEXT in long and REPORTED_TEXT not in texts
    return texts + [REPORTED_TEXT]


def offsets_ok(tok, text: str) -> bool:
    """PaddleNLP's ErnieMTokenizer.get_offset_mapping raises on a few texts (3 Bengali lines of the sample:
    "substring not found"), and Taskflow with it; such texts are left out."""
    try:
        tok(text=["x"], text_pair=[text], return_offsets_mapping=True)
        return True
    except ValueError:
        return False


def build_model(model_dir: Path) -> None:
    paddle.seed(SEED)
    model = UIEM(ErnieMConfig(**CONFIG))
    model.eval()
    rng = np.random.default_rng(SEED + 1)
    state = model.state_dict()
    for name in ("linear_start", "linear_end"):
        w = state[f"{name}.weight"]
        w.set_value((rng.standard_normal(w.shape) * HEAD_STD).astype("float32"))
        state[f"{name}.bias"].set_value(np.full([1], HEAD_BIAS, dtype="float32"))
    model.save_pretrained(str(model_dir))
    ErnieMTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(str(model_dir))


# ----------------------------------------------------------------------------------------- Taskflow recorder
class _Handle:
    """Wraps a Paddle Inference input handle to keep what Taskflow feeds it."""

    def __init__(self, handle, store: list):
        self._h, self._store = handle, store

    def copy_from_cpu(self, a):
        self._store.append(np.array(a))
        return self._h.copy_from_cpu(a)

    def __getattr__(self, name):
        return getattr(self._h, name)


class Recorder:
    def __init__(self):
        self.ids, self.pos, self.probs, self.chunk_results = [], [], [], []
        self.original = ie_module.get_bool_ids_greater_than

    def bool_ids(self, probs, limit=0.5, return_prob=False):
        self.probs.append(np.asarray(probs, dtype=np.float32))  # start, end, start, end, ... per batch
        return self.original(probs, limit=limit, return_prob=return_prob)


def run_taskflow(model_dir: Path, lang: str, schema, texts: list[str]) -> dict:
    tf = Taskflow("information_extraction", schema=schema, model="uie-m-base", task_path=str(model_dir),
                  schema_lang=lang)  # fmt: skip
    ti = tf.task_instance
    rec = Recorder()
    ti.input_handles = [_Handle(ti.input_handles[0], rec.ids), _Handle(ti.input_handles[1], rec.pos)]
    convert = ti._convert_ids_to_results

    def convert_rec(short_inputs, sentence_ids, probs):
        out = convert(short_inputs, sentence_ids, probs)
        rec.chunk_results.append({"prompts": [e["prompt"] for e in short_inputs],
                                  "texts": [e["text"] for e in short_inputs], "results": copy.deepcopy(out)})  # fmt: skip
        return out

    ti._convert_ids_to_results = convert_rec
    ie_module.get_bool_ids_greater_than = rec.bool_ids
    try:
        t0 = time.perf_counter()
        result = tf(texts)
        seconds = time.perf_counter() - t0
    finally:
        ie_module.get_bool_ids_greater_than = rec.original
    start = np.concatenate(rec.probs[0::2]) if rec.probs else np.zeros((0, 0), np.float32)
    end = np.concatenate(rec.probs[1::2]) if rec.probs else np.zeros((0, 0), np.float32)
    return dict(result=to_json(result), seconds=seconds, ids=np.concatenate(rec.ids), pos=np.concatenate(rec.pos),
                start=start, end=end, chunks=to_json(rec.chunk_results), num_threads=ti._num_threads,
                static=ti.inference_model_path)  # fmt: skip


class _Replay:
    """Stands in for Taskflow's predictor: run() looks each fed row (input ids and position ids) up in a table
    of recorded probabilities, so the rows may come in any order. A row not in the table goes to ``fallback``
    (ids, pos -> start, end; counted in ``n_fallback``) if given, else raises KeyError."""

    def __init__(self, ids: np.ndarray, pos: np.ndarray, start: np.ndarray, end: np.ndarray, fallback=None):
        self.table = {row_key(i, p): (s, e) for i, p, s, e in zip(ids, pos, start, end)}
        self.fed, self.out, self.fallback, self.n_fallback = [], None, fallback, 0

    def run(self):
        ids, pos = self.fed
        self.fed = []
        missing = [k for k, (i, p) in enumerate(zip(ids, pos)) if row_key(i, p) not in self.table]
        if missing and self.fallback is not None:
            ms, me = self.fallback(ids[missing], pos[missing])
            for k, a, b in zip(missing, ms, me):
                self.table[row_key(ids[k], pos[k])] = (a, b)
            self.n_fallback += len(missing)
        rows = [self.table[row_key(i, p)] for i, p in zip(ids, pos)]
        self.out = (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))

    def handles(self):
        replay = self

        class In:
            def copy_from_cpu(self, a):
                replay.fed.append(np.asarray(a))

        class Out:
            def __init__(self, k):
                self.k = k

            def copy_to_cpu(self):
                return replay.out[self.k]

        return [In(), In()], [Out(0), Out(1)]


def row_key(ids, pos) -> bytes:
    return np.asarray(ids, dtype=np.int64).tobytes() + b"|" + np.asarray(pos, dtype=np.int64).tobytes()


def _ordered_get_span(start_ids, end_ids, with_prob=False):
    """Taskflow's get_span with its set replaced by a list sorted on (start index, end index)."""
    return sorted(ORIGINAL_GET_SPAN(start_ids, end_ids, with_prob=with_prob), key=lambda se: (se[0][0], se[1][0])
                  if with_prob else se)  # fmt: skip


ORIGINAL_GET_SPAN = ie_module.get_span


def make_replayer(task_dir: Path, lang: str, schema):
    """A Taskflow of the case whose predictor replay_taskflow replaces (a call keeps no state, so one serves
    every replay); its real predictor is kept to compute rows the recording lacks."""
    tf = Taskflow("information_extraction", schema=schema, model="uie-m-base", task_path=str(task_dir),
                  schema_lang=lang)  # fmt: skip
    ti = tf.task_instance
    real = (ti.predictor, ti.input_handles, ti.output_handle)

    def run_real(ids, pos):
        real[1][0].copy_from_cpu(ids)
        real[1][1].copy_from_cpu(pos)
        real[0].run()
        return real[2][0].copy_to_cpu(), real[2][1].copy_to_cpu()

    tf.run_real = run_real
    return tf


def replay_taskflow(tf, texts: list[str], ids, pos, start, end, ordered: bool = False, own_model: bool = False):
    """Taskflow's own pipeline (split, encode, decode, join) on recorded probabilities instead of its model's.
    ``tf``: from make_replayer. ``ordered``: get_span's set replaced by a sorted list, so the order of spans
    no longer depends on the hash of their float probabilities. ``own_model``: rows not recorded (a changed
    decision in one stage changes the next stage's prompts) are run through Taskflow's own predictor.
    Returns the result and the number of rows so run."""
    ti = tf.task_instance
    replay = _Replay(ids, pos, start, end, fallback=tf.run_real if own_model else None)
    ti.predictor = replay
    ti.input_handles, ti.output_handle = replay.handles()
    if ordered:
        ie_module.get_span = _ordered_get_span
    try:
        return to_json(tf(texts)), replay.n_fallback
    finally:
        ie_module.get_span = ORIGINAL_GET_SPAN


def run_static_plain(static_prefix: str, ids: np.ndarray, pos: np.ndarray, batch: int = 4):
    """The exported model through Paddle Inference with no IR passes and no MKLDNN (batch size does not change
    the rows' numbers; small batches and memory_optim keep the 12 layers' intermediates from filling memory)."""
    config = paddle.inference.Config(static_prefix + ".pdmodel", static_prefix + ".pdiparams")
    config.disable_gpu()
    config.switch_ir_optim(False)
    config.disable_mkldnn()
    config.switch_use_feed_fetch_ops(False)
    config.disable_glog_info()
    config.enable_memory_optim()
    predictor = paddle.inference.create_predictor(config)
    ins = [predictor.get_input_handle(n) for n in predictor.get_input_names()]
    outs = [predictor.get_output_handle(n) for n in predictor.get_output_names()]
    s, e = [], []
    for b in range(0, len(ids), batch):
        ins[0].copy_from_cpu(ids[b : b + batch])
        ins[1].copy_from_cpu(pos[b : b + batch])
        predictor.run()
        s.append(outs[0].copy_to_cpu())
        e.append(outs[1].copy_to_cpu())
    return np.concatenate(s), np.concatenate(e)


def run_dygraph(model: UIEM, ids: np.ndarray, pos: np.ndarray, batch: int = 4):
    s, e = [], []
    with paddle.no_grad():
        for b in range(0, len(ids), batch):
            sp, ep = model(paddle.to_tensor(ids[b : b + batch]), position_ids=paddle.to_tensor(pos[b : b + batch]))
            s.append(sp.numpy())
            e.append(ep.numpy())
    return np.concatenate(s), np.concatenate(e)


# ----------------------------------------------------------------------------------------- erniem-np (in .venv)
_ERNIEM_NP = r"""
import copy, json, sys, time
import numpy as np
from erniem_np.pipelines import extract as ex

args = json.load(open(sys.argv[1]))
tf_in = np.load(args["tf_inputs"])
chunks, enc = [], []
convert = ex.convert_ids_to_results

def convert_rec(examples, sentence_ids, probs):
    out = convert(examples, sentence_ids, probs)
    chunks.append({"prompts": [e["prompt"] for e in examples], "texts": [e["text"] for e in examples],
                   "results": copy.deepcopy(out)})
    return out

ex.convert_ids_to_results = convert_rec
x = ex.Extractor(args["model_dir"], args["schema"], schema_lang=args["lang"])
encode = x._encode

def encode_rec(prompts, texts):
    out = encode(prompts, texts)
    enc.append(out)
    return out

x._encode = encode_rec
run_model = x._run_model
own = []

def run_model_rec(input_ids, position_ids):
    for group, sp, ep in run_model(input_ids, position_ids):
        own.append((sp, ep))
        yield group, sp, ep

x._run_model = run_model_rec
x(args["texts"][:1])  # warm-up (numba compilation), not timed
chunks.clear(); enc.clear(); own.clear()
t0 = time.perf_counter()
result = x(args["texts"])
seconds = time.perf_counter() - t0
ids = np.array([r for e in enc for r in e[0]], dtype=np.int64)
pos = np.array([r for e in enc for r in e[1]], dtype=np.int64)
s, e = [], []
for b in range(0, len(tf_in["ids"]), 16):
    out = x.model(input_ids=tf_in["ids"][b:b + 16], position_ids=tf_in["pos"][b:b + 16])
    s.append(out.start_prob.astype(np.float32)); e.append(out.end_prob.astype(np.float32))
np.savez(args["out_npz"], ids=ids, pos=pos, start=np.concatenate(s), end=np.concatenate(e),
         own_start=np.concatenate([o[0] for o in own]), own_end=np.concatenate([o[1] for o in own]))
# the same with get_span's set replaced by a list sorted on (start, end): no hash order left
get_span = ex.get_span
ex.get_span = lambda s, e: sorted(get_span(s, e), key=lambda se: (se[0][0], se[1][0]))
ordered = x(args["texts"])
json.dump({"result": result, "chunks": chunks, "seconds": seconds, "ordered_result": ordered},
          open(args["out_json"], "w"), ensure_ascii=False)
"""


def run_erniem_np(tmp: Path, model_dir: Path, lang: str, schema, texts: list[str], tf_ids, tf_pos) -> dict:
    np.savez(tmp / "tf_inputs.npz", ids=tf_ids, pos=tf_pos)
    args = dict(model_dir=str(model_dir), schema=schema, lang=lang, texts=texts, tf_inputs=str(tmp / "tf_inputs.npz"),
                out_npz=str(tmp / "np_out.npz"), out_json=str(tmp / "np_out.json"))  # fmt: skip
    (tmp / "np_args.json").write_text(json.dumps(args, ensure_ascii=False), encoding="utf-8")
    subprocess.run([str(DEV_PYTHON), "-c", _ERNIEM_NP, str(tmp / "np_args.json")], check=True, cwd=ROOT)
    out = json.loads((tmp / "np_out.json").read_text(encoding="utf-8"))
    z = np.load(tmp / "np_out.npz")
    out.update(ids=z["ids"], pos=z["pos"], start=z["start"], end=z["end"], own_start=z["own_start"],
               own_end=z["own_end"])  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------- comparison
def to_json(obj):
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def flat_spans(result: dict, path: str = "", out: dict | None = None) -> dict:
    """{(path, text, start, end): sorted probabilities} over a result tree (a key repeats when chunks of one
    text find the same prompt span, which has no offsets)."""
    out = {} if out is None else out
    for name, items in result.items():
        for it in items:
            key = (path + "/" + name, it["text"], it.get("start"), it.get("end"))
            out.setdefault(key, []).append(it["probability"])
            if "relations" in it:
                flat_spans(it["relations"], f"{path}/{name}[{it['text']}]", out)
    return {k: sorted(v) for k, v in out.items()}


def strip_probs(obj):
    if isinstance(obj, dict):
        return {k: strip_probs(v) for k, v in obj.items() if k != "probability"}
    if isinstance(obj, list):
        return [strip_probs(v) for v in obj]
    return obj


def first_spans(chunks: list[dict]) -> list[dict]:
    out = []
    for stage, c in enumerate(chunks):
        for prompt, text, res in zip(c["prompts"], c["texts"], c["results"]):
            f = res[0] if res else None
            out.append(dict(stage=stage, prompt=prompt, text=text, n=len(res),
                            first=None if f is None else {k: f[k] for k in ("text", "start", "end") if k in f},
                            prompt_span=None if f is None else ("start" not in f and "end" not in f),
                            spans=sorted([[r["text"], r.get("start"), r.get("end")] for r in res], key=str)))  # fmt: skip
    return out


def sorted_result(result: dict):
    """A result with every list sorted and probabilities dropped: equal iff only the order of items differs."""
    def norm(obj):
        if isinstance(obj, dict):
            return {k: norm(v) for k, v in obj.items() if k != "probability"}
        if isinstance(obj, list):
            return sorted((norm(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False))
        return obj
    return norm(result)


def set_order(row: int, tf: dict, npr: dict, limit: float = 0.5) -> dict:
    """Row ``row``'s span set built from each side's probabilities, in set iteration order, with the tuple
    hashes that decide it (Taskflow's get_bool_ids_greater_than / get_span, run here on both sides' numbers)."""
    out = {}
    for side, d in (("taskflow", tf), ("erniem_np", npr)):
        sp, ep = d["start"][row].astype(np.float64), d["end"][row].astype(np.float64)
        starts = [(int(i), sp[i]) for i in np.flatnonzero(sp > limit)]
        ends = [(int(i), ep[i]) for i in np.flatnonzero(ep > limit)]
        spans = ie_module.get_span(starts, ends, with_prob=True)
        out[side] = [dict(start=[s[0], float(s[1])], end=[e[0], float(e[1])], hash=hash((s, e))) for s, e in spans]
    return out


def threshold_flips(a: np.ndarray, b: np.ndarray, limit: float = 0.5) -> list:
    rows, cols = np.nonzero((a > limit) != (b > limit))
    return [[int(r), int(c), float(a[r, c]), float(b[r, c])] for r, c in zip(rows, cols)]


def nearest_to_limit(a: np.ndarray, limit: float = 0.5) -> float:
    return float(np.min(np.abs(a.astype(np.float64) - limit))) if a.size else float("nan")


def row_texts(chunks: list[dict], texts: list[str]) -> list[int]:
    """The index of the input text each recorded row (prompt, chunk) belongs to."""
    out = []
    for c in chunks:
        for chunk in c["texts"]:
            out.append(next(k for k, t in enumerate(texts) if chunk in t))
    return out


def explain_flips(flips: list, runs: dict, limit: float = 0.5) -> list[dict]:
    """Each position where Taskflow and erniem-np fall on different sides of ``limit``, with every run's
    probability there, its distance from ``limit``, and whether it lies within the spread of Paddle's own
    float32 paths (the largest |dp| between Taskflow and the static model without MKLDNN or the dygraph)."""
    spread = {k: max(float(np.max(np.abs(runs["taskflow"][k] - runs[o][k]))) for o in ("static-plain", "dygraph"))
              for k in (0, 1)}  # fmt: skip
    out = []
    for which, k in (("start", 0), ("end", 1)):
        for r, c, _, _ in flips[which]:
            p = {name: float(v[k][r, c]) for name, v in runs.items()}
            dist = max(abs(p["taskflow"] - limit), abs(p["erniem-np"] - limit))
            out.append(dict(row=r, position=c, which=which, probabilities=p, distance_from_limit=dist,
                            paddle_spread=spread[k], within_paddle_spread=dist <= spread[k],
                            paddle_paths_disagree=len({v > limit for n, v in p.items() if n != "erniem-np"}) > 1))  # fmt: skip
    return out


def explain_texts(texts, tf, npr, ordered_tf, ordered_np, flips: list[dict], rows_of: list[int],
                  decider_rows: set[int]) -> list[dict]:  # fmt: skip
    """Why each text differs, in this order: 'list order' (the same items, lists in another order);
    'set order' (with get_span's set replaced by a sorted list, Taskflow and erniem-np give the same result:
    the difference comes from the hash order of the float
    probabilities, e.g. through auto_joiner's is_cls_task or a classification's first-span vote);
    'threshold' (a position of one of the text's rows falls on different sides of 0.5, every such position
    within the spread of Paddle's own float32 paths; such a position in a row that decided a stage's
    is_cls_task counts for every text, since the switch reaches every text of the stage); else 'unexplained'."""
    out = []
    for k, text in enumerate(texts):
        a, b = tf["result"][k], npr["result"][k]
        if strip_probs(a) == strip_probs(b):
            continue
        mine = [f for f in flips if rows_of[f["row"]] == k or f["row"] in decider_rows]
        if sorted_result(a) == sorted_result(b):
            why = "list order"
        elif ordered_tf is not None and ordered_np is not None and (
            strip_probs(ordered_tf[k]) == strip_probs(ordered_np[k])
        ):
            why = "set order"
        elif mine and all(f["within_paddle_spread"] for f in mine):
            why = "threshold"
        else:
            why = "unexplained"
        out.append(dict(index=k, text=text, why=why, flips=mine))
    return out


def compare(name: str, texts: list[str], tf: dict, npr: dict, plain, dyg, ordered_tf=None, ordered_np=None) -> dict:
    runs = {"taskflow": (tf["start"], tf["end"]), "static-plain": plain, "dygraph": dyg,
            "erniem-np": (npr["start"], npr["end"])}  # fmt: skip
    names = list(runs)
    prob_diff, flips = {}, {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, ea = runs[a]
            sb, eb = runs[b]
            prob_diff[f"{a} vs {b}"] = {"start": float(np.max(np.abs(sa - sb))), "end": float(np.max(np.abs(ea - eb)))}
            flips[f"{a} vs {b}"] = {"start": threshold_flips(sa, sb), "end": threshold_flips(ea, eb)}
    same_inputs = (tf["ids"].shape == npr["ids"].shape and bool((tf["ids"] == npr["ids"]).all())
                   and bool((tf["pos"] == npr["pos"]).all()))  # fmt: skip
    identical, differing, gaps = 0, [], []
    for k, text in enumerate(texts):
        a, b = tf["result"][k], npr["result"][k]
        fa, fb = flat_spans(a), flat_spans(b)
        for key in set(fa) & set(fb):
            if len(fa[key]) == len(fb[key]):
                gaps.extend(abs(x - y) for x, y in zip(fa[key], fb[key]))
        if strip_probs(a) == strip_probs(b):
            identical += 1
        else:
            differing.append(dict(index=k, text=text, taskflow=a, erniem_np=b,
                                  only_taskflow=[list(x) for x in set(fa) - set(fb)],
                                  only_erniem_np=[list(x) for x in set(fb) - set(fa)]))  # fmt: skip
    same_up_to_order = sum(sorted_result(tf["result"][k]) == sorted_result(npr["result"][k]) for k in range(len(texts)))
    ft, fn = first_spans(tf["chunks"]), first_spans(npr["chunks"])
    first = []
    for x, y in zip(ft, fn):
        first.append(dict(stage=x["stage"], prompt=x["prompt"], text=x["text"], taskflow=x["first"],
                          taskflow_prompt_span=x["prompt_span"], erniem_np=y["first"],
                          erniem_np_prompt_span=y["prompt_span"], same_first=x["first"] == y["first"],
                          same_span_set=x["spans"] == y["spans"]))  # fmt: skip
    stages = []
    for st in sorted({f["stage"] for f in first}):
        row0 = next(i for i, f in enumerate(first) if f["stage"] == st)
        x = next((i for i, f in enumerate(first) if f["stage"] == st and f["taskflow"] is not None), None)
        y = next((i for i, f in enumerate(first) if f["stage"] == st and f["erniem_np"] is not None), None)
        stages.append(dict(stage=st, prompt=first[row0]["prompt"], taskflow_decider_row=x, erniem_np_decider_row=y,
                           taskflow_is_cls=None if x is None else first[x]["taskflow_prompt_span"],
                           erniem_np_is_cls=None if y is None else first[y]["erniem_np_prompt_span"],
                           set_order=None if x is None else set_order(x, tf, npr)))  # fmt: skip
    flips_tf_np = explain_flips(flips["taskflow vs erniem-np"], runs)
    deciders = {st[k] for st in stages for k in ("taskflow_decider_row", "erniem_np_decider_row") if st[k] is not None}
    explained = explain_texts(texts, tf, npr, ordered_tf, ordered_np, flips_tf_np, row_texts(tf["chunks"], texts),
                              deciders)  # fmt: skip
    return dict(case=name, n_texts=len(texts), identical=identical, same_up_to_order=same_up_to_order,
                explained=explained, flips_taskflow_vs_erniem_np=flips_tf_np,
                ordered_decoding_same_texts=None if ordered_tf is None or ordered_np is None else
                sum(strip_probs(x) == strip_probs(y) for x, y in zip(ordered_tf, ordered_np)),
                stages=stages, differing=differing,
                max_prob_gap=max(gaps) if gaps else 0.0, n_common_spans=len(gaps), same_inputs=same_inputs,
                rows=int(len(tf["ids"])), taskflow_row_shape=list(tf["ids"].shape),
                erniem_np_row_shape=list(npr["ids"].shape), prob_max_abs_diff=prob_diff, threshold_flips=flips,
                nearest_to_0_5={k: {"start": nearest_to_limit(v[0]), "end": nearest_to_limit(v[1])}
                                for k, v in runs.items()},
                first_spans=first, taskflow_seconds=tf["seconds"], erniem_np_seconds=npr["seconds"],
                taskflow_num_threads=tf["num_threads"])  # fmt: skip


def summarize(r: dict) -> str:
    lines = [f"== {r['case']}: {r['identical']}/{r['n_texts']} texts identical; rows {r['rows']} "
             f"(taskflow {r['taskflow_row_shape']}, erniem-np {r['erniem_np_row_shape']}), same inputs: "
             f"{r['same_inputs']}; max prob gap on {r['n_common_spans']} common spans: {r['max_prob_gap']:.3g}"]  # fmt: skip
    for k, v in r["prob_max_abs_diff"].items():
        nf = len(r["threshold_flips"][k]["start"]) + len(r["threshold_flips"][k]["end"])
        lines.append(f"   max|dp| {k:28s} start {v['start']:.3g}  end {v['end']:.3g}  positions across 0.5: {nf}")
    lines[0] += f"; identical up to list order: {r['same_up_to_order']}"
    n = r["n_texts"]
    whys = [e["why"] for e in r["explained"]]
    lines.append(f"   (a) identical as returned {r['identical']}/{n}; (b) identical up to list order "
                 f"{r['same_up_to_order']}/{n}; (c) of the {len(whys)} differing: "
                 + ", ".join(f"{w} {whys.count(w)}" for w in ("list order", "set order", "threshold", "unexplained"))
                 + f"; with get_span's set sorted, Taskflow's decoding on each side's probabilities agrees on "
                 f"{r['ordered_decoding_same_texts']}/{n}")  # fmt: skip
    for e in r["explained"]:
        if e["why"] != "list order":
            lines.append(f"      text {e['index']} ({e['text'][:30]!r}): {e['why']}")
    for f in r["flips_taskflow_vs_erniem_np"]:
        p = f["probabilities"]
        lines.append(f"      across 0.5: row {f['row']} {f['which']} {f['position']}: "
                     + ", ".join(f"{k} {v:.9f}" for k, v in p.items())
                     + f"; |p-0.5| <= {f['distance_from_limit']:.3g} vs Paddle's own spread {f['paddle_spread']:.3g}"
                     + ("; Paddle's own paths disagree" if f["paddle_paths_disagree"] else ""))  # fmt: skip
    for st in r["stages"]:
        lines.append(f"   stage {st['stage']} ({st['prompt']}): is_cls decided by row {st['taskflow_decider_row']} / "
                     f"{st['erniem_np_decider_row']}: taskflow {st['taskflow_is_cls']}, erniem-np {st['erniem_np_is_cls']}")
        if st["set_order"] is not None:
            for side, spans in st["set_order"].items():
                lines.append(f"      {side:9s} set order: " + ", ".join(
                    f"({x['start'][0]},{x['start'][1]!r})-({x['end'][0]},{x['end'][1]!r}) hash {x['hash']}" for x in spans[:8])
                    + (f", ... ({len(spans)} spans)" if len(spans) > 8 else ""))
    fs = r["first_spans"]
    lines.append(f"   chunks: {len(fs)}; same first span {sum(f['same_first'] for f in fs)}; same span set "
                 f"{sum(f['same_span_set'] for f in fs)}; first is a prompt span: taskflow "
                 f"{sum(bool(f['taskflow_prompt_span']) for f in fs)}, erniem-np "
                 f"{sum(bool(f['erniem_np_prompt_span']) for f in fs)}")  # fmt: skip
    lines.append(f"   time: taskflow {r['taskflow_seconds']:.1f} s ({r['n_texts'] / r['taskflow_seconds']:.2f} texts/s,"
                 f" {r['taskflow_num_threads']} threads), erniem-np {r['erniem_np_seconds']:.1f} s "
                 f"({r['n_texts'] / r['erniem_np_seconds']:.2f} texts/s)")  # fmt: skip
    lines.append(f"   Taskflow's own decoding on erniem-np's probabilities gives erniem-np's results: "
                 f"{r.get('taskflow_on_erniem_np_probs_texts_equal')}/{r['n_texts']} texts "
                 f"(all, probabilities included: {r.get('taskflow_on_erniem_np_probs_equals_erniem_np')})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", default="ch-entity", help=f"comma-separated, of {','.join(SCHEMAS)} (or 'all')")
    ap.add_argument("--out", default="/tmp/check_uie_full_size.json")
    args = ap.parse_args()
    cases = list(SCHEMAS) if args.cases == "all" else args.cases.split(",")
    short = pick_texts()
    report = dict(paddlenlp=paddlenlp.__version__, paddle=paddle.__version__, config=CONFIG, seed=SEED,
                  head_std=HEAD_STD, head_bias=HEAD_BIAS, texts=short, long_texts=long_texts(short),
                  threads={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}, cases=[])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        model_dir = tmp / "uiem-base-random"
        build_model(model_dir)
        dyg_model = UIEM.from_pretrained(str(model_dir))
        dyg_model.eval()
        for name in cases:
            lang, schema, kind = SCHEMAS[name]
            texts = {"short": short, "short8": short[:8], "long": long_texts(short)}[kind]
            task_dir = tmp / f"taskflow-{name}"
            shutil.copytree(model_dir, task_dir)
            tf = run_taskflow(task_dir, lang, schema, texts)
            gc.collect()
            npr = run_erniem_np(tmp, model_dir, lang, schema, texts, tf["ids"], tf["pos"])
            plain = run_static_plain(tf["static"], tf["ids"], tf["pos"])
            gc.collect()
            dyg = run_dygraph(dyg_model, tf["ids"], tf["pos"])
            gc.collect()
            own = (npr["ids"], npr["pos"], npr["own_start"], npr["own_end"])
            recorded = (tf["ids"], tf["pos"], tf["start"], tf["end"])
            replayer = make_replayer(task_dir, lang, schema)
            replayed, _ = replay_taskflow(replayer, texts, *own)
            self_check = replay_taskflow(replayer, texts, *recorded)[0] == tf["result"]
            # Taskflow with sorted sets: its recorded probabilities, its own predictor for rows it never ran;
            # erniem-np with sorted sets: run in the subprocess
            ordered_tf, n_new_rows = replay_taskflow(replayer, texts, *recorded, ordered=True, own_model=True)
            r = compare(name, texts, tf, npr, plain, dyg, ordered_tf, npr["ordered_result"])
            r["ordered_taskflow_rows_run_anew"] = n_new_rows
            r["replay_of_taskflow_probs_equals_taskflow"] = self_check
            r["taskflow_on_erniem_np_probs_equals_erniem_np"] = replayed == npr["result"]  # probabilities too
            r["taskflow_on_erniem_np_probs_texts_equal"] = sum(a == b for a, b in zip(replayed, npr["result"]))
            print(summarize(r), flush=True)
            print(f"   replaying Taskflow's recorded probabilities gives Taskflow's result: {self_check}", flush=True)
            report["cases"].append(r)
            shutil.rmtree(task_dir)
            # written after every case, so a long run keeps what it has
            Path(args.out).write_text(json.dumps(to_json(report), ensure_ascii=False, indent=1), encoding="utf-8")
            print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
