"""PaDiM (Defard et al.): a multivariate Gaussian per patch position over `padim_dim` random
channels of the first three feature levels (features/padim.py); the anomaly map is the Mahalanobis
distance, upsampled and blurred, and the image score is the maximum of that map."""
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.evaluation import anomaly_map
from softpatch_jax.features.backbones import padim_dim
from softpatch_jax.methods.base import Features, FeatureSpec, Method, Scores
from softpatch_jax.methods.registry import register
from softpatch_jax.ops import gaussian
from softpatch_jax.settings import comma_list


@flax.struct.dataclass
class GaussianState:
    mean: np.ndarray        # (P, d)
    chol: np.ndarray        # (P, d, d) lower Cholesky factor of cov + reg * I

    def to_arrays(self):
        return {"mean": np.asarray(self.mean), "chol": np.asarray(self.chol)}

    @classmethod
    def from_arrays(cls, arrays) -> "GaussianState":
        return cls(np.asarray(arrays["mean"]), np.asarray(arrays["chol"]))


def feature_options(config) -> dict:
    """PaDiM's feature fields (shared with FYD): taps and channel count (0 = the paper's for the
    backbone)."""
    p = config.padim
    if p.dim < 0:
        raise ValueError(f"padim.dim={p.dim} must be >= 0 (0 = the backbone's default)")
    return dict(layers=tuple(comma_list(p.layers)),
                channels=p.dim or padim_dim(config.backbone.name),
                image_size=config.data.image_size, blur_sigma=config.model.blur_sigma,
                budget_mb=config.runtime.memory_budget_mb)


class PaDiM(Method):
    name = "padim"

    def __init__(self, *, layers, channels: int = 100, image_size: int = 224,
                 blur_sigma: float = 4.0, budget_mb: float = 1024, reg: float = 0.01):
        self.features = FeatureSpec(tuple(layers), channels)
        self.image_size, self.blur_sigma = image_size, blur_sigma
        self.budget_mb, self.reg = budget_mb, reg

    @classmethod
    def from_config(cls, config) -> "PaDiM":
        return cls(**feature_options(config))

    def fit(self, features: Features, key: jax.Array, learned=None,
            progress: bool = True) -> GaussianState:
        g = gaussian.fit(features.patches, self.reg, self.budget_mb, progress)
        return GaussianState(g.mean, g.chol)

    def gaussian_scores(self, gaussians: GaussianState, features: Features,
                        unwarp: Optional[callable] = None) -> Scores:
        """Mahalanobis grids; `unwarp(grids)` maps them back to the input frame first (FYD).
        The image score is the maximum of the smoothed map."""
        grids = gaussian.score(features.patches, gaussian.Gaussians(gaussians.mean,
                                                                    gaussians.chol),
                               self.budget_mb).reshape(len(features), *features.grid)
        if unwarp is not None:
            grids = unwarp(grids)
        maps = anomaly_map.anomaly_maps(grids, self.image_size, self.blur_sigma)
        return Scores(maps.max(axis=(1, 2)), grids, self.image_size, self.blur_sigma, maps)

    def score(self, fitted: GaussianState, features: Features) -> Scores:
        return self.gaussian_scores(fitted, features)

    def traced_scorer(self, fitted):
        """Mahalanobis patch scores (`gaussian.score_chunk` on every position at once); the
        image score is the map's maximum (None)."""
        inputs = {"gaussians": {"mean": np.asarray(fitted.mean, np.float32),
                                "chol": np.asarray(fitted.chol, np.float32)}}

        def scorer(x, feats):
            dist = gaussian.score_chunk(jnp.transpose(feats, (1, 0, 2)), x["gaussians"]["mean"],
                                        x["gaussians"]["chol"])
            return dist.T, None
        return scorer, inputs

    def fitted_from_arrays(self, arrays) -> GaussianState:
        return GaussianState.from_arrays(arrays)


register(PaDiM)
