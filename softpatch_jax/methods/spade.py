"""SPADE (Cohen and Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences",
2020), the SoftPatch paper's BTAD baseline: kNN over pooled image features picks each test
image's `image_k` nearest training images, whose mean distance is the image score; each test
patch's anomaly score is the mean distance to its `pixel_k` nearest patches among those images'
patches (any position); the map is upsampled and blurred (`model.blur_sigma`, the paper's 4).

Deviations (docs/methods.md, "SPADE"): the image feature is the mean of our patch features over
the grid (`backbone.layers`), not a separate last-stage pooling; the pixel features are our
patch features (the bank methods'), not the paper's concatenated WideResNet pyramid.
"""
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.methods.base import Features, FeatureSpec, Method
from softpatch_jax.methods.registry import register
from softpatch_jax.ops.chunking import chunk_size
from softpatch_jax.settings import comma_list


@flax.struct.dataclass
class Gallery:
    patches: np.ndarray   # (B, P, D) every training patch
    pooled: np.ndarray    # (B, D) each training image's mean patch

    def to_arrays(self):
        return {"patches": np.asarray(self.patches), "pooled": np.asarray(self.pooled)}

    @classmethod
    def from_arrays(cls, arrays) -> "Gallery":
        return cls(np.asarray(arrays["patches"]), np.asarray(arrays["pooled"]))


def _squared(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """(N, D), (M, D) -> (N, M) squared distances by the expansion (for ranking)."""
    return (jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :]
            - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))


def spade_scores(feats: jnp.ndarray, gallery: dict, image_k: int, pixel_k: int, rows: int):
    """(N, P, D) test patches, {'patches': (B, P, D), 'pooled': (B, D)} -> ((N, P) patch
    scores: mean distance to the `pixel_k` nearest patches of the image's `image_k` nearest
    training images; (N,) image scores: the mean distance to those images' pooled features).
    Traceable; `rows` test images at a time (lax.map over chunks)."""
    n, p, d = feats.shape
    feats, train = jnp.asarray(feats), jnp.asarray(gallery["patches"])
    pooled = jnp.mean(feats, axis=1)
    # Differences, not the |a|^2 + |b|^2 - 2ab expansion: which images are nearest must not
    # turn on rounding (N x B x D is small).
    diff = pooled[:, None, :] - jnp.asarray(gallery["pooled"])[None]
    img_d = jnp.sqrt(jnp.sum(diff * diff, axis=-1))                 # (N, B)
    neg, nearest = jax.lax.top_k(-img_d, image_k)                  # (N, K)
    image = -jnp.mean(neg, axis=1)

    def one(args):
        x, idx = args                                               # (P, D), (K,)
        bank = train[idx].reshape(-1, d)                            # (K * P, D)
        # Nearest by the expansion, then their distances by differences: near 0 (a test
        # image that is also a training image) the expansion's rounding, under the root,
        # would be most of the value.
        _, near = jax.lax.top_k(-_squared(x, bank), pixel_k)       # (P, k)
        diff = x[:, None, :] - bank[near]
        return jnp.mean(jnp.sqrt(jnp.sum(diff * diff, axis=-1)), axis=1)

    pad = (-n) % rows
    xs = jnp.concatenate([feats, jnp.repeat(feats[-1:], pad, axis=0)]) if pad else feats
    ids = jnp.concatenate([nearest, jnp.repeat(nearest[-1:], pad, axis=0)]) if pad else nearest
    patch = jax.lax.map(lambda a: jax.vmap(one)(a), (xs.reshape(-1, rows, p, d),
                                                     ids.reshape(-1, rows, image_k)))
    return patch.reshape(-1, p)[:n], image


class SPADE(Method):
    name = "spade"

    def __init__(self, *, layers, image_k: int = 50, pixel_k: int = 1, image_size=224,
                 blur_sigma: float = 4.0, budget_mb: float = 1024):
        self.features = FeatureSpec(tuple(layers))
        self.image_k, self.pixel_k = image_k, pixel_k
        self.image_size, self.blur_sigma, self.budget_mb = image_size, blur_sigma, budget_mb

    @classmethod
    def from_config(cls, config) -> "SPADE":
        s = config.spade
        for field in ("image_k", "pixel_k"):
            if s[field] < 1:
                raise ValueError(f"spade.{field}={s[field]} must be >= 1")
        return cls(layers=comma_list(config.backbone.layers), image_k=s.image_k,
                   pixel_k=s.pixel_k, image_size=config.data.image_size,
                   blur_sigma=config.model.blur_sigma,
                   budget_mb=config.runtime.memory_budget_mb)

    @property
    def label(self) -> str:
        return f"{self.image_k} images"

    def check(self, n_train: int) -> None:
        if n_train < self.image_k:
            raise ValueError(f"model.method=spade with spade.image_k={self.image_k} needs at "
                             f"least that many training images, but there are {n_train}; "
                             "lower spade.image_k or add training images")

    def fit(self, features: Features, key: jax.Array, learned=None,
            progress: bool = True) -> Gallery:
        patches = np.asarray(features.patches, np.float32)
        return Gallery(patches, patches.mean(axis=1))

    def traced_scorer(self, fitted: Gallery):
        """`spade_scores` on the gallery: the base class scores with it (jitted) and export
        serialises it."""
        b, p, d = fitted.patches.shape
        if b < self.image_k:
            raise ValueError(f"spade.image_k={self.image_k} exceeds the {b} training images "
                             "of this model")
        rows = max(1, min(64, chunk_size(4 * 3 * self.image_k * p * (p + d), self.budget_mb)))
        fn = functools.partial(spade_scores, image_k=self.image_k, pixel_k=self.pixel_k,
                               rows=rows)
        return (lambda inputs, feats: fn(feats, inputs["gallery"]),
                {"gallery": {"patches": np.asarray(fitted.patches, np.float32),
                             "pooled": np.asarray(fitted.pooled, np.float32)}})

    def fitted_from_arrays(self, arrays) -> Gallery:
        return Gallery.from_arrays(arrays)

    def summary(self, fitted: Gallery) -> dict:
        return {"gallery_images": int(fitted.patches.shape[0])}


register(SPADE)
