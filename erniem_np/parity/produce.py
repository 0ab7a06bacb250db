"""This implementation as a bundle producer: default cases, the weights recipe, recording every probe.

``make_bundle`` runs ErnieMModel (and each head) on every case with ``probes=`` and returns the tensors and
metadata of a bundle; ``erniem-np golden`` writes it. The reference producers (scripts/reference/produce_bundle_hf.py,
scripts/reference/produce_bundle_paddle.py) write the same names through forward hooks.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np

from .. import layers
from ..config import ErnieMConfig
from ..testing import HEAD_LABELS, random_weights, split_head, weights_digest
from . import schema
from .compare import valid_mask

ALL_HEADS = ("seq_cls", "token_cls", "qa", "mc", "ie")

# The shipped bundles (see its README.md): tiny.hf, tiny.paddle, odd.hf, weights included.
BUNDLE_DIR = Path(__file__).resolve().parents[1] / "data" / "bundles"

# The small configs whose bundles ship with the package (erniem_np/data/bundles/), weights included.
# tiny: the smallest config with every feature; odd: 3 heads of 16, an FFN width that is not 4x, gelu_new
# is NOT used here (a bundle is about ErnieM's own exact GELU), a 24-row position table.
PARITY_CONFIGS = {
    "tiny": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=20, seed=0),
    "odd": dict(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=100,
                max_position_embeddings=24, seed=1),
    # ErnieM-base-shaped (weights not stored: drawn again from the seed; 1.1 GB in float32)
    "base": dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=514, seed=2),
}  # fmt: skip

EMBEDDING_STD = 0.05  # the scale of trained ErnieM embedding tables (see parity_weights)


def parity_config(name: str, flavor: str = "hf") -> tuple[ErnieMConfig, int]:
    spec = dict(PARITY_CONFIGS[name])
    seed = spec.pop("seed")
    return ErnieMConfig(**spec, hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1, flavor=flavor), seed


def parity_weights(config: ErnieMConfig, seed: int) -> dict[str, np.ndarray]:
    """erniem_np.testing.random_weights with the two embedding tables scaled to std EMBEDDING_STD.

    random_weights draws embeddings N(0, 1); a trained ErnieM's tables are about 20x smaller, so the
    embeddings' LayerNorm sees a small variance and its eps (1e-5) visibly shapes the output, as in a real
    checkpoint. With N(0, 1) tables a port using BERT's eps 1e-12 would differ by ~1e-6 and pass.
    """
    w = random_weights(config, seed)
    for name in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"):
        w[name] = (w[name] * np.float32(EMBEDDING_STD)).astype(np.float32)
    return w


def default_cases(config: ErnieMConfig, seed: int = 0, long_max: int = 128) -> list[dict]:
    """The core case set: ids drawn from ``default_rng(seed)`` in [3, V), [CLS]=0 first and [SEP]=2 last.

    c00_single (B=1, no padding), c01_batch_pad (B=3, right padding with pad id 1, mask 0 on pads),
    c02_hf_slice (ids 0..5, the HF integration test's input: id 1 is the pad id yet attended, because the
    mask is explicit), c03_long (one sequence to the last row of the position table, at most ``long_max``).
    """
    rng = np.random.default_rng(seed)
    V, pad = config.vocab_size, config.pad_token_id
    longest = config.max_sequence_length

    def sentence(n):
        ids = rng.integers(3, V, size=n)
        ids[0], ids[-1] = 0, 2
        return ids

    L = min(12, longest)
    cases = []
    cases.append(_case("c00_single", "one sequence, no padding, explicit all-ones mask", [sentence(min(8, L))]))
    lens = [L, max(3, L - 3), max(3, L - 7)]
    rows = [np.concatenate([sentence(n), np.full(L - n, pad)]) for n in lens]
    mask = [np.concatenate([np.ones(n, np.int64), np.zeros(L - n, np.int64)]) for n in lens]
    cases.append(_case("c01_batch_pad", f"three sequences of {lens} tokens, right-padded with the pad id to {L}",
                       rows, mask))  # fmt: skip
    if V >= 6 and longest >= 6:
        cases.append(_case("c02_hf_slice", "ids 0..5 with an explicit all-ones mask (id 1, the pad id, attended)",
                           [np.arange(6)]))  # fmt: skip
    n_long = min(longest, long_max)
    desc = "one sequence to the last row of the position table" if n_long == longest else f"{n_long} tokens"
    cases.append(_case("c03_long", desc, [sentence(n_long)]))
    return cases


def _case(name, description, rows, mask=None):
    ids = np.asarray(rows, dtype=np.int64)
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int64)
    return {"name": name, "description": description, "input_ids": ids, "attention_mask": mask}


def text_cases(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """One case holding the texts as a right-padded batch (the tokenizer's ids and mask)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    case = _case("t00_texts", f"{len(texts)} text(s) tokenized and right-padded", enc["input_ids"],
                 enc["attention_mask"])  # fmt: skip
    case["texts"] = list(texts)
    return [case]


def cases_from_json(items: list, config: ErnieMConfig) -> list[dict]:
    """Cases from a JSON list of ``{"name", "description"?, "input_ids", "attention_mask"?, "position_ids"?}``."""
    if not isinstance(items, list) or not items:
        raise ValueError("the cases file must hold a non-empty JSON list of case objects")
    cases, seen = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "input_ids" not in item:
            raise ValueError(f"case {i}: needs at least 'input_ids' (a list of lists of ids)")
        name = str(item.get("name") or f"c{i:02d}")
        if "/" in name or name in seen or name == "weights":
            raise ValueError(f"case {i}: name {name!r} is not unique or contains '/'")
        seen.add(name)
        try:
            ids = np.asarray(item["input_ids"])
        except ValueError:
            ids = np.zeros(0)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"case {name}: input_ids must be a rectangular list of lists of integers")
        try:
            case = _case(name, str(item.get("description", "")), ids, item.get("attention_mask"))
        except ValueError:
            case = {"attention_mask": np.zeros(0)}
        if case["attention_mask"].shape != ids.shape:
            raise ValueError(f"case {name}: attention_mask must have the shape of input_ids {list(ids.shape)}")
        if item.get("position_ids") is not None:
            case["position_ids"] = np.asarray(item["position_ids"], dtype=np.int64)
        cases.append(case)
    return cases


# --------------------------------------------------------------------------------------------- recording
def _models(config: ErnieMConfig, weights, heads, dtype, backend):
    from ..model import MODEL_CLASSES, ErnieMModel

    base_weights = split_head(weights, None)
    cls = ErnieMModel
    if "pooler.dense.weight" not in base_weights:  # a token-classification or QA checkpoint has no pooler

        class cls(ErnieMModel):  # noqa: N801
            has_pooler = False

    models = {None: cls(config, base_weights, dtype=dtype, backend=backend)}
    for head in heads:
        head_config = config.replace(num_labels=head_labels(weights, head))
        models[head] = MODEL_CLASSES[schema.HEADS[head][0]](head_config, split_head(weights, head), dtype=dtype,
                                                            backend=backend)  # fmt: skip
    return models


def record_case(models: dict, input_ids, attention_mask, position_ids, tier: str = "debug") -> dict:
    """Every probe of one case: the base model's, then each head's outputs (``models`` from _models).

    The multiple-choice head takes the case's B rows as the choices of one question: inputs [1, B, L].
    """
    probes: dict[str, np.ndarray] = {}
    models[None](input_ids, attention_mask=attention_mask, position_ids=position_ids, probes=probes)
    for head, model in models.items():
        if head is None:
            continue
        got: dict[str, np.ndarray] = {}
        if head == "mc":
            model(input_ids[None], attention_mask=None if attention_mask is None else attention_mask[None],
                  position_ids=position_ids[None], probes=got)  # fmt: skip
        else:
            model(input_ids, attention_mask=attention_mask, position_ids=position_ids, probes=got)
        probes.update({k: v for k, v in got.items() if k.startswith("head.")})
    if tier == "core":
        core = {p["name"] for p in schema.probe_catalogue(len(models[None].params["encoder"]["layers"]), ALL_HEADS)
                if p["tier"] == "core"}  # fmt: skip
        probes = {k: v for k, v in probes.items() if k in core}
    return probes


def producer_info(backend: str) -> dict:
    from .. import __version__

    return {"library": "erniem-np", "library_version": __version__, "framework": "numpy",
            "framework_version": np.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "backend": backend}  # fmt: skip


def make_bundle(config: ErnieMConfig, weights: dict[str, np.ndarray], cases: list[dict], *, heads=ALL_HEADS,
                dtype=np.float32, backend: str = "numpy", tier: str = "debug", store_weights: bool = True,
                weights_info: dict | None = None, calibrate: bool = False,
                progress=None) -> tuple[dict, dict]:  # fmt: skip
    """(tensors, metadata) of a reference bundle made by this implementation.

    ``weights``: random_weights naming (base names plus ``<head>.<param>``); ``heads`` must all have their
    weights in it. ``backend="numpy"`` records every probe; "numba" only the core tier (see fused.py).
    ``calibrate`` (float32 bundles): also run float64 and record, per probe, the float32 run's own error
    ``max |f32 - f64|`` on valid positions in ``tolerances.calibration`` (compare_bundles(calibrated=True)
    then allows CALIBRATION_FACTOR times that where it exceeds the profile's atol).
    """
    dtype = np.dtype(dtype)
    if tier not in ("core", "debug"):
        raise ValueError(f"tier must be core or debug, got {tier!r}")
    if backend in ("numba", "int8") and tier == "debug":
        raise ValueError(f"the {backend} backend's fused kernels do not expose the debug tier: use tier='core'")
    heads = tuple(h for h in heads if _has_head(weights, h))
    models = _models(config, weights, heads, dtype, backend)
    if calibrate and dtype != np.float32:
        raise ValueError("calibrate measures a float32 run against float64: use dtype float32")
    models64 = _models(config, weights, heads, np.dtype(np.float64), "numpy") if calibrate else None
    calibration: dict[str, float] = {}
    tensors: dict[str, np.ndarray] = {}
    case_meta = []
    for i, case in enumerate(cases):
        ids, mask = case["input_ids"], case["attention_mask"]
        B, L = ids.shape
        pos = case.get("position_ids")
        pos = layers.default_position_ids(B, L) if pos is None else np.broadcast_to(pos, (B, L))
        name = case["name"]
        tensors[f"{name}/input.input_ids"] = ids.astype(np.int64)
        tensors[f"{name}/input.attention_mask"] = mask.astype(np.int64)
        tensors[f"{name}/input.position_ids"] = np.ascontiguousarray(pos, dtype=np.int64)
        tensors[f"{name}/derived.additive_mask"] = layers.additive_mask(ids, mask, 0, config.flavor,
                                                                       config.pad_token_id, dtype)  # fmt: skip
        for probe, value in record_case(models, ids, mask, pos, tier).items():
            tensors[f"{name}/{probe}"] = np.ascontiguousarray(value)
        if models64 is not None:
            for probe, exact in record_case(models64, ids, mask, pos, tier).items():
                keep = valid_mask(exact.shape, schema.token_axis(probe), mask.astype(bool))
                calibration[f"{name}/{probe}"] = float(np.abs(tensors[f"{name}/{probe}"] - exact)[keep].max())
        info = {"name": name, "description": case.get("description", ""), "batch": int(B), "seq_len": int(L)}
        if "texts" in case:
            info["texts"] = case["texts"]
        case_meta.append(info)
        if progress is not None:
            progress("cases", i + 1, len(cases))
    probes = schema.probe_catalogue(config.num_hidden_layers, heads)
    if "pooler.dense.weight" not in weights:
        probes = [p for p in probes if p["name"] != "pooler.out"]
    if store_weights:
        tensors.update({f"weights/{k}": np.asarray(v, dtype=np.float32) for k, v in weights.items()})
    metadata = {
        "role": "reference",
        "config": config.to_dict(),
        "flavor": config.flavor,
        "producer": producer_info(backend),
        "compute_dtype": dtype.name,
        "cases": case_meta,
        "probes": probes,
        "heads": {h: {"num_labels": head_labels(weights, h)} for h in heads},
        "tier": tier,
        "tolerances": {"profiles": schema.PROFILES, **({"calibration": calibration} if calibrate else {})},
        "weights": {"stored": bool(store_weights), "digest": weights_digest(weights), **(weights_info or {})},
    }
    return tensors, metadata


# --------------------------------------------------------------------------------------------- call cases
# The functions a bundle's ``weights.recipe`` may name: each draws a model's weights from (config, seed).
WEIGHT_RECIPES = {"erniem_np.parity.produce.parity_weights": parity_weights,
                  "erniem_np.testing.random_weights": random_weights}  # fmt: skip


def bundle_weights(bundle) -> dict[str, np.ndarray]:
    """A bundle's weights: the stored ``weights/*``, else drawn again from its recorded recipe and seed."""
    stored = bundle.weights()
    if stored:
        return stored
    info = bundle.metadata.get("weights") or {}
    if info.get("recipe") not in WEIGHT_RECIPES:
        raise ValueError(f"{bundle.name}: no weights/* tensors and no known recipe ({info.get('recipe')!r})")
    return WEIGHT_RECIPES[info["recipe"]](bundle.config(), int(info["seed"]))


def call_model(bundle, head: str, weights=None, dtype=np.float32, backend: str = "numpy"):
    """This implementation's model for a bundle's call cases of ``head`` ("base" or a head's short name), with
    the bundle's weights and the head's settings from its ``heads`` metadata (num_labels, num_choices)."""
    from ..model import MODEL_CLASSES

    weights = bundle_weights(bundle) if weights is None else weights
    config = bundle.config()
    if head == "base":
        return MODEL_CLASSES["ErnieMModel"](config, split_head(weights, None), dtype=dtype, backend=backend)
    settings = (bundle.metadata.get("heads") or {}).get(head, {})
    config = config.replace(**{k: settings[k] for k in ("num_labels", "num_choices") if k in settings})
    cls = MODEL_CLASSES[schema.HEADS[schema.HEAD_VARIANTS.get(head, head)][0]]
    return cls(config, split_head(weights, head), dtype=dtype, backend=backend)


def call_probes(model, bundle, case: str) -> dict[str, np.ndarray]:
    """Run one call case through ``model`` (call_model's) as its caller did, and return the probes the case
    holds, named as in the bundle (schema.output_probe)."""
    info = bundle.case(case)
    head = None if info["head"] == "base" else info["head"]
    out = model(**bundle.inputs(case), **info.get("kwargs", {}))
    n = int(bundle.metadata["config"]["num_hidden_layers"])
    probes = {schema.output_probe(k, head, n): v for k, v in schema.flat_outputs(out).items()}
    return {name: probes[name] for name in info["probes"] if name in probes}


def head_labels(weights, head) -> int:
    """num_labels of a head: the rows of its classifier for seq_cls/token_cls; fixed for the others."""
    if head in ("seq_cls", "token_cls"):
        return int(np.shape(weights[f"{head}.classifier.weight"])[0])
    return HEAD_LABELS[head]


def _has_head(weights, head) -> bool:
    return any(k.startswith(head + ".") for k in weights)


def checkpoint_weights(path: str, flavor: str | None = None) -> tuple[ErnieMConfig, dict[str, np.ndarray]]:
    """A checkpoint's config and weights in random_weights naming (its head, if any, under its short name)."""
    from ..checkpoints import open_checkpoint
    from ..model import MODEL_CLASSES

    ckpt = open_checkpoint(path, flavor=flavor)
    cls = MODEL_CLASSES.get(ckpt.architecture, MODEL_CLASSES["ErnieMModel"])
    model = cls.from_pretrained(path, flavor=flavor, backend="numpy")
    sd = model.state_dict()
    short = {v[0]: k for k, v in schema.HEADS.items()}.get(cls.architecture)
    weights = {}
    for k, v in sd.items():
        if k.startswith("ernie_m."):
            weights[k[len("ernie_m.") :]] = v
        elif short and not k.startswith(("embeddings.", "encoder.", "pooler.")):
            weights[f"{short}.{k}"] = v
        else:
            weights[k] = v
    return model.config, weights


# --------------------------------------------------------------------------------------------- layer-local
def layer_local_probes(ref, config: ErnieMConfig, weights: dict[str, np.ndarray], dtype=np.float32,
                       tier: str = "debug") -> dict[str, np.ndarray]:  # fmt: skip
    """A layer-local candidate: every stage fed the REFERENCE's input instead of its own previous output.

    The embeddings run on the case's ids; layer NN runs on the reference's ``layer.(NN-1).out`` (layer 00 on
    its ``emb.out``) with the reference's ``derived.additive_mask``; the pooler and the heads run on the
    reference's last layer output and pooled output. Errors then do not compound from layer to layer, so a
    bug shows where it is, at its own size (compare with profile fp32-strict). ``ref``: a reference Bundle.
    """
    from ..parameters import unflatten as _unflatten

    dtype = np.dtype(dtype)
    base = {k: np.asarray(v, dtype) for k, v in split_head(weights, None).items()}
    p = _unflatten(base)
    n_layers = config.num_hidden_layers
    out: dict[str, np.ndarray] = {}
    for case in ref.case_names():
        inp = ref.inputs(case)
        mask = ref.get(case, "derived.additive_mask").astype(dtype)

        def given(name, case=case):
            return ref.get(case, name).astype(dtype)

        probes = {"emb.out": layers.embeddings(inp["input_ids"], inp["position_ids"], **p["embeddings"],
                                                eps=config.layer_norm_eps)}  # fmt: skip
        for i, layer in enumerate(p["encoder"]["layers"]):
            x = given("emb.out" if i == 0 else f"layer.{i - 1:02d}.out")  # the reference's input to layer i
            lp: dict[str, np.ndarray] = {}
            layers.encoder_layer(x, **layer, n_heads=config.num_attention_heads, activation=config.hidden_act,
                                 eps=config.layer_norm_eps, mask=mask, flavor=config.flavor, probes=lp)  # fmt: skip
            probes.update({f"layer.{i:02d}.{k}": v for k, v in lp.items()})
        last = given(f"layer.{n_layers - 1:02d}.out")
        if "pooler" in p:
            probes["pooler.out"] = layers.pooler(last, **p["pooler"])
        pooled = given("pooler.out") if ref.has(case, "pooler.out") else None

        def head_linear(name, x):
            return layers.linear(
                x, np.asarray(weights[name + ".weight"], dtype), np.asarray(weights[name + ".bias"], dtype)
            )

        heads = ref.metadata.get("heads") or {}
        if "seq_cls" in heads and pooled is not None:
            probes["head.seq_cls.logits"] = head_linear("seq_cls.classifier", pooled)
        if "token_cls" in heads:
            probes["head.token_cls.logits"] = head_linear("token_cls.classifier", last)
        if "qa" in heads:
            qa = head_linear("qa.qa_outputs", last)
            probes["head.qa.start_logits"], probes["head.qa.end_logits"] = qa[..., 0], qa[..., 1]
        if "mc" in heads and pooled is not None:
            probes["head.mc.logits"] = head_linear("mc.classifier", pooled).reshape(1, -1)
        if "ie" in heads:
            probes["head.ie.start_logits"] = head_linear("ie.linear_start", last)[..., 0]
            probes["head.ie.end_logits"] = head_linear("ie.linear_end", last)[..., 0]
        core = {q["name"] for q in ref.probes() if q["tier"] == "core"}
        out.update({f"{case}/{k}": np.ascontiguousarray(v) for k, v in probes.items() if tier == "debug" or k in core})
    return out
