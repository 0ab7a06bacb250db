"""What the two checkpoint-fixture scripts share: the config, the weights, the inputs and the output file.

Imported by scripts/reference/make_checkpoint_fixtures_hf.py (HF reference environment) and
scripts/reference/make_checkpoint_fixtures_paddle.py (Paddle reference environment); imports neither torch nor paddle,
and works with NumPy 1 and 2. Format of ``reference_outputs.safetensors``: tests/fixtures/checkpoints/README.md.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
DEV_PYTHON = ROOT / ".venv" / "bin" / "python"
HEAD_LABELS = {"seq_cls": 3, "seq_cls_reg": 1, "token_cls": 5, "qa": 2, "mc": 1, "ie": 1}  # = testing.HEAD_LABELS

FIXTURE_DIR = ROOT / "tests" / "fixtures" / "checkpoints"
FORMAT = "erniem-np-checkpoint-fixture/1"
CLS, PAD, SEP = 0, 1, 2

# A small config: every size differs, so a transposed or misplaced weight cannot pass unnoticed.
CONFIG = dict(vocab_size=99, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=20, hidden_act="gelu", pad_token_id=PAD)  # fmt: skip
WEIGHTS_SEED = 7
HEADS = ("base", "seq_cls", "token_cls", "qa", "mc", "ie")
NUM_CHOICES = 3


_DUMP = """
import sys
from safetensors.numpy import save_file
from erniem_np.testing import HEAD_LABELS, random_weights, split_head
config, seed, ffn, path = eval(sys.argv[1]), int(sys.argv[2]), eval(sys.argv[3]), sys.argv[4]
assert HEAD_LABELS == eval(sys.argv[5]), "HEAD_LABELS changed: update make_checkpoint_fixtures_common.py"
w = random_weights(config, seed, ffn_size=ffn)
out = {}
for head in ("base", "seq_cls", "token_cls", "qa", "mc", "ie"):
    out.update({head + "/" + k: v for k, v in split_head(w, None if head == "base" else head).items()})
out.update({"all/" + k: v for k, v in w.items()})
save_file(out, path)
"""


def _draw(ffn_size: int | None) -> dict[str, np.ndarray]:
    """random_weights and split_head of erniem_np.testing, run in the dev environment (.venv): the reference
    environments need not be able to import the package."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "w.safetensors")
        subprocess.run([str(DEV_PYTHON), "-c", _DUMP, repr(CONFIG), str(WEIGHTS_SEED), repr(ffn_size), path,
                        repr(HEAD_LABELS)], check=True, cwd=ROOT)  # fmt: skip
        return load_file(path)


def weights(ffn_size: int | None = None) -> dict[str, np.ndarray]:
    """erniem_np.testing.random_weights(CONFIG, WEIGHTS_SEED, ffn_size): HF names, [out, in] layout, every
    head's parameters under its short name (``seq_cls.classifier.weight``)."""
    w = _draw(ffn_size)
    return {k[len("all/") :]: v for k, v in w.items() if k.startswith("all/")}


def split_head(head: str | None, ffn_size: int | None = None) -> dict[str, np.ndarray]:
    """erniem_np.testing.split_head: the state dict of one HF class (``ernie_m.`` prefix on heads' base)."""
    prefix = ("base" if head is None else head) + "/"
    return {k[len(prefix) :]: v for k, v in _draw(ffn_size).items() if k.startswith(prefix)}


def cases(head: str) -> list[dict]:
    """Fixed inputs: a padded batch with an explicit mask, and the same ids without a mask (the implicit mask
    differs between the references: HF masks [PAD]=1, Paddle masks [CLS]=0)."""
    rng = np.random.default_rng(2024)
    if head == "mc":
        B, L, lengths = 2 * NUM_CHOICES, 8, (8, 6, 5, 8, 4, 7)
    else:
        B, L, lengths = 3, 10, (10, 7, 4)
    ids = np.full((B, L), PAD, dtype=np.int64)
    mask = np.zeros((B, L), dtype=np.int64)
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1] = CLS, SEP
        ids[b, 1 : n - 1] = rng.integers(3, CONFIG["vocab_size"], size=n - 2)
        mask[b, :n] = 1
    if head == "mc":
        ids, mask = ids.reshape(2, NUM_CHOICES, L), mask.reshape(2, NUM_CHOICES, L)
    return [
        {"name": "masked", "inputs": {"input_ids": ids, "attention_mask": mask}},
        {"name": "implicit", "inputs": {"input_ids": ids}},
    ]


def write_fixture(directory: Path, *, reference: str, library: str, library_version: str, framework: str,
                  framework_version: str, head: str, flavor: str, saved_by: str, results: list[dict],
                  load: dict | None = None) -> None:  # fmt: skip
    """Write ``reference_outputs.safetensors`` beside the checkpoint files in ``directory``.

    ``results``: the cases, each with ``outputs`` {name: array} as the reference computed them.
    ``load``: how the test must load the checkpoint, if not from the directory alone (e.g. a bare file
    with the config to pass).
    """
    tensors, meta_cases = {}, []
    for case in results:
        for k, v in case["inputs"].items():
            tensors[f"{case['name']}/{k}"] = np.ascontiguousarray(v)
        for k, v in case["outputs"].items():
            tensors[f"{case['name']}/{k}"] = np.ascontiguousarray(v, dtype=np.float32)
        meta_cases.append({"name": case["name"], "inputs": list(case["inputs"]), "outputs": list(case["outputs"])})
    metadata = {
        "format": FORMAT,
        "reference": reference,
        "library": library,
        "library_version": library_version,
        "framework": framework,
        "framework_version": framework_version,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "head": head,
        "flavor": flavor,
        "saved_by": saved_by,
        "config": json.dumps(CONFIG),
        "weights_seed": str(WEIGHTS_SEED),
        "cases": json.dumps(meta_cases),
        "load": json.dumps(load or {}),
    }
    save_file(tensors, str(directory / "reference_outputs.safetensors"), metadata=metadata)


def fresh_dir(name: str) -> Path:
    d = FIXTURE_DIR / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d
