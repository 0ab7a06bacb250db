"""``erniem-np golden`` (write a parity bundle from this implementation) and ``erniem-np parity`` (compare,
validate, inspect, export-inputs). docs/parity-testing.md explains the bundle contract.

``erniem-np parity`` exits 0 pass, 1 numeric mismatch, 2 structural mismatch, 3 unreadable file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from ._common import EXIT_OK, Progress, UserError, print_json

EXIT_PASS, EXIT_NUMERIC, EXIT_STRUCTURAL, EXIT_UNREADABLE = 0, 1, 2, 3


def _fail(e, code: int) -> int:
    print(f"erniem-np: error: {e}", file=sys.stderr)
    return code


def _bundle_errors(handler):
    """Run a parity handler; a BundleError becomes one line on stderr and exit 3 (unreadable) or 2."""

    def run(args):
        from ..parity.bundle import BundleError

        try:
            return handler(args)
        except BundleError as e:
            return _fail(e, EXIT_UNREADABLE if e.kind == "unreadable" else EXIT_STRUCTURAL)

    return run


# ============================================================================================ golden
def run_golden(args: argparse.Namespace) -> int:
    from ..parity import produce
    from ..parity.bundle import write_bundle

    source = args.model
    tokenizer_dir = args.tokenizer
    weights_info: dict = {}
    if source in produce.PARITY_CONFIGS:
        config, seed = produce.parity_config(source, flavor=args.flavor or "hf")
        seed = seed if args.seed is None else args.seed
        weights = produce.parity_weights(config, seed)
        weights_info = {"recipe": "erniem_np.parity.produce.parity_weights", "preset": source, "seed": seed}
    elif source.endswith(".json") and os.path.isfile(source):
        from ..config import ErnieMConfig

        config = ErnieMConfig.from_json_file(source, flavor=args.flavor)
        seed = args.seed or 0
        weights = produce.parity_weights(config, seed)
        weights_info = {"recipe": "erniem_np.parity.produce.parity_weights", "seed": seed}
    elif os.path.exists(source):
        config, weights = produce.checkpoint_weights(source, flavor=args.flavor)
        weights_info = {"checkpoint": os.path.abspath(source)}
        tokenizer_dir = tokenizer_dir or (source if os.path.isdir(source) else None)
    else:
        raise UserError(f"{source}: not a preset ({', '.join(produce.PARITY_CONFIGS)}), a config .json or a "
                        "checkpoint")  # fmt: skip

    if args.texts and args.cases:
        raise UserError("give --texts or --cases, not both")
    if args.texts:
        if not tokenizer_dir:
            raise UserError("--texts needs a tokenizer: pass --tokenizer DIR (sentencepiece.bpe.model + vocab.txt)")
        from ..tokenizer import ErnieMTokenizer

        tok = ErnieMTokenizer.from_pretrained(tokenizer_dir)
        cases = produce.text_cases(tok, args.texts, config.max_sequence_length)
    elif args.cases:
        try:
            with open(args.cases, encoding="utf-8") as f:
                items = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{args.cases}: not valid JSON ({e.msg})") from None
        cases = produce.cases_from_json(items, config)
    else:
        cases = produce.default_cases(config, seed=args.input_seed)
    if args.quantize and (args.dtype != "float32" or args.tier != "core"):
        raise UserError("--quantize int8 computes in float32 and records the core tier: pass --tier core "
                        "(and no --dtype float64)")  # fmt: skip
    nbytes = sum(np.asarray(w).size * 4 for w in weights.values())
    store = args.store_weights if args.store_weights is not None else nbytes <= 4_000_000
    progress = Progress()
    tensors, meta = produce.make_bundle(config, weights, cases, dtype=np.dtype(args.dtype), tier=args.tier,
                                        backend="int8" if args.quantize else "numpy", store_weights=store,
                                        weights_info=weights_info,
                                        calibrate=args.calibrate,
                                        progress=progress)  # fmt: skip
    progress.close()
    write_bundle(args.output, tensors, meta)
    n_probes = sum(1 for p in meta["probes"] if args.tier == "debug" or p["tier"] == "core")
    print(f"wrote {args.output}: {len(cases)} case(s), {n_probes} probes per case ({args.tier} tier), "
          f"{args.dtype}, flavor {config.flavor}, weights {'stored' if store else 'not stored'}, "
          f"{os.path.getsize(args.output):,} bytes")  # fmt: skip
    return EXIT_OK


# ============================================================================================ parity
@_bundle_errors
def run_compare(args: argparse.Namespace) -> int:
    from ..parity.compare import compare_bundles

    def split(s):
        return [p.strip() for p in s.split(",") if p.strip()]

    report = compare_bundles(args.reference, args.candidate, profile=args.profile, tier=args.tier,
                             cases=split(args.cases) if args.cases else None,
                             probes=split(args.probes) if args.probes else None,
                             include_padding=args.include_padding, atol=args.atol, rtol=args.rtol,
                             mode=args.mode, calibrated=args.calibrated)  # fmt: skip
    from ..atomic import atomic_write

    if args.json:
        atomic_write(args.json, (report.to_json() + "\n").encode("utf-8"))
    if args.markdown:
        atomic_write(args.markdown, report.to_markdown().encode("utf-8"))
    print(report.to_markdown() if args.format == "markdown" else report.to_text())
    return report.exit_code


@_bundle_errors
def run_validate(args: argparse.Namespace) -> int:
    from ..parity.bundle import load_bundle, validate

    bundle = load_bundle(args.file)
    against = load_bundle(args.against) if args.against else None
    problems = validate(bundle, against)
    for p in problems:
        print(f"{bundle.name}: {p}")
    if problems:
        print(f"INVALID: {len(problems)} structural problem(s)")
        return EXIT_STRUCTURAL
    n = len(bundle.case_names())
    print(f"valid: {n} case(s)" + (f", every core probe of {against.name}" if against else ""))
    return EXIT_PASS


@_bundle_errors
def run_inspect(args: argparse.Namespace) -> int:
    from ..parity.bundle import load_bundle

    b = load_bundle(args.file)
    meta = b.metadata
    tensors = {k: {"dtype": t.dtype, "shape": list(t.shape)} for k, t in b.tensors.items()}
    if args.json:
        print_json({"file": b.path, "metadata": meta, "tensors": tensors})
        return EXIT_PASS
    print(f"{b.path}: {meta.get('format', 'no format key (a candidate?)')}, role {meta.get('role', '?')}")
    prod = meta.get("producer") or {}
    if prod:
        print(f"  producer: {prod.get('library')} {prod.get('library_version')} ({prod.get('framework')} "
              f"{prod.get('framework_version')}), compute dtype {meta.get('compute_dtype')}, "
              f"backend {prod.get('backend', '-')}")  # fmt: skip
    cfg = meta.get("config")
    if cfg:
        print(f"  model: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
              f"{cfg['num_attention_heads']} heads, FFN {cfg['intermediate_size']}, vocabulary {cfg['vocab_size']}, "
              f"flavor {meta.get('flavor')}, heads {', '.join(meta.get('heads') or {}) or 'none'}")  # fmt: skip
    if meta.get("probes"):
        tiers = [p["tier"] for p in meta["probes"]]
        print(f"  probes per case: {tiers.count('core')} core, {tiers.count('debug')} debug; tier stored: "
              f"{meta.get('tier', '?')}")  # fmt: skip
    w = meta.get("weights") or {}
    n_w = sum(1 for k in b.tensors if k.startswith("weights/"))
    print(f"  weights: {n_w} tensors stored" if n_w else f"  weights: not stored {json.dumps(w)}")
    for name in b.case_names():
        c = b.case(name)
        n = sum(1 for k in b.tensors if k.startswith(name + "/"))
        shape = tensors.get(f"{name}/input.input_ids", {}).get("shape")
        print(f"  case {name}: input_ids {shape}, {n} tensors; {c.get('description', '')}")
    return EXIT_PASS


@_bundle_errors
def run_export_inputs(args: argparse.Namespace) -> int:
    from ..parity.bundle import inputs_only, load_bundle, write_bundle

    b = load_bundle(args.reference)
    tensors, meta = inputs_only(b)
    if not args.with_weights:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("weights/")}
    write_bundle(args.output, tensors, meta)
    print(f"wrote {args.output}: inputs of {len(b.case_names())} case(s)"
          + (", with the weights" if args.with_weights else ""))  # fmt: skip
    return EXIT_PASS


def register(sub) -> None:
    g = sub.add_parser(
        "golden",
        help="write a parity bundle (inputs + every probe) from this implementation",
        description="Run this implementation (numpy backend) on input cases and write a parity bundle: the "
        "inputs, every probe (embeddings, each layer's q/k/v, scores, probabilities, context, attention output, "
        "norm1, FFN, output; pooled output; every head's outputs) and metadata. MODEL_OR_CONFIG is a preset "
        "(tiny, odd, base: seeded random weights), a config .json (seeded random weights) or a checkpoint.",
    )
    g.add_argument("model", metavar="MODEL_OR_CONFIG")
    g.add_argument("--texts", nargs="+", metavar="TEXT", help="texts to tokenize into one padded case")
    g.add_argument("--cases", metavar="FILE", help='a JSON list of {"name", "input_ids", "attention_mask"?, '
                   '"position_ids"?, "description"?} (default: the built-in core cases)')  # fmt: skip
    g.add_argument("-o", "--output", required=True, help="the bundle file to write (.safetensors)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="compute dtype")
    g.add_argument("--tier", choices=("core", "debug"), default="debug", help="probes to record (default debug)")
    g.add_argument("--quantize", choices=("int8",), help="run the int8 layers (core tier; compare it with a float32 "
                   "bundle under --profile int8 to see, layer by layer, where the int8 error enters)")
    g.add_argument("--flavor", choices=("hf", "paddle"), help="reference behaviour (default: the checkpoint's; hf)")
    g.add_argument("--seed", type=int, help="weights seed for a preset or config (default: the preset's, or 0)")
    g.add_argument("--input-seed", type=int, default=0, help="seed of the built-in cases' ids (default 0)")
    g.add_argument("--calibrate", action="store_true", help="also run float64 and record each probe's float32 "
                   "error (the reference's own noise) for compare --calibrated")  # fmt: skip
    g.add_argument("--tokenizer", metavar="DIR", help="tokenizer for --texts (default: the checkpoint dir)")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--store-weights", dest="store_weights", action="store_true", default=None,
                   help="store the weights in the bundle (default: when they take at most 4 MB)")  # fmt: skip
    w.add_argument("--no-weights", dest="store_weights", action="store_false")
    g.set_defaults(func=run_golden)

    p = sub.add_parser(
        "parity",
        help="compare, validate, inspect parity bundles; export their inputs for a port",
        description="Parity checks of an ErnieM port against a bundle. Exit codes: 0 pass, 1 numeric mismatch, "
        "2 structural mismatch (missing probe, wrong shape, unknown case), 3 unreadable file.",
    )
    psub = p.add_subparsers(dest="parity_command", metavar="SUBCOMMAND")
    c = psub.add_parser("compare", help="compare a candidate bundle with a reference bundle")
    c.add_argument("reference", metavar="REF")
    c.add_argument("candidate", metavar="CAND")
    c.add_argument("--profile", default="fp32", choices=("fp32", "fp32-strict", "fp16", "bf16", "int8"))
    c.add_argument("--tier", default="debug", choices=("core", "debug"),
                   help="debug (default): also every debug probe the candidate provides; core: core probes only")  # fmt: skip
    c.add_argument("--cases", help="comma-separated case names or globs")
    c.add_argument("--probes", help="comma-separated probe globs, e.g. 'emb.out,layer.*.out'")
    c.add_argument("--atol", type=float, help="override every kind's absolute tolerance")
    c.add_argument("--rtol", type=float, help="override every kind's relative tolerance")
    c.add_argument("--include-padding", action="store_true", help="also compare padded positions")
    c.add_argument("--mode", choices=("end_to_end", "layer_local"),
                   help="how the candidate was run (default: its 'mode' metadata, else end_to_end); layer_local: "
                   "each layer fed the reference's input (use --profile fp32-strict)")  # fmt: skip
    c.add_argument("--calibrated", action="store_true", help="per probe, allow 10x the reference's own float32 "
                   "error where that exceeds the profile's atol (needs a bundle written with golden --calibrate)")  # fmt: skip
    c.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    c.add_argument("--markdown", metavar="FILE", help="write the full report as Markdown")
    c.add_argument("--format", choices=("text", "markdown"), default="text", help="what to print (default text)")
    c.set_defaults(func=run_compare)
    v = psub.add_parser("validate", help="check a bundle's structure (names, shapes, metadata)")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--against", metavar="REF", help="check FILE as a candidate for this reference bundle")
    v.set_defaults(func=run_validate)
    i = psub.add_parser("inspect", help="show a bundle's producer, model, cases and probes")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--json", action="store_true", help="print metadata and tensor list as JSON")
    i.set_defaults(func=run_inspect)
    e = psub.add_parser("export-inputs", help="write the inputs (and optionally weights) of a bundle for a port")
    e.add_argument("reference", metavar="REF")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--with-weights", action="store_true", help="include the weights/* tensors")
    e.set_defaults(func=run_export_inputs)
    p.set_defaults(func=lambda args: (p.print_help(), EXIT_STRUCTURAL)[1])
