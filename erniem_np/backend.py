"""The one switch: a backend name -> the file of layer functions the model composes.

``"numpy"`` is ``layers.py``, the textbook NumPy layers; ``"numba"`` is ``fused.py``, the same functions with
the same signatures on the fused Numba kernels in ``kernels/``; ``"int8"`` is ``quantized.py``, ``fused.py``
with int8 Linear layers and an int8 word table. The model resolves its layer set once, when it is built, and
calls ``self.layers.load_parameters(...)`` to store its weights the way that set takes them and
``self.layers.encoder_layer(...)`` in its forward pass, whichever it is. The tests hold the float32 sets to
the same goldens, and the int8 set to the float32 ones within the int8 tolerances.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

BACKENDS = ("numba", "numpy", "int8")
FLOAT_BACKENDS = ("numba", "numpy")  # the two that compute the references' float numbers (int8 approximates them)


def layer_set(backend: str) -> ModuleType:
    """The module of layer functions (``load_parameters``, ``embeddings``, ``encoder_layer``, ``pooler``,
    ``linear``) of a backend. Choosing "numba" or "int8" imports Numba and the kernels; it compiles nothing."""
    if backend == "numpy":
        from . import layers

        return layers
    if backend == "numba":
        from . import fused

        return fused
    if backend == "int8":
        from . import quantized

        return quantized
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def set_num_threads(n: int) -> None:
    """Threads the Numba kernels use in the calling thread (at most NUMBA_NUM_THREADS, fixed at start-up;
    Numba's setting is per Python thread). The numpy backend's BLAS threads follow OPENBLAS_NUM_THREADS."""
    from .kernels import settings

    settings.set_num_threads(n)


def warmup(dtypes=(np.float32,), int8: bool = False) -> None:
    """Compile (or load from the cache) every kernel a forward pass may use, for each dtype (fused.warmup);
    with ``int8``, the int8 layers' kernels too (quantized.warmup)."""
    from . import fused

    fused.warmup(dtypes)
    if int8:
        from . import quantized

        quantized.warmup()
