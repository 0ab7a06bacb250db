"""Numba settings in one place: compile flags, the threading layer, the cache directory, the thread count.

Importing this module compiles nothing. It decides, before Numba starts its thread pool:

* the threading layer: a thread-safe one (``omp``, else ``tbb``) so that several Python threads may call the
  kernels at once. Numba's default ``workqueue`` layer aborts the process on concurrent use ("Concurrent access
  has been detected"); when no thread-safe layer can be loaded, ``kernel_lock`` serialises the calls instead.
  ``NUMBA_THREADING_LAYER`` set by the user wins.
* the cache directory: compiled kernels are cached beside the source when that directory is writable, else in
  a user cache directory (``$XDG_CACHE_HOME/erniem-np/numba``, ``~/.cache/...`` or the temp dir), so a
  read-only install still caches. ``NUMBA_CACHE_DIR`` set by the user wins.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))


def _user_cache_dir() -> str:
    for base in (os.environ.get("XDG_CACHE_HOME"), os.path.join(os.path.expanduser("~"), ".cache"),
                 tempfile.gettempdir()):  # fmt: skip
        if not base:
            continue
        path = os.path.join(base, "erniem-np", "numba")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    return tempfile.mkdtemp(prefix="erniem-np-numba-")


def _choose_cache_dir() -> str | None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None  # the user's choice
    pycache = os.path.join(_HERE, "__pycache__")
    try:
        os.makedirs(pycache, exist_ok=True)
        writable = os.access(pycache, os.W_OK)
    except OSError:
        writable = False
    return None if writable else _user_cache_dir()


def _layer_loadable(name: str) -> bool:
    try:
        if name == "omp":
            from numba.np.ufunc import omppool  # noqa: F401
        elif name == "tbb":
            from numba.np.ufunc import tbbpool  # noqa: F401
        else:
            return False
    except (ImportError, OSError):
        return False
    return True


_cache_dir = _choose_cache_dir()
if _cache_dir is not None:
    if "numba" in sys.modules:
        import numba.core.config as _cfg

        _cfg.CACHE_DIR = _cache_dir
    else:
        os.environ["NUMBA_CACHE_DIR"] = _cache_dir

import numba  # noqa: E402

if os.environ.get("NUMBA_THREADING_LAYER"):
    THREADING_LAYER = os.environ["NUMBA_THREADING_LAYER"]
else:
    THREADING_LAYER = next((n for n in ("omp", "tbb") if _layer_loadable(n)), "workqueue")
    numba.config.THREADING_LAYER = THREADING_LAYER
THREAD_SAFE = THREADING_LAYER in ("omp", "tbb", "threadsafe", "safe")
_lock = threading.RLock()  # re-entrant: linear() calls the locked GELU


def locked(fn):
    """Decorator for the public kernel wrappers: hold ``kernel_lock`` while the kernel runs."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with kernel_lock():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def kernel_lock():
    """Serialise parallel kernels when the threading layer is not thread-safe (workqueue)."""
    if THREAD_SAFE:
        yield
    else:
        with _lock:
            yield


# Compile flags. fastmath is limited to the flags that leave NaN and inf semantics intact: reassociation (so
# reductions vectorise), contraction into FMA, and no signed zeros. error_model="numpy" makes a division by
# zero give inf/nan instead of raising, and removes the checks that block vectorisation.
FASTMATH = {"reassoc", "contract", "nsz"}
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
PARALLEL_JIT = dict(JIT, parallel=True)


# Below this much work a parallel launch costs more than it saves (waking the pool is ~10-50 us, more on a
# busy machine), so each parallel kernel also has a serial twin compiled from the same source.
SERIAL_BELOW_FLOPS = 4_000_000


def serial_twin(dispatcher, name: str):
    """The same kernel source compiled without ``parallel`` (prange runs as range), under its own name so
    its cache entries never mix with the parallel one's."""
    import types

    f = getattr(dispatcher, "py_func", dispatcher)  # NUMBA_DISABLE_JIT=1: njit returns the function
    twin = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    twin.__qualname__ = name
    twin.__doc__ = f.__doc__
    return numba.njit(**JIT)(twin)


def set_num_threads(n: int) -> None:
    """Threads the kernels use (at most NUMBA_NUM_THREADS, fixed when Numba starts)."""
    limit = numba.config.NUMBA_NUM_THREADS
    if not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"the thread count must be an integer in [1, {limit}] (NUMBA_NUM_THREADS), got {n!r}")
    numba.set_num_threads(n)


def get_num_threads() -> int:
    return numba.get_num_threads()
