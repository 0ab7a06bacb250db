"""The one switch: a backend name -> the file of layer functions the model composes.

``"numpy"`` is ``layers.py``, the textbook NumPy layers; ``"numba"`` is ``fused.py``, the same functions with
the same signatures on the fused Numba kernels in ``kernels/``. The model resolves its layer set once, when it
is built, and its forward pass calls ``self.layers.encoder_layer(...)`` whichever it is. The tests hold both
to the same goldens.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

BACKENDS = ("numba", "numpy")


def layer_set(backend: str) -> ModuleType:
    """The module of layer functions (``embeddings``, ``encoder_layer``, ``pooler``, ``linear``) of a backend.
    Choosing "numba" imports Numba and the kernels; it compiles nothing."""
    if backend == "numpy":
        from . import layers

        return layers
    if backend == "numba":
        from . import fused

        return fused
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def set_num_threads(n: int) -> None:
    """Threads the Numba kernels use in the calling thread (at most NUMBA_NUM_THREADS, fixed at start-up;
    Numba's setting is per Python thread). The numpy backend's BLAS threads follow OPENBLAS_NUM_THREADS."""
    from .kernels import settings

    settings.set_num_threads(n)


def warmup(dtypes=(np.float32,)) -> None:
    """Compile (or load from the cache) every kernel a forward pass may use, for each dtype (fused.warmup)."""
    from . import fused

    fused.warmup(dtypes)
