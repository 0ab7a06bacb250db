"""The native checkpoint: HF-layout ``model.safetensors`` (single file or sharded), read memory-mapped.

This is the small native path; every other format (``pytorch_model.bin``, Paddle ``.pdparams``, hub ids)
goes through ``erniem_np.checkpoints``, which also holds the safetensors reader and writer used here.
"""

from __future__ import annotations

import os

import numpy as np

from .checkpoints.loader import find_weights, read_weights
from .checkpoints.safetensors_file import write_safetensors

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


def load_state_dict(directory: str) -> dict[str, np.ndarray]:
    """The weights of a safetensors checkpoint directory by their names in the file, in their stored dtype
    (bfloat16 widened to float32). Arrays are views of the memory-mapped file."""
    directory = os.fspath(directory)
    fmt, files, index = find_weights(directory)
    if fmt != "safetensors":
        raise FileNotFoundError(f"no {SAFE_WEIGHTS} or {SAFE_INDEX} in {directory} (found {files[0]}: use "
                                "erniem_np.checkpoints.open_checkpoint for other formats)")  # fmt: skip
    return {name: t.array() for name, t in read_weights(fmt, files, index).items()}


def save_state_dict(state_dict: dict[str, np.ndarray], path: str) -> None:
    """Write arrays with ``{"format": "pt"}`` metadata, which transformers requires. The file is replaced
    atomically, so saving over the checkpoint a model was loaded (and is still mapped) from is safe."""
    write_safetensors(path, state_dict, metadata={"format": "pt"})
