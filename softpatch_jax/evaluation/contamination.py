"""How contaminated an unlabeled training pile looks: the share of defective images and of
defective patches, without labels.

The share of defective images is the share of training images the audit flags: their left-out
anomaly scores (each image scored by a fit without its own bank entries: the audit's default
score) that Iglewicz and Hoaglin's modified z-score 0.6745 (x - median) / MAD puts above 3.5
(`audit.flag`, `auto`). So one number says how contaminated the pile looks: the audit's flags,
the label-free thresholds (which drop the flagged images) and the `auto` removal ratios
(methods/softpatch.py: from the same rule on a provisional fit at the fixed ratio) all use it.
`estimate(patch_scores, flagged)` records it; the defective patches are the patches of the
flagged images that are outliers (modified z-score of the log score > 3.5) against the other
images' patches, in a discriminator's (B, P) patch scores (higher = more likely noise).

Without an audit (`audit.enabled=False`, or no left-out scores) `estimate(patch_scores)` flags
by the same rule on each image's log-maximum patch score.

Measured on real piles (docs/studies.md, issue 27; SoftPatch-LOF, true share / left-out /
log-max): transistor clean 0 / 0.014 / 0.005, 10% 0.090 / 0.094 / 0.047, 40% repeated 0.285 /
0.131 / 0.023; ELPV mono clean 0 / 0.040 / 0, 10% 0.091 / 0.045 / 0.009. The left-out score sees
defects the density ratios miss (the provisional fit removed their patches, so nothing in the
bank matches them). No rule on these scores reaches the truth everywhere: defective and normal
images' scores overlap (LOF's image AUROC 0.66-0.99 on these piles), so the share is not
identifiable without assuming the normal scores' shape, and the rules that assume one (a
two-component mixture, a symmetric normal tail) miss by more (0.10-0.33 on clean transistor).

Tried on generated piles (LOF under position grouping, 60 images of 36 patches, defects on 2-5
patches, 0-40% of the images, three seeds; `tests/evaluation/test_contamination.py` builds
them), for the log-maximum rule: within 0.006 of the truth everywhere; the same rule on the raw
maximum says 0.02 on clean piles; on the audit's 0.9 quantile it misses small defects (0.19 at
40%); a two-component Gaussian mixture on the log scores, chosen by BIC, splits clean piles
(0.94); the largest gap in the sorted scores always finds one (0.03 on clean piles, 0.16 at 40%);
counting images with any outlying patch says 0.83 on clean piles (the patch scores' tail).

`auto_ratio` turns the image share into a removal ratio: `FACTOR` times the share (1.5: the
papers' tau = 0.15 at their 10% noise), between `FLOOR` (0: a pile that looks clean loses
nothing, and SoftPatch then equals PatchCore) and `CEILING` (0.5: SoftPatch+'s segmentation
ratio, the most either paper removes; beyond it the bank loses normal variety).
"""
import dataclasses
from typing import Optional

import numpy as np

from softpatch_jax.evaluation import audit

FACTOR, FLOOR, CEILING = 1.5, 0.0, 0.5
SEG_FACTOR = 5.0  # SoftPatch+'s segmentation bank: 0.5 at 10% as its paper, capped at CEILING


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Estimated contamination of B training images: `images` (share of defective images),
    `patches` (share of defective patches; None without patch scores), `flagged` (B,) bool, the
    images counted, and `source`, what flagged them: `left_out` (the audit's rule on the
    left-out scores of a provisional fit), `audit` (the run's audit) or `patch_max` (the
    log-maximum patch score)."""
    images: float
    patches: Optional[float]
    flagged: np.ndarray
    source: str = "patch_max"

    def record(self) -> dict:
        return {"contamination_images": self.images, "contamination_patches": self.patches,
                "contamination_source": self.source}


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


def estimate(patch_scores: Optional[np.ndarray], flagged: Optional[np.ndarray] = None,
             source: Optional[str] = None) -> Estimate:
    """(B, P) patch noise scores (None: no patch share) and the (B,) bool images `flagged` by
    `source` (module docstring) -> Estimate; without `flagged`, the log-maximum rule flags them.
    Deterministic: no randomness beyond the scores'."""
    logs = None
    if patch_scores is not None:
        scores = np.asarray(patch_scores, np.float64)
        if scores.ndim != 2 or not np.isfinite(scores).all():
            raise ValueError(f"patch noise scores must be finite and (B, P), got {scores.shape}")
        logs = np.log(np.maximum(scores, np.finfo(np.float64).tiny))
    if flagged is None:
        if logs is None:
            raise ValueError("the contamination estimate needs patch scores or flagged images")
        image = logs.max(axis=1)
        flagged, source = modified_z(image, image) > audit.MODIFIED_Z, "patch_max"
    flagged = np.asarray(flagged, bool)
    patches = None
    if logs is not None:
        patches = 0.0
        if flagged.any() and not flagged.all():
            z = modified_z(logs[flagged], logs[~flagged])
            patches = float((z > audit.MODIFIED_Z).sum() / logs.size)
    return Estimate(float(flagged.mean()), patches, flagged, source or "patch_max")


def auto_ratio(images: float, factor: float = FACTOR) -> float:
    """The removal ratio for an estimated share of defective images (module docstring)."""
    return float(min(CEILING, max(FLOOR, factor * images)))
