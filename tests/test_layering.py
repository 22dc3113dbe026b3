"""Layering: the GUI never imports torch or the engine, the engine never imports Qt, and the
core modules import neither. Checked by importing in a fresh interpreter and by reading the
source (imports inside functions count too)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QT = ("PySide6", "shiboken6", "qasync")
CORE = ("atomic", "settings", "store/conversation", "store/store", "store/rows", "store/schema",
        "store/reply", "exchange/export", "exchange/render", "exchange/html_export",
        "exchange/markup", "exchange/importers", "exchange/chatgpt", "messages", "paths", "errors",
        "checkpoint_files", "context", "attachments", "logs", "process_memory")


def loaded_after_import(modules: list[str]) -> set[str]:
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    env = {"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return set(json.loads(out))


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def gui_modules() -> list[str]:
    return [f"app.gui.{p.stem}" for p in sorted((ROOT / "app" / "gui").glob("*.py"))
            if p.stem != "__init__"]


def test_gui_import_loads_no_torch():
    """Importing every GUI module (and the worker) leaves torch unloaded."""
    loaded = loaded_after_import([*gui_modules(), "app.worker"])
    assert "PySide6" in loaded
    assert "torch" not in loaded and "safetensors" not in loaded


def test_engine_import_loads_no_qt():
    """Importing the engine loads no Qt binding."""
    engine = [f"app.engine.{p.stem}" for p in sorted((ROOT / "app" / "engine").glob("*.py"))]
    loaded = loaded_after_import(engine)
    assert "torch" in loaded
    assert not loaded & set(QT)


@pytest.mark.parametrize("path", sorted((ROOT / "app" / "gui").glob("*.py")), ids=lambda p: p.name)
def test_gui_source_never_names_torch_or_the_engine(path):
    """No GUI file imports torch or app.engine, even inside a function."""
    bad = {n for n in imported_names(path) if n.split(".")[0] == "torch" or
           n.startswith("app.engine")}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "app" / "engine").glob("*.py")),
                         ids=lambda p: p.name)
def test_engine_source_never_names_qt(path):
    """No engine file imports a Qt binding."""
    bad = {n for n in imported_names(path) if n.split(".")[0] in QT or n.startswith("app.gui")}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("name", CORE)
def test_core_modules_import_neither(name):
    """Settings, storage, conversation, export, messages...: no Qt, no torch, no engine, no GUI."""
    path = ROOT / "app" / f"{name}.py"
    assert path.exists(), f"app/{name}.py is listed as a core module but does not exist"
    bad = {n for n in imported_names(path) if n.split(".")[0] in (*QT, "torch") or
           n.startswith(("app.engine", "app.gui"))}
    assert not bad, f"app/{name}.py imports {bad}"


def test_worker_imports_engine_only_inside_functions():
    """The worker is the bridge: torch and the engine are imported inside the thread only."""
    tree = ast.parse((ROOT / "app" / "worker.py").read_text(encoding="utf-8"))
    top = {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
           for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert not {m for m in top if m and (m.startswith("app.engine") or m == "torch")}
    assert not {m for m in top if m and m.split(".")[0] in QT}


def test_placement_preview_loads_no_torch_and_no_qt():
    """app.placement (what the GUI calls for the plan) pulls in the planner without torch."""
    loaded = loaded_after_import(["app.placement"])
    assert "torch" not in loaded and not loaded & set(QT)
    bad = {n for n in imported_names(ROOT / "app" / "placement.py")
           if n.startswith("app.engine") and n not in ("app.engine.plan", "app.engine.config")}
    assert not bad


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """app module -> the app modules it imports anywhere in its source: at the top, inside
    functions and under TYPE_CHECKING alike (a cycle hidden in a function is still a cycle)."""
    paths = sorted((ROOT / "app").rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        name = _module_name(path)
        package = name if path.stem == "__init__" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "app":
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_planted_cycle():
    """The checker itself: a three-module loop is reported, a chain is not."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_app_has_no_import_cycles():
    """No two modules of app/ import each other, directly or through others."""
    graph = import_graph()
    assert graph.get("app.store.store"), "the graph reads no imports"
    assert find_cycles(graph) == []
