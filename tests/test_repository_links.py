"""The repository stands on its own: every document the code, docs and tests point at is in it (with the
section anchor they name), no link leaves it, and no work-tracker language is left in the text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}


def _text_files():
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.startswith(".venv") or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in (".py", ".md"):
            yield path


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[`*_]", "", heading.strip().lower())
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    found, fence = set(), False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.+)", line)):
            found.add(slug(m.group(1)))
    return found


# A repository path in prose or code: docs/reference.md#q2-..., scripts/bench/bench_load.py, kernels/gemm.py ...
DOC_REF = re.compile(r"(?<![\w/.-])((?:docs|tutorials|tests|scripts|kernels|erniem_np)/[\w./-]*\w\.(?:md|py|json))"
                     r"(?!\w|\.\w)(#[\w-]+)?")
MD_LINK = re.compile(r"(?<!`)\]\(([^)\s]+)\)")  # not code: `ACT2FN["gelu"](1.0)`


def test_slug_matches_github():
    assert slug("## Q3. Position ids start at 2".lstrip("# ")) == "q3-position-ids-start-at-2"
    assert slug("4. Profiles") == "4-profiles"


def test_every_document_named_exists_with_its_anchor():
    bad = []
    for path in _text_files():
        if path == Path(__file__):
            continue
        text = path.read_text(encoding="utf-8")
        refs = [(m.group(1), m.group(2), ROOT) for m in DOC_REF.finditer(text)]
        if path.suffix == ".md":
            for m in MD_LINK.finditer(re.sub(r"`[^`\n]*`", "", text)):  # code spans are not links
                target = m.group(1)
                if re.match(r"[a-z]+:", target):
                    continue  # an external URL: checked below
                file, _, anchor = target.partition("#")
                refs.append((file, "#" + anchor if anchor else None, path.parent))
        for file, anchor, base in refs:
            target = (base / file).resolve() if file else path
            if not target.exists():
                bad.append(f"{path.relative_to(ROOT)}: {file} does not exist")
            elif anchor and target.suffix == ".md" and anchor[1:] not in anchors(target):
                bad.append(f"{path.relative_to(ROOT)}: {file}{anchor}: no such section")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("pattern", [r"\.\./shared", r"\bissue \d", r"the \w+ issue\b", r"erniem-reference\.md"])
def test_nothing_points_outside_or_at_the_tracker(pattern):
    hits = []
    for path in _text_files():
        if path == Path(__file__):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(pattern, line, re.IGNORECASE):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
