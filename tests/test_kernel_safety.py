"""The kernels on a shared machine and in other people's programs: a private compile cache that no one else can
plant code in, ``fork`` children that compute instead of hanging, and Numba's global settings left as the user's
program set them. Each scenario runs in a fresh interpreter, since these are decided when Numba starts."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import textwrap

import pytest
from erniem_np.kernels import settings as ksettings

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
pytestmark = pytest.mark.skipif(NO_JIT, reason="the cache and the thread pool exist only with the JIT")

# A small GEMM (its serial twin only: a few seconds to compile) whose result the script prints.
SMALL_CALL = """
import numpy as np
from erniem_np.kernels import gemm, settings
x = np.arange(12, dtype=np.float32).reshape(3, 4)
print("RESULT", float(gemm.linear(x, x, None).sum()), "CACHE", settings.CACHE_DIR)
"""
_X = [list(range(4 * i, 4 * i + 4)) for i in range(3)]
SMALL_RESULT = float(sum(sum(a * b for a, b in zip(r, c, strict=True)) for r in _X for c in _X))  # x @ x.T, summed


def _run(code, tmp_path, timeout=300, **env):
    """Run ``code`` in a fresh interpreter with the cache variables cleared, then ``env`` applied."""
    full = {k: v for k, v in os.environ.items() if k not in ("ERNIEM_NP_CACHE_DIR", "XDG_CACHE_HOME", "NUMBA_CACHE_DIR")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, cwd=tmp_path, text=True,
                          capture_output=True, timeout=timeout)  # fmt: skip


def _result(r):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    line = next(line for line in r.stdout.splitlines() if line.startswith("RESULT"))
    return float(line.split()[1]), line.split()[3]


def _cache_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if f.endswith((".nbi", ".nbc")))  # fmt: skip


# ------------------------------------------------------------------------------------------------ _private_dir
def test_private_dir_creates_0700_and_accepts_it(tmp_path):
    path = tmp_path / "a" / "b" / "numba"
    assert ksettings._private_dir(str(path), create=True) is None
    for d in (tmp_path / "a", tmp_path / "a" / "b", path):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


@pytest.mark.parametrize("case", ["world-writable", "group-writable", "symlink", "file", "parent writable",
                                  "parent sticky"])  # fmt: skip
def test_private_dir_refuses_what_others_could_write(tmp_path, case):
    path = tmp_path / "cache"
    parent = tmp_path
    if case in ("world-writable", "group-writable"):
        path.mkdir(mode=0o700)
        os.chmod(path, 0o777 if case == "world-writable" else 0o770)
    elif case == "symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "real")
    elif case == "file":
        path.write_text("")
    else:
        parent = tmp_path / "shared"
        parent.mkdir()
        os.chmod(parent, 0o777 | (stat.S_ISVTX if case == "parent sticky" else 0))
        path = parent / "cache"
    why = ksettings._private_dir(str(path), create=True)
    if case == "parent sticky":  # /tmp's case: others may write there but not replace our directory
        assert why is None
    else:
        assert why is not None and str(path if case != "parent writable" else parent) in why, why


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory of another user needs root")
def test_private_dir_refuses_another_users_directory(tmp_path):
    os.chmod(tmp_path, 0o755)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    assert "belongs to another user" in ksettings._private_dir(str(theirs), create=True)
    assert "belongs to another user" in ksettings._private_dir(str(theirs / "numba"), create=True)


# ------------------------------------------------------------------------------------------------ the cache
def test_cache_is_private_and_outside_the_package(tmp_path):
    """With XDG_CACHE_HOME set, the kernels cache under it, 0700, and nothing lands beside the sources."""
    import erniem_np.kernels as kernels

    package = kernels.__path__[0]
    before = _cache_files(package)
    xdg = tmp_path / "xdg"
    value, cache = _result(_run(SMALL_CALL, tmp_path, XDG_CACHE_HOME=str(xdg)))
    assert value == SMALL_RESULT
    assert cache == str(xdg / "erniem-np" / "numba")
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert any(f.endswith(".nbi") for f in _cache_files(cache)), "nothing was cached"
    assert _cache_files(package) == before, "compiled kernels were written into the package"
    value, _ = _result(_run(SMALL_CALL, tmp_path, XDG_CACHE_HOME=str(xdg)))  # loaded from the cache
    assert value == SMALL_RESULT


def test_no_home_falls_back_to_a_private_temp_dir(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    os.chmod(temp, 0o1777)
    value, cache = _result(_run(SMALL_CALL, tmp_path, HOME="/nonexistent", TMPDIR=str(temp)))
    assert value == SMALL_RESULT
    assert cache == str(temp / f"erniem-np-{os.getuid()}" / "numba")


def test_cache_can_be_turned_off(tmp_path):
    r = _run(SMALL_CALL, tmp_path, ERNIEM_NP_CACHE_DIR="")
    assert _result(r) == (SMALL_RESULT, "None")
    assert "CacheDirWarning" not in r.stderr


def _planted_cache(tmp_path):
    """A cache directory filled by a real run, then every index file replaced by a pickle that, when loaded,
    creates the file ``marker``: what another local user could plant in a shared cache."""
    planted = tmp_path / "planted"
    _result(_run(SMALL_CALL, tmp_path, ERNIEM_NP_CACHE_DIR=str(planted)))
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    index_files = [f for f in _cache_files(planted) if f.endswith(".nbi")]
    assert index_files
    for f in index_files:
        with open(planted / f, "wb") as out:
            pickle.dump(Payload(), out)
    return planted, marker


def test_a_cache_others_can_write_is_never_read(tmp_path):
    """The attack: a cache directory another user can write to, with index pickles that run their code. The
    directory is refused with one warning, the kernels compile uncached and compute, and the payload never
    runs. The control shows the payload is live: the same files in a directory that passes the check run it."""
    planted, marker = _planted_cache(tmp_path)
    for d, _, _ in os.walk(planted):
        os.chmod(d, 0o777)
    r = _run(SMALL_CALL, tmp_path, ERNIEM_NP_CACHE_DIR=str(planted))
    assert _result(r) == (SMALL_RESULT, "None")
    assert r.stderr.count("CacheDirWarning") == 1 and "writable by other users" in r.stderr, r.stderr
    assert not marker.exists(), "a planted pickle ran"

    for d, _, _ in os.walk(planted):  # control: the check passes, Numba reads the index, the pickle runs
        os.chmod(d, 0o700)
    _run(SMALL_CALL, tmp_path, ERNIEM_NP_CACHE_DIR=str(planted))
    assert marker.exists(), "the planted pickle is not live: this test proves nothing"


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory of another user needs root")
def test_a_temp_dir_taken_by_another_user_is_refused(tmp_path):
    """The shared-machine case: no usable home, and another user made our temp-dir cache folder first."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    os.chmod(temp, 0o1777)
    os.chmod(tmp_path, 0o755)
    theirs = temp / f"erniem-np-{os.getuid()}"
    theirs.mkdir(mode=0o777)
    os.chown(theirs, 65534, 65534)
    r = _run(SMALL_CALL, tmp_path, HOME="/nonexistent", TMPDIR=str(temp))
    assert _result(r) == (SMALL_RESULT, "None")
    assert "belongs to another user" in r.stderr and r.stderr.count("CacheDirWarning") == 1, r.stderr
    assert _cache_files(theirs) == []


# ------------------------------------------------------------------------------------------------ the user's Numba
def test_the_users_numba_settings_are_left_alone(tmp_path):
    """erniem-np runs its parallel kernels without changing Numba's threading layer or cache directory; the
    user's own ``cache=True`` function caches where Numba puts it (beside its source), not in erniem-np's."""
    (tmp_path / "usermod.py").write_text("import numba\n\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n")
    code = """
    import os, sys
    import numba
    sys.path.insert(0, os.getcwd())
    before = (numba.config.THREADING_LAYER, numba.config.CACHE_DIR, os.environ.get("NUMBA_CACHE_DIR"))
    import numpy as np
    from erniem_np.kernels import gemm, settings
    gemm.linear(np.ones((64, 160), np.float32), np.ones((200, 160), np.float32), None)  # the parallel GEMM
    import usermod
    usermod.f(1)
    after = (numba.config.THREADING_LAYER, numba.config.CACHE_DIR, os.environ.get("NUMBA_CACHE_DIR"))
    assert before == after, (before, after)
    print("RESULT", 1, "CACHE", settings.CACHE_DIR)
    """
    xdg = tmp_path / "xdg"
    _result(_run(code, tmp_path, XDG_CACHE_HOME=str(xdg)))
    assert any(f.startswith("usermod.f") for f in os.listdir(tmp_path / "__pycache__")), "not cached in-tree"
    assert not [f for f in _cache_files(xdg) if "usermod" in f]


def test_a_workqueue_program_may_call_from_threads(tmp_path):
    """The user's program already runs Numba's workqueue layer (not thread-safe: concurrent use aborts the
    process); erniem-np sees it and serialises its parallel calls: four threads get the single-thread result."""
    code = """
    import concurrent.futures
    import numba, numpy as np
    numba.config.THREADING_LAYER = "workqueue"

    @numba.njit(parallel=True)
    def total(x):
        t = 0.0
        for i in numba.prange(x.size):
            t += x[i]
        return t

    total(np.ones(100))
    assert numba.threading_layer() == "workqueue"
    from erniem_np.kernels import gemm, settings
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((96, 160), dtype=np.float32), rng.standard_normal((200, 160), dtype=np.float32)
    want = gemm.linear(x, w, None)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: gemm.linear(x, w, None), range(32)))
    assert all((g == want).all() for g in got)
    assert numba.config.THREADING_LAYER == "workqueue" and settings._thread_safe is False
    print("RESULT", 1, "CACHE", settings.CACHE_DIR)
    """
    _result(_run(code, tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg")))


# ------------------------------------------------------------------------------------------------ fork
FORK_SCRIPT = """
import multiprocessing, sys
import numpy as np
from erniem_np.kernels import gemm, settings

rng = np.random.default_rng(0)
x, w = rng.standard_normal((96, 160), dtype=np.float32), rng.standard_normal((200, 160), dtype=np.float32)
want = gemm.linear(x, w, None)  # the parallel GEMM: the parent's thread pool starts here

def child(_):
    return settings.threading_layer(), settings.parallel_allowed(), gemm.linear(x, w, None)

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(child, range(4))
    for layer, allowed, got in results:
        assert layer == settings.threading_layer(), layer
        assert allowed == (not settings._gnu_omp_running()), (layer, allowed)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    print("RESULT", 1, "CACHE", settings.CACHE_DIR, "LAYER", settings.threading_layer())
"""


def test_fork_children_compute_after_the_parent_ran_parallel_kernels(tmp_path):
    """``multiprocessing.Pool`` with ``fork`` after the parent ran a parallel kernel: with GNU OpenMP a child
    that entered the pool would be killed ("fork() called from a process already using GNU OpenMP") and the
    map would never return; the children run the serial twins and give the parent's result."""
    script = tmp_path / "fork_pool.py"
    script.write_text(FORK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "ERNIEM_NP_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    r = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=240)  # fmt: skip
    _result(r)
    assert "Terminating" not in r.stderr, r.stderr


def test_parallel_allowed_in_the_parent():
    assert ksettings.parallel_allowed()
