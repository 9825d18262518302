"""SoftPatch and SoftPatch+ on the PatchCore memory bank (methods/patchcore.py).

SoftPatch: project (B, P, D) training features to 128-d, score each position group with a
discriminator (ops/discriminators.py), cut at the global (1 - tau) quantile, tau the denoising
ratio `denoise.ratio` (hard: sampling
weight 0), keep the scores as soft weights, then pick a weighted greedy coreset on a second,
independent projection; test scores are the 1-NN squared distance times the nearest entry's soft
weight. Discriminator `none` makes it PatchCore.

SoftPatch+: several discriminators fused by rank normalisation; a classification bank (denoising
ratio `softpatch_plus.cls_ratio`) for image scores and a segmentation bank (`seg_ratio`) for maps.
"""
import dataclasses
import logging
from typing import Optional, Sequence, Tuple

import flax.struct
import jax
import numpy as np
from scipy.stats import rankdata

from softpatch_jax.evaluation import audit, contamination
from softpatch_jax.methods.base import Features, Scores, TrainingNoise
from softpatch_jax.methods.patchcore import (MemoryBank, PatchCore, bank_arrays, bank_options,
                                             build_bank)
from softpatch_jax.methods.registry import register
from softpatch_jax.ops import discriminators
from softpatch_jax.ops import grouping as grouping_ops
from softpatch_jax.ops.distances import project, random_projection
from softpatch_jax.settings import comma_list
from softpatch_jax.timing import NO_CLOCK, StageClock

FUSION_RULES = ("mean", "max", "weighted")
RANK_NORMS = ("global", "position")
# softpatch_plus.soft_source: these, or any registered discriminator's raw scores (e.g. lof).
SOFT_SOURCES = ("first", "fused", "none")
AUTO = "auto"  # a removal ratio or the soft weights from the contamination estimate
# The removal ratio of the provisional fit that `auto` estimates the contamination from: the
# fixed default (it removes the defects of a 10% pile, so the audit finds their images).
PROVISIONAL_RATIO = 0.15


def soft_sources() -> Tuple[str, ...]:
    return SOFT_SOURCES + tuple(discriminators.names())


def require_finite(scores: np.ndarray) -> None:
    if not np.isfinite(scores).all():
        raise ValueError("the discriminator produced non-finite scores (degenerate training "
                         "features?); try another denoise.discriminator or more training images")


def denoise(scores: np.ndarray, ratio: float):
    """Removes the share `ratio` (tau) of the patches above the global (1 - tau) quantile of
    `scores`. Returns (sampling weights in {0,1}, soft weights)."""
    require_finite(scores)
    cut = np.quantile(scores.astype(np.float64), 1.0 - ratio)  # linear, as torch.quantile
    sampling = (scores <= cut).astype(np.float32)
    return sampling, np.maximum(scores, 0.0).astype(np.float32)


def noise_scores(train_features: np.ndarray, key: jax.Array, discriminator: str, k: int = 6,
                 projection_dim: int = 128, budget_mb: float = 1024,
                 progress: bool = False, grouping: str = "position", radius: int = 2,
                 grid: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """(B, P, D) -> (B, P) discriminator scores on a random projection, each patch compared with
    the patches `grouping` gives it (ops/grouping.py: position, neighbourhood of `radius`
    patches on the (h, w) `grid`, or global)."""
    d = train_features.shape[-1]
    proj = project(train_features, random_projection(key, d, projection_dim), budget_mb)
    return grouping_ops.grouped_scores(proj, discriminator, grouping, k, radius, grid, budget_mb,
                                       progress)


def rank_normalise(scores: np.ndarray, rank_norm: str = "global") -> np.ndarray:
    """(B, P) scores -> (B, P) ranks in (0, 1], ties averaged: `global`, ranks over all B * P
    patches / (B * P); `position`, ranks among each position's B scores / B."""
    if rank_norm == "global":
        return rankdata(scores.reshape(-1)).reshape(scores.shape) / scores.size
    if rank_norm == "position":
        return rankdata(scores, axis=0) / scores.shape[0]
    raise ValueError(f"softpatch_plus.rank_norm={rank_norm!r} is unknown; choose one of "
                     f"{', '.join(RANK_NORMS)}")


def fuse_ranks(scores: Sequence[np.ndarray], rule: str = "mean", rank_norm: str = "global",
               weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Rank-normalised fusion (SoftPatch+): each (B, P) score array's ranks (`rank_normalise`),
    combined by `rule`: 'mean', 'max', or 'weighted' (sum_i w_i r_i / sum_i w_i, `weights` one per
    array). Same shape as each input, values in (0, 1]."""
    ranks = [rank_normalise(s, rank_norm) for s in scores]
    if rule == "mean":
        return np.mean(ranks, axis=0)
    if rule == "max":
        return np.max(ranks, axis=0)
    if rule == "weighted":
        w = np.asarray(weights, np.float64)
        return np.tensordot(w, np.stack(ranks), axes=1) / w.sum()
    raise ValueError(f"softpatch_plus.fusion_rule={rule!r} is unknown; choose one of "
                     f"{', '.join(FUSION_RULES)}")


def _fusion_weights(spec, rule: str, n: int) -> Optional[Tuple[float, ...]]:
    """softpatch_plus.fusion_weights (a comma list of floats, one per fusion entry) for the
    weighted rule; must be empty for the others."""
    items = comma_list(spec)
    if rule != "weighted":
        if items:
            raise ValueError(f"softpatch_plus.fusion_weights={spec!r} is read only by "
                             "softpatch_plus.fusion_rule=weighted; empty it or set the rule")
        return None
    try:
        weights = tuple(float(v) for v in items)
    except ValueError:
        weights = ()
    if len(weights) != n or not all(np.isfinite(weights)) or min(weights) < 0 \
            or sum(weights) <= 0:
        raise ValueError(f"softpatch_plus.fusion_weights={spec!r} must be {n} non-negative "
                         "numbers, one per softpatch_plus.fusion entry, not all 0 (e.g. 0.7,0.3)")
    return weights


def _choice(section, name: str, field: str, choices) -> str:
    """A choice field (`field`, e.g. softpatch_plus.rank_norm) of its config `section`."""
    value = section[name]
    if value not in choices:
        raise ValueError(f"{field}={value!r} is unknown; choose one of "
                         f"{', '.join(map(str, choices))}")
    return value


def _check_discriminator(name: str, field: str) -> None:
    if name not in discriminators.names():
        raise ValueError(f"{field}={name!r} is unknown; choose "
                         f"{'none, ' if field == 'denoise.discriminator' else ''}"
                         f"{', '.join(discriminators.names())}")


def _check_lof_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"denoise.lof_k={k} must be >= 1")


def _check_fraction(value, field: str) -> None:
    """A removal ratio: a share in [0, 1), or `auto` (from the contamination estimate)."""
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{field}={value!r} must lie in [0, 1) or be auto (from the "
                         "contamination estimate)")


def _check_soft_weight(value) -> None:
    if not (value is True or value is False or value == AUTO):
        raise ValueError(f"denoise.soft_weight={value!r} must be True, False or auto (none "
                         "where the pile looks clean)")


def applied_ratio(ratio, estimate: contamination.Estimate,
                  factor: float = contamination.FACTOR) -> float:
    """A configured removal ratio, or for `auto` the estimate's (contamination.auto_ratio)."""
    return contamination.auto_ratio(estimate.images, factor) if ratio == AUTO else float(ratio)


def applied_soft(soft: np.ndarray, mode, estimate: contamination.Estimate) -> np.ndarray:
    """Soft weights as denoise.soft_weight says: `auto` drops them (ones) where the estimate
    finds no defective image, so a pile that looks clean is scored without them."""
    return np.ones_like(soft) if mode == AUTO and estimate.images == 0 else soft


def _grouping_options(d, names: Sequence[str], field: str, default: str) -> dict:
    """denoise.grouping and denoise.group_radius (of the denoise section `d`), checked for the
    discriminators `names` (named by `field`). An empty denoise.grouping means the method's own
    `default`."""
    grouping, radius = d.grouping or default, d.group_radius
    grouping_ops.check(grouping, radius, names, field)
    return dict(grouping=grouping, group_radius=int(radius))


@dataclasses.dataclass
class FitDetails:
    bank: MemoryBank
    patch_scores: Optional[np.ndarray]   # (B, P) discriminator scores; None without one
    sampling_weights: np.ndarray         # (B, P) 1 = may enter the bank, 0 = excluded as noise
    coreset_indices: np.ndarray          # (M,) indices into the flattened B * P patches
    grouping: str = "position"           # the grouping the discriminators ran under
    aligned_share: Optional[float] = None  # grouping=auto: what decided it (grouping.resolve)
    estimate: Optional[contamination.Estimate] = None  # evaluation/contamination.py
    ratio: Optional[float] = None          # the removal ratio applied
    estimate_scores: Optional[np.ndarray] = None  # (B, P) the estimate's, if not patch_scores


# fold_in constant of the projection on which grouping=auto measures alignment (its own, so
# that the discriminators' projections and results are those of the grouping it picks).
_AUTO_KEY = 17


class SoftPatch(PatchCore):
    """SoftPatch with one discriminator (None: PatchCore's bank, no soft weights)."""
    name = "softpatch"
    # denoise.grouping='' means this: the official code's groups (one position's B patches).
    default_grouping = "position"

    def __init__(self, *, discriminator="lof", denoise_ratio: float = 0.15, lof_k: int = 6,
                 soft_weight: bool = True, projection_dim: int = 128,
                 grouping: str = "", group_radius: int = 2, **bank):
        super().__init__(**bank)
        self.discriminator = None if discriminator in (None, "none") else discriminator
        self.denoise_ratio, self.lof_k, self.projection_dim = denoise_ratio, lof_k, projection_dim
        # '' (denoise.grouping's default) is this method's own grouping.
        self.grouping, self.group_radius = grouping or self.default_grouping, group_radius
        # auto decides at the fit (ones where the pile looks clean); scores always multiply
        self.soft_mode = soft_weight
        self.soft_weight = bool(soft_weight) and self.discriminator is not None

    @classmethod
    def from_config(cls, config) -> "SoftPatch":
        d = config.denoise
        if d.discriminator != "none":
            _check_discriminator(d.discriminator, "denoise.discriminator")
        _check_fraction(d.ratio, "denoise.ratio")
        _check_soft_weight(d.soft_weight)
        _check_lof_k(d.lof_k)
        grouping = _grouping_options(d, [d.discriminator] if d.discriminator != "none" else [],
                                     "denoise.discriminator", cls.default_grouping)
        return cls(discriminator=d.discriminator, denoise_ratio=d.ratio, lof_k=d.lof_k,
                   soft_weight=d.soft_weight, projection_dim=config.bank.projection_dim,
                   **grouping, **bank_options(config))

    @property
    def label(self) -> str:
        return (self.discriminator or "none") + self._grouping_label()

    def _grouping_label(self) -> str:
        if self.grouping == "position":
            return ""
        radius = f" r={self.group_radius}" if self.grouping in ("neighbourhood", "auto") else ""
        return f" ({self.grouping}{radius})"

    def _resolve_grouping(self, features: Features,
                          key_disc: jax.Array) -> Tuple[str, Optional[float]]:
        """This fit's grouping: denoise.grouping, or for `auto` position / neighbourhood by the
        training features' alignment (ops/grouping.py), and the share that decided it."""
        if self.grouping != "auto":
            return self.grouping, None
        x = features.patches
        proj = project(x, random_projection(jax.random.fold_in(key_disc, _AUTO_KEY), x.shape[-1],
                                            self.projection_dim), self.budget_mb)
        grouping, share = grouping_ops.resolve("auto", proj, features.grid, self.group_radius,
                                               self.budget_mb)
        logging.info("denoise.grouping=auto: %.3f of the training patches meet their nearest "
                     "other-image patch at their own position -> %s", share, grouping)
        return grouping, share

    def _noise_scores(self, features: Features, key: jax.Array, name: str,
                      progress: bool, grouping: str) -> np.ndarray:
        """(B, P) scores of discriminator `name` under `grouping` (resolved, not auto)."""
        return noise_scores(features.patches, key, name, self.lof_k, self.projection_dim,
                            self.budget_mb, progress, grouping, self.group_radius,
                            features.grid)

    def _min_train(self, names) -> int:
        if self.grouping != "position":  # candidates come from several positions: checked
            return 2                     # against the grid when scoring (grouping.py)
        return max([2] + [discriminators.get(d).min_group(self.lof_k) for d in names])

    def _check_train(self, n_train: int, names) -> None:
        need = self._min_train(names)
        if n_train >= need:
            return
        if need > 2:  # a neighbour count sets it
            raise ValueError(f"denoise.lof_k={self.lof_k} needs more than {need - 1} training "
                             f"images per position, but there are {n_train}; add training "
                             "images or lower denoise.lof_k")
        super().check(n_train)

    def check(self, n_train: int) -> None:
        self._check_train(n_train, [self.discriminator] if self.discriminator else [])

    def fit_details(self, features: Features, key: jax.Array, progress: bool = True,
                    clock: StageClock = NO_CLOCK) -> "FitDetails":
        """The fit with what led to it: discriminator scores, sampling weights, picks. `clock`
        gets 'discriminator' and 'coreset'."""
        train = features.patches
        b, p, _ = train.shape
        key_disc, key_bank = jax.random.split(key)
        scores, grouping, share, estimate, ratio = None, "position", None, None, None
        if self.discriminator is None:
            sampling = soft = np.ones((b, p), np.float32)
        else:
            with clock.stage("discriminator"):
                grouping, share = self._resolve_grouping(features, key_disc)
                scores = self._noise_scores(features, key_disc, self.discriminator, progress,
                                            grouping)
                require_finite(scores)  # the discriminator's own message, before the estimate
        sampler = dataclasses.replace(self.sampler, progress=progress)
        provisional = None
        if scores is not None:
            if AUTO in (self.denoise_ratio, self.soft_mode):
                # The estimate the audit would give a provisional fit at the fixed ratio.
                fixed = PROVISIONAL_RATIO if self.denoise_ratio == AUTO else self.denoise_ratio
                with clock.stage("estimate"):
                    sampling, soft = denoise(scores, fixed)
                    provisional = build_bank(train, sampling, soft, self.coreset_ratio,
                                             key_bank, sampler)
                    estimate = self.provisional_estimate(provisional[0], features, scores)
            else:
                estimate = contamination.estimate(scores)
            ratio = applied_ratio(self.denoise_ratio, estimate)
            sampling, soft = denoise(scores, ratio)
            tempered = applied_soft(soft, self.soft_mode, estimate)
            if provisional is not None and (ratio != fixed or tempered is not soft):
                provisional = None  # the final fit differs from the provisional one
            soft = tempered
        with clock.stage("coreset"):
            bank, idx = provisional or build_bank(train, sampling, soft, self.coreset_ratio,
                                                  key_bank, sampler)
        return FitDetails(bank, scores, sampling, idx, grouping, share, estimate, ratio)

    def provisional_estimate(self, bank: MemoryBank, features: Features,
                             scores: np.ndarray) -> contamination.Estimate:
        """The contamination estimate from a provisional one-bank fit: the training images the
        audit's rule flags by their left-out scores against `bank`, and their outlying patches
        in the (B, P) discriminator `scores` (evaluation/contamination.py)."""
        left_out = self.left_out_image_scores(bank, features)
        return contamination.estimate(scores, audit.flag(left_out, "auto"), "left_out")

    def fit(self, features: Features, key: jax.Array, learned=None,
            progress: bool = True) -> MemoryBank:
        return self.fit_details(features, key, progress).bank

    def fit_with_noise(self, features: Features, key: jax.Array, learned=None,
                       progress: bool = True, clock: StageClock = NO_CLOCK):
        details = self.fit_details(features, key, progress, clock)
        if details.patch_scores is None:
            return details.bank, None
        return details.bank, TrainingNoise(details.patch_scores, details.sampling_weights == 0,
                                           details.estimate, {"denoise.ratio": details.ratio})

    def score(self, fitted: MemoryBank, features: Features,
              exclude: Optional[np.ndarray] = None) -> Scores:
        grids = self.bank_scores(fitted, features, self.soft_weight, exclude)
        return Scores(self.image_scores(fitted, features, grids), grids, self.image_size,
                      self.blur_sigma)


@flax.struct.dataclass
class TwoBanks:
    classification: MemoryBank   # image scores (denoising ratio cls_ratio)
    segmentation: MemoryBank     # anomaly maps (denoising ratio seg_ratio)

    def to_arrays(self):
        return {**self.classification.to_arrays("cls_"), **self.segmentation.to_arrays("seg_")}

    @classmethod
    def from_arrays(cls, arrays) -> "TwoBanks":
        return cls(MemoryBank.from_arrays(arrays, "cls_"), MemoryBank.from_arrays(arrays, "seg_"))


class SoftPatchPlus(SoftPatch):
    """SoftPatch+: fused discriminators, two banks. Soft weights are the first discriminator's
    raw scores (as in SoftPatch; the paper's choice is not known: our assumption)."""
    name = "softpatch_plus"
    # denoise.grouping='' means this, chosen by the alignment study (docs/studies.md, issue 17): windows
    # where the parts move (0.01-0.06 image AUROC better there), position where they line up.
    default_grouping = "auto"

    def __init__(self, *, fusion=("lof", "gaussian"), fusion_rule: str = "mean",
                 cls_ratio: float = 0.15, seg_ratio: float = 0.5,
                 rank_norm: str = "global", fusion_weights: Optional[Sequence[float]] = None,
                 soft_source: str = "first", shared_projection: bool = True, **softpatch):
        super().__init__(discriminator=None, **softpatch)
        self.fusion, self.fusion_rule = tuple(fusion), fusion_rule
        self.cls_ratio, self.seg_ratio = cls_ratio, seg_ratio
        self.rank_norm, self.fusion_weights = rank_norm, fusion_weights
        self.soft_source, self.shared_projection = soft_source, shared_projection
        self.soft_mode = softpatch.get("soft_weight", True)
        self.soft_weight = bool(self.soft_mode)

    @classmethod
    def from_config(cls, config) -> "SoftPatchPlus":
        sp, d = config.softpatch_plus, config.denoise
        fusion = comma_list(sp.fusion)
        if not fusion:
            raise ValueError("softpatch_plus.fusion names no discriminator; e.g. lof,gaussian")
        for name in fusion:
            _check_discriminator(name, "softpatch_plus.fusion")
        rule = _choice(sp, "fusion_rule", "softpatch_plus.fusion_rule", FUSION_RULES)
        weights = _fusion_weights(sp.fusion_weights, rule, len(fusion))
        variants = dict(
            rank_norm=_choice(sp, "rank_norm", "softpatch_plus.rank_norm", RANK_NORMS),
            soft_source=_choice(sp, "soft_source", "softpatch_plus.soft_source", soft_sources()),
            shared_projection=_choice(sp, "shared_projection", "softpatch_plus.shared_projection",
                                      (True, False)))
        _check_fraction(sp.cls_ratio, "softpatch_plus.cls_ratio")
        _check_fraction(sp.seg_ratio, "softpatch_plus.seg_ratio")
        _check_soft_weight(d.soft_weight)
        if AUTO not in (sp.cls_ratio, sp.seg_ratio) and sp.seg_ratio < sp.cls_ratio:
            raise ValueError(f"softpatch_plus.seg_ratio={sp.seg_ratio} must be >= "
                             f"softpatch_plus.cls_ratio={sp.cls_ratio} (the segmentation bank "
                             "removes more)")
        _check_lof_k(d.lof_k)
        grouping = _grouping_options(d, fusion, "softpatch_plus.fusion", cls.default_grouping)
        return cls(fusion=fusion, fusion_rule=rule, fusion_weights=weights,
                   cls_ratio=sp.cls_ratio, seg_ratio=sp.seg_ratio, lof_k=d.lof_k,
                   soft_weight=d.soft_weight, projection_dim=config.bank.projection_dim,
                   **variants, **grouping, **bank_options(config))

    @property
    def label(self) -> str:
        return "fused:" + ",".join(self.fusion) + self._grouping_label()

    def _discriminators(self) -> Tuple[str, ...]:
        """The discriminators the fit runs: the fused ones, and the soft weights' source when
        it is a discriminator not fused (soft_source=lof with fusion=nearest,gaussian)."""
        extra = self.soft_source not in SOFT_SOURCES and self.soft_source not in self.fusion
        return self.fusion + ((self.soft_source,) if extra else ())

    def check(self, n_train: int) -> None:
        self._check_train(n_train, self._discriminators())

    def _soft_weights(self, raw, fused: np.ndarray, features: Features, key_disc: jax.Array,
                      progress: bool, grouping: str) -> np.ndarray:
        """(B, P) soft weights by softpatch_plus.soft_source: the first fused discriminator's raw
        scores (clamped at 0), the fused ranks, ones (none), or a named discriminator's raw
        scores (computed on its own projection, key fold_in(key_disc, len(fusion)), when it is
        not fused)."""
        source = self.soft_source
        if source == "fused":
            return fused.astype(np.float32)
        if source == "none":
            return np.ones(fused.shape, np.float32)
        if source == "first":
            scores = raw[0]
        elif source in self.fusion:
            scores = raw[self.fusion.index(source)]
        else:
            scores = self._noise_scores(
                features, jax.random.fold_in(key_disc, len(self.fusion)), source, progress,
                grouping)
        return np.maximum(scores, 0.0).astype(np.float32)

    def fit_details(self, features: Features, key: jax.Array, progress: bool = True,
                    clock: StageClock = NO_CLOCK) -> Tuple[FitDetails, FitDetails]:
        """(classification, segmentation) fits with what led to them (fused rank scores).
        `clock` gets 'discriminator' and 'coreset' (both banks)."""
        train = features.patches
        key_disc, key_bank = jax.random.split(key)
        with clock.stage("discriminator"):
            grouping, share = self._resolve_grouping(features, key_disc)
            raw = [self._noise_scores(features, jax.random.fold_in(key_disc, i), d, progress,
                                      grouping)
                   for i, d in enumerate(self.fusion)]
            fused = fuse_ranks(raw, self.fusion_rule, self.rank_norm, self.fusion_weights)
            soft = self._soft_weights(raw, fused, features, key_disc, progress, grouping)
            require_finite(raw[0])
        sampler = dataclasses.replace(self.sampler, progress=progress)
        reduced = None
        if self.coreset_ratio < 1.0 and self.shared_projection:  # one projection, 2 banks
            with clock.stage("coreset"):
                reduced = sampler.project(train, jax.random.split(key_bank)[0])
        if AUTO in (self.cls_ratio, self.seg_ratio, self.soft_mode):
            # The audit's estimate on a provisional classification bank at the fixed ratio.
            fixed = PROVISIONAL_RATIO if self.cls_ratio == AUTO else self.cls_ratio
            with clock.stage("estimate"):
                provisional, _ = build_bank(train, denoise(fused, fixed)[0], soft,
                                            self.coreset_ratio, key_bank, sampler, reduced)
                estimate = self.provisional_estimate(provisional, features, raw[0])
        else:  # the first fused discriminator's scores
            estimate = contamination.estimate(raw[0])
        soft = applied_soft(soft, self.soft_mode, estimate)
        cls_tau = applied_ratio(self.cls_ratio, estimate)
        # auto: the paper's segmentation share of its classification one, never below it
        seg_tau = (max(cls_tau, applied_ratio(AUTO, estimate, contamination.SEG_FACTOR))
                   if self.seg_ratio == AUTO else float(self.seg_ratio))
        details = []
        with clock.stage("coreset"):
            for i, tau in enumerate((cls_tau, seg_tau)):
                sampling, _ = denoise(fused, tau)
                # Not shared: the segmentation bank draws its own projection and starts.
                key = (key_bank if self.shared_projection or i == 0
                       else jax.random.fold_in(key_bank, 1))
                bank, idx = build_bank(train, sampling, soft, self.coreset_ratio, key, sampler,
                                       reduced)
                details.append(FitDetails(bank, fused, sampling, idx, grouping, share, estimate,
                                          tau, raw[0]))
        return details[0], details[1]

    def fit(self, features: Features, key: jax.Array, learned=None,
            progress: bool = True) -> TwoBanks:
        cls, seg = self.fit_details(features, key, progress)
        return TwoBanks(cls.bank, seg.bank)

    def fit_with_noise(self, features: Features, key: jax.Array, learned=None,
                       progress: bool = True, clock: StageClock = NO_CLOCK):
        cls, seg = self.fit_details(features, key, progress, clock)
        ratios = {"softpatch_plus.cls_ratio": cls.ratio, "softpatch_plus.seg_ratio": seg.ratio}
        return TwoBanks(cls.bank, seg.bank), TrainingNoise(cls.patch_scores,
                                                           cls.sampling_weights == 0,
                                                           cls.estimate, ratios,
                                                           cls.estimate_scores)

    def score(self, fitted: TwoBanks, features: Features,
              exclude: Optional[np.ndarray] = None) -> Scores:
        cls_grids = self.bank_scores(fitted.classification, features, self.soft_weight, exclude,
                                     "1-NN scores (classification bank)")
        image = self.image_scores(fitted.classification, features, cls_grids)
        grids = self.bank_scores(fitted.segmentation, features, self.soft_weight, exclude,
                                 "1-NN scores (segmentation bank)")  # maps
        return Scores(image, grids, self.image_size, self.blur_sigma)

    def _left_out_banks(self, fitted: TwoBanks):
        return fitted.classification, fitted.segmentation

    def traced_banks(self, fitted: TwoBanks):
        """Image scores from the classification bank, maps from the segmentation bank."""
        return ({"cls": bank_arrays(fitted.classification),
                 "seg": bank_arrays(fitted.segmentation)}, "cls", "seg")

    def fitted_from_arrays(self, arrays) -> TwoBanks:
        return TwoBanks.from_arrays(arrays)

    def summary(self, fitted: TwoBanks) -> dict:
        return {"memory_bank": int(fitted.classification.features.shape[0])}


register(SoftPatch)
register(SoftPatchPlus)
