"""The checkpoints shipped inside the package, by directory: use them wherever a checkpoint path is taken.

``LANGID_MODEL``: a small trained ErnieM sequence classifier (31 languages, 2 M parameters) with its tokenizer
and the logits HF transformers computed for the demo's sentences; ``erniem-np demo`` runs it.
``TINY_MODEL``: a tiny ErnieM with random weights and no tokenizer, for trying the API on ids.
"""

from __future__ import annotations

import os

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
LANGID_MODEL = os.path.join(DATA_DIR, "langid")
TINY_MODEL = os.path.join(DATA_DIR, "tiny-random")
