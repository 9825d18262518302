"""How contaminated an unlabeled training pile looks, from its denoising's patch noise scores.

`estimate` takes the (B, P) patch scores a discriminator gives the training patches (higher =
more likely noise) and returns the estimated share of defective images and of defective
patches:

1. Each image's noise score is the logarithm of its highest patch score: a defect may cover a
   handful of patches, fewer than any quantile below the maximum would see, and discriminator
   scores (LOF's density ratios, distances) are skewed, roughly symmetric on a log scale.
2. Images whose score is an outlier by Iglewicz and Hoaglin's modified z-score
   0.6745 (x - median) / MAD > 3.5 are counted as defective (the audit's `auto` rule). The median
   and the MAD stay on the clean images while fewer than half are defective, so the count holds
   up to the 40% of SoftPatch+'s experiments, and on a clean pile it is 0 unless an image is an
   outlier by that margin.
3. The defective patches are the patches of the counted images whose own modified z-score (log
   scale), by the median and MAD of the other images' patches, exceeds the same 3.5.

Tried on generated piles (LOF under position grouping, 60 images of 36 patches, defects on 2-5
patches, 0-40% of the images, three seeds; `tests/evaluation/test_contamination.py` builds
them): the log-maximum rule above is within 0.006 of the truth everywhere; the same rule on the
raw maximum says 0.02 on clean piles; on the audit's 0.9 quantile it misses small defects (0.19
at 40%); a two-component Gaussian mixture on the log scores, chosen by BIC, splits clean piles
(0.94); the largest gap in the sorted scores always finds one (0.03 on clean piles, 0.16 at 40%);
counting images with any outlying patch says 0.83 on clean piles (the patch scores' tail).

`auto_ratio` turns the image share into a removal ratio: `FACTOR` times the share (1.5: the
papers' tau = 0.15 at their 10% noise), between `FLOOR` (0: a pile that looks clean loses
nothing, and SoftPatch then equals PatchCore) and `CEILING` (0.5: SoftPatch+'s segmentation
ratio, the most either paper removes; beyond it the bank loses normal variety).
"""
import dataclasses

import numpy as np

from softpatch_jax.evaluation import audit

FACTOR, FLOOR, CEILING = 1.5, 0.0, 0.5
SEG_FACTOR = 5.0  # SoftPatch+'s segmentation bank: 0.5 at 10% as its paper, capped at CEILING


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Estimated contamination of B training images: `images` (share of defective images),
    `patches` (share of defective patches), `flagged` (B,) bool, the images counted."""
    images: float
    patches: float
    flagged: np.ndarray

    def record(self) -> dict:
        return {"contamination_images": self.images, "contamination_patches": self.patches}


def modified_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """0.6745 (values - median) / MAD of `reference`; the scale falls back to 1.2533 times the
    mean absolute deviation where the MAD is 0, and to no outliers where both are 0."""
    reference = np.asarray(reference, np.float64)
    centre = np.median(reference)
    mad = np.median(np.abs(reference - centre))
    if mad > 0:
        return 0.6745 * (np.asarray(values, np.float64) - centre) / mad
    spread = 1.2533 * np.mean(np.abs(reference - centre))
    if spread > 0:
        return (np.asarray(values, np.float64) - centre) / spread
    return np.zeros(np.shape(values))


def estimate(patch_scores: np.ndarray) -> Estimate:
    """(B, P) patch noise scores -> Estimate (module docstring). Deterministic: no randomness
    beyond the scores'."""
    scores = np.asarray(patch_scores, np.float64)
    if scores.ndim != 2 or not np.isfinite(scores).all():
        raise ValueError(f"patch noise scores must be finite and (B, P), got {scores.shape}")
    logs = np.log(np.maximum(scores, np.finfo(np.float64).tiny))
    image = logs.max(axis=1)
    flagged = modified_z(image, image) > audit.MODIFIED_Z
    patches = 0.0
    if flagged.any() and not flagged.all():
        z = modified_z(logs[flagged], logs[~flagged])
        patches = float((z > audit.MODIFIED_Z).sum() / scores.size)
    return Estimate(float(flagged.mean()), patches, flagged)


def auto_ratio(images: float, factor: float = FACTOR) -> float:
    """The removal ratio for an estimated share of defective images (module docstring)."""
    return float(min(CEILING, max(FLOOR, factor * images)))
