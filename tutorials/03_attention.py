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
from erniem_np.parity import BUNDLE_DIR, compare_bundles, load_bundle

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
# `encoder.layers.0.self_attn.self_attn.q_proj` but `encoder.layers.0.self_attn.out_proj`). The input $x$ is
# the embeddings output (chapter 2), $[B, L, H]$. Linear weights are stored `[out, in]`, so a projection is
# `x @ W.T + b` (`docs/reference.md#m4-self-attention`):
#
# $$Q = x W_q^\top + b_q, \qquad K = x W_k^\top + b_k, \qquad V = x W_v^\top + b_v \qquad [B, L, H]$$
#
# with $W_q, b_q$ = `q_proj.weight` $[H, H]$, `q_proj.bias` $[H]$, and likewise `k_proj`, `v_proj`. Each is cut
# into $n_h$ heads of $d = H / n_h$ channels, head $h$ holding channels $hd \dots (h+1)d - 1$: $Q_h, K_h, V_h$ of
# shape $[B, L, d]$, stacked as $[B, n_h, L, d]$. Per head, the scaled scores, HF's way:
#
# $$S_h = \frac{Q_h K_h^\top}{\sqrt{d}} \qquad [B, n_h, L, L_k]$$
#
# then the additive mask $M$ (broadcast from $[B, 1, 1, L_k]$), a softmax over the keys, computed
# max-subtracted as torch and Paddle do, and the values mixed with the probabilities:
#
# $$A_h = \mathrm{softmax}(S_h + M), \qquad \mathrm{softmax}(s)_j = \frac{e^{s_j - \max_k s_k}}{\sum_{k} e^{s_k -
# \max_k s_k}}$$
#
# $$\mathrm{context} = \big[A_1 V_1, \dots, A_{n_h} V_{n_h}\big] \in [B, L, H], \qquad
# \mathrm{out} = \mathrm{context}\, W_o^\top + b_o$$
#
# with $W_o, b_o$ = `self_attn.out_proj`. An explicit 2-D mask $m \in \{0, 1\}^{B \times L_k}$ (1 = attend)
# becomes $M_{b,j} = (1 - m_{b,j})\, f$ with HF's fill $f$ = float32's minimum,
# $f \approx -3.4028235 \times 10^{38}$ (`HF_MASK_VALUE`). Dropout on $A_h$ is the identity at inference; HF
# alone also multiplies $A_h$ by the optional `head_mask` entry of head $h$.

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
# **Scaling.** HF divides the product by $\sqrt{d}$; PaddleNLP multiplies the queries by $d^{-1/2}$ first
# (`docs/reference.md#q33-score-scaling-order`):
#
# $$S_h^{\text{hf}} = \frac{Q_h K_h^\top}{\sqrt{d}}, \qquad S_h^{\text{paddle}} = \big(Q_h \cdot d^{-1/2}\big)
# K_h^\top .$$
#
# The same mathematics, different rounding: with $d = 32$ the two differ in the last bits of float32 (they agree
# exactly only when $\sqrt{d}$ is a power of two, e.g. $d = 64$ in ErnieM-base; exercise 1). `flavor` picks one.

# %%
scores_paddle = (q * d**-0.5) @ k.transpose(0, 1, 3, 2)
print(f"max |HF scaling - Paddle scaling| = {np.abs(scores - scores_paddle).max():.2e}")
assert np.abs(scores - scores_paddle).max() < 1e-5

# %% [markdown]
# ## The default masks: the references disagree
#
# With an explicit `attention_mask` both references hide the same keys; they differ only in the fill value:
#
# $$M_{b,j} = (1 - m_{b,j})\, f, \qquad f_{\text{hf}} = \text{float32 min} \approx -3.4 \times 10^{38}, \qquad
# f_{\text{paddle}} = -10^{4}.$$
#
# **Without one**, each builds a mask from the ids, and they build different ones (`layers.additive_mask`,
# `docs/reference.md#q1-implicit-attention-mask`):
#
# $$M^{\text{hf}}_{b,j} = f_{\text{hf}} \cdot [\mathrm{id}_{b,j} = \mathrm{pad}], \qquad
# M^{\text{paddle}}_{b,j} = -10^{4} \cdot [\mathrm{id}_{b,j} = 0]$$
#
# ($[\cdot]$ is 1 when the condition holds, else 0):
#
# * HF hides keys whose id is the pad id (1): padding is ignored.
# * PaddleNLP hides keys whose id is **0, which is `[CLS]`**, and attends the padding. UIE-M was trained and
#   is served this way (chapter 5), so its checkpoints need it.
#
# (Masks of 3 or 4 dimensions, `[B, L, Lk]` or `[B|1, nh|1, L, Lk]`, are used as they are when they hold
# floats; boolean or integer ones become $(1 - m)\, f_{\text{hf}}$ in HF's flavor and $(m - 1) \cdot 10^{9}$ in
# Paddle's, as Paddle's `_convert_attention_mask` does.)

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
# HF's fill (float32's minimum) every score becomes the same huge negative number once added (float32's spacing
# near $3.4 \times 10^{38}$ is $2^{104}$, so $s_j + f_{\text{hf}}$ rounds to $f_{\text{hf}}$), and the softmax of
# equal numbers is uniform, $A_{j} = 1 / L_k$. With Paddle's $-10^4$ the scores keep their differences, and
# softmax does not change when the same number is added to every score,
# $\mathrm{softmax}(s - 10^4) = \mathrm{softmax}(s)$: the row is the ordinary, unmasked softmax.

# %%
row = scores[1, 0, 0]  # the scores of one query
uniform = softmax(row + np.float32(HF_MASK_VALUE))
unmasked = softmax(row + np.float32(PADDLE_MASK_VALUE))
assert np.allclose(uniform, 1 / L) and np.allclose(unmasked, softmax(row), atol=2e-3)
print("HF fill   :", np.round(uniform, 3))
print("Paddle fill:", np.round(unmasked, 3))

# %% [markdown]
# (The 2e-3: adding $-10^4$ in float32 rounds each score to a multiple of $2^{-10}$; the golden tests allow for
# it on those rows.)

# %% [markdown]
# ## Exercises
#
# 1. **Scaling order.** For which head sizes $d \in \{8, 16, 32, 48, 64, 128, 256\}$ do HF's
#    $Q K^\top / \sqrt{d}$ and Paddle's $(Q\, d^{-1/2}) K^\top$ give bit-identical float32 scores? Why those?
# 2. **Paddle's mask from HF's classes.** What `attention_mask` makes the `"hf"` flavor reproduce the `"paddle"`
#    flavor's implicit mask on the padded batch above, and how close do the two models' outputs then come?
# 3. **Forget $1/\sqrt{d}$.** A port computes $S_h = Q_h K_h^\top$. Feed its layer 0 the embeddings output
#    stored in the golden bundle `tiny.hf` (a *layer-local* test: each stage gets the reference's input) and
#    compare its attention probes with `compare_bundles`: which probe diverges first, and what does the
#    comparator suggest? Are the port's attention rows sharper or flatter than the reference's?

# %% [markdown]
# ### Answers
#
# (Spoilers: the next cell is collapsed in Jupyter; it asserts them.)

# %% jupyter={"source_hidden": true} tags=["answers"]
# 1. Bit-identical exactly when sqrt(d) is a power of two (d a power of 4): multiplying by a power of two is
#    exact in floating point, so scaling q first or the product after changes no bit.
rng = np.random.default_rng(0)
identical = []
for size in (8, 16, 32, 48, 64, 128, 256):
    q_, k_ = rng.standard_normal((2, 1, 2, 16, size), dtype=np.float32)  # [B=1, nh=2, L=16, d] each
    hf_scores = (q_ @ k_.transpose(0, 1, 3, 2)) / math.sqrt(size)
    paddle_scores = (q_ * size**-0.5) @ k_.transpose(0, 1, 3, 2)
    if np.array_equal(hf_scores, paddle_scores):
        identical.append(size)
print("1. bit-identical scores for d =", identical)
assert identical == [16, 64, 256]

# 2. attention_mask = (ids != 0): [CLS] hidden, padding attended. Masked keys get probability exactly 0 under
#    either fill, so the models differ only by the scaling's rounding (d = 32).
as_paddle = hf_model(input_ids=ids, attention_mask=(ids != 0).astype(np.int64), output_attentions=True)
paddle_out = paddle_model(input_ids=ids, output_attentions=True)
gap = np.abs(as_paddle.last_hidden_state - paddle_out.last_hidden_state).max()
print(f"2. max |hf with mask (ids != 0) - paddle without a mask| = {gap:.1e}")
assert gap < 1e-5 and (as_paddle.attentions[0][..., 0] == 0).all() and (paddle_out.attentions[0][..., 0] == 0).all()

# 3. Layer 0's attention, written as a port would, fed the bundle's emb.out; probes named as the bundle names them.
bundle = load_bundle(BUNDLE_DIR / "tiny.hf.safetensors")
bw, bnh = bundle.weights(), bundle.config().num_attention_heads


def port_attention(case, scaled=True):
    x = bundle.get(case, "emb.out")  # [B, L, H]: the reference's input to layer 0
    Bc, Lc, Hc = x.shape
    dc = Hc // bnh

    def proj(t, name):
        return t @ bw[f"encoder.layers.0.{name}.weight"].T + bw[f"encoder.layers.0.{name}.bias"]

    def split(t):  # [B, L, H] -> [B, nh, L, d]
        return t.reshape(Bc, Lc, bnh, dc).transpose(0, 2, 1, 3)

    q, k, v = (split(proj(x, f"self_attn.self_attn.{n}_proj")) for n in "qkv")
    s = q @ k.transpose(0, 1, 3, 2)
    s = s / math.sqrt(dc) if scaled else s  # the bug: no scaling
    p = softmax(s + bundle.get(case, "derived.additive_mask"))  # the bundle carries the additive mask
    c = (p @ v).transpose(0, 2, 1, 3).reshape(Bc, Lc, Hc)
    probes = {"q": q, "k": k, "v": v, "scores": s, "probs": p, "context": c, "out": proj(c, "self_attn.out_proj")}
    return {f"{case}/layer.00.attn.{name}": a for name, a in probes.items()}


def port_bundle(scaled):
    return {k: v for case in bundle.case_names() for k, v in port_attention(case, scaled).items()}


right, unscaled = port_bundle(True), port_bundle(False)
assert compare_bundles(bundle, right, probes=["layer.00.attn.*"], mode="layer_local").passed
report = compare_bundles(bundle, unscaled, probes=["layer.00.attn.*"], mode="layer_local")
print(f"3. first diverging probe {report.first_divergence.probe}; hint: {report.hints[0]}")
assert report.first_divergence.probe == "layer.00.attn.scores" and "scaling" in report.hints[0]
# Scores sqrt(d) times too large are a softmax at a lower temperature: every row's largest probability grows.
case = "c01_batch_pad"
sharp = unscaled[f"{case}/layer.00.attn.probs"].max(-1)
calm = right[f"{case}/layer.00.attn.probs"].max(-1)
print(f"   mean largest probability per row: {calm.mean():.3f} scaled, {sharp.mean():.3f} unscaled: sharper")
assert (sharp >= calm - 1e-6).all() and sharp.mean() > calm.mean()

# %% [markdown]
# **Next:** chapter 4 puts attention, the feed-forward block and two LayerNorms together into the encoder.
