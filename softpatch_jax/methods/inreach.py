"""InReaCh (McIntosh and Albu, "Inter-Realization Channels: Unsupervised Anomaly Detection Beyond
One-Class Classification", ICCV 2023), from the paper and the official code's defaults.

fit: the training patches (with a positional embedding where the training images' mean is not
symmetric, `position_test`) are associated across images by mutual nearest neighbours against
`seeds` seed images, grouped into channels, and filtered by span and spread (ops/channels.py);
the patches left are the memory bank, every one of them (no coreset).
score: the squared distance of each test patch to its nearest bank patch (as the official code's
faiss IndexFlatL2); the image score is the maximum of the anomaly map, blurred with
`blur_sigma` (the official code's 13).

Deviations from the official code (docs/methods.md, "InReaCh"): our backbone and patch features
(the bank methods' `backbone.layers`, eval-mode batch norm) instead of 13 WideResNet-50 blocks
with batch statistics of each image; channels keyed as the code's comment says (seed image, seed
patch), where the code swaps the two patch indices; bilinear upsampling of the map, not nearest;
the position test also on non-square canvases (against the 180-degree rotation there).
"""
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax.data import preprocess
from softpatch_jax.evaluation import anomaly_map
from softpatch_jax.methods.base import Features, Scores
from softpatch_jax.methods.patchcore import (MemoryBank, PatchCore, bank_arrays, bank_options,
                                             traced_patch_scores)
from softpatch_jax.methods.registry import register
from softpatch_jax.ops import channels, knn


@flax.struct.dataclass
class ChannelBank:
    bank: MemoryBank              # the nominal patches (M, D + 2 with the embedding)
    position_weight: np.ndarray   # () the embedding's weight (0: none)
    grid: np.ndarray              # (2,) int32 the feature grid (h, w)

    def to_arrays(self):
        return {**self.bank.to_arrays("bank/"), "position_weight": np.asarray(
            self.position_weight, np.float32), "grid": np.asarray(self.grid, np.int32)}

    @classmethod
    def from_arrays(cls, arrays) -> "ChannelBank":
        return cls(MemoryBank.from_arrays(arrays, "bank/"),
                   np.asarray(arrays["position_weight"], np.float32),
                   np.asarray(arrays["grid"], np.int32))


def mean_image_asymmetry(samples, resize: int, image_size, batch_size: int = 16,
                         progress: bool = True) -> float:
    """The official position test's statistic: the mean squared difference, in 0-255 pixel
    units, between the training images' mean and its transpose (its 180-degree rotation on a
    non-square canvas)."""
    total, n = None, 0
    with tqdm(total=len(samples), desc="inreach: position test", disable=not progress,
              leave=False) as bar:
        for _, imgs in preprocess.batches(samples, batch_size, resize, image_size):
            pixels = (imgs * preprocess.IMAGENET_STD + preprocess.IMAGENET_MEAN) * 255.0
            total = pixels.sum(0, dtype=np.float64) if total is None else total + pixels.sum(0)
            n += len(imgs)
            bar.update(len(imgs))
    mean = total / n
    other = mean.transpose(1, 0, 2) if mean.shape[0] == mean.shape[1] else mean[::-1, ::-1]
    return float(np.mean((mean - other) ** 2))


class InReaCh(PatchCore):
    """The channels' nominal patches as a memory bank (PatchCore's search and its bounds)."""
    name = "inreach"
    prepare_stage = "position_test"

    def __init__(self, *, seeds: int = 10, min_channel_length: int = 3,
                 max_channel_std: float = 5.0, spread: str = "spherical", position_weight: float = 5.0,
                 position_test: bool = True, position_threshold: float = 1000.0,
                 resize: int = 256, load_batch: int = 16, **bank):
        super().__init__(**bank)
        self.sampler = None  # no coreset: the bank is every nominal patch
        self.seeds, self.min_channel_length = seeds, min_channel_length
        self.max_channel_std, self.spread = max_channel_std, spread
        self.position_weight, self.position_test = position_weight, position_test
        self.position_threshold = position_threshold
        self.resize, self.load_batch = resize, load_batch

    @classmethod
    def from_config(cls, config) -> "InReaCh":
        own = dict(config.inreach.to_dict())
        if own["seeds"] < 1:
            raise ValueError(f"inreach.seeds={own['seeds']} must be >= 1")
        if own["min_channel_length"] < 1:
            raise ValueError(f"inreach.min_channel_length={own['min_channel_length']} must "
                             "be >= 1")
        if own["max_channel_std"] <= 0:
            raise ValueError(f"inreach.max_channel_std={own['max_channel_std']} must be > 0")
        if own["spread"] not in ("code", "spherical"):
            raise ValueError(f"inreach.spread={own['spread']!r} must be code (the official "
                             "code's standard deviation of distances) or spherical")
        if own["position_weight"] < 0:
            raise ValueError(f"inreach.position_weight={own['position_weight']} must be >= 0")
        if own["blur_sigma"] < 0:
            raise ValueError(f"inreach.blur_sigma={own['blur_sigma']} must be >= 0")
        if config.bank.sampler != "greedy":
            raise ValueError(f"bank.sampler={config.bank.sampler!r} does not apply to "
                             "model.method=inreach: its bank is every nominal patch; leave "
                             "it greedy")
        bank = bank_options(config)
        bank.update(blur_sigma=float(own.pop("blur_sigma")), coreset_ratio=1.0, num_nn=1,
                    reweight_neighbours=0)
        del bank["sampler"]
        return cls(**own, resize=config.data.resize, load_batch=config.data.batch_size,
                   **bank)

    def with_sampler(self, wrap) -> "InReaCh":
        return self  # no sampler to wrap

    @property
    def label(self) -> str:
        return "channels"

    def check(self, n_train: int) -> None:
        if n_train <= self.min_channel_length:
            raise ValueError(f"model.method=inreach needs more than inreach.min_channel_length"
                             f"={self.min_channel_length} training images for a channel to "
                             f"span, but there are {n_train}; add training images or lower it")

    def prepare(self, samples, extractor, directory: str, key: jax.Array):
        """The positional embedding's weight: `position_weight` where the training images'
        mean is asymmetric (`mean_image_asymmetry` >= `position_threshold`) or without the
        test, else 0."""
        if not self.position_test or self.position_weight == 0:
            return extractor, float(self.position_weight)
        asym = mean_image_asymmetry(samples, self.resize, self.image_size, self.load_batch)
        return extractor, float(self.position_weight if asym >= self.position_threshold else 0)

    def fit(self, features: Features, key: jax.Array, learned: Optional[float] = None,
            progress: bool = True) -> ChannelBank:
        weight = float(self.position_weight if learned is None else learned)
        patches = channels.with_positions(features.patches, features.grid, weight)
        assoc = channels.associate(patches, self.seeds, self.budget_mb, progress)
        nominal = channels.channel_members(patches, assoc, self.min_channel_length,
                                           self.max_channel_std, self.spread, self.budget_mb)
        if not nominal.any():
            raise ValueError("inreach: no channel spans more than inreach.min_channel_length="
                             f"{self.min_channel_length} images, so no patch is nominal; lower "
                             "it or inreach.max_channel_std's strictness (raise it)")
        p = patches.shape[1]
        rows = np.nonzero(nominal.reshape(-1))[0]
        flat = patches.reshape(-1, patches.shape[2])
        bank = MemoryBank(np.asarray(flat[rows]), np.ones(len(rows), np.float32),
                          (rows // p).astype(np.int32), (rows % p).astype(np.int32))
        return ChannelBank(bank, np.float32(weight), np.asarray(features.grid, np.int32))

    def _embedded(self, fitted: ChannelBank, features: Features) -> Features:
        return Features(channels.with_positions(features.patches, tuple(fitted.grid),
                                                float(fitted.position_weight)), features.grid)

    def score(self, fitted: ChannelBank, features: Features,
              exclude: Optional[np.ndarray] = None) -> Scores:
        embedded = self._embedded(fitted, features)
        grids = self.bank_scores(fitted.bank, embedded, False, exclude)
        maps = anomaly_map.anomaly_maps(grids, self.image_size, self.blur_sigma)
        return Scores(maps.max(axis=(1, 2)), grids, self.image_size, self.blur_sigma, maps)

    def training_bounds(self, fitted, features: Features):
        # The image score is the blurred map's maximum, which the bounds of the patch maxima
        # do not bound: calibration takes `training_scores` (one left-out pass).
        raise NotImplementedError("inreach's image scores are map maxima")

    def left_out_image_scores(self, bank, features: Features, stage: str = "estimate"):
        raise NotImplementedError("inreach has no contamination estimate of its own")

    def traced_scorer(self, fitted: ChannelBank):
        """Positions appended, 1-NN squared distances to the bank; the image score is the
        map's maximum (None)."""
        inputs = {"bank": bank_arrays(fitted.bank)}
        rows = knn.brute_step(fitted.bank.features.shape[0], self.budget_mb)
        grid, weight = tuple(int(g) for g in fitted.grid), float(fitted.position_weight)

        def scorer(x, feats):
            patch, _ = traced_patch_scores(channels.with_positions(feats, grid, weight),
                                           x["bank"], 1, False, rows)
            return patch, None
        return scorer, inputs

    def fitted_from_arrays(self, arrays) -> ChannelBank:
        return ChannelBank.from_arrays(arrays)

    def summary(self, fitted: ChannelBank) -> dict:
        return {"memory_bank": int(fitted.bank.features.shape[0]),
                "position_weight": float(fitted.position_weight)}


register(InReaCh)
