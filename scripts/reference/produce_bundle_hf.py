"""Produce a parity bundle from the HuggingFace reference (transformers 4.46.3, torch) through forward hooks.

Run inside the HF reference environment, on a bundle that holds the inputs and the weights (a reference
bundle, or ``erniem-np parity export-inputs REF -o IN --with-weights``):

    .venv-ref-hf/bin/python scripts/reference/produce_bundle_hf.py IN.safetensors -o hf.candidate.safetensors

It is written the way another port would write its candidate, and imports nothing but numpy, torch,
transformers, safetensors and produce_bundle_common.py beside it (what it shares with the Paddle producer:
reading the bundle, the hook sites, writing the candidate); erniem_np only for a bundle without weights. It
reads ``<case>/input.*`` and ``weights/*``, builds HF's ErnieMModel and each head the bundle lists with those
weights (``load_state_dict(strict=True)``), runs every case in eval mode with one thread, and writes
``<case>/<probe>`` for every probe the bundle's metadata lists.

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

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # produce_bundle_common beside this file, also when it is loaded by path
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from produce_bundle_common import (  # noqa: E402
    HEADS,
    bundle_weights,
    case_inputs,
    head_state,
    hook_probes,
    read_bundle,
    wanted_probes,
    write_candidate,
)
from transformers import (  # noqa: E402
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
    "seq_cls_reg": ErnieMForSequenceClassification,  # num_labels 1 (make_goldens_hf.py builds it)
    "token_cls": ErnieMForTokenClassification,
    "qa": ErnieMForQuestionAnswering,
    "mc": ErnieMForMultipleChoice,
    "ie": ErnieMForInformationExtraction,
}


def recipe_weights(meta, path):
    """Weights a bundle does not store (ErnieM-base-shaped presets) drawn again from its recorded recipe; this
    is the one place the script needs erniem_np (the repository's, or pip install erniem-np in this
    environment)."""
    info = json.loads(meta.get("weights", "{}"))
    if info.get("recipe") != "erniem_np.parity.produce.parity_weights":
        sys.exit(f"{path}: no weights/* tensors and no recorded recipe (use export-inputs --with-weights)")
    sys.path.insert(0, str(HERE.parents[1]))  # the repository's erniem_np
    from erniem_np.config import ErnieMConfig
    from erniem_np.parity.produce import parity_weights

    weights = parity_weights(ErnieMConfig.from_dict(meta["config"]), int(info["seed"]))
    heads = set(meta["heads"])  # the heads the bundle lists, and the base model
    return {k: v for k, v in weights.items()
            if not k.startswith(tuple(h + "." for h in HEADS)) or k.split(".")[0] in heads}  # fmt: skip


def split_heads(t, n_heads):
    """[B, L, H] -> [B, nh, L, d], as ErnieMSelfAttention.transpose_for_scores does."""
    B, L, H = t.shape
    return t.view(B, L, n_heads, H // n_heads).permute(0, 2, 1, 3)


def build(config_dict, weights, head, num_labels, dtype):
    kw = dict(config_dict)
    kw["num_labels"] = num_labels
    cls = ErnieMModel if head is None else HEAD_CLASSES[head]
    model = cls(ErnieMConfig(**kw))
    pooler = head not in ("token_cls", "qa")  # HF builds these heads' ErnieMModel without a pooler
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in head_state(weights, head, pooler).items()}
    model.load_state_dict(sd, strict=True)
    return model.eval().to(dtype)


def run_case(models, inputs, n_heads, head_dim):
    """Every probe of one case as numpy arrays."""
    base = models[None]
    probes, handles = hook_probes(base, lambda layer: layer.self_attn.self_attn, post_hook="register_forward_hook",
                                  pre_hook="register_forward_pre_hook", split_heads=lambda t: split_heads(t, n_heads),
                                  keep=lambda t: t.detach())  # fmt: skip
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
    weights = bundle_weights(tensors) or recipe_weights(meta, args.inputs)
    cfg = meta["config"]
    n_heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg["hidden_size"]) // n_heads
    models = {None: build(cfg, weights, None, cfg.get("num_labels", 2), dtype)}
    for head, info in meta["heads"].items():
        models[head] = build(cfg, weights, head, int(info["num_labels"]), dtype)
    wanted = wanted_probes(meta, args.tier)

    out = {}
    for case in meta["cases"]:
        for probe, value in run_case(models, case_inputs(tensors, case), n_heads, head_dim).items():
            if probe in wanted:
                out[f"{case['name']}/{probe}"] = np.ascontiguousarray(value)
    producer = {"library": "transformers", "library_version": transformers.__version__, "framework": "torch",
                "framework_version": torch.__version__, "python": platform.python_version(),
                "platform": platform.platform(), "hooks": "forward hooks; attn.scores recomputed from q, k"}  # fmt: skip
    write_candidate(args.output, out, meta, producer=producer, compute_dtype=args.dtype, flavor="hf")
    print(f"wrote {args.output}: {len(out)} tensors from transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
