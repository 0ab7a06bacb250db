"""What every pipeline shares: loading a model of one head class with its tokenizer, length-bucketed batches
that come back in input order, and chunking a stream of inputs so memory stays flat.

A pipeline is three steps: tokenize (unpadded ids per input), run the model over length-bucketed batches, and
post-process each row. This module holds the first two; the task modules (encode, classify, choose, tag, qa,
extract) hold the third.

    model, tokenizer = load_model_and_tokenizer(path, ErnieMForSequenceClassification, task="classify")
    for chunk in iter_chunks(texts, 256):                       # a stream, never read whole
        ids = tokenizer(chunk, truncation=True, max_length=n)["input_ids"]   # list of lists, unpadded
        out = map_bucketed(ids, 32, lambda rows: run(pad_batch(rows, tokenizer.pad_token_id)))

The attention mask is always passed to the model (``pad_batch`` makes it from the true lengths). It matters:
without it the "paddle" flavor masks only id 0 ([CLS]) and lets every [PAD] be attended (README "Flavor"),
so a text padded in a batch would get other numbers than the same text alone. With it, a padded key gets
the masked fill and a softmax weight of exactly 0, so a text's result does not depend on its batch partners
to fp32 rounding (tests/test_pipelines.py checks batched against one-by-one).

Dimension legend: ``B`` batch, ``L`` sequence (the batch's longest), ``N`` inputs in a chunk.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from ..checkpoints.names import HEAD_OF_ARCHITECTURE
from ..model import ErnieMPreTrainedModel
from ..parameters import WeightsMismatchError
from ..tokenizer import ErnieMTokenizer

T = TypeVar("T")

# A progress callback: (what, done, total or None). Library code never prints; commands pass
# ``erniem_np.commands._common.Progress()``, which writes to stderr.
ProgressFn = Callable[[str, int, "int | None"], None]

# The head each model class adds, named for error messages.
HEAD_NAMES = {
    "ErnieMModel": "base encoder",
    "ErnieMForSequenceClassification": "sequence-classification head (classifier)",
    "ErnieMForMultipleChoice": "multiple-choice head (classifier with one output)",
    "ErnieMForTokenClassification": "token-classification head (classifier)",
    "ErnieMForQuestionAnswering": "question-answering head (qa_outputs)",
    "ErnieMForInformationExtraction": "UIE-M extraction head (linear_start, linear_end)",
}


# ============================================================================================ loading
def load_model_and_tokenizer(
    model: str | os.PathLike | ErnieMPreTrainedModel,
    model_class: type[ErnieMPreTrainedModel],
    *,
    task: str,
    tokenizer: str | os.PathLike | ErnieMTokenizer | None = None,
    flavor: str | None = None,
    dtype=np.float32,
    backend: str | None = None,
    quiet_unused: bool = False,
    **checkpoint_options: Any,
) -> tuple[ErnieMPreTrainedModel, ErnieMTokenizer]:
    """A model of ``model_class`` and its tokenizer, with one clear error for each thing that is missing.

    Args:
        model: a checkpoint (directory, weights file or cached hub id; anything ``from_pretrained`` reads), or
            an already-loaded model, which must be an instance of ``model_class``.
        model_class: the head class the task needs, e.g. ``ErnieMForSequenceClassification``.
        task: the task's name for messages ("classify", "choose", ...).
        tokenizer: a directory holding ``sentencepiece.bpe.model`` and ``vocab.txt``, or an ErnieMTokenizer;
            None: the checkpoint's own directory.
        flavor: override the checkpoint's reference behaviour (tokenizer and model get the same).
        dtype, backend: as ``from_pretrained``.
        quiet_unused: silence the warning about checkpoint weights the class does not use (the encoder
            drops a head on purpose).
        checkpoint_options: passed to ``from_pretrained`` (``config``, ``download``, ``revision``).

    Raises:
        FileNotFoundError: no checkpoint there, or no tokenizer files (names the files and ``tokenizer=``).
        ValueError: the checkpoint lacks the head ``model_class`` needs (names the head and the weights).
    """
    if isinstance(model, ErnieMPreTrainedModel):
        if not isinstance(model, model_class):
            raise TypeError(f"{task} needs an {model_class.__name__} (a {HEAD_NAMES[model_class.architecture]}), "
                            f"got an {type(model).__name__}")  # fmt: skip
        where = None
    else:
        where = os.fspath(model)
        if not os.path.exists(where) and not _looks_like_hub_id(where):
            raise FileNotFoundError(f"{where}: no such checkpoint directory or file")
        model = _load_head(where, model_class, task, flavor, dtype, backend, quiet_unused, checkpoint_options)
    if not isinstance(tokenizer, ErnieMTokenizer):
        tok_dir = os.fspath(tokenizer) if tokenizer is not None else _tokenizer_dir(where)
        if tok_dir is None:
            raise ValueError(f"{task}: pass tokenizer= (a directory with sentencepiece.bpe.model and vocab.txt) "
                             "when the model is given as an object")  # fmt: skip
        try:
            tokenizer = ErnieMTokenizer.from_pretrained(tok_dir, flavor=flavor or model.config.flavor)
        except FileNotFoundError as e:
            hint = " (pass --tokenizer DIR / tokenizer=DIR)" if tokenizer is None else ""
            raise FileNotFoundError(f"no tokenizer for {task}: {e}{hint}") from None
    n_ids = max(tokenizer.vocab.values()) + 1
    if n_ids > model.config.vocab_size:
        raise ValueError(f"the tokenizer has ids up to {n_ids - 1} but the model's vocabulary has "
                         f"{model.config.vocab_size} rows: they do not belong together")  # fmt: skip
    return model, tokenizer


def _load_head(path, model_class, task, flavor, dtype, backend, quiet_unused, options):
    head = HEAD_NAMES.get(model_class.architecture, model_class.__name__)
    try:
        with warnings.catch_warnings():
            if quiet_unused:
                warnings.filterwarnings("ignore", message=".*does not use these weights", category=UserWarning)
            return model_class.from_pretrained(path, flavor=flavor, dtype=dtype, backend=backend, **options)
    except WeightsMismatchError as e:
        encoder = ("embeddings.", "encoder.", "ernie_m.embeddings.", "ernie_m.encoder.")
        names = [*e.missing, *(m.split(":")[0] for m in e.misshapen)]
        if not names or all(n.startswith(encoder) for n in names):  # a broken encoder, not a missing head
            raise
        raise ValueError(f"{path}: {task} needs a checkpoint with a {head}; this one does not have it "
                         f"({e.detail})") from None  # fmt: skip


def check_declared_head(model: Any, model_class: type, task: str) -> None:
    """Refuse a checkpoint whose config declares another head class (its ``architectures``, or a legacy
    ``init_class``): a sequence classifier's ``classifier`` has the same names as a token classifier's and
    would load, then tag nonsense. Checkpoints that declare nothing are left to the loader."""
    if not isinstance(model, (str, os.PathLike)):
        return
    path = os.fspath(model)
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for name in ("config.json", "model_config.json"):
        config_path = os.path.join(directory, name)
        if not os.path.isfile(config_path):
            continue
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return  # the loader names an unreadable config
        if not isinstance(config, dict):
            return
        declared = config.get("architectures")
        declared = declared[0] if isinstance(declared, list) and declared else config.get("init_class")
        if isinstance(declared, str) and declared in HEAD_OF_ARCHITECTURE and declared != model_class.architecture:
            raise ValueError(f"{path}: {task} needs an {model_class.architecture} checkpoint; its {name} "
                             f"declares {declared}")  # fmt: skip
        return


def _looks_like_hub_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith((".", "/")) and not os.path.splitext(s)[1]


def _tokenizer_dir(where: str | None) -> str | None:
    if where is None:
        return None
    return where if os.path.isdir(where) else os.path.dirname(os.path.abspath(where))


def max_tokens(model: ErnieMPreTrainedModel, tokenizer: ErnieMTokenizer, max_length: int | None) -> int:
    """The truncation length: ``max_length``, capped by the position table (max_position_embeddings - 2)
    and the tokenizer's model_max_length."""
    limit = min(model.config.max_sequence_length, tokenizer.model_max_length)
    if max_length is None:
        return limit
    if int(max_length) < 3:
        raise ValueError(f"max_length must be at least 3 ([CLS] text [SEP]), got {max_length}")
    return min(int(max_length), limit)


# ============================================================================================ batching
def pad_batch(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad unpadded id lists to the longest: ``input_ids`` and ``attention_mask``, both [B, L] int64."""
    L = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), L), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), L), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


# What a forward costs besides its positions, in positions: fitted to mixed-length batches of ErnieM-base on
# 2 threads (time = a x positions + b per forward + an attention term; b / a is 17 positions in float32 and 34
# in int8: the weights streamed from memory once per forward, the Python between kernels). The cuts barely
# move between 16 and 64 (docs/performance.md).
FORWARD_COST_POSITIONS = 32


def bucket_batches(lengths: Sequence[int], batch_size: int,
                   forward_cost: int = FORWARD_COST_POSITIONS) -> list[np.ndarray]:  # fmt: skip
    """Indices grouped into batches of at most ``batch_size`` rows of similar length: sorted by length (stable,
    so ties keep input order), then cut where the work is least. A batch costs the positions its forward
    computes, |batch| x its longest row (padding included), plus ``forward_cost`` positions for the forward
    itself; the cuts that minimise the sum are found exactly, by dynamic programming over the sorted lengths
    (O(n x batch_size) steps). A long text joins shorter ones only where padding them costs less than a forward
    of its own."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    sorted_lengths = np.asarray(lengths, dtype=np.int64)[order]
    n = len(order)
    best = np.zeros(n + 1)  # best[j]: least cost of the first j sorted rows
    start = np.zeros(n + 1, dtype=np.int64)  # start[j]: where the last batch of that best begins
    for j in range(1, n + 1):
        lo = max(0, j - batch_size)
        cost = best[lo:j] + (j - np.arange(lo, j)) * sorted_lengths[j - 1]  # the last batch is rows i..j-1
        i = int(np.argmin(cost))  # the first minimum: the largest batch among equals
        best[j] = cost[i] + forward_cost
        start[j] = lo + i
    cuts, j = [], n
    while j > 0:
        cuts.append((start[j], j))
        j = start[j]
    return [order[a:b] for a, b in reversed(cuts)]


def map_bucketed(
    rows: Sequence[Sequence[int]],
    batch_size: int,
    run: Callable[[list[Sequence[int]]], Sequence[T]],
    progress: Callable[[int], None] | None = None,
) -> list[T]:
    """``run`` over length-bucketed batches of ``rows``; the results come back in the order of ``rows``.

    ``run(batch_rows)`` gets a list of id lists (pad them with ``pad_batch``) and returns one result per row,
    in the order given. ``progress(n)`` is called with the number of rows done after each batch.
    """
    out: list[Any] = [None] * len(rows)
    done = 0
    for idx in bucket_batches([len(r) for r in rows], batch_size):
        results = run([rows[i] for i in idx])
        if len(results) != len(idx):
            raise AssertionError(f"a batch of {len(idx)} rows gave {len(results)} results")
        for i, r in zip(idx, results, strict=True):
            out[i] = r
        done += len(idx)
        if progress is not None:
            progress(done)
    return out


# ============================================================================================ streaming
def iter_chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items; only one chunk is held at a time, so an input larger than
    memory streams through (a generator is read lazily, never listed whole)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def check_texts(texts: Iterable[Any], name: str = "text") -> Iterator[str]:
    """Pass strings through; raise a TypeError naming the position of the first non-string."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name} {i} must be a str, got {type(t).__name__}")
        yield t


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum: the max is subtracted first, so large logits do not overflow."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), as HF's pipelines compute it."""
    return 1.0 / (1.0 + np.exp(-x))
