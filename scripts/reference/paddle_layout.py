"""HF names and layout -> PaddleNLP's, written out here independently of erniem_np's own name map.

Imported by make_goldens_paddle.py, make_checkpoint_fixtures_paddle.py and produce_bundle_paddle.py (Paddle
reference environment) from this directory; needs NumPy only. The fixtures made with it are what the package's
map is tested against (tests/test_checkpoints.py), so it must not use that map.

PaddleNLP differs from HF in three ways: the attention projections sit directly under ``self_attn`` (HF:
``self_attn.self_attn.q_proj``), the question-answering Linear is ``classifier`` (HF: ``qa_outputs``), and
every ``nn.Linear`` weight is stored [in, out] (HF: [out, in]). The Paddle token-classification and
question-answering classes also keep the pooler HF drops (docs/reference.md#q26-paddle-linear-layout).
"""

from __future__ import annotations

import numpy as np

# Modules whose ``weight`` is an nn.Linear weight: torch [out, in] -> Paddle [in, out].
LINEAR_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2", "dense", "classifier",
                            "qa_outputs", "linear_start", "linear_end"})  # fmt: skip
NO_HF_POOLER = ("token_cls", "qa")  # the HF classes built without a pooler; PaddleNLP's have one


def paddle_state(hf: dict[str, np.ndarray], head: str | None, pooler_from=None) -> dict[str, np.ndarray]:
    """The state dict of the Paddle class for ``head`` (None: the bare ErnieMModel; "ie": UIEM) from ``hf``,
    the HF class's state dict (``ernie_m.`` prefix on a head's base model): Paddle names, float32, C-contiguous,
    Linear weights [in, out].

    ``pooler_from``: a state dict holding ``pooler.dense.weight`` and ``.bias``; for the heads whose HF class has
    no pooler (NO_HF_POOLER) they are added as ``ernie_m.pooler.dense.*``.
    """
    hf = dict(hf)
    if head in NO_HF_POOLER and pooler_from is not None:
        for leaf in ("weight", "bias"):
            hf[f"ernie_m.pooler.dense.{leaf}"] = pooler_from[f"pooler.dense.{leaf}"]
    out = {}
    for name, arr in hf.items():
        pname = name.replace(".self_attn.self_attn.", ".self_attn.")
        if head == "qa" and pname.startswith("qa_outputs."):
            pname = "classifier." + pname[len("qa_outputs.") :]
        module, leaf = name.split(".")[-2:]
        a = np.asarray(arr, dtype=np.float32)
        if module in LINEAR_MODULES and leaf == "weight":
            assert a.ndim == 2, (name, a.shape)
            a = a.T
        out[pname] = np.ascontiguousarray(a)
    return out
