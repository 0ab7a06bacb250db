"""Reading and writing the native checkpoint: HF-layout ``model.safetensors`` (single file or sharded).

Other formats (``pytorch_model.bin``, Paddle ``.pdparams``) are read by the checkpoint readers; this module is
the small native path the model classes use.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


def load_state_dict(directory: str) -> dict[str, np.ndarray]:
    """The weights of a checkpoint directory as NumPy arrays, by their names in the file."""
    single = os.path.join(directory, SAFE_WEIGHTS)
    index = os.path.join(directory, SAFE_INDEX)
    if os.path.isfile(single):
        return _load_file(single)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index (no weight_map): {e}") from None
        sd: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(directory, shard)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{index} names the shard {shard}, which is not in {directory}")
            sd.update(_load_file(path))
        missing = sorted(set(weight_map) - set(sd))
        if missing:
            raise ValueError(f"{index} lists weights that no shard holds: {', '.join(missing)}")
        return sd
    present = sorted(os.listdir(directory))
    raise FileNotFoundError(
        f"no {SAFE_WEIGHTS} or {SAFE_INDEX} in {directory} (found: {', '.join(present) or 'nothing'})"
    )


def _load_file(path: str) -> dict[str, np.ndarray]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read safetensors file: {e}") from None


def save_state_dict(state_dict: dict[str, np.ndarray], path: str) -> None:
    """Write contiguous arrays with ``{"format": "pt"}`` metadata, which transformers requires."""
    tensors = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    save_file(tensors, path, metadata={"format": "pt"})
    _default_permissions(path)


def _default_permissions(path: str) -> None:
    """safetensors creates files readable by the owner only; give them the usual mode (0666 less umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
