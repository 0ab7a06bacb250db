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
# (max_seq_len 512, batch_size 16, position_prob 0.5).
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

SCHEMAS = {
    "ch-entity": ("ch", ["人物", "地点", "组织"]),
    "en-entity": ("en", ["person", "location", "organization"]),
    "ch-relation": ("ch", [{"人物": ["出生地", "公司"]}]),
    "en-relation": ("en", [{"person": ["birthplace", "company"]}]),
    "ch-classification": ("ch", "情感倾向[正向，负向]"),
    "en-classification": ("en", "sentiment classification [positive, negative]"),
}


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
    """Stands in for Taskflow's predictor: run() does nothing, the outputs are given rows in order."""

    def __init__(self, start: np.ndarray, end: np.ndarray):
        self.start, self.end, self.row, self.n = start, end, 0, 0

    def run(self):
        self.row += self.n

    def handles(self):
        replay = self

        class In:
            def copy_from_cpu(self, a):
                replay.n = len(a)

        class Out:
            def __init__(self, a):
                self.a = a

            def copy_to_cpu(self):
                return self.a[replay.row - replay.n : replay.row]

        return [In(), In()], [Out(self.start), Out(self.end)]


def replay_taskflow(model_dir: Path, lang: str, schema, texts: list[str], start, end) -> list:
    """Taskflow's own pipeline (split, encode, decode, join) on the given probabilities instead of its model's."""
    tf = Taskflow("information_extraction", schema=schema, model="uie-m-base", task_path=str(model_dir),
                  schema_lang=lang)  # fmt: skip
    ti = tf.task_instance
    replay = _Replay(start, end)
    ti.predictor = replay
    ti.input_handles, ti.output_handle = replay.handles()
    return to_json(tf(texts))


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
x(args["texts"][:1])  # warm-up (numba compilation), not timed
chunks.clear(); enc.clear()
t0 = time.perf_counter()
result = x(args["texts"])
seconds = time.perf_counter() - t0
ids = np.array([r for e in enc for r in e[0]], dtype=np.int64)
pos = np.array([r for e in enc for r in e[1]], dtype=np.int64)
s, e = [], []
for b in range(0, len(tf_in["ids"]), 16):
    out = x.model(input_ids=tf_in["ids"][b:b + 16], position_ids=tf_in["pos"][b:b + 16])
    s.append(out.start_prob.astype(np.float32)); e.append(out.end_prob.astype(np.float32))
np.savez(args["out_npz"], ids=ids, pos=pos, start=np.concatenate(s), end=np.concatenate(e))
json.dump({"result": result, "chunks": chunks, "seconds": seconds}, open(args["out_json"], "w"), ensure_ascii=False)
"""


def run_erniem_np(tmp: Path, model_dir: Path, lang: str, schema, texts: list[str], tf_ids, tf_pos) -> dict:
    np.savez(tmp / "tf_inputs.npz", ids=tf_ids, pos=tf_pos)
    args = dict(model_dir=str(model_dir), schema=schema, lang=lang, texts=texts, tf_inputs=str(tmp / "tf_inputs.npz"),
                out_npz=str(tmp / "np_out.npz"), out_json=str(tmp / "np_out.json"))  # fmt: skip
    (tmp / "np_args.json").write_text(json.dumps(args, ensure_ascii=False), encoding="utf-8")
    subprocess.run([str(DEV_PYTHON), "-c", _ERNIEM_NP, str(tmp / "np_args.json")], check=True, cwd=ROOT)
    out = json.loads((tmp / "np_out.json").read_text(encoding="utf-8"))
    z = np.load(tmp / "np_out.npz")
    out.update(ids=z["ids"], pos=z["pos"], start=z["start"], end=z["end"])
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


def flat_spans(result: dict, path: str = "") -> dict:
    """{(path, text, start, end): probability} over a result tree."""
    out = {}
    for name, items in result.items():
        for it in items:
            key = (path + "/" + name, it["text"], it.get("start"), it.get("end"))
            out[key] = it["probability"]
            if "relations" in it:
                out.update(flat_spans(it["relations"], f"{path}/{name}[{it['text']}]"))
    return out


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


def compare(name: str, texts: list[str], tf: dict, npr: dict, plain, dyg) -> dict:
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
            gaps.append(abs(fa[key] - fb[key]))
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
    return dict(case=name, n_texts=len(texts), identical=identical, same_up_to_order=same_up_to_order,
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
    for st in r["stages"]:
        lines.append(f"   stage {st['stage']} ({st['prompt']}): is_cls decided by row {st['taskflow_decider_row']} / "
                     f"{st['erniem_np_decider_row']}: taskflow {st['taskflow_is_cls']}, erniem-np {st['erniem_np_is_cls']}")
        if st["set_order"] is not None:
            for side, spans in st["set_order"].items():
                lines.append(f"      {side:9s} set order: " + ", ".join(
                    f"({x['start'][0]},{x['start'][1]!r})-({x['end'][0]},{x['end'][1]!r}) hash {x['hash']}" for x in spans))
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
    texts = pick_texts()
    report = dict(paddlenlp=paddlenlp.__version__, paddle=paddle.__version__, config=CONFIG, seed=SEED,
                  head_std=HEAD_STD, head_bias=HEAD_BIAS, texts=texts, cases=[])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        model_dir = tmp / "uiem-base-random"
        build_model(model_dir)
        dyg_model = UIEM.from_pretrained(str(model_dir))
        dyg_model.eval()
        for name in cases:
            lang, schema = SCHEMAS[name]
            task_dir = tmp / f"taskflow-{name}"
            shutil.copytree(model_dir, task_dir)
            tf = run_taskflow(task_dir, lang, schema, texts)
            gc.collect()
            npr = run_erniem_np(tmp, model_dir, lang, schema, texts, tf["ids"], tf["pos"])
            plain = run_static_plain(tf["static"], tf["ids"], tf["pos"])
            gc.collect()
            dyg = run_dygraph(dyg_model, tf["ids"], tf["pos"])
            gc.collect()
            replayed = replay_taskflow(task_dir, lang, schema, texts, npr["start"], npr["end"])
            r = compare(name, texts, tf, npr, plain, dyg)
            r["taskflow_on_erniem_np_probs_equals_erniem_np"] = replayed == npr["result"]  # probabilities too
            r["taskflow_on_erniem_np_probs_texts_equal"] = sum(a == b for a, b in zip(replayed, npr["result"]))
            print(summarize(r), flush=True)
            report["cases"].append(r)
            shutil.rmtree(task_dir)
    Path(args.out).write_text(json.dumps(to_json(report), ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
