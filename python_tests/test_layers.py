"""The package's layers import one way (retrievalguard_fast/__init__.py): a module may import only
its own layer, the layers below it and the base modules, at module level or inside a function,
and no two modules import each other, directly or through others."""

import ast
import os

import pytest

import retrievalguard_fast

PACKAGE = os.path.dirname(retrievalguard_fast.__file__)
BASE = {"errors", "durable"}  # leaf modules every layer may use
# Each layer and the layers it may import (besides itself and BASE).
ALLOWED = {
    "kernels": set(),
    "smoothing": {"kernels"},
    "report": {"kernels", "smoothing"},
    "attack": {"kernels", "smoothing", "report"},
    "data": {"kernels", "smoothing"},
    "runs": {"kernels", "smoothing", "report", "attack", "data"},
    "demo": {"kernels", "smoothing"},
    "training": {"kernels", "smoothing", "report", "data", "runs"},
    "cli": {"kernels", "smoothing", "report", "attack", "data", "runs", "demo", "bench", "training"},
    "bench": {"kernels", "smoothing", "report", "data", "demo"},
}
TOP = {"__init__": set(ALLOWED), "__main__": {"cli"}, **{name: set() for name in BASE}}


def _modules():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, PACKAGE)[:-3].split(os.sep)
                yield path, rel


def _imports(path, rel):
    """(line, target module as a list of parts inside the package) of every import in the file."""
    package = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                names = [a.name for a in node.names]
                # "from . import x" / "from .. import kernels": each name may be a module
                yield node.lineno, target, names
            elif node.module and node.module.split(".")[0] == "retrievalguard_fast":
                yield node.lineno, node.module.split(".")[1:], [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "retrievalguard_fast":
                    yield node.lineno, a.name.split(".")[1:], []


def _layer(parts):
    return parts[0] if parts else "__init__"


def test_every_import_follows_the_layer_order():
    wrong = []
    for path, rel in _modules():
        own = rel[0] if len(rel) > 1 else rel[0]
        allowed = (ALLOWED[own] if own in ALLOWED else TOP[own]) | {own} | BASE
        for line, target, names in _imports(path, rel):
            layers = {_layer(target)} if target else {n for n in names}
            if not target:  # from the package root: names are layers or the root's own names
                layers = {n for n in names if n in ALLOWED or n in BASE} or {"__init__"}
            for layer in layers:
                if layer == "__init__" and own != "__init__":
                    # the root only re-exports; importing it from a layer would run every layer
                    if names and set(names) <= {"__version__"}:
                        continue
                    wrong.append(f"{os.path.relpath(path, PACKAGE)}:{line} imports the package root ({names})")
                elif layer not in allowed and layer != "__init__":
                    wrong.append(f"{os.path.relpath(path, PACKAGE)}:{line} ({own}) imports {'.'.join(target) or names}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    """Module-level and function-level imports alike: a cycle, even one that only runs late, ties
    two modules into one."""
    graph = {}
    known = {tuple(rel) for _, rel in _modules()}

    def module_of(parts):
        parts = tuple(parts)
        if parts in known:
            return parts
        if parts + ("__init__",) in known:
            return parts + ("__init__",)
        return None

    for path, rel in _modules():
        edges = set()
        for _, target, names in _imports(path, rel):
            for name in names or [None]:
                m = module_of(target + [name]) if name else None
                m = m or module_of(target)
                if m is not None and m != tuple(rel) and m[-1] != "__init__":
                    edges.add(m)
        graph[tuple(rel)] = edges
    # Tarjan-free check: depth-first search for a back edge.
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(".".join(m) for m in stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("path,rel", list(_modules()), ids=lambda v: "/".join(v) if isinstance(v, list) else "")
def test_modules_stay_small(path, rel):
    """No module over 400 lines unless its docstring says it is one concern."""
    text = open(path).read()
    lines = text.count("\n")
    if lines > 400:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "One concern" in doc, f"{'/'.join(rel)}.py has {lines} lines; split it or say why it is one concern"
