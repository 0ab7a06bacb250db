"""Write the HuggingFace reference goldens: tests/goldens/hf-{tiny,odd,base12}.safetensors.

Run from the repository root inside the HF reference environment:

    .venv-ref-hf/bin/python scripts/reference/make_goldens_hf.py [tiny odd base12] [--out DIR]

Each file is a parity bundle of call cases (docs/parity-bundles.md#b10-call-cases; tests/goldens/README.md):
every case is one forward call, its arguments stored as given and every output HF returned stored as a probe.
The weights are ``erniem_np.testing.random_weights(config, seed)``, loaded with ``strict=True`` into a fresh HF
model per case by produce_bundle_hf.py's ``build`` (HF mutates ``config.problem_type`` on the first loss, and
adds 2 to ``position_ids`` in place). The inputs are drawn from ``np.random.default_rng(input_seed)`` (one
fixed seed per config) in case order, so a re-run writes the same tensors. Needs torch + transformers 4.46.x;
the package itself never imports this script. The configs, input ids and the bundle layout are shared with the
Paddle script: make_goldens_common.py beside this file.

HF behaviour the cases pin down (docs/reference.md, sections M1-M8 and V1):

* no ``attention_mask``: ids equal to ``pad_token_id`` (1) are masked with float32 min (c02);
* a fully masked row gives uniform attention (c03);
* ``position_ids`` get +2, also when given (c05);
* ``past_key_values`` is a per-layer ``(k, v)`` pair of ``[B, nh, P, d]`` tensors and needs an explicit
  ``[B, P + L]`` mask; default positions start at P; no new cache is returned (c06);
* ``head_mask`` ``[layers, nh]`` multiplies the attention probabilities, so rows need not sum to 1 (c07);
* ``inputs_embeds`` needs an explicit mask (c08).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers
from make_goldens_common import PAD, configs, make_ids, metadata, parse_args, record_cases, write_golden
from produce_bundle_hf import build

from erniem_np.parity.schema import flat_outputs
from erniem_np.testing import HEAD_LABELS, random_weights, weights_digest

# Config dicts given to ErnieMConfig (dropouts are irrelevant: every model runs in eval mode).
CONFIGS = configs("gelu_new", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-5)

BOTH = {"output_hidden_states": True, "output_attentions": True}


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def base_case(name, description, inputs, outputs, kwargs=BOTH, model="base"):
    return dict(name=name, description=description, model=model, inputs=inputs, outputs=outputs, kwargs=kwargs)


def all_base_outputs(cfg):
    n = cfg["num_hidden_layers"]
    return (
        ["last_hidden_state", "pooler_output"]
        + [f"hidden_states.{i}" for i in range(n + 1)]
        + [f"attentions.{i}" for i in range(n)]
    )


def full_cases(cfg, rng):
    """The case list of the small configs (tiny, odd): every base-model path plus every head with a loss."""
    V, H = cfg["vocab_size"], cfg["hidden_size"]
    nl, nh = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    d = H // nh
    out_all = all_base_outputs(cfg)
    cases = []

    ids, mask = make_ids(rng, [9], 9, V)
    cases.append(base_case("c00_single", "B=1, L=9, explicit all-ones mask",
                           dict(input_ids=ids, attention_mask=mask), out_all))

    ids, mask = make_ids(rng, [12, 9, 7], 12, V)
    cases.append(base_case("c01_batch_pad", "B=3, L=12, real lengths 12/9/7, right-padded with [PAD], explicit mask",
                           dict(input_ids=ids, attention_mask=mask), out_all))
    cases.append(base_case("c02_implicit", "same ids as c01_batch_pad, no attention_mask: HF masks ids == "
                           "pad_token_id (1) with float32 min",
                           dict(input_ids=ids.copy()), out_all))

    ids, mask = make_ids(rng, [8], 8, V)
    ids = np.concatenate([ids, np.full((1, 8), PAD, dtype=np.int64)])
    mask = np.concatenate([mask, np.zeros((1, 8), dtype=np.int64)])
    cases.append(base_case("c03_fully_masked_row", "B=2, L=8; row 1 is all [PAD] with an all-zero mask: HF "
                           "attention on that row is uniform (scores + float32 min collapse)",
                           dict(input_ids=ids, attention_mask=mask), out_all))

    L = cfg["max_position_embeddings"] - 2
    ids, mask = make_ids(rng, [L], L, V)
    cases.append(base_case("c04_max_len", f"B=1, L=max_position_embeddings-2={L} (last position row used), "
                           "explicit all-ones mask", dict(input_ids=ids, attention_mask=mask), out_all))

    ids, mask = make_ids(rng, [10, 7], 10, V)
    pos = np.stack([np.arange(10) + 3, rng.permutation(10)]).astype(np.int64)
    cases.append(base_case("c05_position_ids", "B=2, L=10, lengths 10/7, explicit position_ids as given by the "
                           "caller (row 0 arange+3, row 1 a permutation); the model adds 2",
                           dict(input_ids=ids, attention_mask=mask, position_ids=pos), out_all))

    P, L = 4, 5
    ids, mask = make_ids(rng, [5, 4], L, V)
    past = [
        (rng.standard_normal((2, nh, P, d)).astype(np.float32), rng.standard_normal((2, nh, P, d)).astype(np.float32))
        for _ in range(nl)
    ]
    full_mask = np.concatenate([np.ones((2, P), dtype=np.int64), mask], axis=1)
    full_mask[1, 2] = 0  # one masked past key in row 1 (row 1 also has one [PAD] at the end)
    cases.append(base_case("c06_past", f"B=2, L={L}, past_key_values P={P} per layer (k, v) [B, nh, P, d] N(0,1); "
                           "explicit [B, P+L] mask (row 1: past key 2 and the trailing pad masked); default "
                           "positions start at P; HF returns no cache",
                           dict(input_ids=ids, attention_mask=full_mask, past_key_values=past), out_all))

    ids, mask = make_ids(rng, [8, 5], 8, V)
    values = np.resize(np.array([0.0, 0.5, 1.0, 2.0]), nl * nh)
    head_mask = rng.permutation(values).reshape(nl, nh).astype(np.float32)
    cases.append(base_case("c07_head_mask", "B=2, L=8, lengths 8/5, head_mask [layers, nh] with 0/0.5/1/2: "
                           "multiplies the attention probs (returned attentions include it)",
                           dict(input_ids=ids, attention_mask=mask, head_mask=head_mask), out_all))

    _, mask = make_ids(rng, [8, 6], 8, V)
    emb = rng.standard_normal((2, 8, H)).astype(np.float32)
    cases.append(base_case("c08_inputs_embeds", "B=2, L=8, lengths 8/6, inputs_embeds N(0,1) instead of ids, "
                           "explicit mask (HF needs one)",
                           dict(inputs_embeds=emb, attention_mask=mask), out_all))

    cases += head_cases(cfg, rng, B=3, L=10, lengths=[10, 8, 6], small=False)
    return cases


def head_cases(cfg, rng, B, L, lengths, small):
    """Head cases with labels; explicit masks. ``small`` keeps only seq_cls and ie (base12)."""
    V = cfg["vocab_size"]
    cases = []
    logits = ["logits", "loss"]

    ids, mask = make_ids(rng, lengths, L, V)
    labels = rng.integers(0, HEAD_LABELS["seq_cls"], size=B).astype(np.int64)
    cases.append(base_case("h_seq_cls", f"seq_cls (num_labels {HEAD_LABELS['seq_cls']}), int64 labels -> "
                           "single_label_classification (cross-entropy)",
                           dict(input_ids=ids, attention_mask=mask, labels=labels), logits, {}, "seq_cls"))

    if not small:
        ids, mask = make_ids(rng, lengths, L, V)
        labels = rng.integers(0, 2, size=(B, HEAD_LABELS["seq_cls"])).astype(np.float32)
        cases.append(base_case("h_seq_cls_multilabel", "seq_cls, float32 multi-hot labels [B, 3] -> "
                               "multi_label_classification (BCEWithLogits)",
                               dict(input_ids=ids, attention_mask=mask, labels=labels), logits, {}, "seq_cls"))

        ids, mask = make_ids(rng, lengths, L, V)
        labels = rng.standard_normal(B).astype(np.float32)
        cases.append(base_case("h_seq_cls_reg", "seq_cls_reg (num_labels 1), float32 labels [B] -> regression "
                               "(MSE on squeezed logits)",
                               dict(input_ids=ids, attention_mask=mask, labels=labels), logits, {}, "seq_cls_reg"))

        ids, mask = make_ids(rng, lengths, L, V)
        labels = rng.integers(0, HEAD_LABELS["token_cls"], size=(B, L)).astype(np.int64)
        labels[mask == 0] = -100
        cases.append(base_case("h_token_cls", "token_cls (num_labels 5), labels [B, L] with -100 at pads "
                               "(ignored by cross-entropy)",
                               dict(input_ids=ids, attention_mask=mask, labels=labels), logits, {}, "token_cls"))

        ids, mask = make_ids(rng, lengths, L, V)
        start = np.array([rng.integers(1, n - 1) for n in lengths], dtype=np.int64)
        end = np.array([rng.integers(s, n - 1) for s, n in zip(start, lengths)], dtype=np.int64)
        start[1] = 15  # > L: clamped to L and ignored by CrossEntropyLoss(ignore_index=L)
        cases.append(base_case("h_qa", f"qa, start/end positions int64 [B]; start_positions[1] = 15 > L={L} is "
                               "clamped to L and ignored",
                               dict(input_ids=ids, attention_mask=mask, start_positions=start, end_positions=end),
                               ["start_logits", "end_logits", "loss"], {}, "qa"))

        C, Lc = 3, 8
        choice_lengths = [[8, 6, 5], [7, 8, 4]]
        pairs = [make_ids(rng, row, Lc, V) for row in choice_lengths]
        ids = np.stack([p[0] for p in pairs])
        mask = np.stack([p[1] for p in pairs])
        labels = rng.integers(0, C, size=2).astype(np.int64)
        cases.append(base_case("h_mc", f"mc, input_ids/attention_mask [B=2, C={C}, L={Lc}] (padded), labels [B]; "
                               "logits [B, C]",
                               dict(input_ids=ids, attention_mask=mask, labels=labels), logits, {}, "mc"))

    ids, mask = make_ids(rng, lengths, L, V)
    start = ((rng.random((B, L)) < 0.25) & (mask == 1)).astype(np.float32)
    end = ((rng.random((B, L)) < 0.25) & (mask == 1)).astype(np.float32)
    cases.append(base_case("h_ie", "ie, float32 multi-hot start/end targets [B, L]; start/end_logits are pre-sigmoid; "
                           "loss = mean of the two BCEWithLogits",
                           dict(input_ids=ids, attention_mask=mask, start_positions=start, end_positions=end),
                           ["start_logits", "end_logits", "loss"], {}, "ie"))
    return cases


def small_cases(cfg, rng):
    """base12: few, small outputs so the file stays about 2 MB."""
    V = cfg["vocab_size"]
    n = cfg["num_hidden_layers"]
    cases = []
    ids, mask = make_ids(rng, [16], 16, V)
    cases.append(base_case("c00_single", "B=1, L=16, explicit all-ones mask",
                           dict(input_ids=ids, attention_mask=mask), ["last_hidden_state", "pooler_output"], {}))
    ids, mask = make_ids(rng, [16, 11], 16, V)
    cases.append(base_case("c01_batch_pad", "B=2, L=16, lengths 16/11, explicit mask",
                           dict(input_ids=ids, attention_mask=mask), all_base_outputs(cfg)))
    cases.append(base_case("c02_implicit", "same ids as c01_batch_pad, no attention_mask (HF masks ids == 1)",
                           dict(input_ids=ids.copy()),
                           ["last_hidden_state", "pooler_output"] + [f"attentions.{i}" for i in range(n)],
                           {"output_attentions": True}))
    cases += head_cases(cfg, rng, B=2, L=16, lengths=[16, 11], small=True)
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Running HF


def to_torch(inputs):
    """Fresh torch tensors (clones: HF adds 2 to position_ids in place)."""
    out = {}
    for k, v in inputs.items():
        if k == "past_key_values":
            out[k] = tuple((torch.from_numpy(pk.copy()), torch.from_numpy(pv.copy())) for pk, pv in v)
        else:
            out[k] = torch.from_numpy(v.copy())
    return out


def collect(result, names):
    """The outputs HF returned, by flat HF name (schema.flat_outputs), as float32 NumPy arrays; ``names`` are
    the ones the case expects, all of which must be there."""
    got = {k: t.detach().cpu().numpy().astype(np.float32) for k, t in flat_outputs(result).items()}
    missing = [n for n in names if n not in got]
    assert not missing, missing  # (astype makes a C-contiguous copy; a 0-d loss stays 0-d)
    return got


def check_case(case, inputs, got, cfg):
    """Sanity checks on what HF returned, before anything is written."""
    name = case["name"]
    n = cfg["num_hidden_layers"]
    if "hidden_states.0" in got:
        assert np.array_equal(got[f"hidden_states.{n}"], got["last_hidden_state"]), name
    mask = inputs.get("attention_mask")
    if mask is None and "input_ids" in inputs:
        mask = (inputs["input_ids"] != PAD).astype(np.int64)
    for i in range(n):
        a = got.get(f"attentions.{i}")
        if a is None:
            continue
        B, nh, Lq, Lk = a.shape
        assert Lk == mask.shape[-1], (name, a.shape)
        expect = np.ones((B, nh), dtype=np.float32)
        if "head_mask" in inputs:
            expect = np.broadcast_to(inputs["head_mask"][i], (B, nh))
        sums = a.sum(-1)  # [B, nh, Lq]
        assert np.allclose(sums, expect[:, :, None], atol=1e-5), (name, i, np.abs(sums - expect[:, :, None]).max())
        for b in range(B):
            if mask[b].any():  # masked keys get exactly 0 probability
                assert np.all(a[b][..., mask[b] == 0] == 0.0), (name, i, b)
            else:  # fully masked row: scores + float32 min collapse -> uniform
                assert np.allclose(a[b], 1.0 / Lk, atol=1e-7, rtol=0), (name, i, b)
    for k, v in got.items():
        assert np.all(np.isfinite(v)), (name, k)


def run_case(case, cfg, weights):
    head = None if case["model"] == "base" else case["model"]
    model = build(cfg, weights, head, 2 if head is None else HEAD_LABELS[head], torch.float32)
    inputs = case["inputs"]
    with torch.no_grad():
        result = model(**to_torch(inputs), **case["kwargs"])
    got = collect(result, case["outputs"])
    if head in ("seq_cls", "seq_cls_reg"):
        labels = inputs["labels"]
        want = (
            "regression"
            if head == "seq_cls_reg"
            else ("single_label_classification" if labels.dtype == np.int64 else "multi_label_classification")
        )
        assert model.config.problem_type == want, (case["name"], model.config.problem_type)
    if case["model"] == "base":
        assert getattr(result, "past_key_values", None) is None  # HF never returns a cache
    check_case(case, inputs, got, cfg)
    return got


def cross_checks(cases, results):
    by = dict(zip([c["name"] for c in cases], results))
    if "c01_batch_pad" in by and "c02_implicit" in by:
        for k in by["c02_implicit"]:
            # the implicit mask (ids != 1) equals the explicit one here: same numbers
            assert np.allclose(by["c01_batch_pad"][k], by["c02_implicit"][k], atol=1e-6, rtol=0), k


def write_file(tag, spec, out_dir):
    cfg = spec["config"]
    n = cfg["num_hidden_layers"]
    weights = random_weights(cfg, spec["seed"])
    rng = np.random.default_rng(spec["input_seed"])
    cases = small_cases(cfg, rng) if spec["small"] else full_cases(cfg, rng)

    runs, results = [], []
    for case in cases:
        got = run_case(case, cfg, weights)
        results.append(got)
        runs.append(dict(name=case["name"], description=case["description"], head=case["model"],
                         inputs=case["inputs"], kwargs=case["kwargs"], outputs={k: got[k] for k in case["outputs"]}))
    tensors, entries = record_cases(runs, n)
    cross_checks(cases, results)
    if spec["store_weights"]:
        tensors.update({f"weights/{k}": v for k, v in weights.items()})

    producer = {"library": "transformers", "library_version": transformers.__version__, "framework": "torch",
                "framework_version": torch.__version__}  # fmt: skip
    meta = metadata("hf", producer, cfg, spec["seed"], weights_digest(weights), spec["store_weights"], entries)
    path = out_dir / f"hf-{tag}.safetensors"
    write_golden(path, tensors, meta)
    print(f"{path}: {len(cases)} cases, {len(tensors)} tensors, {path.stat().st_size / 1e6:.2f} MB")
    return path


def main():
    args = parse_args("Write the HF reference goldens (parity bundles of call cases).")
    torch.manual_seed(0)
    torch.set_num_threads(1)  # fixed summation order run to run
    total = sum(write_file(tag, CONFIGS[tag], args.out).stat().st_size for tag in args.tags)
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
