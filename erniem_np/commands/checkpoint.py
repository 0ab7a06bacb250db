"""``erniem-np convert`` and ``erniem-np inspect``: checkpoints in any supported layout."""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, Progress, add_checkpoint_options, checkpoint_options, megabytes


def cmd_convert(args: argparse.Namespace) -> int:
    from ..checkpoints import convert_checkpoint

    progress = None if args.quiet else Progress()
    try:
        out = convert_checkpoint(args.src, args.dst, dtype=args.dtype, quantize=args.quantize, overwrite=args.overwrite,
                                 verify=not args.no_verify, progress=progress, **checkpoint_options(args))
    except OSError as e:  # an existing destination, a full disk: one line, as for bad input
        raise ValueError(str(e)) from None
    finally:
        if progress is not None:
            progress.close()
    stored = "int8 (float32 elsewhere)" if args.quantize else args.dtype
    print(f"wrote {args.dst}: {out.architecture}, {out.num_parameters:,} parameters, {stored}, "
          f"{megabytes(out.size_on_disk)}, flavor {out.flavor}")
    tokenizer = sorted(out.tokenizer_files)
    print(f"  tokenizer files copied: {', '.join(tokenizer) if tokenizer else 'none found beside the source'}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from ..checkpoints import inspect_checkpoint

    progress = None if args.json else Progress()
    try:
        info = inspect_checkpoint(args.path, progress=progress, **checkpoint_options(args))
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    c = info["config"]
    files = ", ".join(f"{f['name']} ({megabytes(f['bytes'])})" for f in info["files"])
    where = f"{info['path']}" + (f" (hub {info['hub_id']})" if info["hub_id"] else "")
    flavor_why = {"argument": "as requested", "config": "recorded in the config",
                  "weights format": "from the weights format"}[info["flavor_source"]]  # fmt: skip
    rows = [
        ("checkpoint", where),
        ("format", f"{info['format']}: {files}"),
        ("size on disk", megabytes(info["size_on_disk"])),
        ("config", info["config_file"] or "none in the checkpoint (given, or from the named checkpoint)"),
        ("model", (f"{c['num_hidden_layers']} layers, hidden {c['hidden_size']}, {c['num_attention_heads']} "
                   f"heads, FFN {c['intermediate_size']}, vocabulary {c['vocab_size']}, positions "
                   f"{c['max_position_embeddings']}, {c['hidden_act']}")),
        ("head", f"{info['architecture']}" + (f" ({c['num_labels']} labels)" if info["head"] in
                                              ("seq_cls", "token_cls") else "")
         + (" -- a guess: the config does not name the class, and a 'classifier' head may also be token "
            "classification or multiple choice" if info["head_source"] == "guess" else "")),
        ("parameters", f"{info['parameters']:,} in {info['tensors']} tensors"),
        ("dtype", ", ".join(f"{k} ({v} tensors)" for k, v in sorted(info["dtypes"].items()))
         + ("; an int8 checkpoint: loads on the int8 layers" if info["quantization"] == "int8" else "")),
        ("flavor", f"{info['flavor']} ({flavor_why})"),
        ("tokenizer", (", ".join(info["tokenizer_files"]) or "no tokenizer files")
         + (f"; missing: {', '.join(info['tokenizer_missing'])}" if info["tokenizer_missing"] else "")),
    ]  # fmt: skip
    rows += [("note", n) for n in info["notes"]]
    for label, value in rows:
        print(f"{label + ':':<14}{value}")
    return EXIT_OK



def register(sub) -> None:
    convert = sub.add_parser(
        "convert",
        help="convert a checkpoint (HF .safetensors/.bin, sharded, Paddle .pdparams) to the native layout",
        description="Read SRC (a directory in HF or PaddleNLP layout, a single weights file, or a hub id in "
        "the local cache) without torch or paddle, and write DST/model.safetensors (HF names and layout, "
        "memory-mapped on load) and DST/config.json (flavor and architecture recorded), copying the tokenizer "
        "files. The written file is read back and compared.",
    )
    convert.add_argument("src", metavar="SRC")
    convert.add_argument("dst", metavar="DST")
    convert.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                         help="stored float type (default float32: loads without a copy)")  # fmt: skip
    convert.add_argument("--quantize", choices=("int8",),
                         help="write an int8 checkpoint: Linear weights of the encoder and the word table int8 "
                         "with a float32 scale per row, a quarter of the float32 size (docs/quantization.md)")
    convert.add_argument("--overwrite", action="store_true", help="replace DST's config.json and weights")
    convert.add_argument("--no-verify", action="store_true", help="skip reading the result back")
    convert.add_argument("--quiet", action="store_true", help="no progress output")
    add_checkpoint_options(convert)
    convert.set_defaults(func=cmd_convert)

    inspect = sub.add_parser(
        "inspect",
        help="describe a checkpoint: config, head, parameters, dtype, size, flavor, tokenizer files",
        description="Describe a checkpoint in any supported layout without loading its weights.",
    )
    inspect.add_argument("path", metavar="PATH")
    inspect.add_argument("--json", action="store_true", help="print the description as JSON")
    add_checkpoint_options(inspect)
    inspect.set_defaults(func=cmd_inspect)
