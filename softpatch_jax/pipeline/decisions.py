"""From scores to decisions without labels: the training-set audit and the label-free thresholds
of one category, and the test figures at those thresholds.

At fit time (`fit_and_calibrate`), with the training features still in memory:
  1. the method's denoising scores every training patch (`Method.fit_with_noise`); methods
     without one get a LOF pass over their patch features (`audit.lof_pass`);
  2. each training image is scored as if left out of the fit: in one pass where the method has
     that form (`Method.training_scores`: the memory-bank methods mask the entries taken from
     the image), else by refitting on `threshold.folds` seeded folds. With
     `runtime.exact_pruning` (the default) the one pass computes only the patches that can
     decide an image score or the pixel threshold (`Method.training_bounds`,
     evaluation/pruned.py): the same figures, bit for bit;
  3. each training image gets a noise score (by default its left-out score of step 2, which
     every method has; or a summary of the denoising's patch scores: docs/usage.md,
     "Deploying on your own parts", compares them), a rank and a flag (evaluation/audit.py);
  4. thresholds at `threshold.false_reject` (images) and `threshold.pixel_false_reject`
     (pixels) of the unflagged training images' scores (evaluation/thresholds.py).
Test labels are never read here. `test_figures` then reports precision, recall, F1, false
reject and false accept (images) and precision, recall, F1 and IoU (pixels) at the thresholds.
"""
import csv
import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from softpatch_jax.evaluation import audit, contamination, metrics, pruned, thresholds
from softpatch_jax.files import write_json
from softpatch_jax.methods.base import Features, Method, Scores, TrainingNoise
from softpatch_jax.timing import NO_CLOCK, StageClock

SOURCES = ("auto", "leave_one_out", "kfold", "none")
# left_out: the image's own left-out anomaly score (step 3), the default; the others condense
# the denoising's patch scores (evaluation/audit.py).
RULES = ("left_out",) + audit.RULES
THRESHOLD_FILE = "threshold.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The audit.* and threshold.* fields of a config, checked."""
    audit: bool = True
    score: str = "left_out"
    quantile: float = 0.9
    contamination: Union[str, float] = "auto"
    lof_pass: bool = True
    lof_k: int = 6
    projection_dim: int = 128
    source: str = "auto"
    folds: int = 5
    false_reject: float = 0.01
    pixel_false_reject: float = 0.01
    budget_mb: float = 1024
    pruning: bool = True  # runtime.exact_pruning: leave-one-out by bounds (same results)

    @classmethod
    def from_config(cls, config) -> "Settings":
        a, t = config.get("audit"), config.get("threshold")
        if a is None or t is None:  # configs written before the audit: both off
            return cls(audit=False, source="none")
        if a.score not in RULES:
            raise ValueError(f"audit.score={a.score!r} is unknown; choose one of "
                             f"{', '.join(RULES)}")
        if not 0.0 <= a.quantile <= 1.0:
            raise ValueError(f"audit.quantile={a.quantile} must lie in [0, 1]")
        contamination = a.contamination
        if contamination != "auto":
            try:
                contamination = float(contamination)
            except ValueError:
                contamination = -1.0
            if not 0.0 <= contamination < 1.0:
                raise ValueError(f"audit.contamination={a.contamination!r} must be 'auto' or a "
                                 "share in [0, 1), e.g. 0.1")
        if t.source not in SOURCES:
            raise ValueError(f"threshold.source={t.source!r} is unknown; choose one of "
                             f"{', '.join(SOURCES)}")
        if t.folds < 2:
            raise ValueError(f"threshold.folds={t.folds} must be at least 2")
        for field in ("false_reject", "pixel_false_reject"):
            if not 0.0 < t[field] < 1.0:
                raise ValueError(f"threshold.{field}={t[field]} must lie in (0, 1), e.g. 0.01")
        return cls(bool(a.enabled), a.score, float(a.quantile), contamination,
                   bool(a.lof_pass), int(config.denoise.lof_k), int(config.bank.projection_dim),
                   t.source, int(t.folds), float(t.false_reject), float(t.pixel_false_reject),
                   float(config.runtime.memory_budget_mb),
                   bool(config.runtime.exact_pruning))


@dataclasses.dataclass
class Calibration:
    """What a fit found about its training images: noise scores (B,) and flags (B,) (None
    without an audit), and the thresholds (None without them) with how they were found."""
    noise_scores: Optional[np.ndarray]
    flagged: Optional[np.ndarray]
    image_threshold: Optional[float] = None
    pixel_threshold: Optional[float] = None
    source: str = "none"
    train_false_reject: Optional[float] = None
    exact_share: Optional[float] = None  # share of left-out patch scores computed (pruning)
    contamination: Optional[Any] = None  # the denoising's estimate (evaluation/contamination)
    ratios: Optional[Dict[str, float]] = None  # the removal ratios the fit applied

    def threshold_record(self, settings: Settings) -> dict:
        return {"image_threshold": self.image_threshold, "pixel_threshold": self.pixel_threshold,
                "false_reject": settings.false_reject,
                "pixel_false_reject": settings.pixel_false_reject, "source": self.source,
                "n_train": None if self.flagged is None else int(self.flagged.size),
                "n_flagged": None if self.flagged is None else int(self.flagged.sum()),
                "train_false_reject": self.train_false_reject}


def _subset(features: Features, rows: np.ndarray) -> Features:
    warps = None if features.warps is None else features.warps[rows]
    return Features(features.patches[rows], features.grid, warps)


@dataclasses.dataclass
class LeftOut:
    """The training images' left-out scores as calibration reads them: `image` (B,), and the
    pixel threshold of the kept images' maps (`pixel_threshold(keep, false_reject)`);
    `exact_share`: the share of patch scores computed (1 without pruning)."""
    image: np.ndarray
    _pixel: Callable[[np.ndarray, float], float]
    _share: Callable[[], float] = lambda: 1.0

    def pixel_threshold(self, keep: np.ndarray, false_reject: float) -> float:
        return self._pixel(keep, false_reject)

    @property
    def exact_share(self) -> float:
        return self._share()

    @classmethod
    def from_scores(cls, scores: Scores) -> "LeftOut":
        return cls(scores.image,
                   lambda keep, rate: thresholds.pixel_threshold(scores.maps(), keep, rate))

    @classmethod
    def from_bounds(cls, image: pruned.BoundedGrids, maps: pruned.BoundedGrids) -> "LeftOut":
        """Exact figures from bounds (evaluation/pruned.py)."""
        grids = [image] if maps is image else [image, maps]
        return cls(pruned.image_maxima(image),
                   lambda keep, rate: pruned.pixel_threshold(maps, keep, rate),
                   lambda: float(np.mean([g.computed_share for g in grids])))


def kfold_scores(method: Method, features: Features, key: jax.Array, learned, folds: int,
                 seed: int = 0) -> Scores:
    """Each training image scored by a fit on the other folds (seeded split into `folds`);
    -> Scores of the B images in their order."""
    b = len(features)
    folds = min(folds, b)
    order = np.random.default_rng(seed).permutation(b)
    image, grids, maps = np.zeros(b), None, None
    for f, rows in enumerate(np.array_split(order, folds)):
        rest = np.setdiff1d(order, rows)
        fitted = method.fit(_subset(features, rest), jax.random.fold_in(key, f), learned,
                            progress=False)
        s = method.score(fitted, _subset(features, rows))
        if grids is None:
            grids = np.zeros((b,) + s.grids.shape[1:], s.grids.dtype)
            size, sigma = s.image_size, s.blur_sigma
        image[rows], grids[rows] = s.image, s.grids
        if s._maps is not None:  # computed while scoring (PaDiM): keep them
            maps = np.zeros((b,) + s._maps.shape[1:], s._maps.dtype) if maps is None else maps
            maps[rows] = s._maps
    return Scores(image, grids, size, sigma, maps)


def _min_fold_train(method: Method, b: int, folds: int) -> bool:
    try:
        method.check(b - int(np.ceil(b / folds)))
        return True
    except ValueError:
        return False


def _leave_one_out(method: Method, fitted, features: Features, pruning: bool) -> LeftOut:
    """Leave-own-image-out scores: by bounds where the method has them and `pruning` (on CPU:
    an accelerator's dense pass is faster than the bounds' host-side rounds), else in one full
    pass; NotImplementedError where the method has neither."""
    if pruning and jax.default_backend() == "cpu":
        try:
            return LeftOut.from_bounds(*method.training_bounds(fitted, features))
        except NotImplementedError:
            pass
    return LeftOut.from_scores(method.training_scores(fitted, features))


def training_scores(method: Method, fitted, features: Features, key: jax.Array, learned,
                    settings: Settings, seed: int):
    """-> (LeftOut scores of the training images, each left out of its own fit, and how:
    'leave_one_out' or 'kfold'), or (None, 'none')."""
    source = settings.source
    if source == "none":
        return None, "none"
    if source in ("auto", "leave_one_out"):
        try:
            return _leave_one_out(method, fitted, features, settings.pruning), "leave_one_out"
        except NotImplementedError as e:
            if source == "leave_one_out":
                raise ValueError(f"threshold.source=leave_one_out: {e}; use threshold.source="
                                 "kfold (or auto)") from None
    if not _min_fold_train(method, len(features), settings.folds):
        raise ValueError(f"threshold.folds={settings.folds} leaves too few training images per "
                         "fit; lower it, or set threshold.source=none")
    return (LeftOut.from_scores(kfold_scores(method, features, key, learned, settings.folds,
                                             seed)), "kfold")


def lof_noise(features: Features, key: jax.Array, settings: Settings) -> TrainingNoise:
    """A LOF pass over the training patch features (position groups, as SoftPatch-LOF's
    discriminator) for methods without a denoising step."""
    from softpatch_jax.methods.softpatch import noise_scores

    return TrainingNoise(noise_scores(features.patches, key, "lof", settings.lof_k,
                                      settings.projection_dim, settings.budget_mb))


def flags(noise_scores: np.ndarray, contamination_field, estimate,
          noise: Optional[TrainingNoise]):
    """The audit's flags of the B training images by their (B,) noise scores, and the
    contamination estimate the run reports, one number for both (evaluation/contamination.py):
    under audit.contamination=auto, the fit's own estimate from left-out scores (an `auto`
    ratio) sets how many of the highest are flagged; else the audit's rule flags them and is the
    estimate. A fixed share flags that share and leaves the fit's estimate as it is."""
    if contamination_field != "auto":
        return audit.flag(noise_scores, contamination_field), estimate
    if estimate is not None and estimate.source == "left_out":
        return audit.flag_highest(noise_scores, int(estimate.flagged.sum())), estimate
    flagged = audit.flag(noise_scores, "auto")
    return flagged, contamination.estimate(None if noise is None else noise.scores_for_estimate,
                                           flagged, "audit")


def fit_and_calibrate(method: Method, features: Features, key: jax.Array, learned,
                      settings: Settings, seed: int = 0, clock: StageClock = NO_CLOCK):
    """The fit, the audit of its training images and the label-free thresholds -> (fitted
    state, Calibration). The fit itself is exactly `method.fit`'s. `clock` gets the fit's
    stages, 'calibration' (left-out scores and thresholds) and 'audit'."""
    state, noise = method.fit_with_noise(features, key, learned, clock=clock)
    cal = Calibration(None, None)
    if noise is not None and noise.estimate is not None:
        cal.contamination, cal.ratios = noise.estimate, noise.ratios
    key_audit, key_folds = jax.random.split(jax.random.fold_in(key, 0x5EED))
    with clock.stage("calibration"):
        scores, cal.source = training_scores(method, state, features, key_folds, learned,
                                             settings, seed)
    with clock.stage("audit"):
        if settings.audit:
            rule = settings.score
            if rule == "left_out" and scores is None:  # threshold.source=none: no left-out scores
                rule = "max"
            if rule == "left_out":
                cal.noise_scores = np.asarray(scores.image, np.float64)
            else:
                if noise is None and settings.lof_pass:
                    noise = lof_noise(features, key_audit, settings)
                if noise is not None:
                    if rule == "removed_share" and noise.removed is None:
                        rule = "max"  # the LOF pass removes nothing
                    cal.noise_scores = audit.image_noise_scores(noise.patch_scores, noise.removed,
                                                                rule, settings.quantile)
            if cal.noise_scores is not None:
                cal.flagged, cal.contamination = flags(cal.noise_scores, settings.contamination,
                                                       cal.contamination, noise)
    if scores is not None:
        with clock.stage("calibration"):
            keep = np.ones(len(features), bool) if cal.flagged is None else ~cal.flagged
            cal.image_threshold = thresholds.image_threshold(scores.image, keep,
                                                             settings.false_reject)
            cal.pixel_threshold = scores.pixel_threshold(keep, settings.pixel_false_reject)
            cal.train_false_reject = float(np.mean(scores.image[keep] >= cal.image_threshold))
            cal.exact_share = scores.exact_share
    return state, cal


def write_audit(path: str, names: Sequence[str], cal: Calibration,
                injected: Optional[np.ndarray] = None) -> None:
    """audit_<category>.csv: file, score, rank (1 = most likely defective), flagged, and
    injected where the protocol knows it; rows by rank."""
    ranks = audit.ranks(cal.noise_scores)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "score", "rank", "flagged"] + (["injected"] if injected is not None
                                                            else []))
        for i in np.argsort(ranks):
            row = [names[i], repr(float(cal.noise_scores[i])), int(ranks[i]),
                   int(cal.flagged[i])]
            w.writerow(row + ([int(injected[i])] if injected is not None else []))


def read_audit(path: str) -> Optional[Tuple[List[str], np.ndarray, np.ndarray]]:
    """An audit file of `write_audit` -> (names, scores, flagged) in its order (by rank); None
    when there is none. One line naming the file when it cannot be read."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return ([r["file"] for r in rows], np.array([float(r["score"]) for r in rows]),
                np.array([r["flagged"] == "1" for r in rows], bool))
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"cannot read the audit {path!r} ({type(e).__name__}: {e}); remove it "
                         "or refit") from None


def write_threshold(directory: str, cal: Calibration, settings: Settings) -> None:
    write_threshold_record(directory, cal.threshold_record(settings))


def write_threshold_record(directory: str, record: dict) -> None:
    """threshold.json (`Calibration.threshold_record`) beside a fitted model."""
    write_json(os.path.join(directory, THRESHOLD_FILE), record)


def read_threshold(directory: str) -> Optional[dict]:
    """The thresholds stored beside a fitted model, or None (fitted before they existed)."""
    import json

    path = os.path.join(directory, THRESHOLD_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def audit_figures(cal: Calibration, injected: np.ndarray) -> Dict[str, Optional[float]]:
    """Audit AUROC / AP / precision@n against the injected images (B,) bool, and the flags."""
    if cal.noise_scores is None:
        return {}
    out = audit.audit_metrics(injected, cal.noise_scores)
    out["audit_flagged"] = int(cal.flagged.sum())
    out["audit_found_at_n"] = int(np.sum(injected[np.argsort(-cal.noise_scores,
                                                              kind="stable")[:int(injected.sum())]]))
    return out


def test_figures(cal: Calibration, labels: np.ndarray, image_scores: np.ndarray,
                 masks: Optional[np.ndarray], maps: Optional[np.ndarray]) -> Dict[str, float]:
    """Decision figures on the test set at the label-free thresholds: image_* (precision,
    recall, f1, false_reject, false_accept) and, with masks, pixel_* (precision, recall, f1,
    iou)."""
    out: Dict[str, float] = {}
    if cal.image_threshold is None:
        return out
    out["threshold_image"] = cal.image_threshold
    d = metrics.decisions(labels, np.asarray(image_scores) >= cal.image_threshold)
    out.update({f"image_{k}": d[k] for k in ("precision", "recall", "f1", "false_reject",
                                             "false_accept")})
    if masks is not None and maps is not None and cal.pixel_threshold is not None:
        out["threshold_pixel"] = cal.pixel_threshold
        d = metrics.decisions(masks, np.asarray(maps) >= cal.pixel_threshold)
        out.update({f"pixel_{k}": d[k] for k in ("precision", "recall", "f1", "iou")})
    return out


def injected_flags(split) -> np.ndarray:
    """(B,) bool: which training samples the protocol injected (`NoisySplit.train` is the
    clean images followed by the injected ones, repeats included)."""
    b = len(split.train)
    return np.arange(b) >= b - len(split.injected)


def audit_names(samples: Sequence) -> List[str]:
    """Training sample names, augmented repeats told apart by their augmentation."""
    return [s.name if s.augment is None else
            f"{s.name}@rot{s.augment[0]:.2f}_dx{s.augment[1]:.3f}_dy{s.augment[2]:.3f}"
            for s in samples]
