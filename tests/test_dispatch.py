"""Registries are the only dispatch (issue 25): no module of the package tests a value against
the name of a registered method or discriminator (`name == "lof"`, `method in ("fyd", ...)`);
what a method or discriminator can do is asked of its registry entry. Each check is shown to
fail on a line that does it."""
import ast
import os
from typing import List

import softpatch_jax
from softpatch_jax import methods
from softpatch_jax.ops import discriminators

PACKAGE = os.path.dirname(softpatch_jax.__file__)


def registered_names() -> set:
    return set(methods.names()) | set(discriminators.names())


def _strings(node) -> List[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def name_tests(source: str, names: set) -> List[str]:
    """Comparisons in `source` (==, !=, in, not in, also inside match cases) of anything with a
    literal registered name -> 'line: code'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        literals = []
        if isinstance(node, ast.Compare):
            literals = [s for side in [node.left] + node.comparators for s in _strings(side)]
        elif isinstance(node, ast.MatchValue):
            literals = _strings(node.value)
        if any(s in names for s in literals):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_tests_a_registered_name():
    names = registered_names()
    found = []
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                with open(path) as fh:
                    found += [f"{os.path.relpath(path, PACKAGE)}:{hit}"
                              for hit in name_tests(fh.read(), names)]
    assert not found, "name tests outside the registries: " + "; ".join(found)


def test_the_check_fails_on_name_tests():
    names = registered_names()
    assert name_tests('if grouping == "x" and name == "lof":\n    pass\n', names) == \
        ['1: name == \'lof\'']
    assert len(name_tests('ok = method.name in ("fyd", "padim")\n', names)) == 1
    assert len(name_tests('match m:\n    case "softpatch_plus":\n        pass\n', names)) == 1
    assert name_tests('default = "lof"\nlabel = f"{name}"\n', names) == []  # values, no tests
