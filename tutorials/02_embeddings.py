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
# # 2. Embeddings and positions: the +2 offset and why it exists
#
# The code this chapter explains: `erniem_np/layers.py`, functions `embeddings`, `default_position_ids`,
# `layer_norm` and the constant `POSITION_OFFSET`; and the input checks in `erniem_np/inputs.py`
# (`prepare_inputs`).
#
# The first layer of the model turns ids into vectors: a row of the word table for each token, plus a row of
# the position table for each place in the sequence, then a LayerNorm. ErnieM has no token-type (segment)
# embedding, unlike BERT. We use the bundled language-identification model (`erniem_np/data/langid`: hidden
# size 128, a 130-row position table), trained with HF transformers, so its tables hold learnt values.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np

from erniem_np import ErnieMModel, ErnieMTokenizer
from erniem_np.layers import POSITION_OFFSET, default_position_ids, embeddings, layer_norm

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
LANGID = ROOT / "erniem_np" / "data" / "langid"

model = ErnieMModel.from_pretrained(LANGID, backend="numpy")  # (its classifier head is not used here)
tok = ErnieMTokenizer.from_pretrained(LANGID)
sd = model.state_dict()
word_table = sd["embeddings.word_embeddings.weight"]  # [V, H]
position_table = sd["embeddings.position_embeddings.weight"]  # [T, H]
print("word table", word_table.shape, "position table", position_table.shape)

# %% [markdown]
# ## By hand
#
# For `Hello world`: the ids; positions 0, 1, 2, ...; and then the quirk: both references read the position
# table at **position + 2**. Then LayerNorm over the hidden axis with eps 1e-5.

# %%
ids = np.array(tok(["Hello world"])["input_ids"])  # [B, L]
positions = np.arange(ids.shape[1])[None, :]  # [B, L]: 0, 1, 2, ...
x = word_table[ids] + position_table[positions + 2]  # [B, L, H]
ln = sd["embeddings.layer_norm.weight"], sd["embeddings.layer_norm.bias"]
mean = x.mean(-1, keepdims=True)
var = ((x - mean) ** 2).mean(-1, keepdims=True)  # the biased variance (divide by H), as torch and Paddle
by_hand = (x - mean) / np.sqrt(var + 1e-5) * ln[0] + ln[1]

# The package's layer function, and the model's own first hidden state:
assert POSITION_OFFSET == 2
params = model.params["embeddings"]
layer = embeddings(ids, default_position_ids(*ids.shape), **params, eps=model.config.layer_norm_eps)
out = model(input_ids=ids, output_hidden_states=True)
assert np.allclose(by_hand, layer, atol=1e-5) and np.allclose(by_hand, out.hidden_states[0], atol=1e-5)
assert np.allclose(layer_norm(x, *ln, 1e-5), by_hand, atol=1e-5)
print("embeddings by hand == layers.embeddings == hidden_states[0]")

# %% [markdown]
# ## Why +2?
#
# ERNIE-M comes from the XLM-R family, whose position table follows fairseq's convention: positions are
# counted from `padding_idx + 1`, and the padding id is 1, so the first real position is row 2. PaddleNLP's
# ERNIE-M keeps that table (rows 0 and 1 are never read by default), and the HF port reproduces it by adding 2
# to every position id, "to mimic paddlenlp implementation". Two consequences:
#
# * the usable length is the table size minus 2: 512 tokens for ErnieM-base's 514 rows, 128 here;
# * rows 0 and 1 of a model trained this way were never read. In this model (trained with HF, which creates
#   the position table with `padding_idx=1`), row 1 is exactly zero and row 0 still holds its random
#   initialisation.

# %%
norms = np.linalg.norm(position_table, axis=1)
print("row norms 0..5:", np.round(norms[:6], 3))
assert not position_table[1].any()  # padding_idx: zero, never trained

limit = model.config.max_position_embeddings - POSITION_OFFSET
try:
    model(input_ids=np.zeros((1, limit + 1), dtype=np.int64))
except ValueError as e:
    print("L =", limit + 1, "->", e)
else:
    raise AssertionError("a sequence longer than the table minus 2 must be refused")

# %% [markdown]
# Two more details, each marked `QUIRK` in `layers.embeddings`:
#
# * The offset applies to position ids the caller passes, too. HF adds the 2 *in place*, so a caller who
#   reuses their `position_ids` tensor for a second call gets it shifted twice; erniem-np never changes the
#   caller's array.
# * Positions are not padding-aware (XLM-R's are): in a padded batch, the padding tokens get positions too.
#   That is harmless where the attention mask hides them, and it matters for UIE-M, which attends padding
#   (chapter 5).

# %%
user_positions = np.arange(ids.shape[1])[None, :].copy()
before = user_positions.copy()
model(input_ids=ids, position_ids=user_positions)
model(input_ids=ids, position_ids=user_positions)
assert np.array_equal(user_positions, before)  # not shifted, however often it is passed

# %% [markdown]
# ## What a port that forgets the +2 gets wrong
#
# A port that reads row `position` instead of `position + 2` runs without any error, since the table has the
# rows, and gives wrong numbers at every position. Before drawing the error per position we check what the
# figure claims: with the offset the error is zero; without it, it is large everywhere.

# %%
text = "Wo ist der Bahnhof? Ich muss um acht Uhr in Berlin sein."
ids = np.array(tok([text])["input_ids"])
positions = np.arange(ids.shape[1])[None, :]
good = embeddings(ids, positions, **params, eps=1e-5)
wrong_x = word_table[ids] + position_table[positions]  # the bug: no +2
m = wrong_x.mean(-1, keepdims=True)
wrong = (wrong_x - m) / np.sqrt(((wrong_x - m) ** 2).mean(-1, keepdims=True) + 1e-5) * ln[0] + ln[1]
error = np.abs(wrong - good).max(-1)[0]  # [L]: max |difference| over the hidden axis, per position
assert np.abs(good - model(input_ids=ids, output_hidden_states=True).hidden_states[0]).max() < 1e-5
assert error.min() > 1e-2, error.min()
print(f"max |error| per position without the offset: min {error.min():.3f}, max {error.max():.3f}")

fig, ax = plt.subplots(figsize=(8, 3))
ax.bar(range(len(error)), error, color="tab:red")
ax.set_xticks(range(len(error)), tok.convert_ids_to_tokens(ids[0]), rotation=90, fontsize=7)
ax.set_ylabel("max |error| of the\nembeddings output")
ax.set_title("A port without the +2 position offset (the embeddings output, before any layer)")
fig.tight_layout()
fig.savefig(FIGURES / "02_missing_offset_error.png", dpi=100)

# %% [markdown]
# The parity toolkit (chapter 7) names this bug when it sees it: the first probe that diverges is `emb.out`.
#
# **Next:** chapter 3, attention.
