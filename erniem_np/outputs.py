"""The output classes of the model and its heads: HuggingFace's names and fields (transformers 4.46.3).

Dimension legend: B batch, C choices, L sequence, Lk keys (cached + new), H hidden, nh heads, d head size,
N labels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

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
