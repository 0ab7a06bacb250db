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
from .pipelines.choose import Chooser
from .pipelines.classify import Classifier
from .pipelines.encode import Encoder
from .pipelines.extract import Extractor
from .pipelines.qa import QuestionAnswerer
from .pipelines.tag import Tagger
from .tokenizer import ErnieMTokenizer

__version__ = "0.1.0"

__all__ = [
    "Chooser",
    "Classifier",
    "Encoder",
    "ErnieMConfig",
    "ErnieMForInformationExtraction",
    "ErnieMForMultipleChoice",
    "ErnieMForQuestionAnswering",
    "ErnieMForSequenceClassification",
    "ErnieMForTokenClassification",
    "ErnieMModel",
    "ErnieMTokenizer",
    "Extractor",
    "QuestionAnswerer",
    "Tagger",
    "__version__",
    "set_num_threads",
    "warmup",
]
