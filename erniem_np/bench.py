"""Benchmark an ErnieM-base forward pass: erniem-np (numba, int8, numpy) against HF transformers (torch eager)
and ONNX Runtime (the model exported from HF: as exported, after ORT's BERT optimizer, and that graph with
dynamic int8 quantization), in one run, same weights, same thread count.

    pip install "erniem-np[reference,bench]"     # torch + transformers; onnx, onnxruntime, matplotlib
    erniem-np bench --threads 2 --out bench-results    # or: python scripts/bench/bench_model.py ... in a checkout

``--size tiny`` runs the same harness on a 2-layer toy model in seconds (a smoke test, not a measurement);
``--impls`` picks implementations.

Each implementation runs in its own subprocess (so peak RSS is its own and thread pools do not mix), on the
same random ErnieM-base-shaped weights (seeded, full 250,002-token vocabulary, 1.11 GB) written once to a
temporary safetensors checkpoint. The subprocesses stay up for the whole run and take turns: for each workload,
each round times one call of every implementation, in an order that rotates from round to round, with a pause
after every call (the frameworks' and OpenBLAS's threads spin-wait for a while after a call and would take the
cores from the next one). So a slow stretch of a shared machine lands on every implementation alike, and the
ratios compare calls made seconds apart. Workloads: B=1 L=16 (one short text: reading the weights is much of
its time), B=1 L=128, B=8 L=128, B=1 L=512, and 64 texts of mixed
length (token counts of lines of the multilingual fixture corpus); erniem-np batches those as its task commands
do (``pipelines.base.bucket_batches``, batches of at most 32 similar lengths), the frameworks pad the batch to
its longest text. Reported: median latency (and the spread of the rounds),
throughput, effective GFLOP/s (useful FLOPs, padding not counted), the percentage of the OpenBLAS sgemm rate
measured in the same run, peak RSS. Writes results.json, results.md and results.png into --out.

Before anything is timed, each implementation's output on a check batch is compared with erniem-np's NumPy
layers: a float32 implementation that differs by more than ``CHECK_TOLERANCE`` computes something else and
is not timed. The int8 implementations cannot match float32 that closely; their difference (largest, and the
lowest cosine of a token's vector) is reported beside their times. On random weights that difference says
nothing about accuracy on a task (docs/quantization.md measures that on trained weights). erniem-np int8 loads
a native int8 checkpoint written by ``convert --quantize int8`` from the same weights.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

# The thread variables as this process found them when it started, before numpy (imported above) read them:
# what a worker's libraries actually run with. The driver reports them per implementation.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_THREAD_ENV_AT_START = {k: os.environ.get(k) for k in THREAD_VARS}
WORKLOADS = ["B1_L16", "B1_L128", "B8_L128", "B1_L512", "mixed64"]
IMPLS = ["erniem-np numba", "erniem-np int8", "erniem-np numpy", "torch eager", "onnxruntime",
         "onnxruntime optimized", "onnxruntime int8"]  # fmt: skip
INT8_IMPLS = ("erniem-np int8", "onnxruntime int8")
ONNX_FILES = {"onnxruntime": "model.onnx", "onnxruntime optimized": "model.opt.onnx", "onnxruntime int8": "model.int8.onnx"}
INT8_DIR = "int8"  # the native int8 checkpoint, beside the float32 one
SIZES = {  # ErnieM-base, and a toy for smoke runs
    "base": {},
    "tiny": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
}

# Token counts (with [CLS] and [SEP]) of 64 short passages of the multilingual fixture corpus: 1-4 consecutive
# lines from a seeded random start, tokenised by the fixture unigram tokenizer, capped at 512. Stored, so an
# installed package (without the repository's fixtures) times the same batch; ``corpus_lengths`` recomputes
# them from the fixtures and tests/test_bench.py checks that it still gives these.
MIXED_LENGTHS = [45, 54, 17, 11, 62, 53, 134, 64, 39, 77, 86, 13, 93, 9, 63, 18, 116, 34, 29, 39, 25, 112, 84, 43,
                 51, 36, 135, 54, 73, 68, 39, 24, 16, 134, 59, 24, 30, 72, 75, 91, 60, 38, 71, 79, 39, 101, 44, 92,
                 30, 351, 101, 17, 139, 44, 31, 32, 55, 69, 16, 34, 36, 11, 26, 28]  # fmt: skip
MIXED_SOURCE = "lines of the multilingual fixture corpus, fixture unigram tokenizer"


# ------------------------------------------------------------------------------------------------ inputs
def corpus_lengths(root, n=64, seed=0, max_len=512):
    """Recompute MIXED_LENGTHS from a repository checkout's fixtures (tests/fixtures/tokenizer)."""
    from erniem_np import ErnieMTokenizer

    rng = np.random.default_rng(seed)
    tok = ErnieMTokenizer.from_pretrained(os.path.join(root, "tests", "fixtures", "tokenizer", "unigram"))
    with gzip.open(os.path.join(root, "tests", "fixtures", "tokenizer", "corpus.txt.gz"), "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    lengths = []
    for _ in range(n):
        start = int(rng.integers(0, len(lines) - 8))
        text = " ".join(lines[start : start + int(rng.integers(1, 5))])
        lengths.append(min(max_len, len(tok.tokenize(text)) + 2))
    return lengths


def mixed_lengths():
    return np.array(MIXED_LENGTHS), MIXED_SOURCE


def make_batch(B, L, lengths=None, seed=0, vocab=250002):
    rng = np.random.default_rng(seed)
    lengths = np.full(B, L) if lengths is None else np.asarray(lengths)
    ids = np.ones((B, int(lengths.max())), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = np.concatenate([[0], rng.integers(5, vocab, n - 2), [2]])
        mask[i, :n] = 1
    return ids, mask


CHECK_TOLERANCE = 1e-3  # max |difference| of last_hidden_state from erniem-np's NumPy layers, float32


def check_batch(vocab):
    """The batch every implementation computes before it is timed: two rows, the second padded."""
    return make_batch(2, 0, [24, 13], seed=1, vocab=vocab)


def flops(lengths, H=768, F=3072, layers=12, **_):
    """Useful FLOPs of the encoder: Linear layers 2 L (4 H^2 + 2 H F) + attention 4 L^2 H, per layer."""
    return sum(layers * (2 * n * (4 * H * H + 2 * H * F) + 4 * n * n * H) for n in lengths)


# ------------------------------------------------------------------------------------------------ worker
def thread_env(threads):
    """The variables that fix every library's thread count. They are read when a library loads (OpenBLAS
    when numpy is imported), so they go into a worker's environment at its start, not set from inside it."""
    return {k: str(threads) for k in THREAD_VARS}


def load(impl, ckpt, threads):
    """(run(name) -> seconds for one call of workload name, load seconds) for one implementation."""
    t0 = time.perf_counter()
    lengths, _ = mixed_lengths()
    with open(os.path.join(ckpt, "prepared.json")) as f:
        vocab = json.load(f)["shape"]["vocab"]
    if impl.startswith("erniem-np"):
        import erniem_np
        from erniem_np import ErnieMModel
        from erniem_np.pipelines.base import bucket_batches, pad_batch

        backend = impl.split()[-1]
        if backend == "int8":
            model = ErnieMModel.from_pretrained(os.path.join(ckpt, INT8_DIR))  # int8 as stored
            erniem_np.warmup(int8=True)
        else:
            model = ErnieMModel.from_pretrained(ckpt, backend=backend)
        if backend == "numba":
            erniem_np.warmup()

        def run(ids, mask):
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

        def run_mixed(ids_list):  # as the task commands batch (their default --batch-size 32): by length
            for idx in bucket_batches([len(x) for x in ids_list], 32):
                run(*pad_batch([ids_list[i] for i in idx], 1))
    elif impl == "torch eager":
        import torch
        from transformers import ErnieMModel as HFModel

        torch.set_num_threads(threads)
        model = HFModel.from_pretrained(ckpt).eval()

        def run(ids, mask):
            with torch.inference_mode():
                return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))[0]

        run_mixed = None
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(os.path.join(ckpt, ONNX_FILES[impl]), so, providers=["CPUExecutionProvider"])

        def run(ids, mask):
            return sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]

        run_mixed = None

    calls = {}
    for name in WORKLOADS:
        if name == "mixed64":
            ids, mask = make_batch(len(lengths), 0, lengths, vocab=vocab)
            ids_list = [ids[i, :n] for i, n in enumerate(lengths)]
            calls[name] = (lambda ids_list=ids_list: run_mixed(ids_list)) if run_mixed else (
                lambda ids=ids, mask=mask: run(ids, mask))  # fmt: skip
        else:
            B, L = (int(x[1:]) for x in name.split("_"))
            ids, mask = make_batch(B, L, vocab=vocab)
            calls[name] = lambda ids=ids, mask=mask: run(ids, mask)
    warmed = set()
    check_ids, check_mask = check_batch(vocab)

    def check():
        """last_hidden_state of the check batch, float32, padding rows zeroed (they are not compared)."""
        out = np.asarray(run(check_ids, check_mask), dtype=np.float32)
        return out * check_mask[..., None].astype(np.float32)

    def timed(name):
        if name not in warmed and name != "mixed64":  # mixed64 runs on the shapes the others warmed
            calls[name]()
            warmed.add(name)
        t = time.perf_counter()
        calls[name]()
        return time.perf_counter() - t

    return timed, check, time.perf_counter() - t0


def serve(impl, ckpt, threads):
    """The worker: load, then answer the driver's lines on stdin ("<workload>" -> seconds, "rss" -> peak RSS
    in MB, "check" -> the check batch's output) on the original stdout; everything else the libraries print
    goes to stderr."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    timed, check, load_s = load(impl, ckpt, threads)
    proto.write(json.dumps({"load_s": load_s, "thread_env": _THREAD_ENV_AT_START}) + "\n")
    proto.flush()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "rss":
            reply = {"peak_rss_mb": peak_rss_mb()}
        elif cmd == "check":
            out = check()
            reply = {"check": out.tobytes().hex(), "shape": list(out.shape)}
        else:
            reply = {"s": timed(cmd)}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


class Worker:
    def __init__(self, impl, ckpt, threads):
        self.impl = impl
        cmd = [sys.executable, "-m", "erniem_np.bench", "--impl", impl, "--ckpt", ckpt, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **thread_env(threads)))  # fmt: skip

    def ask(self, cmd=None):
        if cmd is not None:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.impl} worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if not pipe.closed:
                pipe.close()


def warm_kernel_cache(impls, threads):
    """Compile erniem-np's kernels into the kernel cache in a process of their own, before the workers load, so
    that each worker loads them from the cache and its peak RSS is the model's, not LLVM's: compiling inside
    the workers adds 130-160 MB to their peak at base size (docs/performance.md, run 19). With the cache off
    (``ERNIEM_NP_CACHE_DIR=``, or no private directory) the workers compile, and the run says so."""
    from erniem_np.kernels import settings

    calls = ["erniem_np.warmup(int8=True)" if i.endswith("int8") else "erniem_np.warmup()"
             for i in impls if i in ("erniem-np numba", "erniem-np int8")]  # fmt: skip
    if not calls:
        return
    if settings.CACHE_DIR is None:
        print("the kernel cache is off: each erniem-np worker compiles its kernels, and its peak RSS includes "
              "the compiler's memory", flush=True)  # fmt: skip
        return
    print("compiling erniem-np's kernels into the cache (in a process of their own) ...", flush=True)
    subprocess.run([sys.executable, "-c", "import erniem_np; " + "; ".join(calls)], check=True,
                   env=dict(os.environ, **thread_env(threads)))  # fmt: skip


def reference_output(ckpt, vocab):
    """The check batch through erniem-np's NumPy layers (float32), the anchor every implementation must
    match before it is timed."""
    from erniem_np import ErnieMModel

    ids, mask = check_batch(vocab)
    out = ErnieMModel.from_pretrained(ckpt, backend="numpy")(input_ids=ids, attention_mask=mask).last_hidden_state
    return out.astype(np.float32) * mask[..., None].astype(np.float32)


def min_token_cosine(got, reference):
    """The lowest cosine between a token's vector in ``got`` and in ``reference`` (zeroed padding skipped)."""
    g, r = got.reshape(-1, got.shape[-1]), reference.reshape(-1, reference.shape[-1])
    keep = np.linalg.norm(r, axis=1) > 0
    g, r = g[keep].astype(np.float64), r[keep].astype(np.float64)
    return float(((g * r).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(r, axis=1)).min())


def peak_rss_mb():
    """This process's peak resident set (VmHWM) in MB of 10^6 bytes, the unit of the weight size it is
    compared with. Not ru_maxrss: Linux carries that across exec from the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6  # the kernel's "kB" are KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


# ------------------------------------------------------------------------------------------------ driver
def sgemm_rate(threads):
    code = ("import numpy as np, time; a=np.random.rand(1024,768).astype(np.float32);"
            "b=np.random.rand(768,3072).astype(np.float32); a@b; ts=[]\n"
            "for _ in range(20):\n t=time.perf_counter(); a@b; ts.append(time.perf_counter()-t)\n"
            "print(2*1024*768*3072/min(ts)/1e9)")  # fmt: skip
    env = dict(os.environ, **thread_env(threads))
    return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)  # fmt: skip


def prepare_checkpoint(directory, size="base", onnx=True):
    """Write the random float32 checkpoint, its native int8 conversion (``INT8_DIR``) and, with ``onnx``, the
    ONNX exports; -> (float32 weight bytes, {file: bytes} of what was written, shape)."""
    from erniem_np import ErnieMConfig, ErnieMModel

    model = ErnieMModel(ErnieMConfig(**SIZES[size]), seed=0, backend="numpy")  # HF init
    model.save_pretrained(directory)
    weight_bytes = sum(a.nbytes for a in model.state_dict().values())
    c = model.config
    shape = {"vocab": c.vocab_size, "H": c.hidden_size, "F": c.intermediate_size, "layers": c.num_hidden_layers}
    del model
    ErnieMModel.from_pretrained(directory, quantize="int8").save_pretrained(os.path.join(directory, INT8_DIR))
    files = {"int8/model.safetensors": os.path.getsize(os.path.join(directory, INT8_DIR, "model.safetensors"))}
    try:
        if not onnx:
            raise RuntimeError("ONNX Runtime is not among the implementations to run")
        import torch
        from transformers import ErnieMModel as HFModel

        class Export(torch.nn.Module):
            """HF's ErnieMModel called by keyword: its second positional argument is position_ids, not the
            attention mask, so exporting ``hf`` with ``(ids, mask)`` traced the mask as position ids."""

            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        hf = HFModel.from_pretrained(directory).eval()
        ids, mask = make_batch(2, 16, vocab=c.vocab_size)
        torch.onnx.export(Export(hf).eval(), (torch.from_numpy(ids), torch.from_numpy(mask)),
                          os.path.join(directory, "model.onnx"),
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "B", 1: "L"}, "attention_mask": {0: "B", 1: "L"}},
                          opset_version=17, dynamo=False)  # fmt: skip
        files["model.onnx"] = os.path.getsize(os.path.join(directory, "model.onnx"))
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers import optimizer

        opt = optimizer.optimize_model(os.path.join(directory, "model.onnx"), model_type="bert",
                                       num_heads=c.num_attention_heads, hidden_size=c.hidden_size)  # fmt: skip
        opt.save_model_to_file(os.path.join(directory, ONNX_FILES["onnxruntime optimized"]))
        files["model.opt.onnx"] = os.path.getsize(os.path.join(directory, "model.opt.onnx"))
        import onnx

        # the optimizer's fused operators (com.microsoft) defeat ONNX shape inference: their outputs are float
        quantize_dynamic(os.path.join(directory, "model.opt.onnx"), os.path.join(directory, "model.int8.onnx"),
                         weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
        files["model.int8.onnx"] = os.path.getsize(os.path.join(directory, "model.int8.onnx"))
    except Exception as e:  # noqa: BLE001
        print(f"  (ONNX: {', '.join(f for f in files if f.endswith('.onnx')) or 'no export'}; stopped at "
              f"{type(e).__name__}: {e})")  # fmt: skip
    return weight_bytes, files, shape


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every implementation "
                    "(default: all cores)")  # fmt: skip
    ap.add_argument("--reps", type=int, default=5, help="rounds per fixed-shape workload (mixed64: at most 3)")
    ap.add_argument("--out", default="bench-results", help="directory for results.json, results.md, results.png")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds of idle after every timed call")
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help="comma-separated implementations to run (default: all; torch and ONNX Runtime only when "
                    "installed)")  # fmt: skip
    ap.add_argument("--size", choices=sorted(SIZES), default="base",
                    help="base: ErnieM-base (the measurement); tiny: a 2-layer toy that runs in seconds (a smoke "
                    "test of the harness, not a measurement)")  # fmt: skip


def main(argv=None):
    """``python -m erniem_np.bench``: the driver, or (hidden options) a worker or the checkpoint writer."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--prepare", help=argparse.SUPPRESS)
    ap.add_argument("--onnx", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.impl:
        return serve(args.impl, args.ckpt, args.threads)
    if args.prepare:  # in its own process, so the driver stays small
        weight_bytes, files, shape = prepare_checkpoint(args.prepare, args.size, args.onnx)
        with open(os.path.join(args.prepare, "prepared.json"), "w") as f:
            json.dump({"weight_bytes": weight_bytes, "files": files, "shape": shape}, f)
        return None
    return run(args)


def run(args) -> int:
    """Write the checkpoint, load the implementations, time the workloads in turns, write the results."""
    wanted = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in wanted if i not in IMPLS]
    if unknown or not wanted:
        raise ValueError(f"--impls: unknown implementation(s) {unknown}; choose from {IMPLS}")
    if args.reps < 1 or args.threads < 1 or args.pause < 0:
        raise ValueError("--reps and --threads must be at least 1, --pause at least 0")
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, f"ernie-m-{args.size}-random")
        print(f"writing the random ErnieM-{args.size} checkpoint ...", flush=True)
        want_onnx = any(i.startswith("onnxruntime") for i in wanted) and _has("onnxruntime")
        subprocess.run([sys.executable, "-m", "erniem_np.bench", "--prepare", ckpt, "--size", args.size]
                       + (["--onnx"] if want_onnx else []), check=True)  # fmt: skip
        with open(os.path.join(ckpt, "prepared.json")) as f:
            prepared = json.load(f)
        weight_bytes, files, shape = prepared["weight_bytes"], prepared["files"], prepared["shape"]
        rate = sgemm_rate(args.threads)
        print(f"OpenBLAS sgemm 1024x768x3072 on {args.threads} threads: {rate:.0f} GFLOP/s", flush=True)
        impls = [i for i in wanted if not (i == "torch eager" and not _has("torch"))
                 and not (i in ONNX_FILES and ONNX_FILES[i] not in files)]  # fmt: skip
        for skipped in (i for i in wanted if i not in impls):
            why = f"no {ONNX_FILES[skipped]} (the export needs torch, transformers and onnx)" if skipped in \
                ONNX_FILES and _has("onnxruntime") else "not installed (pip install 'erniem-np[reference,bench]')"
            print(f"skipping {skipped}: {why}", flush=True)
        workers, results = {}, {}
        try:
            reference = reference_output(ckpt, shape["vocab"])
            warm_kernel_cache(impls, args.threads)
            for impl in list(impls):  # loaded one after another, so a load never competes with another's
                print(f"loading {impl} ...", flush=True)
                workers[impl] = Worker(impl, ckpt, args.threads)
                results[impl] = dict(workers[impl].ask(), **{w: {"times_s": []} for w in WORKLOADS})
                reply = workers[impl].ask("check")
                got = np.frombuffer(bytes.fromhex(reply["check"]), np.float32).reshape(reply["shape"])
                diff = float(np.abs(got - reference).max()) if got.shape == reference.shape else float("inf")
                results[impl]["check_max_abs_diff"] = diff
                if impl in INT8_IMPLS and np.isfinite(diff):  # reported, not required: int8 is not float32
                    results[impl]["check_min_cosine"] = cos = min_token_cosine(got, reference)
                    print(f"  {impl}: int8, max |difference| from float32 {diff:.3g}, lowest token cosine "
                          f"{cos:.4f} (random weights: not a measure of task accuracy)", flush=True)  # fmt: skip
                elif not diff <= CHECK_TOLERANCE:
                    print(f"not timing {impl}: its output differs from erniem-np's NumPy layers by {diff:.3g} "
                          f"(tolerance {CHECK_TOLERANCE:g}): it computes something else", flush=True)  # fmt: skip
                    impls.remove(impl)
                    workers.pop(impl).close()
                    results.pop(impl)
                else:
                    print(f"  {impl} computes the same output (max |difference| {diff:.2g})", flush=True)
            if not impls:
                raise ValueError("no implementation computes the reference output: nothing to time")
            lengths, _ = mixed_lengths()
            for name in WORKLOADS:
                rounds = args.reps if name != "mixed64" else max(1, min(args.reps, 3))
                print(f"timing {name}: {rounds} rounds of {len(impls)} implementations ...", flush=True)
                for rnd in range(rounds):
                    for impl in impls[rnd % len(impls):] + impls[: rnd % len(impls)]:  # rotate the order
                        results[impl][name]["times_s"].append(workers[impl].ask(name)["s"])
                        time.sleep(args.pause)
            for impl in impls:
                results[impl].update(workers[impl].ask("rss"))
        finally:
            for w in workers.values():
                w.close()
    rate_after = sgemm_rate(args.threads)
    print(f"OpenBLAS sgemm after the run: {rate_after:.0f} GFLOP/s", flush=True)
    sgemm_runs, rate = [rate, rate_after], max(rate, rate_after)  # the higher: the percentages err low
    for r in results.values():
        for name in WORKLOADS:
            B, L = (1, 0) if name == "mixed64" else (int(x[1:]) for x in name.split("_"))
            n_seq = len(lengths) if name == "mixed64" else B
            useful = flops(lengths, **shape) if name == "mixed64" else flops([L] * B, **shape)
            x = r[name]
            x["median_s"] = med = float(np.median(x["times_s"]))
            x.update(seq_per_s=n_seq / med, gflops=useful / med / 1e9,
                     spread=[min(x["times_s"]) / med, max(x["times_s"]) / med])  # fmt: skip
    lengths, source = mixed_lengths()
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "cpu": _cpu_name(), "threads": args.threads, "sgemm_gflops": rate, "sgemm_gflops_before_after": sgemm_runs,
        "rounds": args.reps, "pause_s": args.pause, "weight_bytes": weight_bytes, "size": args.size, "shape": shape,
        "file_bytes": files,
        "mixed_lengths": {"source": source, "n": len(lengths), "median": float(np.median(lengths)),
                          "max": int(lengths.max()), "total_tokens": int(lengths.sum())},
        "python": sys.version.split()[0], "numpy": np.__version__,
    }  # fmt: skip
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    md = table(meta, results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    chart(results, os.path.join(args.out, "results.png"), args.size)
    return 0


def _size(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _has(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def table(meta, results):
    base = results.get("torch eager")
    ort = results.get("onnxruntime")
    ort8 = results.get("onnxruntime int8")
    lines = [
        f"ErnieM-{meta.get('size', 'base')}, float32 except the int8 rows, {meta['threads']} threads, "
        f"{meta['cpu']}; OpenBLAS sgemm "
        f"{meta['sgemm_gflops']:.0f} "
        f"GFLOP/s in the same run (the higher of before and after); interleaved rounds ({meta['rounds']} per fixed "
        f"shape, up to 3 for mixed64); weights {_size(meta['weight_bytes'])}. mixed64 = 64 texts, "
        f"{meta['mixed_lengths']['total_tokens']} tokens, median {meta['mixed_lengths']['median']:.0f}, "
        f"longest {meta['mixed_lengths']['max']} ({meta['mixed_lengths']['source']}).",
        "",
        "| implementation | workload | median ms | rounds (min-max / median) | seq/s | GFLOP/s | % of sgemm | vs torch "
        "| vs ORT | vs ORT int8 | peak RSS MB | RSS / weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for impl, r in results.items():
        for w in WORKLOADS:
            x = r[w]
            vs_t = f"{base[w]['median_s'] / x['median_s']:.2f}x" if base else "-"
            vs_o = f"{ort[w]['median_s'] / x['median_s']:.2f}x" if ort else "-"
            vs_o8 = f"{ort8[w]['median_s'] / x['median_s']:.2f}x" if ort8 else "-"
            lines.append(f"| {impl} | {w} | {x['median_s'] * 1e3:.1f} | {x['spread'][0]:.2f}-{x['spread'][1]:.2f} "
                         f"| {x['seq_per_s']:.1f} | {x['gflops']:.0f} | "
                         f"{100 * x['gflops'] / meta['sgemm_gflops']:.0f}% | {vs_t} | {vs_o} | {vs_o8} | "
                         f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] * 1e6 / meta['weight_bytes']:.2f}x |")  # fmt: skip
    sizes = ", ".join(f"{name} {_size(n)}" for name, n in meta.get("file_bytes", {}).items())
    cosines = ", ".join(f"{impl} {r['check_min_cosine']:.4f}" for impl, r in results.items() if "check_min_cosine" in r)
    lines += [""] + ([f"Files: float32 weights {_size(meta['weight_bytes'])}; {sizes}."] if sizes else []) + (
        [f"int8 against float32 on the check batch, lowest token cosine: {cosines} (random weights)."]
        if cosines else [])  # fmt: skip
    return "\n".join(lines) + "\n"


def chart(results, path, size="base"):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart)")
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(results))
    for k, (impl, r) in enumerate(results.items()):
        ax.bar(np.arange(len(WORKLOADS)) + k * width, [r[w]["gflops"] for w in WORKLOADS], width, label=impl)
    ax.set_xticks(np.arange(len(WORKLOADS)) + width * (len(results) - 1) / 2, WORKLOADS)
    ax.set_ylabel("effective GFLOP/s (higher is better)")
    ax.set_title(f"ErnieM-{size} forward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
