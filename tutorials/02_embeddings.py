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
#
# The whole layer (`docs/reference.md#m2-embeddings`), for ids and 0-based positions of shape $[B, L]$:
#
# $$E = \mathrm{LN}\big(W_{word}[\mathrm{ids}] + W_{pos}[\mathrm{pos} + 2]\big) \in \mathbb{R}^{B \times L \times H}$$
#
# with $W_{word}$ = `embeddings.word_embeddings.weight` $[V, H]$, $W_{pos}$ =
# `embeddings.position_embeddings.weight` $[T, H]$, and $\mathrm{LN}$ = `embeddings.layer_norm`. Dropout
# follows in training; at inference it is the identity.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np

from erniem_np import ErnieMModel, ErnieMTokenizer
from erniem_np.layers import POSITION_OFFSET, default_position_ids, embeddings, layer_norm
from erniem_np.parity import BUNDLE_DIR, compare_bundles, load_bundle, make_bundle

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
# For `Hello world`: the ids; positions $\mathrm{pos}_{b,j} = P + j$ ($j = 0 \dots L-1$; $P$ is the number of
# cached positions, 0 without a cache, `layers.default_position_ids`); and then the quirk: both references read
# the position table at **position + 2**. Then LayerNorm over the hidden axis, per token:
#
# $$\mathrm{LN}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}} \odot \gamma + \beta, \qquad
# \mu = \frac{1}{H}\sum_{i=1}^{H} x_i, \qquad \sigma^2 = \frac{1}{H}\sum_{i=1}^{H} (x_i - \mu)^2, \qquad
# \varepsilon = 10^{-5}$$
#
# $\gamma$ = `embeddings.layer_norm.weight`, $\beta$ = `embeddings.layer_norm.bias`, both $[H]$. The variance is
# the biased one (divided by $H$, not $H - 1$), as torch and Paddle compute it; $\varepsilon$ is
# `config.layer_norm_eps`, $10^{-5}$ in both references (BERT uses $10^{-12}$).

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
# * the usable length is the table size minus 2, $L_{max} = T - 2$: 512 tokens for ErnieM-base's 514 rows, 128
#   here (and position ids a caller passes must lie in $[-2, T - 2)$, so that row $\mathrm{pos} + 2$ exists);
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
# ## Exercises
#
# 1. **Rows 0 and 1.** Which `position_ids` make the model read rows 0 and 1 of the position table, the rows
#    it never reads by default? What does the model do with a position id of $-3$?
# 2. **Drop the +2.** A port reads row $\mathrm{pos}$ instead of $\mathrm{pos} + 2$. Run it against the shipped
#    golden bundle `tiny.hf` (chapter 4 introduces bundles; `erniem_np/parity/`, `compare_bundles`): which
#    probe diverges first, by how much, and what does the comparator suggest? Hint: to this package, such a port
#    is a model whose position table is shifted down by two rows, $W'_{pos}[r] = W_{pos}[r - 2]$.
# 3. **BERT's epsilon.** Another port uses $\varepsilon = 10^{-12}$ in every LayerNorm. Which probe diverges
#    first? How does the comparator tell this bug from the missing offset, which diverges at the same probe?
#    Derive the size of the error from the LayerNorm formula and check it against the comparator's number.

# %% [markdown]
# ### Answers
#
# (Spoilers: the next cell is collapsed in Jupyter; it asserts them.)

# %% jupyter={"source_hidden": true} tags=["answers"]
# 1. Position ids -2 and -1 read rows 0 and 1 (the model adds 2); -3 would read row -1, which does not exist.
two = ids[:, :2]  # [1, 2]: [CLS] and the first token
rows_01 = embeddings(two, np.array([[-2, -1]]), **params, eps=1e-5)
assert np.allclose(rows_01, layer_norm(word_table[two] + position_table[[0, 1]], *ln, 1e-5), atol=1e-6)
try:
    model(input_ids=two, position_ids=np.array([[-3, 0]]))
except ValueError as e:
    print("1. position ids -2, -1 read rows 0, 1; -3 is refused:", e)
else:
    raise AssertionError("position id -3 must be refused")

# 2. The port without the offset, as a model with the shifted table, recorded probe by probe.
bundle = load_bundle(BUNDLE_DIR / "tiny.hf.safetensors")
cases = [{"name": c, **bundle.inputs(c)} for c in bundle.case_names()]
weights = bundle.weights()
table = weights["embeddings.position_embeddings.weight"]  # [T, H]
shifted = dict(weights)
shifted["embeddings.position_embeddings.weight"] = np.concatenate([np.zeros_like(table[:2]), table[:-2]])
no_offset, _ = make_bundle(bundle.config(), shifted, cases)
report = compare_bundles(bundle, no_offset)
first = report.first_divergence
print(f"2. first diverging probe {first.probe}, max |error| {first.stats['max_abs']:.2f}; hint: {report.hints[0]}")
assert first.probe == "emb.out" and first.stats["max_abs"] > 0.1 and "+2 position offset" in report.hints[0]

# 3. BERT's epsilon: the same first probe, an error about a thousand times smaller, a different hint.
bert_eps, _ = make_bundle(bundle.config().replace(layer_norm_eps=1e-12), weights, cases)
report = compare_bundles(bundle, bert_eps)
first = report.first_divergence
print(f"3. first diverging probe {first.probe}, max |error| {first.stats['max_abs']:.1e}; hint: {report.hints[0]}")
assert first.probe == "emb.out" and 5e-5 < first.stats["max_abs"] < 0.1 and "eps" in report.hints[0]
# From the formula: LN_a(x) - LN_b(x) = (x - mu) * gamma * (1/sqrt(var + eps_a) - 1/sqrt(var + eps_b)).
inputs = bundle.inputs(first.case)
x = weights["embeddings.word_embeddings.weight"][inputs["input_ids"]]
x = x + table[inputs["position_ids"] + POSITION_OFFSET]  # [B, L, H]
mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)  # np.var is the biased variance
gamma = weights["embeddings.layer_norm.weight"]
predicted = np.abs((x - mu) * gamma * (1 / np.sqrt(var + 1e-5) - 1 / np.sqrt(var + 1e-12)))
valid = inputs["attention_mask"].astype(bool)  # the comparator looks at real tokens only
print(f"   the tables are small (variance of x about {var.mean():.4f}), so eps moves the output by about "
      f"eps / (2 var) = {1e-5 / (2 * var.mean()):.0e} of its size;"
      f" predicted max |error| {predicted[valid].max():.1e}")  # fmt: skip
assert np.isclose(predicted[valid].max(), first.stats["max_abs"], rtol=1e-2)

# %% [markdown]
# **Next:** chapter 3, attention.
