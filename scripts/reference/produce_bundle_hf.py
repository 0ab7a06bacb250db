"""Produce a parity bundle from the HuggingFace reference (transformers 4.46.3, torch) through forward hooks.

Run inside the HF reference environment, on a bundle that holds the inputs and the weights (a reference
bundle, or ``erniem-np parity export-inputs REF -o IN --with-weights``):

    .venv-ref-hf/bin/python scripts/produce_bundle_hf.py IN.safetensors -o hf.candidate.safetensors

It is written the way another port would write its candidate, and imports neither erniem_np nor anything
but numpy, torch, transformers and safetensors: it reads ``<case>/input.*`` and ``weights/*``, builds HF's
ErnieMModel and each head the bundle lists with those weights (``load_state_dict(strict=True)``), runs every
case in eval mode with one thread, and writes ``<case>/<probe>`` for every probe the bundle's metadata lists.

Where each probe comes from (HF module names under ``ErnieMModel``):

* ``emb.out``: output of ``embeddings``; ``layer.NN.attn.probs``: ``output_attentions=True``;
* ``layer.NN.attn.q/k/v``: outputs of ``encoder.layers.NN.self_attn.self_attn.{q,k,v}_proj`` split into heads
  ([B, L, H] -> [B, nh, L, d], as ErnieMSelfAttention.transpose_for_scores does);
* ``layer.NN.attn.scores``: NOT a module output in HF: recomputed from the hooked q and k with HF's own
  expression, ``torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)`` (before the mask);
* ``attn.context``: the input of ``self_attn.out_proj`` (forward pre-hook); ``attn.out``: its output;
* ``norm1.out``, ``ffn.up``, ``ffn.down``, ``out``: outputs of ``norm1``, ``linear1``, ``linear2``, ``norm2``;
  ``ffn.act``: the input of ``linear2`` (dropout is the identity in eval mode);
* ``pooler.out``: output of ``pooler``; ``head.*``: the head models' outputs (HF's information-extraction
  head returns logits; ``head.mc.logits`` runs the case's rows as the choices of one question).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
import torch
import transformers
from transformers import (
    ErnieMConfig,
    ErnieMForInformationExtraction,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)

HEAD_CLASSES = {
    "seq_cls": ErnieMForSequenceClassification,
    "token_cls": ErnieMForTokenClassification,
    "qa": ErnieMForQuestionAnswering,
    "mc": ErnieMForMultipleChoice,
    "ie": ErnieMForInformationExtraction,
}


def read_bundle(path):
    with safetensors.safe_open(path, "np") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key in ("config", "cases", "probes", "heads"):
        if key not in meta:
            sys.exit(f"{path}: metadata has no {key!r}: pass a reference bundle or an export-inputs file")
        meta[key] = json.loads(meta[key])
    return meta, tensors


def recipe_weights(meta, path):
    """Weights a bundle does not store (ErnieM-base-shaped presets) drawn again from its recorded recipe; this
    is the one place the script needs erniem_np (pip install erniem-np in this environment)."""
    info = json.loads(meta.get("weights", "{}"))
    if info.get("recipe") != "erniem_np.parity.produce.parity_weights":
        sys.exit(f"{path}: no weights/* tensors and no recorded recipe (use export-inputs --with-weights)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's erniem_np
    from erniem_np.config import ErnieMConfig
    from erniem_np.parity.produce import parity_weights

    weights = parity_weights(ErnieMConfig.from_dict(meta["config"]), int(info["seed"]))
    heads = set(meta["heads"])
    return {
        k: v
        for k, v in weights.items()
        if "." not in k.split(".", 1)[0]
        or not k.startswith(("seq_cls.", "seq_cls_reg.", "token_cls.", "qa.", "mc.", "ie."))
        or k.split(".", 1)[0] in heads
    }


def head_state_dict(weights, head):
    """The state dict of the HF class for ``head`` (None: the bare ErnieMModel) from the bundle's weights."""
    heads = ("seq_cls", "seq_cls_reg", "token_cls", "qa", "mc", "ie")
    base = {k: v for k, v in weights.items() if not k.startswith(tuple(h + "." for h in heads))}
    if head is None:
        return base
    sd = {"ernie_m." + k: v for k, v in base.items()}
    if head in ("token_cls", "qa"):  # HF builds these heads' ErnieMModel without a pooler
        sd = {k: v for k, v in sd.items() if not k.startswith("ernie_m.pooler.")}
    sd.update({k[len(head) + 1 :]: v for k, v in weights.items() if k.startswith(head + ".")})
    return sd


def build(config_dict, weights, head, num_labels, dtype):
    kw = dict(config_dict)
    kw["num_labels"] = num_labels
    cls = ErnieMModel if head is None else HEAD_CLASSES[head]
    model = cls(ErnieMConfig(**kw))
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in head_state_dict(weights, head).items()}
    model.load_state_dict(sd, strict=True)
    return model.eval().to(dtype)


def hook_probes(model, n_heads):
    """Register the forward hooks; returns (probes dict filled during a forward, handles)."""
    probes, handles = {}, []

    def save(name, split=False):
        def hook(module, args, output):
            t = output[0] if isinstance(output, tuple) else output
            t = t.detach()
            if split:  # [B, L, H] -> [B, nh, L, d]
                B, L, H = t.shape
                t = t.view(B, L, n_heads, H // n_heads).permute(0, 2, 1, 3)
            probes[name] = t

        return hook

    def save_input(name):
        def hook(module, args):
            probes[name] = args[0].detach()

        return hook

    handles.append(model.embeddings.register_forward_hook(save("emb.out")))
    for i, layer in enumerate(model.encoder.layers):
        p = f"layer.{i:02d}."
        for proj in ("q", "k", "v"):
            mod = getattr(layer.self_attn.self_attn, f"{proj}_proj")
            handles.append(mod.register_forward_hook(save(p + f"attn.{proj}", split=True)))
        handles.append(layer.self_attn.out_proj.register_forward_pre_hook(save_input(p + "attn.context")))
        handles.append(layer.self_attn.out_proj.register_forward_hook(save(p + "attn.out")))
        handles.append(layer.norm1.register_forward_hook(save(p + "norm1.out")))
        handles.append(layer.linear1.register_forward_hook(save(p + "ffn.up")))
        handles.append(layer.linear2.register_forward_pre_hook(save_input(p + "ffn.act")))
        handles.append(layer.linear2.register_forward_hook(save(p + "ffn.down")))
        handles.append(layer.norm2.register_forward_hook(save(p + "out")))
    if model.pooler is not None:
        handles.append(model.pooler.register_forward_hook(save("pooler.out")))
    return probes, handles


def run_case(models, inputs, n_heads, head_dim):
    """Every probe of one case as numpy arrays."""
    base = models[None]
    probes, handles = hook_probes(base, n_heads)
    with torch.no_grad():
        # clones: HF adds 2 to position_ids in place
        out = base(**{k: torch.from_numpy(v.copy()) for k, v in inputs.items()}, output_attentions=True)
    for h in handles:
        h.remove()
    for i, probs in enumerate(out.attentions):
        p = f"layer.{i:02d}."
        q, k = probes[p + "attn.q"], probes[p + "attn.k"]
        probes[p + "attn.scores"] = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim)  # HF's expression
        probes[p + "attn.probs"] = probs
    for head, model in models.items():
        if head is None:
            continue
        kw = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
        if head == "mc":  # the case's rows are the choices of one question: [1, B, L]
            kw = {k: v[None] for k, v in kw.items()}
        with torch.no_grad():
            res = model(**kw)
        if head in ("qa", "ie"):
            probes[f"head.{head}.start_logits"] = res.start_logits
            probes[f"head.{head}.end_logits"] = res.end_logits
        else:
            probes[f"head.{head}.logits"] = res.logits
    return {k: v.detach().cpu().numpy() for k, v in probes.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", help="a bundle with <case>/input.* and weights/* (reference or export-inputs)")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--tier", choices=("core", "debug"), default="debug")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    meta, tensors = read_bundle(args.inputs)
    weights = {k[len("weights/") :]: v for k, v in tensors.items() if k.startswith("weights/")}
    if not weights:
        weights = recipe_weights(meta, args.inputs)
    cfg = meta["config"]
    n_heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg["hidden_size"]) // n_heads
    models = {None: build(cfg, weights, None, cfg.get("num_labels", 2), dtype)}
    for head, info in meta["heads"].items():
        models[head] = build(cfg, weights, head, int(info["num_labels"]), dtype)
    wanted = {p["name"] for p in meta["probes"] if args.tier == "debug" or p["tier"] == "core"}

    out = {}
    for case in meta["cases"]:
        name = case["name"]
        inputs = {k: tensors[f"{name}/input.{k}"] for k in ("input_ids", "attention_mask", "position_ids")}
        for probe, value in run_case(models, inputs, n_heads, head_dim).items():
            if probe in wanted:
                out[f"{name}/{probe}"] = np.ascontiguousarray(value)
    producer = {"library": "transformers", "library_version": transformers.__version__, "framework": "torch",
                "framework_version": torch.__version__, "python": platform.python_version(),
                "platform": platform.platform(), "hooks": "forward hooks; attn.scores recomputed from q, k"}  # fmt: skip
    metadata = {"format": "erniem-np-parity/1", "role": "candidate", "producer": json.dumps(producer),
                "compute_dtype": args.dtype, "flavor": "hf", "config": json.dumps(cfg),
                "cases": json.dumps(meta["cases"]), "probes": json.dumps(meta["probes"]),
                "heads": json.dumps(meta["heads"])}  # fmt: skip
    safetensors.numpy.save_file(out, args.output, metadata=metadata)
    print(f"wrote {args.output}: {len(out)} tensors from transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
