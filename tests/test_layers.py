"""The layer rules of docs/ARCHITECTURE.md, checked on the source: every import of every dsmcli module (module level,
function level, ``TYPE_CHECKING`` blocks alike, read with ``ast``) points to the same or a lower layer, no two modules
import each other directly or through others, and functions stay short.

A failure names the offending import (``module -> imported``) or the cycle (``a -> b -> a``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "dsmcli"

# Lowest first. A module belongs to the layer of the longest prefix that names it (docs/ARCHITECTURE.md).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("dsmcli", "dsmcli.errors", "dsmcli.constants", "dsmcli.results", "dsmcli.cpu_threads", "dsmcli.logs"),
    ("dsmcli.kernels", "dsmcli.nn", "dsmcli.audio", "dsmcli.outputs"),
    ("dsmcli.codec", "dsmcli.engine"),
    ("dsmcli.hub",),
    ("dsmcli.stt", "dsmcli.tts"),
    ("dsmcli.bench", "dsmcli.serve"),
    ("dsmcli.commands", "dsmcli.corpus"),
    ("dsmcli.cli", "dsmcli.__main__"),
)
LAYER_NAMES = ("base", "building blocks", "models", "hub", "tasks", "applications", "commands", "command line")
MAX_FUNCTION_LINES = 60
# Typer command functions: one parameter per flag, so their signatures alone are long (the only exceptions).
LONG_COMMAND_FUNCTIONS = {"transcribe_cmd", "serve_cmd"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the dsmcli module it imports
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The dsmcli module ``name`` loads: itself, or the closest enclosing module (``pkg.mod.Class`` → ``pkg.mod``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """Every dsmcli import in ``path``, wherever it sits (module body, functions, TYPE_CHECKING blocks)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, modules) if name.startswith("dsmcli") else None
            # a module's own package is loaded before the module anyway: not a dependency edge
            if target is not None and target != module and not module.startswith(target + "."):
                yield Import(module, target, node.lineno)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")
    return best


def import_graph() -> dict[str, list[Import]]:
    modules = all_modules()
    return {module: list(imports_of(module, path, modules)) for module, path in modules.items()}


def find_cycle(graph: dict[str, list[Import]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None (iterative depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted({i.target for i in graph[root]}))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted({i.target for i in graph.get(nxt, [])})))
    return None


def test_every_module_has_a_layer():
    for module in all_modules():
        layer_of(module)


def test_imports_point_to_the_same_or_a_lower_layer():
    upward = [f"{i.module}:{i.line} ({LAYER_NAMES[layer_of(i.module)]}) imports {i.target} "
              f"({LAYER_NAMES[layer_of(i.target)]})"
              for imports in import_graph().values() for i in imports if layer_of(i.target) > layer_of(i.module)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_engine_and_codec_never_touch_the_hub():
    touching = [f"{i.module}:{i.line} imports {i.target}" for imports in import_graph().values() for i in imports
                if i.module.startswith(("dsmcli.engine", "dsmcli.codec")) and i.target.startswith("dsmcli.hub")]
    assert not touching, "\n".join(touching)


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    edge = lambda a, b: Import(a, b, 1)  # noqa: E731
    graph = {"a": [edge("a", "b")], "b": [edge("b", "c")], "c": [edge("c", "a")], "d": []}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": [edge("a", "b")], "b": [], "c": [edge("c", "b")]}) is None


def _functions(path: Path) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_functions_are_short():
    long = []
    for module, path in all_modules().items():
        for node in _functions(path):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            allowed = module.startswith("dsmcli.commands.") and node.name in LONG_COMMAND_FUNCTIONS
            if lines > MAX_FUNCTION_LINES and not allowed:
                long.append(f"{module}.{node.name} ({path.name}:{node.lineno}): {lines} lines")
    assert not long, f"functions longer than {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("name", sorted(LONG_COMMAND_FUNCTIONS))
def test_the_long_command_functions_still_exist(name):
    """The exceptions stay honest: each names a Typer command function of dsmcli/commands that is still long."""
    found = [node for path in (PACKAGE_ROOT / "commands").glob("*.py") for node in _functions(path)
             if node.name == name]
    assert len(found) == 1 and (found[0].end_lineno or 0) - found[0].lineno + 1 > MAX_FUNCTION_LINES
