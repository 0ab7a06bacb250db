"""Token classification (``erniem-np tag``): a label per token, or entities grouped as HF's pipeline groups them.

This is HF transformers 4.46.3's ``TokenClassificationPipeline`` post-processing (``gather_pre_entities``,
``aggregate``, ``aggregate_words``, ``group_entities``, ``aggregate_overlapping_entities``), written again in
NumPy over the logits of ``ErnieMForTokenClassification``. The five aggregation strategies are HF's:

    none     one entry per token: entity (the label), score, index (token position), word (the token), start, end
    simple   adjacent tokens with the same label (B-/I- aware) grouped: entity_group, score (mean), word, start, end
    first    words first (a word's label and score are its first token's), then grouped as in simple
    average  words first (label = argmax of the mean of its tokens' probabilities), then grouped
    max      words first (label and score of its most confident token), then grouped

Offsets. HF's ErnieM tokenizer is slow-only and has no offsets (``return_offsets_mapping`` raises), so HF's
pipeline with ErnieM gives ``start``/``end`` None and refuses first/average/max ("Slow tokenizers cannot handle
subwords"). Here every entry has character offsets into the caller's text, from ``ErnieMTokenizer``'s
PaddleNLP-style ``get_offset_mapping``; they are exactly what HF's pipeline computes when it is given the same
offsets through its ``offset_mapping=`` argument (tests/test_pipelines_tag_qa.py runs both). Words come from
HF's fallback heuristic for tokenizers that do not know words (XLM-R's fast tokenizer takes the same path): a
token continues the previous word when the two characters around its start hold no space.

Long texts: ``stride=None`` truncates to the model's length (as HF does); ``stride=k`` tags every window of the
tokenizer's overflowing tokens (neighbours share ``k`` tokens) and merges entities found twice in the overlap
(HF's ``aggregate_overlapping_entities``; aggregation "none" is refused with a stride, as HF refuses it).

The tokenizer's attention mask is always passed to the model (``base.pad_batch``), in both flavors, so a
text's tags do not depend on the texts it is batched with. One consequence: HF's pipeline calls ErnieM with
input ids only, so a "[PAD]" typed inside a text (it becomes the pad id) is hidden from attention by HF's
implicit mask; here it is attended like any other token.

A checkpoint whose config declares another head (e.g. a sequence classifier, whose ``classifier`` weights
have the same names) is refused with a one-line error rather than loaded.

Dimension legend: ``L`` tokens of one row, ``N`` labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..model import ErnieMForTokenClassification
from ..tokenizer import ErnieMTokenizer
from .base import check_declared_head, check_texts, iter_chunks, load_model_and_tokenizer, map_bucketed, max_tokens, pad_batch

AGGREGATIONS = ("none", "simple", "first", "average", "max")
WORD_AGGREGATIONS = ("first", "average", "max")


class Tagger:
    """Tag the tokens of texts with an ``ErnieMForTokenClassification`` checkpoint.

    ``Tagger(path)(text) -> list[dict]``; ``Tagger(path)([text, ...]) -> list[list[dict]]`` (HF's shapes).

    Args:
        model: a checkpoint directory / file / cached hub id, or a loaded ``ErnieMForTokenClassification``.
        aggregation_strategy: "none", "simple" (default here; HF's default is "none"), "first", "average", "max".
        ignore_labels: labels left out of the result (HF's default: ("O",)). Applied after grouping.
        stride: None truncates long texts; an int tags overlapping windows (see the module docstring).
        max_length: tokens per row, [CLS] and [SEP] included (default and cap: what the position table and the
            tokenizer allow).
        batch_size: rows per forward pass (rows are bucketed by length).
        tokenizer, flavor, dtype, backend, checkpoint_options: as ``base.load_model_and_tokenizer``.
    """

    def __init__(
        self,
        model: str | os.PathLike | ErnieMForTokenClassification,
        aggregation_strategy: str = "simple",
        ignore_labels: Sequence[str] | None = ("O",),
        stride: int | None = None,
        max_length: int | None = None,
        batch_size: int = 8,
        *,
        tokenizer: str | os.PathLike | ErnieMTokenizer | None = None,
        flavor: str | None = None,
        dtype=np.float32,
        backend: str | None = None,
        **checkpoint_options: Any,
    ) -> None:
        aggregation_strategy = str(aggregation_strategy).lower()
        if aggregation_strategy not in AGGREGATIONS:
            raise ValueError(f"aggregation_strategy must be one of {', '.join(AGGREGATIONS)}, "
                             f"got {aggregation_strategy!r}")  # fmt: skip
        if isinstance(ignore_labels, str):
            ignore_labels = (ignore_labels,)
        check_declared_head(model, ErnieMForTokenClassification, "tag")
        self.model, self.tokenizer = load_model_and_tokenizer(
            model, ErnieMForTokenClassification, task="tag", tokenizer=tokenizer, flavor=flavor, dtype=dtype,
            backend=backend, **checkpoint_options,
        )  # fmt: skip
        self.max_length = max_tokens(self.model, self.tokenizer, max_length)
        if stride is not None:
            if aggregation_strategy == "none":  # HF's _sanitize_parameters refuses it too
                raise ValueError('a stride tags overlapping windows and merges their entities, which needs an '
                                 'aggregation; aggregation_strategy="none" cannot be used with stride')  # fmt: skip
            if not 0 <= int(stride) < self.max_length - 2:
                raise ValueError(f"stride must be in [0, {self.max_length - 2}) (tokens shared by neighbouring "
                                 f"windows of {self.max_length - 2} text tokens), got {stride}")  # fmt: skip
        self.aggregation_strategy = aggregation_strategy
        self.ignore_labels = tuple(ignore_labels) if ignore_labels is not None else ("O",)  # HF: None -> ["O"]
        self.stride = None if stride is None else int(stride)
        self.batch_size = int(batch_size)
        n = self.model.config.num_labels
        self.id2label = self.model.config.id2label or {i: f"LABEL_{i}" for i in range(n)}  # HF's default names

    # ------------------------------------------------------------------------------------------ calling
    def __call__(self, texts: str | Sequence[str]) -> list[dict] | list[list[dict]]:
        """Tags of one text (a list of dicts) or of a list of texts (a list of lists), in input order."""
        if isinstance(texts, str):
            return self.tag([texts])[0]
        return self.tag(list(texts))

    def tag(self, texts: Sequence[str]) -> list[list[dict]]:
        """The entities of each text (one list per text)."""
        texts = list(check_texts(texts))
        if not texts:
            return []
        windows = self.stride is not None
        enc = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, return_offsets_mapping=True,
            return_special_tokens_mask=True, return_overflowing_tokens=windows, stride=self.stride or 0,
        )  # fmt: skip
        rows = enc["input_ids"]
        owner = enc["overflow_to_sample_mapping"] if windows else list(range(len(texts)))
        logits = map_bucketed(rows, self.batch_size, self._run)
        per_text: list[list[dict]] = [[] for _ in texts]
        chunks = [0] * len(texts)
        for r, b in enumerate(owner):
            pre = gather_pre_entities(texts[b], rows[r], softmax(logits[r]), enc["offset_mapping"][r],
                                      enc["special_tokens_mask"][r], self.tokenizer)  # fmt: skip
            grouped = aggregate(pre, self.aggregation_strategy, self.id2label, self.tokenizer)
            per_text[b].extend(e for e in grouped if _label(e) not in self.ignore_labels)
            chunks[b] += 1
        return [aggregate_overlapping_entities(e) if n > 1 else e for e, n in zip(per_text, chunks, strict=True)]

    def iter_tag(self, texts: Iterable[str], chunk_size: int = 256) -> Iterator[list[dict]]:
        """Tag a stream of texts chunk by chunk (memory stays flat); yields one list per text, in order."""
        for chunk in iter_chunks(texts, chunk_size):
            yield from self.tag(chunk)

    def _run(self, rows: list[Sequence[int]]) -> list[np.ndarray]:
        ids, mask = pad_batch(rows, self.tokenizer.pad_token_id)
        logits = self.model(input_ids=ids, attention_mask=mask).logits  # [B, L, N]
        return [logits[i, : len(r)] for i, r in enumerate(rows)]  # unpadded [L, N] per row



def _label(entity: dict) -> str:
    return entity["entity_group"] if "entity_group" in entity else entity["entity"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """HF's postprocess: ``exp(logits - max) / sum`` over the labels, in the logits' dtype.  [L, N] -> [L, N]"""
    shifted_exp = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return shifted_exp / shifted_exp.sum(axis=-1, keepdims=True)


# ============================================================================ HF's decoding, step by step
def gather_pre_entities(
    sentence: str,
    input_ids: Sequence[int],
    scores: np.ndarray,
    offset_mapping: Sequence[tuple[int, int]],
    special_tokens_mask: Sequence[int],
    tokenizer: ErnieMTokenizer,
) -> list[dict]:
    """One record per non-special token: word (the token string), scores [N], start, end, index, is_subword."""
    pre_entities = []
    for idx, token_scores in enumerate(scores):
        if special_tokens_mask[idx]:  # [CLS], [SEP]
            continue
        word = tokenizer.convert_ids_to_tokens(int(input_ids[idx]))
        start_ind, end_ind = (int(x) for x in offset_mapping[idx])
        word_ref = sentence[start_ind:end_ind]
        # QUIRK: HF's fallback heuristic for tokenizers without word boundaries (ErnieM's, XLM-R's): a token is
        # a subword when no space is among the character before it and its first character. It ignores tabs
        # and newlines, and a lone "▁" token (empty span) counts as a subword when no space precedes it.
        is_subword = start_ind > 0 and " " not in sentence[start_ind - 1 : start_ind + 1]
        if int(input_ids[idx]) == tokenizer.unk_token_id:
            word = word_ref  # [UNK] shows the text it stands for
            is_subword = False
        pre_entities.append({"word": word, "scores": token_scores, "start": start_ind, "end": end_ind,
                             "index": idx, "is_subword": is_subword})  # fmt: skip
    return pre_entities


def aggregate(pre_entities: list[dict], strategy: str, id2label: dict[int, str], tokenizer: ErnieMTokenizer
              ) -> list[dict]:  # fmt: skip
    """Token records -> entities: per token for "none", grouped for the others (HF's ``aggregate``)."""
    if strategy in ("none", "simple"):
        entities = []
        for pre in pre_entities:
            entity_idx = int(pre["scores"].argmax())
            entities.append({"entity": id2label[entity_idx], "score": pre["scores"][entity_idx],
                             "index": pre["index"], "word": pre["word"], "start": pre["start"],
                             "end": pre["end"]})  # fmt: skip
    else:
        entities = aggregate_words(pre_entities, strategy, id2label, tokenizer)
    if strategy == "none":
        return [_plain(e) for e in entities]
    return group_entities(entities, tokenizer)


def aggregate_words(entities: list[dict], strategy: str, id2label: dict[int, str], tokenizer: ErnieMTokenizer
                    ) -> list[dict]:  # fmt: skip
    """Force one label per word: a word is a token and the subword tokens that follow it."""
    word_entities, word_group = [], None
    for entity in entities:
        if word_group is None:
            word_group = [entity]
        elif entity["is_subword"]:
            word_group.append(entity)
        else:
            word_entities.append(aggregate_word(word_group, strategy, id2label, tokenizer))
            word_group = [entity]
    if word_group is not None:
        word_entities.append(aggregate_word(word_group, strategy, id2label, tokenizer))
    return word_entities


def aggregate_word(entities: list[dict], strategy: str, id2label: dict[int, str], tokenizer: ErnieMTokenizer
                   ) -> dict:  # fmt: skip
    """One word's label and score by "first", "max" or "average"; its word is the tokens joined."""
    word = tokenizer.convert_tokens_to_string([e["word"] for e in entities])
    if strategy == "first":
        scores = entities[0]["scores"]
        idx = int(scores.argmax())
        score = scores[idx]
    elif strategy == "max":
        scores = max(entities, key=lambda e: e["scores"].max())["scores"]  # the first of equal maxima
        idx = int(scores.argmax())
        score = scores[idx]
    elif strategy == "average":
        average_scores = np.nanmean(np.stack([e["scores"] for e in entities]), axis=0)  # [n, N] -> [N]
        idx = int(average_scores.argmax())
        score = average_scores[idx]
    else:
        raise ValueError(f"not a word aggregation: {strategy!r}")
    return {"entity": id2label[idx], "score": score, "word": word, "start": entities[0]["start"],
            "end": entities[-1]["end"]}  # fmt: skip


def get_tag(entity_name: str) -> tuple[str, str]:
    """("B" or "I", tag): "B-PER" -> ("B", "PER"); a label without a B-/I- prefix continues: "X" -> ("I", "X")."""
    if entity_name.startswith("B-"):
        return "B", entity_name[2:]
    if entity_name.startswith("I-"):
        return "I", entity_name[2:]
    return "I", entity_name


def group_entities(entities: list[dict], tokenizer: ErnieMTokenizer) -> list[dict]:
    """Group adjacent entities of the same tag; a B- label always starts a new group."""
    groups, current = [], []
    for entity in entities:
        if not current:
            current.append(entity)
            continue
        bi, tag = get_tag(entity["entity"])
        _, last_tag = get_tag(current[-1]["entity"])
        if tag == last_tag and bi != "B":
            current.append(entity)
        else:
            groups.append(group_sub_entities(current, tokenizer))
            current = [entity]
    if current:
        groups.append(group_sub_entities(current, tokenizer))
    return groups


def group_sub_entities(entities: list[dict], tokenizer: ErnieMTokenizer) -> dict:
    """One group: the first entity's tag, the mean score, the tokens joined, from the first start to the last end."""
    # QUIRK: HF names the group after the first entity's label with everything up to the first "-" removed,
    # so "B-PER" and "I-PER" both give "PER" (and "X" stays "X").
    entity = entities[0]["entity"].split("-", 1)[-1]
    scores = np.nanmean([e["score"] for e in entities])  # float32 scores: a float32 mean, as in HF
    return {"entity_group": entity, "score": float(np.mean(scores)),
            "word": tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
            "start": entities[0]["start"], "end": entities[-1]["end"]}  # fmt: skip


def aggregate_overlapping_entities(entities: list[dict]) -> list[dict]:
    """Entities of overlapping windows: of those that start inside another, keep the longer (then the surer)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    # QUIRK: the loop starts with the first entity compared to itself; if its span is empty (a lone "▁"
    # token) it fails the overlap test and is kept twice, as in HF.
    merged, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            current_length = entity["end"] - entity["start"]
            previous_length = previous["end"] - previous["start"]
            if current_length > previous_length or (current_length == previous_length
                                                    and entity["score"] > previous["score"]):  # fmt: skip
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged


def _plain(entity: dict) -> dict:
    """HF returns NumPy float32 scores; here plain floats (JSON-ready, the same value)."""
    return {**entity, "score": float(entity["score"])}
