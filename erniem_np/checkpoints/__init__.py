"""Reading and writing ErnieM checkpoints without torch or paddle.

Formats: HF ``model.safetensors`` (single or sharded), ``pytorch_model.bin`` (torch zip or legacy pickle,
single or sharded), Paddle ``.pdparams`` (``model_state.pdparams`` or bare); configs ``config.json`` (HF or
PaddleNLP) and PaddleNLP's legacy ``model_config.json``. Pickles are read by a restricted unpickler
(unpickler.py) that can only rebuild arrays. Names and layouts are mapped to HF's (names.py). Local hub cache
snapshots are found, and hub ids downloaded only on request (hub.py).

    ckpt = open_checkpoint("path/or/org-name")      # lazy: names, shapes, dtypes, config, flavor, head
    state_dict = ckpt.state_dict(np.float32)         # arrays; float32 data stays memory-mapped
    convert_checkpoint("src", "dst")                 # -> native dst/model.safetensors + config.json
"""

from .convert import convert_checkpoint, inspect_checkpoint
from .errors import CheckpointError, UnsafePickleError
from .hub import cached_snapshot, hub_cache_dir
from .loader import Checkpoint, open_checkpoint
from .names import ARCHITECTURES
from .safetensors_file import read_header, read_safetensors, write_safetensors
from .tensors import StoredTensor

__all__ = [
    "ARCHITECTURES",
    "Checkpoint",
    "CheckpointError",
    "StoredTensor",
    "UnsafePickleError",
    "cached_snapshot",
    "convert_checkpoint",
    "hub_cache_dir",
    "inspect_checkpoint",
    "open_checkpoint",
    "read_header",
    "read_safetensors",
    "write_safetensors",
]
