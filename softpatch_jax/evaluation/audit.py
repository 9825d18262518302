"""The training-set audit: which training images are defective, from the denoising alone.

A method's denoising scores every training patch (`methods.base.TrainingNoise`); an image's
noise score condenses its P patch scores (`image_noise_scores`), images are ranked by it and the
most suspicious are flagged at an estimated contamination (`flag`). Where the injected noise is
known (our protocol), `audit_metrics` says how well the ranking finds it.
"""
from typing import Dict, Optional, Union

import numpy as np

from softpatch_jax.evaluation import metrics

RULES = ("quantile", "max", "mean", "removed_share")
# Iglewicz and Hoaglin's cut-off for the modified z-score 0.6745 (x - median) / MAD.
MODIFIED_Z = 3.5


def image_noise_scores(patch_scores: np.ndarray, removed: Optional[np.ndarray] = None,
                       rule: str = "quantile", quantile: float = 0.9) -> np.ndarray:
    """(B, P) patch noise scores (higher = more likely noise) -> (B,) image noise scores.

    rule: `quantile` (the image's `quantile` of its patch scores, linear interpolation as
    np.quantile), `max`, `mean`, or `removed_share` (the share of its patches the method kept
    out of the memory bank; needs `removed` (B, P) bool)."""
    scores = np.asarray(patch_scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"patch scores must be (B, P), got {scores.shape}")
    if rule == "quantile":
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"audit.quantile={quantile} must lie in [0, 1]")
        return np.quantile(scores, quantile, axis=1)
    if rule == "max":
        return scores.max(axis=1)
    if rule == "mean":
        return scores.mean(axis=1)
    if rule == "removed_share":
        if removed is None:
            raise ValueError("audit.score=removed_share needs a method that removes patches "
                             "(softpatch with a discriminator, softpatch_plus); choose "
                             f"one of {', '.join(r for r in RULES if r != 'removed_share')}")
        return np.asarray(removed, np.float64).mean(axis=1)
    raise ValueError(f"audit.score={rule!r} is unknown; choose one of {', '.join(RULES)}")


def flag(scores: np.ndarray, contamination: Union[str, float] = "auto") -> np.ndarray:
    """(B,) image noise scores -> (B,) bool, the images flagged as defective.

    contamination: a share in [0, 1) flags the round(share * B) highest scores (ties broken by
    order); `auto` estimates it: the scores whose modified z-score 0.6745 (x - median) / MAD
    exceeds 3.5 (Iglewicz and Hoaglin's outlier rule; the scale falls back to the mean absolute
    deviation times 1.2533 where the MAD is 0)."""
    scores = np.asarray(scores, np.float64)
    if contamination == "auto":
        centre = np.median(scores)
        mad = np.median(np.abs(scores - centre))
        if mad > 0:
            z = 0.6745 * (scores - centre) / mad
        else:
            spread = 1.2533 * np.mean(np.abs(scores - centre))
            z = (scores - centre) / spread if spread > 0 else np.zeros_like(scores)
        return z > MODIFIED_Z
    share = float(contamination)
    if not 0.0 <= share < 1.0:
        raise ValueError(f"audit.contamination={contamination!r} must be 'auto' or a share in "
                         "[0, 1)")
    return flag_highest(scores, int(round(share * scores.size)))


def flag_highest(scores: np.ndarray, n: int) -> np.ndarray:
    """(B,) scores -> (B,) bool, the n highest flagged (ties broken by order)."""
    flagged = np.zeros(np.size(scores), bool)
    flagged[np.argsort(-np.asarray(scores, np.float64), kind="stable")[:n]] = True
    return flagged


def ranks(scores: np.ndarray) -> np.ndarray:
    """(B,) -> (B,) int, 1 = the highest score (ties broken by order)."""
    out = np.empty(len(scores), np.int64)
    out[np.argsort(-np.asarray(scores, np.float64), kind="stable")] = np.arange(1, len(scores) + 1)
    return out


def audit_metrics(injected: np.ndarray, scores: np.ndarray) -> Dict[str, Optional[float]]:
    """injected: (B,) bool, the training images the protocol injected; scores: (B,) image noise
    scores -> audit_auroc, audit_ap and audit_precision_at_n (the share of injected images among
    the n highest scores, n = the number injected); NaN where there is no injected image or no
    clean one (AUROC)."""
    injected = np.asarray(injected, bool)
    n = int(injected.sum())
    at_n = float("nan")
    if n:
        top = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:n]
        at_n = float(injected[top].mean())
    return {"audit_auroc": metrics.auroc(injected, scores),
            "audit_ap": metrics.average_precision(injected, scores),
            "audit_precision_at_n": at_n}
