"""SoftPatch (and PatchCore, discriminator `none`) on patch features: fit a memory bank, score.

fit: project (B, P, D) training features to 128-d, score each position group with the discriminator,
threshold at the global (1 - tau) quantile (hard: sampling weight 0), keep the scores as soft
weights, then pick a weighted greedy coreset on a second, independent projection.
predict: 1-NN squared distance to the bank, times the nearest entry's soft weight.
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

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


def fit(train_features: np.ndarray, key: jax.Array, discriminator: str = "lof", lof_k: int = 6,
        threshold: float = 0.15, coreset_ratio: float = 0.1, projection_dim: int = 128,
        num_starts: int = 10, budget_mb: float = 1024, progress: bool = False) -> FitResult:
    """train_features: (B, P, D) -> FitResult with a memory bank of int(ratio * B * P) entries."""
    b, p, d = train_features.shape
    n = b * p
    key_disc, key_proj, key_start = jax.random.split(key, 3)
    if discriminator == "none":
        patch_scores = None
        sampling = np.ones((b, p), np.float32)
        soft = np.ones((b, p), np.float32)
    else:
        proj = project(train_features, random_projection(key_disc, d, projection_dim), budget_mb)
        groups = jnp.transpose(proj, (1, 0, 2))  # (P, B, d): one group per position
        patch_scores = discriminators.group_scores(
            groups, discriminator, lof_k, budget_mb, progress).T  # (B, P)
        sampling, soft = denoise(patch_scores, threshold)
    if not 0.0 < coreset_ratio <= 1.0:
        raise ValueError(f"model.coreset_ratio={coreset_ratio} must lie in (0, 1]")
    m = int(coreset_ratio * n)
    if m < 1:
        raise ValueError(f"model.coreset_ratio={coreset_ratio} keeps no patch of {n}; raise it")
    eligible = int(sampling.sum())
    if m > eligible:
        raise ValueError(f"model.coreset_ratio={coreset_ratio} asks for {m} bank entries but only "
                         f"{eligible} patches are eligible after denoising (model.threshold="
                         f"{threshold}); lower one of them")
    if coreset_ratio == 1.0:  # no subsampling: keep every eligible patch
        idx = np.nonzero(sampling.reshape(-1))[0]
    else:
        reduced = project(train_features, random_projection(key_proj, d, projection_dim), budget_mb)
        idx = coreset.greedy_coreset(reduced.reshape(n, -1), m, key_start,
                                     jnp.asarray(sampling.reshape(-1)), num_starts,
                                     progress=progress)
    flat = train_features.reshape(n, d)
    bank = MemoryBank(np.asarray(flat[idx]), soft.reshape(-1)[idx])
    return FitResult(bank, patch_scores, sampling, idx)


def predict(test_features: np.ndarray, bank: MemoryBank, soft_weight: bool = True,
            budget_mb: float = 1024) -> np.ndarray:
    """(T, P, D) test features -> (T, P) patch scores (squared 1-NN distance [x soft weight])."""
    t, p, d = test_features.shape
    dist, idx = knn.nearest_neighbour(test_features.reshape(t * p, d), bank.features, budget_mb)
    if soft_weight:
        dist = dist * bank.weights[idx]
    return dist.reshape(t, p)
