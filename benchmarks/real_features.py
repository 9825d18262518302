"""Real patch features of MVTec transistor for the benchmarks (generated data hides the structure
that pruning relies on): the training images' 1024-d patch features and their 128-d coreset
projection, and the test images' features, as the default config computes them. Extracted once
and cached in ~/.cache/softpatch_jax/bench/ (or $SOFTPATCH_BENCH_CACHE).
"""
import os
from typing import Optional, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared data and docs folder (its data/ and docs/), ../shared unless $SOFTPATCH_SHARED says.
SHARED = os.environ.get("SOFTPATCH_SHARED") or os.path.join(REPO, "..", "shared")
MVTEC_ROOT = os.path.join(SHARED, "data", "mvtec_ad")


def cache_dir() -> str:
    return os.environ.get("SOFTPATCH_BENCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "softpatch_jax", "bench")


def missing_reason() -> str:
    """'' when the real data is present, else why the real stages are skipped."""
    if not os.path.isdir(os.path.join(MVTEC_ROOT, "transistor")):
        return f"no MVTec transistor at {os.path.abspath(MVTEC_ROOT)}"
    return ""


def transistor(quick: bool = False) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """-> (train patches (N, 1024), their coreset projection (N, 128), test patches (T, 1024))
    at 224 px, or None when the data is absent. quick: 40 train and 20 test images."""
    if missing_reason():
        return None
    tag = "quick" if quick else "full"
    path = os.path.join(cache_dir(), f"transistor_{tag}.npz")
    if os.path.isfile(path):
        with np.load(path) as z:
            return z["train"], z["reduced"], z["test"]
    import jax

    from softpatch_jax import methods
    from softpatch_jax.files import atomic_path
    from softpatch_jax.pipeline import evaluate

    import configs.mvtec as mvtec_config

    c = mvtec_config.get_config()
    c.data.root, c.data.category = MVTEC_ROOT, "transistor"
    c.data.max_train, c.data.max_test = (40, 20) if quick else (0, 100)
    c.noise.ratio = 0.0
    method = methods.from_config(c)
    extractor = evaluate.extractor_for(c, method)
    split = evaluate.prepare_split(c, "transistor")
    d = c.data
    train = extractor.embed(split.train, d.resize, d.image_size, d.batch_size, "train")
    test = extractor.embed(split.test, d.resize, d.image_size, d.batch_size, "test")
    reduced = np.asarray(method.sampler.project(train, jax.random.PRNGKey(0)))
    os.makedirs(cache_dir(), exist_ok=True)
    train = train.reshape(-1, train.shape[-1])
    test = test.reshape(-1, test.shape[-1])
    with atomic_path(path) as tmp:
        np.savez(tmp, train=train, reduced=reduced, test=test)
    return train, reduced, test
