"""Multiple choice: ``Chooser`` scores each candidate answer to a question (or continuation of a context).

    ch = Chooser("path/to/multiple-choice-checkpoint")
    ch("The cat sat on the", ["mat", "moon", "idea"])
    # {"best": 0, "choice": "mat", "scores": [0.71, 0.2, 0.09], "logits": [1.3, 0.05, -0.7]}

Each choice is paired with the question as ErnieMForMultipleChoice was trained on it (HF's run_swag recipe):
``[CLS] question [SEP] [SEP] choice [SEP]``, cut to ``max_length`` longest first. The head gives one logit
per pair; the scores are their softmax over the question's choices (float32). HF transformers has no
multiple-choice pipeline, so the output shape is this project's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..model import ErnieMForMultipleChoice
from .base import ProgressFn, iter_chunks, load_model_and_tokenizer, map_bucketed, max_tokens, pad_batch, softmax

QUESTION_KEYS = ("question", "context", "text")


def as_item(item: Any, i: int = 0) -> tuple[str, list[str]]:
    """(question, choices) from a tuple or a dict {"question" (or "context", "text"), "choices"}."""
    if isinstance(item, dict):
        key = next((k for k in QUESTION_KEYS if k in item), None)
        if key is None or "choices" not in item:
            raise ValueError(f"input {i}: a multiple-choice input needs 'question' (or 'context') and 'choices' "
                             f"keys, got {sorted(item)}")  # fmt: skip
        question, choices = item[key], item["choices"]
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        question, choices = item
    else:
        raise TypeError(f"input {i}: expected (question, choices) or a dict with 'question' and 'choices', got "
                        f"{type(item).__name__}")  # fmt: skip
    if not isinstance(question, str):
        raise TypeError(f"input {i}: the question must be a str, got {type(question).__name__}")
    if isinstance(choices, str) or not isinstance(choices, (list, tuple)):
        raise TypeError(f"input {i}: choices must be a list of str")
    if not choices:
        raise ValueError(f"input {i}: no choices to choose from")
    if not all(isinstance(c, str) for c in choices):
        raise TypeError(f"input {i}: every choice must be a str")
    return question, list(choices)


class Chooser:
    """Multiple choice over any checkpoint with a multiple-choice head (a classifier with one output).

    Args: as ``Classifier`` (model, tokenizer, max_length, batch_size = question-choice pairs per forward
    pass, chunk_size = questions read at a time, flavor, dtype, backend, checkpoint options).
    """

    def __init__(self, model, *, tokenizer=None, max_length: int | None = None, batch_size: int = 32,
                 chunk_size: int = 256, flavor: str | None = None, dtype=np.float32, backend: str | None = None,
                 **checkpoint_options):  # fmt: skip
        self.model, self.tokenizer = load_model_and_tokenizer(
            model, ErnieMForMultipleChoice, task="choose", tokenizer=tokenizer, flavor=flavor, dtype=dtype,
            backend=backend, **checkpoint_options)  # fmt: skip
        self.max_length = max_tokens(self.model, self.tokenizer, max_length)
        self.batch_size, self.chunk_size = int(batch_size), int(chunk_size)
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")

    def _logits_batch(self, rows: list[list[int]]) -> list[float]:
        ids, mask = pad_batch(rows, self.tokenizer.pad_token_id)  # [n, L]; the mask always passed (base.py)
        # The head flattens [B, C, L] to [B*C, L] and scores each row alone, so pairs of different questions
        # can share a batch: here as one "question" of n choices, [1, n, L] -> logits [1, n].
        return [float(x) for x in self.model(ids[None], attention_mask=mask[None]).logits[0]]

    def _chunk(self, items: list[tuple[str, list[str]]]) -> list[dict]:
        questions = [q for q, cs in items for _ in cs]
        choices = [c for _, cs in items for c in cs]
        rows = self.tokenizer(questions, choices, truncation=True, max_length=self.max_length,
                              return_attention_mask=False)["input_ids"]  # fmt: skip
        logits = map_bucketed(rows, self.batch_size, self._logits_batch)
        out, start = [], 0
        for _, cs in items:
            x = np.asarray(logits[start : start + len(cs)], dtype=np.float32)  # [C]
            start += len(cs)
            scores = softmax(x)
            best = int(scores.argmax())
            out.append({"best": best, "choice": cs[best], "scores": scores.tolist(), "logits": x.tolist()})
        return out

    def iter(self, items: Iterable[Any], progress: ProgressFn | None = None) -> Iterator[dict]:
        """One result per (question, choices) item, streamed ``chunk_size`` questions at a time."""
        done = 0
        for chunk in iter_chunks(items, self.chunk_size):
            parsed = [as_item(x, done + k) for k, x in enumerate(chunk)]
            yield from self._chunk(parsed)
            done += len(chunk)
            if progress is not None:
                progress("choosing", done, None)

    def __call__(self, question, choices: list[str] | None = None, progress: ProgressFn | None = None):
        """``chooser(question, choices)`` -> one result; ``chooser([items])`` -> a list of results.

        A result: ``{"best": index, "choice": the best choice, "scores": softmax over the choices,
        "logits": the head's logits}``."""
        if choices is not None:
            return next(self.iter([(question, choices)]))
        if isinstance(question, (str, dict)):
            if isinstance(question, str):
                raise TypeError("pass the choices: chooser(question, [choice, ...])")
            return next(self.iter([question]))
        return list(self.iter(question, progress))
