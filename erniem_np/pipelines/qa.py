"""Extractive question answering (``erniem-np qa``): the span of the context that answers a question.

This is HF transformers 4.46.3's ``QuestionAnsweringPipeline`` as it runs with a fast tokenizer
(``preprocess`` -> ``select_starts_ends`` -> ``decode_spans`` -> ``get_indices``), written again in NumPy
over the start/end logits of ``ErnieMForQuestionAnswering``:

1. ``[CLS] question [SEP] [SEP] context [SEP]`` rows of at most ``max_seq_len`` tokens; a context that does not
   fit is cut into windows that share ``doc_stride`` tokens (the tokenizer's ``return_overflowing_tokens``
   with ``truncation="only_second"``); the question is repeated in every window.
2. Per window, tokens that cannot answer (question, [SEP], padding) get logit -10000, both logit rows are
   softmaxed, and every span (s, e) with s <= e < s + max_answer_len scores p_start[s] * p_end[e]; the
   ``top_k`` best spans of every window are pooled and the best ``top_k`` overall are returned.
3. A span becomes characters: with ``align_to_words`` its first and last tokens are widened to whole words,
   otherwise the tokens' own offsets are used.
4. ``handle_impossible_answer``: the empty answer competes with score min over windows of
   p_start[CLS] * p_end[CLS].

HF's ErnieM tokenizer is slow-only. With a slow tokenizer HF's pipeline takes another road (SQuAD features
over whitespace words, answers made of whole words), and in the reference environment that road crashes
before the model runs (``transformers/data/processors/squad.py`` line 252: ``np.where(list == int)`` is a
0-d ``nonzero``, which NumPy 2 refuses). So the fast road is the one reproduced, with ``ErnieMTokenizer``'s character offsets (PaddleNLP's
``get_offset_mapping``) standing in for a fast tokenizer's. Words, for ``align_to_words``, are runs of tokens
with no whitespace between them (a fast tokenizer with a Metaspace pre-tokenizer, like XLM-R's, splits words
there too); so in Chinese or Japanese a "word" is a whole run without spaces, the reason HF advises
``align_to_words=False`` for them.

The tokenizer's attention mask is always passed to the model (``base.pad_batch``), in both flavors; each
window is decoded over its own unpadded length, as HF decodes its unpadded windows.

Dimension legend: ``L`` tokens of one window.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..model import ErnieMForQuestionAnswering
from ..tokenizer import ErnieMTokenizer
from .base import check_declared_head, iter_chunks, load_model_and_tokenizer, map_bucketed, max_tokens, pad_batch


class QuestionAnswerer:
    """Answer questions from contexts with an ``ErnieMForQuestionAnswering`` checkpoint.

    ``QuestionAnswerer(path)(question=q, context=c)`` returns a dict ``{"score", "start", "end", "answer"}``
    (character offsets into ``c``), or a list of them when more than one answer is returned (HF's shape: with
    ``top_k > 1`` a single surviving answer is still a bare dict). Lists of questions and contexts give a list
    of those, one per pair (a single string on one side is paired with every item of the other).

    Args:
        model: a checkpoint directory / file / cached hub id, or a loaded ``ErnieMForQuestionAnswering``.
        top_k: answers to return (fewer when there are not enough candidate spans).
        max_answer_len: the longest answer, in tokens.
        max_seq_len: tokens per window, question and special tokens included (default: 384, capped by the
            position table and the tokenizer's model_max_length, as HF's ``min(model_max_length, 384)``).
        doc_stride: tokens shared by neighbouring windows (default: ``min(max_seq_len // 2, 128)``, HF's).
        handle_impossible_answer: let the empty answer ``{"start": 0, "end": 0, "answer": ""}`` compete.
        align_to_words: widen answers to whole words (HF's default True).
        batch_size: windows per forward pass (bucketed by length).
        tokenizer, flavor, dtype, backend, checkpoint_options: as ``base.load_model_and_tokenizer``.

    Every setting can be overridden per call: ``qa(question=..., context=..., top_k=3)``.
    """

    def __init__(
        self,
        model: str | os.PathLike | ErnieMForQuestionAnswering,
        top_k: int = 1,
        max_answer_len: int = 15,
        max_seq_len: int | None = None,
        doc_stride: int | None = None,
        handle_impossible_answer: bool = False,
        align_to_words: bool = True,
        batch_size: int = 8,
        *,
        tokenizer: str | os.PathLike | ErnieMTokenizer | None = None,
        flavor: str | None = None,
        dtype=np.float32,
        backend: str | None = None,
        **checkpoint_options: Any,
    ) -> None:
        check_declared_head(model, ErnieMForQuestionAnswering, "qa")
        self.model, self.tokenizer = load_model_and_tokenizer(
            model, ErnieMForQuestionAnswering, task="qa", tokenizer=tokenizer, flavor=flavor, dtype=dtype,
            backend=backend, **checkpoint_options,
        )  # fmt: skip
        self.limit = max_tokens(self.model, self.tokenizer, None)
        self.settings = {"top_k": top_k, "max_answer_len": max_answer_len, "max_seq_len": max_seq_len,
                         "doc_stride": doc_stride, "handle_impossible_answer": handle_impossible_answer,
                         "align_to_words": align_to_words}  # fmt: skip
        self._settings({})  # check them now
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    def _settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The call's settings, checked as HF's _sanitize_parameters and preprocess check them, defaults filled."""
        unknown = set(overrides) - set(self.settings)
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        s = {**self.settings, **{k: v for k, v in overrides.items() if v is not None}}
        if int(s["top_k"]) < 1:
            raise ValueError(f"top_k parameter should be >= 1 (got {s['top_k']})")
        if int(s["max_answer_len"]) < 1:
            raise ValueError(f"max_answer_len parameter should be >= 1 (got {s['max_answer_len']})")
        if s["max_seq_len"] is None:
            s["max_seq_len"] = min(self.limit, 384)  # HF: min(tokenizer.model_max_length, 384)
        elif not 6 <= int(s["max_seq_len"]) <= self.limit:
            raise ValueError(f"max_seq_len must be in [6, {self.limit}] (the model's position table and the "
                             f"tokenizer allow {self.limit} tokens), got {s['max_seq_len']}")  # fmt: skip
        if s["doc_stride"] is None:
            s["doc_stride"] = min(int(s["max_seq_len"]) // 2, 128)  # HF's default
        if int(s["doc_stride"]) < 0:
            raise ValueError(f"doc_stride must be >= 0, got {s['doc_stride']}")
        if int(s["doc_stride"]) > int(s["max_seq_len"]):
            raise ValueError(f"`doc_stride` ({s['doc_stride']}) is larger than `max_seq_len` ({s['max_seq_len']})")
        for k in ("top_k", "max_answer_len", "max_seq_len", "doc_stride"):
            s[k] = int(s[k])
        s["handle_impossible_answer"] = bool(s["handle_impossible_answer"])
        s["align_to_words"] = bool(s["align_to_words"])
        return s

    # ------------------------------------------------------------------------------------------ calling
    def __call__(self, question: str | Sequence[str] | None = None, context: str | Sequence[str] | None = None,
                 **overrides: Any) -> dict | list[dict] | list[dict | list[dict]]:  # fmt: skip
        """Answer one question (a dict or list of dicts) or lists of them (a list with one result per pair)."""
        if question is None or context is None:
            raise ValueError("qa needs both question= and context=")
        if isinstance(question, str) and isinstance(context, str):
            return self.answer([(question, context)], **overrides)[0]
        questions = [question] if isinstance(question, str) else list(question)
        contexts = [context] if isinstance(context, str) else list(context)
        if len(questions) == 1 and len(contexts) > 1:
            questions = questions * len(contexts)
        elif len(contexts) == 1 and len(questions) > 1:
            contexts = contexts * len(questions)
        if len(questions) != len(contexts):
            raise ValueError(f"got {len(questions)} questions and {len(contexts)} contexts; give as many of each, "
                             "or one of either")  # fmt: skip
        return self.answer(list(zip(questions, contexts, strict=True)), **overrides)

    def answer(self, pairs: Sequence[tuple[str, str]], **overrides: Any) -> list[dict | list[dict]]:
        """The answers of each (question, context) pair, in order."""
        s = self._settings(overrides)
        features = []  # (pair index, window): every window of every pair
        for i, (question, context) in enumerate(pairs):
            features.extend((i, w) for w in self._windows(i, question, context, s))
        logits = map_bucketed([w["input_ids"] for _, w in features], self.batch_size, self._run)
        per_pair: list[list[dict]] = [[] for _ in pairs]
        for (i, w), (start, end) in zip(features, logits, strict=True):
            per_pair[i].append({**w, "start": start, "end": end})
        return [postprocess(outs, pairs[i][1], s["top_k"], s["handle_impossible_answer"], s["max_answer_len"],
                            s["align_to_words"]) for i, outs in enumerate(per_pair)]  # fmt: skip

    def iter_answer(self, pairs: Iterable[tuple[str, str]], chunk_size: int = 64, **overrides: Any
                    ) -> Iterator[dict | list[dict]]:  # fmt: skip
        """Answer a stream of (question, context) pairs chunk by chunk; yields one result per pair, in order."""
        for chunk in iter_chunks(pairs, chunk_size):
            yield from self.answer(chunk, **overrides)

    def _windows(self, i: int, question: str, context: str, s: dict) -> list[dict]:
        """HF's fast preprocess: the windows of one pair, each with its p_mask, offsets and word ids."""
        for name, text in (("question", question), ("context", context)):
            if not isinstance(text, str):
                raise TypeError(f"{name} {i} must be a str, got {type(text).__name__}")
            if not text:
                raise ValueError(f"`{name}` cannot be empty (pair {i})")  # HF's argument handler refuses it too
        n_question = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
        # Word ids of the context's tokens (the whole context, so a word cut by a window keeps its id).
        context_offsets = self.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
        words = word_ids(context, context_offsets["offset_mapping"])
        room = s["max_seq_len"] - n_question - self.tokenizer.num_special_tokens_to_add(pair=True)
        if len(words) > room:  # the context is cut into windows
            if room < 1:
                raise ValueError(f"the question of pair {i} takes {n_question} tokens: max_seq_len "
                                 f"{s['max_seq_len']} leaves no room for the context")  # fmt: skip
            if s["doc_stride"] >= room:
                raise ValueError(f"doc_stride {s['doc_stride']} must be smaller than the {room} context tokens a "
                                 f"window of pair {i} holds (max_seq_len minus the question and 4 special "
                                 "tokens)")  # fmt: skip
        enc = self.tokenizer(
            question, context, truncation="only_second", max_length=s["max_seq_len"], stride=s["doc_stride"],
            return_overflowing_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True,
        )  # fmt: skip
        windows, first_token = [], 0
        for ids, offsets, special in zip(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"],
                                         strict=True):  # fmt: skip
            # [CLS] question [SEP] [SEP] context [SEP]: the context starts after the second [SEP].
            c0 = n_question + 3
            sequence_ids = [None] + [0] * n_question + [None, None] + [1] * (len(ids) - c0 - 1) + [None]
            # p_mask: 1 for tokens that cannot be in the answer, 0 for the context's tokens.
            p_mask = [int(t != 1) for t in sequence_ids]
            # QUIRK: HF keeps every token with the [CLS] id unmasked ("some models use it to indicate
            # unanswerable questions"), also a "[CLS]" typed inside the question or the context.
            for cls_index in np.nonzero(np.array(ids) == self.tokenizer.cls_token_id)[0]:
                p_mask[cls_index] = 0
            token_words = [None] * len(ids)
            for t in range(c0, len(ids) - 1):
                token_words[t] = words[first_token + t - c0]
            windows.append({"input_ids": ids, "p_mask": p_mask, "offsets": offsets, "words": token_words,
                            "special_tokens_mask": special})  # fmt: skip
            first_token += (len(ids) - c0 - 1) - s["doc_stride"]  # the next window starts doc_stride earlier
        return windows

    def _run(self, rows: list[Sequence[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        ids, mask = pad_batch(rows, self.tokenizer.pad_token_id)
        out = self.model(input_ids=ids, attention_mask=mask)  # start/end logits [B, L]
        return [(out.start_logits[i, : len(r)], out.end_logits[i, : len(r)]) for i, r in enumerate(rows)]


def word_ids(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """A word index per token: a new word starts where whitespace separates a token from the one before."""
    out, word, prev_end = [], -1, None
    for start, end in offsets:
        if prev_end is None or any(c.isspace() for c in text[prev_end:start]):
            word += 1
        out.append(word)
        prev_end = end
    return out


# ============================================================================ HF's decoding, step by step
def decode_spans(start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int, undesired_tokens: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The ``topk`` best spans (start index, end index, score): score = start[s] * end[e], s <= e < s + max_answer_len.

    ``start``, ``end``: probabilities [1, L]; ``undesired_tokens``: [1, L], 1 where a token may be in an answer.
    """
    # score of every span: outer product  [1, L, 1] x [1, 1, L] -> [1, L, L]
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    # keep s <= e (upper triangle) and e - s < max_answer_len (below the band's upper edge)
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) < topk:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # QUIRK: HF tests membership in ``undesired_tokens.nonzero()`` of a [1, L] array, i.e. in the union of
    # its row indices (all 0) and column indices, so token 0 passes this filter even when masked. In the
    # pipeline token 0 is [CLS], which is never masked, so it changes nothing there; kept for exactness.
    allowed = undesired_tokens.nonzero()
    desired_spans = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts = starts[desired_spans]
    ends = ends[desired_spans]
    scores = candidates[0, starts, ends]
    return starts, ends, scores


def select_starts_ends(start, end, p_mask, attention_mask, min_null_score=1000000, top_k=1,
                       handle_impossible_answer=False, max_answer_len=15):  # fmt: skip
    """Mask, softmax and decode one window: (starts, ends, scores, min_null_score).

    ``start``, ``end``: logits [1, L]; ``p_mask``: [1, L], 1 for tokens that cannot answer; ``attention_mask``:
    [1, L]. ``min_null_score``: the smallest empty-answer score of the windows seen so far.
    """
    undesired_tokens = np.abs(np.array(p_mask) - 1)  # 1 where a token may be in the answer
    if attention_mask is not None:
        undesired_tokens = undesired_tokens & attention_mask
    undesired_tokens_mask = undesired_tokens == 0.0
    # tokens outside the context cannot take softmax mass
    start = np.where(undesired_tokens_mask, -10000.0, start)
    end = np.where(undesired_tokens_mask, -10000.0, end)
    # softmax of each row ([CLS] included: it kept p_mask 0)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())  # the [CLS] span
    start[0, 0] = end[0, 0] = 0.0  # [CLS] never starts or ends a real answer
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score


def get_indices(offsets, words, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Character span of tokens s..e: widened to their words, or the tokens' own offsets."""
    if align_to_words and words[s] is not None and words[e] is not None:
        start_index = word_chars(offsets, words, words[s])[0]
        end_index = word_chars(offsets, words, words[e])[1]
    else:
        # HF: a token with no word (a special token; only [CLS] gets here) falls back to its offsets, (0, 0)
        start_index, end_index = offsets[s][0], offsets[e][1]
    return int(start_index), int(end_index)


def word_chars(offsets, words, word: int) -> tuple[int, int]:
    """A fast tokenizer's ``word_to_chars`` within one window: from its first token's start to its last's end.

    A word cut by the window's edge spans only its tokens inside the window: so does ``word_to_chars`` on an
    overflowing ``tokenizers.Encoding`` (checked with tokenizers 0.20, a WordPiece model and ``stride``)."""
    toks = [t for t, w in enumerate(words) if w == word]
    return offsets[toks[0]][0], offsets[toks[-1]][1]


def postprocess(windows: list[dict], context: str, top_k: int = 1, handle_impossible_answer: bool = False,
                max_answer_len: int = 15, align_to_words: bool = True) -> dict | list[dict]:  # fmt: skip
    """HF's ``postprocess``: decode every window, pool the spans, keep the best ``top_k``."""
    min_null_score = 1000000  # large and positive
    answers = []
    for w in windows:
        start, end = w["start"][None], w["end"][None]  # [L] -> [1, L]
        p_mask = np.asarray(w["p_mask"])[None]
        attention_mask = np.ones_like(p_mask)  # windows are decoded unpadded, as HF's
        starts, ends, scores, min_null_score = select_starts_ends(
            start, end, p_mask, attention_mask, min_null_score, top_k, handle_impossible_answer, max_answer_len
        )
        for s, e, score in zip(starts, ends, scores, strict=True):
            start_index, end_index = get_indices(w["offsets"], w["words"], int(s), int(e), align_to_words)
            answers.append({"score": score.item(), "start": start_index, "end": end_index,
                            "answer": context[start_index:end_index]})  # fmt: skip
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    # QUIRK: answers of overlapping windows are pooled without removing duplicates, as HF does.
    answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
    # QUIRK: HF returns a bare dict whenever exactly one answer is left, even for top_k > 1.
    if len(answers) == 1:
        return answers[0]
    return answers
