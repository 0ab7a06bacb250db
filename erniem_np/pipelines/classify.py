"""Text classification: ``Classifier``, shaped like HF transformers' text-classification pipeline (4.46.3).

    clf = Classifier("path/to/seq-cls-checkpoint")
    clf("I love it")                                   # [{"label": "POSITIVE", "score": 0.98}]  (HF's shape)
    clf(["good", "bad"])                               # [{"label": ..., "score": ...}, {...}]
    clf(["good"], top_k=None)                          # [[every label, best first]]
    clf({"text": "A man eats.", "text_pair": "Someone eats."})      # a sentence pair

Scores as HF's ``TextClassificationPipeline.postprocess`` computes them, on float32 logits:
``function_to_apply`` defaults to "none" for problem_type "regression", "sigmoid" for
"multi_label_classification" or a single label, else "softmax". Labels come from the config's id2label
(``LABEL_i`` when there is none).

Unlike HF's pipeline, which passes no truncation to the tokenizer, texts are cut to ``max_length`` tokens
(default: the position table's limit): HF raises on a text longer than the model takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..model import ErnieMForSequenceClassification
from .base import (
    ProgressFn,
    iter_chunks,
    load_model_and_tokenizer,
    map_bucketed,
    max_tokens,
    pad_batch,
    sigmoid,
    softmax,
)

FUNCTIONS = ("softmax", "sigmoid", "none")
_LEGACY = object()  # top_k not given: HF's "legacy" output, one {"label", "score"} per input


def default_function(config) -> str:
    """HF 4.46.3 TextClassificationPipeline.postprocess: the function applied when none is asked for."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def as_pair(item: Any, i: int = 0) -> tuple[str, str | None]:
    """One input as (text, text_pair or None): a str, a {"text", "text_pair"} dict, or a (text, pair) tuple."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict):
        if "text" not in item:
            raise ValueError(f"input {i}: a dict input needs a 'text' key (and optionally 'text_pair'), got "
                             f"keys {sorted(item)}")  # fmt: skip
        text, pair = item["text"], item.get("text_pair")
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        text, pair = item
    else:
        raise TypeError(f"input {i}: expected a str, a {{'text', 'text_pair'}} dict or a (text, pair) tuple, got "
                        f"{type(item).__name__}")  # fmt: skip
    if not isinstance(text, str) or not (pair is None or isinstance(pair, str)):
        raise TypeError(f"input {i}: text and text_pair must be str")
    return text, pair


class Classifier:
    """A sequence classifier over any checkpoint with a sequence-classification head.

    Args:
        model: a checkpoint path (or cached hub id) or a loaded ``ErnieMForSequenceClassification``.
        tokenizer: a tokenizer directory or ErnieMTokenizer (default: the checkpoint's directory).
        max_length: truncate inputs (a pair: longest first) to this many tokens (default and cap: the
            position table's limit).
        batch_size, chunk_size: as ``Encoder``.
        function_to_apply: the default for calls ("softmax", "sigmoid", "none"; None: HF's rule above).
        flavor, dtype, backend, checkpoint_options: as ``from_pretrained``.
    """

    def __init__(self, model, *, tokenizer=None, max_length: int | None = None, batch_size: int = 32,
                 chunk_size: int = 1024, function_to_apply: str | None = None, flavor: str | None = None,
                 dtype=np.float32, backend: str | None = None, **checkpoint_options):  # fmt: skip
        self.model, self.tokenizer = load_model_and_tokenizer(
            model, ErnieMForSequenceClassification, task="classify", tokenizer=tokenizer, flavor=flavor,
            dtype=dtype, backend=backend, **checkpoint_options)  # fmt: skip
        self.max_length = max_tokens(self.model, self.tokenizer, max_length)
        self.batch_size, self.chunk_size = int(batch_size), int(chunk_size)
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
        cfg = self.model.config
        self.id2label = cfg.id2label or {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
        self.function_to_apply = self._check_function(function_to_apply or default_function(cfg))

    @staticmethod
    def _check_function(name: str) -> str:
        name = str(name).lower()
        if name not in FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {', '.join(FUNCTIONS)}; got {name!r}")
        return name

    # ---------------------------------------------------------------------------------------------- core
    def tokenize(self, pairs: list[tuple[str, str | None]]) -> list[list[int]]:
        """Unpadded ids: [CLS] a [SEP] or [CLS] a [SEP] [SEP] b [SEP], cut to max_length (pairs longest first)."""
        rows: list[Any] = [None] * len(pairs)
        singles = [i for i, (_, b) in enumerate(pairs) if b is None]
        doubles = [i for i, (_, b) in enumerate(pairs) if b is not None]
        kw = {"truncation": True, "max_length": self.max_length, "return_attention_mask": False}
        if singles:
            for i, ids in zip(singles, self.tokenizer([pairs[i][0] for i in singles], **kw)["input_ids"],
                              strict=True):  # fmt: skip
                rows[i] = ids
        if doubles:
            enc = self.tokenizer([pairs[i][0] for i in doubles], [pairs[i][1] for i in doubles], **kw)
            for i, ids in zip(doubles, enc["input_ids"], strict=True):
                rows[i] = ids
        return rows

    def _logits_batch(self, rows: list[list[int]]) -> list[np.ndarray]:
        ids, mask = pad_batch(rows, self.tokenizer.pad_token_id)  # [B, L]; the mask always passed (base.py)
        return list(self.model(ids, attention_mask=mask).logits)  # [B, N] -> B rows of [N]

    def logits(self, inputs: Iterable[Any], progress: ProgressFn | None = None) -> np.ndarray:
        """[N, num_labels] logits of every input (str, {"text", "text_pair"} dict or (text, pair))."""
        blocks = list(self.logits_chunks(inputs, progress))
        return np.concatenate(blocks) if blocks else np.zeros((0, self.model.config.num_labels), self.model.dtype)

    def logits_chunks(self, inputs: Iterable[Any], progress: ProgressFn | None = None) -> Iterator[np.ndarray]:
        """[n, num_labels] per ``chunk_size`` inputs, read lazily."""
        done = 0
        for chunk in iter_chunks(inputs, self.chunk_size):
            pairs = [as_pair(x, done + k) for k, x in enumerate(chunk)]
            on_rows = None if progress is None else (lambda n, base=done: progress("classifying", base + n, None))
            yield np.stack(map_bucketed(self.tokenize(pairs), self.batch_size, self._logits_batch, on_rows))
            done += len(chunk)

    def scores(self, logits: np.ndarray, function_to_apply: str | None = None) -> np.ndarray:
        """The scores HF's pipeline reports for [N, num_labels] logits (float32, as HF's numpy postprocess)."""
        fn = self._check_function(function_to_apply or self.function_to_apply)
        x = np.asarray(logits, dtype=np.float32)
        return softmax(x) if fn == "softmax" else sigmoid(x) if fn == "sigmoid" else x

    def postprocess(self, scores: np.ndarray, top_k: Any = _LEGACY) -> dict | list[dict]:
        """One input's result: ``{"label", "score"}`` of the best label (top_k not given), else the ``top_k``
        best (None: all) as a list, best first — HF's TextClassificationPipeline.postprocess."""
        if top_k is _LEGACY:
            k = int(scores.argmax())
            return {"label": self.id2label[k], "score": float(scores[k])}
        ranked = [{"label": self.id2label[i], "score": float(s)} for i, s in enumerate(scores)]
        ranked.sort(key=lambda d: d["score"], reverse=True)  # stable: ties keep label order, as HF's sort
        return ranked if top_k is None else ranked[: int(top_k)]

    # ---------------------------------------------------------------------------------------------- API
    def iter(self, inputs: Iterable[Any], *, function_to_apply: str | None = None, top_k: Any = _LEGACY,
             progress: ProgressFn | None = None) -> Iterator[dict | list[dict]]:  # fmt: skip
        """One result per input, streamed chunk by chunk (shapes as ``postprocess``)."""
        for block in self.logits_chunks(inputs, progress):
            for row in self.scores(block, function_to_apply):
                yield self.postprocess(row, top_k)

    def __call__(self, inputs, *, text_pair: str | list[str] | None = None, function_to_apply: str | None = None,
                 top_k: Any = _LEGACY, progress: ProgressFn | None = None):  # fmt: skip
        """Classify a str, a {"text", "text_pair"} dict, or a list of either (HF's pipeline inputs).

        Returns HF's shapes: a list with one result per input; a result is a ``{"label", "score"}`` dict
        without ``top_k``, a list of them (best first) with ``top_k`` (an int, or None for every label).
        """
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        if text_pair is not None:
            pairs_ = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs_) != len(items) or not all(isinstance(x, str) for x in items):
                raise ValueError(f"text_pair must give one str per text: {len(items)} texts, {len(pairs_)} pairs")
            items = list(zip(items, pairs_, strict=True))
        results = list(self.iter(items, function_to_apply=function_to_apply, top_k=top_k, progress=progress))
        # QUIRK: HF 4.46.3 wraps the result of one str in a list when top_k is not given ([{"label", "score"}]);
        # one dict gives its result bare, and with top_k one input gives its list of labels directly.
        if single and (top_k is not _LEGACY or isinstance(inputs, dict)):
            return results[0]
        return results
