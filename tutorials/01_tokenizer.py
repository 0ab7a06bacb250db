# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. The tokenizer: SentencePiece, ERNIE-M's post-split, two flavors, offsets
#
# The code this chapter explains: `erniem_np/tokenizer.py`, class `ErnieMTokenizer` (methods `tokenize`,
# `_tokenize_batch`, `_extend_from_pieces`, `_offsets`, `__call__`) and the function `split_piece`.
#
# ERNIE-M's tokenizer is two files: a SentencePiece model (`sentencepiece.bpe.model`) that cuts text into
# pieces, and `vocab.txt`, whose line numbers are the ids the model was trained with. Between the two sits a
# rule of ERNIE-M's own that splits pieces further. We take the pipeline apart step by step and check, at each
# step, that what we re-derive by hand is what the package does.
#
# No real ERNIE-M SentencePiece model can be downloaded here, so we use the small one the test suite trains
# (`tests/fixtures/tokenizer/bpe`: BPE, 4,000 pieces, `nmt_nfkc` normalisation, an ERNIE-M style
# `vocab.txt`). Everything below works the same on the real 250k-piece model.

# %%
import gzip
import itertools
import os
import unicodedata
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import sentencepiece as spm

from erniem_np import ErnieMTokenizer
from erniem_np.tokenizer import SP_CHAR_MAPPING, SPIECE_UNDERLINE, split_piece

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "tokenizer" / "bpe"

# %% [markdown]
# ## Step 1: SentencePiece cuts text into pieces
#
# SentencePiece normalises the text itself (NFKC, whitespace runs collapsed) and marks the start of every
# word with `▁` (U+2581), its "dummy prefix". A piece is either a whole word with its `▁`, or a fragment.

# %%
sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER_DIR / "sentencepiece.bpe.model"))
for text in ["Hello world", "我爱北京天安门。", "ERNIE-M reads 92000 tokens!", "Ｈｅｌｌｏ，世界"]:
    print(f"{text!r:32} -> {sp.encode(text, out_type=str)}")

# %% [markdown]
# Note that the full-width `Ｈｅｌｌｏ，` came out as ASCII: that is the NFKC normalisation inside the
# SentencePiece model, not anything ERNIE-M does.

# %% [markdown]
# ## Step 2: ERNIE-M splits every piece further
#
# Both references (HF transformers and PaddleNLP) then walk through each piece and cut it again:
#
# * every CJK character (U+4E00..U+9FFF) becomes a token of its own,
# * so does each of the punctuation marks `,;:.?!~，；：。？！《》【】`,
# * a run of digits is cut from the letters around it,
# * the `▁` stays attached to the letters that follow it, but a token that would be a bare `▁` is dropped, so
#   a `▁` in front of a digit or a CJK character disappears (`▁92000` -> `92000`, `▁我爱` -> `我`, `爱`).
#
# Here is that rule written out plainly. The package's version is `erniem_np.tokenizer.split_piece`.


# %%
def is_split_char(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff" or c in ",;:.?!~，；：。？！《》【】"


def post_split(piece: str) -> list[str]:
    # Group the characters into runs: each split character is a run of its own; otherwise a run is a maximal
    # stretch of digits or of non-digits (the "▁" counts as a non-digit). A run that is just "▁" is dropped.
    def kind(ic):
        i, c = ic
        return ("split", i) if is_split_char(c) else ("digit" if c.isdigit() else "other")

    runs = ["".join(c for _, c in run) for _, run in itertools.groupby(enumerate(piece), key=kind)]
    return [r for r in runs if r != SPIECE_UNDERLINE]


for piece in ["▁我爱", "▁92000", "abc123def", "▁hello.", "。"]:
    print(f"{piece!r:14} -> {post_split(piece)}  (package: {split_piece(piece)})")

# %% [markdown]
# Our plain version has to agree with the package on every piece of the vocabulary, not just on a few
# examples. SentencePiece can list all its pieces:

# %%
all_pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
disagree = [p for p in all_pieces if p != SPIECE_UNDERLINE and post_split(p) != split_piece(p)]
assert not disagree, disagree[:10]
print(f"post_split == split_piece on all {len(all_pieces):,} pieces of the model")

# %% [markdown]
# ## Step 3: tokens become ids through `vocab.txt`, then special tokens go around them
#
# The id of a token is its line number in `vocab.txt`, counted from 0 (`docs/reference.md#t1-vocabulary-and-ids`):
#
# $$\mathrm{id}(t) = \begin{cases} n & \text{if line } n \text{ of vocab.txt is } t \\ \mathrm{id}(\texttt{[UNK]}) = 3
# & \text{if no line is } t \end{cases}$$
#
# ERNIE-M's file starts with `[CLS] [PAD] [SEP] [UNK]` = 0, 1, 2, 3, and ends with `[MASK]`. Special tokens go
# around the ids of the text's tokens $A$ (and of a second text's, $B$); $\Vert$ joins lists:
#
# $$\texttt{[CLS]} \Vert A \Vert \texttt{[SEP]} \quad (|A| + 2 \text{ ids}), \qquad
# \texttt{[CLS]} \Vert A \Vert \texttt{[SEP]}\,\texttt{[SEP]} \Vert B \Vert \texttt{[SEP]} \quad
# (|A| + |B| + 4 \text{ ids})$$
#
# (two separators in the middle, as in XLM-R). There are no token type embeddings in the model, so the
# segments are told apart only by the separators; the `token_type_ids` a tokenizer returns when asked,
# $[0]^{|A| + 1} \Vert [1]^{|B| + 3}$, already count the first `[SEP]` in segment 1, and nothing reads them.

# %%
tok = ErnieMTokenizer.from_pretrained(TOKENIZER_DIR, flavor="paddle")
vocab_lines = (TOKENIZER_DIR / "vocab.txt").read_text(encoding="utf-8").splitlines()
print(vocab_lines[:4], "...", vocab_lines[-2:])

text, pair = "我爱北京", "Hello world"
tokens_a, tokens_b = tok.tokenize(text), tok.tokenize(pair)
ids_by_hand = (
    [vocab_lines.index("[CLS]")]
    + [vocab_lines.index(t) if t in vocab_lines else vocab_lines.index("[UNK]") for t in tokens_a]
    + [vocab_lines.index("[SEP]")] * 2
    + [vocab_lines.index(t) if t in vocab_lines else vocab_lines.index("[UNK]") for t in tokens_b]
    + [vocab_lines.index("[SEP]")]
)
enc = tok(text, pair, return_token_type_ids=True)
assert enc["input_ids"] == ids_by_hand, (enc["input_ids"], ids_by_hand)
assert len(enc["input_ids"]) == len(tokens_a) + len(tokens_b) + 4
assert enc["token_type_ids"] == [0] * (len(tokens_a) + 1) + [1] * (len(tokens_b) + 3)
print(tok.convert_ids_to_tokens(enc["input_ids"]))
print(enc["input_ids"])

# %% [markdown]
# ## Step 4: where the two references disagree ("flavors")
#
# The HF port and PaddleNLP agree on almost everything, but not quite. The package keeps both behaviours and
# picks one with `flavor="hf"` or `flavor="paddle"`; each difference is marked `# QUIRK:` in
# `erniem_np/tokenizer.py`. The one that changes ids most often: SentencePiece sometimes emits a lone `▁`
# piece (a word whose first character has no `▁`-prefixed piece in the vocabulary). PaddleNLP always drops
# it; HF keeps it as a token when it is not the first piece and the next piece does not start with `▁`
# (`ErnieMTokenizer._extend_from_pieces`).

# %%
hf = ErnieMTokenizer.from_pretrained(TOKENIZER_DIR, flavor="hf")
text = "ERNIE-M reads 92000 tokens!"
print("pieces:", sp.encode(text, out_type=str))
print("hf    :", hf.tokenize(text))
print("paddle:", tok.tokenize(text))
assert hf.tokenize(text) != tok.tokenize(text)


# %% [markdown]
# The rule, re-derived from the pieces: the two flavors must differ exactly by those lone `▁` tokens.


# %%
def hf_from_pieces(pieces: list[str]) -> list[str]:
    out = []
    for i, piece in enumerate(pieces):
        if piece == SPIECE_UNDERLINE:
            if 0 < i < len(pieces) - 1 and not pieces[i + 1].startswith(SPIECE_UNDERLINE):
                out.append(SPIECE_UNDERLINE)  # HF keeps this one
            continue  # PaddleNLP drops every lone "▁"
        out += split_piece(piece)
    return out


for text in ["ERNIE-M reads 92000 tokens!", "x Ŵorld", "Zqxj wqy", "½ İstanbul"]:
    pieces = sp.encode(text, out_type=str)
    assert hf.tokenize(text) == hf_from_pieces(pieces)
    assert tok.tokenize(text) == [t for t in hf_from_pieces(pieces) if t != SPIECE_UNDERLINE]
print("the flavors differ exactly by HF's kept lone '▁' tokens on these texts")

# %% [markdown]
# ## Step 5: offsets, from tokens back to characters
#
# Information extraction (UIE-M) and question answering need to know which characters of the original text a
# token came from. HF's ErnieM tokenizer cannot say (it is "slow" only, and its `get_offset_mapping` raises
# because it never defines `SP_CHAR_MAPPING`). PaddleNLP's method, which the package follows in
# `ErnieMTokenizer._offsets`:
#
# 1. normalise the text one character at a time, dropping whitespace, and remember for each normalised
#    character $k$ the index $\sigma(k)$ of the source character it came from. A full-width character
#    U+FF01..U+FF5D becomes its ASCII twin, $c \mapsto c - \text{0xFEE0}$ (`SP_CHAR_MAPPING`; `～`, U+FF5E,
#    stays); every other character goes through NFKC;
# 2. find each token (without its `▁`) in that normalised text, from a cursor that only moves forward. A token
#    found at normalised positions $a \dots b - 1$ covers the source characters
#
# $$\mathrm{span} = \big(\sigma(a),\ \sigma(b - 1) + 1\big) \qquad \text{(end exclusive)}.$$

# %%
text = "Ｈｅｌｌｏ，世界! ERNIE-M  reads ½"
offsets = tok.get_offset_mapping(text)
for token, (s, e) in zip(tok.tokenize(text), offsets, strict=True):
    print(f"{token!r:8} {s:3} {e:3}  {text[s:e]!r}")


# %% [markdown]
# Re-derived by hand: step 1 and step 2 above, for text where every token is found (PaddleNLP raises
# otherwise; the package then shares out the gap between found neighbours, see the docstring of `_offsets`).


# %%
def offsets_by_hand(text: str, tokens: list[str]) -> list[tuple[int, int]]:
    norm, source = "", []
    for i, ch in enumerate(text):
        n = SP_CHAR_MAPPING.get(ch) or unicodedata.normalize("NFKC", ch)
        if n.isspace():
            continue
        norm += n
        source += [i] * len(n)
    spans, cursor = [], 0
    for t in tokens:
        t = t.lstrip(SPIECE_UNDERLINE)
        start = norm.index(t, cursor)
        cursor = start + len(t)
        spans.append((source[start], source[cursor - 1] + 1))
    return spans


assert offsets_by_hand(text, tok.tokenize(text)) == offsets
print("offsets re-derived by hand == ErnieMTokenizer.get_offset_mapping")

# %% [markdown]
# The tokenizer returns offsets with the ids when asked (`return_offsets_mapping=True`); special tokens get
# `(0, 0)`. UIE-M relies on exactly that to tell the prompt from the text (chapter 5).

# %%
enc = tok("情感倾向", "这家店很好吃。", return_offsets_mapping=True)
print(list(zip(tok.convert_ids_to_tokens(enc["input_ids"]), enc["offset_mapping"], strict=True)))
assert enc["offset_mapping"][0] == (0, 0) and enc["offset_mapping"][-1] == (0, 0)

# %% [markdown]
# ## How many tokens does a character cost, per language?
#
# The post-split rule makes every CJK character a token, whatever the SentencePiece model learnt. The figure
# shows the tokens per character, $r = N_{tokens} / N_{chars}$ (special tokens and spaces not counted), over the
# multilingual corpus the fixture model was trained on (the dialogs of `chatterbot-corpus`, plus the project's
# own lines). Before drawing it we check what it should show: for the
# Chinese lines, there are at least as many tokens as CJK characters.

# %%
lines_by_lang = defaultdict(list)
with gzip.open(TOKENIZER_DIR.parent / "corpus.txt.gz", "rt", encoding="utf-8") as f:
    for line in f:
        lang, _, line_text = line.rstrip("\n").partition("\t")
        if line_text.strip():
            lines_by_lang[lang].append(line_text)

ratio = {}
for lang, texts in lines_by_lang.items():
    if len(texts) < 50:
        continue
    texts = texts[:300]
    n_tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    n_chars = sum(len(t.replace(" ", "")) for t in texts)
    ratio[lang] = n_tokens / n_chars

chinese = [t for t in lines_by_lang["chinese"][:300]]
n_cjk = sum(is_split_char(c) and "\u4e00" <= c <= "\u9fff" for t in chinese for c in t)
n_zh_tokens = sum(len(ids) for ids in tok(chinese, add_special_tokens=False)["input_ids"])
assert n_zh_tokens >= n_cjk, (n_zh_tokens, n_cjk)
assert ratio["chinese"] > 0.9  # about one token per character, by the post-split rule

CJK_LANGS = ("chinese", "traditionalchinese", "japanese")  # red in the figure: written with CJK characters
order = sorted(ratio, key=ratio.get)
fig, ax = plt.subplots(figsize=(8, 6))
ax.barh(order, [ratio[k] for k in order], color=["tab:red" if k in CJK_LANGS else "tab:blue" for k in order])
ax.set_xlabel("tokens per non-space character (4,000-piece fixture model)")
ax.set_title("Tokenizer fertility per language")
fig.tight_layout()
fig.savefig(FIGURES / "01_tokens_per_character.png", dpi=100)
print({k: round(v, 2) for k, v in sorted(ratio.items(), key=lambda kv: kv[1])})

# %% [markdown]
# A real ERNIE-M model has 250,000 pieces, so most words of most languages are one or two pieces and the
# ratios are lower than with this 4,000-piece model; the CJK rule does not change: one token per character.
#
# ## Exercises
#
# 1. **Count without running.** How many tokens does `我爱北京天安门。` become, with any SentencePiece model?
#    How many ids does `tok("我爱北京天安门。", "Hello world")` hold, given that this model cuts `Hello world`
#    into 6 tokens?
# 2. **Truncating a pair.** With `max_length=12, truncation=True` (`longest_first`: remove one token at a time
#    from the end of the longer text, from the second on a tie), how many tokens of each text survive in
#    `tok("我爱北京天安门。", "Hello world", ...)`? Write the rule out and check it against the tokenizer.
# 3. **Offsets.** Which characters of `Ｈｅｌｌｏ，世界` do the tokens `,` and `世` cover, and why does `,` lead
#    back to the full-width comma?

# %% [markdown]
# ### Answers
#
# (Spoilers: the next cell is collapsed in Jupyter; it asserts them.)

# %% jupyter={"source_hidden": true} tags=["answers"]
# 1. The post-split makes each of the 7 CJK characters and the "。" a token of its own (the "▁" in front of the
#    first one is dropped): 8 tokens whatever the pieces, and 8 + 6 + 4 = 18 ids for the pair.
a_text, b_text = "我爱北京天安门。", "Hello world"
assert tok.tokenize(a_text) == list(a_text) and hf.tokenize(a_text) == list(a_text)
assert len(tok.tokenize(b_text)) == 6 and len(tok(a_text, b_text)["input_ids"]) == 8 + 6 + 4 == 18
print("1.", tok.tokenize(a_text), "-> 8 tokens; the pair holds 18 ids")

# 2. longest_first, by hand: 8 + 6 + 4 = 18 ids, 6 too many.
n_a, n_b = len(tok.tokenize(a_text)), len(tok.tokenize(b_text))
while n_a + n_b + 4 > 12:
    if n_a > n_b:
        n_a -= 1
    else:  # the second text gives a token on a tie
        n_b -= 1
cut = tok(a_text, b_text, max_length=12, truncation=True)["input_ids"]
ids_a, ids_b = tok.convert_tokens_to_ids(tok.tokenize(a_text)), tok.convert_tokens_to_ids(tok.tokenize(b_text))
assert cut == [0, *ids_a[:n_a], 2, 2, *ids_b[:n_b], 2], tok.convert_ids_to_tokens(cut)
print(f"2. {n_a} tokens of the first text and {n_b} of the second survive:", tok.convert_ids_to_tokens(cut))
assert (n_a, n_b) == (4, 4)

# 3. "，" (U+FF0C) normalises to "," (U+FF0C - 0xFEE0 = U+002C) at normalised position 5, whose source is
#    character 5; "世" is character 6.
hello = "Ｈｅｌｌｏ，世界"
spans = dict(zip(tok.tokenize(hello), tok.get_offset_mapping(hello), strict=True))
assert SP_CHAR_MAPPING["，"] == "," == chr(ord("，") - 0xFEE0)
assert spans[","] == (5, 6) and hello[5] == "，" and spans["世"] == (6, 7)
print("3. ',' covers", spans[","], repr(hello[5:6]), "and '世' covers", spans["世"])

# %% [markdown]
# **Next:** chapter 2 turns ids into vectors.
