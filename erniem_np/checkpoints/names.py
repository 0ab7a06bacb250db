"""Checkpoint names -> HF names, as a visible rename table; Paddle's Linear layout; the head from the keys.

HF names (docs/reference.md#w1-hf-names), torch [out, in] Linear layout:

    embeddings.{word,position}_embeddings.weight, embeddings.layer_norm.{weight,bias}
    encoder.layers.{i}.self_attn.self_attn.{q,k,v}_proj.{weight,bias}     <- q/k/v nested one level deeper
    encoder.layers.{i}.self_attn.out_proj.{weight,bias}
    encoder.layers.{i}.{linear1,linear2,norm1,norm2}.{weight,bias}
    pooler.dense.{weight,bias}
    heads: classifier.* (sequence/token classification, multiple choice), qa_outputs.* (QA),
           linear_start.*, linear_end.* (UIE-M)
    the base carries the prefix ``ernie_m.`` in a head model's state dict

Paddle (docs/reference.md#w2-paddle-name-map) differs in exactly these ways, each handled below:

    q/k/v directly under self_attn          encoder.layers.{i}.self_attn.q_proj.*  -> ...self_attn.self_attn.q_proj.*
    Linear weights stored [in, out]         transposed (every 2-D weight of a module in LINEAR_MODULES)
    QA head named classifier                classifier.* -> qa_outputs.*
    token-cls/QA models keep a pooler       ernie_m.pooler.* dropped (HF's classes have none)
    legacy UIEM stored its encoder as       encoder.embeddings.* -> embeddings.*, encoder.encoder.* -> encoder.*,
      ``self.encoder``                      encoder.pooler.* -> pooler.*
    old code registered a buffer            embeddings.position_ids dropped (also in old HF files)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import CheckpointError
from .tensors import StoredTensor

BASE_PREFIX = "ernie_m."
BASE_ROOTS = ("embeddings.", "encoder.", "pooler.")
HEAD_MODULES = ("classifier", "qa_outputs", "linear_start", "linear_end")
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2", "dense", *HEAD_MODULES)
IGNORED_SUFFIXES = ("embeddings.position_ids",)  # an int64 buffer of very old checkpoints, not a parameter

# head short name (as in erniem_np.testing) <-> class names. UIEM is Paddle's name for the UIE-M model.
ARCHITECTURES = {
    "base": "ErnieMModel",
    "seq_cls": "ErnieMForSequenceClassification",
    "token_cls": "ErnieMForTokenClassification",
    "qa": "ErnieMForQuestionAnswering",
    "mc": "ErnieMForMultipleChoice",
    "ie": "ErnieMForInformationExtraction",
}
HEAD_OF_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()} | {"UIEM": "ie", "ErnieMForUIE": "ie"}
HEADS_WITHOUT_POOLER = ("token_cls", "qa")  # HF builds these with add_pooling_layer=False
HEAD_PARAMS = {"seq_cls": "classifier", "token_cls": "classifier", "mc": "classifier", "qa": "qa_outputs",
               "ie": ("linear_start", "linear_end")}  # fmt: skip

_PADDLE_QKV = re.compile(r"^(encoder\.layers\.\d+\.self_attn\.)([qkv]_proj\.(?:weight|bias))$")
_HF_QKV = re.compile(r"^encoder\.layers\.\d+\.self_attn\.self_attn\.[qkv]_proj\.")


def strip_base_prefix(tensors: Mapping[str, StoredTensor], source: str) -> dict[str, StoredTensor]:
    """Names without the base prefix: ``ernie_m.`` (head models) or the legacy UIEM ``encoder.``; ignored
    buffers dropped. Any key that is neither a base parameter nor a known head parameter is an error."""
    keys = [k for k in tensors if not k.endswith(IGNORED_SUFFIXES)]
    legacy_uiem = "encoder.embeddings.word_embeddings.weight" in keys
    out: dict[str, StoredTensor] = {}
    unknown = []
    for k in keys:
        name = k
        if name.startswith(BASE_PREFIX):
            name = name[len(BASE_PREFIX) :]
        elif legacy_uiem and name.startswith("encoder."):
            name = name[len("encoder.") :]
        if name.startswith(BASE_ROOTS) or name.split(".")[0] in HEAD_MODULES:
            if name in out:
                raise CheckpointError(f"{source}: {k} and another key both name the parameter {name}")
            out[name] = tensors[k]
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(
            f"{source}: unknown head layout: {len(unknown)} key(s) are not ErnieM parameters: "
            + ", ".join(sorted(unknown)[:8]) + (" ..." if len(unknown) > 8 else "")
            + f" (known heads: {', '.join(HEAD_MODULES)})"
        )
    if not any(n.startswith("embeddings.") for n in out):
        raise CheckpointError(f"{source}: no ErnieM embeddings among the keys "
                              f"({', '.join(sorted(tensors)[:5])}{' ...' if len(tensors) > 5 else ''})")  # fmt: skip
    return out


def detect_head(names, architecture: str | None, source: str) -> tuple[str, str]:
    """``(head, how)``: the head from the parameter names (after strip_base_prefix), refined by the config's
    architecture; ``how`` is "config", "keys" or "guess".

    ``classifier`` alone cannot tell sequence classification, token classification, multiple choice and
    Paddle's QA apart: the config's ``architectures`` decides, else a guess: HF's pooler convention (token
    classification has no pooler), else sequence classification. The class that loads it decides in the end.
    """
    modules = {n.split(".")[0] for n in names} & set(HEAD_MODULES)
    if {"linear_start", "linear_end"} & modules:
        from_keys = "ie"
    elif "qa_outputs" in modules:
        from_keys = "qa"
    elif "classifier" in modules:
        from_keys = "classifier"
    else:
        from_keys = "base"
    if len(modules) > (2 if from_keys == "ie" else 1) or (from_keys == "ie" and modules != {"linear_start",
                                                                                          "linear_end"}):
        raise CheckpointError(f"{source}: unknown head layout: the weights hold {', '.join(sorted(modules))}")
    declared = HEAD_OF_ARCHITECTURE.get(architecture) if architecture else None
    if declared is not None:
        compatible = declared == from_keys or (from_keys == "classifier" and declared in ("seq_cls", "token_cls",
                                                                                          "mc", "qa"))  # fmt: skip
        if from_keys != "base" and not compatible:
            raise CheckpointError(f"{source}: the config says {architecture} but the weights hold a "
                                  f"{'/'.join(sorted(modules))} head")  # fmt: skip
        return (declared, "config") if from_keys != "base" else ("base", "keys")
    if from_keys == "classifier":
        return ("seq_cls" if any(n.startswith("pooler.") for n in names) else "token_cls"), "guess"
    return from_keys, "keys"


def paddle_to_hf(tensors: Mapping[str, StoredTensor], head: str) -> dict[str, StoredTensor]:
    """Paddle names and layout -> HF names and layout (names already without the base prefix).

    The pooler is kept; whether a class drops it is decided by the caller (``drop_unused_pooler``).
    """
    out: dict[str, StoredTensor] = {}
    for name, t in tensors.items():
        if _HF_QKV.match(name):
            raise CheckpointError(f"{t.file}: {t.key} has HF's q/k/v naming in a Paddle checkpoint; "
                                  "its Linear layout cannot be known")  # fmt: skip
        new = _PADDLE_QKV.sub(r"\1self_attn.\2", name)  # QUIRK: HF nests q/k/v under self_attn.self_attn
        module, leaf = new.split(".")[-2:]
        if head == "qa" and module == "classifier":
            new = "qa_outputs." + leaf  # Paddle's QA head is called classifier
        if module in LINEAR_MODULES and leaf == "weight":
            if len(t.shape) != 2:
                raise CheckpointError(f"{t.file}: {t.key} is a Linear weight but has shape {t.shape}")
            t = t.transpose()  # Paddle Linear weight [in, out] -> torch [out, in]
        out[new] = t
    return out


def check_hf_names(tensors: Mapping[str, StoredTensor]) -> None:
    for name, t in tensors.items():
        if _PADDLE_QKV.match(name):
            raise CheckpointError(f"{t.file}: {t.key} has Paddle's q/k/v naming in an HF-format file; "
                                  "its Linear layout cannot be known (was it renamed without transposing?)")


def drop_unused_pooler(tensors: dict[str, StoredTensor], head: str) -> dict[str, StoredTensor]:
    if head in HEADS_WITHOUT_POOLER:
        return {k: v for k, v in tensors.items() if not k.startswith("pooler.")}
    return tensors


def with_prefix(tensors: Mapping[str, StoredTensor], head: str) -> dict[str, StoredTensor]:
    """HF state-dict names of the class for ``head``: the base prefixed with ``ernie_m.`` in head models."""
    if head == "base":
        return dict(tensors)
    return {(BASE_PREFIX + k if k.startswith(BASE_ROOTS) else k): v for k, v in tensors.items()}
