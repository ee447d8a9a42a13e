"""The project's modules import each other without a cycle.

The graph is read from the source with `ast`, so a cycle is found even where Python's lazy
imports would hide it at run time.
"""

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_FOLDERS = {".venv", ".git", "tests", "examples", "benchmarks", "__pycache__", "docs"}


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every library module under `root`."""
    modules = {}
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if SKIPPED_FOLDERS & set(relative.parts[:-1]):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules[".".join(parts)] = path
    return modules


def imported_names(path: Path, module: str, is_package: bool) -> set[str]:
    """Every dotted name an import statement in `path` refers to, relative imports resolved."""
    names = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports (a package import counts as its __init__)."""
    modules = project_modules(root)
    graph = {}
    for module, path in modules.items():
        targets = imported_names(path, module, path.name == "__init__.py")
        graph[module] = {name for name in targets if name in modules and name != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state = {}  # module -> "open" while on the stack, "done" after

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_project():
    graph = import_graph(ROOT)
    # A graph that missed the packages or the relative imports would pass vacuously.
    assert {"utils", "cli", "compilers.inductor", "load.models", "vlm.eagle2"} <= set(graph)
    assert "errors" in graph["plugin_utils"]
    assert {"compilers.tensorrt", "static_cache_v2"} <= graph["utils"]
    assert "vlm.family" in graph["vlm.eagle2"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# utils reaches decode_tuning through compilers.inductor; run_llm imports plugin_utils; a
# relative import inside a package is resolved too. Each planted line closes a loop.
@pytest.mark.parametrize("planted_in, line, on_cycle", [
    ("compilers/decode_tuning.py", "import utils", "utils"),
    ("plugin_utils.py", "from run_llm import main", "run_llm"),
    ("compilers/decode_attention.py", "from .inductor import compile_with_inductor", "compilers.inductor"),
])
def test_a_planted_cycle_is_found(tmp_path, planted_in, line, on_cycle):
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*SKIPPED_FOLDERS))
    assert find_cycle(import_graph(copy)) is None
    target = copy / planted_in
    target.write_text(target.read_text() + f"\n{line}  # planted\n")
    cycle = find_cycle(import_graph(copy))
    assert cycle is not None and on_cycle in cycle, cycle
