"""Convert any supported checkpoint to the native layout, and describe a checkpoint (``erniem-np convert`` /
``erniem-np inspect``). The native layout is HF's: ``config.json`` (with ``flavor`` and ``architectures``
recorded) + ``model.safetensors`` (HF names, torch layout), plus the tokenizer files copied. It loads in
transformers 4.46.3, and here it maps without a copy, which makes later loads fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..config import tokenizer_config_problems
from ..parameters import SCALE_SUFFIX, is_int8_weight
from .errors import CheckpointError
from .hub import TOKENIZER_FILES
from .loader import Checkpoint, open_checkpoint, read_json_object
from .safetensors_file import write_safetensors

ProgressFn = Callable[[str, int, int], None]  # (what, done, total)
SUMMARY_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id", "num_labels")


def convert_checkpoint(src, dst, *, dtype: str = "float32", quantize: str | None = None, flavor: str | None = None,
                       config=None,
                       download: bool = False, revision: str | None = None, cache_dir: str | None = None,
                       overwrite: bool = False, verify: bool = True,
                       progress: ProgressFn | None = None) -> Checkpoint:  # fmt: skip
    """Write ``src`` (any supported layout, a file, a cached hub id...) to the directory ``dst`` natively.

    ``dtype``: the stored float type ("float32", the fast-loading default; "float16" or "bfloat16" halve
    the file). ``quantize="int8"`` writes an int8 checkpoint instead: the weights ``parameters.is_int8_weight``
    names as int8 with float32 scales per row (``kernels/qgemm.quantize_weight``), the rest float32, and
    ``"quantization": "int8"`` in config.json, so ``from_pretrained(dst)`` loads it on the int8 layers as
    stored. The flavor decided for ``src`` (or given) is recorded in ``dst/config.json``. With ``verify``,
    the written file is read back and compared tensor by tensor. Returns the opened ``dst``.

    Every file is written beside its destination and renamed into place only once all of them are complete
    (the weights first, then config.json and the tokenizer files): a failure (a full disk) changes no file in
    ``dst`` and leaves no partial one. A ``dst`` that is the source's directory, by any path, is refused.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be \"int8\" or None, got {quantize!r}")
    if quantize and dtype != "float32":
        raise ValueError(f"an int8 checkpoint keeps its other weights in float32: dtype {dtype!r} does not apply")
    ckpt = open_checkpoint(src, config=config, flavor=flavor, download=download, revision=revision,
                           cache_dir=cache_dir, progress=progress)  # fmt: skip
    if ckpt.config.quantization and quantize is None:
        raise CheckpointError(f"{ckpt.describe()} is an int8 checkpoint: it converts only to int8 (--quantize int8)")
    dst = os.fspath(dst)
    _refuse_the_source_directory(dst, ckpt)
    check_tokenizer_files(ckpt.tokenizer_files)
    weights_path = os.path.join(dst, "model.safetensors")
    clobbered = [n for n in ("config.json", "model.safetensors") if os.path.exists(os.path.join(dst, n))]
    if clobbered and not overwrite:
        raise FileExistsError(f"{dst} already holds {', '.join(clobbered)} (pass overwrite=True / --overwrite)")
    os.makedirs(dst, exist_ok=True)

    arrays = ckpt.state_dict(np.float32)  # views of the source's mapping where possible
    if quantize == "int8" and not ckpt.config.quantization:
        arrays = int8_state_dict(arrays, progress)
    metadata = {"format": "pt", "erniem_np.source_format": ckpt.format,
                "erniem_np.source": os.path.basename(os.path.normpath(ckpt.source))}  # fmt: skip
    config = ckpt.config.replace(quantization=quantize).to_dict()  # records flavor (and quantization)
    config["architectures"] = [ckpt.architecture]
    config["torch_dtype"] = dtype
    try:
        with contextlib.ExitStack() as staged:  # each file renamed into place as the block exits without error
            for name, path in ckpt.tokenizer_files.items():
                copy = staged.enter_context(atomic_file(os.path.join(dst, name)))
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, copy)
            text = staged.enter_context(atomic_file(os.path.join(dst, "config.json"), "w", encoding="utf-8"))
            text.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
            write_safetensors(weights_path, arrays, metadata=metadata, dtype=dtype, progress=None if progress is None
                              else lambda d, t: progress("writing model.safetensors", d, t))  # fmt: skip
    except OSError as e:  # a full disk, a file size limit, a read-only directory
        raise OSError(e.errno, f"{dst}: cannot write the converted checkpoint: {e.strerror or e}; no file there was "
                               "changed") from None

    out = open_checkpoint(dst)
    if verify:
        _verify(arrays, out, dtype, progress)
    return out


def int8_state_dict(arrays: dict[str, np.ndarray], progress: ProgressFn | None = None) -> dict[str, np.ndarray]:
    """The state dict of an int8 checkpoint: each weight ``is_int8_weight`` names quantized (int8, then its
    float32 scales under ``name + SCALE_SUFFIX``), every other array as it is."""
    from ..kernels.qgemm import quantize_weight  # NumPy only: compiles nothing

    out = {}
    names = [k for k in arrays if is_int8_weight(k)]
    for name, a in arrays.items():
        if name in names:
            out[name], out[name + SCALE_SUFFIX] = quantize_weight(a)
            if progress is not None:
                progress("quantizing", len([k for k in out if k.endswith(SCALE_SUFFIX)]), len(names))
        else:
            out[name] = a
    return out


def _refuse_the_source_directory(dst: str, ckpt: Checkpoint) -> None:
    """Writing into the directory the source is read from would replace the source's own files."""
    if not os.path.isdir(dst):
        return
    sources = [*ckpt.files, *([ckpt.config_file] if ckpt.config_file else []), *ckpt.tokenizer_files.values()]
    directories = {os.path.dirname(os.path.abspath(f)) for f in sources}
    if os.path.isdir(ckpt.path):
        directories.add(ckpt.path)
    for directory in directories:
        if os.path.samefile(dst, directory):
            same = "" if os.path.abspath(dst) == os.path.abspath(directory) else f" ({directory}, by another path)"
            raise CheckpointError(f"{dst}: the destination is the source directory{same}; choose another "
                                  "directory")  # fmt: skip


def check_tokenizer_files(tokenizer_files: dict[str, str]) -> None:
    """Refuse a tokenizer_config.json or special_tokens_map.json whose settings have the wrong type, naming the
    file and the key (the tokenizer would otherwise read, say, ``"do_lower_case": "no"`` as true)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = tokenizer_files.get(name)
        if path is None:
            continue
        problems = tokenizer_config_problems(read_json_object(path, name))
        if problems:
            raise CheckpointError(f"{path}: " + "; ".join(problems))


def _verify(expected: dict[str, np.ndarray], written: Checkpoint, dtype: str, progress) -> None:
    if set(expected) != set(written.tensors):
        raise CheckpointError(f"{written.describe()}: written names differ from the source's: "
                              f"{sorted(set(expected) ^ set(written.tensors))[:5]}")  # fmt: skip
    total = sum(a.nbytes for a in expected.values())
    done = 0
    for name, a in expected.items():
        b = written.tensors[name].array(np.float32)
        if dtype == "float16":
            a = a.astype(np.float16).astype(np.float32)
        elif dtype == "bfloat16":
            from .tensors import bfloat16_to_float32, float32_to_bfloat16

            a = bfloat16_to_float32(float32_to_bfloat16(a))
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
            raise CheckpointError(f"{written.describe()}: {name} does not read back as written")
        done += a.nbytes
        if progress is not None:
            progress("verifying", done, total)


def inspect_checkpoint(path_or_name, **open_kwargs) -> dict[str, Any]:
    """A plain-data description of a checkpoint (nothing but the headers/pickles is read)."""
    ckpt = open_checkpoint(path_or_name, **open_kwargs)
    check_tokenizer_files(ckpt.tokenizer_files)
    cfg = ckpt.config
    return {
        "path": ckpt.path,
        "hub_id": ckpt.hub_id,
        "format": ckpt.format,
        "files": [{"name": os.path.basename(f), "bytes": os.path.getsize(f)} for f in ckpt.files],
        "size_on_disk": ckpt.size_on_disk,
        "config_file": ckpt.config_file,
        "config": {k: getattr(cfg, k) for k in SUMMARY_FIELDS},
        "flavor": ckpt.flavor,
        "flavor_source": ckpt.flavor_source,
        "architecture": ckpt.architecture,
        "head": ckpt.head,
        "head_source": ckpt.head_source,
        "parameters": ckpt.num_parameters,
        "tensors": len(ckpt.tensors),
        "dtypes": ckpt.dtypes(),
        "quantization": cfg.quantization,
        "tokenizer_files": sorted(ckpt.tokenizer_files),
        "tokenizer_missing": [n for n in TOKENIZER_FILES[:4] if n not in ckpt.tokenizer_files],
        "notes": list(ckpt.notes),
    }
