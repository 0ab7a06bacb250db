"""What a parity bundle holds: the probe catalogue, its order, the tolerance profiles.

A bundle is one safetensors file. Tensors are named ``<case>/<probe>``: ``c01_batch_pad/layer.03.attn.probs``.
Probe names are semantic (not any library's parameter names) and layer indices have two digits, so a
lexical sort keeps depth order up to 100 layers; the authoritative order is the ``probes`` list in the
metadata. Dimension legend: B batch, L sequence, H hidden, nh heads, d head size, F FFN width, N labels.
"""

from __future__ import annotations

import fnmatch

FORMAT = "erniem-np-parity/1"

# Inputs every case carries; a port reads them (erniem-np parity export-inputs) and never re-tokenizes.
INPUTS = ("input.input_ids", "input.attention_mask", "input.position_ids", "derived.additive_mask")

# One encoder layer's probes in forward order: (suffix, tier, kind, shape in symbols).
LAYER_PROBES = (
    ("attn.q", "debug", "hidden", "[B,nh,L,d]"),  # q_proj output split into heads (head h = channels h*d..)
    ("attn.k", "debug", "hidden", "[B,nh,L,d]"),
    ("attn.v", "debug", "hidden", "[B,nh,L,d]"),
    ("attn.scores", "debug", "scores", "[B,nh,L,L]"),  # scaled q k^T BEFORE the mask is added
    ("attn.probs", "core", "probs", "[B,nh,L,L]"),  # softmax probabilities (HF `attentions[i]`)
    ("attn.context", "debug", "hidden", "[B,L,H]"),  # probs @ v, heads merged, before out_proj
    ("attn.out", "debug", "hidden", "[B,L,H]"),  # out_proj output
    ("norm1.out", "debug", "hidden", "[B,L,H]"),  # norm1(x + attn.out)
    ("ffn.up", "debug", "hidden", "[B,L,F]"),  # linear1 output, before the activation
    ("ffn.act", "debug", "hidden", "[B,L,F]"),  # after the activation (exact erf GELU in ErnieM)
    ("ffn.down", "debug", "hidden", "[B,L,H]"),  # linear2 output
    ("out", "core", "hidden", "[B,L,H]"),  # norm2(norm1.out + ffn.down) = HF hidden_states[i + 1]
)

# Heads: short name -> (HF class, probes). Each head's outputs are core probes.
HEADS = {
    "seq_cls": ("ErnieMForSequenceClassification", (("logits", "[B,N]"),)),
    "token_cls": ("ErnieMForTokenClassification", (("logits", "[B,L,N]"),)),
    "qa": ("ErnieMForQuestionAnswering", (("start_logits", "[B,L]"), ("end_logits", "[B,L]"))),
    "mc": ("ErnieMForMultipleChoice", (("logits", "[1,B]"),)),  # the case's B rows are the choices of one question
    "ie": ("ErnieMForInformationExtraction", (("start_logits", "[B,L]"), ("end_logits", "[B,L]"))),
}


def layer_prefix(i: int) -> str:
    return f"layer.{i:02d}."


def probe_catalogue(num_layers: int, heads=()) -> list[dict]:
    """Every probe of a model in forward order: ``[{"name", "tier", "kind", "shape"}]``."""
    probes = [{"name": "emb.out", "tier": "core", "kind": "hidden", "shape": "[B,L,H]"}]
    for i in range(num_layers):
        probes += [{"name": layer_prefix(i) + s, "tier": t, "kind": k, "shape": sh} for s, t, k, sh in LAYER_PROBES]
    probes.append({"name": "pooler.out", "tier": "core", "kind": "hidden", "shape": "[B,H]"})
    for head in heads:
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; heads are {', '.join(HEADS)}")
        for out, shape in HEADS[head][1]:
            probes.append({"name": f"head.{head}.{out}", "tier": "core", "kind": "logits", "shape": shape})
    return probes


def expected_shape(symbolic: str, dims: dict) -> tuple[int, ...]:
    """'[B,nh,L,d]' with dims {"B": 2, ...} -> (2, ...)."""
    return tuple(int(dims[s]) if s in dims else int(s) for s in symbolic.strip("[]").split(","))


def token_axis(probe: str) -> int | None:
    """The axis of a probe that indexes query tokens (to restrict a comparison to valid tokens), or None."""
    if probe.startswith("input.") or probe == "derived.additive_mask":
        return None
    if probe in ("pooler.out", "head.seq_cls.logits", "head.mc.logits"):
        return None
    if probe.startswith("layer.") and probe.split(".", 2)[2] in ("attn.q", "attn.k", "attn.v", "attn.scores",
                                                                "attn.probs"):  # fmt: skip
        return 2
    return 1


def tier_includes(tier: str, probe_tier: str) -> bool:
    return tier == "debug" or probe_tier == "core"


# --------------------------------------------------------------------------------------------- profiles
# Gate per element: |cand - ref| <= atol + rtol * |ref| on valid positions (docs/parity-bundles.md#b7-tolerances).
# Kinds: hidden (embeddings, q/k/v, context, every [B, L, H|F] state, pooler), scores, probs, logits, loss (a
# head's scalar loss: the test suite's reference goldens compare those too, with this same table).
# Integers (inputs) always compare exactly. Secondary gates apply to low-precision profiles only: cosine and
# NMSE are nearly blind to real fp32 bugs (tanh GELU moves 1 - cos by 1e-7), so they never gate fp32.
PROFILES = {
    "fp32-strict": {
        "hidden": (1e-5, 1e-5), "probs": (1e-5, 0.0), "scores": (5e-5, 1e-5), "logits": (5e-5, 1e-5),
        "loss": (1e-5, 1e-5), "argmax_min": 1.0,
        "use": "layer-local mode and same-algorithm CPU ports",
    },
    "fp32": {
        "hidden": (5e-5, 1e-4), "probs": (1e-5, 1e-4), "scores": (1e-4, 1e-4), "logits": (1e-4, 1e-4),
        "loss": (1e-5, 1e-5), "argmax_min": 1.0,
        "use": "an fp32 port end to end (TF32 off): the profile that certifies parity",
    },
    "fp16": {
        "hidden": (3e-2, 1e-2), "probs": (3e-3, 1e-2), "scores": (5e-2, 1e-2), "logits": (5e-2, 1e-2),
        "loss": (5e-2, 1e-2), "nmse_max": 1e-5, "cosd_max": 1e-5, "argmax_min": 0.99,
        "use": "a port computing in float16 (within the low-precision envelope; never proof of correctness)",
    },
    "bf16": {
        "hidden": (2e-1, 5e-2), "probs": (2e-2, 5e-2), "scores": (3e-1, 5e-2), "logits": (2.5e-1, 5e-2),
        "loss": (2.5e-1, 5e-2), "nmse_max": 1e-3, "cosd_max": 5e-4, "argmax_min": 0.98,
        "use": "a port computing in bfloat16 (within the low-precision envelope; never proof of correctness)",
    },
}  # fmt: skip


def profile(name: str) -> dict:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; profiles are {', '.join(PROFILES)}")
    return PROFILES[name]


def select(names, patterns: list[str] | None) -> list[str]:
    """Names matching any glob pattern (all of them when patterns is None)."""
    if not patterns:
        return list(names)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
