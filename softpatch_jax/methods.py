"""The methods behind `model.method`, on one interface used by fitting, sweeps and prediction.

- `softpatch`: SoftPatch with `model.discriminator` (`none` makes it PatchCore).
- `patchcore`: no denoising, no soft weights; `model.num_nn` nearest neighbours and, with
  `model.reweight_neighbours` > 0, the PatchCore paper's softmax reweighting of image scores.
- `softpatch_plus`: fused discriminators (`model.fusion`, rank-normalised, `model.fusion_rule`),
  a classification bank (`model.cls_threshold`) for image scores and a segmentation bank
  (`model.seg_threshold`) for maps.
- `padim`: a Gaussian per position over `model.padim_dim` random channels of `model.padim_layers`.
- `fyd`: PaDiM on maps aligned by spatial transformers trained on the training images (`config.fyd`,
  see fyd.py); its trained variables travel with the fitted arrays under 'fyd'.

A fitted model is a dict of arrays (what the checkpoint stores); `score` turns it and test
features into image scores and the patch-score grids the anomaly maps come from.
"""
from typing import Dict, Optional, Tuple

import jax
import numpy as np

from softpatch_jax import anomaly_map, padim, softpatch
from softpatch_jax.embedding import Embedder

METHODS = ("softpatch", "softpatch_plus", "patchcore", "padim", "fyd")


def _split(spec: str):
    return [s.strip() for s in str(spec).split(",") if s.strip()]


def check(config) -> None:
    m = config.model
    if m.method not in METHODS:
        raise ValueError(f"model.method={m.method!r} is unknown; choose one of "
                         f"{', '.join(METHODS)}")
    if m.method == "softpatch_plus":
        for d in _split(m.fusion):
            softpatch.discriminators.scorer(d, m.lof_k)
    if m.method == "fyd":
        from softpatch_jax import fyd_train

        fyd_train.check(config.fyd)


def discriminator(config) -> str:
    """The discriminator a run uses ('none' for PatchCore and PaDiM)."""
    m = config.model
    return m.discriminator if m.method == "softpatch" else (
        "fused:" + m.fusion if m.method == "softpatch_plus" else "none")


def _mesh(config):
    """A device mesh when runtime.multi_device is on and there is more than one device."""
    if config.runtime.get("multi_device", True) and jax.device_count() > 1:
        from softpatch_jax import sharding

        return sharding.device_mesh()
    return None


def make_embedder(config, arrays=None):
    """The feature extractor of a method: an Embedder; for FYD with trained variables in `arrays`
    (a fitted model), the AlignedEmbedder around it."""
    m = config.model
    is_padim = m.method in ("padim", "fyd")
    layers = _split(m.padim_layers if is_padim else m.layers)
    base = Embedder(m.backbone, layers, m.weights, config.runtime.cache_dir, config.seed,
                    m.embed_dim, m.patch_size, m.dtype, m.padim_dim if is_padim else 0,
                    mesh=None if m.method == "fyd" else _mesh(config))
    if m.method == "fyd" and arrays is not None:
        return _aligned(config, base, arrays["fyd"])
    return base


def _aligned(config, base: Embedder, variables):
    from softpatch_jax import fyd

    return fyd.AlignedEmbedder(base, fyd.build(config.fyd, base.module, base.layers), variables)


def train_on_images(config, samples, embedder: Embedder, directory: str, key: jax.Array):
    """Methods that learn from the training images before features are taken (FYD) ->
    (the embedder to use from now on, arrays to store with the fitted model); others: as given."""
    if config.model.method != "fyd":
        return embedder, {}
    from softpatch_jax import fyd_train

    variables = fyd_train.train(config, samples, embedder, directory, key)
    return _aligned(config, embedder, variables), {"fyd": variables}


def embed_test(embedder, samples, data_config, desc: str):
    """-> (test features, per-image warps to the input frame or None)."""
    d = data_config
    if hasattr(embedder, "embed_with_warps"):
        return embedder.embed_with_warps(samples, d.resize, d.image_size, d.batch_size, desc)
    return embedder.embed(samples, d.resize, d.image_size, d.batch_size, desc), None


def min_train_images(config) -> int:
    m = config.model
    uses_lof = (m.method == "softpatch" and m.discriminator == "lof") or (
        m.method == "softpatch_plus" and "lof" in _split(m.fusion))
    return m.lof_k + 1 if uses_lof else 2


def fit(config, train: np.ndarray, key: jax.Array, progress: bool = True) -> Dict[str, np.ndarray]:
    """(B, P, D) training features -> the fitted model's arrays."""
    m, budget = config.model, config.runtime.memory_budget_mb
    common = dict(coreset_ratio=m.coreset_ratio, projection_dim=m.projection_dim,
                  num_starts=m.num_starts, budget_mb=budget, progress=progress)
    if m.method in ("softpatch", "patchcore"):
        disc = m.discriminator if m.method == "softpatch" else "none"
        fitted = softpatch.fit(train, key, disc, m.lof_k, m.threshold, **common)
        return {"features": fitted.bank.features, "weights": fitted.bank.weights}
    if m.method == "softpatch_plus":
        fitted = softpatch.fit_plus(train, key, tuple(_split(m.fusion)), m.lof_k, m.fusion_rule,
                                    m.cls_threshold, m.seg_threshold, **common)
        return {"cls_features": fitted.classification.bank.features,
                "cls_weights": fitted.classification.bank.weights,
                "seg_features": fitted.segmentation.bank.features,
                "seg_weights": fitted.segmentation.bank.weights}
    gauss = padim.fit(train, budget_mb=budget, progress=progress)  # padim, fyd
    return {"mean": gauss.mean, "chol": gauss.chol}


def score(config, arrays: Dict[str, np.ndarray], test: np.ndarray, grid: Tuple[int, int],
          warps: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(T, P, D) test features -> ((T,) image scores, (T, h, w) grids for the anomaly maps).
    `warps` (T, 2, 3): FYD's aligned -> input frame maps; the grids are warped back with them."""
    m, budget = config.model, config.runtime.memory_budget_mb
    t = test.shape[0]
    if m.method in ("padim", "fyd"):
        grids = padim.score(test, padim.Gaussians(arrays["mean"], arrays["chol"]),
                            budget).reshape(t, *grid)
        if warps is not None:
            from softpatch_jax import fyd

            grids = fyd.unwarp_grids(grids, warps)
        maps = anomaly_map.anomaly_maps(grids, config.data.image_size, m.blur_sigma)
        return maps.max(axis=(1, 2)), grids  # PaDiM scores the smoothed map
    soft = m.soft_weight and m.method != "patchcore" and not (
        m.method == "softpatch" and m.discriminator == "none")
    prefix = "cls_" if m.method == "softpatch_plus" else ""
    bank = softpatch.MemoryBank(arrays[prefix + "features"], arrays[prefix + "weights"])
    mesh = _mesh(config)
    patch = softpatch.predict(test, bank, soft, budget, m.num_nn, mesh)
    if m.reweight_neighbours > 0:
        image = softpatch.reweighted_image_scores(test, patch, bank, m.reweight_neighbours,
                                                  budget)
    else:
        image = patch.max(axis=1)
    if m.method == "softpatch_plus":  # maps from the segmentation bank
        seg = softpatch.MemoryBank(arrays["seg_features"], arrays["seg_weights"])
        patch = softpatch.predict(test, seg, soft, budget, m.num_nn, mesh)
    return image, patch.reshape(t, *grid)
