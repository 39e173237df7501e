"""The packages' structure (issue 20): our modules import each other one way only, at the top of the module.

The import graph of `spanbert_data` and `spanbert_train` is read from the source with `ast`: every `import` and
`from … import …` of one of our modules, at module level or inside a function (relative imports resolved, and
`from package import name` counted as an import of the submodule when `name` is one). It must have no cycle,
and no function may import one of our modules, except the modules that are an optional heavy dependency's
code (OPTIONAL below): importing them imports that dependency, which stays lazy.

Two entry points find their target by name when called, through `importlib`, not an import statement: the
`spanbert-train` command table (cli.py: training and every subcommand) and the package attribute
`spanbert_train.load_sbo_head`. They keep `spanbert-train --help` and `import spanbert_train` free of torch, which
the last test checks; nothing imports them back, so they close no cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("spanbert_data", "spanbert_train")
# Our modules that import an optional heavy dependency at their top: imported only where that dependency is used.
OPTIONAL = {
    "spanbert_train.kernels.bias_gelu": "triton",
    "spanbert_train.kernels.linear_cross_entropy": "triton",
    "spanbert_train.kernels.residual_dropout_layernorm": "triton",
}


def our_modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of both packages (a package is its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module of ours, line, inside a function) for every import statement in `path`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno, in_function) for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                target = target if target in modules else base
                if target in modules:
                    found.append((target, node.lineno, in_function))
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """The graph (module -> the modules of ours it imports, at any level) and the function-level imports."""
    modules = our_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    in_functions = []
    for name, path in modules.items():
        for target, line, in_function in imports_of(name, path, set(modules)):
            if target != name:
                graph[name].add(target)
            if in_function and target not in OPTIONAL:
                in_functions.append(f"{path.relative_to(REPO)}:{line}: imports {target} inside a function")
    return graph, in_functions


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """One readable chain ("a → b → a") per strongly connected component with a cycle (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [" → ".join(_chain(graph, component)) for component in components]


def _chain(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, as the list of modules (first repeated last)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def test_the_cycle_finder_reports_each_cycle_as_a_chain():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"g"}, "g": {"f"}}
    assert sorted(find_cycles(graph)) == ["a → b → c → a", "e → e", "f → g → f"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_is_read_from_every_module():
    graph, _ = import_graph()
    assert len(graph) > 50
    assert "spanbert_data.location" in graph["spanbert_data.shards"]  # a module-level `from … import …`
    assert "spanbert_data.tokenizer" in graph["spanbert_data.executor"]  # `from package import submodule`
    assert "spanbert_train.kernels.reference" in graph["spanbert_train.kernels"]  # a relative import
    assert "spanbert_train.kernels.bias_gelu" in graph["spanbert_train.kernels"]  # one inside a function


def test_no_import_cycles_between_our_modules():
    graph, _ = import_graph()
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_no_function_level_imports_of_our_modules():
    _, in_functions = import_graph()
    assert in_functions == [], "\n".join(in_functions)


def test_the_command_line_entry_points_do_not_import_torch():
    """`spanbert-data` never needs torch, and `spanbert-train --help` (or plot) does not load it."""
    code = ("import sys, spanbert_data.cli, spanbert_data.build, spanbert_data.inspect, spanbert_train, "
            "spanbert_train.cli; print('torch' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"
