"""ErnieMTokenizer without a framework: SentencePiece for segmentation, ``vocab.txt`` for ids.

The pipeline, for one text (both references, [HF] transformers 4.46.3 and [PD] PaddleNLP 2.8.1):

1. ``do_lower_case``: lower-case every character except inside special-token strings (``[SEP]`` ...).
2. Split the text on the special-token strings; they become tokens as they are.
3. Each remaining chunk goes through the SentencePiece model (its own normaliser does all the normalisation:
   NFKC, whitespace, the dummy-prefix ``"▁"``) -> pieces.
4. Every piece is split further: each CJK character (U+4E00..U+9FFF) and each of ``,;:.?!~，；：。？！《》【】``
   becomes a token of its own, and digit runs are cut from what surrounds them.
5. Tokens -> ids by line number in ``vocab.txt`` (unknown -> ``[UNK]``), then ``[CLS] A [SEP]`` or
   ``[CLS] A [SEP] [SEP] B [SEP]``, truncation, padding.

``flavor`` picks the reference where they differ; every difference is marked ``# QUIRK:`` where it happens.

Speed: the piece -> (tokens, ids) post-split of step 4 is memoised on the piece string, the chunks of a whole
batch go through SentencePiece's batch API in one call (its C++ thread pool), and offsets are found with
``str.find`` from a moving cursor, in time linear in the text (``_SuffixFinder``: a token that is not in the
rest of the text is looked for once, not once per occurrence).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import compress
from typing import Any

import numpy as np

from .config import read_json_object, tokenizer_config_problems

SPIECE_UNDERLINE = "▁"
SP_MODEL_NAME = "sentencepiece.bpe.model"  # the name ERNIE-M uses, whatever the SentencePiece model type
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
FLAVORS = ("hf", "paddle")
SPECIAL_TOKEN_ATTRS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_NO_LIMIT = int(1e30)  # HF's VERY_LARGE_INTEGER: "no model_max_length"
_LARGE = int(1e20)  # HF's LARGE_INTEGER: model_max_length above this means "not set"

# Both references split these off every piece (is_punct), plus CJK U+4E00..U+9FFF (is_ch_char).
_PUNCT = frozenset(",;:.?!~，；：。？！《》【】")

# [PD] SP_CHAR_MAPPING, used only for offsets: full-width U+FF01..U+FF5E -> ASCII, except "～" (U+FF5E) kept.
# QUIRK: [HF] never defines it, so HF's get_offset_mapping raises AttributeError; we always have it.
SP_CHAR_MAPPING = {chr(c): (chr(c) if c == 0xFF5E else chr(c - 0xFEE0)) for c in range(0xFF01, 0xFF5F)}


def _is_split_char(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff" or c in _PUNCT


def _is_whitespace(ch: str) -> bool:
    """[PD]/[HF] is_whitespace: space, tab, newline, CR, or category Zs (only tested for one character)."""
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return len(ch) == 1 and unicodedata.category(ch) == "Zs"


_NORM_CACHE: dict[str, str] = {}  # character -> its normalised form for offsets ("" for whitespace)
_ASCII_WHITESPACE = frozenset(" \t\n\r")  # the only ASCII characters _is_whitespace accepts


def _normalise_char(ch: str) -> str:
    """[PD] get_offset_mapping, per character: SP_CHAR_MAPPING, else NFKC; whitespace (tested on the result,
    so an expansion to several characters never counts as whitespace) -> ""."""
    n = _NORM_CACHE.get(ch)
    if n is None:
        n = SP_CHAR_MAPPING[ch] if ch in SP_CHAR_MAPPING else unicodedata.normalize("NFKC", ch)
        if _is_whitespace(n):
            n = ""
        if len(_NORM_CACHE) < 200_000:
            _NORM_CACHE[ch] = n
    return n


def _normalise_for_offsets(text: str) -> tuple[str, list[int]]:
    """The normalised text of the offsets and ``cmap[j]`` = the index in ``text`` of its character j."""
    if text.isascii():  # NFKC leaves ASCII as it is: only drop the whitespace
        cmap = [i for i, ch in enumerate(text) if ch not in _ASCII_WHITESPACE]
        return "".join(text[i] for i in cmap), cmap
    parts, cmap = [], []
    for i, ch in enumerate(text):
        n = _normalise_char(ch)
        if n:
            parts.append(n)
            if len(n) == 1:
                cmap.append(i)
            else:
                cmap.extend([i] * len(n))
    return "".join(parts), cmap


class _SuffixFinder:
    """``hay.find(needle, cursor)`` for a caller whose cursor never moves back, in linear time overall.

    A needle found at ``s`` costs the scan from the cursor to ``s + len(needle)``, where the caller's cursor
    then moves: those scans add up to at most ``len(hay)``. A needle that is absent from ``hay[cursor:]`` would
    cost a scan of the whole rest, once per token; as the cursor only grows it stays absent, so each needle is
    scanned for once (``_absent``), and after ``_INDEX_AFTER`` different needles of one length have been missed
    one pass over the rest indexes the last occurrence of every needle of that length (``_last``), which settles
    every later search of that length without a scan. In all, when every needle asked for is one of
    ``needles``, at most ``(1 + (_INDEX_AFTER + 1) * K) * len(hay)`` characters are examined, K being the number
    of different lengths among the missed needles (a token is at most one SentencePiece piece, so K is small).
    ``scanned`` counts them. Any other needle is answered exactly too, by a scan.
    """

    _INDEX_AFTER = 2

    def __init__(self, hay: str, needles: Sequence[str]) -> None:
        self.hay = hay
        self.needles = needles  # the needles the caller will ask for: an index covers those of its length
        self.scanned = 0
        self._absent: dict[str, int] = {}  # needle -> a cursor from which it is absent
        self._misses: Counter[int] = Counter()  # needle length -> needles missed by a full scan
        # needle length -> (the needles indexed, {needle: start of its last occurrence at or after the index's
        # start}); an indexed needle missing from the dict does not occur there
        self._last: dict[int, tuple[frozenset[str], dict[str, int]]] = {}

    def find(self, needle: str, cursor: int) -> int:
        """Exactly ``self.hay.find(needle, cursor)`` for a non-empty needle."""
        since = self._absent.get(needle)
        if since is not None and cursor >= since:
            return -1
        length = len(needle)
        index = self._last.get(length)
        if index is not None and needle in index[0] and index[1].get(needle, -1) < cursor:
            return -1
        s = self.hay.find(needle, cursor)
        if s >= 0:
            self.scanned += s + length - cursor
            return s
        self.scanned += len(self.hay) - cursor
        self._absent[needle] = cursor
        self._misses[length] += 1
        if index is None and self._misses[length] >= self._INDEX_AFTER:
            self._last[length] = self._index(length, cursor)
        return -1

    def _index(self, length: int, start: int) -> tuple[frozenset[str], dict[str, int]]:
        """The needles of this length, and the start of the last occurrence in hay[start:] of those that occur."""
        hay = self.hay
        wanted = frozenset(x for x in self.needles if len(x) == length)
        starts = range(start, max(start, len(hay) - length + 1))
        windows = map(hay.__getitem__, map(slice, starts, range(start + length, len(hay) + 1)))
        self.scanned += len(hay) - start
        return wanted, {hay[i : i + length]: i for i in compress(starts, map(wanted.__contains__, windows))}


def split_piece(piece: str) -> list[str]:
    """Step 4 for one SentencePiece piece (same loop in both references, after the lone-"▁" rule).

    A "▁" stays attached to what follows it; a chunk that would be exactly "▁" is dropped, so a piece like
    "▁92000" gives "92000" and "▁我爱" gives "我", "爱".
    """
    out, lst = [], 0
    for i, c in enumerate(piece):
        if c == SPIECE_UNDERLINE:
            continue
        if _is_split_char(c):
            if i > lst and piece[lst:i] != SPIECE_UNDERLINE:
                out.append(piece[lst:i])
            out.append(c)
            lst = i + 1
        elif i > 0 and c.isdigit() != piece[i - 1].isdigit():  # a digit/non-digit boundary (Unicode isdigit)
            if i > lst and piece[lst:i] != SPIECE_UNDERLINE:
                out.append(piece[lst:i])
            lst = i
    if len(piece) > lst:
        out.append(piece[lst:])
    return out


class BatchEncoding(dict):
    """The tokenizer's output: a dict of lists or NumPy arrays, also readable as attributes (``enc.input_ids``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class ErnieMTokenizer:
    """ErnieM's tokenizer: SentencePiece segmentation, ids from ``vocab.txt``, both reference flavours.

    Args:
        sentencepiece_model_ckpt: path of the SentencePiece model (``sentencepiece.bpe.model``).
        vocab_file: path of ``vocab.txt``; line i is the token of id i. It must hold the five special tokens.
        do_lower_case: lower-case the text (special-token strings excepted) before SentencePiece.
        flavor: ``"hf"`` (transformers 4.46.3) or ``"paddle"`` (PaddleNLP 2.8.1), where they differ.
        unk_token, sep_token, pad_token, cls_token, mask_token: the special-token strings.
        model_max_length: the default ``max_length`` for truncation / ``padding="max_length"`` (None: no limit).
        sp_model_kwargs: passed to ``sentencepiece.SentencePieceProcessor`` (e.g. ``enable_sampling``,
            ``nbest_size``, ``alpha`` for subword regularisation, as HF's ``sp_model_kwargs``).
        num_threads: SentencePiece threads for batch encoding (default: all cores, at most 8).
    """

    model_input_names = ("input_ids",)  # both references: ErnieM has no token-type embedding
    padding_side = "right"
    truncation_side = "right"

    def __init__(
        self,
        sentencepiece_model_ckpt: str | os.PathLike,
        vocab_file: str | os.PathLike,
        do_lower_case: bool = False,
        flavor: str = "hf",
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        model_max_length: int | None = None,
        sp_model_kwargs: dict | None = None,
        num_threads: int | None = None,
        encoding: str = "utf8",
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
        specials = {"unk_token": unk_token, "sep_token": sep_token, "pad_token": pad_token,
                    "cls_token": cls_token, "mask_token": mask_token}  # fmt: skip
        for name, tok in specials.items():
            if not isinstance(tok, str) or not tok:
                raise TypeError(f"{name} must be a non-empty str, got {tok!r}")
        self.flavor = flavor
        if not isinstance(do_lower_case, (bool, np.bool_)):
            raise TypeError(f"do_lower_case must be True or False, got {do_lower_case!r}")
        self.do_lower_case = bool(do_lower_case)
        self.model_max_length = _NO_LIMIT if model_max_length is None else int(model_max_length)
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self.num_threads = num_threads or min(8, os.cpu_count() or 1)
        self.sentencepiece_model_ckpt = os.fspath(sentencepiece_model_ckpt)
        self.vocab_file = os.fspath(vocab_file)
        self.sp_model = _load_sentencepiece(self.sentencepiece_model_ckpt, self.sp_model_kwargs)
        self.vocab, lines = _load_vocab(self.vocab_file)
        missing = [f"{name}={tok!r}" for name, tok in specials.items() if tok not in self.vocab]
        if missing:
            raise ValueError(
                f"{self.vocab_file} lacks the special tokens {', '.join(missing)}; an ERNIE-M vocab.txt starts "
                "[CLS] [PAD] [SEP] [UNK] (ids 0-3) and ends with [MASK]"
            )  # fmt: skip
        # Unknown ids decode to [UNK] ([HF] reverse_vocab.get(id, unk)); a duplicated line keeps its last id
        # in token -> id (as both references' dicts do) and every id in id -> token.
        self.ids_to_tokens = dict(enumerate(lines))
        for name, tok in specials.items():
            setattr(self, name, tok)
        self.all_special_tokens = [cls_token, sep_token, pad_token, unk_token, mask_token]
        self.all_special_ids = [self.vocab[t] for t in self.all_special_tokens]
        self.unk_token_id = self.vocab[unk_token]
        self.sep_token_id = self.vocab[sep_token]
        self.pad_token_id = self.vocab[pad_token]
        self.cls_token_id = self.vocab[cls_token]
        self.mask_token_id = self.vocab[mask_token]
        self.pad_token_type_id = 0
        # Special-token strings split the text before SentencePiece, longest first (the references' trie
        # matches the longest token at the leftmost position).
        alternation = "|".join(re.escape(t) for t in sorted(set(self.all_special_tokens), key=len, reverse=True))
        self._special_re = re.compile(f"({alternation})")
        self._special_first_chars = frozenset(t[0] for t in self.all_special_tokens)
        self._special_set = frozenset(self.all_special_tokens)
        self._piece_cache: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}
        self._sp_table: list[tuple | None] = [None] * self.sp_model.get_piece_size()  # SentencePiece id -> entry
        self._sp_unk_id = self.sp_model.unk_id()
        underline = self.sp_model.piece_to_id(SPIECE_UNDERLINE)
        self._sp_underline_id = underline if underline != self._sp_unk_id else -1
        self._sp_starts_underline = [self.sp_model.id_to_piece(i).startswith(SPIECE_UNDERLINE)
                                     for i in range(self.sp_model.get_piece_size())]  # fmt: skip
        self._sampling = bool(self.sp_model_kwargs.get("enable_sampling"))

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, flavor: str | None = None, **kwargs) -> ErnieMTokenizer:
        """Load ``sentencepiece.bpe.model`` and ``vocab.txt`` (and, when present, ``tokenizer_config.json`` and
        ``special_tokens_map.json``) from a directory.

        ``flavor=None`` takes the checkpoint's: ``"flavor"`` in tokenizer_config.json (written by
        ``save_pretrained``), else the flavor of a model ``config.json`` beside it (a PaddleNLP config ->
        "paddle"), else the library that wrote tokenizer_config.json (transformers' ``added_tokens_decoder`` ->
        "hf"; PaddleNLP's ``special_tokens_map_file`` / ``init_class`` -> "paddle"), else "hf". Keyword
        arguments override the files' settings.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer directory not found: {path}")
        files = {name: os.path.join(path, name) for name in (SP_MODEL_NAME, VOCAB_NAME)}
        for name, p in files.items():
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p} not found (an ErnieM tokenizer needs {SP_MODEL_NAME} and {VOCAB_NAME})")
        init: dict[str, Any] = {}
        saved_by = None
        for name in (TOKENIZER_CONFIG_NAME, SPECIAL_TOKENS_MAP_NAME):
            p = os.path.join(path, name)
            if os.path.isfile(p):
                d = read_json_object(p, "tokenizer setting file")
                problems = tokenizer_config_problems(d) if isinstance(d, dict) else ["it is not a JSON object"]
                if problems:  # "do_lower_case": "no" would otherwise lower-case (a non-empty string is true)
                    raise ValueError(f"{p}: " + "; ".join(problems))
                if name == TOKENIZER_CONFIG_NAME:
                    # transformers writes added_tokens_decoder; PaddleNLP writes special_tokens_map_file/init_class
                    if "added_tokens_decoder" in d:
                        saved_by = "hf"
                    elif "special_tokens_map_file" in d or "init_class" in d:
                        saved_by = "paddle"
                for key in ("do_lower_case", "model_max_length", "flavor", *SPECIAL_TOKEN_ATTRS):
                    value = d.get(key)
                    if isinstance(value, dict):  # an AddedToken dict: {"content": "[SEP]", ...}
                        value = value.get("content")
                    if value is not None:
                        init[key] = value
        if init.get("model_max_length") is not None and init["model_max_length"] > _LARGE:
            init.pop("model_max_length")
        if flavor is None and "flavor" not in init:
            init["flavor"] = _flavor_of_config(os.path.join(path, "config.json")) or saved_by or "hf"
        if flavor is not None:
            init["flavor"] = flavor
        init.update(kwargs)
        return cls(files[SP_MODEL_NAME], files[VOCAB_NAME], **init)

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write the four files ``from_pretrained`` reads; both references read the directory too."""
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        special = {name: getattr(self, name) for name in SPECIAL_TOKEN_ATTRS}
        config = {"tokenizer_class": "ErnieMTokenizer", "do_lower_case": self.do_lower_case, "flavor": self.flavor,
                  **special}  # fmt: skip
        if self.model_max_length < _LARGE:
            config["model_max_length"] = self.model_max_length
        paths = []
        for name, d in ((TOKENIZER_CONFIG_NAME, config), (SPECIAL_TOKENS_MAP_NAME, special)):
            p = os.path.join(save_directory, name)
            with open(p, "w", encoding="utf-8") as f:
                json.dump(d, f, indent=2, ensure_ascii=False)
                f.write("\n")
            paths.append(p)
        (vocab_path,) = self.save_vocabulary(save_directory)
        return (*paths, vocab_path, os.path.join(save_directory, SP_MODEL_NAME))

    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str]:
        """[HF] save_vocabulary: ``vocab.txt`` (tokens by id) and the SentencePiece model; returns the vocab path.

        As in HF, ``filename_prefix`` names only the vocabulary; the model is always ``sentencepiece.bpe.model``.
        """
        save_directory = os.fspath(save_directory)
        if not os.path.isdir(save_directory):
            raise FileNotFoundError(f"save_vocabulary needs an existing directory, got {save_directory}")
        vocab_path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + VOCAB_NAME)
        with open(vocab_path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(self.ids_to_tokens[i] + "\n" for i in range(len(self.ids_to_tokens)))
        with open(os.path.join(save_directory, SP_MODEL_NAME), "wb") as f:
            f.write(self.sp_model.serialized_model_proto())
        return (vocab_path,)

    # ------------------------------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        # QUIRK: [HF] len(vocab.txt); [PD] (2.8.1) sp_model.vocab_size(), the SentencePiece model's size.
        return len(self.vocab) if self.flavor == "hf" else self.sp_model.get_piece_size()

    def __len__(self) -> int:
        """Number of ids (the rows a model's word embedding needs): ``max id in vocab.txt + 1``.

        [HF] gives len(vocab.txt) as well; [PD] gives vocab_size (the SentencePiece size, 2 less), too small
        for the ids it emits, so here both flavours give the number of ids.
        """
        return len(self.ids_to_tokens)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Token(s) -> id(s); unknown tokens -> the ``[UNK]`` id (both references)."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        get, unk = self.vocab.get, self.unk_token_id
        return [get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str | list[str]:
        """Id(s) -> token(s); an id not in vocab.txt -> ``[UNK]`` ([HF] reverse_vocab.get(id, unk))."""
        if isinstance(ids, (int, np.integer)):
            return self.ids_to_tokens.get(int(ids), self.unk_token)
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return [self.ids_to_tokens.get(int(i), self.unk_token) for i in _flat_ids(ids) if int(i) not in special]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Both references: join, "▁" -> space, strip."""
        return "".join(tokens).replace(SPIECE_UNDERLINE, " ").strip()

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
               ) -> str:  # fmt: skip
        """Ids -> text: ``convert_tokens_to_string(convert_ids_to_tokens(ids))``.

        Special tokens are ordinary vocab.txt entries, so both references join them without spaces
        (``"[CLS]hello world[SEP]"``). QUIRK: the clean-up of spaces before punctuation is off by default in
        [HF] 4.46 (clean_up_tokenization_spaces=False) and on in [PD] (True).
        """
        if isinstance(token_ids, (int, np.integer)):
            token_ids = [int(token_ids)]
        text = self.convert_tokens_to_string(self.convert_ids_to_tokens(token_ids, skip_special_tokens))
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.flavor == "paddle"
        return _clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:  # fmt: skip
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in sequences]

    # ------------------------------------------------------------------------------------------ special tokens
    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                         ) -> list[int]:  # fmt: skip
        """``[CLS] A [SEP]`` or ``[CLS] A [SEP] [SEP] B [SEP]`` (both references)."""
        if token_ids_1 is None:
            return [self.cls_token_id, *token_ids_0, self.sep_token_id]
        sep = self.sep_token_id
        return [self.cls_token_id, *token_ids_0, sep, sep, *token_ids_1, sep]

    def build_offset_mapping_with_special_tokens(self, offset_mapping_0, offset_mapping_1=None) -> list:
        """Special tokens get (0, 0): ``(0,0) A (0,0)`` or ``(0,0) A (0,0) (0,0) B (0,0)``."""
        if offset_mapping_1 is None:
            return [(0, 0), *offset_mapping_0, (0, 0)]
        return [(0, 0), *offset_mapping_0, (0, 0), (0, 0), *offset_mapping_1, (0, 0)]

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:  # fmt: skip
        """1 for a special token, 0 for a sequence token.

        With ``already_has_special_tokens`` only [CLS] and [SEP] ids count (both references; [PAD] gives 0).
        """
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("a second sequence cannot be given when the ids already have special tokens")
            marks = (self.sep_token_id, self.cls_token_id)
            return [1 if x in marks else 0 for x in token_ids_0]
        if token_ids_1 is None:
            return [1, *[0] * len(token_ids_0), 1]
        return [1, *[0] * len(token_ids_0), 1, 1, *[0] * len(token_ids_1), 1]

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                             ) -> list[int]:  # fmt: skip
        """All 0 for one sequence; for a pair ``[0]*(len(A)+1) + [1]*(len(B)+3)``.

        QUIRK (both references): the first [SEP] after A already gets type 1. The model has no token-type
        embedding and does not accept token_type_ids.
        """
        if token_ids_1 is None:
            return [0] * (len(token_ids_0) + 2)
        return [0] * (len(token_ids_0) + 1) + [1] * (len(token_ids_1) + 3)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 4 if pair else 2

    # ------------------------------------------------------------------------------------------ tokenize
    def tokenize(self, text: str) -> list[str]:
        """Text -> tokens (steps 1-4 of the module docstring)."""
        return self._tokenize_batch([_check_text(text, "text")])[0][0]

    def _prepare_chunks(self, text: str) -> list[tuple[bool, str]]:
        """Steps 1-2: lower-case (outside special tokens) and split on special tokens -> [(is_special, chunk)]."""
        has_special = any(c in text for c in self._special_first_chars) and self._special_re.search(text)
        parts = self._special_re.split(text) if has_special else [text]
        out = []
        n = len(parts)
        for k, part in enumerate(parts):
            if k % 2:  # a special token, kept as it is (also by do_lower_case)
                out.append((True, part))
                continue
            if self.do_lower_case:
                # Both references lower-case with re.sub(r"(special)|(.+?)", ...), i.e. one character at a time:
                # str.lower() of a whole string would give a final sigma "ς" where they give "σ".
                part = part.lower() if "Σ" not in part else "".join(c.lower() for c in part)
            if self.flavor == "paddle" and has_special:
                # QUIRK: [PD] tokenize() strips the whitespace next to a special token (str.strip semantics);
                # [HF] keeps it (AddedToken lstrip/rstrip False) and SentencePiece drops it.
                if k > 0:
                    part = part.lstrip()
                if k < n - 1:
                    part = part.rstrip()
            if part:
                out.append((False, part))
        return out

    def _tokenize_batch(self, texts: list[str], with_tokens: bool = True) -> list[tuple[list[str], list[int]]]:
        """Tokens and ids of each text (tokens only when ``with_tokens``).

        Every chunk of the whole batch goes through SentencePiece in one call, as piece ids; the post-split
        of a piece (step 4) and its vocab.txt ids depend on the piece alone, so they are looked up in a table
        indexed by the SentencePiece id. Chunks with an unknown piece (whose text SentencePiece reports only
        as a string) take the string path.
        """
        prepared = [self._prepare_chunks(t) for t in texts]
        chunks = [c for p in prepared for special, c in p if not special]
        sp = self.sp_model
        if not chunks:
            all_ids = []
        elif self._sampling:  # subword regularisation ([HF] sp_model_kwargs): a fresh sample per chunk, as strings
            kw = self.sp_model_kwargs
            all_ids = [sp.encode(c, out_type=str, enable_sampling=True, alpha=kw.get("alpha", 0.1),
                                 nbest_size=kw.get("nbest_size", 64)) for c in chunks]  # fmt: skip
        else:
            all_ids = sp.encode(chunks, out_type=int, num_threads=self.num_threads)
        table, unk_sp, lone = self._sp_table, self._sp_unk_id, self._sp_underline_id
        starts_underline, hf = self._sp_starts_underline, self.flavor == "hf"
        underline_vocab_id = self.vocab.get(SPIECE_UNDERLINE, self.unk_token_id)
        results, j = [], 0
        for p in prepared:
            tokens: list[str] = []
            ids: list[int] = []
            for special, chunk in p:
                if special:
                    tokens.append(chunk)
                    ids.append(self.vocab[chunk])
                    continue
                pids = all_ids[j]
                j += 1
                if self._sampling:
                    self._extend_from_pieces(pids, tokens, ids)  # (piece strings here)
                    continue
                if unk_sp in pids:  # an unknown piece: its text (and so its post-split) only comes as a string
                    self._extend_from_pieces(sp.encode(chunk, out_type=str), tokens, ids)
                    continue
                hf_lone = hf and lone in pids
                last = len(pids) - 1
                for pi, pid in enumerate(pids):
                    if hf_lone and pid == lone:  # HF's lone-"▁" rule, see _extend_from_pieces
                        if 0 < pi < last and not starts_underline[pids[pi + 1]]:
                            tokens.append(SPIECE_UNDERLINE)
                            ids.append(underline_vocab_id)
                        continue
                    entry = table[pid]
                    if entry is None:
                        entry = table[pid] = self._piece_entry(sp.id_to_piece(pid))
                    if with_tokens:
                        tokens += entry[0]
                    ids += entry[1]
            results.append((tokens, ids))
        return results

    def _piece_entry(self, piece: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The tokens of one SentencePiece piece after step 4, and their vocab.txt ids (memoised)."""
        hit = self._piece_cache.get(piece)
        if hit is None:
            toks = tuple(split_piece(piece)) if piece != SPIECE_UNDERLINE else ()
            hit = self._piece_cache[piece] = (toks, tuple(self.vocab.get(t, self.unk_token_id) for t in toks))
        return hit

    def _extend_from_pieces(self, pieces: list[str], tokens: list[str], ids: list[int]) -> None:
        """Step 4 over a chunk's piece strings, with the lone-"▁" rule of the flavour."""
        last = len(pieces) - 1
        for pi, piece in enumerate(pieces):
            if piece == SPIECE_UNDERLINE:
                # QUIRK: a lone "▁" piece. [PD] always drops it. [HF] keeps it as a token when it is not the
                # first piece and the next piece does not start with "▁" (e.g. SentencePiece's "▁", "W", "orld"
                # -> HF keeps "▁" (the id of "▁"), Paddle does not). HF reads pieces[pi + 1] first, so a lone "▁"
                # as the last piece raises IndexError there; here it is dropped (nmt_nfkc strips trailing
                # whitespace, so real models do not produce it).
                if self.flavor == "hf" and 0 < pi < last and not pieces[pi + 1].startswith(SPIECE_UNDERLINE):
                    tokens.append(SPIECE_UNDERLINE)
                    ids.append(self.vocab.get(SPIECE_UNDERLINE, self.unk_token_id))
                continue
            entry = self._piece_entry(piece)
            tokens += entry[0]
            ids += entry[1]

    # ------------------------------------------------------------------------------------------ offsets
    def get_offset_mapping(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` in ``text`` of each token of ``tokenize(text)``."""
        text = _check_text(text, "text")
        return self._offsets(text, self.tokenize(text))

    def _offsets(self, text: str, tokens: list[str]) -> list[tuple[int, int]]:
        """PaddleNLP's ErnieMTokenizer.get_offset_mapping, made total.

        [PD]: normalise the text one character at a time (SP_CHAR_MAPPING, else NFKC), drop whitespace, keep
        ``cmap[j]`` = the source index of normalised character j, lower-case if do_lower_case; then find each
        token (without its leading "▁") from a cursor that moves to the end of the last match. The span is
        ``(cmap[start], cmap[end - 1] + 1)``. Where every token is found this gives PaddleNLP's exact result.

        QUIRK: PaddleNLP raises ValueError where a token is not found (SentencePiece's normaliser and
        per-character NFKC disagree, e.g. "ﾞ" combining, "ΟΔΟΣ" lower-cased as a whole, "[SEP]" with
        do_lower_case). Here such a token takes the source between its found neighbours (whitespace trimmed;
        consecutive unfound tokens share it out in order), so spans are always within the text, ordered, and
        special tokens in the text get their own span. [HF]'s lone "▁" token gets an empty span where it is.
        """
        norm, cmap = _normalise_for_offsets(text)
        if self.do_lower_case:
            lowered = norm.lower()
            if len(lowered) == len(norm):
                norm = lowered
            else:
                # "İ".lower() is two characters: lower one character at a time and keep cmap aligned
                # (PaddleNLP's cmap goes out of step here; the only such character is U+0130).
                parts, new_cmap = [], []
                for ch, src in zip(norm, cmap):
                    lc = ch.lower()
                    parts.append(lc)
                    new_cmap.extend([src] * len(lc))
                norm, cmap = "".join(parts), new_cmap
        # Pass 1: PaddleNLP's search; None where it would raise (QUIRK, see above).
        needles = [tok[1:] if tok[:1] == SPIECE_UNDERLINE else tok for tok in tokens]
        if "ς" in norm:
            # Final sigma: "ΟΔΟΣ".lower() ends in "ς" where the tokens hold "σ", and the nearest match counts
            # ("AΣ0Σ" lowers to "aς0σ": the first "σ" token is the "ς"). Searching with every "ς" read as "σ"
            # gives the nearest of the plain and the sigma-folded matches: a plain match is also a folded one.
            norm_search = norm.replace("ς", "σ")
            needles = [t.replace("ς", "σ") for t in needles]
        else:
            norm_search = norm
        finder = _SuffixFinder(norm_search, needles)
        found: list[tuple[int, int] | None] = []
        cursor = 0
        for t in needles:
            s = finder.find(t, cursor) if t else -1
            if s < 0:
                found.append(None)
                continue
            e = s + len(t)
            found.append((s, e))
            cursor = e
        if all(f is not None for f in found):
            return [(cmap[s], cmap[e - 1] + 1) for s, e in found]
        # Pass 2: fill what was not found from the gaps between found neighbours.
        spans: list[tuple[int, int] | None] = [None if f is None else (cmap[f[0]], cmap[f[1] - 1] + 1) for f in found]
        k, n = 0, len(tokens)
        while k < n:
            if spans[k] is not None:
                k += 1
                continue
            j = k
            while j < n and spans[j] is None:
                j += 1
            lo = spans[k - 1][1] if k > 0 else 0
            hi = spans[j][0] if j < n else len(text)
            if lo > hi:  # the neighbours overlap (several tokens from one source character, e.g. "½" -> "1⁄2")
                for m in range(k, j):
                    spans[m] = (hi, lo)
                k = j
                continue
            while lo < hi and _is_whitespace(text[lo]):
                lo += 1
            while hi > lo and _is_whitespace(text[hi - 1]):
                hi -= 1
            cur = lo
            # the last token of the run with text besides "▁": it, and any after it, take the rest up to hi
            last_text = max((x for x in range(k, j) if tokens[x].lstrip(SPIECE_UNDERLINE)), default=-1)
            for m in range(k, j):
                t = tokens[m][1:] if tokens[m][:1] == SPIECE_UNDERLINE else tokens[m]
                if not t:
                    spans[m] = (cur, cur)
                    continue
                end = hi if m >= last_text else min(hi, cur + len(t))
                spans[m] = (cur, end)
                cur = end
            k = j
        return spans  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ encode
    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        return_position_ids: bool | None = None,
        **kwargs,
    ) -> BatchEncoding:
        """Encode one text, one pair, or a batch of either, for the model.

        Args:
            text: a str, or a list of str (a batch).
            text_pair: the second sequences (same form as ``text``), or None.
            padding: False / "do_not_pad"; True / "longest" (to the longest in the batch); "max_length".
            truncation: True / "longest_first" (one token at a time from the longer of the pair), "only_first",
                "only_second", False / "do_not_truncate"; None: off unless ``max_length`` is given without padding.
            max_length: the length to truncate to / pad to with "max_length" (default: model_max_length).
            stride: with ``return_overflowing_tokens``, how many tokens consecutive windows share ("hf"; the
                paddle flavour also makes Paddle's doc-stride windows for a batch of pairs, see below).
            return_overflowing_tokens: split what truncation cuts off into further windows (features), each a
                row of the output; ``overflow_to_sample_mapping`` gives each row's input index.
            return_offsets_mapping: ``(start, end)`` character spans in the caller's string per token
                ((0, 0) for special and padding tokens).
            return_attention_mask: 1 for tokens, 0 for padding. On by default here.
            return_token_type_ids, return_special_tokens_mask, return_position_ids, return_length: as named.
            return_tensors: None (lists) or "np" (int64 arrays with a batch axis, also for a single text).
            max_seq_len, pad_to_max_seq_len: PaddleNLP's names for max_length / padding="max_length"
                (paddle flavour only).

        Returns: a BatchEncoding (dict). With defaults, ``model(**tokenizer(texts, padding=True,
        return_tensors="np"))`` works: only input_ids and attention_mask are returned.
        """
        # QUIRK: PaddleNLP's legacy aliases (used by UIE-M's Taskflow); HF ignores them with a warning.
        max_seq_len = kwargs.pop("max_seq_len", None)
        pad_to_max_seq_len = kwargs.pop("pad_to_max_seq_len", False)
        kwargs.pop("verbose", None)
        return_dict = kwargs.pop("return_dict", True)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
        if not return_dict:
            raise ValueError("return_dict=False (PaddleNLP's list of dicts) is not supported; index the BatchEncoding")
        if (max_seq_len is not None or pad_to_max_seq_len) and self.flavor != "paddle":
            raise TypeError("max_seq_len / pad_to_max_seq_len are PaddleNLP's names (flavor='paddle'); "
                            "use max_length= and padding='max_length'")  # fmt: skip
        if max_length is None and max_seq_len:
            max_length = max_seq_len
        # QUIRK: HF returns only input_ids by default (model_input_names = ["input_ids"]) and PaddleNLP too;
        # here the attention mask is on by default, so padded batches go straight into the model.
        if return_attention_mask is None:
            return_attention_mask = True
        return_token_type_ids = bool(return_token_type_ids)  # off by default (both: not in model_input_names)
        return_position_ids = bool(return_position_ids)  # [PD] only; off by default

        batched, texts, pairs = _check_inputs(text, text_pair)
        padding_strategy, truncation_strategy, max_length = self._strategies(
            padding, truncation, max_length, pad_to_max_seq_len, pad_to_multiple_of
        )
        if return_token_type_ids and not add_special_tokens:
            raise ValueError("return_token_type_ids=True needs add_special_tokens=True (both references refuse it)")
        if stride < 0:
            raise ValueError(f"stride must be >= 0, got {stride}")
        # QUIRK: [PD] a batch of pairs with stride > 0 always becomes doc-stride windows over the second
        # sequence (QA), with offsets, whether or not overflowing tokens were asked for; the key is
        # "overflow_to_sample" there. stride is the step between window starts, not the overlap as in HF.
        doc_stride = self.flavor == "paddle" and batched and pairs is not None and stride > 0
        windows = return_overflowing_tokens or doc_stride
        if windows and not doc_stride and truncation_strategy == "longest_first" and pairs is not None:
            raise ValueError("return_overflowing_tokens cannot split a pair with truncation='longest_first' "
                             "(both references refuse it); use 'only_first' or 'only_second'")  # fmt: skip
        if doc_stride:
            return_offsets_mapping = True
        uniq = list(texts) + (list(pairs) if pairs is not None else [])
        encoded = self._tokenize_batch(uniq, with_tokens=return_offsets_mapping)
        offsets = [self._offsets(t, e[0]) for t, e in zip(uniq, encoded)] if return_offsets_mapping else None
        n = len(texts)

        rows: list[dict[str, list]] = []
        sample_map: list[int] = []
        for b in range(n):
            ids_a = encoded[b][1]
            ids_b = encoded[n + b][1] if pairs is not None else None
            off_a = offsets[b] if offsets is not None else None
            off_b = offsets[n + b] if offsets is not None and pairs is not None else None
            if doc_stride:
                parts = self._doc_stride_windows(ids_a, ids_b, off_a, off_b, max_length, stride, add_special_tokens)
            elif windows:
                parts = self._overflow_windows(ids_a, ids_b, off_a, off_b, truncation_strategy, max_length, stride,
                                               add_special_tokens)  # fmt: skip
            else:
                parts = [self._truncate(ids_a, ids_b, off_a, off_b, truncation_strategy, max_length,
                                        add_special_tokens)]  # fmt: skip
            for a, pb, oa, ob in parts:
                rows.append(self._assemble(a, pb, oa, ob, add_special_tokens, return_token_type_ids,
                                           return_special_tokens_mask, return_position_ids))  # fmt: skip
                sample_map.append(b)

        # Padding: to the longest row, or to max_length; then up to a multiple of pad_to_multiple_of.
        if padding_strategy != "do_not_pad" and rows:
            target = max(len(r["input_ids"]) for r in rows) if padding_strategy == "longest" else max_length
            if pad_to_multiple_of and target % pad_to_multiple_of:
                target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of
        else:
            target = None
        out: dict[str, list] = {}
        for r in rows:
            length = len(r["input_ids"])
            diff = max(0, target - length) if target is not None else 0
            if return_length and (batched or windows):
                r["length"] = length  # batches: before padding (both references)
            if return_attention_mask:
                r["attention_mask"] = [1] * length + [0] * diff
            if diff:
                r["input_ids"] = r["input_ids"] + [self.pad_token_id] * diff
                if "token_type_ids" in r:
                    r["token_type_ids"] = r["token_type_ids"] + [self.pad_token_type_id] * diff
                if "special_tokens_mask" in r:
                    r["special_tokens_mask"] = r["special_tokens_mask"] + [1] * diff  # pads count as special
                if "offset_mapping" in r:
                    r["offset_mapping"] = r["offset_mapping"] + [(0, 0)] * diff
                if "position_ids" in r:
                    r["position_ids"] = r["position_ids"] + [0] * diff  # [PD] _pad pads position_ids with 0
            if return_length and not (batched or windows):
                r["length"] = len(r["input_ids"])  # one text: after padding (both references)
            for key, value in r.items():
                out.setdefault(key, []).append(value)
            if return_length and self.flavor == "paddle":
                out.setdefault("seq_len", []).append(r["length"])  # [PD] also names it seq_len
        if windows:
            out["overflow_to_sample_mapping"] = sample_map
            if doc_stride:
                out["overflow_to_sample"] = sample_map  # [PD]'s own name for it
        if not out:  # an empty batch
            out = {"input_ids": []}
        if not batched and not windows:
            out = {k: v[0] for k, v in out.items()}
        if return_tensors is not None:
            out = _to_numpy(out, return_tensors, add_batch_axis=not batched and not windows)
        return BatchEncoding(out)

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, **kwargs) -> list[int]:
        """Ids of one text (or pair), with special tokens: ``tokenizer(text, text_pair)["input_ids"]``."""
        kwargs.setdefault("return_attention_mask", False)
        return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def _strategies(self, padding, truncation, max_length, pad_to_max_seq_len, pad_to_multiple_of):
        """Padding/truncation strategies and max_length, as both references resolve them."""
        if padding is False and pad_to_max_seq_len:
            padding = "max_length" if max_length is not None else "longest"  # [PD] pad_to_max_seq_len
        if padding is True:
            padding = "longest"
        elif padding is False or padding is None:
            padding = "do_not_pad"
        if padding not in ("do_not_pad", "longest", "max_length"):
            raise ValueError(f"padding must be False, True, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        # QUIRK: max_length given with no padding switches truncation to "longest_first" when truncation is
        # unset: [HF] default truncation=None (an explicit False stays off); [PD] default False (False counts).
        unset = truncation is None or (truncation is False and self.flavor == "paddle")
        if max_length is not None and padding == "do_not_pad" and unset:
            truncation = "longest_first"
        if truncation is True:
            truncation = "longest_first"
        elif truncation is False or truncation is None:
            truncation = "do_not_truncate"
        if truncation not in ("do_not_truncate", "longest_first", "only_first", "only_second"):
            raise ValueError("truncation must be True, False, 'longest_first', 'only_first', 'only_second' or "
                             f"'do_not_truncate', got {truncation!r}")  # fmt: skip
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 0:
                raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
            max_length = int(max_length)
        elif padding == "max_length" or truncation != "do_not_truncate":
            if self.model_max_length > _LARGE:  # no limit known: both references fall back to no padding /
                if padding == "max_length":  # no truncation (with a warning)
                    warnings.warn("padding='max_length' without max_length and no model_max_length: not padding")
                    padding = "do_not_pad"
                truncation = "do_not_truncate"
            else:
                max_length = self.model_max_length
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0):
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
        if (truncation != "do_not_truncate" and padding != "do_not_pad" and pad_to_multiple_of and max_length
                and max_length % pad_to_multiple_of):  # fmt: skip
            raise ValueError(f"truncation length {max_length} is not a multiple of pad_to_multiple_of "
                             f"{pad_to_multiple_of}")  # fmt: skip
        return padding, truncation, max_length

    def _truncate(self, a, b, oa, ob, strategy, max_length, add_special_tokens):
        """Both references' truncate_sequences (right side); offsets are cut exactly like the ids."""
        n_special = self.num_special_tokens_to_add(b is not None) if add_special_tokens else 0
        total = len(a) + (len(b) if b is not None else 0) + n_special
        if strategy == "do_not_truncate" or max_length is None or total <= max_length:
            return a, b, oa, ob
        remove = total - max_length
        if strategy == "only_first" or (strategy == "longest_first" and b is None):
            if len(a) > remove:
                keep = len(a) - remove
                return a[:keep], b, (oa[:keep] if oa is not None else None), ob
            # Both references log an error and leave the sequence as it is.
            warnings.warn(f"cannot remove {remove} tokens from a first sequence of {len(a)}: not truncated")
            return a, b, oa, ob
        if strategy == "longest_first":  # one token at a time from the longer one (the second on a tie)
            la, lb = len(a), len(b)
            for _ in range(remove):
                if la > lb:
                    la -= 1
                else:
                    lb -= 1
            return a[:la], b[:lb], (oa[:la] if oa is not None else None), (ob[:lb] if ob is not None else None)
        if strategy == "only_second" and b is not None:
            if len(b) > remove:
                keep = len(b) - remove
                return a, b[:keep], oa, (ob[:keep] if ob is not None else None)
            warnings.warn(f"cannot remove {remove} tokens from a second sequence of {len(b)}: not truncated")
        return a, b, oa, ob

    def _overflow_windows(self, a, b, oa, ob, strategy, max_length, stride, add_special_tokens):
        """Windows over the truncated sequence, ``stride`` tokens shared by neighbours.

        The first window is exactly what truncation keeps, and the rest covers what [HF]'s slow tokenizer
        returns as ``overflowing_tokens`` (the cut tokens plus ``stride`` before them); like HF's fast
        tokenizers, each window becomes its own row. Sequences that fit give one row.
        """
        first = self._truncate(a, b, oa, ob, strategy, max_length, add_special_tokens)
        target_second = strategy == "only_second" and b is not None
        seq, off = (b, ob) if target_second else (a, oa)
        kept = len(first[1] if target_second else first[0])
        if kept == len(seq):
            return [first]
        if stride >= kept:
            raise ValueError(f"stride {stride} must be smaller than the window length {kept} "
                             "(max_length minus the other sequence and the special tokens)")  # fmt: skip
        parts, start, step = [], 0, kept - stride
        while True:
            piece = seq[start : start + kept]
            opiece = off[start : start + kept] if off is not None else None
            parts.append((a, piece, oa, opiece) if target_second else (piece, b, opiece, ob))
            if start + kept >= len(seq):
                return parts
            start += step

    def _doc_stride_windows(self, a, b, oa, ob, max_length, stride, add_special_tokens):
        """[PD] _batch_prepare_for_model with stride > 0 and pairs: windows of the second sequence.

        Window length ``max_length - len(A) - 4``; the next window starts ``min(length, stride)`` later.
        QUIRK: the first sequence is never truncated, and an empty second sequence gives no row at all.
        """
        if max_length is None:
            raise ValueError("Paddle's doc-stride windows (stride > 0 with a batch of pairs) need max_length")
        room = max_length - len(a) - (self.num_special_tokens_to_add(True) if add_special_tokens else 0)
        if room <= 0:  # PaddleNLP loops forever here
            raise ValueError(f"max_length {max_length} leaves no room for the second sequence after a first "
                             f"sequence of {len(a)} tokens")  # fmt: skip
        parts, offset = [], 0
        while offset < len(b):
            length = min(len(b) - offset, room)
            parts.append((a, b[offset : offset + length], oa, ob[offset : offset + length]))
            if offset + length == len(b):
                break
            offset += min(length, stride)
        return parts

    def _assemble(self, a, b, oa, ob, add_special_tokens, token_type_ids, special_tokens_mask, position_ids):
        """One row: special tokens, token types, special-token mask, offsets, position ids (before padding)."""
        if add_special_tokens:
            row = {"input_ids": self.build_inputs_with_special_tokens(a, b)}
            if token_type_ids:
                row["token_type_ids"] = self.create_token_type_ids_from_sequences(a, b)
            if special_tokens_mask:
                row["special_tokens_mask"] = self.get_special_tokens_mask(a, b)
            if oa is not None:
                row["offset_mapping"] = self.build_offset_mapping_with_special_tokens(oa, ob)
        else:
            row = {"input_ids": a + b if b is not None else list(a)}
            if special_tokens_mask:
                row["special_tokens_mask"] = [0] * len(row["input_ids"])
            if oa is not None:
                row["offset_mapping"] = oa + ob if ob is not None else list(oa)
        if position_ids:
            row["position_ids"] = list(range(len(row["input_ids"])))  # 0-based; the model adds 2
        return row


# ---------------------------------------------------------------------------------------------- helpers
def _load_sentencepiece(path: str, kwargs: dict):
    import sentencepiece as spm

    if not os.path.isfile(path):
        raise FileNotFoundError(f"SentencePiece model not found: {path}")
    sp = spm.SentencePieceProcessor(**kwargs)
    try:
        sp.Load(path)
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{path} is not a valid SentencePiece model: {e}") from None
    if sp.get_piece_size() == 0:
        raise ValueError(f"{path} is a SentencePiece model with no pieces")
    return sp


def _load_vocab(path: str) -> tuple[dict[str, int], list[str]]:
    """Both references: token of line i -> i, each line read with ``rstrip("\\n")`` only."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:  # universal newlines, as both references read it
            lines = [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 text file (a vocab.txt holds one token per line): {e}") from None
    if not lines:
        raise ValueError(f"{path} is empty")
    return {t: i for i, t in enumerate(lines)}, lines


def _flavor_of_config(path: str) -> str | None:
    """The flavor of a model config.json beside the tokenizer (PaddleNLP's -> "paddle"); None without one."""
    if not os.path.isfile(path):
        return None
    from .config import ErnieMConfig

    try:
        return ErnieMConfig.from_json_file(path).flavor
    except (ValueError, TypeError, OSError):
        return None


def _check_text(text: Any, name: str) -> str:
    if not isinstance(text, str):
        hint = " (decode bytes first)" if isinstance(text, (bytes, bytearray)) else ""
        raise TypeError(f"{name} must be a str, got {type(text).__name__}{hint}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{name} contains a lone surrogate {text[e.start]!r} at index {e.start}; "
            "it cannot be encoded as UTF-8 (e.g. text.encode('utf-8', 'replace').decode())"
        ) from None
    return text


def _check_inputs(text, text_pair) -> tuple[bool, list[str], list[str] | None]:
    """-> (batched, texts, pairs), every element checked to be a str."""
    if text is None:
        raise TypeError("text must be a str or a list of str, got None")
    if isinstance(text, str):
        if text_pair is not None and not isinstance(text_pair, str):
            raise TypeError(f"text is one str, so text_pair must be a str too, got {type(text_pair).__name__}")
        return (
            False,
            [_check_text(text, "text")],
            (None if text_pair is None else [_check_text(text_pair, "text_pair")]),
        )
    if isinstance(text, np.ndarray):
        text = text.tolist()
    if not isinstance(text, (list, tuple)):
        raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
    texts = [_check_text(t, f"text[{i}]") for i, t in enumerate(text)]
    if text_pair is None:
        return True, texts, None
    if isinstance(text_pair, np.ndarray):
        text_pair = text_pair.tolist()
    if isinstance(text_pair, str) or not isinstance(text_pair, (list, tuple)):
        raise TypeError("for a batch, text_pair must be a list of str of the same length as text")
    if len(text_pair) != len(texts):
        raise ValueError(f"text has {len(texts)} items but text_pair has {len(text_pair)}")
    return True, texts, [_check_text(t, f"text_pair[{i}]") for i, t in enumerate(text_pair)]


def _flat_ids(ids) -> list[int]:
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise ValueError(f"expected a 1-D sequence of ids, got shape {ids.shape}")
        return ids.tolist()
    return list(ids)


def _clean_up_tokenization(s: str) -> str:
    """Both references' clean_up_tokenization: no space before . ? ! , and English contractions."""
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",").replace(" ' ", "'")
            .replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve")
            .replace(" 're", "'re"))  # fmt: skip


def _to_numpy(out: dict, return_tensors: str, add_batch_axis: bool) -> dict:
    if return_tensors != "np":
        raise ValueError(f"return_tensors must be None or 'np' (no framework here), got {return_tensors!r}")
    arrays = {}
    for key, value in out.items():
        if add_batch_axis and key not in ("overflow_to_sample_mapping", "overflow_to_sample"):
            value = [value]
        try:
            arr = np.asarray(value, dtype=np.int64)
        except ValueError:
            raise ValueError(f"cannot make one array of {key!r}: the rows have different lengths; "
                             "pass padding=True (or 'max_length')") from None  # fmt: skip
        if key == "offset_mapping" and arr.size == 0:
            arr = arr.reshape(*arr.shape[:2], 2) if arr.ndim >= 2 else arr.reshape(0, 0, 2)
        arrays[key] = arr
    return arrays
