"""Imports go one way: no module of `stylejax` or `convert` imports, directly or through others, a module that
imports it back, counting imports inside functions too (a lazy import is still a dependency)."""
import ast
import os

from conftest import REPO

PACKAGES = ("stylejax", "convert")


def module_names():
    names = {}
    for pkg in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                    names[rel.removesuffix(".__init__")] = os.path.join(root, f)
    return names


def import_graph():
    """module -> the project modules it imports (a `from pkg import name` counts `pkg.name` when that is a
    module, else `pkg`)."""
    names = module_names()
    graph = {}
    for mod, path in names.items():
        deps = set()
        package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    deps.add(full if full in names else base)
        graph[mod] = {d for d in deps if d in names and d != mod and d not in PACKAGES}
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the packages
    assert "stylejax.stages.base" in graph["stylejax.stages.invert"]  # and reads imports (incl. lazy ones)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
