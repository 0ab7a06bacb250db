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
# # 4. The encoder layer and the whole model, checked layer by layer against a golden bundle
#
# The code this chapter explains: `erniem_np/layers.py` (`encoder_layer`, `layer_norm`, `pooler`),
# `erniem_np/activations.py` (`gelu`) and `erniem_np/model.py` (`ErnieMPreTrainedModel.encode`, the forward pass
# top to bottom); the parameter names in `erniem_np/parameters.py` (`base_parameter_shapes`); the parity toolkit
# in `erniem_np/parity/` (`load_bundle`, `compare_bundles`) and `docs/parity-testing.md`.
#
# With embeddings (chapter 2) and attention (chapter 3) in hand, the rest of ErnieM is short. Each of the
# encoder's layers is **post-LayerNorm**, as in the original Transformer and BERT
# (`docs/reference.md#m5-encoder-layer`):
#
# $$h = \mathrm{LN}_1\big(x + \mathrm{Attn}(x)\big), \qquad y = \mathrm{LN}_2\big(h + \mathrm{FFN}(h)\big)$$
#
# (pre-LN models, like GPT-2, normalise *before* each block instead, $x + \mathrm{Attn}(\mathrm{LN}(x))$; a port
# that mixes them up fails at the first layer, exercise 2). There is no final LayerNorm after the last layer.
# The pooler then takes the `[CLS]` token, $\tanh(y_{:,0} W_d^\top + b_d)$, and the heads of chapter 5 sit on
# top.
#
# In this chapter we draw the model from its checkpoint names, write it from scratch as a port would, in about
# thirty lines of NumPy, and test it the way a port should be tested: against a **golden bundle**, the inputs
# and every intermediate result of a reference run, compared probe by probe.

# %%
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch, Rectangle
from scipy.special import erf

from erniem_np import ErnieMConfig, ErnieMModel
from erniem_np.layers import POSITION_OFFSET
from erniem_np.parameters import base_parameter_shapes
from erniem_np.parity import BUNDLE_DIR, compare_bundles, load_bundle

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The golden bundle
#
# A bundle ships with the package for a tiny random model (2 layers, hidden 32, 4 heads), its weights
# included. `erniem-np parity inspect` describes it; from Python:

# %%
bundle = load_bundle(BUNDLE_DIR / "tiny.hf.safetensors")
cfg = bundle.metadata["config"]
W = bundle.weights()  # HF state-dict names, Linear weights [out, in]
print({k: cfg[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")})
print("cases:", bundle.case_names())
print("probes of one case:", [p["name"] for p in bundle.probes()][:8], "...")

# %% [markdown]
# ## The architecture, drawn from the checkpoint's names
#
# Every parameter of the bare encoder, by the name it has in an HF checkpoint, with its shape for this
# configuration: the figure below is generated from `ErnieMModel(config).state_dict()` (the same names and
# shapes as `base_parameter_shapes(config)`), one box per module, and the cell asserts that every name it draws
# is a key of that state dict. Arrows carry the shapes of the activations (B batch, L tokens, H hidden, nh
# heads, d = H / nh head size, F FFN width, V vocabulary, T position-table rows). The layers all have the same
# names under `encoder.layers.{i}`, so the figure draws layer 0 and stacks the others behind it.

# %%
config = ErnieMConfig.from_dict(cfg)
state = ErnieMModel(config, backend="numpy").state_dict()  # random weights: only names and shapes are used
assert {k: v.shape for k, v in state.items()} == base_parameter_shapes(config)
H, nh, F = config.hidden_size, config.num_attention_heads, config.intermediate_size
d, n_layers, eps = H // nh, config.num_hidden_layers, f"eps {config.layer_norm_eps:.0e}".replace("e-0", "e-")
modules: dict[str, list[str]] = {}  # "encoder.layers.0.linear1" -> ["weight [37, 32]", "bias [37]"]
for key, value in state.items():
    module, _, param = key.rpartition(".")
    modules.setdefault(module, []).append(f"{param} {list(value.shape)}")
drawn: list[str] = []  # every parameter name the figure shows, checked below


def params_of(module):
    """The lines of a module's box, from the state dict; records the names drawn."""
    drawn.extend(f"{module}.{line.split()[0]}" for line in modules[module])
    return "\n".join(modules[module])


fig, ax = plt.subplots(figsize=(9.5, 13.5))
ax.set(xlim=(0, 100), ylim=(-6, 142))
ax.axis("off")


def box(x, y, w, h, title, body="", color="#dbe9f6"):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=1.2",
                                fc=color, ec="black", lw=1, zorder=2))  # fmt: skip
    if not body:
        ax.text(x, y, title, ha="center", va="center", fontsize=8, family="monospace", zorder=3)
        return
    ax.text(x, y + h / 2 - 1.0, title, ha="center", va="top", fontsize=8, weight="bold", family="monospace", zorder=3)
    ax.text(x, y - 1.0, body, ha="center", va="center", fontsize=7.5, family="monospace", zorder=3)


def arrow(x0, y0, x1, y1, label="", side=1, color="black"):
    ax.annotate("", (x1, y1), (x0, y0), zorder=1,
                arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.1, "shrinkA": 0, "shrinkB": 0})  # fmt: skip
    if label:
        ax.text((x0 + x1) / 2 + 1.2 * side, (y0 + y1) / 2, label, ha="left" if side > 0 else "right",
                va="center", fontsize=7.5, color="#333333", style="italic")  # fmt: skip


def plus(x, y):
    ax.add_patch(plt.Circle((x, y), 1.6, fc="white", ec="black", lw=1, zorder=2))
    ax.text(x, y - 0.1, "+", ha="center", va="center", fontsize=11, zorder=3)


def path(points, color="#777777"):  # a residual connection: a polyline ending in an arrow
    xs, ys = zip(*points, strict=True)
    ax.plot(xs[:-1], ys[:-1], color=color, lw=1.1, zorder=1)
    arrow(xs[-2], ys[-2], xs[-1], ys[-1], color=color)


ax.set_title(f"ErnieM as an HF checkpoint names it: {n_layers} layers, H = {H}, nh = {nh}, d = {d}, F = {F}, "
             f"V = {config.vocab_size}, T = {config.max_position_embeddings}", fontsize=10)  # fmt: skip
# embeddings: E = LN(W_word[ids] + W_pos[pos + 2])
box(27, 137, 26, 4, "input_ids [B, L]", color="#eeeeee")
box(73, 137, 26, 4, "position_ids [B, L]", color="#eeeeee")
box(27, 125, 40, 8, "embeddings.word_embeddings", params_of("embeddings.word_embeddings") + "   row = id")
box(73, 125, 40, 8, "embeddings.position_embeddings",
    params_of("embeddings.position_embeddings") + f"   row = position_id + {POSITION_OFFSET}")  # fmt: skip
arrow(27, 135, 27, 129)
arrow(73, 135, 73, 129)
plus(50, 114)
arrow(27, 121, 48.4, 114.4, f"[B, L, {H}]", side=-1)
arrow(73, 121, 51.6, 114.4, f"[B, L, {H}]")
box(50, 105.5, 48, 7, "embeddings.layer_norm", params_of("embeddings.layer_norm").replace("\n", "   ") + "   " + eps)
arrow(50, 112.4, 50, 109)
# the encoder layers: a frame for layer 0, the others stacked behind it
top, bottom = 96, 13.5
for i in reversed(range(1, n_layers)):
    ax.add_patch(Rectangle((5 + 1.2 * i, bottom - 1.2 * i), 90, top - bottom, fc="#f4f4f4", ec="#999999", zorder=0))
ax.add_patch(Rectangle((5, bottom), 90, top - bottom, fc="#fbfbf2", ec="black", lw=1.2, zorder=0))
layer = "encoder.layers.0"
ax.text(5, top + 0.6, layer, ha="left", va="bottom", fontsize=8.5, weight="bold", family="monospace")
ax.text(95, top + 0.6, f"× {n_layers} layers: encoder.layers.{{i}}, i = 0 .. {n_layers - 1}", ha="right",
        va="bottom", fontsize=8, family="monospace")  # fmt: skip
arrow(50, 102, 50, 91)
ax.text(51.2, 100, f"x [B, L, H={H}]  (hidden_states[0])", fontsize=7.5, color="#333333", style="italic", va="center")
# self-attention: q_proj, k_proj, v_proj, the scaled softmax, out_proj
for x, name in ((24, "q_proj"), (50, "k_proj"), (76, "v_proj")):
    module = f"{layer}.self_attn.self_attn.{name}"
    box(x, 84, 25, 8, f"self_attn.self_attn.{name}", params_of(module))
    arrow(50, 91, x, 88)
    arrow(x, 80, x if x == 50 else (x + 50) / 2, 73.5, f"[B, nh, L, d] = [B, {nh}, L, {d}]" if x == 76 else "")
box(50, 70, 60, 7, "attention: softmax(q k^T / sqrt(d) + mask) v",
    f"probs [B, {nh}, L, L]; heads merged back to [B, L, {H}]", color="#fde9d9")  # fmt: skip
box(50, 59.5, 40, 7, "self_attn.out_proj", params_of(f"{layer}.self_attn.out_proj").replace("\n", "   "))
arrow(50, 66.5, 50, 63, f"context [B, L, {H}]")
plus(50, 52.5)
arrow(50, 56, 50, 54.1)
path([(50, 91), (10, 91), (10, 52.5), (48.4, 52.5)])  # residual: x + out_proj(context)
box(50, 45.5, 40, 7, "norm1", params_of(f"{layer}.norm1").replace("\n", "   ") + "   " + eps)
arrow(50, 50.9, 50, 49)
# the feed-forward block: linear1, exact GELU, linear2
box(21, 33, 24, 8, "linear1", params_of(f"{layer}.linear1"))
box(50, 33, 22, 8, "GELU (exact, erf)", f"on [B, L, {F}]", color="#fde9d9")
box(79, 33, 24, 8, "linear2", params_of(f"{layer}.linear2"))
arrow(50, 42, 21, 37, f"h [B, L, {H}]", side=-1)
arrow(33, 33, 39, 33)
arrow(61, 33, 67, 33)
plus(50, 24.5)
arrow(79, 29, 51.5, 25.1, f"[B, L, {H}]")
path([(50, 42), (93, 42), (93, 24.5), (51.6, 24.5)])  # residual: h + FFN(h)
box(50, 18.5, 40, 7, "norm2", params_of(f"{layer}.norm2").replace("\n", "   ") + "   " + eps)
arrow(50, 22.9, 50, 22)
# after the last layer: the pooler on the [CLS] token
arrow(50, 15, 50, 6, f"last_hidden_state [B, L, {H}]  (take [:, 0], the [CLS] token)")
box(50, 2, 44, 7, "pooler.dense", params_of("pooler.dense").replace("\n", "   ") + "   then tanh")
arrow(50, -1.5, 50, -5.5, f"pooler_output [B, {H}]")

# Every name drawn is a key of the state dict, and every key is drawn (layer 0 standing for each layer).
assert drawn and all(name in state for name in drawn), [n for n in drawn if n not in state]
layer_keys = {k.split(".", 3)[3] for k in state if k.startswith("encoder.layers.0.")}
assert all({k.split(".", 3)[3] for k in state if k.startswith(f"encoder.layers.{i}.")} == layer_keys
           for i in range(n_layers))  # fmt: skip
assert set(drawn) == {k for k in state if not k.startswith("encoder.layers.") or k.startswith("encoder.layers.0.")}
fig.tight_layout()
fig.savefig(FIGURES / "architecture.png", dpi=110)
print(f"{len(drawn)} parameter names drawn, each a key of ErnieMModel(config).state_dict()")

# %% [markdown]
# ## The model, from scratch
#
# Everything below uses only NumPy and `erf`: no import from erniem-np's model. Names follow the checkpoint.
# The three building blocks, each as both references compute it:
#
# $$\mathrm{Linear}(x) = x W^\top + b \qquad (W \text{ stored } [\text{out}, \text{in}], \text{ torch's layout})$$
#
# $$\mathrm{LN}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}} \odot \gamma + \beta, \qquad
# \mu = \frac{1}{H}\sum_i x_i, \quad \sigma^2 = \frac{1}{H}\sum_i (x_i - \mu)^2, \quad \varepsilon = 10^{-5}$$
#
# $$\mathrm{GELU}(x) = \tfrac{1}{2}\, x \left(1 + \mathrm{erf}\!\left(\frac{x}{\sqrt{2}}\right)\right)$$
#
# GELU is the exact form, with the error function, in both references (HF `ACT2FN["gelu"]`, Paddle
# `F.gelu(approximate=False)`); $\mathrm{GELU}(1) = 0.8413447$. The variance is the biased one.


# %%
def linear(x, name):
    return x @ W[f"{name}.weight"].T + W[f"{name}.bias"]


def layer_norm(x, name, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased: divided by H
    return (x - mean) / np.sqrt(var + eps) * W[f"{name}.weight"] + W[f"{name}.bias"]


def gelu(x):  # the exact GELU, as both references use
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


assert round(float(gelu(1.0)), 7) == 0.8413447

# %% [markdown]
# The forward pass, with the names of the figure. Embeddings (chapter 2), with $\mathrm{pos}$ the 0-based
# position ids of the case:
#
# $$x^{(0)} = \mathrm{LN}_{\texttt{embeddings.layer\_norm}}\big(W_{word}[\mathrm{ids}] +
# W_{pos}[\mathrm{pos} + 2]\big)$$
#
# then, for each layer $i = 0 \dots N-1$ (prefix `encoder.layers.{i}`), attention as in chapter 3:
# $Q = x W_q^\top + b_q$ (`self_attn.self_attn.q_proj`), $K$ and $V$ likewise (`k_proj`, `v_proj`), each split
# into $n_h$ heads of size $d$; HF's scaling; an explicit 2-D mask,
# $M_{b,j} = (1 - m_{b,j}) \cdot \text{float32 min}$:
#
# $$\mathrm{Attn}(x) = \big[\mathrm{softmax}\big(Q_h K_h^\top / \sqrt{d} + M\big)\, V_h\big]_{h=1}^{n_h}
# W_o^\top + b_o$$
#
# $$h = \mathrm{LN}_{\texttt{norm1}}\big(x + \mathrm{Attn}(x)\big)$$
#
# $$x^{(i+1)} = \mathrm{LN}_{\texttt{norm2}}\big(h + \mathrm{GELU}(h W_1^\top + b_1)\, W_2^\top + b_2\big)$$
#
# with $W_o$ = `self_attn.out_proj.weight` $[H, H]$, $W_1$ = `linear1.weight` $[F, H]$, $W_2$ = `linear2.weight`
# $[H, F]$; and last the pooler and the sequence-classification head (whose weights this bundle stores as
# `seq_cls.classifier`):
#
# $$p = \tanh\big(x^{(N)}_{:,0}\, W_d^\top + b_d\big), \qquad z = p\, W_c^\top + b_c$$
#
# with $W_d$ = `pooler.dense.weight` $[H, H]$ and $W_c$ = `classifier.weight` $[N_{labels}, H]$. The port records
# each result under its probe name: the core probes and, for the feed-forward block, the debug ones.


# %%
def port_forward(input_ids, attention_mask, position_ids, activation=gelu):
    """Our port: the probes of one case, by name."""
    probes = {}
    nh = cfg["num_attention_heads"]
    B, L = input_ids.shape
    x = W["embeddings.word_embeddings.weight"][input_ids] + W["embeddings.position_embeddings.weight"][position_ids + 2]
    x = probes["emb.out"] = layer_norm(x, "embeddings.layer_norm")  # [B, L, H]
    mask = (1.0 - attention_mask[:, None, None, :]) * np.finfo(np.float32).min  # [B, 1, 1, L]
    for i in range(cfg["num_hidden_layers"]):
        p, name = f"encoder.layers.{i}", f"layer.{i:02d}"  # parameter prefix, probe prefix

        def heads(t):  # [B, L, H] -> [B, nh, L, d]
            return t.reshape(B, L, nh, -1).transpose(0, 2, 1, 3)

        q, k, v = (heads(linear(x, f"{p}.self_attn.self_attn.{proj}")) for proj in ("q_proj", "k_proj", "v_proj"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs = probes[f"{name}.attn.probs"] = probs / probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(B, L, -1)  # [B, nh, L, d] -> [B, L, H]
        x = probes[f"{name}.norm1.out"] = layer_norm(x + linear(context, f"{p}.self_attn.out_proj"), f"{p}.norm1")
        up = probes[f"{name}.ffn.up"] = linear(x, f"{p}.linear1")  # [B, L, H] -> [B, L, F]
        act = probes[f"{name}.ffn.act"] = activation(up)
        down = probes[f"{name}.ffn.down"] = linear(act, f"{p}.linear2")  # [B, L, F] -> [B, L, H]
        x = probes[f"{name}.out"] = layer_norm(x + down, f"{p}.norm2")  # post-LN: residual, then norm
    pooled = probes["pooler.out"] = np.tanh(linear(x[:, 0], "pooler.dense"))  # [B, L, H] -> [B, H]
    probes["head.seq_cls.logits"] = linear(pooled, "seq_cls.classifier")
    return probes


def candidate(**kw):
    """A candidate bundle: <case>/<probe> -> array, for every case of the reference."""
    out = {}
    for case in bundle.case_names():
        for probe, value in port_forward(**bundle.inputs(case), **kw).items():
            out[f"{case}/{probe}"] = value.astype(np.float32)
    return out


# %% [markdown]
# ## Compare, probe by probe
#
# `compare_bundles` walks the probes in forward order, computes the error statistics of each, and names the
# first one outside the profile's tolerance. Our port computes the base model and the sequence-classification
# head, so we compare those probes (a full port would also write the other heads' logits).

# %%
compared = ["emb.out", "layer.*", "pooler.out", "head.seq_cls.*"]
good = candidate()
report = compare_bundles(bundle, good, probes=compared, tier="core")
print(report.to_text())
assert report.passed

# %% [markdown]
# ## A bug, and where the comparison finds it
#
# Now the same port with the tanh approximation of GELU (`gelu_new`, what many frameworks call "fast GELU"),
# a classic porting slip:
#
# $$\mathrm{GELU}_{\tanh}(x) = \tfrac{1}{2}\, x \left(1 + \tanh\!\left(\sqrt{2/\pi}\,\big(x + 0.044715\,
# x^3\big)\right)\right)$$
#
# It differs from the exact GELU by at most about $5 \times 10^{-4}$ (exercise 3 finds where).


# %%
def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


buggy = candidate(activation=gelu_tanh)
bad_report = compare_bundles(bundle, buggy, probes=compared, tier="core")
assert not bad_report.passed
first = bad_report.first_divergence
print("first diverging probe:", first.case, first.probe)
print("hints:", bad_report.hints)
assert first.probe == "layer.00.out"  # the embeddings and layer 0's attention are still right

# %% [markdown]
# The error per probe, in forward order, for both ports: the correct port stays at float32 rounding; the
# buggy one jumps at the first FFN and carries the error through every later layer. Before drawing we check
# that: every probe of the good port is within 1e-5, and the bad port's error at `layer.00.out` is at least
# 100 times the good port's.

# %%
case = "c01_batch_pad"
order = ["emb.out"] + [f"layer.{i:02d}.{s}" for i in range(cfg["num_hidden_layers"]) for s in ("attn.probs", "out")]
order += ["pooler.out", "head.seq_cls.logits"]
valid = bundle.inputs(case)["attention_mask"].astype(bool)


def max_error(cand, probe):
    ref, got = bundle.get(case, probe), cand[f"{case}/{probe}"]
    err = np.abs(ref - got)
    if probe.endswith("attn.probs"):  # [B, nh, L, L]: the valid query rows
        err = err.transpose(0, 2, 1, 3)[valid]
    elif err.ndim == 3:  # [B, L, H]: the valid tokens (padding rows are not compared)
        err = err[valid]
    return float(err.max())


good_err = [max_error(good, p) for p in order]
bad_err = [max_error(buggy, p) for p in order]
assert max(good_err) < 1e-5, good_err
assert bad_err[order.index("layer.00.out")] > 100 * good_err[order.index("layer.00.out")]

fig, ax = plt.subplots(figsize=(8, 3.5))
ax.semilogy(order, np.maximum(good_err, 1e-9), "o-", label="the port (exact GELU)")
ax.semilogy(order, np.maximum(bad_err, 1e-9), "s-", color="tab:red", label="the port with tanh GELU")
ax.axhline(5e-5, color="gray", linestyle="--", label="fp32 profile, hidden states (atol)")
ax.set_ylabel("max |error| vs the bundle")
ax.set_title(f"case {case}: error per probe, in forward order")
plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "04_error_per_layer.png", dpi=100)

# %% [markdown]
# The core probes say *which layer*; the *debug* tier (q/k/v, scores, context, `norm1.out`, the FFN's up,
# activation and down of every layer) says *which step* of it. Our port records the FFN's debug probes too
# (exercise 3 uses them); chapter 7 and `docs/parity-testing.md` show how a port in another language writes
# them.
#
# ## Exercises
#
# 1. **Count the parameters.** From the figure, write the number of parameters of the bare encoder with its
#    pooler as a formula in $V, T, H, F$ and the number of layers $N$. Check it on this configuration and on
#    ErnieM-base ($V = 250002$, $T = 514$, $H = 768$, $F = 3072$, $N = 12$). Which term dominates?
# 2. **Pre-LN.** A port normalises before each block, $h = x + \mathrm{Attn}(\mathrm{LN}_1(x))$,
#    $y = h + \mathrm{FFN}(\mathrm{LN}_2(h))$, with the same weights. Which core probe diverges first, and why
#    that one?
# 3. **The debug tier.** Compare the tanh-GELU port with `tier="debug"` (it records `norm1.out`, `ffn.up`,
#    `ffn.act` and `ffn.down`). Which probe diverges first now, and what does the comparator suggest? Where on
#    the real line is $|\mathrm{GELU}(x) - \mathrm{GELU}_{\tanh}(x)|$ largest, and how large?

# %% [markdown]
# ### Answers
#
# (Spoilers: the next cell is collapsed in Jupyter; it asserts them.)

# %% jupyter={"source_hidden": true} tags=["answers"]
# 1. embeddings: V H + T H + 2 H (two tables, layer_norm); per layer: 4 (H^2 + H) for q/k/v/out_proj,
#    (F H + F) + (H F + H) for linear1/linear2, 4 H for norm1/norm2; the pooler: H^2 + H.


def n_parameters(V, T, H, F, N):
    return V * H + T * H + 2 * H + N * (4 * H * H + 2 * H * F + F + 9 * H) + H * H + H


base = ErnieMConfig()  # the defaults are ErnieM-base's sizes
for c in (config, base):
    counted = sum(math.prod(shape) for shape in base_parameter_shapes(c).values())
    formula = n_parameters(c.vocab_size, c.max_position_embeddings, c.hidden_size, c.intermediate_size,
                           c.num_hidden_layers)  # fmt: skip
    assert counted == formula, (counted, formula)
assert n_parameters(250002, 514, 768, 3072, 12) == 278_042_880  # docs/reference.md#c3-named-checkpoints
word_share = 250002 * 768 / 278_042_880
layer_share = (n_parameters(250002, 514, 768, 3072, 12) - n_parameters(250002, 514, 768, 3072, 0)) / 278_042_880
print(f"1. {n_parameters(250002, 514, 768, 3072, 12):,} parameters at base size: the word table (V H) alone is "
      f"{word_share:.0%} of them, the 12 layers {layer_share:.0%}")  # fmt: skip
assert word_share > 0.65 and layer_share < 0.35


# 2. Pre-LN: layer 0's attention already sees LN1(emb.out) instead of emb.out, so its probabilities diverge.
def pre_ln_forward(input_ids, attention_mask, position_ids):
    probes = {}
    nh = cfg["num_attention_heads"]
    B, L = input_ids.shape
    x = W["embeddings.word_embeddings.weight"][input_ids] + W["embeddings.position_embeddings.weight"][position_ids + 2]
    x = probes["emb.out"] = layer_norm(x, "embeddings.layer_norm")
    mask = (1.0 - attention_mask[:, None, None, :]) * np.finfo(np.float32).min
    for i in range(cfg["num_hidden_layers"]):
        p, name = f"encoder.layers.{i}", f"layer.{i:02d}"
        a = layer_norm(x, f"{p}.norm1")  # the bug: normalise first
        q, k, v = (linear(a, f"{p}.self_attn.self_attn.{proj}").reshape(B, L, nh, -1).transpose(0, 2, 1, 3)
                   for proj in ("q_proj", "k_proj", "v_proj"))  # fmt: skip
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs = probes[f"{name}.attn.probs"] = probs / probs.sum(-1, keepdims=True)
        x = x + linear((probs @ v).transpose(0, 2, 1, 3).reshape(B, L, -1), f"{p}.self_attn.out_proj")
        x = probes[f"{name}.out"] = x + linear(gelu(linear(layer_norm(x, f"{p}.norm2"), f"{p}.linear1")),
                                               f"{p}.linear2")  # fmt: skip
    pooled = probes["pooler.out"] = np.tanh(linear(x[:, 0], "pooler.dense"))
    probes["head.seq_cls.logits"] = linear(pooled, "seq_cls.classifier")
    return probes


pre_ln = {f"{case}/{probe}": value.astype(np.float32)
          for case in bundle.case_names()
          for probe, value in pre_ln_forward(**bundle.inputs(case)).items()}  # fmt: skip
pre_ln_report = compare_bundles(bundle, pre_ln, probes=compared, tier="core")
print("2. pre-LN: first diverging probe", pre_ln_report.first_divergence.probe)
assert pre_ln_report.first_divergence.probe == "layer.00.attn.probs"

# 3. The debug tier names the activation itself; the two GELUs differ by up to about 4.7e-4, near |x| = 2.7.
debug_report = compare_bundles(bundle, buggy, probes=compared, tier="debug")
print("3. debug tier: first diverging probe", debug_report.first_divergence.probe, "| hint:", debug_report.hints[0])
assert debug_report.first_divergence.probe == "layer.00.ffn.act" and "tanh approximation" in debug_report.hints[0]
assert compare_bundles(bundle, good, probes=compared, tier="debug").passed  # the exact port passes it too
grid = np.linspace(-8, 8, 160_001)
gap = np.abs(gelu(grid) - gelu_tanh(grid))
where = abs(grid[gap.argmax()])
print(f"   max |GELU - GELU_tanh| = {gap.max():.2e} at |x| = {where:.2f}")
assert 4e-4 < gap.max() < 5e-4 and 2.5 < where < 2.9

# %% [markdown]
# **Next:** chapter 5, the heads and tasks.
