"""Every tutorial runs, from the repository root, as a plain script: its assertions hold and its figures are written.

A tutorial is a jupytext percent-format ``.py`` file (``tutorials/<NN>_<name>.py``); it writes its figures to
``$TUTORIAL_FIGURES``. The figures a tutorial promises are the ``FIGURES / "....png"`` paths in its source.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


def test_there_are_tutorials_and_an_index_listing_each():
    assert TUTORIALS, "no tutorials/NN_*.py"
    index = (ROOT / "tutorials" / "README.md").read_text(encoding="utf-8")
    for t in TUTORIALS:
        assert t.name in index, f"tutorials/README.md does not list {t.name}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[t.stem for t in TUTORIALS])
def test_tutorial_runs_and_writes_its_figures(path, tmp_path):
    pytest.importorskip("matplotlib")
    source = path.read_text(encoding="utf-8")
    assert source.startswith("# ---\n# jupyter:") and "format_name: percent" in source, "not jupytext percent format"
    figures = re.findall(r'FIGURES / "([^"]+\.png)"', source)
    env = dict(os.environ, TUTORIAL_FIGURES=str(tmp_path), MPLBACKEND="Agg", NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900, check=False)  # fmt: skip
    assert r.returncode == 0, f"{path.name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    for name in figures:
        png = tmp_path / name
        assert png.is_file() and png.stat().st_size > 1000, f"{path.name} did not write {name}"


def test_kernels_chapter_asserts_the_gemm_tile_it_teaches():
    """Chapter 6 checks its tile against kernels/gemm.py's constants (its prose can then not drift from the kernel
    unnoticed) and names no tile the kernel does not run."""
    source = (ROOT / "tutorials" / "06_kernels.py").read_text(encoding="utf-8")
    asserts = [line for line in source.splitlines() if line.lstrip().startswith("assert ")]
    for name in ("gemm.TILE_ROWS", "gemm.TILE_COLS"):
        assert any(name in line for line in asserts), f"06_kernels.py has no assert on {name}"
    for stale in ("4x3", "4 x 3"):
        assert stale not in source, f"06_kernels.py mentions a {stale} tile; kernels/gemm.py runs TILE_COLS x TILE_ROWS"
