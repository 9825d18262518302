"""Every feature the README describes works after a plain `pip install -e .`: each third-party
module the package imports comes from a distribution in `install_requires` (an extra only for the
modules its docstring names as optional), and the runtime-only needs of what we call (jax.export's
flatbuffers) are declared too. CI installs the extras, so this test is what guards the plain
install."""
import ast
import importlib.metadata
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "softpatch_jax"
# Modules imported only by the features of an extra: {module: extra}.
OPTIONAL = {"tensorflow_datasets": "tfds"}


def _setup_lists():
    """install_requires and extras_require of setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords
          if k.arg in ("install_requires", "extras_require")}
    return kw["install_requires"], kw["extras_require"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _third_party_imports():
    """{top-level module: first file importing it}, lazy imports inside functions included."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top not in sys.stdlib_module_names and top != "softpatch_jax":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_a_declared_dependency():
    required, extras = _setup_lists()
    declared = {_name(r) for r in required}
    providers = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"jax", "numpy", "PIL"} <= set(imports)  # the scan sees the package's imports
    missing = []
    for module, where in sorted(imports.items()):
        dists = {_name(d) for d in providers.get(module, [])}
        assert dists, f"{module} (imported by {where}) is not installed"
        if module in OPTIONAL:
            assert dists & {_name(r) for r in extras[OPTIONAL[module]]}, module
        elif not dists & declared:
            missing.append(f"{module} ({where}, from {sorted(dists)})")
    assert not missing, f"imported but not in install_requires: {missing}"


def test_export_serialisation_needs_are_declared():
    """jax.export serialises through flatbuffers without depending on it: declared by us."""
    required, _ = _setup_lists()
    assert "flatbuffers" in {_name(r) for r in required}
    import jax
    import jax.numpy as jnp
    from jax import export

    exported = export.export(jax.jit(lambda x: x * 2))(jax.ShapeDtypeStruct((2,), jnp.float32))
    restored = export.deserialize(exported.serialize())
    assert restored.call(jnp.ones(2, jnp.float32)).tolist() == [2.0, 2.0]


def test_no_bare_unpickling_in_the_package():
    """Every pickle the package reads goes through a restricted Unpickler subclass: no
    pickle.load(s), no np.load(allow_pickle=True), no torch.load, no pickle-based shelve or
    joblib/marshal loads."""
    banned = re.compile(r"pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\(|marshal\.loads?\("
                        r"|joblib\.load\(|shelve\.open\(|dill\.|cloudpickle\.")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in sorted(PACKAGE.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert not hits, hits
    # The one module that unpickles does it through Unpickler subclasses with find_class.
    source = (PACKAGE / "features" / "backbones" / "state_dict.py").read_text()
    assert source.count("def find_class") >= 2 and "pickle.Unpickler" in source
