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
# The code this chapter explains: `erniem_np/layers.py` (`encoder_layer`, `pooler`, `gelu`) and
# `erniem_np/model.py` (`ErnieMPreTrainedModel.encode`, the forward pass top to bottom); the parity toolkit in
# `erniem_np/parity/` (`load_bundle`, `compare_bundles`) and `docs/parity-testing.md`.
#
# With embeddings (chapter 2) and attention (chapter 3) in hand, the rest of ErnieM is short. Each of the
# encoder's layers is **post-LayerNorm**, as in the original Transformer and BERT:
#
#     x = LayerNorm1(x + Attention(x))
#     x = LayerNorm2(x + Linear2(GELU(Linear1(x))))
#
# (pre-LN models, like GPT-2, normalise *before* each block instead; a port that mixes them up fails at the
# first layer). After the last layer, the pooler takes the `[CLS]` token: `tanh(dense(h[:, 0]))`, and the heads
# of chapter 5 sit on top.
#
# In this chapter we write the whole model from scratch as a port would, in about thirty lines of NumPy, and
# test it the way a port should be tested: against a **golden bundle**, the inputs and every intermediate
# result of a reference run, compared probe by probe.

# %%
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
from scipy.special import erf

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
# ## The model, from scratch
#
# Everything below uses only NumPy and `erf`: no import from erniem-np's model. Names follow the checkpoint.


# %%
def linear(x, name):
    return x @ W[f"{name}.weight"].T + W[f"{name}.bias"]


def layer_norm(x, name, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * W[f"{name}.weight"] + W[f"{name}.bias"]


def gelu(x):  # the exact GELU, as both references use
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def port_forward(input_ids, attention_mask, position_ids, activation=gelu):
    """Our port: the core probes of one case, by name."""
    probes = {}
    nh = cfg["num_attention_heads"]
    B, L = input_ids.shape
    x = W["embeddings.word_embeddings.weight"][input_ids] + W["embeddings.position_embeddings.weight"][position_ids + 2]
    x = probes["emb.out"] = layer_norm(x, "embeddings.layer_norm")  # [B, L, H]
    mask = (1.0 - attention_mask[:, None, None, :]) * np.finfo(np.float32).min  # [B, 1, 1, L]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layers.{i}"

        def heads(t):  # [B, L, H] -> [B, nh, L, d]
            return t.reshape(B, L, nh, -1).transpose(0, 2, 1, 3)

        q, k, v = (heads(linear(x, f"{p}.self_attn.self_attn.{n}_proj")) for n in "qkv")
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs = probes[f"layer.{i:02d}.attn.probs"] = probs / probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(B, L, -1)
        x = layer_norm(x + linear(context, f"{p}.self_attn.out_proj"), f"{p}.norm1")  # post-LN
        x = layer_norm(x + linear(activation(linear(x, f"{p}.linear1")), f"{p}.linear2"), f"{p}.norm2")
        probes[f"layer.{i:02d}.out"] = x
    pooled = probes["pooler.out"] = np.tanh(linear(x[:, 0], "pooler.dense"))
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
# a classic porting slip: it differs from the exact GELU by at most about 5e-4.


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
# With the *debug* tier (the q/k/v, scores, context, FFN up/activation/down of every layer), the comparator
# narrows it down to the exact sub-layer, `layer.00.ffn.act`; chapter 7 and `docs/parity-testing.md` show how
# a port in another language writes those.
#
# **Next:** chapter 5, the heads and tasks.
