"""The package reads top-down (issue 25): every import of a package module, at the top of a file
or inside a function, runs down the layers or stays in its layer, and no modules import each
other in a circle. Layers, bottom first: the ground-floor modules (files, settings, timing,
defaults, upgrade, version, shapes), ops, data, io, features, evaluation, methods, pipeline,
report, export, api, main."""
import ast
import os
from typing import Dict, Set

import softpatch_jax

PACKAGE = os.path.dirname(softpatch_jax.__file__)
LAYERS = (("files", "settings", "timing", "defaults", "upgrade", "version", "shapes"), ("ops",),
          ("data",), ("io",), ("features",), ("evaluation",), ("methods",), ("pipeline",),
          ("report",), ("export",), ("api",), ("main",))
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str, module: str) -> Set[str]:
    """The package modules `path` imports (`from a import b` counts a.b when that is a module)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("softpatch_jax.")}


def graph() -> Dict[str, Set[str]]:
    """{module: package modules it imports}, over every module of the package."""
    paths = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                paths[_module(path)] = path
    return {m: {i for i in _imports(p, m) if i in paths} - {m} for m, p in paths.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 and parts[1] in RANK else -1  # -1: the package face


def test_every_module_has_a_layer():
    assert not [m for m in graph() if layer(m) < 0 and m != "softpatch_jax"]


def test_no_import_runs_up_the_layers():
    upward = sorted(f"{m} -> {i}" for m, imports in graph().items() for i in imports
                    if layer(m) >= 0 and layer(i) > layer(m))
    assert not upward, "imports that run back up the layers: " + "; ".join(upward)


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_no_modules_import_each_other_in_a_circle():
    g = {m: {i for i in imports if not _is_ancestor(i, m) and not _is_ancestor(m, i)}
         for m, imports in graph().items()}  # a package's __init__ and its own modules aside
    state, circles = {}, []

    def visit(m, path):
        state[m] = "open"
        for i in sorted(g.get(m, ())):
            if state.get(i) == "open":
                circles.append(" -> ".join(path[path.index(i):] + [i]))
            elif i not in state:
                visit(i, path + [i])
        state[m] = "done"
    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not circles, "circles: " + "; ".join(circles)
