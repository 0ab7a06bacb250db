"""Activation functions by the names HF's ``ACT2FN`` accepts (transformers/activations.py), in NumPy.

ErnieM uses ``"gelu"``, the exact erf GELU, in both references; a config may name any other, and
``ACTIVATIONS`` computes each as HF does. Inputs and outputs are arrays of any shape, same dtype.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf, expit

def gelu(x):
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)): HF ACT2FN["gelu"] and Paddle F.gelu(approximate=False)."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_python(x):
    return x * 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_new(x):
    """The tanh approximation (GPT-2's); differs from exact GELU by up to ~5e-4."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * np.power(x, 3.0))))


def gelu_fast(x):
    return 0.5 * x * (1.0 + np.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def gelu_pytorch_tanh(x):
    # torch.nn.functional.gelu(approximate="tanh"): kBeta = sqrt(2) * (2 / sqrt(pi)) * 0.5, kKappa = 0.044715
    k_beta = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5
    return 0.5 * x * (1.0 + np.tanh(k_beta * (x + 0.044715 * x * x * x)))


def gelu_10(x):
    return np.clip(gelu(x), -10.0, 10.0)


def laplace(x, mu=0.707107, sigma=0.282095):
    return 0.5 * (1.0 + erf((x - mu) / (sigma * math.sqrt(2.0))))


def mish(x):
    # torch softplus(beta=1, threshold=20) returns x itself above 20
    softplus = np.where(x > 20.0, x, np.logaddexp(x * 0, x))
    return x * np.tanh(softplus)


def relu(x):
    return np.maximum(x, x.dtype.type(0))


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_10": gelu_10,
    "gelu_fast": gelu_fast,
    "gelu_new": gelu_new,
    "gelu_python": gelu_python,
    "gelu_pytorch_tanh": gelu_pytorch_tanh,
    "gelu_accurate": gelu_new,  # AccurateGELUActivation: the same formula as gelu_new
    "laplace": laplace,
    "leaky_relu": lambda x: np.where(x >= 0, x, x * x.dtype.type(0.01)),
    "linear": lambda x: x,
    "mish": mish,
    "quick_gelu": lambda x: x * expit(1.702 * x),
    "relu": relu,
    "relu2": lambda x: np.square(relu(x)),
    "relu6": lambda x: np.clip(x, 0.0, 6.0).astype(x.dtype),
    "sigmoid": expit,
    "silu": lambda x: x * expit(x),
    "swish": lambda x: x * expit(x),
    "tanh": np.tanh,
}
