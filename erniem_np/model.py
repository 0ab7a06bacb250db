"""ErnieMModel and its five heads: parameters, the forward pass composed from layers.py, outputs and losses.

Dimension legend: B batch, C choices, L sequence, P past length, Lk = P + L, H hidden, nh heads, d head
size, F FFN width, V vocabulary, T position-table rows, N labels.

Class names, parameter names and output attribute names are HuggingFace's (transformers 4.46.3), so a user or
another port recognises them. ``config.flavor`` picks the reference ("hf" or "paddle") where they differ.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import backend as backends
from . import layers
from .config import ErnieMConfig
from .io import save_state_dict

_DTYPES = (np.float32, np.float64)


# ============================================================================================ outputs
class ModelOutput:
    """A dataclass whose fields are read as attributes (``out.logits``) or keys (``out["logits"]``)."""

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise TypeError("outputs are read by name, e.g. out['last_hidden_state'] or out.last_hidden_state")
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


@dataclass
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: np.ndarray  # [B, L, H]
    pooler_output: np.ndarray | None = None  # [B, H]; None for the token-classification and QA bases
    hidden_states: tuple[np.ndarray, ...] | None = None  # layers + 1 of [B, L, H]; [0] is the embeddings output
    attentions: tuple[np.ndarray, ...] | None = None  # layers of [B, nh, L, Lk]
    past_key_values: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None  # layers of ([B, nh, Lk, d]) x 2


@dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: np.ndarray | None = None
    logits: np.ndarray | None = None  # [B, N]
    hidden_states: tuple[np.ndarray, ...] | None = None
    attentions: tuple[np.ndarray, ...] | None = None


@dataclass
class MultipleChoiceModelOutput(SequenceClassifierOutput):
    pass  # logits [B, C]


@dataclass
class TokenClassifierOutput(SequenceClassifierOutput):
    pass  # logits [B, L, N]


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: np.ndarray | None = None
    start_logits: np.ndarray | None = None  # [B, L]
    end_logits: np.ndarray | None = None  # [B, L]
    hidden_states: tuple[np.ndarray, ...] | None = None
    attentions: tuple[np.ndarray, ...] | None = None


@dataclass
class InformationExtractionOutput(QuestionAnsweringModelOutput):
    start_prob: np.ndarray | None = None  # sigmoid(start_logits): what Paddle's UIEM returns
    end_prob: np.ndarray | None = None


# ============================================================================================ parameters
def base_parameter_shapes(config: ErnieMConfig, with_pooler: bool = True) -> dict[str, tuple[int, ...]]:
    """HF state-dict names and shapes of the bare encoder ([out, in] Linear layout)."""
    H, F, V, T = config.hidden_size, config.intermediate_size, config.vocab_size, config.max_position_embeddings
    shapes = {
        "embeddings.word_embeddings.weight": (V, H),
        "embeddings.position_embeddings.weight": (T, H),
        "embeddings.layer_norm.weight": (H,),
        "embeddings.layer_norm.bias": (H,),
    }
    for i in range(config.num_hidden_layers):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):  # QUIRK: HF nests q/k/v one level deeper than out_proj
            shapes[f"{p}self_attn.self_attn.{proj}.weight"] = (H, H)
            shapes[f"{p}self_attn.self_attn.{proj}.bias"] = (H,)
        shapes.update({
            f"{p}self_attn.out_proj.weight": (H, H), f"{p}self_attn.out_proj.bias": (H,),
            f"{p}linear1.weight": (F, H), f"{p}linear1.bias": (F,),
            f"{p}linear2.weight": (H, F), f"{p}linear2.bias": (H,),
            f"{p}norm1.weight": (H,), f"{p}norm1.bias": (H,),
            f"{p}norm2.weight": (H,), f"{p}norm2.bias": (H,),
        })  # fmt: skip
    if with_pooler:
        shapes["pooler.dense.weight"] = (H, H)
        shapes["pooler.dense.bias"] = (H,)
    return shapes


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """{"a.0.b": x} -> {"a": [{"b": x}]}: the nested parameter tree the layer functions take."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[str(i)] for i in range(len(node))]
        return node

    return listify(tree)


# ============================================================================================ inputs
def _as_int_array(name: str, value: Any) -> np.ndarray:
    try:
        a = np.asarray(value)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array of integers: {e}") from None
    if a.dtype == object:
        raise ValueError(f"{name} must be a rectangular array of integers (got ragged or mixed nested lists)")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def _as_float_array(name: str, value: Any, dtype) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    return a.astype(dtype, copy=False)


@dataclass
class _Inputs:
    input_ids: np.ndarray | None  # [B, L] int64
    inputs_embeds: np.ndarray | None  # [B, L, H]
    position_ids: np.ndarray  # [B, L] int64, 0-based (before the +2)
    mask: np.ndarray | None  # additive, broadcastable to [B, nh, L, Lk]
    head_mask: np.ndarray | None  # [layers, 1, nh, 1, 1]
    past: tuple | None  # layers of (k, v) [B, nh, P, d]


def prepare_inputs(config: ErnieMConfig, dtype, input_ids=None, attention_mask=None, position_ids=None,
                   head_mask=None, inputs_embeds=None, past_key_values=None) -> _Inputs:  # fmt: skip
    """Validate every input against the config and turn it into arrays; errors name the problem."""
    dtype = np.dtype(dtype)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        input_ids = _as_int_array("input_ids", input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, sequence], got shape {input_ids.shape}")
        B, L = input_ids.shape
        if input_ids.size:
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= config.vocab_size:
                bad = lo if lo < 0 else hi
                where = tuple(int(i) for i in np.argwhere(input_ids == bad)[0])
                raise ValueError(
                    f"input_ids holds id {bad} at {where}, outside the vocabulary [0, {config.vocab_size})"
                )
    else:
        inputs_embeds = _as_float_array("inputs_embeds", inputs_embeds, dtype)
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must be [batch, sequence, {config.hidden_size}], got {inputs_embeds.shape}"
            )
        B, L = inputs_embeds.shape[:2]
    if L == 0:
        raise ValueError("the sequence length is 0: every sequence needs at least one token")

    past, P = None, 0
    if past_key_values is not None:
        past, P = _check_past(config, past_key_values, B, dtype)

    T = config.max_position_embeddings
    if position_ids is None:
        if P + L > config.max_sequence_length:
            raise ValueError(
                f"sequence length {L}" + (f" after {P} cached positions" if P else "")
                + f" exceeds the position table: at most {config.max_sequence_length} positions "
                f"(max_position_embeddings {T} minus the +2 offset)"
            )
        position_ids = layers.default_position_ids(B, L, P)
    else:
        position_ids = _as_int_array("position_ids", position_ids)
        try:
            position_ids = np.broadcast_to(position_ids, (B, L))
        except ValueError:
            raise ValueError(f"position_ids has shape {position_ids.shape}, expected ({B}, {L})") from None
        if position_ids.size:
            lo, hi = int(position_ids.min()), int(position_ids.max())
            if lo + layers.POSITION_OFFSET < 0 or hi + layers.POSITION_OFFSET >= T:
                raise ValueError(
                    f"position_ids must lie in [-2, {T - 2}) (the model reads row id + 2 of a {T}-row table); "
                    f"got values from {lo} to {hi}"
                )

    mask = None
    if attention_mask is not None:
        attention_mask = np.asarray(attention_mask)
        if attention_mask.dtype == object or attention_mask.dtype.kind not in "biuf":
            raise TypeError(f"attention_mask must hold bools or numbers, got dtype {attention_mask.dtype}")
        _check_mask_shape(attention_mask.shape, B, L, P, config.num_attention_heads)
    mask = layers.additive_mask(input_ids, attention_mask, P, config.flavor, config.pad_token_id, dtype)

    if head_mask is not None:
        head_mask = _as_float_array("head_mask", head_mask, dtype)
        nh, n_layers = config.num_attention_heads, config.num_hidden_layers
        if head_mask.shape == (nh,):
            head_mask = np.broadcast_to(head_mask, (n_layers, nh))
        if head_mask.shape != (n_layers, nh):
            raise ValueError(f"head_mask must be [{nh}] or [{n_layers}, {nh}], got shape {head_mask.shape}")
        head_mask = head_mask[:, None, :, None, None]  # [layers, nh] -> [layers, 1, nh, 1, 1]
    return _Inputs(input_ids, inputs_embeds, position_ids, mask, head_mask, past)


def _check_mask_shape(shape, B, L, P, nh):
    Lk = P + L
    if len(shape) == 2:
        if shape != (B, Lk):
            hint = f" (with {P} cached positions the mask covers them too: {P} + {L})" if P else ""
            raise ValueError(f"attention_mask has shape {shape}, expected ({B}, {Lk}){hint}")
    elif len(shape) == 3:
        if shape != (B, L, Lk):
            raise ValueError(f"a 3-D attention_mask must be [batch, query, key] = ({B}, {L}, {Lk}), got {shape}")
    elif len(shape) == 4:
        want = (B, nh, L, Lk)
        if any(s not in (1, w) for s, w in zip(shape, want, strict=True)) or shape[2:] != (L, Lk) and 1 not in shape[2:]:
            raise ValueError(f"a 4-D attention_mask must broadcast to {want}, got {shape}")
    else:
        raise ValueError(f"attention_mask must be 2-D, 3-D or 4-D, got shape {shape}")


def _check_past(config, past_key_values, B, dtype):
    n_layers, nh, d = config.num_hidden_layers, config.num_attention_heads, config.head_dim
    if len(past_key_values) != n_layers:
        raise ValueError(f"past_key_values must hold {n_layers} (key, value) pairs, got {len(past_key_values)}")
    past, P = [], None
    for i, pair in enumerate(past_key_values):
        if len(pair) != 2:
            raise ValueError(f"past_key_values[{i}] must be a (key, value) pair")
        k, v = (_as_float_array(f"past_key_values[{i}]", t, dtype) for t in pair)
        for t in (k, v):
            if t.ndim != 4 or t.shape[0] != B or t.shape[1] != nh or t.shape[3] != d:
                raise ValueError(f"past_key_values[{i}] tensors must be [{B}, {nh}, past, {d}], got {t.shape}")
        if k.shape != v.shape or (P is not None and k.shape[2] != P):
            raise ValueError(f"past_key_values[{i}]: keys and values of every layer must share one past length")
        P = k.shape[2]
        past.append((k, v))
    return tuple(past), P


# ============================================================================================ models
class ErnieMPreTrainedModel:
    """Shared loading, saving and parameter checks. Subclasses set ``head`` and ``pooler``."""

    architecture = "ErnieMModel"
    has_pooler = True  # HF's token-classification and QA heads build their ErnieMModel without a pooler
    base_prefix = ""  # "ernie_m." for the heads (HF base_model_prefix)

    def __init__(self, config: ErnieMConfig, state_dict: dict[str, np.ndarray] | None = None,
                 dtype=np.float32, seed: int = 0, backend: str = "numba"):  # fmt: skip
        """``state_dict``: HF names and layout (None: HF's random init from ``seed``). ``backend``: "numba"
        (the fused kernels) or "numpy" (the reference layers); both give the same numbers to fp32 precision."""
        self.backend = backends.check_backend(backend)
        if not isinstance(config, ErnieMConfig):
            raise TypeError(f"config must be an ErnieMConfig, got {type(config).__name__}")
        if np.dtype(dtype) not in [np.dtype(t) for t in _DTYPES]:
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        self.config = config
        self.dtype = np.dtype(dtype)
        self._word_rows = None  # ids -> word-embedding rows from the checkpoint file (set by from_pretrained)
        if state_dict is None:
            state_dict = self._init_weights(seed)
        self._set_state_dict(state_dict)

    # ---------------------------------------------------------------- parameters
    def head_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        base = base_parameter_shapes(self.config, self.has_pooler)
        shapes = {self.base_prefix + k: v for k, v in base.items()}
        shapes.update(self.head_parameter_shapes())
        return shapes

    def _set_state_dict(self, state_dict: dict[str, np.ndarray]) -> None:
        expected = self.parameter_shapes()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        misshapen = [
            f"{k}: {tuple(np.shape(state_dict[k]))} (expected {expected[k]})"
            for k in expected
            if k in state_dict and tuple(np.shape(state_dict[k])) != expected[k]
        ]
        if missing or unexpected or misshapen:
            parts = []
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
                if items:
                    parts.append(f"{label} ({len(items)}): " + ", ".join(items))
            raise ValueError(f"{type(self).__name__} weights do not match the config: " + "; ".join(parts))
        flat = {}
        for k in expected:
            a = np.asarray(state_dict[k])
            if not np.issubdtype(a.dtype, np.floating):
                raise TypeError(f"weight {k} has dtype {a.dtype}; weights must be floating point")
            flat[k] = np.ascontiguousarray(a, dtype=self.dtype)
        self._flat = flat
        tree = _unflatten(flat)
        self.params = tree  # the nested tree the layer functions take; heads find the base under "ernie_m"

    def _init_weights(self, seed: int) -> dict[str, np.ndarray]:
        """HF's _init_weights: Linear and Embedding weights N(0, initializer_range), biases 0, LayerNorm (1, 0),
        the padding_idx row (pad_token_id) of both embedding tables zeroed."""
        rng = np.random.default_rng(seed)
        std = self.config.initializer_range
        sd = {}
        for name, shape in self.parameter_shapes().items():
            if name.endswith("layer_norm.weight") or name.endswith(("norm1.weight", "norm2.weight")):
                sd[name] = np.ones(shape)
            elif name.endswith(".bias"):
                sd[name] = np.zeros(shape)
            else:
                sd[name] = rng.normal(0.0, std, shape)
                if "embeddings." in name and self.config.pad_token_id < shape[0]:
                    sd[name][self.config.pad_token_id] = 0.0  # padding_idx=pad_token_id on both tables
                    # (HF refuses a pad id beyond the position table at construction; with weights it is harmless)
        return sd

    def state_dict(self) -> dict[str, np.ndarray]:
        """HF state-dict names and layout: loads into transformers' class of the same name."""
        return dict(self._flat)

    def num_parameters(self) -> int:
        return int(sum(a.size for a in self._flat.values()))

    def _base_params(self) -> dict[str, Any]:
        return self.params["ernie_m"] if self.base_prefix else self.params

    # ---------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, flavor: str | None = None, dtype=np.float32,
                        backend: str = "numba", *, config: ErnieMConfig | dict | str | None = None,
                        download: bool = False, revision: str | None = None, cache_dir: str | None = None,
                        mmap: bool = True):  # fmt: skip
        """Load any ErnieM checkpoint; the formats and the name map live in ``erniem_np.checkpoints``.

        ``path_or_name``: a directory in HF layout (``model.safetensors``, ``pytorch_model.bin``, or either
        sharded with its ``*.index.json``) or PaddleNLP layout (``model_state.pdparams`` with ``config.json``
        or legacy ``model_config.json``); a single weights file; or a hub id (``org/name``) found in the local
        HF cache. ``download=True`` fetches a hub id that is not cached, with ``huggingface_hub`` (imported
        only then); offline, the error lists the files to fetch and where to put them.
        ``flavor`` ("hf"/"paddle") overrides the reference behaviour; by default the flavor recorded in the
        config, else "paddle" for ``.pdparams`` weights and "hf" for the HF formats. ``config`` replaces the
        checkpoint's (needed for a bare weights file whose shapes match no named checkpoint). With ``mmap``
        float32 weights stay views of the memory-mapped file (no copy; pages load on first use).
        A checkpoint of another model class loads as long as the weights this class needs are there:
        the ``ernie_m.`` prefix is added or stripped, an unused pooler or head is dropped with a warning.
        """
        from .checkpoints import open_checkpoint  # the loader is imported on use: the model never needs it

        ckpt = open_checkpoint(path_or_name, config=config, flavor=flavor, target=cls.architecture,
                               download=download, revision=revision, cache_dir=cache_dir, use_mmap=mmap)  # fmt: skip
        state_dict, config = cls._adapt_state_dict(ckpt.state_dict(dtype), ckpt.config)
        try:
            model = cls(config, state_dict, dtype=dtype, backend=backend)
        except (ValueError, TypeError) as e:  # name the files: the model's message names the keys
            raise type(e)(f"{ckpt.describe()}: {e}") from None
        for name in ("embeddings.word_embeddings.weight", "ernie_m.embeddings.word_embeddings.weight"):
            if name in ckpt.tensors:  # a mapped float32 table of the same dtype: read its rows from the file
                model._word_rows = ckpt.tensors[name].row_reader(model.dtype)
        return model

    @classmethod
    def _adapt_state_dict(cls, sd: dict[str, np.ndarray], config: ErnieMConfig):
        """Add or strip the base prefix, drop parameters this class has no use for, and take the FFN width
        from the weights (Paddle ignores intermediate_size and builds 4 * hidden_size)."""
        prefixed = any(k.startswith("ernie_m.") for k in sd)
        if cls.base_prefix and not prefixed:
            sd = {("ernie_m." + k if k.startswith(("embeddings.", "encoder.", "pooler.")) else k): v
                  for k, v in sd.items()}  # fmt: skip
        elif not cls.base_prefix and prefixed:
            sd = {k.removeprefix("ernie_m."): v for k, v in sd.items()}  # head weights keep their names
        w1 = sd.get(cls.base_prefix + "encoder.layers.0.linear1.weight")
        if w1 is not None and np.ndim(w1) == 2 and w1.shape[0] != config.intermediate_size:
            config = config.replace(intermediate_size=int(w1.shape[0]))
        probe = cls.__new__(cls)
        probe.config = config
        expected = probe.parameter_shapes()
        unused = [k for k in sd if k not in expected and k.endswith(_DROPPABLE)]
        if unused:
            warnings.warn(f"{cls.__name__} does not use these weights of the checkpoint: {', '.join(unused)}",
                          stacklevel=3)  # fmt: skip
            sd = {k: v for k, v in sd.items() if k not in unused}
        return sd, config

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json and model.safetensors in HF's layout (loads in transformers 4.46.3)."""
        os.makedirs(path, exist_ok=True)
        config = self.config.to_dict()
        config["architectures"] = [self.architecture]
        import json

        with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        save_state_dict(self.state_dict(), os.path.join(path, "model.safetensors"))

    # ---------------------------------------------------------------- forward
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _encode(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                output_hidden_states=False, probes=None) -> BaseModelOutputWithPoolingAndCrossAttentions:  # fmt: skip
        """The encoder, top to bottom: embeddings -> layers -> pooler.

        ``probes``: None (nothing recorded, nothing paid), or a dict that receives every intermediate by its
        parity-bundle name (erniem_np.parity): ``emb.out``, ``layer.NN.attn.q`` ... ``layer.NN.out``,
        ``pooler.out``. The numba backend records only what its fused kernels expose (see backend.py)."""
        cfg, p = self.config, self._base_params()
        inp = prepare_inputs(cfg, self.dtype, input_ids, attention_mask, position_ids, head_mask,
                             inputs_embeds, past_key_values)  # fmt: skip
        word_rows = inp.inputs_embeds
        if word_rows is None and self._word_rows is not None:
            # The word-embedding rows read from the checkpoint file (StoredTensor.row_reader), the same
            # numbers as indexing the mapped table, without mapping MB-sized page-cache folios per token.
            word_rows = self._word_rows(inp.input_ids)  # [B, L] -> [B, L, H]
        # embeddings: word + position (+2 offset) -> LayerNorm      [B, L] -> [B, L, H]
        x = layers.embeddings(inp.input_ids, inp.position_ids, **p["embeddings"], eps=cfg.layer_norm_eps,
                              inputs_embeds=word_rows)  # fmt: skip
        if probes is not None:
            probes["emb.out"] = x
        hidden_states, attentions, presents = [x] if output_hidden_states else [], [], []
        fast = self.backend == "numba"
        extra = {"need_probs": bool(output_attentions)} if fast else {}
        for i, layer in enumerate(p["encoder"]["layers"]):  # post-LN Transformer layers, [B, L, H] each
            layer_probes = None if probes is None else {}
            x, probs, cache = (backends.encoder_layer if fast else layers.encoder_layer)(
                x, **layer, n_heads=cfg.num_attention_heads, activation=cfg.hidden_act, eps=cfg.layer_norm_eps,
                mask=inp.mask, flavor=cfg.flavor,
                head_mask=None if inp.head_mask is None else inp.head_mask[i],
                past=None if inp.past is None else inp.past[i], probes=layer_probes, **extra,
            )  # fmt: skip
            if probes is not None:  # "attn.probs" -> "layer.03.attn.probs"
                probes.update({f"layer.{i:02d}.{name}": value for name, value in layer_probes.items()})
            if output_hidden_states:  # kept only when asked: 13 of them would hold B * L * H each
                hidden_states.append(x)
            if output_attentions:
                attentions.append(probs)
            if use_cache:
                presents.append(cache)
        pooler = backends.pooler if fast else layers.pooler
        pooled = pooler(x, **p["pooler"]) if self.has_pooler else None  # [B, L, H] -> [B, H]
        if probes is not None and pooled is not None:
            probes["pooler.out"] = pooled
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            past_key_values=tuple(presents) if use_cache else None,  # HF never returns a cache; Paddle does
        )


_DROPPABLE = ("pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias",
              "qa_outputs.weight", "qa_outputs.bias", "linear_start.weight", "linear_start.bias",
              "linear_end.weight", "linear_end.bias")  # fmt: skip


class ErnieMModel(ErnieMPreTrainedModel):
    """The bare encoder: last_hidden_state [B, L, H] and pooler_output [B, H]."""

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                output_hidden_states=False, probes=None) -> BaseModelOutputWithPoolingAndCrossAttentions:  # fmt: skip
        return self._encode(input_ids, attention_mask, position_ids, head_mask, inputs_embeds,
                            past_key_values, use_cache, output_attentions, output_hidden_states, probes)  # fmt: skip


class _Head(ErnieMPreTrainedModel):
    base_prefix = "ernie_m."
    n_outputs: int | None = None  # rows of the head's Linear; None -> config.num_labels
    head_params: tuple[str, ...] = ("classifier",)

    def head_parameter_shapes(self):
        n = self.n_outputs or self.config.num_labels
        H = self.config.hidden_size
        shapes = {}
        for name in self.head_params:
            shapes[f"{name}.weight"] = (n, H)
            shapes[f"{name}.bias"] = (n,)
        return shapes

    def _head_linear(self, x, name):
        linear = backends.linear if self.backend == "numba" else layers.linear
        return linear(x, **self.params[name])

    def _cross_entropy(self, logits, labels, ignore_index=-100):
        # QUIRK: with every label ignored torch's mean is NaN, Paddle's is 0
        return layers.cross_entropy(logits, labels, ignore_index, 0.0 if self.config.flavor == "paddle" else np.nan)


class ErnieMForSequenceClassification(_Head):
    """logits = classifier(pooler_output): [B, N]. Loss by problem_type as HF computes it."""

    architecture = "ErnieMForSequenceClassification"

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, past_key_values=None, output_attentions=False, output_hidden_states=False,
                labels=None, probes=None) -> SequenceClassifierOutput:  # fmt: skip
        out = self._encode(input_ids, attention_mask, position_ids, head_mask, inputs_embeds, past_key_values,
                           False, output_attentions, output_hidden_states, probes)  # fmt: skip
        logits = self._head_linear(out.pooler_output, "classifier")  # dropout is identity: [B, H] -> [B, N]
        if probes is not None:
            probes["head.seq_cls.logits"] = logits
        loss = None if labels is None else self._loss(logits, labels)
        return SequenceClassifierOutput(loss, logits, out.hidden_states, out.attentions)

    def _loss(self, logits, labels):
        labels = np.asarray(labels)
        n = self.config.num_labels
        problem = self.config.problem_type
        if problem is None:  # HF infers it on the first call (and stores it in the config; we do not mutate)
            if n == 1:
                problem = "regression"
            elif np.issubdtype(labels.dtype, np.integer):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            labels = labels.astype(self.dtype)
            if n == 1:  # MSE(logits.squeeze(), labels.squeeze())
                return layers.mse(np.squeeze(logits), np.squeeze(labels))
            return layers.mse(logits, _same_shape("labels", labels, logits.shape))
        if problem == "single_label_classification":
            labels = _int_labels("labels", labels)
            if labels.size != logits.shape[0]:
                raise ValueError(f"labels must hold one class per sequence ({logits.shape[0]}), got {labels.shape}")
            return self._cross_entropy(logits.reshape(-1, n), labels.reshape(-1))
        return layers.bce_with_logits(logits, _same_shape("labels", labels.astype(self.dtype), logits.shape))


class ErnieMForMultipleChoice(_Head):
    """Inputs [B, C, L] are flattened to [B*C, L]; logits = classifier(pooler_output) reshaped to [B, C]."""

    architecture = "ErnieMForMultipleChoice"
    n_outputs = 1

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, output_attentions=False, output_hidden_states=False,
                labels=None, probes=None) -> MultipleChoiceModelOutput:  # fmt: skip
        source = input_ids if input_ids is not None else inputs_embeds
        if source is None:
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        shape = np.shape(source)
        want = 3 if input_ids is not None else 4
        if len(shape) != want:
            raise ValueError(f"multiple choice takes [batch, choices, sequence{', hidden' if want == 4 else ''}] "
                             f"inputs, got shape {shape}")  # fmt: skip
        B, C, L = shape[:3]

        def flat(name, a, trailing=()):  # [B, C, L, ...] -> [B*C, L, ...]
            if a is None:
                return None
            a = np.asarray(a)
            if a.shape != (B, C, L) + trailing:
                raise ValueError(f"{name} must have shape {(B, C, L) + trailing}, got {a.shape}")
            return a.reshape((B * C, L) + trailing)

        out = self._encode(
            flat("input_ids", input_ids), flat("attention_mask", attention_mask),
            flat("position_ids", position_ids), head_mask,
            flat("inputs_embeds", inputs_embeds, (self.config.hidden_size,)),
            None, False, output_attentions, output_hidden_states, probes,
        )  # fmt: skip
        logits = self._head_linear(out.pooler_output, "classifier").reshape(B, C)  # [B*C, 1] -> [B, C]
        if probes is not None:  # the encoder's probes are those of the flattened [B*C, L] batch
            probes["head.mc.logits"] = logits
        loss = None
        if labels is not None:
            labels = _int_labels("labels", labels).reshape(-1)
            loss = self._cross_entropy(logits, labels)
        return MultipleChoiceModelOutput(loss, logits, out.hidden_states, out.attentions)


class ErnieMForTokenClassification(_Head):
    """logits = classifier(last_hidden_state): [B, L, N]. No pooler (HF add_pooling_layer=False)."""

    architecture = "ErnieMForTokenClassification"
    has_pooler = False

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, past_key_values=None, output_attentions=False, output_hidden_states=False,
                labels=None, probes=None) -> TokenClassifierOutput:  # fmt: skip
        out = self._encode(input_ids, attention_mask, position_ids, head_mask, inputs_embeds, past_key_values,
                           False, output_attentions, output_hidden_states, probes)  # fmt: skip
        logits = self._head_linear(out.last_hidden_state, "classifier")  # [B, L, H] -> [B, L, N]
        if probes is not None:
            probes["head.token_cls.logits"] = logits
        loss = None
        if labels is not None:
            labels = _int_labels("labels", labels)
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels must have shape {logits.shape[:2]}, got {labels.shape}")
            loss = self._cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return TokenClassifierOutput(loss, logits, out.hidden_states, out.attentions)


class ErnieMForQuestionAnswering(_Head):
    """start/end logits [B, L] from qa_outputs (Paddle calls it ``classifier``). No pooler in HF."""

    architecture = "ErnieMForQuestionAnswering"
    has_pooler = False
    head_params = ("qa_outputs",)

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, past_key_values=None, output_attentions=False, output_hidden_states=False,
                start_positions=None, end_positions=None, probes=None) -> QuestionAnsweringModelOutput:  # fmt: skip
        out = self._encode(input_ids, attention_mask, position_ids, head_mask, inputs_embeds, past_key_values,
                           False, output_attentions, output_hidden_states, probes)  # fmt: skip
        logits = self._head_linear(out.last_hidden_state, "qa_outputs")  # [B, L, H] -> [B, L, 2]
        start_logits, end_logits = logits[..., 0], logits[..., 1]  # [B, L] each
        if probes is not None:
            probes.update({"head.qa.start_logits": start_logits, "head.qa.end_logits": end_logits})
        loss = None
        if start_positions is not None and end_positions is not None:
            L = start_logits.shape[1]
            # HF: squeeze a trailing axis, clamp to [0, L], and ignore index L (positions past the input)
            s = np.clip(_squeeze_last(_int_labels("start_positions", start_positions)), 0, L)
            e = np.clip(_squeeze_last(_int_labels("end_positions", end_positions)), 0, L)
            loss = (self._cross_entropy(start_logits, s, ignore_index=L)
                    + self._cross_entropy(end_logits, e, ignore_index=L)) / 2  # fmt: skip
        return QuestionAnsweringModelOutput(loss, start_logits, end_logits, out.hidden_states, out.attentions)


class ErnieMForInformationExtraction(_Head):
    """UIE-M: start/end logits [B, L] from linear_start / linear_end, and their sigmoids.

    QUIRK: HF returns the logits (its docstring says probabilities; its ``sigmoid`` module is unused);
    Paddle's UIEM returns sigmoid probabilities. We return both: ``start_logits`` and ``start_prob``.
    """

    architecture = "ErnieMForInformationExtraction"
    n_outputs = 1
    head_params = ("linear_start", "linear_end")

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, past_key_values=None, output_attentions=False, output_hidden_states=False,
                start_positions=None, end_positions=None, probes=None) -> InformationExtractionOutput:  # fmt: skip
        out = self._encode(input_ids, attention_mask, position_ids, head_mask, inputs_embeds, past_key_values,
                           False, output_attentions, output_hidden_states, probes)  # fmt: skip
        seq = out.last_hidden_state
        start_logits = self._head_linear(seq, "linear_start")[..., 0]  # [B, L, H] -> [B, L]
        end_logits = self._head_linear(seq, "linear_end")[..., 0]
        if probes is not None:
            probes.update({"head.ie.start_logits": start_logits, "head.ie.end_logits": end_logits})
        loss = None
        if start_positions is not None and end_positions is not None:
            L = start_logits.shape[1]
            # HF: squeeze(-1) then clamp(0, L) (a no-op for 0/1 targets), BCE-with-logits averaged over both.
            # HF needs float targets (integer ones raise there); we accept integers and use them as floats.
            s = np.clip(_squeeze_last(np.asarray(start_positions)), 0, L).astype(self.dtype)
            e = np.clip(_squeeze_last(np.asarray(end_positions)), 0, L).astype(self.dtype)
            s, e = (_same_shape(n, t, start_logits.shape) for n, t in (("start_positions", s), ("end_positions", e)))
            loss = (layers.bce_with_logits(start_logits, s) + layers.bce_with_logits(end_logits, e)) / 2
        from scipy.special import expit

        return InformationExtractionOutput(
            loss, start_logits, end_logits, out.hidden_states, out.attentions,
            start_prob=expit(start_logits), end_prob=expit(end_logits),
        )  # fmt: skip


# ============================================================================================ label helpers
def _int_labels(name, labels):
    a = np.asarray(labels)
    if a.dtype == object or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    return a.astype(np.int64)


def _squeeze_last(a):
    return a[..., 0] if a.ndim > 1 and a.shape[-1] == 1 else a  # torch squeeze(-1): only a size-1 axis


def _same_shape(name, a, shape):
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


MODEL_CLASSES = {
    cls.architecture: cls
    for cls in (ErnieMModel, ErnieMForSequenceClassification, ErnieMForMultipleChoice,
                ErnieMForTokenClassification, ErnieMForQuestionAnswering, ErnieMForInformationExtraction)
}  # fmt: skip
