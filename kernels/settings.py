"""Numba settings in one place: compile flags, the kernel cache, the choice of parallel or serial kernel, the
thread count.

Importing this module compiles nothing and changes none of Numba's global settings: the threading layer, the
cache directory and every other ``numba.config`` value stay as the user's program left them; the environment
is left as it was found.

* **The kernel cache is private.** Compiled kernels are cached in a directory of the current user's alone
  (``$ERNIEM_NP_CACHE_DIR``, else ``$XDG_CACHE_HOME/erniem-np/numba``, else ``~/.cache/erniem-np/numba``, else
  ``<temp dir>/erniem-np-<uid>/numba``), never beside the installed sources and never in a shared folder. Numba
  unpickles the cache's index files, so a directory anyone else could write to would let them run code as
  us: a directory is used only when it and every directory above it pass ``_private_dir`` (owned by us or by
  root, not writable by others unless sticky; the cache directory itself created 0700). When none passes,
  the kernels run uncached, after one warning. ``ERNIEM_NP_CACHE_DIR=`` (empty) turns the cache off.
* **Parallel kernels only where they are safe.** Each kernel has a serial twin compiled from the same source.
  ``run`` picks the parallel one above ``SERIAL_BELOW_FLOPS`` unless this process is a ``fork`` child of a
  process whose GNU OpenMP thread pool had started (GNU OpenMP cannot run in such a child: Numba kills it);
  there the twins run, single-threaded and correct. ``spawn`` and ``forkserver`` children run in parallel.
* **The pool's waiting threads spin 2**20 times before they sleep** (``POOL_SPIN_COUNT``), as ONNX Runtime's
  do, where GNU OpenMP's default is 300,000: set as ``GOMP_SPINCOUNT`` just while ``_launch_pool`` starts
  Numba's pool, and only when the user has set neither ``GOMP_SPINCOUNT`` nor ``OMP_WAIT_POLICY``. It matters
  on virtual machines: with the default, a short forward pass after a pause ran at about half speed on the
  2-core VM of docs/performance.md (slower than one thread), and with 2**20 it did not
  (``python scripts/bench/idle_latency.py`` compares the two). A waiting thread then polls for 26 ms of CPU
  (7.6 ms with the default) after the last kernel before it sleeps; ``OMP_WAIT_POLICY=passive`` stops that
  (and costs the latency back).
  GNU OpenMP reads the variable once, when it loads: a process that loaded it before erniem-np started the
  pool (the first kernel call, ``get_num_threads`` or ``set_num_threads``) keeps the setting it had. Numba
  starts its pool from ``numba.get_num_threads`` and ``numba.set_num_threads`` too, so the package calls
  this module's two instead.
* **Several Python threads may call the kernels at once.** Numba's ``omp`` and ``tbb`` layers are
  thread-safe; its ``workqueue`` layer aborts the process on concurrent use, so when Numba runs ``workqueue``
  (the user chose it, or no other layer loads) ``run`` holds a lock around each parallel call.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
import threading
import warnings

import numba

_HERE = os.path.dirname(os.path.abspath(__file__))

# ------------------------------------------------------------------------------------------------ compile flags
# fastmath is limited to the flags that leave NaN and inf semantics intact: reassociation (so reductions
# vectorise), contraction into FMA, and no signed zeros. error_model="numpy" makes a division by zero give
# inf/nan instead of raising, and removes the checks that block vectorisation. Caching is not a flag here:
# ``jit`` attaches the private cache.
FASTMATH = {"reassoc", "contract", "nsz"}
JIT = dict(nogil=True, fastmath=FASTMATH, error_model="numpy")
PARALLEL_JIT = dict(JIT, parallel=True)


# ------------------------------------------------------------------------------------------------ the CPU
def cpu_features() -> dict[str, bool]:
    """The features of the CPU Numba compiles for: the host's, or ``NUMBA_CPU_FEATURES`` when set (a list like
    ``+avx2,+fma,-avx512f``). A ``NUMBA_CPU_NAME`` other than the host's without ``NUMBA_CPU_FEATURES`` names a
    CPU whose features are not known here: none are assumed. The kernels choose their vector width and
    instructions from this, and Numba's cache keys every compiled kernel by the same CPU name and features, so
    a kernel compiled for one CPU is never loaded for another."""
    import llvmlite.binding as llvm

    if numba.config.CPU_FEATURES:
        return {f[1:]: f[0] == "+" for f in numba.config.CPU_FEATURES.split(",") if f[:1] in "+-" and len(f) > 1}
    if numba.config.CPU_NAME not in (None, "host"):
        return {}
    return dict(llvm.get_host_cpu_features())


# ------------------------------------------------------------------------------------------------ the cache
class CacheDirWarning(UserWarning):
    """The kernels run uncached: no private cache directory could be made."""


def _private_dir(path: str, create: bool) -> str | None:
    """Why ``path`` is unfit for the cache (a sentence), or None when it is fit.

    Fit: a real directory (not a symlink) owned by the current user and writable by nobody else, below
    ancestors that are each owned by the user or root and, where others may write to them, sticky (so no one
    else can rename our directory away and put theirs in its place). With ``create``, the missing
    directories are made first, each 0700.
    """
    path = os.path.abspath(path)
    uid = os.getuid()
    if create:
        missing = []
        p = path
        while not os.path.lexists(p) and p != os.path.dirname(p):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            except OSError as e:
                return f"{d} cannot be created ({e.strerror})"
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"{path} cannot be read ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != uid:
        return f"{path} belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    parent = os.path.realpath(os.path.dirname(path))
    while True:  # the ancestors, from the nearest up, symbolic links resolved
        try:
            st = os.stat(parent)
        except OSError as e:
            return f"{parent} cannot be read ({e.strerror})"
        if st.st_uid not in (uid, 0):
            return f"{parent} belongs to another user (uid {st.st_uid})"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return f"{parent} is writable by other users and not sticky"
        if parent == os.path.dirname(parent):
            return None
        parent = os.path.dirname(parent)


def _cache_candidates() -> list[str]:
    """Where the cache may go, in order of preference (``ERNIEM_NP_CACHE_DIR`` alone when it is set)."""
    if "ERNIEM_NP_CACHE_DIR" in os.environ:
        chosen = os.environ["ERNIEM_NP_CACHE_DIR"]
        return [os.path.abspath(chosen)] if chosen else []
    found = []
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        found.append(os.path.join(xdg, "erniem-np", "numba"))
    home = os.path.expanduser("~")
    if os.path.isabs(home) and os.path.isdir(home):
        found.append(os.path.join(home, ".cache", "erniem-np", "numba"))
    found.append(os.path.join(tempfile.gettempdir(), f"erniem-np-{os.getuid()}", "numba"))
    return found


def choose_cache_dir() -> tuple[str | None, list[str]]:
    """The private cache directory (None: run uncached) and, for each candidate refused, why."""
    refused = []
    for path in _cache_candidates():
        why = _private_dir(path, create=True)
        if why is None:
            return path, refused
        refused.append(why)
    return None, refused


CACHE_DIR, _refused = choose_cache_dir()
if CACHE_DIR is None and _refused:
    warnings.warn("erniem-np: compiled kernels will not be cached (each process compiles them anew, 20-30 s): "
                  + "; ".join(_refused) + ". Set ERNIEM_NP_CACHE_DIR to a directory of your own.",
                  CacheDirWarning, stacklevel=2)  # fmt: skip


def _kernels_stamp() -> bytes:
    """A hash of every kernel source and Numba's version: a cached kernel is reused only while all of them are
    unchanged (a kernel inlines helpers from the other kernel files, which Numba's per-file stamp misses)."""
    h = hashlib.sha256(numba.__version__.encode())
    for name in sorted(os.listdir(_HERE)):
        if name.endswith(".py"):
            with open(os.path.join(_HERE, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.digest()


def _private_cache_class():
    """A Numba FunctionCache that stores in ``CACHE_DIR`` only, whatever Numba's own locator settings say."""
    from numba.core import caching

    stamp = _kernels_stamp()

    class Locator(caching._CacheLocator):
        def __init__(self, py_func, py_file):
            self._lineno = py_func.__code__.co_firstlineno
            self._path = os.path.join(CACHE_DIR, self.get_suitable_cache_subpath(py_file))

        def ensure_cache_path(self):
            os.makedirs(self._path, mode=0o700, exist_ok=True)

        def get_cache_path(self):
            return self._path

        def get_source_stamp(self):
            return stamp

        def get_disambiguator(self):
            return str(self._lineno)

    class Impl(caching.CompileResultCacheImpl):
        def __init__(self, py_func):  # as Numba's, with our locator in place of its list
            self._lineno = py_func.__code__.co_firstlineno
            self._locator = Locator(py_func, os.path.abspath(py_func.__code__.co_filename))
            modname = os.path.splitext(os.path.basename(py_func.__code__.co_filename))[0]
            abiflags = getattr(sys, "abiflags", "")
            self._filename_base = self.get_filename_base(f"{modname}.{py_func.__qualname__}", abiflags)

    class PrivateCache(caching.FunctionCache):
        _impl_class = Impl

    return PrivateCache


_PrivateCache = None
if CACHE_DIR is not None and not numba.config.DISABLE_JIT:
    try:
        _PrivateCache = _private_cache_class()
    except (ImportError, AttributeError) as e:  # a Numba whose caching internals differ
        warnings.warn(f"erniem-np: compiled kernels will not be cached: this Numba has no {e.name!r}",
                      CacheDirWarning, stacklevel=2)  # fmt: skip


def jit(fn=None, *, parallel=False):
    """``numba.njit`` with the package's flags and the private cache: ``@jit`` or ``@jit(parallel=True)``."""
    if fn is None:
        return lambda f: jit(f, parallel=parallel)
    dispatcher = numba.njit(**(PARALLEL_JIT if parallel else JIT))(fn)
    if _PrivateCache is not None and hasattr(dispatcher, "py_func"):  # not under NUMBA_DISABLE_JIT=1
        dispatcher._cache = _PrivateCache(dispatcher.py_func)
    return dispatcher


def serial_twin(dispatcher, name: str):
    """The same kernel source compiled without ``parallel`` (prange runs as range), under its own name so
    its cache entries never mix with the parallel one's."""
    import types

    f = getattr(dispatcher, "py_func", dispatcher)  # NUMBA_DISABLE_JIT=1: njit returns the function
    twin = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    twin.__qualname__ = name
    twin.__doc__ = f.__doc__
    return jit(twin)


# ------------------------------------------------------------------------------------------------ which kernel
# Below this much work a parallel launch costs more than it saves, so each parallel kernel also has a serial
# twin compiled from the same source. Inside a forward pass the pool is awake (one kernel follows another) and
# a launch costs a few us. On 2 Zen 4 cores the parallel kernels win from about 2M flops of GEMM (a 4-token
# GEMM of 768 x 768; at 1 token the float32 GEMM is a toss-up: its time is packing the weight), LayerNorm from
# 64-128 rows of 768 (at 20 flops a value), attention from a few tokens; they lose on a 3-label head
# (NUMBA_NUM_THREADS=2 python scripts/bench/bench_kernels.py --only crossover). Set between those. A pool that
# has gone to sleep takes 10-50 us to wake, once per forward pass.
SERIAL_BELOW_FLOPS = 1_500_000

_lock = threading.Lock()
_thread_safe: bool | None = None  # whether the running threading layer is; known once the pool has started
_forked_from_gnu_omp = False  # this process is a fork child of one whose GNU OpenMP pool had started


def threading_layer() -> str | None:
    """The threading layer Numba runs, or None before its pool has started."""
    from numba.np.ufunc import parallel

    return parallel._threading_layer if parallel._is_initialized else None


def _gnu_omp_running() -> bool:
    if threading_layer() != "omp":
        return False
    try:
        from numba.np.ufunc import omppool

        return getattr(omppool, "openmp_vendor", "GNU") == "GNU"
    except ImportError:
        return True


def _after_fork_in_child() -> None:
    global _forked_from_gnu_omp
    try:
        _forked_from_gnu_omp = _forked_from_gnu_omp or _gnu_omp_running()
    except Exception:  # noqa: BLE001 - an at-fork hook must not raise; serial is always safe
        _forked_from_gnu_omp = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_allowed() -> bool:
    """Whether the parallel kernels may run in this process (not in a fork child of a GNU OpenMP process)."""
    return not _forked_from_gnu_omp


# How many times a thread of GNU OpenMP's pool polls for work before it sleeps: ONNX Runtime's pool spins
# 2**20 times. See the module docstring for why, and ``_launch_pool`` for when it applies.
POOL_SPIN_COUNT = 1 << 20
_SPIN_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")  # either one set by the user: theirs stands
_launch_lock = threading.Lock()


def _launch_pool() -> None:
    """Start Numba's thread pool with the layer the user's settings pick. GNU OpenMP, if that layer loads it
    now, reads ``GOMP_SPINCOUNT`` = ``POOL_SPIN_COUNT`` from the environment, which is set only for the
    launch and only when the user has set neither spin variable."""
    from numba.np.ufunc import parallel

    if parallel._is_initialized:
        return
    with _launch_lock:
        if parallel._is_initialized:
            return
        if any(v in os.environ for v in _SPIN_VARIABLES):
            parallel._launch_threads()
            return
        os.environ["GOMP_SPINCOUNT"] = str(POOL_SPIN_COUNT)
        try:
            parallel._launch_threads()
        finally:
            del os.environ["GOMP_SPINCOUNT"]


def _layer_is_thread_safe() -> bool:
    """Start Numba's pool (``_launch_pool``) and say whether the layer it runs is thread-safe."""
    global _thread_safe
    if _thread_safe is None:
        if numba.config.DISABLE_JIT:
            return True  # prange is range: no pool
        _launch_pool()
        _thread_safe = threading_layer() in ("omp", "tbb")
    return _thread_safe


def run(parallel_kernel, serial_kernel, flops, *args):
    """Run ``parallel_kernel(*args)`` when ``flops`` pays for a parallel launch and that is safe here, else
    its serial twin. The one place the package chooses between them. On a layer that is not thread-safe
    (``workqueue``) a lock is held around each parallel call."""
    if flops >= SERIAL_BELOW_FLOPS and parallel_allowed():
        if _layer_is_thread_safe():
            return parallel_kernel(*args)
        with _lock:
            return parallel_kernel(*args)
    return serial_kernel(*args)


# ------------------------------------------------------------------------------------------------ threads
def set_num_threads(n: int) -> None:
    """Threads the kernels use (at most NUMBA_NUM_THREADS, fixed when Numba starts)."""
    limit = numba.config.NUMBA_NUM_THREADS
    if not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"the thread count must be an integer in [1, {limit}] (NUMBA_NUM_THREADS), got {n!r}")
    _launch_pool()
    numba.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the kernels use now (starting the pool, in ``_launch_pool``, if it has not started)."""
    _launch_pool()
    return numba.get_num_threads()
