"""Open any ErnieM checkpoint: find its files, read its weights lazily, map names, reconcile the config.

``open_checkpoint(path_or_name)`` accepts a directory in HF layout (``model.safetensors``, sharded
``model.safetensors.index.json``, ``pytorch_model.bin``, sharded ``pytorch_model.bin.index.json``) or PaddleNLP
layout (``model_state.pdparams`` + ``config.json`` or legacy ``model_config.json``), a single weights file
(e.g. a bare ``ernie_m_base.pdparams``), an HF hub cache snapshot, or a hub id (see hub.py). It returns a
Checkpoint whose ``tensors`` carry HF names and torch layout; nothing is read until ``state_dict()``, and then
float32 data stays memory-mapped.

Every file may be hostile or broken. The readers check each tensor against the bytes its file holds; here
every name and shape is then checked against the config (whose FFN width and unrecorded label count come
from the weights), all before any weight is read: what ``state_dict()`` allocates is what the config
describes. Any malformed file or value becomes one CheckpointError naming the file (and the key).

The flavor (which reference's behaviour the model reproduces, config.py): the ``flavor`` argument, else a
flavor recorded in the config (our own saves record it; a value other than "hf" or "paddle" is refused), else
the weights format: ``.pdparams`` -> "paddle", HF formats -> "hf". (So ``susnato/ernie-m-base_pytorch``,
whose config.json is PaddleNLP's file but whose weights are HF's, loads as "hf".)
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import config as config_module
from ..config import FLAVORS, ErnieMConfig
from ..parameters import base_parameter_shapes, with_int8_scales
from . import names as nm
from .errors import CheckpointError, clip, short_repr
from .hub import CONFIG_FILES, TOKENIZER_FILES, WEIGHT_FILES, resolve
from .pdparams_file import read_pdparams
from .safetensors_file import read_safetensors
from .tensors import StoredTensor
from .torch_file import read_torch

FORMAT_OF_FILE = {
    "model.safetensors": "safetensors", "model.safetensors.index.json": "safetensors",
    "pytorch_model.bin": "torch", "pytorch_model.bin.index.json": "torch", "model_state.pdparams": "pdparams",
}  # fmt: skip
FORMAT_OF_SUFFIX = {".safetensors": "safetensors", ".bin": "torch", ".pt": "torch", ".pth": "torch",
                    ".pdparams": "pdparams"}  # fmt: skip
READERS = {"safetensors": lambda p, m: read_safetensors(p, m)[0], "torch": read_torch, "pdparams": read_pdparams}

# Named checkpoints (docs/reference.md#c3-named-checkpoints): only for a bare weights file with no config beside it.
PRESETS = {
    "ernie-m-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         vocab_size=250002, max_position_embeddings=514),
    "ernie-m-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096, vocab_size=250002, max_position_embeddings=514),
}  # fmt: skip

ProgressFn = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class Checkpoint:
    """A checkpoint, opened: where it is, what it holds, and its tensors under HF names (read lazily)."""

    source: str  # what was asked for
    path: str  # the local directory (or file) it resolved to
    hub_id: str | None
    format: str  # "safetensors", "torch" or "pdparams"
    files: list[str]  # the weight files (shards in order), plus the index file if any
    config: ErnieMConfig
    config_file: str | None  # None when the config was passed in or taken from a preset
    flavor_source: str  # "argument", "config", or "weights format"
    head: str  # "base", "seq_cls", "token_cls", "qa", "mc" or "ie"
    head_source: str  # "config" (architectures), "keys", "guess" (a classifier the config does not name), "target"
    tensors: dict[str, StoredTensor]  # HF names of the head's class, torch layout
    tokenizer_files: dict[str, str] = field(default_factory=dict)  # file name -> path, of those present
    notes: list[str] = field(default_factory=list)  # what the name map changed

    @property
    def architecture(self) -> str:
        return nm.ARCHITECTURES[self.head]

    @property
    def flavor(self) -> str:
        return self.config.flavor

    @property
    def size_on_disk(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)

    @property
    def num_parameters(self) -> int:
        return sum(t.size for t in self.tensors.values())

    def dtypes(self) -> dict[str, int]:
        """Storage dtype -> number of tensors."""
        return dict(collections.Counter(t.dtype for t in self.tensors.values()))

    def describe(self) -> str:
        return ", ".join(self.files) if len(self.files) <= 2 else f"{self.files[0]} (+{len(self.files) - 1} more)"

    def state_dict(self, dtype=np.float32) -> dict[str, np.ndarray]:
        """HF names -> arrays, floating ones as ``dtype`` (float32 data of a mapped file is not copied)."""
        out = {}
        for name, t in self.tensors.items():
            try:
                out[name] = t.array(dtype)
            except CheckpointError:
                raise
            except (ValueError, OSError) as e:
                raise CheckpointError(f"{t.file}: cannot read {t.key}: {e}") from None
        return out


# -------------------------------------------------------------------------------------------- files
def find_weights(directory: str) -> tuple[str, list[str], str | None]:
    """``(format, weight files, index file or None)`` of a checkpoint directory."""
    for name in WEIGHT_FILES:
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            if name.endswith(".index.json"):
                return FORMAT_OF_FILE[name], *_shards(p)
            return FORMAT_OF_FILE[name], [p], None
    present = sorted(os.listdir(directory))
    others = [n for n in present if os.path.splitext(n)[1] in (".pdparams", ".safetensors")
              and n != "reference_outputs.safetensors"]  # fmt: skip
    if len(others) == 1:  # a bare weights file, e.g. ernie_m_base.pdparams
        return FORMAT_OF_SUFFIX[os.path.splitext(others[0])[1]], [os.path.join(directory, others[0])], None
    if len(others) > 1:
        raise CheckpointError(f"{directory} holds several weight files ({', '.join(others)}) and none of the "
                              f"standard names ({', '.join(WEIGHT_FILES)}): pass the file to load")  # fmt: skip
    raise FileNotFoundError(f"no {', '.join(WEIGHT_FILES[:-1])} or {WEIGHT_FILES[-1]} in {directory} "
                            f"(found: {', '.join(present) or 'nothing'})")  # fmt: skip


def read_json_object(path: str, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; any way it can be unreadable becomes a CheckpointError naming it."""
    return config_module.read_json_object(path, what, CheckpointError)


def _weight_map(index: str) -> dict[str, Any]:
    try:
        weight_map = read_json_object(index, "sharded-checkpoint index")["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (CheckpointError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a sharded-checkpoint index (no weight_map): {e}") from None
    return weight_map


def _shards(index: str) -> tuple[list[str], str]:
    weight_map = _weight_map(index)
    directory = os.path.dirname(index)
    shards = []
    for shard in weight_map.values():
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard:
            raise CheckpointError(f"{index}: the shard name {short_repr(shard)} is not a file name")
        if shard not in shards:
            shards.append(shard)
    missing = [s for s in shards if not os.path.isfile(os.path.join(directory, s))]
    if missing:
        raise FileNotFoundError(f"{index} names the shard(s) {', '.join(missing)}, missing from {directory}")
    return [os.path.join(directory, s) for s in shards], index


def read_weights(fmt: str, files: list[str], index: str | None, use_mmap: bool = True,
                 progress: ProgressFn | None = None) -> dict[str, StoredTensor]:  # fmt: skip
    """Every tensor of the weight files (all shards), by the names in the files."""
    tensors: dict[str, StoredTensor] = {}
    for i, path in enumerate(files):
        if progress is not None:
            progress(f"reading {os.path.basename(path)}", i, len(files))
        _refuse_lfs_pointer(path)
        for name, t in READERS[fmt](path, use_mmap).items():
            if name in tensors:
                raise CheckpointError(f"{path}: {name} is also in {tensors[name].file}")
            tensors[name] = t
    if progress is not None:
        progress("read", len(files), len(files))
    if index is not None:
        for name, shard in _weight_map(index).items():
            t = tensors.get(name)
            if t is None or os.path.basename(t.file) != shard:
                where = f"it is in {os.path.basename(t.file)}" if t else "no shard holds it"
                raise CheckpointError(f"{index}: says {name} is in {shard}, but {where}")
    return tensors


def _refuse_lfs_pointer(path: str) -> None:
    if os.path.getsize(path) < 1024:
        with open(path, "rb") as f:
            if f.read(24) == b"version https://git-lfs.":
                raise CheckpointError(f"{path}: a Git LFS pointer, not the weights: fetch the file itself "
                                      "(git lfs pull, or download it from the hub)")  # fmt: skip


def find_tokenizer_files(directory: str | None) -> dict[str, str]:
    if directory is None:
        return {}
    return {n: os.path.join(directory, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(directory, n))}


# -------------------------------------------------------------------------------------------- config
def _read_config_dict(path: str) -> dict[str, Any]:
    return read_json_object(path, "config")


def _config_source(config, directory: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """``(config dict, file)`` from the ``config`` argument or the directory; ``(None, None)`` if neither."""
    if isinstance(config, ErnieMConfig):
        d = config.to_dict()
        return d, None
    if isinstance(config, dict):
        return dict(config), None
    if config is not None:
        p = os.fspath(config)
        if os.path.isdir(p):
            p = next((os.path.join(p, n) for n in CONFIG_FILES if os.path.isfile(os.path.join(p, n))), p)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"config {p}: no such file")
        return _read_config_dict(p), p
    if directory is not None:
        for n in CONFIG_FILES:
            p = os.path.join(directory, n)
            if os.path.isfile(p):
                return _read_config_dict(p), p
    return None, None


def _architecture(d: dict[str, Any]) -> str | None:
    arch = d.get("architectures")
    if isinstance(arch, list) and arch and isinstance(arch[0], str):
        return arch[0]
    init_class = d.get("init_class")  # legacy model_config.json
    return init_class if isinstance(init_class, str) else None


def _weights_shapes(tensors: dict[str, StoredTensor]) -> dict[str, Any]:
    """Hyper-parameters the weights fix (names without the base prefix), with the key each comes from."""
    out = {}
    word = tensors.get("embeddings.word_embeddings.weight")
    if word is not None and len(word.shape) == 2:
        out["vocab_size"] = (word.shape[0], word)
        out["hidden_size"] = (word.shape[1], word)
    pos = tensors.get("embeddings.position_embeddings.weight")
    if pos is not None and len(pos.shape) == 2:
        out["max_position_embeddings"] = (pos.shape[0], pos)
    layers = [int(m.group(1)) for k in tensors if (m := re.match(r"encoder\.layers\.(\d+)\.", k))]
    if layers:
        last = next(t for k, t in tensors.items() if k.startswith(f"encoder.layers.{max(layers)}."))
        out["num_hidden_layers"] = (max(layers) + 1, last)
    w1 = tensors.get("encoder.layers.0.linear1.weight")
    if w1 is not None and len(w1.shape) == 2:
        out["intermediate_size"] = (w1.shape[0], w1)
    return out


def _preset_for(shapes: dict[str, Any]) -> dict[str, Any] | None:
    for preset in PRESETS.values():
        if all(shapes.get(k, (v,))[0] == v for k, v in preset.items() if k != "num_attention_heads"):
            return dict(preset)
    return None


def _reconcile(config: ErnieMConfig, d: dict[str, Any], tensors: dict[str, StoredTensor], head: str,
               config_file: str | None) -> ErnieMConfig:  # fmt: skip
    """Check the config against the weight shapes; take the FFN width (and unrecorded label counts) from the
    weights. Names are without the base prefix here."""
    shapes = _weights_shapes(tensors)
    where = config_file or "the config"
    problems = []
    for field_name in ("vocab_size", "hidden_size", "max_position_embeddings", "num_hidden_layers"):
        if field_name in shapes and getattr(config, field_name) != shapes[field_name][0]:
            n, t = shapes[field_name]
            problems.append(f"{field_name} is {getattr(config, field_name)} in {where} but {n} in the weights "
                            f"({t.key} has shape {t.shape} in {t.file})")  # fmt: skip
    if problems:
        raise CheckpointError("the config and the weights disagree: " + "; ".join(problems))
    if "intermediate_size" in shapes and shapes["intermediate_size"][0] != config.intermediate_size:
        # QUIRK (Paddle): the FFN is 4 * hidden whatever intermediate_size says; the weights are the truth
        config = config.replace(intermediate_size=int(shapes["intermediate_size"][0]))
    param = nm.HEAD_PARAMS.get(head)
    if head in ("seq_cls", "token_cls", "qa"):
        t = tensors.get(f"{param}.weight")
        if t is not None and len(t.shape) == 2 and t.shape[0] != config.num_labels:
            labels_recorded = any(k in d for k in ("id2label", "label2id", "num_labels", "num_classes"))
            if labels_recorded:
                raise CheckpointError(f"the config and the weights disagree: {where} gives {config.num_labels} "
                                      f"labels but {t.key} has shape {t.shape} in {t.file}")  # fmt: skip
            config = config.replace(num_labels=int(t.shape[0]))
    return config


def _check_recorded_flavor(d: dict[str, Any], config_file: str | None) -> None:
    recorded = d.get("flavor")
    if recorded is not None and (not isinstance(recorded, str) or recorded not in FLAVORS):
        raise CheckpointError(f"{config_file or 'the config'}: flavor must be one of {', '.join(FLAVORS)}, got "
                              f"{short_repr(recorded)}")  # fmt: skip


def expected_shapes(config: ErnieMConfig, head: str) -> dict[str, tuple[int, ...]]:
    """Every parameter a checkpoint of ``head`` may hold, with its shape (names without the base prefix): the
    encoder with its pooler, and the head's Linear layers (rows: the label count, 1 for multiple choice and
    the UIE-M pointers)."""
    shapes = base_parameter_shapes(config, with_pooler=True)
    params = nm.HEAD_PARAMS.get(head, ())
    rows = 1 if head in ("mc", "ie") else config.num_labels
    for param in (params,) if isinstance(params, str) else params:
        shapes[f"{param}.weight"] = (rows, config.hidden_size)
        shapes[f"{param}.bias"] = (rows,)
    return with_int8_scales(shapes) if config.quantization == "int8" else shapes


def _check_shapes(config: ErnieMConfig, tensors: dict[str, StoredTensor], head: str, source: str) -> None:
    """Every tensor is a parameter of the checkpoint's class, of the shape the config gives it: checked before
    any weight is read, so that what loading allocates is what the config describes."""
    expected = expected_shapes(config, head)
    hf = lambda k: nm.BASE_PREFIX + k if head != "base" and k.startswith(nm.BASE_ROOTS) else k
    unexpected = [hf(k) for k in tensors if k not in expected]
    misshapen = [f"{hf(k)}: {t.shape} (expected {expected[k]})" for k, t in tensors.items()
                 if k in expected and t.shape != expected[k]]  # fmt: skip
    if unexpected or misshapen:
        parts = [f"{label} ({len(items)}): " + ", ".join(clip(i, 160) for i in items[:8])
                 + (" ..." if len(items) > 8 else "")
                 for label, items in (("unexpected", unexpected), ("wrong shape", misshapen)) if items]  # fmt: skip
        raise CheckpointError(f"{source}: {nm.ARCHITECTURES[head]} weights do not match the config: "
                              + "; ".join(parts))


# -------------------------------------------------------------------------------------------- entry point
def open_checkpoint(path_or_name: str | os.PathLike, *, config=None, flavor: str | None = None,
                    target: str | None = None, download: bool = False, revision: str | None = None,
                    cache_dir: str | None = None, use_mmap: bool = True,
                    progress: ProgressFn | None = None) -> Checkpoint:  # fmt: skip
    """Open a checkpoint (module docstring). ``target`` is the class that will load it (its architecture
    name): a Paddle ``classifier`` then becomes ``qa_outputs`` for a QA class and a pooler is dropped for the
    classes HF builds without one. ``config`` (an ErnieMConfig, a dict, or a config file) replaces the
    checkpoint's own; it is needed for a bare weights file unless its shapes match a named checkpoint."""
    if flavor is not None and flavor not in ("hf", "paddle"):
        raise ValueError(f"flavor must be 'hf' or 'paddle', got {flavor!r}")
    path, hub_id = resolve(path_or_name, download=download, revision=revision, cache_dir=cache_dir)
    if os.path.isdir(path):
        directory = path
        config_dict, config_file = _config_source(config, directory)
        try:
            fmt, files, index = find_weights(directory)
        except FileNotFoundError:
            if config_dict is None:
                raise FileNotFoundError(f"no config.json or model_config.json in {path}, and no weights") from None
            raise
    else:
        directory = os.path.dirname(os.path.abspath(path))
        fmt = _format_of_file(path)
        files, index = [path], None
        if os.path.basename(path).endswith(".index.json"):
            files, index = _shards(path)
        config_dict, config_file = _config_source(config, directory)
        config_dict, config_file = _config_source(config, directory)

    if config_dict is not None:
        _check_recorded_flavor(config_dict, config_file)
    raw = read_weights(fmt, files, index, use_mmap, progress)
    source = ", ".join(files) if len(files) <= 2 else f"{files[0]} (+{len(files) - 1} more)"
    notes = []
    tensors = nm.strip_base_prefix(raw, source)
    if len(tensors) != len(raw):
        dropped = sorted(k for k in raw if k.endswith(nm.IGNORED_SUFFIXES))
        if dropped:
            notes.append(f"ignored buffer(s): {', '.join(dropped)}")

    shapes = _weights_shapes(tensors)
    if config_dict is None:
        preset = _preset_for(shapes)
        if preset is None:
            raise FileNotFoundError(
                f"no config.json or model_config.json beside {source}, and its shapes match no named ErnieM "
                "checkpoint: pass config= (an ErnieMConfig, a dict, or a config.json path)"
            )
        config_dict = preset
        notes.append("config: none beside the weights; taken from the named checkpoint the shapes match")

    architecture = _architecture(config_dict)
    head, head_source = nm.detect_head(tensors, architecture, source)
    target_head = nm.HEAD_OF_ARCHITECTURE.get(target) if target else None

    # flavor: argument > recorded in the config > weights format
    if flavor is not None:
        flavor_source = "argument"
    elif config_dict.get("flavor") in ("hf", "paddle"):
        flavor, flavor_source = config_dict["flavor"], "config"
    else:
        flavor, flavor_source = ("paddle" if fmt == "pdparams" else "hf"), "weights format"

    if fmt == "pdparams":
        classifier_family = ("seq_cls", "token_cls", "qa", "mc")
        map_head = target_head if head in classifier_family and target_head in classifier_family else head
        n_linear = sum(1 for t in tensors.values() if t.key.split(".")[-2] in nm.LINEAR_MODULES
                       and t.key.endswith(".weight"))  # fmt: skip
        renamed_qa = map_head == "qa" and "classifier.weight" in tensors
        tensors = nm.paddle_to_hf(tensors, map_head)
        if map_head != head:
            head_source = "target"
        notes.append(f"Paddle -> HF: q/k/v renamed to self_attn.self_attn.*, {n_linear} Linear weights "
                     "transposed [in, out] -> [out, in]" + (", classifier -> qa_outputs" if renamed_qa else ""))
        head = map_head
        pooler_head = target_head if target_head is not None else head
        before = len(tensors)
        tensors = nm.drop_unused_pooler(tensors, pooler_head)
        if len(tensors) != before:
            notes.append(f"dropped the pooler: HF's {nm.ARCHITECTURES[pooler_head]} has none")
    else:
        nm.check_hf_names(tensors)

    try:
        cfg = ErnieMConfig.from_dict({k: v for k, v in config_dict.items() if k != "flavor"}, flavor=flavor)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_file or 'config'}: {e}") from None
    cfg = _reconcile(cfg, config_dict, tensors, head, config_file)
    _check_shapes(cfg, tensors, head, source)
    return Checkpoint(
        source=os.fspath(path_or_name), path=path, hub_id=hub_id, format=fmt,
        files=files + ([index] if index else []), config=cfg, config_file=config_file,
        flavor_source=flavor_source, head=head, head_source=head_source, tensors=nm.with_prefix(tensors, head),
        tokenizer_files=find_tokenizer_files(directory), notes=notes,
    )  # fmt: skip


def _format_of_file(path: str) -> str:
    base = os.path.basename(path)
    if base in FORMAT_OF_FILE:
        return FORMAT_OF_FILE[base]
    ext = os.path.splitext(base)[1]
    if ext in FORMAT_OF_SUFFIX:
        return FORMAT_OF_SUFFIX[ext]
    raise CheckpointError(f"{path}: unknown weights format (expected .safetensors, .bin, .pt or .pdparams)")
