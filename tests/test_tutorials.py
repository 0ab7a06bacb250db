"""Every tutorial runs, from the repository root, as a plain script: its assertions hold and its figures are written.

A tutorial is a jupytext percent-format ``.py`` file (``tutorials/<NN>_<name>.py``); it writes its figures to
``$TUTORIAL_FIGURES``. The figures a tutorial promises are the ``FIGURES / "....png"`` paths in its source.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
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


def _site_builder():
    """tutorials/build_site.py as a module, or a skip when the `tutorials` extra (in `test` too) is missing."""
    for module in ("jupytext", "nbconvert", "nbclient", "ipykernel", "latex2mathml", "matplotlib"):
        pytest.importorskip(module)
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_site", ROOT / "tutorials" / "build_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Page(HTMLParser):
    """The parts of a page the site test checks: <title>, <h1> texts, <img> sources, executed output blocks."""

    def __init__(self):
        super().__init__()
        self.title, self.h1, self.images, self.outputs, self._in = "", [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        classes = (attrs.get("class") or "").split()
        self._in.append((tag, "jp-OutputArea-output" in classes))
        if tag == "pre" and any(is_output for _, is_output in self._in):
            self.outputs.append("")

    def handle_endtag(self, tag):
        while self._in and self._in.pop()[0] != tag:
            pass

    def handle_data(self, data):
        tags = [t for t, _ in self._in]
        if tags and tags[-1] == "title":
            self.title += data
        if "h1" in tags:
            self.h1.append(data)
        if "pre" in tags and any(is_output for _, is_output in self._in) and self.outputs:
            self.outputs[-1] += data


def test_site_builder_renders_a_chapter_page(tmp_path):
    """`tutorials/build_site.py --only 02` executes chapter 2 and writes its page: the chapter's title, its printed
    output, its figure (embedded, or a file beside the page), and an index linking the page. Run from another
    directory than the repository root (the kernel runs from the root: their sockets must still meet)."""
    builder = _site_builder()
    chapter = ROOT / "tutorials" / "02_embeddings.py"
    title = re.search(r"^# # (.+)$", chapter.read_text(encoding="utf-8"), re.MULTILINE).group(1)
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    command = [sys.executable, str(ROOT / "tutorials" / "build_site.py"), "--only", "02", "--out", str(tmp_path)]
    r = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, f"build_site.py failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"

    page = _Page()
    page.feed((tmp_path / "02_embeddings.html").read_text(encoding="utf-8"))
    assert page.title.strip() == title
    assert title in "".join(page.h1).replace("¶", "")
    assert any(text.strip() for text in page.outputs), "no executed output on the page"
    assert page.images, "no <img> on the page"
    for src in page.images:
        assert src.startswith("data:image/") or (tmp_path / src).is_file(), (
            f"<img src={src[:80]!r}> resolves to nothing"
        )
    assert builder.CHAPTERS[1] == chapter
    assert 'href="02_embeddings.html"' in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_site_math_becomes_mathml_or_stays_readable_tex():
    """A formula latex2mathml translates is MathML (drawn with no network); one it cannot is left as its TeX,
    and only then does the page load MathJax, asynchronously."""
    import nbformat

    builder = _site_builder()
    exporter = builder._exporter_class()()
    cell = r"Linear: $y = x W^\top + b$; escaped: $\texttt{layer\_norm}$; unknown: $\notacommand{x}$."
    body, resources = exporter.from_notebook_node(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(cell)]))
    assert body.count("<math") == 2 and "layer_norm</mtext>" in body
    assert resources["tex_left"] == [r"\notacommand{x}"] and r"$\notacommand{x}$" in body
    assert re.search(r'<script async[^>]* src="[^"]*mathjax', body, re.IGNORECASE)

    body, resources = exporter.from_notebook_node(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("$x^2$")])
    )
    assert not resources.get("tex_left") and "<math" in body
    assert not re.search(r'<script[^>]* src="https?:', body), "a page with no TeX left loads nothing from the network"
