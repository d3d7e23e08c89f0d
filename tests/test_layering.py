"""The architecture as the imports draw it, kept true by the standard library's `ast`.

Every import counts, at module level or inside a function (a lazy import is still an arrow): the core knows
nothing of maskclip_bench, only the CLI layer imports the commands, and no module reaches itself again through
its imports (no cycle anywhere).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("maskclip_core", "maskclip_bench")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its file (`from a import b` counts a.b when b is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_cycle_finder_by_hand():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_the_graph_sees_lazy_and_relative_imports():
    graph = _graph()
    assert "maskclip_core.trainer" in graph["maskclip_bench.commands.train_cmd"]  # imported inside the command
    assert "maskclip_bench.experiments.grid_status" in graph["maskclip_bench.experiments.ablate"]  # `from .grid_status import ...`


def test_no_import_cycle_anywhere():
    assert _cycles(_graph()) == []


def test_the_core_knows_nothing_of_the_bench():
    offenders = {name: sorted(m for m in deps if m.startswith("maskclip_bench"))
                 for name, deps in _graph().items() if name.startswith("maskclip_core")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_cli_layer_imports_the_commands():
    cli = ("maskclip_bench.commands", "maskclip_bench.cli", "maskclip_bench.__main__")
    offenders = {name: sorted(m for m in deps if m.startswith(cli))
                 for name, deps in _graph().items() if not name.startswith(cli)}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_command_imports_another_command():
    # Shared CLI plumbing (console, run_config) is not a command: a command module is one that registers commands.
    commands = {name for name, path in _modules().items()
                if name.startswith("maskclip_bench.commands.") and "def register(" in path.read_text()}
    graph = _graph()
    offenders = {name: sorted(graph[name] & commands) for name in commands if graph[name] & commands}
    assert offenders == {}


def test_evaluation_writes_records_and_never_reads_tables():
    # Data flows one way: evaluator -> record -> table. The evaluation side (and the readers and evaluators below
    # it) writes records; only maskclip_bench.results turns them into tables.
    below = ("maskclip_bench.evaluation", "maskclip_bench.eval_data", "maskclip_bench.evaluators")
    offenders = {name: sorted(m for m in deps if m.startswith("maskclip_bench.results"))
                 for name, deps in _graph().items() if name.startswith(below)}
    assert {k: v for k, v in offenders.items() if v} == {}
