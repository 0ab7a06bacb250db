"""What the two golden scripts share: the three configs, the file format, the input ids and the metadata.

Imported by make_goldens_hf.py (HF reference environment) and make_goldens_paddle.py (Paddle reference
environment) from this directory; needs NumPy only (1 or 2). Format of the files: tests/goldens/README.md.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "goldens"
FORMAT = "erniem-np-golden/1"
CLS, PAD, SEP = 0, 1, 2

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


def configs(odd_act: str, **extra) -> dict[str, dict]:
    """{tag: {config, seed, input_seed, store_weights, small}} of one reference. ``config`` is the dict given to
    that reference's ErnieMConfig: the sizes, ``hidden_act`` (gelu, and ``odd_act`` for the odd config: each
    reference tries a second activation it supports), ``pad_token_id`` 1 and ``extra``."""
    out = {}
    for tag, g in GOLDENS.items():
        config = dict(g["sizes"], hidden_act=odd_act if tag == "odd" else "gelu", pad_token_id=PAD, **extra)
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


def metadata(producer: dict, spec: dict, ffn_size: int, digest: str, cases: list[dict]) -> dict[str, str]:
    """The file's metadata. ``producer``: reference, library, library_version, framework, framework_version;
    ``digest``: erniem_np.testing.weights_digest of the weights; ``cases``: the case list as recorded."""
    return {
        "format": FORMAT,
        **producer,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "config": json.dumps(spec["config"], sort_keys=True),
        "seed": str(spec["seed"]),
        "ffn_size": str(ffn_size),
        "weights_digest": digest,
        "weights_stored": "true" if spec["store_weights"] else "false",
        "cases": json.dumps(cases),
    }


def case_entry(case: dict, inputs: list[str], outputs: list[str]) -> dict:
    """One case as the metadata's ``cases`` list records it."""
    return dict(name=case["name"], description=case["description"], model=case["model"], inputs=inputs,
                outputs=outputs, kwargs=case["kwargs"])  # fmt: skip
