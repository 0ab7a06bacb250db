import aiohttp, datasets  # noqa: E401,F401  -- must come before paddle (paddle 2.6.2's zlib breaks aiohttp)

# Write tests/goldens/paddle-{tiny,odd,base12}.safetensors from the PaddleNLP reference.
#
# Run from the repository root inside the Paddle reference environment:
#
#     .venv-ref-paddle/bin/python scripts/reference/make_goldens_paddle.py [tiny odd base12] [--out DIR]
#
# Each file is a parity bundle of call cases (docs/parity-bundles.md#b10-call-cases; tests/goldens/README.md).
# Weights come from ``erniem_np.testing.random_weights(config, seed)`` with ``intermediate_size`` = 4 * hidden
# (the FFN width PaddleNLP builds whatever the config says), HF names and torch ``[out, in]`` layout;
# produce_bundle_paddle.py's ``build`` (with paddle_layout.py, independent of the package's loader) renames and
# transposes them to PaddleNLP's own layout, loads them with ``set_state_dict`` and checks that every parameter
# was set. The configs, input ids and the bundle layout are shared with the HF script: make_goldens_common.py.

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddlenlp  # noqa: E402
from make_goldens_common import PAD, configs, make_ids, metadata, parse_args, record_cases, write_golden  # noqa: E402
from paddle.nn import MultiHeadAttention  # noqa: E402
from produce_bundle_paddle import build  # noqa: E402

from erniem_np.testing import HEAD_LABELS, random_weights, weights_digest  # noqa: E402

CONFIGS = configs("relu", ffn_of=lambda sizes: 4 * sizes["hidden_size"])
PADDLE_STATE = ("tiny",)  # the goldens that also store Paddle's own state dicts (paddle_state/...)


def build_model(cfg, weights, head, **extra):
    """The Paddle class for ``head`` (None: ErnieMModel) with the golden's weights, in eval mode."""
    return build(cfg, weights, head, 2 if head is None else HEAD_LABELS[head], cfg["intermediate_size"], **extra)


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------


def t(a):
    return paddle.to_tensor(np.ascontiguousarray(a))


def f32(x):
    return np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------

# Recorded non-tensor forward arguments. return_dict=True (Paddle defaults to False) is added at call time for
# every class except UIEM and not recorded: it only changes how the outputs are packaged.
BASE_KW = {"output_hidden_states": True, "output_attentions": True}


def base_cases(rng, cfg):
    V, Lmax = cfg["vocab_size"], cfg["max_position_embeddings"]
    H, nh, nl = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    d = H // nh
    cases = []

    ids, mask = make_ids(rng, [9], 9, V)
    cases.append(
        dict(
            name="c00_single",
            description="B=1, L=9, explicit all-ones 2-D mask (Paddle: (1-mask)*-1e4 additive).",
            inputs=dict(input_ids=ids, attention_mask=mask),
            kwargs=dict(BASE_KW),
        )
    )

    ids, mask = make_ids(rng, [12, 9, 7], 12, V)
    cases.append(
        dict(
            name="c01_batch_pad",
            description="B=3, L=12, real lengths 12/9/7, right-padded with [PAD]=1, explicit 2-D mask.",
            inputs=dict(input_ids=ids, attention_mask=mask),
            kwargs=dict(BASE_KW),
        )
    )
    cases.append(
        dict(
            name="c02_implicit",
            description=(
                "Same ids as c01_batch_pad, no attention_mask. Paddle's implicit mask is "
                "(input_ids == 0) * -1e4 on the key axis: the [CLS] key (id 0) is masked and the [PAD] (id 1) "
                "keys are attended (checked: equals an explicit mask (ids != 0))."
            ),
            inputs=dict(input_ids=ids),
            kwargs=dict(BASE_KW),
            check_equiv=dict(input_ids=ids, attention_mask=(ids != 0).astype(np.int64)),
        )
    )

    ids0, mask0 = make_ids(rng, [6], 8, V)
    ids = np.concatenate([ids0, np.full((1, 8), PAD, dtype=np.int64)])
    mask = np.concatenate([mask0, np.zeros((1, 8), dtype=np.int64)])
    cases.append(
        dict(
            name="c03_fully_masked_row",
            description=(
                "B=2, L=8; row 0 has 6 real tokens + 2 pads; row 1 is all [PAD] ids with an all-zero 2-D mask. "
                "Paddle adds -1e4 to every key of row 1, which shifts all scores equally, so row 1 gets the "
                "ordinary (unmasked) softmax, not uniform attention as in HF -- but of the float32 sums "
                "score + (-1e4), whose rounding (ulp 2^-10 near 1e4) changes the probabilities by up to ~2e-4 "
                "versus an exact unmasked softmax: add the -1e4 in float32 to match."
            ),
            inputs=dict(input_ids=ids, attention_mask=mask),
            kwargs=dict(BASE_KW),
        )
    )

    L = Lmax - 2
    ids, mask = make_ids(rng, [L], L, V)
    cases.append(
        dict(
            name="c04_max_len",
            description=f"B=1, L=max_position_embeddings-2={L} (largest position index used = {Lmax - 1}), "
            "explicit all-ones mask.",
            inputs=dict(input_ids=ids, attention_mask=mask),
            kwargs=dict(BASE_KW),
        )
    )

    ids, mask = make_ids(rng, [10, 8], 10, V)
    pos = np.stack([np.arange(10) + 3, rng.permutation(10)]).astype(np.int64)
    cases.append(
        dict(
            name="c05_position_ids",
            description=(
                "B=2, L=10, explicit mask, explicit position_ids (row 0 arange(10)+3, row 1 a permutation). "
                "Paddle adds 2 to them (embedding row = position_id + 2) and does NOT modify the caller's "
                "tensor (checked)."
            ),
            inputs=dict(input_ids=ids, attention_mask=mask, position_ids=pos),
            kwargs=dict(BASE_KW),
        )
    )

    P = 4
    ids, mask_cur = make_ids(rng, [5, 4], 5, V)
    past = [
        (
            rng.standard_normal((2, nh, P, d)).astype(np.float32),
            rng.standard_normal((2, nh, P, d)).astype(np.float32),
        )
        for _ in range(nl)
    ]
    mask = np.concatenate([np.ones((2, P), dtype=np.int64), mask_cur], axis=1)
    mask[1, 1] = 0  # one past key masked in row 1 (the pad of row 1 is the other zero)
    cases.append(
        dict(
            name="c06_past",
            description=(
                f"B=2, L=5, past of P={P} per layer (k, v [B, nh, P, d], N(0,1)) passed as "
                "MultiHeadAttention.Cache(k, v) per layer; explicit 2-D mask of length P+L (row 1: past key 1 "
                "and its pad masked); use_cache=True. Default positions are offset by P (arange(L)+P, +2). "
                "present.<i>.k/v = concat(past, new k/v) along axis 2, [B, nh, P+L, d]."
            ),
            inputs=dict(input_ids=ids, attention_mask=mask),
            past=past,
            kwargs=dict(BASE_KW, use_cache=True),
        )
    )
    cases.append(
        dict(
            name="c06b_past_implicit",
            description=(
                "Same ids and past as c06_past, no attention_mask, use_cache=True. Paddle's mask is "
                "[0]*P ++ (input_ids == 0)*-1e4: past keys all attended, current [CLS] key masked, pads attended."
            ),
            inputs=dict(input_ids=ids),
            past=past,
            kwargs=dict(BASE_KW, use_cache=True),
        )
    )

    ids, mask = make_ids(rng, [8, 6], 8, V)
    emb = rng.standard_normal((2, 8, H)).astype(np.float32)
    cases.append(
        dict(
            name="c08_inputs_embeds",
            description=(
                "B=2, L=8, inputs_embeds N(0,1) [B, L, H] instead of input_ids, explicit mask (row 1 length 6). "
                "Paddle: x = LayerNorm(inputs_embeds + pos_emb[arange+2]). (Without a mask Paddle would fail: "
                "its implicit mask reads input_ids.)"
            ),
            inputs=dict(inputs_embeds=emb, attention_mask=mask),
            kwargs=dict(BASE_KW),
        )
    )

    ids, _ = make_ids(rng, [8, 7], 8, V)
    m4 = np.zeros((2, 1, 8, 8), dtype=np.float32)
    m4[0, 0][np.triu_indices(8, k=1)] = -1e4  # causal
    keep = rng.random((8, 8)) < 0.6
    keep[np.arange(8), np.arange(8)] = True  # every query keeps its own key
    m4[1, 0][~keep] = -1e4
    cases.append(
        dict(
            name="c09_4d_mask",
            description=(
                "B=2, L=8, a 4-D float32 additive mask [B, 1, L, L] (row 0 causal, row 1 random keep pattern "
                "with the diagonal kept; values 0 / -1e4) passed as attention_mask. Paddle passes a non-2-D "
                "float mask through unchanged and adds it to the scaled scores (broadcast over heads); "
                "int/bool masks of ndim != 2 would be converted by (mask - 1) * 1e9."
            ),
            inputs=dict(input_ids=ids, attention_mask=m4),
            kwargs=dict(BASE_KW),
        )
    )
    for c in cases:
        c["model"] = "base"
    return cases


def head_cases(rng, cfg, B=3, L=10, lengths=(10, 8, 6), only=None):
    V = cfg["vocab_size"]
    cases = []

    def add(**c):
        if only is None or c["name"] in only:
            cases.append(c)
        return c

    ids, mask = make_ids(rng, list(lengths), L, V)
    add(
        name="h_seq_cls",
        model="seq_cls",
        description=(
            "ErnieMForSequenceClassification, num_labels=3, int64 labels -> problem_type "
            "single_label_classification: loss = CrossEntropy(logits, labels), mean. "
            "logits = classifier(pooler_output) (dropout off in eval)."
        ),
        inputs=dict(input_ids=ids, attention_mask=mask, labels=rng.integers(0, 3, size=B).astype(np.int64)),
        kwargs={},
    )
    ids, mask = make_ids(rng, list(lengths), L, V)
    add(
        name="h_seq_cls_multilabel",
        model="seq_cls",
        description=(
            "ErnieMForSequenceClassification, num_labels=3, float32 multi-hot labels [B, 3] -> problem_type "
            "multi_label_classification: loss = BCEWithLogits(logits, labels), mean over all B*3 entries."
        ),
        inputs=dict(
            input_ids=ids, attention_mask=mask, labels=(rng.random((B, 3)) < 0.5).astype(np.float32)
        ),
        kwargs={},
    )
    ids, mask = make_ids(rng, list(lengths), L, V)
    add(
        name="h_seq_cls_reg",
        model="seq_cls_reg",
        description=(
            "ErnieMForSequenceClassification, num_labels=1, float32 labels [B] -> problem_type regression: "
            "loss = MSE(logits.squeeze(), labels.squeeze()), mean."
        ),
        inputs=dict(input_ids=ids, attention_mask=mask, labels=rng.standard_normal(B).astype(np.float32)),
        kwargs={},
    )
    ids, mask = make_ids(rng, list(lengths), L, V)
    lab = rng.integers(0, 5, size=(B, L)).astype(np.int64)
    lab[mask == 0] = -100
    add(
        name="h_token_cls",
        model="token_cls",
        description=(
            "ErnieMForTokenClassification, num_labels=5 (the Paddle class has a pooler; it is computed but "
            "unused). loss = CrossEntropy over the flattened [B*L] tokens, ignore_index=-100 (pads), "
            "mean over the non-ignored tokens."
        ),
        inputs=dict(input_ids=ids, attention_mask=mask, labels=lab),
        kwargs={},
    )
    ids, mask = make_ids(rng, list(lengths), L, V)
    sp = np.array([1, 15, 2], dtype=np.int64)[:B]
    ep = np.array([3, 6, 4], dtype=np.int64)[:B]
    add(
        name="h_qa",
        model="qa",
        description=(
            "ErnieMForQuestionAnswering (Paddle head Linear is named `classifier`, HF `qa_outputs`; the Paddle "
            "class has a pooler). start/end_logits = split of classifier(last_hidden_state). loss: positions "
            "clipped to [0, L], CrossEntropy(ignore_index=L) for start and for end (each a mean over its "
            "non-ignored rows), total = (start + end) / 2. start_positions[1] = 15 > L is clipped to L and "
            "ignored. The squeeze typo (`if start_positions.ndim > 1` tested before squeezing end_positions) "
            "has no observable effect: Paddle's CrossEntropy accepts [B] and [B, 1] labels alike (checked: "
            "same loss for every [B]/[B, 1] combination). Paddle's mean CE over all-ignored labels is 0, not NaN."
        ),
        inputs=dict(input_ids=ids, attention_mask=mask, start_positions=sp, end_positions=ep),
        kwargs={},
    )
    C, Lc = 3, 8
    ids, mask = make_ids(rng, list(rng.integers(4, Lc + 1, size=2 * C)), Lc, V)
    add(
        name="h_mc",
        model="mc",
        description=(
            "ErnieMForMultipleChoice with config.num_choices=3 (Paddle reshapes logits with "
            "config.num_choices, not the input shape). input_ids/attention_mask [2, 3, 8] are flattened to "
            "[6, 8]; logits = classifier(pooler_output).reshape(-1, 3); loss = CrossEntropy(logits, labels)."
        ),
        inputs=dict(
            input_ids=ids.reshape(2, C, Lc),
            attention_mask=mask.reshape(2, C, Lc),
            labels=rng.integers(0, C, size=2).astype(np.int64),
        ),
        kwargs={},
        extra_config={"num_choices": C},
    )
    ids, mask = make_ids(rng, list(lengths), L, V)
    add(
        name="h_ie",
        model="ie",
        description=(
            "UIEM(input_ids, position_ids=None, attention_mask): returns (start_prob, end_prob) = "
            "sigmoid(linear_start/end(last_hidden_state)).squeeze(-1), [B, L]; explicit 2-D mask, default "
            "positions. No loss, no return_dict (UIEM.forward takes only input_ids, position_ids, "
            "attention_mask)."
        ),
        inputs=dict(input_ids=ids, attention_mask=mask),
        kwargs={},
    )
    pos = np.zeros_like(ids)
    for b, n in enumerate(mask.sum(1)):
        pos[b, :n] = np.arange(n)
    add(
        name="h_ie_implicit",
        model="ie",
        description=(
            "UIEM called the way Taskflow calls it: same ids as h_ie, Paddle-tokenizer position_ids (arange "
            "over the real tokens, 0 at pads), no attention_mask -> implicit Paddle mask: [CLS] key (id 0) "
            "masked with -1e4, [PAD] keys attended (and embedded at position row 0+2)."
        ),
        inputs=dict(input_ids=ids, position_ids=pos),
        kwargs={},
    )
    return cases


def base12_cases(rng, cfg):
    V = cfg["vocab_size"]
    cases = []
    ids, mask = make_ids(rng, [16], 16, V)
    cases.append(
        dict(
            name="c00_single",
            model="base",
            description="B=1, L=16, explicit all-ones mask; last_hidden_state and pooler_output only.",
            inputs=dict(input_ids=ids, attention_mask=mask),
            kwargs={},
            store=("last_hidden_state", "pooler_output"),
        )
    )
    ids, mask = make_ids(rng, [16, 11], 16, V)
    cases.append(
        dict(
            name="c01_batch_pad",
            model="base",
            description="B=2, L=16, lengths 16/11, explicit 2-D mask; all hidden_states and attentions.",
            inputs=dict(input_ids=ids, attention_mask=mask),
            kwargs=dict(BASE_KW),
        )
    )
    cases.append(
        dict(
            name="c02_implicit",
            model="base",
            description=(
                "Same ids as c01_batch_pad, no mask: Paddle masks the [CLS] key (id 0) with -1e4 and attends "
                "the [PAD] keys. last_hidden_state, pooler_output and attentions."
            ),
            inputs=dict(input_ids=ids),
            kwargs={"output_attentions": True},
            store=("last_hidden_state", "pooler_output", "attentions"),
        )
    )
    cases += head_cases(rng, cfg, B=2, L=16, lengths=(16, 11), only=("h_seq_cls", "h_ie"))
    return cases


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------


def check_attn(name, a):
    s = a.sum(-1)
    err = float(np.abs(s - 1).max())
    if err > 1e-5:
        raise RuntimeError(f"{name}: attention rows do not sum to 1 (max err {err})")


def run_case(case, cfg_dict, weights):
    head = None if case["model"] == "base" else case["model"]
    model = build_model(cfg_dict, weights, head, **case.get("extra_config", {}))
    call_kw = {} if head == "ie" else {"return_dict": True}
    inputs = case["inputs"]
    before = {k: v.copy() for k, v in inputs.items()}
    args = {k: t(v) for k, v in inputs.items()}
    if "past" in case:
        args["past_key_values"] = [MultiHeadAttention.Cache(t(k), t(v)) for k, v in case["past"]]
    with paddle.no_grad():
        out = model(**args, **case["kwargs"], **call_kw)
    # the caller's tensors must be unchanged (HF mutates position_ids in place; Paddle must not)
    for k, v in args.items():
        if k == "past_key_values":
            for (pk, pv), c in zip(case["past"], v):
                assert np.array_equal(c.k.numpy(), pk) and np.array_equal(c.v.numpy(), pv), "past mutated"
        elif not np.array_equal(v.numpy(), before[k]):
            raise RuntimeError(f"{case['name']}: Paddle modified input {k}")

    res = {}
    if head is None:
        res["last_hidden_state"] = f32(out.last_hidden_state)
        res["pooler_output"] = f32(out.pooler_output)
        if out.hidden_states is not None:
            for i, h in enumerate(out.hidden_states):
                res[f"hidden_states.{i}"] = f32(h)
            assert np.array_equal(res[f"hidden_states.{i}"], res["last_hidden_state"])
        if out.attentions is not None:
            for i, a in enumerate(out.attentions):
                res[f"attentions.{i}"] = f32(a)
        if case["kwargs"].get("use_cache"):
            assert out.past_key_values is not None
            for i, c in enumerate(out.past_key_values):
                assert isinstance(c, MultiHeadAttention.Cache), type(c)
                res[f"past_key_values.{i}.k"] = f32(c.k)
                res[f"past_key_values.{i}.v"] = f32(c.v)
                P = case["past"][i][0].shape[2]
                assert np.array_equal(res[f"past_key_values.{i}.k"][:, :, :P], case["past"][i][0])
                assert np.array_equal(res[f"past_key_values.{i}.v"][:, :, :P], case["past"][i][1])
        if "store" in case:
            res = {
                k: v
                for k, v in res.items()
                if k in case["store"] or k.split(".")[0] in case["store"]
            }
    elif head == "ie":
        start_prob, end_prob = out
        res["start_prob"] = f32(start_prob)
        res["end_prob"] = f32(end_prob)
    elif head == "qa":
        res["start_logits"] = f32(out.start_logits)
        res["end_logits"] = f32(out.end_logits)
        if out.loss is not None:
            res["loss"] = f32(out.loss).reshape(())
    else:
        res["logits"] = f32(out.logits)
        if out.loss is not None:
            res["loss"] = f32(out.loss).reshape(())
    for k, v in res.items():
        if k.startswith("attentions."):
            check_attn(f"{case['name']}/{k}", v)
        assert np.all(np.isfinite(v)), (case["name"], k)

    if "check_equiv" in case:  # implicit mask == explicit (ids != 0) mask
        with paddle.no_grad():
            o2 = model(**{k: t(v) for k, v in case["check_equiv"].items()}, **case["kwargs"], **call_kw)
        diff = float(np.abs(f32(o2.last_hidden_state) - res["last_hidden_state"]).max())
        if diff > 1e-5:
            raise RuntimeError(f"{case['name']}: implicit mask != explicit (ids != 0) mask ({diff})")
    return res, model


def make_file(tag, spec, out_dir):
    cfg = spec["config"]
    n = cfg["num_hidden_layers"]
    weights = random_weights(cfg, spec["seed"])
    rng = np.random.default_rng(spec["input_seed"])
    cases = base12_cases(rng, cfg) if spec["small"] else base_cases(rng, cfg) + head_cases(rng, cfg)

    runs = []
    for case in cases:
        res, _ = run_case(case, cfg, weights)
        inputs = dict(case["inputs"], **({"past_key_values": case["past"]} if "past" in case else {}))
        runs.append(dict(name=case["name"], description=case["description"], head=case["model"], inputs=inputs,
                         kwargs=case["kwargs"], outputs=res))  # fmt: skip
    tensors, entries = record_cases(runs, n)

    if spec["store_weights"]:
        for k, v in weights.items():
            tensors[f"weights/{k}"] = np.ascontiguousarray(v, dtype=np.float32)
    if tag in PADDLE_STATE:
        for prefix, head in (("paddle_state/", None), ("paddle_state/uiem/", "ie")):
            for k, v in build_model(cfg, weights, head).state_dict().items():
                tensors[prefix + k] = np.ascontiguousarray(v.numpy())

    producer = {"library": "paddlenlp", "library_version": paddlenlp.__version__, "framework": "paddlepaddle",
                "framework_version": paddle.__version__}  # fmt: skip
    settings = {c["model"]: c["extra_config"] for c in cases if "extra_config" in c}  # mc: num_choices
    meta = metadata("paddle", producer, cfg, spec["seed"], weights_digest(weights), spec["store_weights"], entries,
                    settings)  # fmt: skip
    path = out_dir / f"paddle-{tag}.safetensors"
    write_golden(path, tensors, meta)
    path.chmod(0o644)
    size = path.stat().st_size
    print(f"{path}: {size / 1e6:.3f} MB, {len(entries)} cases, {len(tensors)} tensors, ffn {cfg['intermediate_size']}, "
          f"digest {meta['weights']['digest'][:12]}")  # fmt: skip
    return size


def main():
    args = parse_args("Write the PaddleNLP reference goldens (parity bundles of call cases).")
    paddle.set_device("cpu")
    paddle.set_default_dtype("float32")
    paddle.seed(0)
    total = sum(make_file(tag, CONFIGS[tag], args.out) for tag in args.tags)
    print(f"total {total / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
