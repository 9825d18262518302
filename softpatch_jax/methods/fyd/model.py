"""FYD (Focus Your Distribution): coarse-to-fine non-contrastive alignment, then PaDiM scoring.

No official code exists; this follows METHOD.md and fills the gaps with choices of ours
(docs/methods.md, "FYD"). Pieces, all pure functions over explicit variables:

- Image-level coarse alignment: a spatial transformer warps each image; trained only by the pixel
  loss, the mean squared difference between every pair of warped images in a batch, counted where
  both warps sample inside their image (so pushing content out of frame cannot lower it).
- Feature-level coarse alignment: a spatial transformer after each tapped backbone stage, inline
  (the next stage sees the aligned map), trained only through the fine-alignment loss.
- Fine alignment: per tapped stage a projector and a predictor (1x1, with BatchNorm, SimSiam-style);
  negative cosine similarity between the prediction at a location of image i and the stop-gradient
  projection at the same location of every other image j in the batch; no negatives.
- The backbone is frozen (ImageNet weights, BatchNorm in inference mode); ours, so that the PaDiM
  features keep their ImageNet meaning and training fits on a CPU.
- Scoring (methods/fyd/method.py): PaDiM on the aligned tapped maps. Anomaly maps are computed in the aligned
  frame and warped back to the input frame with the image warp composed with the finest tap's warp.
"""
import dataclasses
import functools
from typing import Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax import shapes
from softpatch_jax.features import padim
from softpatch_jax.features.extractor import finest_first, run_batches
from softpatch_jax.features.types import Features
from softpatch_jax.methods.fyd import stn
from softpatch_jax.ops import warp as affine


class Heads(nn.Module):
    """Projector (Dense-BN-ReLU-Dense-BN) and predictor (Dense-BN-ReLU-Dense) per location.
    x (B, P, C) -> (z, p), both (B, P, proj_dim)."""
    proj_dim: int = 256
    pred_dim: int = 64

    @nn.compact
    def __call__(self, x, train: bool):
        bn = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        z = nn.relu(bn(name="proj_bn1")(nn.Dense(self.proj_dim, name="proj1")(x)))
        z = bn(name="proj_bn2")(nn.Dense(self.proj_dim, name="proj2")(z))
        p = nn.relu(bn(name="pred_bn1")(nn.Dense(self.pred_dim, name="pred1")(z)))
        return z, nn.Dense(self.proj_dim, name="pred2")(p)


@dataclasses.dataclass(frozen=True)
class FYD:
    """The FYD modules around a tapped backbone. `taps`: the backbone's tapped stages."""
    backbone: nn.Module
    taps: Tuple[str, ...]
    image_stn: stn.SpatialTransformer
    feature_stn: stn.SpatialTransformer
    heads: Heads
    align_images: bool = True
    align_features: bool = True


def build(f, backbone: nn.Module, taps: Sequence[str]) -> FYD:
    """The FYD modules of `f`, FYD's `train.Options`."""
    bounds = dict(max_scale=f.max_scale, max_rotation=f.max_rotation,
                  max_translation=f.max_translation, max_shear=f.max_shear)
    return FYD(backbone, tuple(taps),
               stn.SpatialTransformer(f.transform, f.padding, 64, **bounds),
               stn.SpatialTransformer(f.feature_transform, "border", 16, **bounds),
               Heads(f.proj_dim, f.pred_dim), f.align_images, f.align_features)


def init(model: FYD, key: jax.Array, tap_shapes: Dict[str, Tuple[int, ...]],
         image_size) -> Dict:
    """-> {'params': {...}, 'batch_stats': {...}} of the FYD modules (not the backbone).
    `tap_shapes`: the backbone's tapped map shapes for a batch of 2 images of `image_size`
    (N or (height, width))."""

    @jax.jit  # one compilation instead of one per initialiser
    def _init(key):
        keys = jax.random.split(key, 1 + 2 * len(model.taps))
        params = {"image_stn": model.image_stn.init(
            keys[0], jnp.zeros((2, *shapes.hw(image_size), 3)))["params"]}
        params["feature_stn"], params["heads"], stats = {}, {}, {}
        for i, tap in enumerate(model.taps):
            shape = tap_shapes[tap]
            params["feature_stn"][tap] = model.feature_stn.init(keys[1 + 2 * i],
                                                                jnp.zeros(shape))["params"]
            hv = model.heads.init(keys[2 + 2 * i], jnp.zeros((2, 4, shape[-1])), train=False)
            params["heads"][tap], stats[tap] = hv["params"], hv["batch_stats"]
        return {"params": params, "batch_stats": {"heads": stats}}

    # Same seed, another generator: XLA compiles the many threefry initialisers slowly on CPU
    # (seconds each); the RBG generator compiles about 4x faster.
    rbg = jax.random.wrap_key_data(jnp.tile(jax.random.key_data(key), 2), impl="unsafe_rbg")
    return _init(rbg)


def _validity(shape, theta):
    """(B, h, w, 1) share of each warped pixel that was sampled inside the source. A constant for
    the gradient: the losses weigh locations by it but cannot learn by moving it."""
    return jax.lax.stop_gradient(
        affine.warp(jnp.ones(shape[:3] + (1,), jnp.float32), theta, "zeros"))


def align(model: FYD, params, backbone_vars, images):
    """images (B, H, W, 3) -> (aligned tapped maps {tap: (B, h, w, C)}, warps {name: (B, 2, 3)},
    validity masks {name: (B, h, w, 1)} of the image ('image') and of each tap's warp, the
    image-aligned images)."""
    b = images.shape[0]
    warps = {"image": affine.identity(b)}
    aligned = images
    valid = {"image": jnp.ones(images.shape[:3] + (1,), jnp.float32)}
    if model.align_images:
        aligned, theta = model.image_stn.apply({"params": params["image_stn"]}, images)
        valid["image"], warps["image"] = _validity(images.shape, theta), theta

    def hook(name, x):
        if name not in model.taps:
            return x
        if not model.align_features:
            valid[name] = jnp.ones(x.shape[:3] + (1,), jnp.float32)
            return x
        out, theta = model.feature_stn.apply({"params": params["feature_stn"][name]},
                                             x.astype(jnp.float32))
        warps[name], valid[name] = theta, _validity(x.shape, theta)
        return out.astype(x.dtype)

    # The image warp learns from the pixel loss only.
    maps = model.backbone.clone(tap_hook=hook).apply(backbone_vars,
                                                     jax.lax.stop_gradient(aligned))
    return maps, warps, valid, aligned


def pixel_loss(images: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Mean squared difference over all pairs i != j of (B, H, W, C) images, per pixel where both
    are valid ((B, H, W, 1) masks in [0, 1]); O(B) through the pair-sum identity
    sum_ij m_i m_j (x_i - x_j)^2 = 2 (S_m S_mxx - S_mx^2)."""
    m = valid
    s_m, s_mm = m.sum(0), (m * m).sum(0)
    s_mx, s_mxx = (m * images).sum(0), (m * images * images).sum(0)
    num = 2.0 * (s_m * s_mxx - s_mx * s_mx)                    # (H, W, C)
    den = (s_m * s_m - s_mm) * images.shape[-1]               # pairs i != j, per pixel
    return num.sum() / jnp.maximum(den.sum(), 1e-6)


def pairwise_negative_cosine(p: jnp.ndarray, z: jnp.ndarray, valid=None) -> jnp.ndarray:
    """-mean over locations and ordered pairs i != j of cos(p_i, stopgrad(z_j)); p, z (B, P, D).
    `valid` (B, P): pair weights m_i m_j (locations a warp filled from outside count less), so
    that warping content out of the frame cannot make images agree. O(B) via pair sums."""
    m = jnp.ones(p.shape[:2], p.dtype) if valid is None else jax.lax.stop_gradient(valid)
    pn = p / jnp.maximum(jnp.linalg.norm(p, axis=-1, keepdims=True), 1e-8)
    zn = jax.lax.stop_gradient(z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8))
    mp, mz = pn * m[..., None], zn * m[..., None]
    total = jnp.sum(mp.sum(0) * mz.sum(0)) - jnp.sum(mp * mz)  # all pairs minus i == j
    pairs = jnp.sum(m.sum(0) ** 2) - jnp.sum(m * m)
    return -total / jnp.maximum(pairs, 1e-6)


def centring_penalty(theta: jnp.ndarray) -> jnp.ndarray:
    """Squared distance of the batch's mean warp (B, 2, 3) from the identity. Only the warps
    relative to one another align anything; a drift shared by all images (everything zoomed out,
    shifted or turned at once) only moves content off the frame, so it is held at zero (ours)."""
    return jnp.sum((theta.mean(0) - affine.identity(1)[0]) ** 2)


def smooth(images: jnp.ndarray, factor: int) -> jnp.ndarray:
    """(B, H, W, C) -> antialiased downsampling by `factor` (1: unchanged)."""
    if factor <= 1:
        return images
    b, h, w, c = images.shape
    return jax.image.resize(images, (b, h // factor, w // factor, c), "linear", antialias=True)


def losses(model: FYD, params, batch_stats, backbone_vars, images, image_weight: float = 1.0,
           pixel_factor: int = 4, centre_weight: float = 10.0):
    """Training losses of one batch (B >= 2) -> (total, (metrics, new batch_stats)).
    The pixel loss compares the warped images downsampled by `pixel_factor` (antialiased): a
    smoother objective whose gradients reach farther than sharp edges' (ours). Each warp's mean
    over the batch is held at the identity by `centre_weight` x `centring_penalty`."""
    maps, warps, valid, aligned = align(model, params, backbone_vars, images)
    img = pixel_loss(smooth(aligned, pixel_factor), smooth(valid["image"], pixel_factor)) \
        if model.align_images else jnp.zeros(())
    fine, new_stats = [], {}
    for tap in model.taps:
        x = maps[tap].astype(jnp.float32)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        (z, p), upd = model.heads.apply(
            {"params": params["heads"][tap], "batch_stats": batch_stats["heads"][tap]}, x,
            train=True, mutable=["batch_stats"])
        new_stats[tap] = upd["batch_stats"]
        fine.append(pairwise_negative_cosine(p, z, valid[tap].reshape(x.shape[0], -1)))
    fine = jnp.mean(jnp.stack(fine))
    centre = sum(centring_penalty(t) for name, t in warps.items()
                 if (name == "image" and model.align_images) or
                 (name != "image" and model.align_features))
    total = image_weight * img + fine + centre_weight * centre
    return total, ({"loss": total, "pixel": img, "fine": fine, "centre": centre},
                   {"heads": new_stats})


class AlignedEmbedder:
    """PaDiM features of the aligned maps, with each image's warp back to the input frame; the
    extractor interface of `features.extractor.Embedder`.

    `base`: the PaDiM Embedder (backbone, taps, channel selection); `variables`: FYD's."""

    def __init__(self, base, model: FYD, variables):
        self.base, self.model = base, model
        self.variables = variables
        self.params = jax.tree.map(jnp.asarray, variables["params"])
        self.embed_dim, self.layers = base.embed_dim, base.layers
        channels = np.asarray(base.padim_channels)

        def feats(params, bb, images):
            maps, warps, _, _ = align(model, params, bb, images)
            ordered = finest_first(maps, model.taps)
            finest = max(model.taps, key=lambda t: maps[t].shape[1])
            warp = warps["image"]
            if finest in warps:  # finest-grid position -> aligned image -> input image
                warp = affine.compose(warps["image"], warps[finest])
            return padim.padim_features([m.astype(jnp.float32) for m in ordered], channels), warp

        jitted = jax.jit(feats)
        self._fn = lambda imgs: jitted(self.params, self.base.variables, jnp.asarray(imgs))

    def grid(self, image_size: int) -> Tuple[int, int]:
        return self.base.grid(image_size)

    def embed(self, samples, resize: int, image_size: int, batch_size: int = 16,
              desc: str = "features") -> np.ndarray:
        """-> (N, P, E) PaDiM features of the aligned maps."""
        return run_batches(self._fn, samples, resize, image_size, batch_size, desc)[0]

    def extract(self, samples, resize: int, image_size: int, batch_size: int = 16,
                desc: str = "features") -> Features:
        """-> Features with the warps (N, 2, 3) from the finest grid's frame to the input."""
        feats, warps = run_batches(self._fn, samples, resize, image_size, batch_size, desc)
        return Features(feats, self.grid(image_size), warps)


def unwarp_grids(grids: np.ndarray, warps: np.ndarray) -> np.ndarray:
    """`ops.warp.unwarp` on host arrays (float32)."""
    return np.asarray(affine.unwarp(jnp.asarray(grids, jnp.float32),
                                    jnp.asarray(warps, jnp.float32)))
