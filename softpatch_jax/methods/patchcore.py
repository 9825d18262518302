"""PatchCore: a memory bank of training patch features (a greedy coreset), scored by the distance
of each test patch to its nearest bank entries. SoftPatch builds on it (methods/softpatch.py):
the same bank with sampling weights from a discriminator and soft weights on the scores.

bank: project (B, P, D) training features to `projection_dim`, pick a weighted greedy coreset of
int(coreset_ratio * B * P) patches (excluded patches, sampling weight 0, are never picked).
score: mean squared distance to the `num_nn` nearest entries, times the nearest entry's soft weight
where the method has them; image score = the maximum patch score, or the PatchCore paper's
reweighting (`reweight_neighbours` > 0).
"""
import copy
import dataclasses
from typing import Dict, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax.evaluation import pruned
from softpatch_jax.evaluation.pruned import BoundedGrids
from softpatch_jax.methods.base import Features, FeatureSpec, Method, Scores
from softpatch_jax.methods.registry import register
from softpatch_jax.ops import knn, leave_out
from softpatch_jax.ops.coreset import SAMPLERS, GreedyCoreset, RandomSubsample, Sampler
from softpatch_jax.ops.search import make_search
from softpatch_jax.settings import comma_list


@flax.struct.dataclass
class MemoryBank:
    features: np.ndarray          # (M, D) chosen patch features
    weights: np.ndarray           # (M,) soft weights (ones without a discriminator)
    # (M,) int32: the training image each entry came from (leave-own-image-out scoring); None
    # in models saved before it existed.
    sources: Optional[np.ndarray] = None
    # (M,) int32: each entry's patch position in its image's grid, row-major (the cheapest
    # calibration bounds read it); None in models saved before it existed.
    positions: Optional[np.ndarray] = None

    def to_arrays(self, prefix: str = "") -> Dict[str, np.ndarray]:
        arrays = {prefix + "features": np.asarray(self.features),
                  prefix + "weights": np.asarray(self.weights)}
        for name in ("sources", "positions"):
            if getattr(self, name) is not None:
                arrays[prefix + name] = np.asarray(getattr(self, name))
        return arrays

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "MemoryBank":
        optional = {name: None if arrays.get(prefix + name) is None
                    else np.asarray(arrays[prefix + name]) for name in ("sources", "positions")}
        return cls(np.asarray(arrays[prefix + "features"]), np.asarray(arrays[prefix + "weights"]),
                   **optional)


def build_bank(train_features: np.ndarray, sampling: np.ndarray, soft: np.ndarray,
               coreset_ratio: float, key: jax.Array, sampler: Sampler,
               reduced: Optional[jnp.ndarray] = None):
    """Weighted coreset of int(ratio * B * P) patches -> (MemoryBank, (M,) indices into the
    flattened B * P patches). `reduced`: the (N, d) coreset projection, when the caller has it."""
    b, p, d = train_features.shape
    n = b * p
    m = int(coreset_ratio * n)
    if m < 1:
        raise ValueError(f"bank.coreset_ratio={coreset_ratio} keeps no patch of {n}; raise it")
    eligible = int(sampling.sum())
    if m > eligible:
        raise ValueError(f"bank.coreset_ratio={coreset_ratio} asks for {m} bank entries but only "
                         f"{eligible} patches are eligible after denoising; lower the ratio or "
                         "the denoising threshold")
    if coreset_ratio == 1.0:  # no subsampling: keep every eligible patch
        idx = np.nonzero(sampling.reshape(-1))[0]
    else:
        key_proj, key_start = jax.random.split(key)
        if reduced is None:
            reduced = sampler.project(train_features, key_proj)
        idx = sampler.select(reduced, m, key_start, jnp.asarray(sampling.reshape(-1)))
    flat = train_features.reshape(n, d)
    idx_host = np.asarray(idx)
    return MemoryBank(np.asarray(flat[idx]), soft.reshape(-1)[idx],
                      (idx_host // p).astype(np.int32), (idx_host % p).astype(np.int32)), idx


def patch_scores(test_features: np.ndarray, bank: MemoryBank, search, soft_weight: bool = True,
                 num_nn: int = 1, exclude: Optional[np.ndarray] = None,
                 budget_mb: float = 1024, desc: str = "") -> np.ndarray:
    """(T, P, D) test features -> (T, P) patch scores: mean squared distance to the num_nn
    nearest entries (the official anomaly_score_num_nn; 1 = SoftPatch), times the nearest
    entry's soft weight when `soft_weight`. `search`: a nearest-neighbour strategy (ops.knn).
    `exclude` (T,) int: image t never meets the bank entries whose source is exclude[t]
    (leave-own-image-out scoring of training images; needs `bank.sources`)."""
    t, p, d = test_features.shape
    groups = None if exclude is None else np.repeat(np.asarray(exclude, np.int32), p)
    return query_scores(test_features.reshape(t * p, d), bank, search, soft_weight, num_nn,
                        groups, budget_mb, desc).reshape(t, p)


# Queries per search call when a progress bar is shown: >= knn.MAX_ROWS each (a call's chunks
# then have brute force's row count, so each query's result is the one-call result).
BLOCK_ROWS = 16 * knn.MAX_ROWS


def query_scores(queries: np.ndarray, bank: MemoryBank, search, soft_weight: bool = True,
                 num_nn: int = 1, groups: Optional[np.ndarray] = None,
                 budget_mb: float = 1024, desc: str = "", prepared=None) -> np.ndarray:
    """`patch_scores` of (N, D) queries -> (N,); `groups` (N,) int: query i never meets the
    entries whose source is groups[i]. Each query's score does not depend on the others'.
    `desc`: a progress bar of that name over blocks of queries (same results); `prepared`: the
    search's PreparedBank of `bank.features` (PrunedSearch), for many calls on one bank."""
    n = len(queries)
    if desc and n >= 2 * BLOCK_ROWS:
        starts = list(range(0, n - BLOCK_ROWS, BLOCK_ROWS))  # the last block takes the rest
        out = []
        with tqdm(total=n, desc=desc, leave=False, unit="patch", unit_scale=True) as bar:
            for a, b in zip(starts, starts[1:] + [n]):
                out.append(query_scores(queries[a:b], bank, search, soft_weight, num_nn,
                                        None if groups is None else groups[a:b], budget_mb,
                                        prepared=prepared))
                bar.update(b - a)
        return np.concatenate(out)
    searched = bank.features if prepared is None else prepared
    if groups is None:
        dist, idx = search.k_nearest(queries, searched, num_nn)
    else:
        if bank.sources is None:
            raise NotImplementedError("the memory bank does not record its entries' source "
                                      "images (a model saved by an earlier version)")
        dist, idx = knn.k_nearest_excluding(queries, groups, searched, bank.sources,
                                            num_nn, budget_mb, search)
    score = dist.mean(axis=1)
    if soft_weight:
        score = score * bank.weights[idx[:, 0]]
    return score


def left_out_grids(features, bank: MemoryBank, search, soft_weight: bool, image_size: int,
                   blur_sigma: float, budget_mb: float = 1024,
                   stage: str = "calibration") -> BoundedGrids:
    """Certified upper bounds on the (B, h, w) left-out patch scores of the B training images in
    `features` against `bank` (1 nearest neighbour): by grid position where the bank records its
    entries' positions, a sketch search on demand, and exact scores on demand
    (evaluation/pruned.py; ops/leave_out.py). `stage` names the progress bars."""
    if bank.sources is None:
        raise NotImplementedError("the memory bank does not record its entries' source images "
                                  "(a model saved by an earlier version)")
    b, p, d = features.patches.shape
    queries = features.patches.reshape(b * p, d)
    groups = np.repeat(np.arange(b, dtype=np.int32), p)
    weights = bank.weights if soft_weight else None
    sketch = leave_out.SketchBounds(bank.features, bank.sources, weights, budget_mb)
    # |q|^2 rounds by the row count of the chunk it is computed in (ops/knn.py), and a call
    # with fewer queries than a chunk uses smaller chunks: padded to at least the full pass's
    # chunk, a subset's scores are bitwise the full pass's.
    rows = min(len(queries), knn.MAX_ROWS)
    prepared = search.prepare(bank.features) if isinstance(search, knn.PrunedSearch) else None

    def exact(idx: np.ndarray) -> np.ndarray:
        padded = np.concatenate([idx, np.repeat(idx[-1:], max(0, rows - len(idx)))])
        return query_scores(queries[padded], bank, search, soft_weight, 1, groups[padded],
                            budget_mb, f"{stage}: left-out scores", prepared)[:len(idx)]

    def sketched(idx: np.ndarray) -> np.ndarray:
        return sketch(queries[idx], groups[idx], f"{stage}: bounds")

    shape = (b,) + tuple(features.grid)
    if bank.positions is None:  # a bank saved before positions were recorded
        return BoundedGrids(np.full(shape, np.inf), exact, image_size, blur_sigma, (sketched,))
    upper = leave_out.window_bounds(features.patches, features.grid, bank.features,
                                    bank.sources, bank.positions, weights)
    return BoundedGrids(upper.reshape(shape), exact, image_size, blur_sigma, (sketched,))


def reweighted_image_scores(test_features: np.ndarray, patch: np.ndarray, bank: MemoryBank,
                            neighbours: int = 9, budget_mb: float = 1024) -> np.ndarray:
    """PatchCore's image-score reweighting (paper eq. 7, as anomalib computes it).

    For each image: the most anomalous patch f*, its patch score s (a squared distance, times a
    soft weight where the method has them) and s* = sqrt(s) (for PatchCore the Euclidean
    distance ||f* - m*||, as the paper weights it), its nearest bank entry m*, the `neighbours`
    nearest entries of m* in the bank N_b (m* first); weight = 1 - softmax over ||f* - m||,
    m in N_b, taken at m*; image score = weight * s*. -> (T,)
    """
    t, p, d = test_features.shape
    best = patch.argmax(axis=1)
    f_star = test_features[np.arange(t), best]  # (T, D)
    _, m_star = knn.nearest_neighbour(f_star, bank.features, budget_mb)
    b = min(neighbours, bank.features.shape[0])
    _, support = knn.k_nearest(bank.features[m_star], bank.features, b, budget_mb)  # (T, b)
    diff = f_star[:, None, :].astype(np.float64) - bank.features[support]
    dist = np.sqrt((diff ** 2).sum(-1))  # Euclidean, as the paper
    soft = np.exp(dist - dist.max(axis=1, keepdims=True))
    weight = 1.0 - soft[:, 0] / soft.sum(axis=1)
    return weight * np.sqrt(patch[np.arange(t), best])


# -- the traced scorer (what --mode=export serialises; equal to `score`, tested) -----------------
def bank_arrays(bank: MemoryBank) -> Dict[str, np.ndarray]:
    """A memory bank's arrays for a traced scorer: features, soft weights and |b|^2 computed as
    the in-process search computes it (so the arithmetic matches)."""
    features = np.asarray(bank.features, np.float32)
    return {"features": features, "weights": np.asarray(bank.weights, np.float32),
            "sq": np.asarray(knn.bank_sq_norms(jnp.asarray(features)))}


def traced_patch_scores(feats, bank: dict, num_nn: int, soft_weight: bool, rows: int):
    """`patch_scores`, traceable: (N, P, D) features, `bank_arrays` -> ((N, P) patch scores,
    (N, P) nearest entry)."""
    n, p, d = feats.shape
    dist, idx = knn.traced_k_nearest(feats.reshape(n * p, d), bank["features"], bank["sq"],
                                     num_nn, rows)
    score = dist.mean(axis=1)
    if soft_weight:
        score = score * bank["weights"][idx[:, 0]]
    return score.reshape(n, p), idx[:, 0].reshape(n, p)


def traced_image_scores(feats, patch, nearest, bank: dict, neighbours: int, rows: int):
    """(N,) image scores as `PatchCore.image_scores`, traceable: the maximum patch score, or with
    `neighbours` > 0 `reweighted_image_scores` in float32 (the in-process form runs float64:
    equal within the export tolerance)."""
    if neighbours <= 0:
        return patch.max(axis=1)
    t = jnp.arange(patch.shape[0])
    best = jnp.argmax(patch, axis=1)
    f_star, m_star = feats[t, best], nearest[t, best]
    b = min(neighbours, bank["features"].shape[0])
    _, support = knn.traced_k_nearest(bank["features"][m_star], bank["features"], bank["sq"], b,
                                      rows)
    diff = f_star[:, None, :] - bank["features"][support]
    dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    soft = jnp.exp(dist - dist.max(axis=1, keepdims=True))
    return (1.0 - soft[:, 0] / soft.sum(axis=1)) * jnp.sqrt(patch[t, best])


def bank_options(config) -> dict:
    """The `bank` section of `config` (shared by PatchCore, SoftPatch and SoftPatch+) with the
    backbone's taps, checked, as keyword arguments."""
    b, runtime = config.bank, config.runtime
    if not 0.0 < b.coreset_ratio <= 1.0:
        raise ValueError(f"bank.coreset_ratio={b.coreset_ratio} must lie in (0, 1]")
    if b.num_nn < 1:
        raise ValueError(f"bank.num_nn={b.num_nn} must be >= 1")
    if b.reweight_neighbours < 0:
        raise ValueError(f"bank.reweight_neighbours={b.reweight_neighbours} must be >= 0")
    if b.sampler not in SAMPLERS:
        raise ValueError(f"bank.sampler={b.sampler!r} must be one of {', '.join(SAMPLERS)}")
    budget = runtime.memory_budget_mb
    exact = bool(runtime.exact_pruning)  # pruned exact paths (same results)
    sampler = (GreedyCoreset(b.projection_dim, b.num_starts, budget, pruning=exact)
               if b.sampler == "greedy" else RandomSubsample())
    return dict(layers=tuple(comma_list(config.backbone.layers)),
                coreset_ratio=b.coreset_ratio, num_nn=b.num_nn,
                reweight_neighbours=b.reweight_neighbours, image_size=config.data.image_size,
                blur_sigma=config.model.blur_sigma, budget_mb=budget,
                sampler=sampler,
                search=make_search(budget, runtime.multi_device, exact))


class PatchCore(Method):
    """PatchCore: no denoising, no soft weights."""
    name = "patchcore"
    soft_weight = False  # scores are plain distances (SoftPatch sets its own)

    def __init__(self, *, layers, coreset_ratio: float = 0.1, num_nn: int = 1,
                 reweight_neighbours: int = 0, image_size: int = 224, blur_sigma: float = 4.0,
                 budget_mb: float = 1024, sampler: Sampler = GreedyCoreset(),
                 search=knn.BruteForce()):
        self.features = FeatureSpec(tuple(layers))
        self.coreset_ratio, self.num_nn = coreset_ratio, num_nn
        self.reweight_neighbours = reweight_neighbours
        self.image_size, self.blur_sigma, self.budget_mb = image_size, blur_sigma, budget_mb
        self.sampler, self.search = sampler, search

    @classmethod
    def from_config(cls, config) -> "PatchCore":
        return cls(**bank_options(config))

    def with_sampler(self, wrap) -> "PatchCore":
        wrapped = copy.copy(self)  # SoftPatch and SoftPatch+ inherit this
        wrapped.sampler = wrap(self.sampler)
        return wrapped

    def fit(self, features: Features, key: jax.Array, learned=None,
            progress: bool = True) -> MemoryBank:
        train = features.patches
        b, p, _ = train.shape
        _, key_bank = jax.random.split(key)  # the first half of the split is SoftPatch's
        ones = np.ones((b, p), np.float32)
        bank, _ = build_bank(train, ones, ones, self.coreset_ratio, key_bank,
                             dataclasses.replace(self.sampler, progress=progress))
        return bank

    def bank_scores(self, bank: MemoryBank, features: Features, soft_weight: bool,
                    exclude: Optional[np.ndarray] = None, desc: str = "1-NN scores"
                    ) -> np.ndarray:
        """(T, h, w) patch-score grids against one bank (`exclude`: see `patch_scores`)."""
        t = len(features)
        return patch_scores(features.patches, bank, self.search, soft_weight, self.num_nn,
                            exclude, self.budget_mb, desc).reshape(t, *features.grid)

    def image_scores(self, bank: MemoryBank, features: Features, grids: np.ndarray) -> np.ndarray:
        patch = grids.reshape(len(features), -1)
        if self.reweight_neighbours > 0:
            return reweighted_image_scores(features.patches, patch, bank,
                                           self.reweight_neighbours, self.budget_mb)
        return patch.max(axis=1)

    def score(self, fitted: MemoryBank, features: Features,
              exclude: Optional[np.ndarray] = None) -> Scores:
        grids = self.bank_scores(fitted, features, False, exclude)
        return Scores(self.image_scores(fitted, features, grids), grids, self.image_size,
                      self.blur_sigma)

    def training_scores(self, fitted, features: Features) -> Scores:
        """Each training image scored without the bank entries taken from it: one more 1-NN
        pass over the training patches (`score` with `exclude`)."""
        if self.reweight_neighbours > 0:  # its bank-neighbour support has no such form
            raise NotImplementedError("bank.reweight_neighbours > 0 has no leave-own-image-out "
                                      "scoring")
        return self.score(fitted, features, exclude=np.arange(len(features)))

    def left_out_image_scores(self, bank: MemoryBank, features: Features,
                              stage: str = "estimate") -> np.ndarray:
        """(B,) each training image's score against `bank` without the entries taken from it
        (`training_scores(...).image` of a one-bank fit, bit for bit): by bounds on CPU where
        the method has them, as the calibration computes them. `stage` names the progress bars."""
        if jax.default_backend() == "cpu":
            try:
                return pruned.image_maxima(self._bank_bounds(bank, features, stage))
            except NotImplementedError:
                pass
        grids = self.bank_scores(bank, features, self.soft_weight, np.arange(len(features)),
                                 f"{stage}: left-out scores")
        return self.image_scores(bank, features, grids)

    def _bank_bounds(self, bank: MemoryBank, features: Features,
                     stage: str = "calibration") -> BoundedGrids:
        """`left_out_grids` of one bank with this method's search and weights;
        NotImplementedError where its scores have no bounds."""
        if self.reweight_neighbours > 0 or self.num_nn != 1:
            raise NotImplementedError("bounds are for 1-NN scores without reweighting")
        return left_out_grids(features, bank, self.search, self.soft_weight, self.image_size,
                              self.blur_sigma, self.budget_mb, stage)

    def _left_out_banks(self, fitted):
        """(the bank of the image scores, the bank of the maps)."""
        return fitted, fitted

    def training_bounds(self, fitted, features: Features):
        """The left-out patch scores of `training_scores` as BoundedGrids, exact on demand:
        (those of the image scores, those of the maps; one object when one bank gives both)."""
        image_bank, map_bank = self._left_out_banks(fitted)
        grids = [self._bank_bounds(bank, features)
                 for bank in ((image_bank,) if map_bank is image_bank else (image_bank, map_bank))]
        return grids[0], grids[-1]

    def traced_banks(self, fitted) -> Tuple[Dict[str, dict], str, str]:
        """({name: bank_arrays}, the bank of the image scores, the bank of the maps)."""
        return {"bank": bank_arrays(fitted)}, "bank", "bank"

    def traced_scorer(self, fitted):
        banks, image_bank, map_bank = self.traced_banks(fitted)
        rows = {name: knn.brute_step(b["features"].shape[0], self.budget_mb)  # as in-process
                for name, b in banks.items()}

        def scorer(inputs, feats):
            patch, nearest = traced_patch_scores(feats, inputs[image_bank], self.num_nn,
                                                 self.soft_weight, rows[image_bank])
            image = traced_image_scores(feats, patch, nearest, inputs[image_bank],
                                        self.reweight_neighbours, rows[image_bank])
            if map_bank != image_bank:
                patch, _ = traced_patch_scores(feats, inputs[map_bank], self.num_nn,
                                               self.soft_weight, rows[map_bank])
            return patch, image
        return scorer, banks

    def fitted_from_arrays(self, arrays) -> MemoryBank:
        return MemoryBank.from_arrays(arrays)

    def summary(self, fitted: MemoryBank) -> dict:
        return {"memory_bank": int(fitted.features.shape[0])}


register(PatchCore)
