import aiohttp, datasets  # noqa: E401,F401  -- must come before paddle (paddle 2.6.2's zlib breaks aiohttp)
# ruff: noqa: I001  (that import must stay first)

# Produce a parity bundle from the PaddleNLP reference (paddlenlp 2.8.1, paddlepaddle 2.6.2) through hooks.
#
# Run inside the Paddle reference environment, on a bundle holding inputs and weights (a reference bundle, or
# `erniem-np parity export-inputs REF -o IN --with-weights`):
#
#     .venv-ref-paddle/bin/python scripts/reference/produce_bundle_paddle.py IN.safetensors \
#         -o paddle.candidate.safetensors
#
# Standalone like scripts/reference/produce_bundle_hf.py: numpy, paddle, paddlenlp and safetensors, with
# produce_bundle_common.py (reading the bundle, the hook sites, writing the candidate) and paddle_layout.py
# beside it. The bundle's weights (HF names, torch [out, in] layout) are renamed and transposed to Paddle's
# layout by paddle_layout.py, loaded with set_state_dict and checked parameter by parameter; every case runs in
# eval mode in float32 (Paddle's default dtype: its 2-D mask is cast to it).
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
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the shared modules beside this file, also when it is loaded by path
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddlenlp  # noqa: E402
from paddle_layout import paddle_state  # noqa: E402
from paddlenlp.transformers import (  # noqa: E402
    UIEM,
    ErnieMConfig,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)
from produce_bundle_common import (  # noqa: E402
    bundle_weights,
    case_inputs,
    head_state,
    hook_probes,
    read_bundle,
    wanted_probes,
    write_candidate,
)

HEAD_CLASSES = {
    None: ErnieMModel,
    "seq_cls": ErnieMForSequenceClassification,
    "seq_cls_reg": ErnieMForSequenceClassification,  # num_labels 1 (make_goldens_paddle.py builds it)
    "token_cls": ErnieMForTokenClassification,
    "qa": ErnieMForQuestionAnswering,
    "mc": ErnieMForMultipleChoice,
    "ie": UIEM,
}


def split_heads(t, n_heads):
    """[B, L, H] -> [B, nh, L, d]."""
    B, L, H = t.shape
    return t.reshape([B, L, n_heads, H // n_heads]).transpose([0, 2, 1, 3])


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
    state = paddle_state(head_state(weights, head), head)  # Paddle's heads keep the pooler
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


def _keep(store, key):
    def hook(layer, inputs, output):
        store[key] = output

    return hook


def run_case(models, inputs, n_heads, head_dim):
    base = models[None]
    probes, handles = hook_probes(base, lambda layer: layer.self_attn, post_hook="register_forward_post_hook",
                                  pre_hook="register_forward_pre_hook", split_heads=lambda t: split_heads(t, n_heads),
                                  keep=lambda t: t.numpy())  # fmt: skip
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
    weights = bundle_weights(tensors)
    if not weights:
        sys.exit(f"{args.inputs}: no weights/* tensors (use export-inputs --with-weights)")
    cfg = meta["config"]
    n_heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg["hidden_size"]) // n_heads
    ffn = int(weights["encoder.layers.0.linear1.weight"].shape[0])
    wanted = wanted_probes(meta, args.tier)
    heads = {h: int(info["num_labels"]) for h, info in meta["heads"].items()}
    models = {None: build(cfg, weights, None, 2, ffn)}
    models.update({h: build(cfg, weights, h, n, ffn) for h, n in heads.items() if h != "mc"})

    out = {}
    for case in meta["cases"]:
        inputs = case_inputs(tensors, case)
        if "mc" in heads:  # Paddle reshapes the logits with config.num_choices: one model per choice count
            models["mc"] = build(cfg, weights, "mc", heads["mc"], ffn, num_choices=inputs["input_ids"].shape[0])
        for probe, value in run_case(models, inputs, n_heads, head_dim).items():
            if probe in wanted:
                out[f"{case['name']}/{probe}"] = np.ascontiguousarray(value)
    producer = {"library": "paddlenlp", "library_version": paddlenlp.__version__, "framework": "paddlepaddle",
                "framework_version": paddle.__version__, "python": platform.python_version(),
                "platform": platform.platform(),
                "hooks": "forward hooks; attn.scores recomputed from q, k; FFN width "
                         f"{ffn}{' (rebuilt: Paddle builds 4 * hidden)' if ffn != 4 * int(cfg['hidden_size']) else ''}"}  # fmt: skip
    write_candidate(args.output, out, meta, producer=producer, compute_dtype="float32", flavor="paddle")
    print(f"wrote {args.output}: {len(out)} tensors from paddlenlp {paddlenlp.__version__}")


if __name__ == "__main__":
    main()
