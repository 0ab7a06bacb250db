"""``erniem-np extract``: UIE-M information extraction with a schema, as PaddleNLP's Taskflow does it."""

from __future__ import annotations

import argparse
import json
import os

from ._common import (
    UserError,
    add_backend_options,
    add_input_options,
    add_run_options,
    backend_option,
    numbered_inputs,
    run_chunked,
    strings,
)

DESCRIPTION = """\
UIE-M information extraction: find what a schema names in each text, and what each answer's children name
(relations), as PaddleNLP 2.8.1's Taskflow("information_extraction", model="uie-m-base", task_path=MODEL)
does: the same prompts, long texts cut and offsets re-based, the same spans and probabilities.

MODEL is a UIE-M checkpoint directory: PaddleNLP layout (model_state.pdparams, config.json, vocab.txt,
sentencepiece.bpe.model) or the native one (config.json, model.safetensors, and the tokenizer files).

The schema is a JSON value (a name, a list, or a dict of names to child names), or a plain name:
  --schema '["人物", "地点"]'
  --schema '{"人物": ["出生地", "公司"]}'             (relations: asked about each 人物 found)
  --schema '情感倾向[正向,负向]'                       (classification: the answer is one of the options)
  --schema '["person", "organization"]' --schema-lang en

UIE-M runs with the paddle flavor (Taskflow's behaviour: only ids and position ids reach the model, [CLS] is
masked and padding attended, rows padded to --max-seq-len); --flavor hf masks padding instead, which does
not reproduce Taskflow. The texts of one chunk (--chunk-size, 64) go through each stage together, as the
texts of one Taskflow call do: Taskflow's decisions that depend on the whole call apply per chunk.

Output: per text, each answer with its character span [start:end) and probability, children indented;
--json prints Taskflow's result list."""

EPILOG = "exit codes: 0 success; 1 bad input, schema or checkpoint (one line on stderr says what); 2 bad command line."


def register(sub) -> None:
    p = sub.add_parser("extract", help="UIE-M information extraction with a schema (Taskflow's results)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("model", metavar="MODEL", help="UIE-M checkpoint directory")
    p.add_argument("--schema", help="JSON schema (string, list or dict) or a plain name")
    p.add_argument("--schema-file", metavar="FILE", help="a .json file holding the schema")
    p.add_argument("--schema-lang", choices=("ch", "en"), default="ch",
                   help="prompt language of child names: ch 'X的Y', en 'Y of X' (default: ch)")  # fmt: skip
    p.add_argument(
        "--max-seq-len", type=int, default=512, metavar="N", help="tokens per row; rows are padded to it (512)"
    )
    p.add_argument("--position-prob", type=float, default=0.5, metavar="P",
                   help="a span's start and end need a probability above this (0.5)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="rows per forward pass (16)")
    p.add_argument("--split-sentence", action="store_true", help="cut texts into sentences first (Taskflow's)")
    p.add_argument("--dynamic-max-length", metavar="N,N,...",
                   help="pad each row to the smallest of these lengths that holds it, not to --max-seq-len")  # fmt: skip
    p.add_argument("--flavor", choices=("paddle", "hf"), default="paddle",
                   help="implicit attention mask: paddle (UIE-M, Taskflow; default) or hf")  # fmt: skip
    add_backend_options(p)
    p.add_argument("--json", action="store_true", help="print Taskflow's JSON result list (with -o: a JSON summary)")
    add_input_options(p)
    add_run_options(p, chunk_size=64, what="texts", output_help="write Taskflow's result object of each text to OUT, "
                    "one per line (JSON Lines), chunk by chunk")  # fmt: skip
    p.set_defaults(func=run)


def parse_schema(text: str) -> object:
    """--schema: JSON when it starts like JSON ([, {, "), else one plain name."""
    text = text.strip()
    if not text:
        raise UserError("--schema is empty")
    if text[0] in '[{"':
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--schema is not valid JSON ({e.msg} at character {e.pos})") from None
    return text


def read_schema(args: argparse.Namespace) -> object:
    if args.schema is not None and args.schema_file:
        raise UserError("give --schema or --schema-file, not both")
    if args.schema_file:
        if not os.path.isfile(args.schema_file):
            raise UserError(f"{args.schema_file}: no such file")
        with open(args.schema_file, encoding="utf-8") as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"{args.schema_file}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if args.schema is None:
        raise UserError("no schema: pass --schema or --schema-file")
    return parse_schema(args.schema)


def _lengths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"--dynamic-max-length takes integers separated by commas, got {text!r}") from None


def _print_items(items: list[dict], name: str, indent: str) -> None:
    for item in items:
        where = f" [{item['start']}:{item['end']}]" if "start" in item else ""
        print(f"{indent}{name}: {item['text']!r}{where} p={item['probability']:.4f}")
        for child, child_items in item.get("relations", {}).items():
            _print_items(child_items, child, indent + "    ")


def run(args: argparse.Namespace) -> int:
    from ..pipelines.chunks import TaskSpec
    from ..pipelines.extract import build_schema_tree

    schema = read_schema(args)
    build_schema_tree(schema)  # a bad schema fails before the model loads
    if not os.path.exists(args.model):
        raise UserError(f"{args.model}: no such checkpoint directory")
    options = {"schema": schema, "schema_lang": args.schema_lang, "max_seq_len": args.max_seq_len,
               "position_prob": args.position_prob, "batch_size": args.batch_size,
               "split_sentence": args.split_sentence, "dynamic_max_length": _lengths(args.dynamic_max_length),
               "flavor": args.flavor, "backend": backend_option(args)}  # fmt: skip
    spec = TaskSpec.of("extract", args.model, options)
    return run_chunked(args, spec, strings(numbered_inputs(args)), lambda _text, result: result, _print_result,
                       "extracting")  # fmt: skip


def _print_result(n: int, text: str, result: dict) -> None:
    print(f"[{n}] {text}")
    if not result:
        print("    (nothing found)")
    for name, items in result.items():
        _print_items(items, name, "    ")
