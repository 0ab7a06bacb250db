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
# # 3. Attention from scratch: scores, scaling, the two mask conventions
#
# The code this chapter explains: `erniem_np/layers.py`, functions `self_attention`, `split_heads`,
# `merge_heads`, `softmax`, `additive_mask` and the constants `HF_MASK_VALUE`, `PADDLE_MASK_VALUE`; the fused
# kernel that computes the same in `kernels/attention.py` (chapter 6).
#
# Self-attention lets every token gather information from every other token. For each head: project the
# hidden states to queries, keys and values, score each query against each key, add a mask that pushes the
# scores of hidden keys to a huge negative number, turn the scores into probabilities with a softmax, and mix
# the values with them. We do it by hand on layer 0 of the bundled language-identification model, then look at
# the detail where the two references part ways: which keys their default mask hides.

# %%
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np

from erniem_np import ErnieMModel, ErnieMTokenizer
from erniem_np.layers import HF_MASK_VALUE, PADDLE_MASK_VALUE, additive_mask, self_attention, softmax

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
LANGID = ROOT / "erniem_np" / "data" / "langid"

model = ErnieMModel.from_pretrained(LANGID, backend="numpy")
tok = ErnieMTokenizer.from_pretrained(LANGID)
cfg = model.config
nh, H = cfg.num_attention_heads, cfg.hidden_size
d = H // nh
print(f"{nh} heads of size {d}")

# A batch of two texts; the shorter is padded with [PAD] (id 1).
texts = ["Wo ist der Bahnhof?", "Hi!"]
enc = tok(texts, padding=True, return_tensors="np")
ids, mask = enc["input_ids"], enc["attention_mask"]
print(tok.convert_ids_to_tokens(ids[1]), mask[1])

# %% [markdown]
# ## Scores, scaling, softmax, context: by hand
#
# The weights of layer 0, named as in the checkpoint (HF nests q/k/v one level deeper than `out_proj`:
# `encoder.layers.0.self_attn.self_attn.q_proj` but `encoder.layers.0.self_attn.out_proj`). The input is the
# embeddings output (chapter 2). Linear weights are stored `[out, in]`, so a projection is `x @ W.T + b`.

# %%
sd = model.state_dict()
w = {name: sd[f"encoder.layers.0.self_attn.self_attn.{name}.weight"] for name in ("q_proj", "k_proj", "v_proj")}
b = {name: sd[f"encoder.layers.0.self_attn.self_attn.{name}.bias"] for name in ("q_proj", "k_proj", "v_proj")}
out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
x = out.hidden_states[0]  # [B, L, H]
B, L, _ = x.shape


def heads(t):  # [B, L, H] -> [B, nh, L, d]: head h holds channels h*d .. (h+1)*d - 1
    return t.reshape(B, L, nh, d).transpose(0, 2, 1, 3)


q, k, v = (heads(x @ w[n].T + b[n]) for n in ("q_proj", "k_proj", "v_proj"))
scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)  # [B, nh, L, L]: HF's scaling
hidden = (1 - mask[:, None, None, :]) * HF_MASK_VALUE  # [B, 1, 1, L]: an explicit 2-D mask, HF's fill value
probs = np.exp(scores + hidden - (scores + hidden).max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)  # softmax over the keys
context = (probs @ v).transpose(0, 2, 1, 3).reshape(B, L, H)  # [B, nh, L, d] -> [B, L, H]
attn_out = context @ sd["encoder.layers.0.self_attn.out_proj.weight"].T + sd["encoder.layers.0.self_attn.out_proj.bias"]

assert np.allclose(probs, out.attentions[0], atol=1e-6)  # the model's own attention probabilities of layer 0
layer0 = model.params["encoder"]["layers"][0]
mask_hf = additive_mask(None, mask, 0, "hf", cfg.pad_token_id, np.dtype(np.float32))
pkg_out, pkg_probs, _ = self_attention(x, layer0["self_attn"]["self_attn"], layer0["self_attn"]["out_proj"], nh,
                                       mask_hf, "hf")  # fmt: skip
assert np.allclose(pkg_probs, probs, atol=1e-6) and np.allclose(pkg_out, attn_out, atol=1e-5)
print("attention by hand == layers.self_attention == the model's attentions[0]")

# %% [markdown]
# **Scaling.** HF divides the product by `sqrt(d)`; PaddleNLP multiplies the queries by `d^-0.5` first. The
# same mathematics, different rounding: with `d = 32` the two differ in the last bits of float32 (they agree
# exactly only when `sqrt(d)` is a power of two, e.g. `d = 64` in ErnieM-base). `flavor` picks one.

# %%
scores_paddle = (q * d**-0.5) @ k.transpose(0, 1, 3, 2)
print(f"max |HF scaling - Paddle scaling| = {np.abs(scores - scores_paddle).max():.2e}")
assert np.abs(scores - scores_paddle).max() < 1e-5

# %% [markdown]
# ## The default masks: the references disagree
#
# With an explicit `attention_mask` both references hide the same keys (they differ only in the fill value,
# float32's minimum for HF, -1e4 for Paddle). **Without one**, each builds a mask from the ids, and they
# build different ones (`layers.additive_mask`):
#
# * HF hides keys whose id is the pad id (1): padding is ignored.
# * PaddleNLP hides keys whose id is **0, which is `[CLS]`**, and attends the padding. UIE-M was trained and
#   is served this way (chapter 5), so its checkpoints need it.

# %%
implicit_hf = additive_mask(ids, None, 0, "hf", cfg.pad_token_id, np.dtype(np.float32))[:, 0, 0]  # [B, L]
implicit_paddle = additive_mask(ids, None, 0, "paddle", cfg.pad_token_id, np.dtype(np.float32))[:, 0, 0]
assert np.array_equal(implicit_hf != 0, ids == 1)  # HF: padding hidden
assert np.array_equal(implicit_paddle != 0, ids == 0)  # Paddle: [CLS] hidden, padding attended
assert implicit_hf.min() == HF_MASK_VALUE and implicit_paddle.min() == PADDLE_MASK_VALUE
print("tokens   ", tok.convert_ids_to_tokens(ids[1]))
print("HF     + ", implicit_hf[1])
print("Paddle + ", implicit_paddle[1])

# %% [markdown]
# The same weights, run with each flavor and no mask: the attention of the short, padded text. Before drawing
# it we check what it shows: HF gives the padding keys exactly zero probability; Paddle gives `[CLS]` (as a
# key) zero and the padding keys real weight.

# %%
hf_model = ErnieMModel.from_pretrained(LANGID, flavor="hf", backend="numpy")
paddle_model = ErnieMModel.from_pretrained(LANGID, flavor="paddle", backend="numpy")
p_hf = hf_model(input_ids=ids, output_attentions=True).attentions[0][1]  # [nh, L, L] of the short text
p_pd = paddle_model(input_ids=ids, output_attentions=True).attentions[0][1]
pads = ids[1] == 1
assert (p_hf[:, :, pads] == 0).all() and (p_hf[:, :, 0] > 0).all()
assert (p_pd[:, :, 0] < 1e-30).all() and (p_pd[:, :, pads] > 0).all()

labels = tok.convert_ids_to_tokens(ids[1])
fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
for ax, p, title in ((axes[0], p_hf, 'flavor "hf": padding hidden'), (axes[1], p_pd, 'flavor "paddle": [CLS] hidden')):
    ax.imshow(p[0], cmap="viridis", vmin=0, vmax=p[0].max())
    ax.set_xticks(range(L), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(L), labels, fontsize=7)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(f"{title}\nlayer 0, head 0, no attention_mask")
fig.tight_layout()
fig.savefig(FIGURES / "03_attention_masks.png", dpi=100)

# %% [markdown]
# ## A row with every key hidden
#
# The fill values matter in one case: a query whose keys are *all* hidden (an all-zero row of the mask). With
# HF's fill (float32's minimum) every score becomes the same huge negative number once added, and the softmax
# of equal numbers is uniform. With Paddle's -1e4 the scores keep their differences (softmax does not change
# when the same number is added to every score), so the row is the ordinary, unmasked softmax.

# %%
row = scores[1, 0, 0]  # the scores of one query
uniform = softmax(row + np.float32(HF_MASK_VALUE))
unmasked = softmax(row + np.float32(PADDLE_MASK_VALUE))
assert np.allclose(uniform, 1 / L) and np.allclose(unmasked, softmax(row), atol=2e-3)
print("HF fill   :", np.round(uniform, 3))
print("Paddle fill:", np.round(unmasked, 3))

# %% [markdown]
# (The 2e-3: adding -1e4 in float32 rounds each score to a multiple of 2^-10; the golden tests allow for it on
# those rows.)
#
# **Next:** chapter 4 puts attention, the feed-forward block and two LayerNorms together into the encoder.
