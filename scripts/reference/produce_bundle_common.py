"""What the two bundle producers share: reading the input bundle, where each probe is hooked, writing the candidate.

Imported by produce_bundle_hf.py (HF reference environment) and produce_bundle_paddle.py (Paddle reference
environment) from this directory; needs NumPy and safetensors only, and no framework: the producers hand in
their framework's hook registration and tensor operations. Bundle format: docs/parity-testing.md.

Where each hooked probe comes from (module names under ErnieMModel, the same in both references except where
the q/k/v projections sit: ``self_attn.self_attn`` in HF, ``self_attn`` in PaddleNLP):

* ``emb.out``: output of ``embeddings``;
* ``layer.NN.attn.q/k/v``: outputs of ``encoder.layers.NN.<attention>.{q,k,v}_proj``, split into heads
  ([B, L, H] -> [B, nh, L, d]);
* ``layer.NN.attn.context``: the input of ``self_attn.out_proj`` (forward pre-hook); ``attn.out``: its output;
* ``layer.NN.norm1.out``, ``ffn.up``, ``ffn.down``, ``out``: outputs of ``norm1``, ``linear1``, ``linear2``,
  ``norm2``; ``ffn.act``: the input of ``linear2`` (dropout is the identity in eval mode);
* ``pooler.out``: output of ``pooler``.

``attn.probs`` (``output_attentions=True``), ``attn.scores`` (no module to hook: each producer recomputes it
from the hooked q and k with its framework's own expression) and ``head.*`` are the producers' own.
"""

from __future__ import annotations

import json
import sys

import safetensors
import safetensors.numpy

HEADS = ("seq_cls", "seq_cls_reg", "token_cls", "qa", "mc", "ie")
INPUTS = ("input_ids", "attention_mask", "position_ids")


def read_bundle(path):
    """(metadata with config, cases, probes and heads parsed, tensors); exits if the bundle lacks them."""
    with safetensors.safe_open(path, "np") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key in ("config", "cases", "probes", "heads"):
        if key not in meta:
            sys.exit(f"{path}: metadata has no {key!r}: pass a reference bundle or an export-inputs file")
        meta[key] = json.loads(meta[key])
    return meta, tensors


def bundle_weights(tensors):
    """The bundle's ``weights/*`` tensors without the prefix (empty if it stores none)."""
    return {k[len("weights/") :]: v for k, v in tensors.items() if k.startswith("weights/")}


def head_state(weights, head, pooler=True):
    """The HF-named state dict of the class for ``head`` (None: the bare ErnieMModel) from the bundle's weights:
    a head's base model under ``ernie_m.``, its own parameters without the head's prefix; ``pooler`` False
    drops the base model's pooler."""
    base = {k: v for k, v in weights.items() if not k.startswith(tuple(h + "." for h in HEADS))}
    if head is None:
        return base
    sd = {"ernie_m." + k: v for k, v in base.items() if pooler or not k.startswith("pooler.")}
    sd.update({k[len(head) + 1 :]: v for k, v in weights.items() if k.startswith(head + ".")})
    return sd


def wanted_probes(meta, tier):
    """The probe names to write: every probe for the debug tier, the core ones for the core tier."""
    return {p["name"] for p in meta["probes"] if tier == "debug" or p["tier"] == "core"}


def case_inputs(tensors, case):
    """The input arrays of one case of the bundle."""
    return {k: tensors[f"{case['name']}/input.{k}"] for k in INPUTS}


def probe_sites(model, attention):
    """(module, "out" or "in", probe name, split into heads) for every hooked probe of ``model`` (an ErnieMModel);
    ``attention(layer)`` is the module holding a layer's q_proj, k_proj and v_proj."""
    sites = [(model.embeddings, "out", "emb.out", False)]
    for i, layer in enumerate(model.encoder.layers):
        p = f"layer.{i:02d}."
        sites += [(getattr(attention(layer), f"{x}_proj"), "out", p + f"attn.{x}", True) for x in "qkv"]
        sites += [
            (layer.self_attn.out_proj, "in", p + "attn.context", False),
            (layer.self_attn.out_proj, "out", p + "attn.out", False),
            (layer.norm1, "out", p + "norm1.out", False),
            (layer.linear1, "out", p + "ffn.up", False),
            (layer.linear2, "in", p + "ffn.act", False),
            (layer.linear2, "out", p + "ffn.down", False),
            (layer.norm2, "out", p + "out", False),
        ]
    if getattr(model, "pooler", None) is not None:
        sites.append((model.pooler, "out", "pooler.out", False))
    return sites


def hook_probes(model, attention, *, post_hook, pre_hook, split_heads, keep):
    """Register a hook at every probe site; returns (probes dict filled during a forward, handles).

    ``post_hook`` and ``pre_hook``: the names of the framework's module methods registering a hook on a module's
    output ``(module, args, output)`` and on its input ``(module, args)``; ``split_heads(t)``: [B, L, H] ->
    [B, nh, L, d] in the framework; ``keep(t)``: what to store of a tensor.
    """
    probes, handles = {}, []

    def on_output(name, split):
        def hook(module, args, output):
            t = output[0] if isinstance(output, (tuple, list)) else output
            probes[name] = keep(split_heads(t) if split else t)

        return hook

    def on_input(name):
        def hook(module, args):
            probes[name] = keep(args[0])

        return hook

    for module, where, name, split in probe_sites(model, attention):
        if where == "out":
            handles.append(getattr(module, post_hook)(on_output(name, split)))
        else:
            handles.append(getattr(module, pre_hook)(on_input(name)))
    return probes, handles


def write_candidate(path, out, meta, *, producer, compute_dtype, flavor):
    """Write the candidate bundle: the probe tensors ``out`` and the metadata of the input bundle ``meta``."""
    metadata = {"format": "erniem-np-parity/1", "role": "candidate", "producer": json.dumps(producer),
                "compute_dtype": compute_dtype, "flavor": flavor, "config": json.dumps(meta["config"]),
                "cases": json.dumps(meta["cases"]), "probes": json.dumps(meta["probes"]),
                "heads": json.dumps(meta["heads"])}  # fmt: skip
    safetensors.numpy.save_file(out, path, metadata=metadata)
