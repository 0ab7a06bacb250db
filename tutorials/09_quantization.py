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
# # 9. Int8 quantization from scratch: scales, zero points, the exact integer product, the saturation trap, the VNNI tile
#
# The code this chapter explains: `kernels/qgemm.py` (`quantize_weight`, `quantize_rows_ref`, `qmatmul_ref`,
# `qlinear_ref`: the NumPy twins; `PackedInt8`, `pack`, `micro_tile` and its LLVM IR tiles `_tile_intrinsic` /
# `_emit_tile`, `_qgemm`, `qlinear`, `supported_isas`, `int8_isa`), `erniem_np/quantized.py` (the int8 layer set:
# `Int8Rows`, `load_parameters`, `encoder_layer`), `docs/quantization.md` (the scheme, accuracy, the layer-by-layer
# report) and `scripts/bench/int8_accuracy.py`. Installed: `erniem_np.kernels.qgemm`, `erniem_np.quantized`.
#
# An int8 model stores each big weight as one byte per value plus one float32 scale per row, and runs its Linear
# layers on the CPU's integer multiply-add instructions. Everything here runs on the bundled language-ID model
# (trained: 2 layers, hidden 128, FFN 512, 31 languages), because random weights say nothing about quantization
# error: their activations have none of the structure (skewed GELU outputs, rows of very different sizes) that
# makes it hard or easy.

# %%
import inspect
import json
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numba
import numpy as np
from erniem_np.kernels import qgemm
from erniem_np.kernels.norm import gelu_ref
from erniem_np.kernels.settings import JIT
from numba import njit

from erniem_np import ErnieMForSequenceClassification, ErnieMTokenizer, layers
from erniem_np.bundled import LANGID_MODEL
from erniem_np.parameters import INT8_LINEARS, SCALE_SUFFIX
from erniem_np.parity.compare import probe_stats
from erniem_np.parity.schema import token_axis
from erniem_np.quantized import Int8Rows

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
COMPILED = not numba.config.DISABLE_JIT  # NUMBA_DISABLE_JIT=1 runs every kernel as Python
ISAS = qgemm.supported_isas()  # the int8 instruction sets this CPU has, best first ([] : the NumPy twin runs)
print("int8 instruction sets on this CPU:", ISAS or "none (the NumPy twin runs)", "| in use:", qgemm.int8_isa())

fp32 = ErnieMForSequenceClassification.from_pretrained(LANGID_MODEL)  # the numba float32 layers
int8 = ErnieMForSequenceClassification.from_pretrained(LANGID_MODEL, quantize="int8")  # the same file, int8 at load
tok = ErnieMTokenizer.from_pretrained(LANGID_MODEL)
with open(Path(LANGID_MODEL) / "heldout_sample.jsonl", encoding="utf-8") as f:
    heldout = [json.loads(line) for line in f]  # 20 lines per language, in language order
one_per_language = [r["text"] for r in heldout[::20]]
enc = tok(one_per_language, padding=True, truncation=True, max_length=128, return_tensors="np")
valid = enc["attention_mask"].astype(bool)  # [B, L]: the real tokens
f32_probes = {}  # every intermediate the float32 layers record, by name (section 4 says more)
fp32(enc["input_ids"], attention_mask=enc["attention_mask"], probes=f32_probes)
print(f"{len(one_per_language)} held-out lines, one per language: {int(valid.sum())} real tokens, "
      f"padded to {valid.shape[1]}")  # fmt: skip

# %% [markdown]
# ## 0. What is int8 and what stays float32
#
# `quantize="int8"` picks the layer set `erniem_np/quantized.py`. Its `load_parameters` quantizes each float
# weight once, stores it as a checkpoint would (`X.weight` int8 beside `X.weight_scale` float32: what
# `state_dict()` returns), and builds the tree the layer functions take, where the six Linear layers of every
# encoder layer are `PackedInt8` (the kernel's layout, packed once) and the word-embedding table is an `Int8Rows`
# (rows dequantized at lookup). The position table, LayerNorms, biases, softmax, pooler and classifier stay
# float32: small, and the pooler and classifier are where the decision is made. The attention's two products
# round their inputs to bfloat16 where the CPU has the instruction for it (section 6), and run in float32
# elsewhere.


# %%
def leaves(tree, prefix=""):
    """(dotted name, value) for every leaf of a nested parameter tree."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)  # the layers are a list
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        yield from leaves(value, name) if isinstance(value, (dict, list)) else [(name, value)]


kinds = {}
for name, value in leaves(int8.params):
    kinds.setdefault(type(value).__name__, []).append(name)
n_layers = fp32.config.num_hidden_layers
assert kinds["Int8Rows"] == ["ernie_m.embeddings.word_embeddings.weight"]
linear_suffixes = tuple(f".{p}.weight" for p in INT8_LINEARS)  # q, k, v, out_proj, linear1, linear2
LINEARS = [n for n in fp32.state_dict() if ".encoder.layers." in n and n.endswith(linear_suffixes)]
assert sorted(kinds["PackedInt8"]) == sorted(LINEARS) and len(LINEARS) == 6 * n_layers
assert all(v.dtype == np.float32 for n, v in leaves(int8.params) if isinstance(v, np.ndarray))
stored = int8.state_dict()
for name in kinds["Int8Rows"] + kinds["PackedInt8"]:
    assert stored[name].dtype == np.int8 and stored[name + SCALE_SUFFIX].dtype == np.float32
float_bytes = sum(v.nbytes for v in fp32.state_dict().values())
int8_bytes = sum(v.nbytes for v in stored.values())
for kind, names in kinds.items():
    print(f"{kind:11} {len(names):2} parameters, e.g. {names[0]}")
print(f"parameters: {float_bytes / 1e6:.2f} MB float32, {int8_bytes / 1e6:.2f} MB int8 "
      f"({int8_bytes / float_bytes:.0%})")  # fmt: skip

# %% [markdown]
# ## 1. Scales from scratch
#
# ### Weights: symmetric, one scale per output channel
#
# Row $j$ of a weight $W \in \mathbb{R}^{N \times K}$ (`[out, in]`) gets its own scale, and its values become
# integers in $[-127, 127]$:
#
# $$s_j = \frac{\max_k |W_{jk}|}{127}, \qquad W^q_{jk} = \mathrm{round}\!\left(\frac{W_{jk}}{s_j}\right),
# \qquad W_{jk} \approx s_j\, W^q_{jk}, \qquad |W_{jk} - s_j W^q_{jk}| \le \tfrac12 s_j .$$
#
# *Symmetric*: 0.0 is code 0, and $-128$ is never used, so negating a code never overflows. `quantize_weight`
# does this a block of rows at a time. By hand, on layer 1's `linear1` (`[512, 128]`), then against the package
# and against what the int8 model stored:

# %%
W_NAME = "ernie_m.encoder.layers.1.linear1.weight"
W = fp32.state_dict()[W_NAME]  # [N, K] = [512, 128] float32
s = np.abs(W).max(axis=1) / np.float32(127)  # [N]: one scale per output channel
Wq = np.clip(np.rint(W / s[:, None]), -127, 127).astype(np.int8)
wq_pkg, sw_pkg = qgemm.quantize_weight(W)
assert np.array_equal(Wq, wq_pkg) and np.array_equal(s, sw_pkg)
assert np.array_equal(stored[W_NAME], Wq) and np.array_equal(stored[W_NAME + SCALE_SUFFIX], s)
assert np.abs(Wq).max() == 127 and Wq.min() >= -127
assert np.all(np.abs(Wq * s[:, None].astype(np.float64) - W) <= s[:, None] * (0.5 + 1e-5))  # half a step, + rounding


# %% [markdown]
# **Why per channel.** One scale for the whole tensor, $s = \max_{jk} |W_{jk}| / 127$, is set by the largest
# row; a row whose values are four times smaller then uses only about a quarter of the codes, and its relative
# rounding error is four times larger. The rows of a trained weight differ that much:


# %%
def nmse(approx, exact):
    """Normalised mean squared error: sum (approx - exact)^2 / sum exact^2."""
    approx, exact = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
    return float(np.sum((approx - exact) ** 2) / np.sum(exact**2))


def per_tensor(w):
    """Symmetric int8 with ONE scale for the whole tensor (what the package does not do), dequantized."""
    scale = np.abs(w).max() / np.float32(127)
    return np.clip(np.rint(w / scale), -127, 127) * scale


def per_channel(w):
    wq, scale = qgemm.quantize_weight(w)
    return wq * scale[:, None]


row_max = np.abs(W).max(axis=1)
err_tensor, err_channel = nmse(per_tensor(W), W), nmse(per_channel(W), W)
row_err_tensor = ((per_tensor(W) - W) ** 2).sum(1) / (W.astype(np.float64) ** 2).sum(1)
row_err_channel = ((per_channel(W) - W) ** 2).sum(1) / (W.astype(np.float64) ** 2).sum(1)
smallest = int(row_max.argmin())
codes_tensor = int(np.abs(np.rint(W[smallest] / (np.abs(W).max() / 127))).max())
print(f"{W_NAME}: row max |W| from {row_max.min():.3f} to {row_max.max():.3f} ({row_max.max() / row_max.min():.1f}x)")
print(f"NMSE per tensor {err_tensor:.2e}, per channel {err_channel:.2e}: {err_tensor / err_channel:.1f}x smaller")
print(f"the row with the smallest max uses codes up to +-{codes_tensor} per tensor, +-127 per channel")
assert err_channel < err_tensor / 2 and codes_tensor < 127 / 2
print(f"per channel is more accurate on {np.mean(row_err_channel < row_err_tensor):.0%} of the rows")

# %% [markdown]
# ### Activations: asymmetric, one scale and one zero point per row, at run time
#
# The inputs of a Linear layer are known only when a batch runs, so each row (token) is quantized then, to
# unsigned codes $0 \dots 255$. The row's range is widened to include 0, $[\ell, h] = [\min(0, \min_k x_k),
# \max(0, \max_k x_k)]$, and cut into 255 steps:
#
# $$s_x = \frac{h - \ell}{255}, \qquad z = \mathrm{round}\!\left(\frac{-\ell}{s_x}\right), \qquad
# x^q_k = \mathrm{clip}\!\left(\mathrm{round}\!\left(\frac{x_k}{s_x}\right) + z,\ 0,\ 255\right), \qquad
# x_k \approx s_x\,(x^q_k - z).$$
#
# The *zero point* $z$ is the code of 0.0, which is therefore exact (padding and zeros stay zero). By hand on
# one token's input of layer 0's `linear1` (the LayerNorm output `norm1.out`), against `quantize_rows_ref` and
# the kernel's Numba `quantize_rows` (in the layout of every instruction set: uint8, or int16 holding 0..255):

# %%
x_ln = f32_probes["layer.00.norm1.out"][valid]  # [tokens, 128]
row = x_ln[0]
lo, hi = min(row.min(), np.float32(0)), max(row.max(), np.float32(0))
sx = (hi - lo) / np.float32(255)
zx = int(np.rint(-lo / sx))
xq = np.clip(np.rint(row / sx) + zx, 0, 255).astype(np.uint8)
print(f"row range [{lo:.3f}, {hi:.3f}]: step s_x = {sx:.4f}, zero point z = {zx}, codes {xq.min()}..{xq.max()}")
ref_q, ref_s, ref_z = qgemm.quantize_rows_ref(row[None])
assert np.array_equal(ref_q[0], xq) and ref_s[0] == sx and ref_z[0] == zx
assert np.all(np.abs((xq.astype(np.float64) - zx) * sx - row) <= sx * (0.5 + 1e-5))  # half a step
with_zero = qgemm.quantize_rows_ref(np.append(row, np.float32(0))[None])  # 0.0 is already in the range
assert with_zero[0][0, -1] == zx and (int(with_zero[0][0, -1]) - zx) * sx == 0.0  # 0.0 gets code z, exactly
all_q, all_s, all_z = qgemm.quantize_rows_ref(x_ln)
for isa in qgemm.ISAS.values():  # the kernel's quantizer, in each instruction set's layout (padded to G)
    kq, ks, kz = qgemm.quantize_rows(x_ln, isa)
    assert kq.dtype == isa.x_dtype and np.array_equal(kq[:, : x_ln.shape[1]], all_q)
    assert np.array_equal(ks, all_s) and np.array_equal(kz, all_z)

# %% [markdown]
# ### Why GELU's output wants the asymmetric range
#
# GELU, $x\,\Phi(x)$, is never below its minimum $\approx -0.17$ (at $x \approx -0.75$) and is unbounded above:
# the input of the second FFN Linear (`linear2`) lives in $[-0.17, +\infty)$. A symmetric range $[-m, m]$ with
# $m = \max |x|$ spends the 127 negative codes on $[-m, 0)$, almost all of it below $-0.17$, where nothing lies;
# the asymmetric range gives the values that occur all 256 codes: its step is up to half as large, its squared
# error up to four times smaller (less for a row whose maximum is small: its few negative values then take a
# larger share of the codes, the zero point). On the model's own FFN activations, run by hand from the recorded
# `norm1.out` ($\mathrm{GELU}(\text{norm1.out}\, W_1^\top + b_1)$, chapter 4's `ffn.act`), against the LayerNorm
# output that feeds `linear1` (symmetric around 0, where the two ranges are alike):


# %%
def symmetric_rows(x):
    """Symmetric per-row int8 (codes -127..127, scale max|x| / 127), dequantized: the alternative."""
    scale = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    scale = np.where(scale > 0, scale, 1)
    return np.clip(np.rint(x / scale), -127, 127) * scale


def asymmetric_rows(x):
    q, scale, zero = qgemm.quantize_rows_ref(x)
    return (q.astype(np.float32) - zero[:, None]) * scale[:, None]


grid = np.linspace(-4, 0, 400_001)
gelu_min = float(gelu_ref(grid).min())
W1 = fp32.state_dict()["ernie_m.encoder.layers.0.linear1.weight"]  # [512, 128]
b1 = fp32.state_dict()["ernie_m.encoder.layers.0.linear1.bias"]
act = gelu_ref((x_ln @ W1.T + b1).astype(np.float64)).astype(np.float32)  # [tokens, 512]: layer 0's ffn.act
ratios = {}
for name, x in [("layer.00.norm1.out (into linear1)", x_ln), ("layer.00.ffn.act (into linear2)", act)]:
    ratios[name] = nmse(symmetric_rows(x), x) / nmse(asymmetric_rows(x), x)
    print(f"{name:34} range [{x.min():+.3f}, {x.max():+.3f}]: NMSE symmetric / asymmetric = {ratios[name]:.1f}x")
_, act_s, act_z = qgemm.quantize_rows_ref(act)
print(f"GELU minimum {gelu_min:.5f}; ffn.act: {np.mean(act < 0):.0%} of values negative, "
      f"codes below 0.0 (the zero point): {act_z.min()}..{act_z.max()} of 256, median {int(np.median(act_z))}; "
      f"a symmetric range spends 127")  # fmt: skip
assert gelu_min - 1e-6 <= act.min() < 0 and abs(gelu_min + 0.16997) < 1e-4
assert ratios["layer.00.ffn.act (into linear2)"] > 2.5 and ratios["layer.00.norm1.out (into linear1)"] < 1.5

# %% [markdown]
# The two figures, their data checked first: the spread of the row maxima (why one scale per row), and the
# FFN activations with GELU's floor (why an asymmetric range).

# %%
assert row_max.shape == (W.shape[0],) and np.all(row_max > 0) and np.isfinite(act).all()
assert np.all(np.isfinite(row_err_tensor)) and np.all(np.isfinite(row_err_channel))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
order = np.argsort(row_max)
ax1.semilogy(row_err_tensor[order], ".", ms=3, color="tab:red", label="one scale per tensor")
ax1.semilogy(row_err_channel[order], ".", ms=3, color="tab:blue", label="one scale per row (the package)")
ax1.set(xlabel="rows of linear1 (layer 1), by max |W[j]|, smallest first", ylabel="NMSE of the row")
ax1.legend()
ax2.hist(act.ravel(), bins=200, color="tab:blue", log=True)
ax2.axvline(gelu_min, color="tab:red", linestyle="--", label=f"GELU minimum {gelu_min:.3f}")
ax2.set(xlabel="GELU output (layer 0, ffn.act)", ylabel="count (log)")
ax2.legend()
fig.tight_layout()
fig.savefig(FIGURES / "09_scales.png", dpi=100)

# %% [markdown]
# ## 2. The exact integer product and the zero-point correction
#
# Put the two approximations into the Linear layer $y_{ij} = \sum_k x_{ik} W_{jk} + b_j$:
#
# $$y_{ij} \approx \sum_k s_{x,i}\,(x^q_{ik} - z_i)\; s_j W^q_{jk} + b_j
# = s_{x,i}\, s_j \Big(\underbrace{\sum_k x^q_{ik} W^q_{jk}}_{\text{integer GEMM}} - z_i\, c_j\Big) + b_j,
# \qquad c_j = \sum_k W^q_{jk} .$$
#
# The zero point leaves the inner loop: the kernel multiplies the raw codes (`uint8` x `int8`), and one product
# $z_i c_j$ per output corrects it; `colsum` $c_j$ is computed once per weight (`PackedInt8.colsum`). Everything
# inside the bracket is an integer, computed exactly. By hand with Python integers for one output, then for all,
# on the real input of layer 0's `linear2` (the GELU outputs above) and its real weight:

# %%
W2 = fp32.state_dict()["ernie_m.encoder.layers.0.linear2.weight"]  # [128, 512]
b2 = fp32.state_dict()["ernie_m.encoder.layers.0.linear2.bias"]
w2q, w2s = qgemm.quantize_weight(W2)
aq, a_s, a_z = qgemm.quantize_rows_ref(act)  # [tokens, 512] uint8, [tokens], [tokens]
i, j = 3, 7
one = sum(int(aq[i, k]) * int(w2q[j, k]) for k in range(W2.shape[1])) - int(a_z[i]) * sum(int(v) for v in w2q[j])
assert one == sum((int(aq[i, k]) - int(a_z[i])) * int(w2q[j, k]) for k in range(W2.shape[1]))  # the same sum
colsum = w2q.astype(np.int64).sum(axis=1)  # c_j
acc = aq.astype(np.int64) @ w2q.astype(np.int64).T - a_z.astype(np.int64)[:, None] * colsum[None, :]
assert acc[i, j] == one
assert np.array_equal(acc, qgemm.qmatmul_ref(aq, a_z, w2q))
for isa in [*ISAS, None]:  # each instruction set this CPU has, and the twin (isa=None: no packing)
    packed = qgemm.PackedInt8(w2q, w2s, isa=isa)
    assert np.array_equal(packed.colsum, colsum)
    raw = qgemm.qlinear(act, packed, raw=True)  # the kernel's exact integer sums, as float64
    assert np.array_equal(raw, acc), isa
print(f"output ({i}, {j}): {one}; all {acc.size} sums equal qmatmul_ref and qlinear(raw=True) on {[*ISAS, None]}")

# %% [markdown]
# Then the *epilogue*, in float32: $y_{ij} = \mathrm{float32}(\text{acc}_{ij})\, (s_{x,i}\, s_j) + b_j$, the two
# scales multiplied first (the kernel does it in a loop of its own, so every compilation of it rounds in that
# order). By hand, against the twin `qlinear_ref`, the kernel `qlinear`, and the float32 layer it replaces:

# %%
y_hand = acc.astype(np.int32).astype(np.float32) * (a_s[:, None] * w2s[None, :]) + b2
y_twin = qgemm.qlinear_ref(act, w2q, w2s, b2)
y_kernel = qgemm.qlinear(act, qgemm.PackedInt8(w2q, w2s), bias=b2)
y_float = act @ W2.T + b2
assert np.array_equal(y_hand, y_twin)
assert np.allclose(y_kernel, y_hand, rtol=1e-6, atol=1e-6)  # float32; the kernel may fuse a multiply and add
print(f"int8 linear2 against float32: NMSE {nmse(y_kernel, y_float):.2e}, max |error| "
      f"{np.abs(y_kernel - y_float).max():.4f} (outputs up to {np.abs(y_float).max():.1f})")  # fmt: skip
assert nmse(y_kernel, y_float) < 1e-3


# %% [markdown]
# ## 3. The saturation trap
#
# The obvious AVX2 instruction for this product is `vpmaddubsw`: it multiplies 32 unsigned bytes by 32 signed
# bytes and adds *adjacent pairs* into 16 signed 16-bit lanes, **with saturation**: a pair sum above 32,767 is
# clipped to 32,767. A kernel built on it then sums the int16 pairs into int32 (`vpmaddwd` by ones, `vpaddd`).
# But one pair can reach $2 \times 255 \times 127 = 64{,}770$. Emulated in NumPy, instruction by instruction:


# %%
def vpmaddubsw(u8, s8):
    """u8 x s8, adjacent pairs summed into int16 with signed saturation: [..., 2n] -> [..., n] int16."""
    p = u8.astype(np.int32) * s8.astype(np.int32)
    if p.shape[-1] % 2:  # an odd K is padded with a zero, as a kernel pads it
        p = np.concatenate([p, np.zeros(p.shape[:-1] + (1,), np.int32)], axis=-1)
    return np.clip(p[..., 0::2] + p[..., 1::2], -32768, 32767).astype(np.int16)


def saturating_dot(xq, wq, rows=32):
    """sum_k xq[i, k] wq[j, k] the vpmaddubsw way: pairs in int16 (saturating), then summed in int32."""
    return np.concatenate([vpmaddubsw(xq[i : i + rows, None, :], wq[None, :, :]).sum(axis=-1, dtype=np.int32)
                           for i in range(0, len(xq), rows)])  # fmt: skip


# A token whose two largest inputs meet the two largest weights of an output row, through the real quantizers:
x_trap = np.array([[4.0, 4.0, 0.5, -0.3, 1.0, -1.0, 0.2, 0.0]], dtype=np.float32)
w_trap = np.array([[0.9, 0.9, -0.2, 0.1, 0.3, 0.05, -0.4, 0.6]], dtype=np.float32)
tq, t_s, t_z = qgemm.quantize_rows_ref(x_trap)
twq, tws = qgemm.quantize_weight(w_trap)
print("codes:", tq[0], "zero point", t_z[0], "| weight codes:", twq[0])
pairs = vpmaddubsw(tq, twq)
exact = qgemm.qmatmul_ref(tq, t_z, twq)
clipped = saturating_dot(tq, twq) - t_z[:, None] * twq.astype(np.int32).sum(1)
assert tq[0, 0] == tq[0, 1] == 255 and twq[0, 0] == twq[0, 1] == 127
assert 255 * 127 * 2 == 64_770 and pairs[0, 0] == np.iinfo(np.int16).max  # the first pair clips
assert int(clipped[0, 0]) == int(exact[0, 0]) - (64_770 - 32_767)
y_exact, y_clipped = (float(v[0, 0]) * t_s[0] * tws[0] for v in (exact, clipped))
print(f"vpmaddubsw pairs: {pairs[0]}; integer sum exact {exact[0, 0]}, vpmaddubsw {clipped[0, 0]}")
print(f"y: float32 {float(x_trap[0] @ w_trap[0]):.3f}, int8 exact {y_exact:.3f}, int8 with vpmaddubsw {y_clipped:.3f}")
assert abs(y_exact - float(x_trap[0] @ w_trap[0])) < 0.05 < abs(y_clipped - float(x_trap[0] @ w_trap[0]))

# %% [markdown]
# This is no corner case. With asymmetric activations, a row's positive values sit near code 255 (the zero
# point of a LayerNorm output is near 128), and trained weights have large codes: on the real inputs of the
# model's FFN layers, the saturating product gets many outputs wrong.

# %%
inputs = {(0, "linear1"): x_ln, (0, "linear2"): act, (1, "linear1"): f32_probes["layer.01.norm1.out"][valid]}
for (layer, part), xr in inputs.items():
    wr, _ = qgemm.quantize_weight(fp32.state_dict()[f"ernie_m.encoder.layers.{layer}.{part}.weight"])
    rq, _, rz = qgemm.quantize_rows_ref(xr)
    wrong = saturating_dot(rq, wr) != qgemm.qmatmul_ref(rq, np.zeros_like(rz), wr)
    print(f"layer {layer} {part:7}: vpmaddubsw would get {wrong.mean():6.2%} of {wrong.size} integer sums wrong")
    assert wrong.any()

# %% [markdown]
# The package never uses `vpmaddubsw`. Every instruction its tiles use sums in 32 bits, and none saturates:
#
# | instruction set | per int32 lane | largest intermediate | bound |
# |---|---|---|---|
# | `vnni512`, `vnni256`: `vpdpbusd` (zmm / ymm) | 4 products u8 x s8 (each fits 16 bits) added to the int32 accumulator, wrapping, never saturating | $4 \cdot 255 \cdot 127 = 129{,}540$ | $< 2^{31}$: no sum is kept in 16 bits |
# | `avx2`: `vpmovsxbw` + `vpmaddwd` + `vpaddd` | the int8 weights widened to int16, 2 products int16 x int16 into int32 | $2 \cdot 255 \cdot 127 = 64{,}770$ | $< 2^{31}$ (`vpmaddwd` can overflow only for $(-32768)^2 \cdot 2$) |
#
# (`vpdpbusd` is VNNI's non-saturating form; `vpdpbusds` would saturate.) What is left is the whole sum, which
# every instruction set accumulates in int32 and the zero-point correction keeps in the same range:
#
# $$|\text{acc}_{ij}| = \Big|\sum_{k=1}^{K} (x^q_{ik} - z_i)\, W^q_{jk}\Big| \le 255 \cdot 127 \cdot K < 2^{31}
# \iff K \le 66{,}311 ,$$
#
# and `MAX_K` = 66,000 is the limit `PackedInt8` enforces. The trap input through every instruction set this
# CPU has, and the largest sums the scheme allows (all codes 255 against weights of 127, $K$ = 4099), where the
# int16 emulation is far off and the kernel is exact:

# %%
assert 2 * 255 * 127 > np.iinfo(np.int16).max and 4 * 255 * 127 < 2**31 and 2 * 255 * 127 < 2**31
assert 255 * 127 * qgemm.MAX_K < 2**31 - 1
K_big = 4099
x_big = np.full((3, K_big), 2.5, dtype=np.float32)  # an all-positive row: zero point 0, every code 255
w_big = np.full((5, K_big), 0.7, dtype=np.float32)  # every weight code 127
bq, _, bz = qgemm.quantize_rows_ref(x_big)
bwq, bws = qgemm.quantize_weight(w_big)
assert bq.min() == 255 and bz.max() == 0 and bwq.min() == 127
big_exact = qgemm.qmatmul_ref(bq, bz, bwq)
assert big_exact.max() == 255 * 127 * K_big and saturating_dot(bq, bwq).max() == 32_767 * (K_big // 2) + 255 * 127
for isa in [*ISAS, None]:  # None: the NumPy twin, as on a CPU with none of them
    for xin, win, want in [(x_trap, w_trap, exact), (x_big, w_big, big_exact)]:
        got = qgemm.qlinear(xin, qgemm.PackedInt8.quantize(win, isa=isa), raw=True)
        assert np.array_equal(got, want), isa
print(f"{255 * 127 * K_big:,} = 255 x 127 x {K_big}: exact on {[*ISAS, None]}; "
      f"vpmaddubsw would give {int(saturating_dot(bq, bwq).max()):,}")  # fmt: skip

# %% [markdown]
# ## 4. The error, layer by layer, on the language-ID model
#
# `forward(..., probes={})` fills a dict with every intermediate the layers record, under the parity-bundle
# names, in forward order: the int8 layers record the same names as the float32 ones. For each probe the parity
# toolkit's `probe_stats` (what `erniem-np parity compare` runs) gives the error on the real tokens only; its
# normalised squared error and cosine distance (the first checked by hand on one probe):
#
# $$\text{NMSE} = \frac{\sum (\hat y - y)^2}{\sum y^2}, \qquad 1 - \cos = 1 - \frac{\hat y \cdot y}{\|\hat y\|\,\|y\|}$$

# %%
ref_probes, q_probes = f32_probes, {}  # the float32 probes recorded at the start
int8(enc["input_ids"], attention_mask=enc["attention_mask"], probes=q_probes)
assert list(ref_probes) == list(q_probes)  # the same probes, in the same (forward) order
stats = {}
for name, ref_value in ref_probes.items():
    axis = token_axis(name)
    stats[name] = probe_stats(ref_value, q_probes[name], atol=1e-4, rtol=1e-4, valid=valid, axis=axis)
by_hand = nmse(q_probes["layer.00.out"][valid], ref_probes["layer.00.out"][valid])
assert abs(by_hand - stats["layer.00.out"]["nmse"]) <= 1e-9 * by_hand
for name, st in stats.items():
    print(f"{name:22} max |error| {st['max_abs']:.1e}   1 - cos {st['cos_dist']:.1e}   NMSE {st['nmse']:.1e}")

# %% [markdown]
# The error has its full size at the first probe, `emb.out`, before any int8 Linear layer has run: it comes from
# the int8 word table (`Int8Rows`, one scale per token row of 128 values). The word table alone explains it: the
# float32 layers given the dequantized table produce the int8 model's `emb.out`. After that the error of the
# hidden states does not grow: each LayerNorm rescales it, and the quantized Linear layers add about as much as
# they pass on (each LayerNorm's output, the pooler and the logits stay at or below the error of `emb.out`; the
# attention's q, k and v, fresh out of int8 Linear layers, carry a little more).

# %%
table = int8.base_params["embeddings"]["word_embeddings"]["weight"]
assert isinstance(table, Int8Rows)
ids = enc["input_ids"]
assert np.array_equal(table[ids], stored["ernie_m.embeddings.word_embeddings.weight"][ids] *
                      stored["ernie_m.embeddings.word_embeddings.weight_scale"][ids][..., None])  # fmt: skip
emb = fp32.base_params["embeddings"]  # float32 position table and LayerNorm; the dequantized word table:
emb_table_only = layers.embeddings(ids, layers.default_position_ids(*ids.shape), {"weight": np.asarray(table)},
                                   emb["position_embeddings"], emb["layer_norm"], fp32.config.layer_norm_eps)  # fmt: skip
assert np.allclose(emb_table_only, q_probes["emb.out"], atol=1e-5)
emb_nmse = stats["emb.out"]["nmse"]
assert all(stats[n]["nmse"] <= emb_nmse for n in stats if n.endswith(".out") or n.startswith(("pooler", "head")))
print(f"emb.out: int8 model NMSE {emb_nmse:.2e}; float32 layers with the int8 word table "
      f"{nmse(emb_table_only[valid], ref_probes['emb.out'][valid]):.2e}")  # fmt: skip

names = list(stats)
values = np.array([[stats[n]["nmse"], stats[n]["cos_dist"]] for n in names])
assert np.all(np.isfinite(values)) and np.all(values > 0) and values.max() < 1e-3  # docs/quantization.md's envelope
assert names[0] == "emb.out" and names[-1] == "head.seq_cls.logits"
fig, ax = plt.subplots(figsize=(11, 4))
xs = np.arange(len(names))
ax.bar(xs - 0.2, values[:, 0], width=0.4, label="NMSE", color="tab:blue")
ax.bar(xs + 0.2, values[:, 1], width=0.4, label="1 - cos", color="tab:orange")
ax.set(yscale="log", ylabel="int8 against float32 (log)", title="the error of each probe, in forward order")
ax.set_xticks(xs, names, rotation=45, ha="right", fontsize=8)
ax.legend()
fig.tight_layout()
fig.savefig(FIGURES / "09_error_by_probe.png", dpi=100)

# %% [markdown]
# ### Accuracy on the held-out lines
#
# What matters in the end is the decision. `scripts/bench/int8_accuracy.py` runs all 620 held-out lines
# (`heldout_sample.jsonl` beside the model, 20 per language) through both models, and `docs/quantization.md`
# quotes its table. To keep this chapter quick, 5 lines per language (155), in batches of 32 padded to their
# longest line as the script does, but ordered by length so that a batch pads little (each token is quantized on
# its own, so the batches do not change the results):


# %%
def batch_logits(model, texts, batch=32):
    out = []
    for start in range(0, len(texts), batch):
        e = tok(texts[start : start + batch], padding=True, truncation=True, max_length=128, return_tensors="np")
        out.append(model(e["input_ids"], attention_mask=e["attention_mask"]).logits)
    return np.concatenate(out)


subset = sorted(heldout[::4], key=lambda r: len(r["text"]))
texts, gold = [r["text"] for r in subset], np.array([r["language"] for r in subset])
labels = fp32.config.id2label
l32, l8 = batch_logits(fp32, texts), batch_logits(int8, texts)
p32, p8 = (np.array([labels[int(k)] for k in lg.argmax(1)]) for lg in (l32, l8))
acc32, acc8, agree = (p32 == gold).mean(), (p8 == gold).mean(), (p8 == p32).mean()
print(f"{len(subset)} lines: accuracy float32 {acc32:.2%}, int8 {acc8:.2%}; top-1 agreement {agree:.2%}; "
      f"largest logit difference {np.abs(l32 - l8).max():.4f} (logits up to {np.abs(l32).max():.1f})")  # fmt: skip
assert agree >= 0.98 and abs(acc32 - acc8) <= 0.02 and np.abs(l32 - l8).max() < 0.25

# %% [markdown]
# ## 5. The kernel
#
# ### The packed layout
#
# A tile computes `ROWS` rows of $x$ against `COLS` = `NV` x `LANES` output columns, over groups of $G$ values
# of $K$: $G = 4$ for `vpdpbusd` (4 bytes of one column per int32 lane), $G = 2$ for `vpmaddwd` (2 int16 per
# lane). `pack` lays a weight out as `[N / COLS strips, K / G groups, COLS, G]`, zero-padded (zeros add
# nothing), so that one vector load reads the $G$ values of group $g$ for `LANES` consecutive columns:
#
# $$\text{packed}[s, g, c, t] = W^q[s \cdot \text{COLS} + c,\; g\,G + t] .$$

# %%
for name, isa in qgemm.ISAS.items():
    P = qgemm.pack(w2q, isa)
    N, K = w2q.shape
    assert P.shape == (-(-N // isa.COLS), -(-K // isa.G), isa.COLS, isa.G) and P.dtype == np.int8
    s_, g_, c_, t_ = np.indices(P.shape)
    n_, k_ = s_ * isa.COLS + c_, g_ * isa.G + t_
    inside = (n_ < N) & (k_ < K)
    assert np.array_equal(P[inside], w2q[n_[inside], k_[inside]]) and not P[~inside].any()
    print(f"{name:8} G={isa.G} LANES={isa.LANES} NV={isa.NV} ROWS={isa.ROWS}: packed {P.shape}, a vector load reads "
          f"{isa.LANES * isa.G} bytes = {isa.LANES} columns x {isa.G} values of K")  # fmt: skip

# %% [markdown]
# ### The register tile, emulated instruction by instruction
#
# Per group $g$: load the strip's `NV` weight vectors; for each of the `ROWS` rows, broadcast its 4 bytes of $x$
# (4 uint8 codes for `vpdpbusd`; 2 codes stored as int16 for `vpmaddwd`) to every lane, and multiply-add into
# that row's `NV` int32 accumulators. In NumPy, with each instruction written out, against `micro_tile` (whose
# NumPy body is the twin of the compiled tile):


# %%
def vpdpbusd(acc, x4_u8, w_s8):
    """acc[l] += sum_t x4[t] * w[l, t]: one u8 group of 4 (broadcast) against LANES x 4 s8, in int32, no saturation."""
    return acc + (x4_u8.astype(np.int32)[None, :] * w_s8.astype(np.int32)).sum(axis=1, dtype=np.int32)


def vpmaddwd(x2_i16, w_i16):
    """[x0 * w[l, 0] + x1 * w[l, 1]] in int32: one int16 pair (broadcast) against LANES x 2 int16."""
    return (x2_i16.astype(np.int32)[None, :] * w_i16.astype(np.int32)).sum(axis=1, dtype=np.int32)


def tile_by_hand(xq_isa, i0, packed, strip, isa):
    kg = packed.shape[1]
    acc = np.zeros((isa.ROWS, isa.NV, isa.LANES), dtype=np.int32)  # the ROWS x NV registers
    for g in range(kg):
        w_vectors = [packed[strip, g, v * isa.LANES : (v + 1) * isa.LANES] for v in range(isa.NV)]  # [LANES, G]
        if isa.name == "avx2":
            w_vectors = [w.astype(np.int16) for w in w_vectors]  # vpmovsxbw
        for r in range(isa.ROWS):
            x_group = xq_isa[i0 + r, g * isa.G : (g + 1) * isa.G]  # 4 bytes, broadcast
            for v in range(isa.NV):
                if isa.name == "avx2":
                    acc[r, v] = acc[r, v] + vpmaddwd(x_group, w_vectors[v])  # + vpaddd
                else:
                    acc[r, v] = vpdpbusd(acc[r, v], x_group, w_vectors[v])
    return acc.reshape(isa.ROWS, isa.COLS)


for name, isa in qgemm.ISAS.items():
    xq_isa, _, _ = qgemm.quantize_rows(act[:16], isa)  # [16, Kp] in this instruction set's x dtype
    P = qgemm.pack(w2q, isa)
    c = np.empty((isa.ROWS, isa.COLS), dtype=np.int32)
    qgemm.micro_tile(xq_isa, 0, isa.ROWS, P, 1, P.shape[1], c, qgemm.ISA_CODES[name])  # strip 1
    assert np.array_equal(tile_by_hand(xq_isa, 0, P, 1, isa), c)
    cols = slice(isa.COLS, 2 * isa.COLS)
    assert np.array_equal(c, aq[: isa.ROWS].astype(np.int64) @ w2q[cols].astype(np.int64).T)  # before z * colsum
print("each instruction set's tile, emulated, equals micro_tile: sum_k xq wq, the zero point not yet applied")

# %% [markdown]
# In `kernels/qgemm.py`, `_tile_intrinsic(isa, dequant)` makes Numba `@intrinsic`s per instruction set and
# `_emit_products` writes their loop in LLVM IR with chapter 6's helpers: `gemm.emit_phi_loop` makes the group counter and
# the `ROWS * NV` accumulators phi nodes (so they live in registers), and its `step(g, acc)` emits the loop
# body: it loads the weight vectors (for `avx2` `sext` from `<16 x i8>` to `<16 x i16>`: a `vpmovsxbw`), splats
# 4 bytes of each row of $x$ (`gemm.emit_splat`: a `vpbroadcastd`) and calls
# `llvm.x86.avx512.vpdpbusd.{256,512}` or `llvm.x86.avx2.pmadd.wd` + `add`. From the loads of $x$ on:

# %%
emit = inspect.getsource(qgemm._emit_products).splitlines()
start = next(n for n, line in enumerate(emit) if "x_offset = " in line)
end = next(n for n, line in enumerate(emit) if "return new" in line and n > start)
print(*emit[start : end + 1], sep="\n")
tile_source = inspect.getsource(qgemm._tile_intrinsic)
assert "llvm.trap" in tile_source and "supported_isas()" in tile_source

# %% [markdown]
# `_qgemm` is compiled once per dtype of $x$ (uint8 for `vpdpbusd`, int16 for `vpmaddwd`); in it, the argument
# `code` picks the tile of the instruction set the weight was packed for. A tile whose $x$ dtype differs, or whose
# instructions the CPU lacks, compiles to a trap that is never reached. How many registers each tile holds:
# `ROWS * NV` accumulators, `NV` weight vectors and one broadcast; AVX-512 has 32 vector registers, a CPU with
# AVX2 or AVX-VNNI but not AVX-512 has 16:

# %%
for name, isa in qgemm.ISAS.items():
    registers = 32 if name == "vnni512" else 16
    live = isa.ROWS * isa.NV + isa.NV + 1 + (1 if name == "avx2" else 0)  # avx2: + vpmaddwd's product
    print(f"{name:8} {isa.ROWS} rows x {isa.COLS} columns: {isa.ROWS * isa.NV} accumulators, {live} live of "
          f"{registers} registers; {isa.ROWS * isa.NV} multiply-adds per group = {isa.ROWS * isa.COLS * isa.G} "
          f"products")  # fmt: skip
    assert live <= registers
assert (qgemm.ISAS["vnni512"].ROWS, qgemm.ISAS["vnni512"].COLS) == (6, 64)
assert all((qgemm.ISAS[n].ROWS, qgemm.ISAS[n].COLS) == (6, 16) for n in ("vnni256", "avx2"))

# %% [markdown]
# ### Reading the machine code
#
# As chapter 6 counts FMAs, we compile `_qgemm`'s source again (serial, uncached; the package's cached copy
# keeps no assembly), find each tile's loop (the one-block loops that multiply-add; of a tile's forms, the one
# for all `ROWS` rows: a last tile of 1-2 or 3-4 rows runs a shorter copy of the loop, `gemm.emit_row_forms`),
# and count per group $g$: multiply-adds, accumulators (the registers they write), broadcasts, spills (stack
# operands). The `avx2`
# tile's `vpmaddwd` + `vpaddd` may appear as `vpdpwssd` (VNNI's non-saturating int16 form, into which LLVM
# fuses the pair when the CPU has VNNI); no saturating form (`vpmaddubsw`, `vpdpbusds`, `vpdpwssds`) may appear.

# %%
MADDS = ("vpdpbusd", "vpdpwssd", "vpmaddwd")
SATURATING = ("vpmaddubsw", "vpdpbusds", "vpdpwssds")


def tile_census(asm):
    """{instruction set: per-group counts} for each one-block loop of `asm` that multiply-adds."""
    found = {}
    for _, body in re.findall(r"^(\.LBB\w+):[^\n]*\n((?:(?!\.LBB)[^\n]*\n)*?)\s+j\w+\s+\1\n", asm, re.MULTILINE):
        ops = [s.strip() for s in body.splitlines() if s.strip()[:1] not in ("", ".", "#")]
        madds = [s for s in ops if s.split()[0] in MADDS]
        if not madds:
            continue
        op = madds[0].split()[0]
        name = "vnni512" if "%zmm" in madds[0] else "vnni256" if op == "vpdpbusd" else "avx2"
        adds = [s for s in ops if s.startswith("vpaddd")] if op == "vpmaddwd" else madds
        accumulators = len({s.rsplit(",", 1)[-1] for s in adds})
        unroll = max(1, len(madds) // max(1, accumulators))
        counts = {"instruction": op, "madds": len(madds) // unroll, "accumulators": accumulators,
                  "broadcasts": sum(s.startswith("vpbroadcastd") for s in ops) // unroll,
                  "spills": sum("(%rsp)" in s for s in ops), "unroll": unroll}  # fmt: skip
        if accumulators > found.get(name, {}).get("accumulators", 0):  # the full tile, not a shorter form
            found[name] = counts
    return found


census, saturating = {}, 0
if COMPILED and ISAS:
    kernel = njit(**JIT)(qgemm._qgemm.py_func)  # the same source and flags, serial, uncached
    for dtype in sorted({np.dtype(qgemm.ISAS[n].x_dtype) for n in ISAS}, key=str):  # one compilation per x dtype
        name = next(n for n in ISAS if np.dtype(qgemm.ISAS[n].x_dtype) == dtype)
        isa = qgemm.ISAS[name]
        packed = qgemm.PackedInt8(w2q, w2s, isa=name)
        xq_isa, sx_isa, zx_isa = qgemm.quantize_rows(act, isa)
        out = np.empty((act.shape[0], w2q.shape[0]), dtype=np.float64)
        kernel(xq_isa, sx_isa, zx_isa, (packed.packed,), (packed.strip_colsum,), (packed.strip_scale,),
               (np.zeros_like(packed.strip_scale),), out, (out,), qgemm.EPILOGUE_RAW, isa.ROWS, isa.COLS,
               qgemm.ISA_CODES[name], 1)  # fmt: skip
        assert np.array_equal(out, acc)
        asm = kernel.inspect_asm(kernel.signatures[-1])
        census.update(tile_census(asm))
        saturating += sum(len(re.findall(rf"\b{op}\s", asm)) for op in SATURATING)
    for name, counts in census.items():
        print(f"{name:8} tile loop, per group: {counts}")
    assert saturating == 0 and set(census) == set(ISAS)
    for name in ISAS:
        isa, counts = qgemm.ISAS[name], census[name]
        assert counts["madds"] == counts["accumulators"] == isa.ROWS * isa.NV, name
        assert counts["broadcasts"] == isa.ROWS and counts["spills"] == 0, name
    print(f"the tile in use here ({qgemm.int8_isa()}): {census[qgemm.int8_isa()]['instruction']}")
else:
    print("no compiled tile to read: NUMBA_DISABLE_JIT=1, or a CPU without AVX2")

# %% [markdown]
# ### The epilogue
#
# A task of `_qgemm` owns a strip of `COLS` output columns for a block of rows of $x$ (all of them on a short
# input; on a long one, from `ROW_BLOCKS_FROM` rows, one block per thread, so that each thread computes whole
# rows, the rows the quantizer and LayerNorm give it too) and sweeps them through the tile. The
# tile finishes its sums while they are still in registers (`dequant_tile`, whose IR `_emit_tile_dequant`
# writes): the zero-point correction in int32, the conversion to float32, the scales and bias in one fused
# multiply-add, the residual add (`out_proj`, `linear2`), and the stores into the output's rows, whose cache
# lines it asked for (a write prefetch) before its loop began. GELU (`linear1`) then runs on those rows while
# they are in L1, as the float32 GEMM's epilogue does (evaluated in float32, `norm.gelu_row_f32`, within
# 1.5e-6 of exact GELU: far below the 8-bit step that quantizes it next):
#
# $$y_{ij} = \mathrm{float32}\big(c_{ij} - z_i\, \text{colsum}_j\big)\, s_{x,i}\, s_j + b_j
# \quad\longrightarrow\quad \mathrm{GELU}(y_{ij}) \ \text{ or } \ y_{ij} + r_{ij} .$$
#
# By hand on layer 0's `linear1` (its real input, `norm1.out`), and `linear2` with its residual, against `qlinear`:

# %%
packed1 = qgemm.PackedInt8.quantize(W1)
lq, l_s, l_z = qgemm.quantize_rows_ref(x_ln)
c_raw = lq.astype(np.int64) @ packed1.q.astype(np.int64).T  # the tile's sums
y1 = (c_raw - l_z[:, None] * packed1.colsum[None, :]).astype(np.int32).astype(np.float32) * l_s[:, None]
y1 = y1 * packed1.scale[None, :] + b1
gelu_hand = gelu_ref(y1.astype(np.float64)).astype(np.float32)
assert np.allclose(qgemm.qlinear(x_ln, packed1, bias=b1, activation="gelu"), gelu_hand, atol=1e-5)
residual = x_ln  # linear2's residual is linear1's input, norm1.out
y2 = qgemm.qlinear(act, qgemm.PackedInt8(w2q, w2s), bias=b2, residual=residual)
assert np.allclose(y2, y_hand + residual, rtol=1e-6, atol=1e-5)
print(f"epilogues: GELU and residual as by hand; int8 GELU(linear1) against float32: "
      f"NMSE {nmse(gelu_hand, gelu_ref((x_ln @ W1.T + b1).astype(np.float64))):.1e}")  # fmt: skip

# %% [markdown]
# ## 6. The attention products in bfloat16
#
# The scores $q k^\top$ and the context $P v$ are products of two activations: no weight to quantize once,
# short sums ($K = d = 64$ for the scores), and an int8 scheme would need a scale and zero point per row of
# each, computed at run time for every head. bfloat16 needs none of that: it is float32 with the 16 low bits
# of the mantissa rounded away (sign, the same 8-bit exponent, 8 significant bits), so each value keeps its own
# exponent and its rounding error is at most $2^{-8}$ of it, however small it is next to its neighbours (an
# int8 $P$ scaled by its row's maximum would round a probability under $1/510$ of that maximum to 0). The product of
# two bfloat16 values is exact in float32; `vdpbf16ps` (AVX512_BF16) multiplies pairs of them and adds both
# products to a float32 accumulator: 32 multiply-adds per instruction where `vfmadd231ps` does 16.
#
# Rounding to the nearest bfloat16, ties to even, on the float32 bits (`attention.bf16_bits`, which the kernel
# computes with the same integer operations):

# %%
from erniem_np.kernels import attention

x16 = np.float32([1.0, 1.00390625, 1.005859375, 3.14159265, 1e-20])
bits = attention.bf16_bits(x16)
print("float32 -> bfloat16:", ", ".join(f"{a:.9g} -> {b:.9g}" for a, b in zip(x16, attention.bf16_float(bits))))
assert attention.bf16_float(bits)[1] == 1.0  # 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one
assert np.all(np.abs(attention.bf16_float(bits) - x16) <= np.abs(x16) * 2.0**-8)

# %% [markdown]
# Layer 0's attention of the float32 model, recomputed from its recorded q, k and v (the probes, `[B, nh, L,
# d]`), once in float32 (`attention_ref`) and once with bfloat16 products (its twin, `products="bf16"`):
# the context moves by about bfloat16's step, an order of magnitude under what the int8 Linear layers around
# it add. Where the CPU has AVX512_BF16 the kernel runs too: its probabilities agree with the twin's to float32
# rounding, and its context with the twin's but for a probability rounded to the neighbouring bfloat16 here and
# there (the two float32 softmaxes differ in their last bits).

# %%
def merged(t):  # [B, nh, L, d] -> [B, L, H]
    return np.ascontiguousarray(np.asarray(t).transpose(0, 2, 1, 3).reshape(t.shape[0], t.shape[2], -1))


q0, k0, v0 = (merged(f32_probes[f"layer.00.attn.{n}"]) for n in "qkv")
heads = fp32.config.num_attention_heads
mask0 = ((1.0 - enc["attention_mask"][:, None, None, :]) * np.finfo(np.float32).min).astype(np.float32)
ctx32, _ = attention.attention_ref(q0, k0, v0, heads, mask0)
ctx16, _ = attention.attention_ref(q0, k0, v0, heads, mask0, products="bf16")
bf16_nmse = nmse(ctx16[valid], ctx32[valid])
int8_nmse = nmse(np.asarray(q_probes["layer.00.attn.context"])[valid], ctx32[valid])  # the int8 model's, recorded
print(f"layer 0 context against float32 attention (real tokens): bfloat16 products NMSE {bf16_nmse:.1e}; "
      f"the int8 model (int8 q, k, v projections, and its attention) NMSE {int8_nmse:.1e}")  # fmt: skip
assert bf16_nmse < int8_nmse / 10
if COMPILED and attention.bf16_supported():
    ctx_kernel, p_kernel = attention.attention(q0, k0, v0, heads, mask0, need_probs=True, products="bf16")
    _, p16 = attention.attention_ref(q0, k0, v0, heads, mask0, need_probs=True, products="bf16")
    assert np.allclose(p_kernel, p16, rtol=1e-5, atol=1e-6)  # scores and softmax: float32 rounding apart
    # a probability a few float32 ulps from the twin's can round to the neighbouring bfloat16, so the context
    # is checked against the kernel's own probabilities, rounded as the kernel rounds them
    B0, L0, _ = v0.shape
    v16 = attention.bf16_float(attention.bf16_bits(v0)).astype(np.float64).reshape(B0, L0, heads, -1)
    p_rounded = attention.bf16_float(attention.bf16_bits(p_kernel)).astype(np.float64)  # [B, nh, L, Lk]
    ctx_from_p = np.einsum("bhij,bjhd->bihd", p_rounded, v16).reshape(ctx16.shape)
    assert np.allclose(ctx_kernel, ctx_from_p, rtol=1e-5, atol=1e-5)
    print(f"the kernel (vdpbf16ps) against the twin: probabilities within float32 rounding, the context within "
          f"{np.abs(ctx_kernel - ctx16).max():.1e}")  # fmt: skip
else:
    print("this CPU has no AVX512_BF16: the int8 model's attention runs in float32 here")

# %% [markdown]
# ## Exercises
#
# 1. For which largest $K$ is the int32 sum safe for every input, and why does `PackedInt8` refuse a weight
#    with `MAX_K + 1` inputs?
# 2. Which of the model's twelve int8 Linear weights gains the most from per-channel scales (NMSE per tensor /
#    per channel), and which property of its rows predicts that?
# 3. What are the zero point and scale of an all-positive row, of an all-negative row, and of a row of zeros?
# 4. The smallest code $c$ such that a pair $(c, c)$ against weights $(127, 127)$ saturates `vpmaddubsw`?
#
# **Answers** (spoilers: the next cell is collapsed in Jupyter; it asserts them).

# %% jupyter={"source_hidden": true} tags=["answers"]
k_safe = (2**31 - 1) // (255 * 127)
assert k_safe == 66_311 and 255 * 127 * (k_safe + 1) > 2**31 - 1 and qgemm.MAX_K <= k_safe
try:
    qgemm.PackedInt8(np.zeros((1, qgemm.MAX_K + 1), np.int8), np.ones(1, np.float32), isa=None)
    raise AssertionError("PackedInt8 took a weight wider than MAX_K")
except ValueError as e:
    refused = str(e)
print(f"1. K <= {k_safe:,} (255 x 127 x K < 2^31); MAX_K = {qgemm.MAX_K:,} rounds down. Wider: {refused!r}")

gains, spreads = {}, {}
for name in LINEARS:
    w, short = fp32.state_dict()[name], name.removeprefix("ernie_m.encoder.layers.").removesuffix(".weight")
    gains[short] = nmse(per_tensor(w), w) / nmse(per_channel(w), w)
    spreads[short] = float(np.abs(w).max(1).max() / np.abs(w).max(1).min())
best = max(gains, key=gains.get)
assert best == max(spreads, key=spreads.get) and all(g > 1 for g in gains.values())
print(f"2. {best}: {gains[best]:.1f}x; it has the widest spread of row maxima ({spreads[best]:.1f}x between rows)")

edge = np.array([[0.5, 2.0, 1.0], [-0.5, -2.0, -1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
eq, es, ez = qgemm.quantize_rows_ref(edge)
kq, ks, kz = qgemm.quantize_rows(edge, qgemm.ISAS["vnni256"])  # the kernel's quantizer agrees
assert list(ez) == [0, 255, 0] and np.allclose(es[:2], 2.0 / 255) and es[2] == 1.0
assert np.array_equal(kz, ez) and np.array_equal(ks, es) and np.array_equal(kq[:, :3], eq)
print("3. all-positive: z = 0 (the range starts at 0.0), s = max/255; all-negative: z = 255; zeros: s = 1, z = 0")

top_weights = np.array([127, 127], np.int8)
c_min = next(c for c in range(256) if vpmaddubsw(np.array([c, c], np.uint8), top_weights)[0] != 2 * c * 127)
int16_max = int(np.iinfo(np.int16).max)
assert c_min == 130 and 2 * 129 * 127 <= int16_max < 2 * 130 * 127
print(f"4. c = {c_min}: 2 x {c_min} x 127 = {2 * c_min * 127:,} > 32,767 (2 x 129 x 127 = 32,766 still fits); "
      f"codes {c_min}..255 are {256 - c_min} of the 256")  # fmt: skip

# %% [markdown]
# **Next:** `docs/quantization.md` for using int8 models (`erniem-np convert --quantize int8`, `from_pretrained(...,
# quantize="int8")`) and the full held-out table; chapter 7 for the parity reports.
