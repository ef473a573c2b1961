"""relaydiff's import graph, read from the AST (no module is imported): no cycle, and no module takes
another module's private (_underscore) names (docs/ARCHITECTURE.md, "Rules that keep it so")."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("relaydiff", "relay_kernels")


def _modules() -> dict:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(name: str, path: pathlib.Path, mods: dict):
    """(imported module names inside the packages, private names taken by `from X import _y`), every
    import of the file: module level and inside functions alike."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets, private = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name in mods)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            for a in node.names:
                full = f"{target}.{a.name}"
                if full in mods:
                    targets.add(full)
                elif target in mods:
                    targets.add(target)
                if a.name.startswith("_") and name.startswith("relaydiff") and (full in mods or target in mods):
                    private.append(f"{name}: from {target} import {a.name}")
    targets.discard(name)
    return targets, private


def _graph():
    mods = _modules()
    edges, private = {}, []
    for name, path in mods.items():
        edges[name], taken = _imports(name, path, mods)
        private += taken
    return edges, private


def _cycle(edges: dict):
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state, path = {}, []

    def visit(v):
        state[v] = "open"
        path.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == "open":
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = "done"
        path.pop()
        return None

    for v in sorted(edges):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relaydiff_has_no_import_cycle():
    edges, _ = _graph()
    assert "relaydiff.netspec" in edges["relaydiff.importer"]  # the graph sees function-level imports too
    assert _cycle({k: v for k, v in edges.items() if k.startswith("relaydiff")}) is None


def test_relaydiff_takes_no_private_names():
    _, private = _graph()
    assert private == []
