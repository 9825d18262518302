"""SoftPatch (and PatchCore, discriminator `none`) on patch features: fit a memory bank, score.

fit: project (B, P, D) training features to 128-d, score each position group with the discriminator,
threshold at the global (1 - tau) quantile (hard: sampling weight 0), keep the scores as soft
weights, then pick a weighted greedy coreset on a second, independent projection.
predict: 1-NN squared distance to the bank, times the nearest entry's soft weight.
"""
import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import rankdata

from softpatch_jax import coreset, discriminators, knn
from softpatch_jax.distances import chunk_size, random_projection


@dataclasses.dataclass
class MemoryBank:
    features: np.ndarray          # (M, D) chosen patch features
    weights: np.ndarray           # (M,) soft weights (ones without a discriminator)


@dataclasses.dataclass
class FitResult:
    bank: MemoryBank
    patch_scores: Optional[np.ndarray]   # (B, P) discriminator scores; None for PatchCore
    sampling_weights: np.ndarray         # (B, P) 1 = may enter the bank, 0 = excluded as noise
    coreset_indices: np.ndarray          # (M,) indices into the flattened B*P patches


def project(features: np.ndarray, matrix: jnp.ndarray, budget_mb: float = 1024) -> jnp.ndarray:
    """(..., D) features -> (..., d) projections, computed in row chunks under the budget."""
    flat = features.reshape(-1, features.shape[-1])
    step = chunk_size(4 * (flat.shape[1] + matrix.shape[1]), budget_mb / 2, minimum=1024)
    out = [jnp.matmul(jnp.asarray(flat[s:s + step]), matrix, precision=jax.lax.Precision.HIGHEST)
           for s in range(0, flat.shape[0], step)]
    return jnp.concatenate(out).reshape(features.shape[:-1] + (matrix.shape[1],))


def denoise(scores: np.ndarray, threshold: float):
    """Global (1 - tau) quantile threshold. Returns (sampling weights in {0,1}, soft weights)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"model.threshold={threshold} must lie in [0, 1)")
    if not np.isfinite(scores).all():
        raise ValueError("the discriminator produced non-finite scores (degenerate training "
                         "features?); try another model.discriminator or more training images")
    cut = np.quantile(scores.astype(np.float64), 1.0 - threshold)  # linear, as torch.quantile
    sampling = (scores <= cut).astype(np.float32)
    return sampling, np.maximum(scores, 0.0).astype(np.float32)


def noise_scores(train_features: np.ndarray, key: jax.Array, method: str, lof_k: int = 6,
                 projection_dim: int = 128, budget_mb: float = 1024,
                 progress: bool = False) -> np.ndarray:
    """(B, P, D) -> (B, P) discriminator scores on a random 128-d projection, grouped by position."""
    d = train_features.shape[-1]
    proj = project(train_features, random_projection(key, d, projection_dim), budget_mb)
    groups = jnp.transpose(proj, (1, 0, 2))  # (P, B, d): one group per position
    return discriminators.group_scores(groups, method, lof_k, budget_mb, progress).T


def fuse_ranks(scores: Sequence[np.ndarray], rule: str = "mean") -> np.ndarray:
    """Rank-normalised fusion (SoftPatch+): each score array's ranks over all patches / N (ties
    averaged), combined by `rule` ('mean' or 'max'). Same shape as each input, values in (0, 1]."""
    ranks = [rankdata(s.reshape(-1)).reshape(s.shape) / s.size for s in scores]
    if rule == "mean":
        return np.mean(ranks, axis=0)
    if rule == "max":
        return np.max(ranks, axis=0)
    raise ValueError(f"model.fusion_rule={rule!r} is unknown; choose mean or max")


def build_bank(train_features: np.ndarray, sampling: np.ndarray, soft: np.ndarray,
               coreset_ratio: float, key: jax.Array, projection_dim: int = 128,
               num_starts: int = 10, budget_mb: float = 1024, progress: bool = False,
               reduced: Optional[jnp.ndarray] = None):
    """Weighted coreset of int(ratio * B * P) patches -> (MemoryBank, (M,) indices).
    `reduced`: the (N, d) coreset projection, when the caller already has it."""
    b, p, d = train_features.shape
    n = b * p
    if not 0.0 < coreset_ratio <= 1.0:
        raise ValueError(f"model.coreset_ratio={coreset_ratio} must lie in (0, 1]")
    m = int(coreset_ratio * n)
    if m < 1:
        raise ValueError(f"model.coreset_ratio={coreset_ratio} keeps no patch of {n}; raise it")
    eligible = int(sampling.sum())
    if m > eligible:
        raise ValueError(f"model.coreset_ratio={coreset_ratio} asks for {m} bank entries but only "
                         f"{eligible} patches are eligible after denoising; lower the ratio or "
                         "the denoising threshold")
    if coreset_ratio == 1.0:  # no subsampling: keep every eligible patch
        idx = np.nonzero(sampling.reshape(-1))[0]
    else:
        key_proj, key_start = jax.random.split(key)
        if reduced is None:
            reduced = coreset_projection(train_features, key_proj, projection_dim, budget_mb)
        idx = coreset.greedy_coreset(reduced, m, key_start, jnp.asarray(sampling.reshape(-1)),
                                     num_starts, progress=progress)
    flat = train_features.reshape(n, d)
    return MemoryBank(np.asarray(flat[idx]), soft.reshape(-1)[idx]), idx


def coreset_projection(train_features, key, projection_dim=128, budget_mb=1024) -> jnp.ndarray:
    """(B, P, D) -> (B*P, d): the coreset's own random projection."""
    d = train_features.shape[-1]
    return project(train_features, random_projection(key, d, projection_dim),
                   budget_mb).reshape(-1, projection_dim)


def fit(train_features: np.ndarray, key: jax.Array, discriminator: str = "lof", lof_k: int = 6,
        threshold: float = 0.15, coreset_ratio: float = 0.1, projection_dim: int = 128,
        num_starts: int = 10, budget_mb: float = 1024, progress: bool = False) -> FitResult:
    """SoftPatch (PatchCore with discriminator 'none'): train_features (B, P, D) -> FitResult
    with a memory bank of int(ratio * B * P) entries."""
    b, p, _ = train_features.shape
    key_disc, key_bank = jax.random.split(key)
    if discriminator == "none":
        patch_scores = None
        sampling = np.ones((b, p), np.float32)
        soft = np.ones((b, p), np.float32)
    else:
        patch_scores = noise_scores(train_features, key_disc, discriminator, lof_k,
                                    projection_dim, budget_mb, progress)
        sampling, soft = denoise(patch_scores, threshold)
    bank, idx = build_bank(train_features, sampling, soft, coreset_ratio, key_bank,
                           projection_dim, num_starts, budget_mb, progress)
    return FitResult(bank, patch_scores, sampling, idx)


@dataclasses.dataclass
class PlusFit:
    classification: FitResult   # bank for image scores (removal ratio cls_threshold)
    segmentation: FitResult     # bank for anomaly maps (removal ratio seg_threshold)
    fused: np.ndarray           # (B, P) fused rank scores


def fit_plus(train_features: np.ndarray, key: jax.Array, methods=("lof", "gaussian"),
             lof_k: int = 6, rule: str = "mean", cls_threshold: float = 0.15,
             seg_threshold: float = 0.5, coreset_ratio: float = 0.1, projection_dim: int = 128,
             num_starts: int = 10, budget_mb: float = 1024, progress: bool = False) -> PlusFit:
    """SoftPatch+: fused discriminators, two banks. Soft weights are the first discriminator's
    raw scores (as in SoftPatch; the paper's choice is not known: our assumption)."""
    if not methods:
        raise ValueError("model.fusion names no discriminator; e.g. lof,gaussian")
    if seg_threshold < cls_threshold:
        raise ValueError(f"model.seg_threshold={seg_threshold} must be >= model.cls_threshold="
                         f"{cls_threshold} (the segmentation bank removes more)")
    key_disc, key_bank = jax.random.split(key)
    raw = [noise_scores(train_features, jax.random.fold_in(key_disc, i), m, lof_k,
                        projection_dim, budget_mb, progress) for i, m in enumerate(methods)]
    fused = fuse_ranks(raw, rule)
    soft = np.maximum(raw[0], 0.0).astype(np.float32)
    reduced = None
    if coreset_ratio < 1.0:
        reduced = coreset_projection(train_features, jax.random.split(key_bank)[0],
                                     projection_dim, budget_mb)
    fits = []
    for tau in (cls_threshold, seg_threshold):
        sampling, _ = denoise(fused, tau)
        bank, idx = build_bank(train_features, sampling, soft, coreset_ratio, key_bank,
                               projection_dim, num_starts, budget_mb, progress, reduced)
        fits.append(FitResult(bank, fused, sampling, idx))
    return PlusFit(fits[0], fits[1], fused)


def predict(test_features: np.ndarray, bank: MemoryBank, soft_weight: bool = True,
            budget_mb: float = 1024, num_nn: int = 1, mesh=None) -> np.ndarray:
    """(T, P, D) test features -> (T, P) patch scores: mean squared distance to the num_nn
    nearest entries (the official anomaly_score_num_nn; 1 = SoftPatch), times the nearest
    entry's soft weight when `soft_weight`. `mesh`: shard the bank over its devices (1-NN)."""
    t, p, d = test_features.shape
    if mesh is not None and num_nn == 1:
        from softpatch_jax import sharding

        dist, idx = sharding.sharded_nearest_neighbour(test_features.reshape(t * p, d),
                                                       bank.features, mesh, budget_mb)
        dist, idx = dist[:, None], idx[:, None]
    else:
        dist, idx = knn.k_nearest(test_features.reshape(t * p, d), bank.features, num_nn,
                                  budget_mb)
    score = dist.mean(axis=1)
    if soft_weight:
        score = score * bank.weights[idx[:, 0]]
    return score.reshape(t, p)


def reweighted_image_scores(test_features: np.ndarray, patch_scores: np.ndarray,
                            bank: MemoryBank, neighbours: int = 9,
                            budget_mb: float = 1024) -> np.ndarray:
    """PatchCore's image-score reweighting (paper eq. 7, as anomalib computes it).

    For each image: the most anomalous patch f* (score s*), its nearest bank entry m*, the
    `neighbours` nearest entries of m* in the bank N_b (m* first); weight = 1 - softmax over
    ||f* - m||, m in N_b, taken at m*; image score = weight * s*. -> (T,)
    """
    t, p, d = test_features.shape
    best = patch_scores.argmax(axis=1)
    f_star = test_features[np.arange(t), best]  # (T, D)
    _, m_star = knn.nearest_neighbour(f_star, bank.features, budget_mb)
    b = min(neighbours, bank.features.shape[0])
    _, support = knn.k_nearest(bank.features[m_star], bank.features, b, budget_mb)  # (T, b)
    diff = f_star[:, None, :].astype(np.float64) - bank.features[support]
    dist = np.sqrt((diff ** 2).sum(-1))  # Euclidean, as the paper
    soft = np.exp(dist - dist.max(axis=1, keepdims=True))
    weight = 1.0 - soft[:, 0] / soft.sum(axis=1)
    return weight * patch_scores[np.arange(t), best]
