"""Shared fixtures: small generated data and one backbone instance for the whole session."""
import os

import numpy as np
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


def tiny_sweep_config(root: str, cache_dir: str, categories: str = "widget"):
    """configs/sweeps/noise.py on generated categories at 32 px (the end-to-end tests')."""
    c = load_config("sweeps/noise.py")
    c.data.root, c.data.category = root, categories
    c.data.resize = c.data.image_size = 32
    c.data.batch_size = 8
    c.runtime.cache_dir = cache_dir
    return c


def contaminated_pile(b: int, share: float, seed: int, p: int = 36, d: int = 16):
    """(B, P, D) features: a Gaussian per position; round(share * B) images carry a defect on 2-5
    random positions (shifted far from the normal cloud). -> (features, defective (B,) bool,
    defective patches (B, P) bool)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(p, d)) * 3)[None] + rng.normal(size=(b, p, d))
    bad = np.zeros(b, bool)
    bad[rng.permutation(b)[:int(round(share * b))]] = True
    patches = np.zeros((b, p), bool)
    for i in np.flatnonzero(bad):
        pos = rng.choice(p, size=rng.integers(2, 6), replace=False)
        x[i, pos] += rng.normal(size=(len(pos), d)) + 4.0 * rng.choice([-1, 1], size=(len(pos), d))
        patches[i, pos] = True
    return x.astype(np.float32), bad, patches


def loader_and_predict_scores(workdir: str, mvtec_root: str, name: str):
    """Three of the generated category's test images (good and defective) scored by
    `--mode=predict` on `workdir` and by its exported loader.py -> (loader's, predict's)."""
    import importlib.util

    from softpatch_jax.export import exporter
    from softpatch_jax.pipeline import predict

    images = sorted(os.path.join(mvtec_root, "widget", "test", d, f)
                    for d in ("good", "blob") for f in os.listdir(
                        os.path.join(mvtec_root, "widget", "test", d)))[:3]
    _, scores = predict.predict_images(workdir, images, write_maps=False)["widget"]
    folder = exporter.export_workdir(workdir, batch=2)["widget"]
    spec = importlib.util.spec_from_file_location(f"{name}_loader",
                                                  os.path.join(folder, "loader.py"))
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    return loader.Scorer(folder).score_files(images)["scores"], scores
