"""``erniem-np tag`` and ``erniem-np qa``: the two tasks whose answers are character spans of the input.

    erniem-np tag MODEL "Angela Merkel visited Paris." --aggregation simple
    erniem-np qa MODEL --question "Who visited Paris?" --context "Angela Merkel visited Paris."
    cat pairs.jsonl | erniem-np qa MODEL --json          # {"question": ..., "context": ...} per line

Both print one block per input (or, with --json, one JSON array with an object per input, as ``classify``
does), and stream: a chunk of inputs is read, answered and printed before the next is read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

from ..pipelines.chunks import Numbered
from ._common import (
    UserError,
    add_backend_options,
    add_checkpoint_options,
    add_input_options,
    add_run_options,
    backend_option,
    checkpoint_options,
    numbered_inputs,
    run_chunked,
    strings,
)

EPILOG = "exit codes: 0 success; 1 bad input or checkpoint (one line on stderr says what); 2 bad command line."


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", metavar="DIR", help="directory with sentencepiece.bpe.model and vocab.txt "
                   "(default: the checkpoint's directory)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass (default: 8)")
    add_backend_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON array, one object per input, written as "
                   "each chunk is done (with -o: a JSON summary)")  # fmt: skip
    add_checkpoint_options(p)


# ================================================================================================ tag
def run_tag(args: argparse.Namespace) -> int:
    from ..pipelines.chunks import TaskSpec

    options = {"aggregation_strategy": args.aggregation, "ignore_labels": args.ignore_labels, "stride": args.stride,
               "max_length": args.max_length, "batch_size": args.batch_size, "tokenizer": args.tokenizer,
               "backend": backend_option(args), **checkpoint_options(args)}  # fmt: skip
    spec = TaskSpec.of("tag", args.model, options)
    return run_chunked(args, spec, strings(numbered_inputs(args), "text"),
                       lambda text, entities: {"text": text, "entities": entities}, _print_tagged, "tagging")  # fmt: skip


def _print_tagged(_n, text, entities) -> None:
    print(text)
    if not entities:
        print("  (no entities)")
    for e in entities:
        label = e.get("entity_group", e.get("entity"))
        index = f"  token {e['index']}" if "index" in e else ""
        print(f"  {label:<12} {e['score']:.4f}  [{e['start']}:{e['end']}]  {e['word']!r}{index}")


# ================================================================================================ qa
def run_qa(args: argparse.Namespace) -> int:
    from ..pipelines.chunks import TaskSpec

    options = {"top_k": args.top_k, "max_answer_len": args.max_answer_len, "max_seq_len": args.max_seq_len,
               "doc_stride": args.doc_stride, "handle_impossible_answer": args.handle_impossible_answer,
               "align_to_words": not args.no_align_to_words, "batch_size": args.batch_size,
               "tokenizer": args.tokenizer, "backend": backend_option(args), **checkpoint_options(args)}  # fmt: skip
    spec = TaskSpec.of("qa", args.model, options)
    return run_chunked(args, spec, _qa_inputs(args), _answered, _print_answered, "answering")


def _answers(result) -> list[dict]:
    return result if isinstance(result, list) else [result]


def _answered(pair, result) -> dict:
    return {"question": pair[0], "answers": _answers(result)}


def _print_answered(_n, pair, result) -> None:
    print(f"Q: {pair[0]}")
    for a in _answers(result):
        print(f"  {a['score']:.4f}  [{a['start']}:{a['end']}]  {a['answer']!r}")


def _qa_inputs(args: argparse.Namespace) -> Iterator[Numbered]:
    """Numbered (question, context) pairs: from --question with --context / --context-file, else JSON lines
    (from --input FILE or stdin) with "question" and "context" keys."""
    context = args.context
    if args.context_file is not None:
        if context is not None:
            raise UserError("give --context or --context-file, not both")
        try:
            with open(args.context_file, encoding="utf-8") as f:
                context = f.read()
        except FileNotFoundError:
            raise UserError(f"{args.context_file}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"{args.context_file}: is a directory, not a text file") from None
    if args.question is not None or context is not None:
        if args.question is None or context is None:
            raise UserError("--question needs --context (or --context-file), and the other way round")
        if args.input:
            raise UserError("give --question/--context or --input FILE, not both")
        for name, value in (("question", args.question), ("context", context)):
            if not value.strip():
                raise UserError(f"the {name} is empty")
        yield Numbered("the arguments", (args.question, context))
        return
    lines = argparse.Namespace(texts=[], input=args.input, field=None)
    for numbered in numbered_inputs(lines):
        item, where = numbered.item, numbered.where
        if isinstance(item, str):  # a line of stdin or of a .txt file: must be JSON too
            try:
                item = json.loads(item)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg}); each line must be an object with "
                                '"question" and "context"') from None  # fmt: skip
        if not isinstance(item, dict) or not {"question", "context"} <= set(item):
            raise UserError(f'{where}: needs an object with "question" and "context" keys')
        q, c = item["question"], item["context"]
        if not isinstance(q, str) or not isinstance(c, str) or not q.strip() or not c.strip():
            raise UserError(f'{where}: "question" and "context" must be non-empty strings')
        yield Numbered(where, (q, c))


# ================================================================================================ parsers
def register(sub) -> None:
    tag = sub.add_parser(
        "tag",
        help="token classification: a label per token, or grouped entities, with character offsets",
        description="Tag the tokens of each text with a token-classification checkpoint "
        "(ErnieMForTokenClassification) and print the entities with their character offsets. Decoding is HF "
        "transformers' token-classification pipeline; offsets come from the tokenizer (PaddleNLP's "
        "get_offset_mapping).",
        epilog=EPILOG,
    )
    tag.add_argument("model", metavar="MODEL", help="checkpoint directory, weights file or cached hub id")
    add_input_options(tag)
    tag.add_argument("--aggregation", choices=("none", "simple", "first", "average", "max"), default="simple",
                     help="none: one entry per token; simple: adjacent tokens of one tag grouped; first / "
                     "average / max: one label per word first (default: simple)")  # fmt: skip
    tag.add_argument("--ignore-labels", nargs="*", default=["O"], metavar="LABEL",
                     help="labels left out (default: O; give the flag alone to keep every label)")  # fmt: skip
    tag.add_argument("--stride", type=int, help="tag long texts in overlapping windows sharing this many tokens "
                     "(default: truncate to the model's length)")  # fmt: skip
    tag.add_argument("--max-length", type=int, help="tokens per window, [CLS] and [SEP] included (default: the "
                     "model's limit)")  # fmt: skip
    _add_model_options(tag)
    add_run_options(tag, chunk_size=64, what="texts")
    tag.set_defaults(func=run_tag)

    qa = sub.add_parser(
        "qa",
        help="extractive question answering: the span of a context that answers a question",
        description="Answer questions with a question-answering checkpoint (ErnieMForQuestionAnswering). "
        'Give --question and --context (or --context-file), or JSON lines with "question" and '
        '"context" keys via --input FILE or stdin. Decoding is HF transformers\' question-answering '
        "pipeline; contexts longer than --max-seq-len are read in overlapping windows.",
        epilog=EPILOG,
    )
    qa.add_argument("model", metavar="MODEL", help="checkpoint directory, weights file or cached hub id")
    qa.add_argument("--question", "-q", help="the question")
    qa.add_argument("--context", "-c", help="the text to find the answer in")
    qa.add_argument("--context-file", metavar="FILE", help="read the context from a UTF-8 text file")
    qa.add_argument("--input", "-i", metavar="FILE", help="a .jsonl file, one {\"question\", \"context\"} "
                    "object per line (default without --question: the same from stdin)")  # fmt: skip
    qa.add_argument("--top-k", type=int, default=1, help="answers per question (default: 1)")
    qa.add_argument("--max-answer-len", type=int, default=15, help="longest answer in tokens (default: 15)")
    qa.add_argument("--max-seq-len", type=int, help="tokens per window, question included (default: "
                    "384 or the model's limit if smaller)")  # fmt: skip
    qa.add_argument("--doc-stride", type=int, help="tokens shared by neighbouring windows of a long context "
                    "(default: min(max-seq-len / 2, 128))")  # fmt: skip
    qa.add_argument("--handle-impossible-answer", action="store_true",
                    help="let the empty answer (no answer in the context) compete")  # fmt: skip
    qa.add_argument("--no-align-to-words", action="store_true", help="keep answers to the tokens' own "
                    "characters instead of widening them to whole words (better for Chinese, Japanese)")  # fmt: skip
    _add_model_options(qa)
    add_run_options(qa, chunk_size=16, what="questions")
    qa.set_defaults(func=run_qa)
