"""``erniem-np classify`` (sequence classification) and ``erniem-np choose`` (multiple choice)."""

from __future__ import annotations

import argparse
import json

from ..pipelines.chunks import Numbered
from ._common import (
    UserError,
    add_input_options,
    add_model_options,
    add_run_options,
    numbered_inputs,
    pipeline_options,
    run_chunked,
    wrap,
)

EPILOG = "exit codes: 0 success; 1 bad input or checkpoint (one line on stderr); 2 bad command line."


# ============================================================================================ classify
def _classify_inputs(args):
    """Numbered (text, pair) per input: TEXT arguments, .txt lines, stdin lines, or .jsonl objects (--field,
    --pair-field)."""
    jsonl = bool(args.input) and args.input.endswith((".jsonl", ".ndjson"))
    ns = argparse.Namespace(**{**vars(args), "field": None if jsonl else args.field})
    for numbered in numbered_inputs(ns):
        item = numbered.item
        if isinstance(item, dict):
            if args.field not in item:
                raise UserError(f"{numbered.where}: no {args.field!r} key (set --field)")
            text, pair = item[args.field], item.get(args.pair_field)
        else:
            text, pair = item, args.pair
        if not isinstance(text, str) or not (pair is None or isinstance(pair, str)):
            raise UserError(f"{numbered.where}: the text and its pair must be strings")
        yield Numbered(numbered.where, (text, pair))


def run_classify(args: argparse.Namespace) -> int:
    from ..pipelines.chunks import TaskSpec

    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    call = {"top_k": None} if args.all else {"top_k": args.top_k} if args.top_k is not None else {}
    spec = TaskSpec.of("classify", args.model, {"function_to_apply": args.function, "chunk_size": args.chunk_size,
                                                **pipeline_options(args)}, call)  # fmt: skip
    return run_chunked(args, spec, _classify_inputs(args), _classified, _print_classified, "classifying")


def _classified(item, result) -> dict:
    text, pair = item
    record = {"text": text} if pair is None else {"text": text, "text_pair": pair}
    record.update(result if isinstance(result, dict) else {"labels": result})
    return record


def _print_classified(_n, item, result) -> None:
    text, pair = item
    ranked = [result] if isinstance(result, dict) else result
    labels = "  ".join(f"{r['label']} {r['score']:.4f}" for r in ranked)
    print(f"{labels}\t{text}" + ("" if pair is None else f"\t{pair}"))


# ============================================================================================ choose
def _choose_inputs(args):
    """Numbered (question, choices): QUESTION CHOICE... as arguments, or JSON objects from --input .jsonl or
    stdin."""
    if args.texts and args.texts != ["-"]:
        if args.input:
            raise UserError("give QUESTION CHOICE... as arguments or --input FILE, not both")
        if len(args.texts) < 2:
            raise UserError("give a question and at least one choice: erniem-np choose MODEL QUESTION CHOICE...")
        yield Numbered("the arguments", (args.texts[0], args.texts[1:]))
        return
    if args.input and not args.input.endswith((".jsonl", ".ndjson")):
        raise UserError(f'{args.input}: choose reads .jsonl (one {{"question", "choices"}} object per line)')
    ns = argparse.Namespace(**{**vars(args), "field": None})
    for numbered in numbered_inputs(ns):
        item, where = numbered.item, numbered.where
        if isinstance(item, str):  # a stdin line
            try:
                item = json.loads(item)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not a JSON object ({e.msg}); choose reads "
                                '{"question": ..., "choices": [...]} per line') from None  # fmt: skip
        if not isinstance(item, dict):
            raise UserError(f"{where}: expected a JSON object with 'question' and 'choices'")
        q = item.get(args.field, item.get("context"))
        if not isinstance(q, str) or not isinstance(item.get(args.choices_field), list) or not item[args.choices_field]:
            raise UserError(f"{where}: needs a {args.field!r} string and a non-empty {args.choices_field!r} list")
        yield Numbered(where, (q, item[args.choices_field]))


def run_choose(args: argparse.Namespace) -> int:
    from ..pipelines.chunks import TaskSpec

    spec = TaskSpec.of("choose", args.model, {"chunk_size": args.chunk_size, **pipeline_options(args)})
    return run_chunked(args, spec, _choose_inputs(args), _chosen, _print_chosen, "choosing")


def _chosen(item, result) -> dict:
    question, choices = item
    return {"question": question, "choices": choices, **result}


def _print_chosen(_n, item, result) -> None:
    print(f"{result['choice']}\t{result['scores'][result['best']]:.4f}\t{item[0]}")


def register(sub) -> None:
    p = sub.add_parser(
        "classify",
        help="classify texts (or text pairs) with a sequence-classification checkpoint",
        description=wrap(
            "Classify texts with any ErnieM checkpoint that has a sequence-classification head; "
            "labels from its config's id2label. Scores as HF transformers' text-classification pipeline: "
            "softmax, or sigmoid for a multi-label or one-label model (see --function). Texts come as arguments, "
            "from --input (.txt: one per line; .jsonl: --field and --pair-field) or stdin, streamed. Prints "
            "'LABEL score<TAB>text' per input, or a JSON array with --json."
        ),
        epilog=EPILOG + "\nexample: erniem-np classify ckpt/ 'I love it' 'I hate it' --top-k 2 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    add_input_options(p)
    p.add_argument("--pair", metavar="TEXT", help="a second text paired with every input (e.g. a hypothesis)")
    p.add_argument("--pair-field", default="text_pair", help="the JSON key of the second text in .jsonl input "
                   "(default: text_pair)")  # fmt: skip
    p.add_argument("--function", choices=("softmax", "sigmoid", "none"), help="applied to the logits (default: "
                   "none for regression, sigmoid for multi-label or one label, else softmax, as HF)")  # fmt: skip
    p.add_argument("--top-k", type=int, help="the K best labels per input (default: the best)")
    p.add_argument("--all", action="store_true", help="every label per input, best first")
    add_run_options(p, chunk_size=1024)
    p.add_argument("--json", action="store_true", help="print one JSON array (with -o: a JSON summary)")
    p.set_defaults(func=run_classify)

    c = sub.add_parser(
        "choose",
        help="multiple choice: score each choice for a question",
        description=wrap(
            "Score each choice for a question with any ErnieM checkpoint that has a multiple-choice "
            "head; each choice is paired with the question as [CLS] question [SEP] [SEP] choice [SEP]. Give "
            'QUESTION CHOICE [CHOICE ...] as arguments, or one JSON object per line ({"question": ..., '
            "\"choices\": [...]}) in --input FILE.jsonl or on stdin. Prints 'best-choice score<TAB>question' per "
            "input, or a JSON array (best, choice, scores = softmax over the choices, logits) with --json."
        ),
        epilog=EPILOG + "\nexample: erniem-np choose ckpt/ 'The cat sat on the' mat moon idea --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(c)
    add_input_options(c, field_help="the question (default: question; 'context' is read too)")
    c.set_defaults(field="question")  # --field: the key of the question ('context' is read too)
    c.add_argument("--choices-field", default="choices", help="the JSON key of the list of choices")
    add_run_options(c, chunk_size=256, what="questions")
    c.add_argument("--json", action="store_true", help="print one JSON array (with -o: a JSON summary)")
    c.set_defaults(func=run_choose)
