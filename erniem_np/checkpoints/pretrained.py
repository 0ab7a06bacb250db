"""``from_pretrained`` and ``save_pretrained`` of the model classes: a checkpoint in, a model out, and back.

The model classes call these on use, so importing the model imports no checkpoint reader.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from ..config import ErnieMConfig
from ..parameters import WORD_TABLE, WeightsMismatchError
from .loader import open_checkpoint
from ..atomic import atomic_write
from .safetensors_file import write_safetensors
from .tensors import RowReadTable

# Weights a checkpoint of another class may hold that this class has no use for: dropped with a warning.
DROPPABLE = ("pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias",
             "qa_outputs.weight", "qa_outputs.bias", "linear_start.weight", "linear_start.bias",
             "linear_end.weight", "linear_end.bias")  # fmt: skip


def load_pretrained(cls, path_or_name, flavor=None, dtype=np.float32, backend=None, *, quantize=None, config=None,
                    download=False, revision=None, cache_dir=None, mmap=True):  # fmt: skip
    """A ``cls`` model from any ErnieM checkpoint (see ``ErnieMPreTrainedModel.from_pretrained``)."""
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be \"int8\" or None, got {quantize!r}")
    if quantize and backend not in (None, "int8"):
        raise ValueError(f"quantize=\"int8\" runs on the int8 layers: it cannot run on backend={backend!r}")
    ckpt = open_checkpoint(path_or_name, config=config, flavor=flavor, target=cls.architecture,
                           download=download, revision=revision, cache_dir=cache_dir, use_mmap=mmap)  # fmt: skip
    if ckpt.config.quantization == "int8":
        if backend not in (None, "int8"):
            raise ValueError(f"{ckpt.describe()} is an int8 checkpoint: it runs on backend=\"int8\" only, "
                             f"not {backend!r}")  # fmt: skip
        backend = "int8"
    backend = "int8" if quantize else backend or "numba"
    state_dict, config = adapt_state_dict(cls, ckpt.state_dict(dtype), ckpt.config)
    try:
        model = cls(config, state_dict, dtype=dtype, backend=backend)
    except WeightsMismatchError as e:  # name the files: the model's message names the keys
        raise e.located(ckpt.describe()) from None
    except (ValueError, TypeError) as e:
        raise type(e)(f"{ckpt.describe()}: {e}") from None
    name = cls.base_prefix + "embeddings.word_embeddings.weight"
    stored = ckpt.tensors.get(name) or ckpt.tensors.get(name.removeprefix("ernie_m."))
    int8 = model.config.quantization == "int8"
    reader = None if stored is None else stored.row_reader(np.int8 if int8 else model.dtype)
    if reader is not None:  # the table as stored, mapped: the lookup reads its rows from the file
        table = model.base_params["embeddings"]["word_embeddings"]
        if int8:  # an Int8Rows: its int8 rows come from the file, its scales are in memory
            table["weight"].q = RowReadTable(table["weight"].q, reader)
        else:
            table["weight"] = RowReadTable(table["weight"], reader)
    if int8:  # the int8 Linear weights were read once, to pack them: their mapped pages need not stay resident
        for key, a in model.state_dict().items():
            t = ckpt.tensors.get(key)
            if t is not None and t.release is not None and t.dtype == "int8" and not key.endswith(WORD_TABLE):
                t.release(a)
    return model


def adapt_state_dict(cls, sd: dict[str, np.ndarray], config: ErnieMConfig):
    """Add or strip the base prefix, drop parameters ``cls`` has no use for, and take the FFN width from the
    weights (Paddle ignores intermediate_size and builds 4 * hidden_size)."""
    prefixed = any(k.startswith("ernie_m.") for k in sd)
    if cls.base_prefix and not prefixed:
        sd = {("ernie_m." + k if k.startswith(("embeddings.", "encoder.", "pooler.")) else k): v
              for k, v in sd.items()}  # fmt: skip
    elif not cls.base_prefix and prefixed:
        sd = {k.removeprefix("ernie_m."): v for k, v in sd.items()}  # head weights keep their names
    w1 = sd.get(cls.base_prefix + "encoder.layers.0.linear1.weight")
    if w1 is not None and np.ndim(w1) == 2 and w1.shape[0] != config.intermediate_size:
        config = config.replace(intermediate_size=int(w1.shape[0]))
    expected = cls.parameter_shapes_for(config)
    unused = [k for k in sd if k not in expected and k.endswith(DROPPABLE)]
    if unused:
        warnings.warn(f"{cls.__name__} does not use these weights of the checkpoint: {', '.join(unused)}",
                      stacklevel=4)  # fmt: skip
        sd = {k: v for k, v in sd.items() if k not in unused}
    return sd, config


def save_pretrained(model, path) -> None:
    """config.json and model.safetensors in HF's layout (they load in transformers 4.46.3). Each file is
    written beside its destination and renamed into place, so saving over the checkpoint a model was loaded
    from (and still maps) is safe, and an interrupted save leaves the old files whole."""
    os.makedirs(path, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = [model.architecture]
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(os.path.join(path, "config.json"), text.encode("utf-8"))
    write_safetensors(os.path.join(path, "model.safetensors"), model.state_dict(), metadata={"format": "pt"})
