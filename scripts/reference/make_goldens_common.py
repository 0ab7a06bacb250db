"""What the two golden scripts share: the three configs, the input ids, and the bundle they write.

Imported by make_goldens_hf.py (HF reference environment) and make_goldens_paddle.py (Paddle reference
environment) from this directory. The goldens are parity bundles of call cases (docs/parity-bundles.md,
B10), written and checked with the repository's own ``erniem_np.parity`` (NumPy 1 or 2); the scripts build the
reference models with the code of produce_bundle_hf.py and produce_bundle_paddle.py. Files: tests/goldens/.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the repository's erniem_np
    sys.path.insert(0, str(ROOT))

from erniem_np.config import ErnieMConfig
from erniem_np.parity import schema
from erniem_np.parity.bundle import check, load_bundle, write_bundle
from erniem_np.testing import HEAD_LABELS

OUT_DIR = ROOT / "tests" / "goldens"
CLS, PAD, SEP = 0, 1, 2
RECIPE = "erniem_np.testing.random_weights"  # the weights: RECIPE(config, seed), HF names, [out, in]

# The three goldens of each reference: model sizes, the seed of erniem_np.testing.random_weights, the seed of
# the inputs, whether the file stores the weights, and whether it holds the short case list (base12 keeps its
# file at about 2 MB). Both references use the same sizes and seeds, so their files describe the same models
# (Paddle's FFN excepted: it is always 4 * hidden).
GOLDENS = {
    "tiny": dict(
        sizes=dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                   max_position_embeddings=20),
        seed=0, input_seed=1000, store_weights=True, small=False,
    ),
    "odd": dict(
        sizes=dict(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                   intermediate_size=100, max_position_embeddings=24),
        seed=1, input_seed=1001, store_weights=True, small=False,
    ),
    "base12": dict(
        sizes=dict(vocab_size=1000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=514),
        seed=2, input_seed=1002, store_weights=False, small=True,
    ),
}  # fmt: skip


def configs(odd_act: str, ffn_of=None, **extra) -> dict[str, dict]:
    """{tag: {config, seed, input_seed, store_weights, small}} of one reference. ``config`` is the dict given to
    that reference's ErnieMConfig: the sizes, ``hidden_act`` (gelu, and ``odd_act`` for the odd config: each
    reference tries a second activation it supports), ``pad_token_id`` 1 and ``extra``; ``ffn_of(sizes)``, when
    given, sets ``intermediate_size`` to the FFN width the reference builds."""
    out = {}
    for tag, g in GOLDENS.items():
        config = dict(g["sizes"], hidden_act=odd_act if tag == "odd" else "gelu", pad_token_id=PAD, **extra)
        if ffn_of is not None:
            config["intermediate_size"] = int(ffn_of(g["sizes"]))
        out[tag] = dict(config=config, **{k: v for k, v in g.items() if k != "sizes"})
    return out


def make_ids(rng, lengths, L, V):
    """[CLS] + ids in [3, V-1) + [SEP], right-padded with [PAD]; mask 1 on real tokens. -> int64 [B, L] twice."""
    ids = np.full((len(lengths), L), PAD, dtype=np.int64)
    mask = np.zeros((len(lengths), L), dtype=np.int64)
    for b, n in enumerate(lengths):
        assert 2 <= n <= L
        ids[b, :n] = [CLS, *rng.integers(3, V - 1, size=n - 2), SEP]
        mask[b, :n] = 1
    return ids, mask


def input_tensors(case: str, inputs: dict) -> dict[str, np.ndarray]:
    """A call's tensor arguments as bundle tensors: ``<case>/input.<name>``, the cache as
    ``<case>/input.past.NN.k`` / ``.v``; integers as int64, floats as float32."""
    out = {}
    for name, value in inputs.items():
        if name == "past_key_values":
            for i, (k, v) in enumerate(value):
                out[f"{case}/input.past.{i:02d}.k"] = np.ascontiguousarray(k, dtype=np.float32)
                out[f"{case}/input.past.{i:02d}.v"] = np.ascontiguousarray(v, dtype=np.float32)
        else:
            v = np.asarray(value)
            dtype = np.int64 if v.dtype.kind in "iu" else np.float32
            out[f"{case}/input.{name}"] = np.ascontiguousarray(v, dtype=dtype)
    return out


def output_probes(outputs: dict, head: str | None, num_layers: int) -> dict[str, np.ndarray]:
    """Model outputs by flat HF name (schema.flat_outputs) as probes; ``last_hidden_state`` and the last of
    ``hidden_states``, when both are there, are one probe and must be equal bit for bit."""
    probes: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        probe = schema.output_probe(name, head, num_layers)
        if probe in probes:
            assert np.array_equal(probes[probe], value), f"{name} differs from the other output named {probe}"
        probes[probe] = value
    return probes


def case_entry(name: str, description: str, head: str, inputs, kwargs: dict, probes, catalogue) -> dict:
    """One call case as the bundle's ``cases`` metadata records it (``probes`` in catalogue order)."""
    held = set(probes)
    return {"name": name, "description": description, "head": head, "inputs": list(inputs), "kwargs": dict(kwargs),
            "probes": [p["name"] for p in catalogue if p["name"] in held]}  # fmt: skip


def record_cases(runs: list[dict], num_layers: int) -> tuple[dict, list[dict]]:
    """The tensors and the ``cases`` metadata of run cases. A run: ``name``, ``description``, ``head`` ("base" or
    a head), ``inputs`` (the tensor arguments passed, ``past_key_values`` as (k, v) pairs), ``kwargs`` and
    ``outputs`` (what the reference returned, by flat HF name, as float32 arrays)."""
    order = catalogue(num_layers, {r["head"] for r in runs} - {"base"})
    tensors, entries = {}, []
    for r in runs:
        probes = output_probes(r["outputs"], None if r["head"] == "base" else r["head"], num_layers)
        tensors.update(input_tensors(r["name"], r["inputs"]))
        tensors.update({f"{r['name']}/{k}": v for k, v in probes.items()})
        entries.append(case_entry(r["name"], r["description"], r["head"], r["inputs"], r["kwargs"], probes, order))
    return tensors, entries


def catalogue(num_layers: int, heads) -> list[dict]:
    """Every probe a golden may hold, in forward order."""
    order = [*schema.HEADS, *schema.HEAD_VARIANTS]
    return schema.probe_catalogue(num_layers, sorted(heads, key=order.index), calls=True)


def metadata(flavor: str, producer: dict, config: dict, seed: int, digest: str, stored: bool, cases: list[dict],
             head_settings: dict | None = None) -> dict:  # fmt: skip
    """The golden's bundle metadata. ``config``: the dict given to the reference, its ``intermediate_size`` the
    FFN width the reference built; ``producer``: library, library_version, framework, framework_version (and
    numpy_version, python: this process's unless given);
    ``head_settings``: config values a head was built with beyond its num_labels ({"mc": {"num_choices": 3}})."""
    cfg = ErnieMConfig.from_dict(dict(config), flavor=flavor).to_dict()
    heads = sorted({c["head"] for c in cases} - {"base"})
    used = {p for c in cases for p in c["probes"]}
    probes = [p for p in catalogue(int(cfg["num_hidden_layers"]), heads) if p["name"] in used]
    head_info = {h: {"num_labels": HEAD_LABELS[h], **(head_settings or {}).get(h, {})} for h in heads}
    return {
        "role": "reference", "config": cfg, "flavor": flavor,
        "producer": {"numpy_version": np.__version__, "python": platform.python_version(), **producer},
        "compute_dtype": "float32", "cases": cases, "probes": probes, "heads": head_info, "tier": "core",
        "weights": {"stored": bool(stored), "digest": digest, "recipe": RECIPE, "seed": int(seed)},
    }  # fmt: skip


def write_golden(path, tensors: dict, meta: dict) -> None:
    """Write a golden with the package's bundle writer (deterministic bytes), read it back, validate it."""
    for k, v in tensors.items():
        assert v.dtype in (np.int64, np.float32) and v.flags.c_contiguous, (k, v.dtype)
    write_bundle(path, tensors, meta)
    back = load_bundle(path)
    check(back)
    for k, v in tensors.items():
        assert np.array_equal(back.array(k), v), k


def parse_args(description: str):
    """The scripts' command line: the configs to write (default all) and the output directory."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("tags", nargs="*", help=f"configs to write: {', '.join(GOLDENS)} (default: all)")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default tests/goldens/)")
    args = ap.parse_args()
    unknown = sorted(set(args.tags) - set(GOLDENS))
    if unknown:
        ap.error(f"unknown config(s) {', '.join(unknown)}; configs are {', '.join(GOLDENS)}")
    args.tags = args.tags or list(GOLDENS)
    args.out.mkdir(parents=True, exist_ok=True)
    return args
