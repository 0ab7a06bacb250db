"""UIE-M information extraction, as PaddleNLP 2.8.1's Taskflow ``information_extraction`` does it.

A schema names what to extract. Every name becomes a *prompt*; the model reads ``[CLS] prompt [SEP] [SEP]
text [SEP]`` and gives each token a probability of starting and of ending an answer span. A schema tree runs
stage by stage: the root names first, then each child name once per answer its parent found, with the
parent's text in the prompt ("张三的出生地", "birthplace of Steve"). The result has Taskflow's JSON shape::

    [{"人物": [{"text": "张三", "start": 0, "end": 2, "probability": 0.93,
                "relations": {"出生地": [{"text": "上海", "start": 9, "end": 11, "probability": 0.81}]}}]}]

A span found inside the prompt (a classification schema such as ``情感倾向[正向,负向]``) has no start/end:
``{"text": "正向", "probability": 0.88}``.

The pipeline, in the order ``Extractor.__call__`` runs it (names are Taskflow's, so the two read side by side:
``paddlenlp/taskflow/information_extraction.py`` and ``taskflow/utils.py``, ``utils/tools.py``):

1. ``build_schema_tree``: str / list / dict -> a tree of names (``_build_tree``).
2. per stage, ``build_prompt``: the prompt of a name, Chinese or English (``_multi_stage_predict``), then
   ``dbc2sbc`` (full-width -> half-width).
3. ``auto_splitter``: texts longer than ``max_seq_len - len(max(prompts)) - 3`` characters are cut into
   chunks of that many characters (optionally sentences first: ``cut_chinese_sent``).
4. encode each (prompt, chunk) pair with the Paddle-flavour tokenizer, truncate, pad to ``max_seq_len``.
5. the model: only ``input_ids`` and ``position_ids`` go in, so Paddle's implicit mask applies (see below).
6. decode: ``get_bool_ids_greater_than`` -> ``get_span`` -> ``get_id_and_prob`` -> ``convert_ids_to_results``.
7. ``auto_joiner``: chunk offsets shifted back; classification results voted across chunks.

**UIE-M runs with the paddle flavor.** Taskflow feeds the exported UIEM model only input_ids and position_ids
(no attention mask), so PaddleNLP's ErnieM builds its implicit mask: keys with id 0 (``[CLS]``) masked with
-1e4, padding attended, padding at position id 0. The released UIE-M weights were fine-tuned that way, and
the results depend on the padding length; this module pads exactly as Taskflow does, to ``max_seq_len`` (or
to a ``dynamic_max_length`` bucket). ``flavor="hf"`` runs HF transformers' implicit mask instead (padding
masked, ``[CLS]`` attended): padding-invariant, but it does not reproduce Taskflow; it is there for a model
fine-tuned with HF's ErnieMForInformationExtraction.

Taskflow's quirks are reproduced and marked ``QUIRK:`` where they happen. One is worth knowing first: the
spans of one (prompt, chunk) come out of a Python ``set`` keyed on their probabilities, so their order, and
with it which label a classification keeps when several clear the threshold, follows the hash of the exact
floating-point probabilities. We iterate the same set, so the order equals Taskflow's whenever the
probabilities are bit-identical. They rarely are: at ErnieM-base size ours differ from Taskflow's by up to
3e-5, as Taskflow's own MKLDNN path differs from Paddle's plain one (scripts/reference/check_uie_full_size.py).
So the order of results inside a list can differ from Taskflow's, and so can a whole stage: when the row
that decides ``is_cls_task`` (see ``auto_joiner``) holds both a prompt span and a text span, the set order
picks which comes first, and with it whether every text of the stage is voted as a classification. Taskflow
run on our probabilities gives our results exactly; the spans found and their probabilities agree.

Performance note: like Taskflow, every (prompt, chunk) row is padded to ``max_seq_len`` (default 512) even
when it holds a handful of tokens, because under the paddle mask the padding changes the numbers. That is
where most of the time goes on short texts; ``dynamic_max_length`` is Taskflow's own remedy.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUMMARY_TOKEN_NUM = 3  # [CLS] prompt [SEP] [SEP] text [SEP] counted as 3 by Taskflow for UIE / UIE-M
SCHEMA_LANGS = ("ch", "en")

Schema = str | dict | list


# ============================================================================================ schema and prompts
@dataclass
class SchemaNode:
    """One name of the schema and the names asked about each of its answers (Taskflow's ``SchemaTree``)."""

    name: str
    children: list[SchemaNode] = field(default_factory=list)


def build_schema_tree(schema: Schema, name: str = "root") -> SchemaNode:
    """``_build_tree``: a str, a dict ``{name: child or [children]}`` or a list of those -> the tree.

    Children may be a str, or a list whose items are str or dicts (nested relations). Anything else is a
    ``TypeError`` naming the bad part, as in Taskflow; an empty schema or an empty name is a ``ValueError``.
    """
    if isinstance(schema, (str, dict)):
        schema = [schema]  # set_schema
    if not isinstance(schema, list):
        raise TypeError(f"invalid schema: expected a name, a list or a dict, got {type(schema).__name__}")
    if name == "root" and not schema:
        raise ValueError("the schema is empty: give at least one name")
    tree = SchemaNode(name)
    for s in schema:
        if isinstance(s, str):
            _check_name(s)
            tree.children.append(SchemaNode(s))
        elif isinstance(s, dict):
            for k, v in s.items():
                _check_name(k)
                if isinstance(v, str):
                    child = [v]
                elif isinstance(v, list):
                    child = v
                else:
                    raise TypeError(f"invalid schema: the value of {k!r} must be a name or a list, "
                                    f"got {type(v).__name__}")  # fmt: skip
                tree.children.append(build_schema_tree(child, name=k))
        else:
            raise TypeError(f"invalid schema: each item must be a name or a dict, got {type(s).__name__} ({s!r})")
    return tree


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"invalid schema: names must be strings, got {type(name).__name__} ({name!r})")
    if not name.strip():
        # Taskflow accepts it and asks the model about an empty prompt; we refuse what is surely a mistake.
        raise ValueError("invalid schema: a name is empty")


def dbc2sbc(s: str) -> str:
    """Full-width to half-width: U+3000 -> space, U+FF01..U+FF5E -> ASCII ``!``..``~``; the rest as it is."""
    rs = []
    for char in s:
        code = ord(char)
        code = 0x0020 if code == 0x3000 else code - 0xFEE0
        # QUIRK: the range test is on the shifted code, so U+3000 -> 0x20 fails it and stays U+3000: the
        # ideographic space is NOT converted, whatever the first branch meant (Taskflow's dbc2sbc).
        rs.append(chr(code) if 0x0021 <= code <= 0x7E else char)
    return "".join(rs)


_CLS_OPTIONS = re.compile(r"\[.*?\]$")


def build_prompt(name: str, parent_text: str | None, schema_lang: str) -> str:
    """The prompt asking about ``name`` (of one answer ``parent_text``, for a child name), before dbc2sbc.

    Chinese: ``parent_text + "的" + name``; English: ``name + " of " + parent_text``, and for a
    classification name ``"sentiment [positive, negative]"``: ``"sentiment of <parent> [positive, negative]"``.
    """
    if parent_text is None:
        return name
    if schema_lang != "en":
        return parent_text + "的" + name
    p = " of " + parent_text  # Taskflow keeps the prefix as " of <text>" and glues it on
    if _CLS_OPTIONS.search(name):
        # QUIRK: find("[", 1) skips a "[" at position 0; name[:-1] then if there is no other "[".
        prompt_prefix = name[: name.find("[", 1)].strip()
        cls_options = _CLS_OPTIONS.search(name).group()
        return prompt_prefix + p + " " + cls_options
    return name + p


# ============================================================================================ long texts
def cut_chinese_sent(para: str) -> list[str]:
    """Taskflow's sentence splitter (``split_sentence=True``): after 。！？? …… ...... and closing quotes.

    QUIRK: it splits on every "\\n" of the text too and drops trailing whitespace, and those characters are
    lost: offsets after them come back shifted (Taskflow re-bases by the lengths of the pieces).
    """
    para = re.sub(r"([。！？\?])([^”’])", r"\1\n\2", para)
    para = re.sub(r"(\.{6})([^”’])", r"\1\n\2", para)
    para = re.sub(r"(\…{2})([^”’])", r"\1\n\2", para)
    para = re.sub(r"([。！？\?][”’])([^，。！？\?])", r"\1\n\2", para)
    para = para.rstrip()
    return para.split("\n")


def auto_splitter(texts: Sequence[str], max_text_len: int, split_sentence: bool = False
                  ) -> tuple[list[str], dict[int, list[int]]]:  # fmt: skip
    """Cut each text into chunks of at most ``max_text_len`` characters (``Task._auto_splitter``).

    Returns the chunks and, per text index, the indices of its chunks.
    """
    if max_text_len <= 0:  # Taskflow: range() with step 0 raises, a negative step drops the text
        raise ValueError(f"no room left for the text: chunks of {max_text_len} characters")
    mapping: dict[int, list[int]] = {}
    chunks: list[str] = []
    for idx, text in enumerate(texts):
        sens = cut_chinese_sent(text) if split_sentence else [text]
        for sen in sens:
            # QUIRK: lengths are characters, not tokens; a chunk may still be truncated by the tokenizer.
            if len(sen) <= max_text_len:
                mapping.setdefault(idx, []).append(len(chunks))
                chunks.append(sen)
            else:
                first = len(chunks)
                chunks.extend(sen[i : i + max_text_len] for i in range(0, len(sen), max_text_len))
                mapping.setdefault(idx, []).extend(range(first, len(chunks)))
    return chunks, mapping


def auto_joiner(short_results: list[list[dict]], short_texts: list[str], mapping: dict[int, list[int]]
                ) -> list[list[dict]]:  # fmt: skip
    """Put the chunks' results back together per text (``UIETask._auto_joiner``).

    Spans: start/end shifted by the lengths of the chunks before. Classification: one result per text, the
    label found first in most chunks, with its probability averaged over those chunks.
    """
    # QUIRK: whether this stage is a classification is decided once for all texts of the call, by the first
    # item of the first non-empty chunk result: no start/end there -> every text is voted.
    is_cls_task = False
    for short_result in short_results:
        if short_result:
            is_cls_task = "start" not in short_result[0] and "end" not in short_result[0]
            break
    concat_results = []
    for vs in mapping.values():
        if is_cls_task:
            cls_options: dict[str, list] = {}
            for v in vs:
                if not short_results[v]:
                    continue
                # QUIRK: only the first result of each chunk votes (the order of a set, see the module doc).
                first = short_results[v][0]
                if first["text"] not in cls_options:
                    cls_options[first["text"]] = [1, first["probability"]]
                else:
                    cls_options[first["text"]][0] += 1
                    cls_options[first["text"]][1] += first["probability"]
            if cls_options:
                # QUIRK: max over [count, summed probability]: ties in count go to the larger sum, then to
                # the label seen first.
                cls_res, (count, total) = max(cls_options.items(), key=lambda x: x[1])
                concat_results.append([{"text": cls_res, "probability": total / count}])
            else:
                concat_results.append([])
        else:
            offset = 0
            single_results = []
            for v in vs:
                for item in short_results[v]:
                    if "start" in item and "end" in item:  # prompt spans keep no offsets
                        item["start"] += offset
                        item["end"] += offset
                offset += len(short_texts[v])
                single_results.extend(short_results[v])
            concat_results.append(single_results)
    return concat_results


# ============================================================================================ decoding
def get_bool_ids_greater_than(probs: Sequence[float], limit: float = 0.5) -> list[tuple[int, float]]:
    """``(index, probability)`` of every position whose probability is strictly above ``limit``.

    The probabilities are float32 model outputs; Taskflow sees them as Python floats (``tolist``), and so do
    we: the same values, hence the same hashes in ``get_span``'s set.
    """
    row = np.asarray(probs, dtype=np.float64)
    return [(int(i), float(row[i])) for i in np.flatnonzero(row > limit)]


def get_span(start_ids: list[tuple[int, float]], end_ids: list[tuple[int, float]]) -> set:
    """Pair starts with ends (``paddlenlp.utils.tools.get_span``): a set of ``((s, p_s), (e, p_e))``.

    Two pointers over both lists sorted by position: equal -> a pair, both advance; start before end -> a
    pair, the start advances; start after end -> the end advances.
    """
    start_ids = sorted(start_ids, key=lambda x: x[0])
    end_ids = sorted(end_ids, key=lambda x: x[0])
    sp = ep = 0
    couple: dict = {}
    while sp < len(start_ids) and ep < len(end_ids):
        s, e = start_ids[sp][0], end_ids[ep][0]
        if s == e:
            couple[end_ids[ep]] = start_ids[sp]
            sp += 1
            ep += 1
        elif s < e:
            # QUIRK: keyed on the end, so later starts before the same end overwrite earlier ones: an end
            # pairs with the NEAREST preceding start, and the earlier starts are dropped.
            couple[end_ids[ep]] = start_ids[sp]
            sp += 1
        else:
            ep += 1
    # QUIRK: a set, so the spans come out in hash order of (index, probability) pairs, not by position.
    return set((couple[end], end) for end in couple)


def get_id_and_prob(span_set: Iterable, offset_mapping: list[list[int]]) -> tuple[list[tuple[int, int]], list]:
    """Character spans and probabilities (``taskflow.utils.get_id_and_prob``); changes ``offset_mapping``.

    Prompt offsets are moved below zero (``-= end of prompt + 1``), so a span inside the prompt has negative
    ends and one in the text has its own offsets. The probability of a span is ``p_start * p_end``.
    """
    # QUIRK: the first (0, 0) after [CLS] is taken to be the [SEP] after the prompt (a prompt token with an
    # empty offset would end the prompt early).
    prompt_end_token_id = offset_mapping[1:].index([0, 0])
    bias = offset_mapping[prompt_end_token_id][1] + 1
    for idx in range(1, prompt_end_token_id + 1):
        offset_mapping[idx][0] -= bias
        offset_mapping[idx][1] -= bias
    sentence_id, prob = [], []
    for start, end in span_set:
        prob.append(start[1] * end[1])
        # QUIRK: [CLS], [SEP] and padding have offset (0, 0): a span starting or ending there starts or ends at
        # character 0 (e.g. a span over padding alone is the empty text at 0).
        sentence_id.append((offset_mapping[start[0]][0], offset_mapping[end[0]][1]))
    return sentence_id, prob


def convert_ids_to_results(examples: list[dict], sentence_ids: list, probs: list) -> list[list[dict]]:
    """Spans -> result dicts (``_convert_ids_to_results``)."""
    results = []
    for example, sentence_id, prob in zip(examples, sentence_ids, probs, strict=True):
        result_list = []
        text, prompt = example["text"], example["prompt"]
        for (start, end), p in zip(sentence_id, prob, strict=True):
            if start < 0 and end >= 0:  # from the prompt into the text: dropped
                continue
            if end < 0:  # inside the prompt: a classification-style answer, no offsets
                start += len(prompt) + 1
                end += len(prompt) + 1
                result_list.append({"text": prompt[start:end], "probability": p})
            else:
                result_list.append({"text": text[start:end], "start": start, "end": end, "probability": p})
        results.append(result_list)
    return results


# ============================================================================================ the pipeline
class Extractor:
    """UIE-M extraction with a schema, giving what ``Taskflow("information_extraction", model="uie-m-base")``
    gives for the same checkpoint, schema and options.

    Args:
        model: a checkpoint directory (PaddleNLP layout as Taskflow's ``task_path`` wants it:
            ``model_state.pdparams`` + ``config.json`` + ``vocab.txt`` + ``sentencepiece.bpe.model``; or the
            native layout, ``config.json`` + ``model.safetensors``, with the tokenizer files beside it), or a
            loaded ``ErnieMForInformationExtraction`` (then pass ``tokenizer``).
        schema: a name, a list of names and dicts, or a dict ``{name: [child names or dicts]}``; may be set
            later with ``set_schema``.
        schema_lang: ``"ch"`` (prompts "X的Y") or ``"en"`` ("Y of X").
        max_seq_len: every (prompt, chunk) row is padded to this many tokens (Taskflow: 512); at most the
            model's ``max_position_embeddings - 2``.
        position_prob: a start or end needs a probability strictly above this.
        batch_size: rows per forward pass (does not change the results).
        split_sentence: cut texts into sentences before the length cut (Taskflow's ``cut_chinese_sent``).
        dynamic_max_length: a list of lengths; each row is padded to the smallest one that holds it (else to
            ``max_seq_len``), Taskflow's option of the same name.
        flavor: "paddle" (default; the UIE-M behaviour, see the module doc) or "hf".
        tokenizer: an ``ErnieMTokenizer`` (default: loaded from ``model``'s directory, paddle flavour).
        backend, dtype: passed to ``from_pretrained``.
    """

    def __init__(self, model, schema: Schema | None = None, *, schema_lang: str = "ch", max_seq_len: int = 512,
                 position_prob: float = 0.5, batch_size: int = 16, split_sentence: bool = False,
                 dynamic_max_length: Sequence[int] | None = None, flavor: str = "paddle", tokenizer=None,
                 backend: str | None = None, dtype=np.float32):  # fmt: skip
        from ..model import ErnieMForInformationExtraction, ErnieMPreTrainedModel
        from .base import load_model_and_tokenizer

        if flavor not in ("paddle", "hf"):
            raise ValueError(f"flavor must be 'paddle' (UIE-M, as Taskflow) or 'hf', got {flavor!r}")
        if schema_lang not in SCHEMA_LANGS:
            raise ValueError(f"schema_lang must be 'ch' or 'en', got {schema_lang!r}")
        if isinstance(model, ErnieMPreTrainedModel) and model.config.flavor != flavor:
            model = copy.copy(model)  # the caller's model keeps its flavor; the weights are shared
            model.config = model.config.replace(flavor=flavor)
        if isinstance(model, ErnieMPreTrainedModel) and tokenizer is None:
            raise TypeError("a loaded model needs tokenizer= (an ErnieMTokenizer)")
        model, tokenizer = load_model_and_tokenizer(model, ErnieMForInformationExtraction, task="extract",
                                                    tokenizer=tokenizer, flavor=flavor, dtype=dtype,
                                                    backend=backend)  # fmt: skip
        if tokenizer.flavor != flavor:
            raise ValueError(f"the tokenizer's flavor is {tokenizer.flavor!r}, the extractor's {flavor!r}")
        self.model, self.tokenizer, self.flavor = model, tokenizer, flavor
        limit = model.config.max_position_embeddings - 2  # QUIRK: position ids are offset by 2 (both references)
        lengths = [max_seq_len, *(dynamic_max_length or [])]
        for n in lengths:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= SUMMARY_TOKEN_NUM + 1:
                raise ValueError(f"max_seq_len / dynamic_max_length must be integers above "
                                 f"{SUMMARY_TOKEN_NUM + 1}, got {n!r}")  # fmt: skip
            if n > limit:
                what = "max_seq_len" if n == max_seq_len else "dynamic_max_length"
                raise ValueError(f"{what} {n} is beyond this model's positions (max_position_embeddings "
                                 f"{model.config.max_position_embeddings} allows {limit} tokens): lower "
                                 f"{what}")  # fmt: skip
        if not 0.0 <= float(position_prob) <= 1.0:
            raise ValueError(f"position_prob must be in [0, 1], got {position_prob!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.schema_lang = schema_lang
        self.max_seq_len = int(max_seq_len)
        self.position_prob = float(position_prob)
        self.batch_size = batch_size
        self.split_sentence = bool(split_sentence)
        self.dynamic_max_length = sorted(int(n) for n in dynamic_max_length) if dynamic_max_length else None
        self.schema_tree = build_schema_tree(schema) if schema is not None else None
        self._progress: Callable[[str, int, int], None] | None = None
        self._stage = ""  # the schema name of the running stage, for progress reports

    def set_schema(self, schema: Schema) -> None:
        self.schema_tree = build_schema_tree(schema)

    # ------------------------------------------------------------------------------------ stages
    def __call__(self, texts: str | dict | Sequence[str | dict],
                 progress: Callable[[str, int, int], None] | None = None) -> list[dict]:  # fmt: skip
        """Extract from each text; one result dict per text, in Taskflow's shape.

        ``texts``: a str, ``{"text": str}``, or a list of those. All texts of one call go through each stage
        together, and as in Taskflow that can matter (QUIRK: the chunk length of a stage follows the
        lexicographically largest prompt of the whole call, and whether a stage is a classification is
        decided by the first text with a result): give the texts of one Taskflow call in one call.
        ``progress(what, done, total)`` is called after each forward pass, if given (``what`` names the stage;
        ``done`` / ``total`` count its rows).
        """
        if self.schema_tree is None:
            raise ValueError("no schema: pass schema= or call set_schema() first")
        data = _check_texts(texts)
        results: list[dict] = [{} for _ in data]
        if not data:
            return results
        self._progress = progress
        # Each queued stage: a schema node, the prompt prefixes per text (None for the root names), and per
        # text the result dicts of the parent answers the child results attach to.
        queue = [(node, None, None) for node in self.schema_tree.children]
        while queue:
            node, prefix, parent_relations = queue.pop(0)
            examples, input_map = [], {}
            if prefix is None:
                for k, text in enumerate(data):
                    examples.append({"text": text, "prompt": dbc2sbc(node.name)})
                    input_map[k] = [len(examples) - 1]
            else:
                for k, (pre, text) in enumerate(zip(prefix, data, strict=True)):
                    input_map[k] = []
                    for p in pre:
                        # QUIRK: dbc2sbc also converts full-width characters of the parent's text.
                        examples.append({"text": text, "prompt": dbc2sbc(build_prompt(node.name, p, self.schema_lang))})
                        input_map[k].append(len(examples) - 1)
            self._stage = node.name
            result_list = self._single_stage_predict(examples) if examples else []

            if parent_relations is None:  # a root name: results go to the top level
                relations: list[list[dict]] = [[] for _ in data]
                for k, v in input_map.items():
                    for idx in v:
                        if not result_list[idx]:
                            continue
                        results[k].setdefault(node.name, []).extend(result_list[idx])
                    relations[k].extend(results[k].get(node.name, []))
            else:  # a child name: results go under "relations" of the parent answer they were asked about
                for k, v in input_map.items():
                    for i, idx in enumerate(v):
                        if not result_list[idx]:
                            continue
                        rel = parent_relations[k][i].setdefault("relations", {})
                        rel.setdefault(node.name, []).extend(result_list[idx])
                relations = [
                    [item for parent in parents for item in parent.get("relations", {}).get(node.name, [])]
                    for parents in parent_relations
                ]
            # The next stage asks about each answer: "<answer>的" (ch) or " of <answer>" (en) + child name.
            new_prefix = [[item["text"] for idx in input_map[k] for item in result_list[idx]] for k in input_map]
            for child in node.children:
                queue.append((child, new_prefix, relations))
        return results

    def _single_stage_predict(self, examples: list[dict]) -> list[list[dict]]:
        """One stage: split, encode, run, decode, join (``UIETask._single_stage_predict``)."""
        prompts = [e["prompt"] for e in examples]
        # QUIRK: max() of the prompts is the lexicographically largest, not the longest, and its length is
        # in characters, not tokens (Taskflow); the tokenizer's truncation catches what does not fit.
        max_predict_len = self.max_seq_len - len(max(prompts)) - SUMMARY_TOKEN_NUM
        if max_predict_len <= 0:
            # Taskflow: range() with step 0 raises; a negative step drops the texts and shifts the chunk
            # indices of the texts after them (wrong results). We stop instead.
            raise ValueError(f"the prompt {max(prompts)!r} leaves no room for the text in max_seq_len "
                             f"{self.max_seq_len}: raise max_seq_len or shorten the schema names")  # fmt: skip
        short_texts, mapping = auto_splitter([e["text"] for e in examples], max_predict_len, self.split_sentence)
        short_prompts = [prompts[k] for k, v in mapping.items() for _ in v]
        short_inputs = [{"text": t, "prompt": p} for t, p in zip(short_texts, short_prompts, strict=True)]
        input_ids, position_ids, offsets = self._encode(short_prompts, short_texts)
        sentence_ids, probs = [], []
        for rows, start_prob, end_prob in self._run_model(input_ids, position_ids):
            for r, sp, ep in zip(rows, start_prob, end_prob, strict=True):
                span_set = self._row_spans(sp, ep)
                sentence_id, prob = get_id_and_prob(span_set, [list(o) for o in offsets[r]])
                sentence_ids.append(sentence_id)
                probs.append(prob)
        results = convert_ids_to_results(short_inputs, sentence_ids, probs)
        return auto_joiner(results, short_texts, mapping)

    def _row_spans(self, start_prob: np.ndarray, end_prob: np.ndarray) -> Iterable:
        """The spans of one row ([L] probabilities each): threshold, then pair starts with ends."""
        start_ids = get_bool_ids_greater_than(start_prob, self.position_prob)
        end_ids = get_bool_ids_greater_than(end_prob, self.position_prob)
        return get_span(start_ids, end_ids)

    def _encode(self, prompts: list[str], texts: list[str]) -> tuple[list, list, list]:
        """``[CLS] prompt [SEP] [SEP] text [SEP]`` per row, truncated (longest first) to ``max_seq_len``, then
        padded with [PAD] (id 1), position id 0 and offset (0, 0) to ``max_seq_len`` or the length bucket."""
        enc = self.tokenizer(prompts, texts, truncation=True, max_length=self.max_seq_len,
                             return_position_ids=True, return_offsets_mapping=True,
                             return_attention_mask=False)  # fmt: skip
        ids, pos, offs = [], [], []
        for i, o, p in zip(enc["input_ids"], enc["offset_mapping"], enc["position_ids"], strict=True):
            target = self.max_seq_len
            if self.dynamic_max_length is not None:  # get_dynamic_max_length: the first bucket that fits
                target = next((n for n in self.dynamic_max_length if len(i) <= n), self.max_seq_len)
            n_pad = target - len(i)
            # QUIRK: Taskflow pads every row to max_seq_len (pad_to_max_seq_len=True); with the paddle mask
            # the pads are attended, so their number changes the results. Pads sit at position id 0.
            ids.append(list(i) + [self.tokenizer.pad_token_id] * n_pad)
            pos.append(list(p) + [0] * n_pad)
            offs.append(list(o) + [(0, 0)] * n_pad)
        return ids, pos, offs

    def _run_model(self, input_ids: list, position_ids: list):
        """Yield ``(row indices, start_prob, end_prob)`` per forward pass of at most ``batch_size`` rows,
        the rows in order.

        QUIRK: only input_ids and position_ids go in (Taskflow's UIEM export takes nothing else), so the
        model's implicit mask decides what is attended: with flavor "paddle", everything but [CLS].
        """
        n = len(input_ids)
        for b0 in range(0, n, self.batch_size):
            rows = list(range(b0, min(n, b0 + self.batch_size)))
            # dynamic_max_length: rows of a batch may differ in length; run each stretch of equal lengths
            # (in order: the caller decodes the rows as they come)
            groups = [[rows[0]]]
            for r in rows[1:]:
                if len(input_ids[r]) == len(input_ids[groups[-1][-1]]):
                    groups[-1].append(r)
                else:
                    groups.append([r])
            for group in groups:
                ids = np.array([input_ids[r] for r in group], dtype=np.int64)  # [B, L]
                pos = np.array([position_ids[r] for r in group], dtype=np.int64)  # [B, L]
                out = self.model(input_ids=ids, position_ids=pos)
                yield group, out.start_prob.astype(np.float32), out.end_prob.astype(np.float32)
            if self._progress is not None:
                self._progress(f"extract: {self._stage}", rows[-1] + 1, n)


UIEExtractor = Extractor


def _check_texts(texts) -> list[str]:
    """Taskflow's input check: a str, {"text": str}, or a list of those -> the list of texts."""
    if isinstance(texts, (str, dict)):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a str, a dict with 'text', or a list of those, got {type(texts).__name__}")
    out = []
    for t in texts:
        if isinstance(t, dict):
            if "text" not in t:
                raise ValueError("each input dict needs a 'text' key")
            t = t["text"]
        if not isinstance(t, str):
            raise TypeError(f"each text must be a str, got {type(t).__name__}")
        out.append(t)
    return out
