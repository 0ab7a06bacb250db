"""Build the tutorials as a static website: every chapter executed, one HTML page each, and an index.

    .venv/bin/python tutorials/build_site.py                  # all chapters -> tutorials/_site/index.html
    .venv/bin/python tutorials/build_site.py --only 06        # one chapter (repeat --only for more)
    .venv/bin/python tutorials/build_site.py --out /tmp/site  # elsewhere

Needs the `tutorials` extra (`pip install -e ".[tutorials]"`; the `test` extra has it too). For each
``tutorials/<NN>_<name>.py``:

1. jupytext reads the percent-format script as a notebook;
2. nbclient (the executor behind ``jupytext --execute`` and ``nbconvert --execute``) runs it in a fresh
   kernel on this interpreter, from the repository root, with matplotlib's inline backend, so each figure is
   a cell output; the chapter's own ``savefig`` copies go to ``<out>/figures/`` (``$TUTORIAL_FIGURES``);
3. nbconvert's HTML exporter (the JupyterLab template) writes ``<out>/NN_name.html``: code, text output and
   figures, the figures embedded as ``data:`` PNGs, so a page is one self-contained file.

Math: nbconvert's template loads MathJax (and require.js) from a CDN with ``<script>`` tags in ``<head>``; with
no network the formulas stay raw TeX (``$W_{word}$``), and a network that drops requests delays the page.
Instead each ``$...$``/``$$...$$`` is converted here, at build time, to MathML (latex2mathml), which browsers
draw natively with no script and no network. A formula latex2mathml cannot translate faithfully is left as its
TeX source, which is readable; only a page that has such a formula loads MathJax, asynchronously at the end of
the page, to typeset it when online. A page whose formulas all convert makes no network request at all.

``index.html`` lists the chapters in order, with their titles (each chapter's first heading) and the "what it
teaches" column of tutorials/README.md's table. A chapter that fails to execute gets no page (a stale page of
it is removed), the others are still built, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHAPTERS = sorted(HERE.glob("[0-9][0-9]_*.py"))
DEFAULT_OUT = HERE / "_site"
DEFAULT_TIMEOUT = 1800  # seconds per chapter, all its cells: chapter 6, the slowest, takes well under one minute
# on 2 idle cores; the budget allows for a busy machine

# The site's page template: nbconvert's JupyterLab page with navigation, no CDN scripts in <head>, MathJax only
# for the formulas left as TeX (see the module docstring), and a cell collapsed in Jupyter (`source_hidden`, the
# exercises' answers) collapsed here too, its outputs with it: on a page they are the answers.
PAGE_TEMPLATE = r"""
{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{% block extra_css %}
<style type="text/css">
  main { max-width: 1100px; margin: 0 auto; }
  nav.site-nav { max-width: 1100px; margin: 0 auto; padding: 8px 16px; font-family: var(--jp-ui-font-family);
                 font-size: 14px; display: flex; gap: 1.5em; flex-wrap: wrap; }
  nav.site-nav a { color: var(--jp-content-link-color); text-decoration: none; }
  nav.site-nav a:hover { text-decoration: underline; }
  nav.site-nav .up { font-weight: bold; }
  .jp-RenderedHTMLCommon math[display="block"] { margin: 0.8em 0; }
  .jp-RenderedHTMLCommon math { font-size: 1.1em;
    font-family: "STIX Two Math", "Latin Modern Math", "Cambria Math", "DejaVu Math TeX Gyre", math; }
  details.site-hidden { margin: 4px 0; }
  details.site-hidden > summary { cursor: pointer; padding: 4px 8px; font-family: var(--jp-ui-font-family);
    color: var(--jp-content-link-color); }
  math mtext[mathvariant="monospace"] { font-family: var(--jp-code-font-family); }
  .tex-source { font-family: var(--jp-code-font-family); font-size: 0.95em; }
  table.site-index { font-size: 14px; }
  table.site-index td, table.site-index th { vertical-align: top; text-align: left; }
</style>
{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
{{ resources.get('site_nav', '') }}
{%- endblock body_header -%}
{% block body_footer %}
{{ resources.get('site_nav', '') }}
{{ super() }}
{% endblock body_footer %}
{% block codecell %}
{%- if cell.metadata.get('jupyter', {}).get('source_hidden') -%}
<details class="site-hidden"><summary>{{ 'Show the answers' if 'answers' in cell.metadata.get('tags', [])
  else 'Show the hidden cell' }}</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{% endblock codecell %}
{% block footer_js %}
{%- if resources.get('tex_left') -%}
<script>
window.MathJax = {
  tex2jax: { inlineMath: [['$', '$'], ['\\(', '\\)']], displayMath: [['$$', '$$'], ['\\[', '\\]']],
             processEscapes: true, processEnvironments: true },
  messageStyle: 'none'
};
</script>
<script async src="{{ resources.mathjax_url }}"></script>
{%- endif -%}
{% endblock footer_js %}
"""


_BARS = re.compile(r"<mo>(&#x0*(?:2016|7C|2223|2225);|[\u2016|\u2223\u2225])</mo>", re.IGNORECASE)
_TEXT_ESCAPES = {"_": "_", "%": "%", "#": "#", "$": "$", "{": "{", "}": "}", "&": "&amp;", " ": " "}


def _unescape_text_mode(m: re.Match) -> str:
    text = re.sub(r"\\([_%#${}& ])", lambda e: _TEXT_ESCAPES[e.group(1)], m.group(2))
    return m.group(1) + text + m.group(3)


def _exporter_class():
    """An nbconvert HTMLExporter whose markdown math becomes MathML (imported here: the extra is optional)."""
    from jinja2 import DictLoader, pass_context
    from latex2mathml.converter import convert
    from nbconvert.exporters import HTMLExporter
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    class MathMLRenderer(IPythonRenderer):
        """nbconvert's markdown renderer, with each formula as MathML where latex2mathml translates all of it."""

        def __init__(self, *args, tex_left: list[str], **kwargs):
            super().__init__(*args, **kwargs)
            self.tex_left = tex_left

        def _math(self, tex: str, display: bool, fallback: str) -> str:
            try:
                mathml = convert(tex, display="block" if display else "inline")
            except Exception:  # noqa: BLE001 - any parse failure means: keep the TeX
                mathml = ""
            # latex2mathml keeps text-mode escapes verbatim (`\texttt{layer\_norm}` -> `<mtext>layer\_norm`).
            mathml = re.sub(r"(<mtext[^>]*>)(.*?)(</mtext>)", _unescape_text_mode, mathml)
            # It leaves `\lVert`, `\rVert`, `\mid` stretchy, which TeX never stretches without \left/\right: browsers
            # then draw `\lVert e_i \rVert_2` with bars of different heights.
            mathml = _BARS.sub(r'<mo stretchy="false">\1</mo>', mathml)
            # An unknown command comes out verbatim (`<mi>\foo</mi>`), an alignment `&` it does not handle as a
            # bare `&`: either way the MathML would mislead, and the TeX source reads better.
            if not mathml.startswith("<math") or "\\" in mathml or re.search(r">&<|&(?![#\w]+;)", mathml):
                self.tex_left.append(tex)
                return f'<span class="tex-source">{fallback}</span>'
            body = mathml[mathml.index(">") + 1 : mathml.rindex("</math>")]
            head = mathml[: mathml.index(">") + 1]
            annotation = f'<annotation encoding="application/x-tex">{html.escape(tex, quote=False)}</annotation>'
            return f"{head}<semantics><mrow>{body}</mrow>{annotation}</semantics></math>"

        def inline_math(self, body: str) -> str:
            return self._math(body, False, super().inline_math(body))

        def block_math(self, body: str) -> str:
            return self._math(body, True, super().block_math(body))

        def latex_environment(self, name: str, body: str) -> str:
            return self._math(f"\\begin{{{name}}}{body}\\end{{{name}}}", True, super().latex_environment(name, body))

    class SiteExporter(HTMLExporter):
        """The JupyterLab HTML page, with PAGE_TEMPLATE and MathML math."""

        def __init__(self, **kwargs):
            kwargs.setdefault("extra_loaders", [DictLoader({"erniem_site.html.j2": PAGE_TEMPLATE})])
            super().__init__(template_name="lab", template_file="erniem_site.html.j2", **kwargs)

        @pass_context
        def markdown2html(self, context, source):
            """As HTMLExporter.markdown2html, with MathMLRenderer; notes the formulas left as TeX in resources."""
            cell = context.get("cell", {})
            resources = context.get("resources", {})
            renderer = MathMLRenderer(
                escape=False,
                attachments=cell.get("attachments", {}),
                embed_images=self.embed_images,
                path=resources.get("metadata", {}).get("path", ""),
                anchor_link_text=self.anchor_link_text,
                exclude_anchor_links=self.exclude_anchor_links,
                tex_left=resources.setdefault("tex_left", []),
                **getattr(self, "lexer_options", {}),
            )
            return MarkdownWithMath(renderer=renderer).render(source)

    return SiteExporter


def chapter_title(nb) -> str:
    """The chapter's first markdown heading, e.g. '2. Embeddings and positions: ...'."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+?)\s*$", cell.source, re.MULTILINE)
            if m:
                return m.group(1)
    return ""


def readme_rows() -> dict[str, str]:
    """tutorials/README.md's table: chapter file name -> its "what it teaches" cell."""
    readme = HERE / "README.md"
    rows = {}
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            m = re.match(r"\|\s*\[(\d\d_\w+\.py)\]\(\1\)\s*\|(.*?)\|", line)
            if m:
                rows[m.group(1)] = m.group(2).strip()
    return rows


def nav_html(index: int, pages: list[tuple[Path, str]]) -> str:
    """Links to the contents and to the previous and next chapters (their titles up to the first colon)."""
    links = ['<a class="up" href="index.html">Contents</a>']
    if index > 0:
        prev, title = pages[index - 1]
        links.append(
            f'<a href="{prev.stem}.html" title="{html.escape(title)}">&larr; {html.escape(title.split(":")[0])}</a>'
        )
    if index + 1 < len(pages):
        nxt, title = pages[index + 1]
        links.append(
            f'<a href="{nxt.stem}.html" title="{html.escape(title)}">{html.escape(title.split(":")[0])} &rarr;</a>'
        )
    return '<nav class="site-nav">' + "".join(links) + "</nav>"


def execute(nb, out: Path, timeout: float) -> None:
    """Run the notebook in a fresh kernel on this interpreter, from the repository root, within `timeout` s."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from traitlets import default

    class NativeKernelManager(AsyncKernelManager):
        """A local kernel: `python3` is ipykernel's own kernelspec, which runs sys.executable (this venv, where
        erniem_np is installed), not a `python3` kernelspec another interpreter installed in a Jupyter data
        directory."""

        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(kernel_dirs=[])

        @default("transport")
        def _transport_default(self):
            return "ipc" if os.name == "posix" else "tcp"  # Unix sockets: no TCP port open to other users

        @default("ip")
        def _ip_default(self):
            if self.transport != "ipc":
                return "127.0.0.1"
            # An absolute socket path in a private (0700) directory: the kernel runs from the repository root
            # and this process may not, and a relative path would name two different sockets.
            return os.path.join(tempfile.mkdtemp(prefix="erniem-np-kernel-"), "kernel")


    deadline = time.monotonic() + timeout
    client = NotebookClient(
        nb,
        kernel_manager_class=NativeKernelManager,
        kernel_name="python3",
        timeout_func=lambda cell: max(1.0, deadline - time.monotonic()),  # the chapter's budget, not each cell's
        resources={"metadata": {"path": str(ROOT)}},  # the kernel's working directory
    )
    env = dict(
        os.environ,
        MPLBACKEND="module://matplotlib_inline.backend_inline",  # each figure becomes a cell output
        TUTORIAL_FIGURES=str(out / "figures"),
        PYDEVD_DISABLE_FILE_VALIDATION="1",  # ipykernel's debugger warns about frozen modules otherwise
    )
    client.execute(env=env)


def build_chapter(path: Path, out: Path, timeout: float, exporter, nav: str, title: str) -> Path:
    import jupytext

    nb = jupytext.read(path)
    t0 = time.perf_counter()
    execute(nb, out, timeout)
    seconds = time.perf_counter() - t0
    nb.metadata["title"] = title or path.stem
    body, resources = exporter.from_notebook_node(nb, resources={"site_nav": nav, "metadata": {"name": path.stem}})
    page = out / f"{path.stem}.html"
    page.write_text(body, encoding="utf-8")
    left = resources.get("tex_left", [])
    note = f"; {len(left)} formula(s) left as TeX: {left[:3]}" if left else ""
    print(f"{path.stem}: executed in {seconds:.0f} s -> {page}{note}", flush=True)
    return page


def build_index(out: Path, pages: list[tuple[Path, str]], exporter) -> Path:
    """index.html: the chapters in order, linked where their page exists in `out`."""
    import nbformat

    teaches = readme_rows()
    lines = [
        "# ErnieM from scratch: the tutorials",
        "",
        (
            "How an ErnieM encoder works, read beside the code of erniem-np (plain NumPy and Numba). Each chapter "
            "below was executed to build this site: its outputs and figures are the ones it printed and drew."
        ),
        "",
        "| chapter | what it teaches |",
        "|---|---|",
    ]
    for path, title in pages:
        page = out / f"{path.stem}.html"
        name = f"[{title}]({page.name})" if page.is_file() else f"{title} (not built)"
        lines.append(f"| {name} | {teaches.get(path.name, '')} |")
    commit = _git_commit()
    if commit:
        lines += ["", f"Built from commit `{commit}` on {time.strftime('%Y-%m-%d')}."]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("\n".join(lines))])
    nb.metadata["title"] = "erniem-np tutorials"
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "index"}})
    body = body.replace("<table>", '<table class="site-index">', 1)
    index = out / "index.html"
    index.write_text(body, encoding="utf-8")
    return index


def _git_commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                           timeout=10, check=False)  # fmt: skip
    except OSError:
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def select(only: list[str] | None) -> list[Path]:
    if not only:
        return CHAPTERS
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    chosen = [c for c in CHAPTERS if any(c.stem == w or c.stem.startswith(w) or c.name == w for w in wanted)]
    missing = [w for w in wanted if not any(c.stem == w or c.stem.startswith(w) or c.name == w for c in CHAPTERS)]
    if missing:
        raise SystemExit(f"no chapter matches {missing}; chapters: {[c.stem for c in CHAPTERS]}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT.relative_to(ROOT)}/)"
    )
    parser.add_argument("--only", action="append", metavar="NN",
                        help="build only this chapter (a number like 06, or a name); repeat for more")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds one chapter may take, all cells (default {DEFAULT_TIMEOUT})")  # fmt: skip
    args = parser.parse_args(argv)

    missing = [m for m in ("jupytext", "nbconvert", "nbclient", "ipykernel", "latex2mathml") if not find_spec(m)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: install the tutorials extra: pip install -e '.[tutorials]'")
    import jupytext

    out = args.out.resolve()
    (out / "figures").mkdir(parents=True, exist_ok=True)
    exporter = _exporter_class()(exclude_input_prompt=True, exclude_output_prompt=True)
    # Every chapter's title, for the navigation and the index (reading a script is cheap; running it is not).
    pages = [(c, chapter_title(jupytext.read(c)) or c.stem) for c in CHAPTERS]
    failed = []
    for path in select(args.only):
        i = CHAPTERS.index(path)
        try:
            build_chapter(path, out, args.timeout, exporter, nav_html(i, pages), pages[i][1])
        except Exception as e:  # noqa: BLE001 - report the chapter, build the others
            failed.append(path.stem)
            (out / f"{path.stem}.html").unlink(missing_ok=True)
            if type(e).__name__ == "CellTimeoutError":
                e = f"it did not finish within --timeout {args.timeout:.0f} s ({e})"
            print(f"{path.stem}: FAILED\n{e}", file=sys.stderr, flush=True)
    index = build_index(out, pages, exporter)
    print(f"index: {index}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
