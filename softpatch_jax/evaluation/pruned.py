"""Exact image scores and pixel threshold from patch scores known within bounds.

Calibration needs, of the training images' left-out patch scores, only each image's largest
(its image score) and the upper tail of the blurred maps (the pixel threshold, a high quantile).
`BoundedGrids` holds a certified upper bound for every patch score (ops/leave_out.py; scores are
>= 0) and computes exact scores on demand; the two functions here ask only for the patches that
can still change their answer, and return exactly what the full computation returns:

* `image_maxima`: each image's patch with the largest bound is computed; a patch whose bound is
  below that exact score cannot be the maximum, the others are computed, and the maximum is taken
  over exact values.
* `pixel_threshold`: the map operator (bilinear upsampling, then a Gaussian blur: nonnegative
  weights, and float rounding is monotone) maps lower / upper bound grids (exact where known, 0 /
  the bound elsewhere) to lower / upper bound maps. The patches under the pixels with the largest
  upper bounds are computed first; then t, the order statistic np.quantile reads taken of the
  lower maps, is a lower bound of the exact one, and pixels whose upper bound is below t cannot
  reach it. The patches under the other pixels (their supports: the operator's nonzero weights)
  are computed, until every such pixel is exact. The threshold is then
  `thresholds.pixel_threshold` of the maps of a grid holding exact values where computed and
  upper bounds elsewhere: every pixel that can reach the quantile is bitwise the full
  computation's (weights outside its support are exact zeros), every other stays below t, so
  np.quantile reads the same two order statistics.
"""
import dataclasses
from typing import Callable

import numpy as np

from softpatch_jax.evaluation import anomaly_map, thresholds


@dataclasses.dataclass
class BoundedGrids:
    """Patch scores of B images on an (h, w) grid: 0 <= exact <= `upper` (float64), with
    `exact_fn` ((n,) flat patch indices -> (n,) float32 exact scores) to compute some exactly;
    `known` marks those computed (their `upper` is then their value). Maps are `image_size`
    square, blurred with `blur_sigma` (as methods.base.Scores)."""
    upper: np.ndarray
    exact_fn: Callable[[np.ndarray], np.ndarray]
    image_size: int
    blur_sigma: float
    known: np.ndarray = None
    values: np.ndarray = None

    def __post_init__(self):
        if self.known is None:
            self.known = np.zeros(self.upper.shape, bool)
        if self.values is None:
            self.values = np.zeros(self.upper.shape, np.float32)

    def refine(self, mask: np.ndarray) -> None:
        """Computes the patches of `mask` (B, h, w) bool not yet known."""
        idx = np.flatnonzero(mask & ~self.known)
        if idx.size == 0:
            return
        exact = np.asarray(self.exact_fn(idx), np.float32)
        self.values.reshape(-1)[idx] = exact
        self.upper.reshape(-1)[idx] = exact
        self.known.reshape(-1)[idx] = True

    @property
    def computed_share(self) -> float:
        """Share of the patches computed exactly so far."""
        return float(self.known.mean())

    def lower_grid(self) -> np.ndarray:
        return np.where(self.known, self.values, np.float32(0))

    def upper_grid(self) -> np.ndarray:
        """float32, rounded from the float64 bounds (to nearest: still >= the float32 exact)."""
        return np.where(self.known, self.values, self.upper.astype(np.float32))

    def _finite(self) -> bool:
        """Patches without a finite bound are computed; False if an exact score is not finite
        (then every patch is computed and the caller takes the full path)."""
        open_ = ~np.isfinite(self.upper)
        if open_.any():
            self.refine(open_)
        if not np.isfinite(self.values[self.known]).all():
            self.refine(np.ones(self.known.shape, bool))
            return False
        return True


def image_maxima(g: BoundedGrids) -> np.ndarray:
    """(B,) float32: each image's largest exact patch score, as `grids.max` of the exact grids."""
    b = g.upper.shape[0]
    if not g._finite():
        return g.values.reshape(b, -1).max(axis=1)
    first = np.zeros(g.upper.shape, bool)
    first.reshape(b, -1)[np.arange(b), g.upper.reshape(b, -1).argmax(axis=1)] = True
    g.refine(first)
    while True:
        best = np.where(g.known, g.values, -np.inf).reshape(b, -1).max(axis=1)
        # >=: a patch tied with the best may be the maximum itself
        todo = ~g.known & (g.upper >= best[:, None, None])
        if not todo.any():
            return best.astype(np.float32)
        g.refine(todo)


def _supports(grid: int, size: int, sigma: float) -> np.ndarray:
    """(size, grid) float32 0/1: which grid cells a map row (or column) reads."""
    return (anomaly_map.map_operator(grid, size, sigma) != 0).astype(np.float32)


def pixel_threshold(g: BoundedGrids, keep: np.ndarray, false_reject: float) -> float:
    """`thresholds.pixel_threshold(anomaly_maps(exact grids), keep, false_reject)`, computing
    only the patches under pixels that can reach the quantile (module docstring)."""
    b, h, w = g.upper.shape
    image_size, sigma = g.image_size, g.blur_sigma
    keep = np.asarray(keep, bool)
    maps = lambda grid: anomaly_map.anomaly_maps(grid, image_size, sigma)  # noqa: E731
    if not g._finite() or not keep.any():
        return thresholds.pixel_threshold(maps(g.values), keep, false_reject)
    n = int(keep.sum()) * image_size * image_size
    # the lower of the two order statistics np.quantile (linear) reads, one lower for safety
    rank = max(0, int(np.floor((1.0 - false_reject) * (n - 1))) - 1)
    sy, sx = _supports(h, image_size, sigma), _supports(w, image_size, sigma)

    def refine_under(pixels: np.ndarray) -> bool:
        """Computes the patches under (kept, S, S) bool pixels; False if all were known."""
        k = pixels.shape[0]
        cols = (pixels.reshape(-1, image_size).astype(np.float32) @ sx).reshape(k, image_size, w)
        under = sy.T @ cols.transpose(1, 0, 2).reshape(image_size, k * w)  # two plain GEMMs
        need = np.zeros((b, h, w), bool)
        need[keep] = under.reshape(h, k, w).transpose(1, 0, 2) > 0
        if not (need & ~g.known).any():
            return False
        g.refine(need)
        return True

    high = maps(g.upper_grid())[keep].reshape(-1)
    first = min(high.size, 2 * (n - rank))  # twice as many pixels as reach the quantile
    top = np.zeros(high.size, bool)
    top[np.argpartition(high, high.size - first)[high.size - first:]] = True
    refine_under(top.reshape(-1, image_size, image_size))
    while True:
        t = np.partition(maps(g.lower_grid())[keep].reshape(-1), rank)[rank]
        if not refine_under(maps(g.upper_grid())[keep] >= t):
            break
    return thresholds.pixel_threshold(maps(g.upper_grid()), keep, false_reject)
