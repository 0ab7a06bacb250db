import aiohttp, datasets  # noqa: E401,F401  -- must come before paddle (paddle 2.6.2's zlib breaks aiohttp)
# ruff: noqa: I001  (that import must stay first)

# Produce a parity bundle from the PaddleNLP reference (paddlenlp 2.8.1, paddlepaddle 2.6.2) through hooks.
#
# Run inside the Paddle reference environment, on a bundle holding inputs and weights (a reference bundle, or
# `erniem-np parity export-inputs REF -o IN --with-weights`):
#
#     .venv-ref-paddle/bin/python scripts/produce_bundle_paddle.py IN.safetensors -o paddle.candidate.safetensors
#
# Standalone like scripts/produce_bundle_hf.py: numpy, paddle, paddlenlp and safetensors only. The bundle's
# weights (HF names, torch [out, in] layout) are renamed and transposed to Paddle's layout here, loaded with
# set_state_dict and checked parameter by parameter; every case runs in eval mode in float32 (Paddle's default
# dtype: its 2-D mask is cast to it).
#
# Where each probe comes from (Paddle module names under ErnieMModel):
#   emb.out: output of `embeddings`; layer.NN.attn.probs: output_attentions=True;
#   layer.NN.attn.q/k/v: outputs of `encoder.layers.NN.self_attn.{q,k,v}_proj` split into heads;
#   layer.NN.attn.scores: recomputed from the hooked q and k with Paddle's own expression (MultiHeadAttention:
#     `paddle.matmul(q * head_dim**-0.5, k, transpose_y=True)`, before the mask);
#   attn.context: the input of `self_attn.out_proj`; attn.out: its output; norm1.out, ffn.up, ffn.down, out:
#     outputs of norm1, linear1, linear2, norm2; ffn.act: the input of linear2; pooler.out: output of `pooler`;
#   head.*: the Paddle head classes (ErnieMForQuestionAnswering's `classifier` is HF's qa_outputs; UIEM returns
#     sigmoid probabilities, so head.ie.*_logits are the outputs of its linear_start / linear_end, squeezed).
#
# QUIRK: PaddleNLP builds the FFN with dim_feedforward = 4 * hidden_size whatever the config says. For a bundle
# whose FFN width differs (tiny: 37), linear1/linear2 are replaced by nn.Linear layers of the bundle's width
# before loading (the same layers, only the width differs); the candidate's metadata records it.

import argparse
import json
import platform
import sys

import numpy as np
import paddle
import paddlenlp
from paddlenlp.transformers import (
    UIEM,
    ErnieMConfig,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)
from safetensors import safe_open
from safetensors.numpy import save_file

HEAD_CLASSES = {
    None: ErnieMModel,
    "seq_cls": ErnieMForSequenceClassification,
    "token_cls": ErnieMForTokenClassification,
    "qa": ErnieMForQuestionAnswering,
    "mc": ErnieMForMultipleChoice,
    "ie": UIEM,
}
LINEAR_MODULES = {"q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2", "dense", "classifier",
                  "qa_outputs", "linear_start", "linear_end"}  # fmt: skip
ALL_HEADS = ("seq_cls", "seq_cls_reg", "token_cls", "qa", "mc", "ie")


def read_bundle(path):
    with safe_open(path, "np") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key in ("config", "cases", "probes", "heads"):
        if key not in meta:
            sys.exit(f"{path}: metadata has no {key!r}: pass a reference bundle or an export-inputs file")
        meta[key] = json.loads(meta[key])
    return meta, tensors


def paddle_state(weights, head):
    """Paddle names and [in, out] layout for the class of ``head`` (None: the bare ErnieMModel)."""
    base = {k: v for k, v in weights.items() if not k.startswith(tuple(h + "." for h in ALL_HEADS))}
    hf = dict(base) if head is None else {"ernie_m." + k: v for k, v in base.items()}  # Paddle heads keep a pooler
    if head is not None:
        hf.update({k[len(head) + 1 :]: v for k, v in weights.items() if k.startswith(head + ".")})
    out = {}
    for name, a in hf.items():
        pname = name.replace(".self_attn.self_attn.", ".self_attn.")
        if head == "qa" and pname.startswith("qa_outputs."):
            pname = "classifier." + pname[len("qa_outputs.") :]
        module, leaf = name.split(".")[-2:]
        a = np.asarray(a, dtype=np.float32)
        if module in LINEAR_MODULES and leaf == "weight":
            a = a.T
        out[pname] = np.ascontiguousarray(a)
    return out


def build(cfg, weights, head, num_labels, ffn, num_choices=None):
    paddle.seed(0)
    kw = {k: v for k, v in cfg.items() if k not in ("flavor",)}
    kw["num_labels"] = num_labels
    if num_choices is not None:
        kw["num_choices"] = num_choices
    model = HEAD_CLASSES[head](ErnieMConfig(**kw))
    base = model if head is None else model.ernie_m
    if base.encoder.layers[0].linear1.weight.shape[1] != ffn:  # QUIRK: Paddle's FFN is always 4 * hidden
        H = int(cfg["hidden_size"])
        for layer in base.encoder.layers:
            layer.linear1 = paddle.nn.Linear(H, ffn)
            layer.linear2 = paddle.nn.Linear(ffn, H)
    state = paddle_state(weights, head)
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in state.items()}
    if have != want:
        raise SystemExit(f"state dict mismatch: missing {sorted(set(have) - set(want))}, unexpected "
                         f"{sorted(set(want) - set(have))}, shapes {[k for k in want if have.get(k) != want[k]]}")  # fmt: skip
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    for k, v in model.state_dict().items():
        if not np.array_equal(v.numpy(), state[k]):
            raise SystemExit(f"parameter {k} was not set")
    model.eval()
    return model


def hook_probes(model, n_heads):
    probes, handles = {}, []

    def save(name, split=False):
        def hook(layer, inputs, output):
            t = output[0] if isinstance(output, (tuple, list)) else output
            if split:  # [B, L, H] -> [B, nh, L, d]
                B, L, H = t.shape
                t = t.reshape([B, L, n_heads, H // n_heads]).transpose([0, 2, 1, 3])
            probes[name] = t.numpy()

        return hook

    def save_input(name):
        def hook(layer, inputs):
            probes[name] = inputs[0].numpy()

        return hook

    handles.append(model.embeddings.register_forward_post_hook(save("emb.out")))
    for i, layer in enumerate(model.encoder.layers):
        p = f"layer.{i:02d}."
        for proj in ("q", "k", "v"):
            handles.append(getattr(layer.self_attn, f"{proj}_proj").register_forward_post_hook(
                save(p + f"attn.{proj}", split=True)))  # fmt: skip
        handles.append(layer.self_attn.out_proj.register_forward_pre_hook(save_input(p + "attn.context")))
        handles.append(layer.self_attn.out_proj.register_forward_post_hook(save(p + "attn.out")))
        handles.append(layer.norm1.register_forward_post_hook(save(p + "norm1.out")))
        handles.append(layer.linear1.register_forward_post_hook(save(p + "ffn.up")))
        handles.append(layer.linear2.register_forward_pre_hook(save_input(p + "ffn.act")))
        handles.append(layer.linear2.register_forward_post_hook(save(p + "ffn.down")))
        handles.append(layer.norm2.register_forward_post_hook(save(p + "out")))
    handles.append(model.pooler.register_forward_post_hook(save("pooler.out")))
    return probes, handles


def _keep(store, key):
    def hook(layer, inputs, output):
        store[key] = output

    return hook


def run_case(models, inputs, n_heads, head_dim):
    base = models[None]
    probes, handles = hook_probes(base, n_heads)
    t = {k: paddle.to_tensor(v.copy()) for k, v in inputs.items()}
    with paddle.no_grad():
        out = base(**t, output_attentions=True, return_dict=True)
    for h in handles:
        h.remove()
    for i, probs in enumerate(out.attentions):
        p = f"layer.{i:02d}."
        q, k = paddle.to_tensor(probes[p + "attn.q"]), paddle.to_tensor(probes[p + "attn.k"])
        probes[p + "attn.scores"] = paddle.matmul(q * head_dim**-0.5, k, transpose_y=True).numpy()  # Paddle's
        probes[p + "attn.probs"] = probs.numpy()
    for head, model in models.items():
        if head is None:
            continue
        kw = {k: paddle.to_tensor(v.copy()) for k, v in inputs.items()}
        with paddle.no_grad():
            if head == "mc":  # the case's rows are the choices of one question: [1, B, L]
                res = model(**{k: v.unsqueeze(0) for k, v in kw.items()}, return_dict=True)
                probes["head.mc.logits"] = res.logits.numpy()
            elif head == "ie":  # UIEM returns sigmoids: take the logits from its two Linear layers
                got = {}
                hs = [model.linear_start.register_forward_post_hook(_keep(got, "s")),
                      model.linear_end.register_forward_post_hook(_keep(got, "e"))]  # fmt: skip
                model(input_ids=kw["input_ids"], position_ids=kw["position_ids"], attention_mask=kw["attention_mask"])
                for h in hs:
                    h.remove()
                probes["head.ie.start_logits"] = got["s"].numpy()[..., 0]
                probes["head.ie.end_logits"] = got["e"].numpy()[..., 0]
            elif head == "qa":
                res = model(**kw, return_dict=True)
                probes["head.qa.start_logits"] = res.start_logits.numpy()
                probes["head.qa.end_logits"] = res.end_logits.numpy()
            else:
                probes[f"head.{head}.logits"] = model(**kw, return_dict=True).logits.numpy()
    return probes


def main(argv=None):
    ap = argparse.ArgumentParser(description="A parity bundle from PaddleNLP 2.8.1 through hooks.")
    ap.add_argument("inputs", help="a bundle with <case>/input.* and weights/* (reference or export-inputs)")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--tier", choices=("core", "debug"), default="debug")
    args = ap.parse_args(argv)

    paddle.set_device("cpu")
    meta, tensors = read_bundle(args.inputs)
    weights = {k[len("weights/") :]: v for k, v in tensors.items() if k.startswith("weights/")}
    if not weights:
        sys.exit(f"{args.inputs}: no weights/* tensors (use export-inputs --with-weights)")
    cfg = meta["config"]
    n_heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg["hidden_size"]) // n_heads
    ffn = int(weights["encoder.layers.0.linear1.weight"].shape[0])
    wanted = {p["name"] for p in meta["probes"] if args.tier == "debug" or p["tier"] == "core"}
    heads = {h: int(info["num_labels"]) for h, info in meta["heads"].items()}
    models = {None: build(cfg, weights, None, 2, ffn)}
    models.update({h: build(cfg, weights, h, n, ffn) for h, n in heads.items() if h != "mc"})

    out = {}
    for case in meta["cases"]:
        name = case["name"]
        inputs = {k: tensors[f"{name}/input.{k}"] for k in ("input_ids", "attention_mask", "position_ids")}
        if "mc" in heads:  # Paddle reshapes the logits with config.num_choices: one model per choice count
            models["mc"] = build(cfg, weights, "mc", heads["mc"], ffn, num_choices=inputs["input_ids"].shape[0])
        for probe, value in run_case(models, inputs, n_heads, head_dim).items():
            if probe in wanted:
                out[f"{name}/{probe}"] = np.ascontiguousarray(value)
    producer = {"library": "paddlenlp", "library_version": paddlenlp.__version__, "framework": "paddlepaddle",
                "framework_version": paddle.__version__, "python": platform.python_version(),
                "platform": platform.platform(),
                "hooks": "forward hooks; attn.scores recomputed from q, k; FFN width "
                         f"{ffn}{' (rebuilt: Paddle builds 4 * hidden)' if ffn != 4 * int(cfg['hidden_size']) else ''}"}  # fmt: skip
    metadata = {"format": "erniem-np-parity/1", "role": "candidate", "producer": json.dumps(producer),
                "compute_dtype": "float32", "flavor": "paddle", "config": json.dumps(cfg),
                "cases": json.dumps(meta["cases"]), "probes": json.dumps(meta["probes"]),
                "heads": json.dumps(meta["heads"])}  # fmt: skip
    save_file(out, args.output, metadata=metadata)
    print(f"wrote {args.output}: {len(out)} tensors from paddlenlp {paddlenlp.__version__}")


if __name__ == "__main__":
    main()
