"""erniem-np: ErnieM (ERNIE-M) in plain NumPy, faithful to HF transformers 4.46.3 and PaddleNLP 2.8.1."""

from .backend import set_num_threads, warmup
from .config import ErnieMConfig
from .model import (
    ErnieMForInformationExtraction,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)
from .tokenizer import ErnieMTokenizer

__version__ = "0.1.0"

__all__ = [
    "ErnieMConfig",
    "ErnieMModel",
    "ErnieMForSequenceClassification",
    "ErnieMForMultipleChoice",
    "ErnieMForTokenClassification",
    "ErnieMForQuestionAnswering",
    "ErnieMForInformationExtraction",
    "ErnieMTokenizer",
    "set_num_threads",
    "warmup",
    "__version__",
]
