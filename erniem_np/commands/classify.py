"""``erniem-np classify`` (sequence classification) and ``erniem-np choose`` (multiple choice)."""

from __future__ import annotations

import argparse
import json
from collections import deque

from ._common import (
    EXIT_OK,
    Progress,
    UserError,
    add_input_options,
    add_model_options,
    iter_inputs,
    json_output,
    pipeline_options,
    wrap,
)

EPILOG = "exit codes: 0 success; 1 bad input or checkpoint (one line on stderr); 2 bad command line."


# ============================================================================================ classify
def _classify_inputs(args):
    """(text, pair) per input: TEXT arguments, .txt lines, stdin lines, or .jsonl objects (--field, --pair-field)."""
    jsonl = bool(args.input) and args.input.endswith((".jsonl", ".ndjson"))
    ns = argparse.Namespace(**{**vars(args), "field": None if jsonl else args.field})
    for lineno, item in enumerate(iter_inputs(ns), 1):
        if isinstance(item, dict):
            if args.field not in item:
                raise UserError(f"{args.input}: input {lineno} has no {args.field!r} key (set --field)")
            text, pair = item[args.field], item.get(args.pair_field)
        else:
            text, pair = item, args.pair
        if not isinstance(text, str) or not (pair is None or isinstance(pair, str)):
            raise UserError(f"input {lineno}: the text and its pair must be strings")
        yield text, pair


def run_classify(args: argparse.Namespace) -> int:
    from ..pipelines.classify import _LEGACY, Classifier

    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    clf = Classifier(args.model, function_to_apply=args.function, chunk_size=args.chunk_size,
                     **pipeline_options(args))  # fmt: skip
    top_k = None if args.all else args.top_k if args.top_k is not None else _LEGACY
    progress = None if args.quiet else Progress()
    seen: deque = deque()

    def tap():
        for pair in _classify_inputs(args):
            seen.append(pair)
            yield pair

    with json_output(args.json) as out:
        _print_classified(clf.iter(tap(), top_k=top_k, progress=progress), seen, out, progress)
    return EXIT_OK


def _print_classified(results, seen, out, progress):
    try:
        for result in results:
            text, pair = seen.popleft()
            if out is not None:
                record = {"text": text} if pair is None else {"text": text, "text_pair": pair}
                record.update(result if isinstance(result, dict) else {"labels": result})
                out.write(record)
            else:
                ranked = [result] if isinstance(result, dict) else result
                labels = "  ".join(f"{r['label']} {r['score']:.4f}" for r in ranked)
                print(f"{labels}\t{text}" + ("" if pair is None else f"\t{pair}"))
    finally:
        if progress is not None:
            progress.close()


# ============================================================================================ choose
def _choose_inputs(args):
    """(question, choices): QUESTION CHOICE... as arguments, or JSON objects from --input .jsonl or stdin."""
    if args.texts and args.texts != ["-"]:
        if args.input:
            raise UserError("give QUESTION CHOICE... as arguments or --input FILE, not both")
        if len(args.texts) < 2:
            raise UserError("give a question and at least one choice: erniem-np choose MODEL QUESTION CHOICE...")
        yield args.texts[0], args.texts[1:]
        return
    if args.input and not args.input.endswith((".jsonl", ".ndjson")):
        raise UserError(f'{args.input}: choose reads .jsonl (one {{"question", "choices"}} object per line)')
    ns = argparse.Namespace(**{**vars(args), "field": None})
    for n, item in enumerate(iter_inputs(ns), 1):
        if isinstance(item, str):  # a stdin line
            try:
                item = json.loads(item)
            except json.JSONDecodeError as e:
                raise UserError(f"stdin line {n}: not a JSON object ({e.msg}); choose reads "
                                '{"question": ..., "choices": [...]} per line') from None  # fmt: skip
        if not isinstance(item, dict):
            raise UserError(f"input {n}: expected a JSON object with 'question' and 'choices'")
        q = item.get(args.field, item.get("context"))
        if not isinstance(q, str) or not isinstance(item.get(args.choices_field), list) or not item[args.choices_field]:
            raise UserError(f"input {n}: needs a {args.field!r} string and a non-empty "
                            f"{args.choices_field!r} list")  # fmt: skip
        yield q, item[args.choices_field]


def run_choose(args: argparse.Namespace) -> int:
    from ..pipelines.choose import Chooser

    ch = Chooser(args.model, chunk_size=args.chunk_size, **pipeline_options(args))
    progress = None if args.quiet else Progress()
    seen: deque = deque()

    def tap():
        for item in _choose_inputs(args):
            seen.append(item)
            yield item

    try:
        with json_output(args.json) as out:
            for result in ch.iter(tap(), progress=progress):
                question, choices = seen.popleft()
                if out is not None:
                    out.write({"question": question, "choices": choices, **result})
                else:
                    best = result["best"]
                    print(f"{result['choice']}\t{result['scores'][best]:.4f}\t{question}")
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    finally:
        if progress is not None:
            progress.close()
    return EXIT_OK


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
    p.add_argument("--chunk-size", type=int, default=1024, help="inputs read at a time (default 1024)")
    p.add_argument("--json", action="store_true", help="print one JSON array")
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
    c.add_argument("--chunk-size", type=int, default=256, help="questions read at a time (default 256)")
    c.add_argument("--json", action="store_true", help="print one JSON array")
    c.set_defaults(func=run_choose)
