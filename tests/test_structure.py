"""The package's structure as a reader meets it: no import circle between its modules (imports inside
functions included), and the model file free of loaders and backend branches."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"erniem_np": ROOT / "erniem_np", "erniem_np.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            rel = path.relative_to(directory).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if name.startswith("erniem_np.kernels.") and package == "erniem_np":
                continue
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules its import statements name, wherever in the file they stand. A
    ``from X import name`` names X.name when that is a module, else X."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        base = name if is_package else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    source = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    targets.add(full if full in modules else source)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph):
    """One import circle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "erniem_np.checkpoints.pretrained" in graph["erniem_np.model"]  # from_pretrained imports it on use
    assert "erniem_np.fused" in graph["erniem_np.backend"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circle():
    cycle = _cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_model_imports_no_loader_and_has_no_backend_branch():
    source = (ROOT / "erniem_np" / "model.py").read_text(encoding="utf-8")
    top_level = [n for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [ast.unparse(n) for n in top_level if "checkpoints" in ast.unparse(n)]
    assert 'self.backend ==' not in source and "backend ==" not in source, "a backend branch in model.py"


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    import os

    import pytest
    from erniem_np.atomic import atomic_file, atomic_write

    path = tmp_path / "out.bin"
    atomic_write(path, b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"], "torn or left a temporary file"
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write("new")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o666 & ~umask
