"""The import-layer contract: every project import (module-level or inside a function) points down the layer
list of docs/architecture.md, and the module graph has no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
# layer number of each top-level part; a module may import parts of its own layer or lower ones
LAYERS = {"core.metrics": 1, "core.analysis": 2, "core.store": 3, "core.report": 3.5, "core.io": 4, "core.inference": 5,
          "core.training": 6, "core.batch": 7, "core.cli": 8, "core.__main__": 9, "core": 0,
          "dashboard": 10, "app_pages": 11, "app": 12}
# besides the layer order: what the UI layers may reach
ALLOWED = {"dashboard": {"core.metrics", "core.analysis", "core.store", "core.report", "core.io", "dashboard"},
           "app_pages": {"dashboard"}, "app": {"dashboard"}}
PROJECT = ("core", "dashboard", "app_pages", "app")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part_of(mod: str) -> str:
    for key in sorted(LAYERS, key=len, reverse=True):
        if mod == key or mod.startswith(key + "."):
            return key
    raise KeyError(mod)


def project_imports(path: Path, mod: str) -> set[str]:
    """Every project module ``path`` imports, at module level or in a function (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]  # resolved to the longest existing module
        else:
            continue
        for n in names:
            if n.split(".")[0] in PROJECT:
                out.add(n)
    return out


def graph() -> dict[str, set[str]]:
    files = [p for d in ("core", "dashboard", "app_pages") for p in (ROOT / d).rglob("*.py")] + [ROOT / "app.py"]
    mods = {module_name(p): p for p in files}
    g = {}
    for mod, path in mods.items():
        deps = set()
        for n in project_imports(path, mod):
            while n and n not in mods:  # `from core.store import writer` -> core.store
                n = n.rpartition(".")[0]
            if n and n != mod:
                deps.add(n)
        g[mod] = deps
    return g


def violations(g: dict[str, set[str]]) -> list[str]:
    """Edges of the import graph that break the layer order or the UI layers' allowed targets."""
    bad = []
    for mod, deps in g.items():
        src = part_of(mod)
        for d in deps:
            dst = part_of(d)
            allowed = ALLOWED.get(src)
            if allowed is not None and dst not in allowed:
                bad.append(f"{mod} -> {d} ({src} may import only {sorted(allowed)})")
            elif LAYERS[dst] > LAYERS[src]:
                bad.append(f"{mod} -> {d} (upward: {src} is below {dst})")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first search, as the cycle it closes."""
    state: dict[str, int] = {}
    found = []

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    return found


def test_imports_point_down():
    bad = violations(graph())
    assert not bad, "\n".join(bad)


def test_metrics_import_nothing_of_the_project():
    bad = [(m, d) for m, deps in graph().items() if part_of(m) == "core.metrics" for d in deps
           if part_of(d) != "core.metrics"]
    assert not bad


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_checker_catches_upward_imports_and_cycles(tmp_path):
    """The contract itself can fail: a function-local upward import is seen, an upward edge and a cycle reported."""
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from core.batch import pipeline\n")
    assert "core.batch.pipeline" in project_imports(fake, "core.metrics.x")
    assert violations({"core.metrics.x": {"core.batch.pipeline"}}) == [
        "core.metrics.x -> core.batch.pipeline (upward: core.metrics is below core.batch)"]
    assert violations({"app_pages.home": {"core.store"}})  # pages reach the store only through dashboard
    assert cycles({"core.store.a": {"core.store.b"}, "core.store.b": {"core.store.a"}})
    assert not cycles({"core.store.a": {"core.store.b"}, "core.store.b": set()})
