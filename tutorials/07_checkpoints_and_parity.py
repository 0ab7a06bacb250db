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
# # 7. Real checkpoints: HF and Paddle weights, what the converter renames and transposes, and parity-testing a port
#
# The code this chapter explains: `erniem_np/checkpoints/` (`open_checkpoint` in `loader.py`, the rename
# table in `names.py`, `read_pdparams` in `pdparams_file.py`, the restricted unpickler in `unpickler.py`,
# `convert_checkpoint` in `convert.py`); the parity toolkit in `erniem_np/parity/` and its commands
# (`erniem-np golden`, `erniem-np parity`), whose contract is `docs/parity-testing.md`.
#
# ErnieM's weights are published in two forms: PaddleNLP's `model_state.pdparams` (the original, and every
# UIE-M model) and HF's `pytorch_model.bin` / `model.safetensors` (the port). They hold the same numbers under
# different names and, for every Linear layer, in transposed layouts. We read both without torch or paddle,
# on small checkpoints that the references' own `save_pretrained` wrote (`tests/fixtures/checkpoints/`, each
# with the outputs the reference computed).

# %%
import os
import pickle
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
from safetensors.numpy import load_file

from erniem_np import ErnieMForSequenceClassification
from erniem_np.checkpoints import UnsafePickleError, convert_checkpoint, open_checkpoint
from erniem_np.checkpoints.pdparams_file import read_pdparams
from erniem_np.cli import main as erniem_np_cli
from erniem_np.parity import PROFILES, compare_bundles, load_bundle, make_bundle, write_bundle

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
FIXTURES = ROOT / "tests" / "fixtures" / "checkpoints"
work = Path(tempfile.mkdtemp())

# %% [markdown]
# ## The same model, two files
#
# A small sequence classifier saved by PaddleNLP 2.8.1 and one saved by HF transformers 4.46.3: first the raw
# names and shapes as each file stores them.

# %%
paddle_raw = read_pdparams(str(FIXTURES / "paddle-seq_cls" / "model_state.pdparams"))
hf_raw = open_checkpoint(str(FIXTURES / "hf-seq_cls-safetensors")).tensors
for name in sorted(paddle_raw)[:3] + [n for n in sorted(paddle_raw) if "layers.0.self_attn" in n][:4]:
    print(f"paddle  {name:48} {paddle_raw[name].shape}")
for name in [n for n in sorted(hf_raw) if "layers.0.self_attn" in n][:4]:
    print(f"hf      {name:48} {hf_raw[name].shape}")

# %% [markdown]
# The differences, all in the rename table at the top of `erniem_np/checkpoints/names.py`:
#
# * q/k/v sit directly under `self_attn` in Paddle and one level deeper, `self_attn.self_attn`, in HF
#   (while `out_proj` stays at `self_attn.out_proj` in both);
# * Paddle's `nn.Linear` stores its weight `[in, out]` and computes $y = x W_{pd} + b$; torch stores `[out, in]`
#   and computes $y = x W_{hf}^\top + b$. The same layer therefore has $W_{hf} = W_{pd}^\top$: every Linear
#   weight is transposed on load (`docs/reference.md#q26-paddle-linear-layout`);
# * the QA head is `classifier` in Paddle and `qa_outputs` in HF; token classification and QA models keep a
#   pooler in Paddle that HF's classes do not have; the legacy UIE-M files nest everything under `encoder.`.
#
# `open_checkpoint` applies the table; afterwards both files have HF's names and layout (the raw Paddle
# weight, transposed, is the loaded one). One more quirk shows in the shapes: PaddleNLP builds the FFN
# $F = 4H$ wide whatever the config's `intermediate_size` says (here $4 \times 24 = 96$, where HF's config has
# 37), so the loader takes the FFN width from the weights
# (`docs/reference.md#q4-paddle-ignores-intermediate-size`). (The two fixtures draw their random values from
# one seeded stream, so the wider FFN also shifts the values after it: the two files are not the same model,
# each is checked against its own reference below.)

# %%
paddle = open_checkpoint(str(FIXTURES / "paddle-seq_cls"))
hf = open_checkpoint(str(FIXTURES / "hf-seq_cls-safetensors"))
print("paddle flavor:", paddle.flavor, "| hf flavor:", hf.flavor, "| head:", paddle.head, hf.head)
print("\n".join(paddle.notes))
sd_paddle, sd_hf = paddle.state_dict(), hf.state_dict()
q = "ernie_m.encoder.layers.0.self_attn.self_attn.q_proj.weight"
raw_q = paddle_raw["ernie_m.encoder.layers.0.self_attn.q_proj.weight"].array()  # Paddle's [in, out]
assert np.array_equal(sd_paddle[q], raw_q.T)  # [in, out] -> [out, in]
assert sorted(sd_paddle) == sorted(sd_hf)  # the same names after the rename table
other_shape = [k for k in sd_hf if sd_paddle[k].shape != sd_hf[k].shape]
assert all(".linear1." in k or ".linear2.weight" in k for k in other_shape)
print(f"the same {len(sd_hf)} names; the same shapes except the FFN:")
for k in other_shape:
    print(f"  {k}: hf {sd_hf[k].shape}, paddle {sd_paddle[k].shape}")

# %% [markdown]
# ## Safe by construction
#
# `.bin` and `.pdparams` files are Python pickles, and unpickling runs whatever code the file names. The
# readers use a restricted unpickler that only knows how to rebuild arrays: anything else is refused, by name,
# before it can run. A file that would call `os.system`:


# %%
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + str(work / "pwned"),))


evil = work / "evil" / "model_state.pdparams"
evil.parent.mkdir()
evil.write_bytes(pickle.dumps({"x": Payload()}))
try:
    open_checkpoint(str(evil.parent)).state_dict()
except UnsafePickleError as e:
    print("refused:", e)
assert not (work / "pwned").exists()

# %% [markdown]
# ## Loading reproduces the reference
#
# Each fixture carries the logits its reference computed after loading its own save. Ours, from both files:

# %%
for name in ("paddle-seq_cls", "hf-seq_cls-safetensors", "hf-seq_cls-bin"):
    model = ErnieMForSequenceClassification.from_pretrained(str(FIXTURES / name))
    ref = load_file(str(FIXTURES / name / "reference_outputs.safetensors"))
    case = min({k.split("/")[0] for k in ref})
    inputs = {k: ref[f"{case}/{k}"] for k in ("input_ids", "attention_mask") if f"{case}/{k}" in ref}
    err = np.abs(model(**inputs).logits - ref[f"{case}/logits"]).max()
    print(f"{name:28} flavor {model.config.flavor:6} max |logits - reference| {err:.1e}")
    assert err < 1e-4

# %% [markdown]
# ## Convert once, then map the file
#
# `convert_checkpoint` (or `erniem-np convert SRC DST`) writes the native layout: `config.json` with the flavor
# recorded, and `model.safetensors` in HF's names and layout, which later loads are memory-mapped from (no
# copy, no transpose: float32 weights stay views of the file, whose pages are read when first used). It reads
# the written file back and compares it.

# %%
out = convert_checkpoint(str(FIXTURES / "paddle-seq_cls"), str(work / "native"))
print(out.architecture, out.num_parameters, "parameters, flavor", out.flavor)
native = ErnieMForSequenceClassification.from_pretrained(str(work / "native"))
from_paddle = ErnieMForSequenceClassification.from_pretrained(str(FIXTURES / "paddle-seq_cls"))
ids = np.array([[0, 5, 17, 42, 2]])
assert native.config.flavor == "paddle"
assert np.array_equal(native(input_ids=ids).logits, from_paddle(input_ids=ids).logits)

# %% [markdown]
# ## Parity-testing a port
#
# You have ported ErnieM somewhere else and want to know, layer by layer, whether it is right. The toolkit's
# workflow, with the commands as you would type them:
#
# 1. `erniem-np golden CHECKPOINT -o ref.safetensors`: this implementation runs fixed cases and records every
#    intermediate ("probe"): the embeddings, each layer's q/k/v, scores, probabilities, context, attention
#    output, norm1, FFN up/activation/down and output, the pooler, the head.
# 2. `erniem-np parity export-inputs ref.safetensors -o inputs.safetensors`: the inputs alone, for your port.
# 3. Your port runs the inputs and writes what it computed, `<case>/<probe>`, to a safetensors file (the
#    four-step writer in `docs/parity-testing.md` works from any language).
# 4. `erniem-np parity compare ref.safetensors yours.safetensors`.
#
# The comparison (`erniem_np/parity/compare.py`, `compare_bundles`) looks at each probe in forward order, on
# the real tokens only (the reference's `attention_mask`; for attention tensors the real query rows), and
# accepts it when every element $c$ of the candidate is close to the reference's $r$:
#
# $$|c - r| \le \mathrm{atol} + \mathrm{rtol}\, |r|,$$
#
# with the $(\mathrm{atol}, \mathrm{rtol})$ of the probe's kind in the profile (`fp32`: hidden states
# $(5 \times 10^{-5}, 10^{-4})$, attention probabilities $(10^{-5}, 10^{-4})$, scores and logits
# $(10^{-4}, 10^{-4})$). The report names the first probe, in forward order, that fails.
#
# Here the "port" is this package's own Numba backend (fused kernels: a different implementation of the same
# maths), which records the core probes.

# %%
ref_path, cand_path = work / "ref.safetensors", work / "numba.safetensors"
assert erniem_np_cli(["golden", str(work / "native"), "-o", str(ref_path)]) == 0
assert erniem_np_cli(["parity", "export-inputs", str(ref_path), "-o", str(work / "inputs.safetensors")]) == 0

# "Your port": the numba backend run on the exported inputs, core probes written as <case>/<probe>.
ref = load_bundle(str(ref_path))
cases = [{"name": c, **ref.inputs(c)} for c in ref.case_names()]
tensors, metadata = make_bundle(ref.config(), ref.weights(), cases, backend="numba", tier="core")
write_bundle(str(cand_path), tensors, {**metadata, "role": "candidate"})

code = erniem_np_cli(["parity", "compare", str(ref_path), str(cand_path)])
print("exit code", code)
assert code == 0

# %% [markdown]
# A port with a bug: the same candidate file with one Linear weight transposed in layer 1 (`out_proj`, square,
# so nothing complains about shapes). We write it by rerunning the reference with the damaged weight and
# keeping only the core probes. The comparison points at layer 1, not before.

# %%
weights = {k: v.copy() for k, v in ref.weights().items()}
w = "encoder.layers.1.self_attn.out_proj.weight"
weights[w] = np.ascontiguousarray(weights[w].T)
tensors, _ = make_bundle(ref.config(), weights, cases, tier="core")
report = compare_bundles(ref, tensors)
print(report.to_text().splitlines()[-1])
print("first diverging probe:", report.first_divergence.probe)
assert not report.passed and report.first_divergence.probe.startswith("layer.01.")

# %% [markdown]
# The error per core probe for both candidates, checked before drawing: the numba candidate is within the fp32
# profile everywhere, the damaged one only up to layer 0.

# %%
case = ref.case_names()[1]
order = [p["name"] for p in ref.probes() if p.get("tier") == "core" and ref.has(case, p["name"])]
numba = load_bundle(str(cand_path))
err_numba = [float(np.abs(ref.get(case, p) - numba.get(case, p)).max()) for p in order]
err_bug = [float(np.abs(ref.get(case, p) - tensors[f"{case}/{p}"]).max()) for p in order]
assert max(err_numba) < 1e-4
assert all(e < 1e-5 for p, e in zip(order, err_bug, strict=True) if p.startswith(("emb.", "layer.00.")))

fig, ax = plt.subplots(figsize=(9, 3.5))
ax.semilogy(order, np.maximum(err_numba, 1e-9), "o-", label="numba backend (a second implementation)")
ax.semilogy(order, np.maximum(err_bug, 1e-9), "s-", color="tab:red", label="out_proj of layer 1 transposed")
ax.set_ylabel("max |error| vs the golden bundle")
ax.set_title(f"case {case}, core probes in forward order")
plt.setp(ax.get_xticklabels(), rotation=40, ha="right", fontsize=7)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "07_port_errors.png", dpi=100)

# %% [markdown]
# For a port in another framework, `scripts/reference/produce_bundle_hf.py` and
# `scripts/reference/produce_bundle_paddle.py` show how to record the probes through forward hooks: both
# references pass the shipped bundles on every probe. `docs/parity-testing.md` has the contract, the profiles,
# and how to read a report.
#
# ## Exercises
#
# 1. **Which mistakes are loud?** A loader that forgets the transpose of the Paddle layout: which Linear weights
#    of the `paddle-seq_cls` fixture would then fail with a shape error, and which would load silently, with
#    wrong numbers?
# 2. **The debug tier.** Record the damaged candidate above (layer 1's `out_proj` transposed) with every probe,
#    `tier="debug"`, and compare again. Which probe does the comparator name now, and what does it suggest?
# 3. **The gate by hand.** For the probe `layer.01.out` of the case drawn above, count the real-token elements
#    that break $|c - r| \le \mathrm{atol} + \mathrm{rtol}\,|r|$ under the `fp32` profile, for the numba
#    candidate and for the damaged one, and check the counts against the report's.

# %% [markdown]
# ### Answers
#
# (Spoilers: the next cell is collapsed in Jupyter; it asserts them.)

# %% jupyter={"source_hidden": true} tags=["answers"]
# 1. Only a non-square weight changes shape when transposed: linear1, linear2 and the classifier fail loudly;
#    q/k/v/out_proj and the pooler's dense are square, so a forgotten transpose loads and computes garbage.
linear_weights = {k: v.shape for k, v in paddle_raw.items() if k.endswith(".weight") and len(v.shape) == 2
                  and "embeddings" not in k}  # fmt: skip
loud = sorted({k.split(".")[-2] for k, shape in linear_weights.items() if shape[0] != shape[1]})
silent = sorted({k.split(".")[-2] for k, shape in linear_weights.items() if shape[0] == shape[1]})
print("1. shape error:", loud, "| silent:", silent)
assert loud == ["classifier", "linear1", "linear2"]
assert silent == ["dense", "k_proj", "out_proj", "q_proj", "v_proj"]

# 2. With every probe recorded, the comparator stops at the out_proj output of layer 1 and names the weight.
debug_tensors, _ = make_bundle(ref.config(), weights, cases, tier="debug")
debug_report = compare_bundles(ref, debug_tensors)
print("2. debug tier: first diverging probe", debug_report.first_divergence.probe, "| hint:", debug_report.hints[0])
assert debug_report.first_divergence.probe == "layer.01.attn.out" and "out_proj" in debug_report.hints[0]

# 3. The gate, element by element, on the real tokens; the report's rows hold the same counts.
atol, rtol = PROFILES["fp32"]["hidden"]
real = ref.get(case, "input.attention_mask").astype(bool)[:, :, None]  # [B, L, 1]: padding is not compared
r = ref.get(case, "layer.01.out").astype(np.float64)
candidates = {"numba": (numba, numba.get(case, "layer.01.out")), "damaged": (tensors, tensors[f"{case}/layer.01.out"])}
for label, (candidate, c) in candidates.items():
    broken = int(((np.abs(c.astype(np.float64) - r) > atol + rtol * np.abs(r)) & real).sum())
    rows = compare_bundles(ref, candidate, probes=["layer.01.out"]).rows
    row = next(x for x in rows if x.case == case and x.probe == "layer.01.out")
    print(f"3. {label}: {broken} of {int(np.broadcast_to(real, r.shape).sum())} elements break the gate; "
          f"the report says {row.stats['mismatch']} ({row.status})")  # fmt: skip
    assert broken == row.stats["mismatch"] and (row.status == "ok") == (broken == 0)
    assert (broken == 0) == (label == "numba")

# %% [markdown]
# **Next:** chapter 8, encoding a corpus on a cluster.
