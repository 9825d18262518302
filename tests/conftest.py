"""Shared fixtures: small generated data and one backbone instance for the whole session."""
import os

import pytest

from softpatch_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MVTEC_ROOT = os.path.join(REPO, "..", "shared", "data", "mvtec_ad")


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    synthetic.make_mvtec_category(str(root), "widget", n_train=12, n_good=4, n_defect=4,
                                  defects=("blob", "scratch"))
    return str(root)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("weights_cache"))


def load_config(name: str):
    """A config file of configs/ (e.g. 'default.py', 'sweeps/noise.py') -> its get_config()."""
    import importlib.util

    path = os.path.join(REPO, "configs", name)
    spec = importlib.util.spec_from_file_location(f"cfg_{name.replace('/', '_')[:-3]}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()
