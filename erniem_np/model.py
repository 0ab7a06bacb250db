"""ErnieMModel and its five heads: the forward pass composed from the layer functions, outputs and losses.

Dimension legend: B batch, C choices, L sequence, P past length, Lk = P + L, H hidden, nh heads, d head
size, F FFN width, V vocabulary, T position-table rows, N labels.

The layer functions come from ``layers.py`` (NumPy, ``backend="numpy"``), ``fused.py`` (the Numba kernels,
``backend="numba"``, the default) or ``quantized.py`` (int8 weights, ``backend="int8"``): files with the same
functions and signatures, chosen once when the model is built (``backend.layer_set``). Class names, parameter names and output attribute names are
HuggingFace's (transformers 4.46.3), so a user or another port recognises them. ``config.flavor`` picks the
reference ("hf" or "paddle") where they differ.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scipy.special import expit

from . import layers
from .backend import layer_set
from .config import ErnieMConfig
from .inputs import int_labels, prepare_inputs, same_shape, squeeze_last
from .outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    InformationExtractionOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from .parameters import base_parameter_shapes, init_weights

_DTYPES = (np.float32, np.float64)


class ErnieMPreTrainedModel:
    """The encoder every class shares, with loading and saving. Subclasses set their head."""

    architecture = "ErnieMModel"
    has_pooler = True  # HF's token-classification and QA heads build their ErnieMModel without a pooler
    base_prefix = ""  # "ernie_m." for the heads (HF base_model_prefix)

    def __init__(self, config: ErnieMConfig, state_dict: dict[str, np.ndarray] | None = None,
                 dtype=np.float32, seed: int = 0, backend: str = "numba"):  # fmt: skip
        """``state_dict``: HF names and layout (None: HF's random init from ``seed``). ``backend``: "numba"
        (the fused kernels) or "numpy" (the reference layers), which give the same numbers to fp32 precision,
        or "int8" (quantized.py: float weights are quantized here; an int8 state dict is taken as stored)."""
        if not isinstance(config, ErnieMConfig):
            raise TypeError(f"config must be an ErnieMConfig, got {type(config).__name__}")
        if np.dtype(dtype) not in [np.dtype(t) for t in _DTYPES]:
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        self.layers = layer_set(backend)  # the one switch: layers.py, fused.py or quantized.py
        self.backend = backend
        self.config = config.replace(quantization=self.layers.QUANTIZATION)  # "int8" or None, saved with it
        self.dtype = np.dtype(dtype)
        shapes = self.parameter_shapes()
        if state_dict is None:
            state_dict = init_weights(shapes, config, seed)
        # the flat state dict (HF names) and the nested tree the layer functions take, stored as the layer set
        # takes them (the int8 set quantizes float weights here, once)
        self._flat, self.params = self.layers.load_parameters(shapes, state_dict, self.dtype, type(self).__name__)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---------------------------------------------------------------- the encoder
    def encode(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
               inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
               output_hidden_states=False, probes=None) -> BaseModelOutputWithPoolingAndCrossAttentions:  # fmt: skip
        """The encoder, top to bottom: embeddings -> layers -> pooler. Every class's forward starts here.

        ``probes``: None (nothing recorded, nothing paid), or a dict that receives every intermediate by its
        parity-bundle name (erniem_np.parity): ``emb.out``, ``layer.NN.attn.q`` ... ``layer.NN.out``,
        ``pooler.out``. The numba backend records only what its fused kernels expose (see fused.py)."""
        cfg, p, nn = self.config, self.base_params, self.layers
        inp = prepare_inputs(cfg, self.dtype, input_ids, attention_mask, position_ids, head_mask,
                             inputs_embeds, past_key_values)  # fmt: skip
        # embeddings: word + position (+2 offset) -> LayerNorm      [B, L] -> [B, L, H]
        x = nn.embeddings(inp.input_ids, inp.position_ids, **p["embeddings"], eps=cfg.layer_norm_eps,
                          inputs_embeds=inp.inputs_embeds)  # fmt: skip
        if probes is not None:
            probes["emb.out"] = x
        hidden_states, attentions, presents = [x] if output_hidden_states else [], [], []
        for i, layer in enumerate(p["encoder"]["layers"]):  # post-LN Transformer layers, [B, L, H] each
            layer_probes = None if probes is None else {}
            x, probs, cache = nn.encoder_layer(
                x, **layer, n_heads=cfg.num_attention_heads, activation=cfg.hidden_act, eps=cfg.layer_norm_eps,
                mask=inp.mask, flavor=cfg.flavor,
                head_mask=None if inp.head_mask is None else inp.head_mask[i],
                past=None if inp.past is None else inp.past[i], need_probs=output_attentions, probes=layer_probes,
            )  # fmt: skip
            if probes is not None:  # "attn.probs" -> "layer.03.attn.probs"
                probes.update({f"layer.{i:02d}.{name}": value for name, value in layer_probes.items()})
            if output_hidden_states:  # kept only when asked: 13 of them would hold B * L * H each
                hidden_states.append(x)
            if output_attentions:
                attentions.append(probs)
            if use_cache:
                presents.append(cache)
        pooled = nn.pooler(x, **p["pooler"]) if self.has_pooler else None  # [B, L, H] -> [B, H]
        if probes is not None and pooled is not None:
            probes["pooler.out"] = pooled
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            past_key_values=tuple(presents) if use_cache else None,  # HF never returns a cache; Paddle does
        )

    # ---------------------------------------------------------------- parameters
    @property
    def base_params(self) -> dict[str, Any]:
        """The encoder's parameter tree (the heads keep it under "ernie_m", as HF names it)."""
        return self.params["ernie_m"] if self.base_prefix else self.params

    @classmethod
    def parameter_shapes_for(cls, config: ErnieMConfig) -> dict[str, tuple[int, ...]]:
        """HF state-dict names and shapes of this class for ``config``."""
        base = base_parameter_shapes(config, cls.has_pooler)
        return {cls.base_prefix + k: v for k, v in base.items()} | cls.head_parameter_shapes(config)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.parameter_shapes_for(self.config)

    @classmethod
    def head_parameter_shapes(cls, config: ErnieMConfig) -> dict[str, tuple[int, ...]]:
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """HF state-dict names and layout: loads into transformers' class of the same name. The arrays are the
        model's own: an edit in place reaches the forward pass, except for weights the backend packed at load
        (the numba backend's encoder and pooler Linear weights, the int8 backend's quantized Linear weights and
        their scales and its float32 pooler weight), which are read-only here. To change one of those, build a
        model from a changed dict:
        ``sd = model.state_dict(); sd[name] = new; type(model)(model.config, sd, backend=model.backend)``."""
        return dict(self._flat)

    def num_parameters(self) -> int:
        return int(sum(a.size for a in self._flat.values()))

    # ---------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, flavor: str | None = None, dtype=np.float32,
                        backend: str | None = None, *, quantize: str | None = None,
                        config: ErnieMConfig | dict | str | None = None, download: bool = False,
                        revision: str | None = None, cache_dir: str | None = None, mmap: bool = True):  # fmt: skip
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
        ``backend``: "numba" (the default), "numpy" or "int8"; ``quantize="int8"`` is ``backend="int8"``: the
        weights are quantized as they load. A checkpoint saved by an int8 model (its config says
        ``"quantization": "int8"``) loads as int8 with neither argument, as stored.
        A checkpoint of another model class loads as long as the weights this class needs are there:
        the ``ernie_m.`` prefix is added or stripped, an unused pooler or head is dropped with a warning.
        """
        from .checkpoints.pretrained import load_pretrained  # on use: the model itself never needs a loader

        return load_pretrained(cls, path_or_name, flavor, dtype, backend, quantize=quantize, config=config,
                               download=download, revision=revision, cache_dir=cache_dir, mmap=mmap)  # fmt: skip

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json and model.safetensors in HF's layout (loads in transformers 4.46.3); each file
        replaced atomically, so saving over the checkpoint this model maps is safe."""
        from .checkpoints.pretrained import save_pretrained

        save_pretrained(self, path)


class ErnieMModel(ErnieMPreTrainedModel):
    """The bare encoder: last_hidden_state [B, L, H] and pooler_output [B, H]."""

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                output_hidden_states=False, probes=None) -> BaseModelOutputWithPoolingAndCrossAttentions:  # fmt: skip
        return self.encode(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           head_mask=head_mask, inputs_embeds=inputs_embeds, past_key_values=past_key_values,
                           use_cache=use_cache, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, probes=probes)  # fmt: skip


class _Head(ErnieMPreTrainedModel):
    base_prefix = "ernie_m."
    n_outputs: int | None = None  # rows of the head's Linear; None -> config.num_labels
    head_params: tuple[str, ...] = ("classifier",)

    @classmethod
    def head_parameter_shapes(cls, config):
        n = cls.n_outputs or config.num_labels
        H = config.hidden_size
        shapes = {}
        for name in cls.head_params:
            shapes[f"{name}.weight"] = (n, H)
            shapes[f"{name}.bias"] = (n,)
        return shapes

    def _head_linear(self, x, name):
        return self.layers.linear(x, **self.params[name])

    def _cross_entropy(self, logits, labels, ignore_index=-100):
        # QUIRK: with every label ignored torch's mean is NaN, Paddle's is 0
        return layers.cross_entropy(logits, labels, ignore_index, 0.0 if self.config.flavor == "paddle" else np.nan)


class ErnieMForSequenceClassification(_Head):
    """logits = classifier(pooler_output): [B, N]. Loss by problem_type as HF computes it."""

    architecture = "ErnieMForSequenceClassification"

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, past_key_values=None, output_attentions=False, output_hidden_states=False,
                labels=None, probes=None) -> SequenceClassifierOutput:  # fmt: skip
        out = self.encode(input_ids, attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
                          inputs_embeds=inputs_embeds, past_key_values=past_key_values,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          probes=probes)  # fmt: skip
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
            return layers.mse(logits, same_shape("labels", labels, logits.shape))
        if problem == "single_label_classification":
            labels = int_labels("labels", labels)
            if labels.size != logits.shape[0]:
                raise ValueError(f"labels must hold one class per sequence ({logits.shape[0]}), got {labels.shape}")
            return self._cross_entropy(logits.reshape(-1, n), labels.reshape(-1))
        return layers.bce_with_logits(logits, same_shape("labels", labels.astype(self.dtype), logits.shape))


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

        out = self.encode(
            flat("input_ids", input_ids), attention_mask=flat("attention_mask", attention_mask),
            position_ids=flat("position_ids", position_ids), head_mask=head_mask,
            inputs_embeds=flat("inputs_embeds", inputs_embeds, (self.config.hidden_size,)),
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, probes=probes,
        )  # fmt: skip
        logits = self._head_linear(out.pooler_output, "classifier").reshape(B, C)  # [B*C, 1] -> [B, C]
        if probes is not None:  # the encoder's probes are those of the flattened [B*C, L] batch
            probes["head.mc.logits"] = logits
        loss = None
        if labels is not None:
            labels = int_labels("labels", labels).reshape(-1)
            loss = self._cross_entropy(logits, labels)
        return MultipleChoiceModelOutput(loss, logits, out.hidden_states, out.attentions)


class ErnieMForTokenClassification(_Head):
    """logits = classifier(last_hidden_state): [B, L, N]. No pooler (HF add_pooling_layer=False)."""

    architecture = "ErnieMForTokenClassification"
    has_pooler = False

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, head_mask=None,
                inputs_embeds=None, past_key_values=None, output_attentions=False, output_hidden_states=False,
                labels=None, probes=None) -> TokenClassifierOutput:  # fmt: skip
        out = self.encode(input_ids, attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
                          inputs_embeds=inputs_embeds, past_key_values=past_key_values,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          probes=probes)  # fmt: skip
        logits = self._head_linear(out.last_hidden_state, "classifier")  # [B, L, H] -> [B, L, N]
        if probes is not None:
            probes["head.token_cls.logits"] = logits
        loss = None
        if labels is not None:
            labels = int_labels("labels", labels)
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
        out = self.encode(input_ids, attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
                          inputs_embeds=inputs_embeds, past_key_values=past_key_values,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          probes=probes)  # fmt: skip
        logits = self._head_linear(out.last_hidden_state, "qa_outputs")  # [B, L, H] -> [B, L, 2]
        start_logits, end_logits = logits[..., 0], logits[..., 1]  # [B, L] each
        if probes is not None:
            probes.update({"head.qa.start_logits": start_logits, "head.qa.end_logits": end_logits})
        loss = None
        if start_positions is not None and end_positions is not None:
            L = start_logits.shape[1]
            # HF: squeeze a trailing axis, clamp to [0, L], and ignore index L (positions past the input)
            s = np.clip(squeeze_last(int_labels("start_positions", start_positions)), 0, L)
            e = np.clip(squeeze_last(int_labels("end_positions", end_positions)), 0, L)
            start_loss = self._cross_entropy(start_logits, s, ignore_index=L)
            end_loss = self._cross_entropy(end_logits, e, ignore_index=L)
            loss = (start_loss + end_loss) / self.dtype.type(2)  # NumPy 1.x makes float32 / 2 float64
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
        out = self.encode(input_ids, attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
                          inputs_embeds=inputs_embeds, past_key_values=past_key_values,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          probes=probes)  # fmt: skip
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
            s = np.clip(squeeze_last(np.asarray(start_positions)), 0, L).astype(self.dtype)
            e = np.clip(squeeze_last(np.asarray(end_positions)), 0, L).astype(self.dtype)
            s, e = (same_shape(n, t, start_logits.shape) for n, t in (("start_positions", s), ("end_positions", e)))
            start_loss, end_loss = layers.bce_with_logits(start_logits, s), layers.bce_with_logits(end_logits, e)
            loss = (start_loss + end_loss) / self.dtype.type(2)  # float32 on NumPy 1.x too
        return InformationExtractionOutput(
            loss, start_logits, end_logits, out.hidden_states, out.attentions,
            start_prob=expit(start_logits), end_prob=expit(end_logits),
        )  # fmt: skip


MODEL_CLASSES = {
    cls.architecture: cls
    for cls in (ErnieMModel, ErnieMForSequenceClassification, ErnieMForMultipleChoice,
                ErnieMForTokenClassification, ErnieMForQuestionAnswering, ErnieMForInformationExtraction)
}  # fmt: skip
