"""What a parity bundle holds: the probe catalogue, its order, the tolerance profiles.

A bundle is one safetensors file. Tensors are named ``<case>/<probe>``: ``c01_batch_pad/layer.03.attn.probs``.
Probe names are semantic (not any library's parameter names) and layer indices have two digits, so a
lexical sort keeps depth order up to 100 layers; the authoritative order is the ``probes`` list in the
metadata. Dimension legend: B batch, L sequence, H hidden, nh heads, d head size, F FFN width, N labels,
K keys (past + L).

A call case (docs/parity-bundles.md#b10-call-cases) records one forward call as the caller made it: its
arguments as ``input.<argument>`` tensors, and the model outputs it holds under the probe names that
``output_probe`` gives them (a layer's returned cache, a head's loss and UIE-M's probabilities included).
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


# A head that runs another head's class with other labels: its probes are that head's, under its own name.
HEAD_VARIANTS = {"seq_cls_reg": "seq_cls"}  # regression: num_labels 1

# Probes only call cases hold: the cache a layer returns (use_cache), after the layer's attn.v; a head's loss
# (when the call passes labels or positions), after its outputs; Paddle UIE-M's sigmoid probabilities.
CACHE_PROBES = (("cache.k", "hidden", "[B,nh,K,d]"), ("cache.v", "hidden", "[B,nh,K,d]"))
HEAD_CALL_PROBES = {"ie": (("start_prob", "[B,L]"), ("end_prob", "[B,L]"))}

# Forward arguments a call case may record, by their HF names; each is stored as <case>/input.<name>, except
# past_key_values: <case>/input.past.NN.k and .v ([B, nh, P, d]) per layer.
CALL_INPUTS = ("input_ids", "attention_mask", "position_ids", "head_mask", "inputs_embeds", "past_key_values",
               "labels", "start_positions", "end_positions")  # fmt: skip


def layer_prefix(i: int) -> str:
    return f"layer.{i:02d}."


def probe_catalogue(num_layers: int, heads=(), calls: bool = False) -> list[dict]:
    """Every probe of a model in forward order: ``[{"name", "tier", "kind", "shape"}]``. ``calls`` adds the
    probes only call cases hold (CACHE_PROBES, HEAD_CALL_PROBES, each head's ``loss``)."""
    probes = [{"name": "emb.out", "tier": "core", "kind": "hidden", "shape": "[B,L,H]"}]
    for i in range(num_layers):
        for s, t, k, sh in LAYER_PROBES:
            probes.append({"name": layer_prefix(i) + s, "tier": t, "kind": k, "shape": sh})
            if calls and s == "attn.v":
                probes += [{"name": layer_prefix(i) + c, "tier": "core", "kind": ck, "shape": csh}
                           for c, ck, csh in CACHE_PROBES]  # fmt: skip
    probes.append({"name": "pooler.out", "tier": "core", "kind": "hidden", "shape": "[B,H]"})
    for head in heads:
        if head not in HEADS and head not in HEAD_VARIANTS:
            raise ValueError(f"unknown head {head!r}; heads are {', '.join([*HEADS, *HEAD_VARIANTS])}")
        outputs = HEADS[HEAD_VARIANTS.get(head, head)][1]
        if calls:
            outputs = (*outputs, *HEAD_CALL_PROBES.get(head, ()))
        for out, shape in outputs:
            probes.append({"name": f"head.{head}.{out}", "tier": "core", "kind": "logits", "shape": shape})
        if calls:
            probes.append({"name": f"head.{head}.loss", "tier": "core", "kind": "loss", "shape": "[]"})
    return probes


def output_probe(output: str, head: str | None, num_layers: int) -> str:
    """The probe name of a model output named as ``flat_outputs`` names it: ``hidden_states.0`` -> ``emb.out``,
    ``hidden_states.3`` and (with 3 layers) ``last_hidden_state`` -> ``layer.02.out``, ``attentions.1`` ->
    ``layer.01.attn.probs``, ``past_key_values.1.k`` -> ``layer.01.cache.k``, ``pooler_output`` ->
    ``pooler.out``, anything else (``logits``, ``start_prob``, ``loss``) -> ``head.<head>.<output>``."""
    parts = output.split(".")
    if parts[0] == "hidden_states":
        i = int(parts[1])
        return "emb.out" if i == 0 else layer_prefix(i - 1) + "out"
    if output == "last_hidden_state":
        return layer_prefix(num_layers - 1) + "out"
    if parts[0] == "attentions":
        return layer_prefix(int(parts[1])) + "attn.probs"
    if parts[0] == "past_key_values":
        return layer_prefix(int(parts[1])) + "cache." + parts[2]
    if output == "pooler_output":
        return "pooler.out"
    if head is None:
        raise ValueError(f"{output!r} is a head's output, but the call ran the base model")
    return f"head.{head}.{output}"


def flat_outputs(outputs) -> dict:
    """A model's outputs (anything with ``keys()`` and ``[name]`` by HF output names: a ModelOutput of this
    package, of transformers or of PaddleNLP, a dict) flattened to one tensor per name: ``hidden_states.<i>``,
    ``attentions.<i>``, ``past_key_values.<i>.k`` / ``.v``; the others as they are; None values skipped.
    Framework-neutral: the tensors are returned untouched."""
    flat = {}
    for key in list(outputs.keys()):
        value = outputs[key]
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                if isinstance(item, (tuple, list)):  # a layer's (key, value) cache
                    flat[f"{key}.{i}.k"], flat[f"{key}.{i}.v"] = item[0], item[1]
                else:
                    flat[f"{key}.{i}"] = item
        else:
            flat[key] = value
    return flat


def expected_shape(symbolic: str, dims: dict) -> tuple[int, ...]:
    """'[B,nh,L,d]' with dims {"B": 2, ...} -> (2, ...); '[]' -> ()."""
    if symbolic.strip("[]") == "":
        return ()
    return tuple(int(dims[s]) if s in dims else int(s) for s in symbolic.strip("[]").split(","))


def token_axis(probe: str) -> int | None:
    """The axis of a probe that indexes query tokens (to restrict a comparison to valid tokens), or None."""
    if probe.startswith("input.") or probe == "derived.additive_mask":
        return None
    if probe in ("pooler.out", "head.seq_cls.logits", "head.seq_cls_reg.logits", "head.mc.logits"):
        return None
    if probe.startswith("head.") and probe.endswith(".loss"):
        return None
    if probe.startswith("layer.") and probe.split(".", 2)[2].startswith("cache."):
        return None  # keys, past included: every position counts
    if probe.startswith("layer.") and probe.split(".", 2)[2] in ("attn.q", "attn.k", "attn.v", "attn.scores",
                                                                "attn.probs"):  # fmt: skip
        return 2
    return 1


def tier_includes(tier: str, probe_tier: str) -> bool:
    return tier == "debug" or probe_tier == "core"


# --------------------------------------------------------------------------------------------- profiles
# Gate per element: |cand - ref| <= atol + rtol * |ref| on valid positions (docs/parity-bundles.md#b7-tolerances).
# Kinds: hidden (embeddings, q/k/v, context, every [B, L, H|F] state, pooler), scores, probs, logits, loss (a
# head's scalar loss, which call cases hold).
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
    "int8": {  # bfloat16's envelope: measured int8 error on trained weights is far inside it (docs/quantization.md)
        "hidden": (2e-1, 5e-2), "probs": (2e-2, 5e-2), "scores": (3e-1, 5e-2), "logits": (2.5e-1, 5e-2),
        "loss": (2.5e-1, 5e-2), "nmse_max": 1e-3, "cosd_max": 5e-4, "argmax_min": 0.98,
        "use": "an int8-quantized port against float32, on trained weights (never proof of correctness)",
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
