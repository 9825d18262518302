"""Exact image scores and pixel threshold from patch scores known within bounds.

Calibration needs, of the training images' left-out patch scores, only each image's largest
(its image score) and the upper tail of the blurred maps (the pixel threshold, a high quantile).
`BoundedGrids` holds a certified upper bound for every patch score (ops/leave_out.py; scores are
>= 0), tighter bounds on demand (`tighter`, cheapest first) and exact scores on demand
(`exact_fn`). The two functions here move a patch one step up (a tighter bound, or its exact
score) only while its bound leaves their answer open, and return exactly what the full
computation returns:

* `image_maxima`: each image's patches with the largest bounds get tighter bounds, and the few
  with the largest tightest bounds their exact scores; a patch whose bound is below the largest exact score of its image
  cannot be the maximum; the others move up until none is left open, and the maximum is taken
  over exact values.
* `pixel_threshold`: the map operator (bilinear upsampling, then a Gaussian blur: nonnegative
  weights, and float rounding is monotone) maps lower / upper bound grids (exact where known, 0 /
  the bound elsewhere) to lower / upper bound maps. The patches under the pixels with the largest
  upper bounds move up first; then t, the order statistic np.quantile reads taken of the lower
  maps, is a lower bound of the exact one, and pixels whose upper bound is below t cannot reach
  it. The patches under the other pixels (their supports: the operator's nonzero weights) move
  up until every such pixel is exact. The threshold is then `thresholds.pixel_threshold` of the
  maps of a grid holding exact values where computed and upper bounds elsewhere: every pixel that
  can reach the quantile is bitwise the full computation's (weights outside its support are exact
  zeros), every other stays below t, so np.quantile reads the same two order statistics.
"""
import dataclasses
from typing import Callable, Sequence

import numpy as np

from softpatch_jax import shapes
from softpatch_jax.evaluation import anomaly_map, thresholds


@dataclasses.dataclass
class BoundedGrids:
    """Patch scores of B images on an (h, w) grid: 0 <= exact <= `upper` (float64, inf = no
    bound yet). `tighter`: callables, cheapest first, each (n,) flat patch indices -> (n,)
    tighter certified upper bounds; `exact_fn`: (n,) flat patch indices -> (n,) float32 exact
    scores. `level` counts the tighter bounds a patch has had; `known` marks the patches computed
    exactly (their `upper` is then their value). Maps are `image_size` (N or (H, W)), blurred with
    `blur_sigma` (as methods.base.Scores). `direct_share`: see `tighten`."""
    upper: np.ndarray
    exact_fn: Callable[[np.ndarray], np.ndarray]
    image_size: object
    blur_sigma: float
    tighter: Sequence[Callable[[np.ndarray], np.ndarray]] = ()
    direct_share: float = 0.2
    known: np.ndarray = None
    values: np.ndarray = None
    level: np.ndarray = None

    def __post_init__(self):
        shape = self.upper.shape
        self.known = np.zeros(shape, bool) if self.known is None else self.known
        self.values = np.zeros(shape, np.float32) if self.values is None else self.values
        self.level = np.zeros(shape, np.int8) if self.level is None else self.level

    def refine(self, mask: np.ndarray) -> None:
        """Computes the patches of `mask` (B, h, w) bool not yet known exactly."""
        idx = np.flatnonzero(mask & ~self.known)
        if idx.size == 0:
            return
        exact = np.asarray(self.exact_fn(idx), np.float32)
        self.values.reshape(-1)[idx] = exact
        self.upper.reshape(-1)[idx] = exact
        self.known.reshape(-1)[idx] = True

    def tighten(self, mask: np.ndarray, exact: bool = True) -> bool:
        """Moves each patch of `mask` not known exactly one step up: its next tighter bound, or
        its exact score after the last (not with `exact=False`). Where that is more than
        `direct_share` of all patches, bounds would not save enough to pay for themselves: they
        are computed exactly at once. -> False if there was none to move."""
        open_ = mask & ~self.known
        if not exact:
            open_ &= self.level < len(self.tighter)
        if not open_.any():
            return False
        if exact and open_.sum() > self.direct_share * open_.size:
            self.refine(open_)
            return True
        level = self.level.copy()
        for step, bound in enumerate(self.tighter):
            idx = np.flatnonzero(open_ & (level == step))
            if idx.size:
                flat = self.upper.reshape(-1)
                flat[idx] = np.minimum(flat[idx], bound(idx))
                self.level.reshape(-1)[idx] = step + 1
        self.refine(open_ & (level >= len(self.tighter)))
        return True

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
        """Patches without a finite bound move up until they have one; False if an exact score
        is not finite (then every patch is computed and the caller takes the full path)."""
        while self.tighten(~np.isfinite(self.upper)):
            pass
        if not np.isfinite(self.values[self.known]).all():
            self.refine(np.ones(self.known.shape, bool))
            return False
        return True


def image_maxima(g: BoundedGrids) -> np.ndarray:
    """(B,) float32: each image's largest exact patch score, as `grids.max` of the exact grids."""
    b = g.upper.shape[0]
    if not g._finite():
        return g.values.reshape(b, -1).max(axis=1)
    # A floor first, in two calls: each image's 32 patches with the largest bounds get tighter
    # bounds, then the 4 with the largest tightest bounds their exact scores.
    size, top = g.upper[0].size, len(g.tighter)
    for count in (32,) * top + (4,):
        upper = np.where(g.level >= top, g.upper, -np.inf) if count == 4 else g.upper
        upper = upper.reshape(b, -1)
        kth = np.partition(upper, size - min(count, size), axis=1)[:, size - min(count, size)]
        g.tighten((upper >= kth[:, None]).reshape(g.upper.shape) & np.isfinite(
            upper.reshape(g.upper.shape)), exact=count == 4)
    while True:
        best = np.where(g.known, g.values, -np.inf).reshape(b, -1).max(axis=1)
        # >=: a patch tied with the best may be the maximum itself
        if not g.tighten(g.upper >= best[:, None, None]):
            return best.astype(np.float32)


def _order_statistic(values: np.ndarray, rank: int) -> float:
    """np.partition(values, rank)[rank] for values >= 0, most of them 0 (a lower map is 0 where
    no patch under a pixel is known): only the positive ones are partitioned."""
    positive = values[values > 0]
    zeros = values.size - positive.size
    return 0.0 if rank < zeros else float(np.partition(positive, rank - zeros)[rank - zeros])


def _supports(grid: int, size: int, sigma: float) -> np.ndarray:
    """(size, grid) float32 0/1: which grid cells a map row (or column) reads."""
    return (anomaly_map.map_operator(grid, size, sigma) != 0).astype(np.float32)


def pixel_threshold(g: BoundedGrids, keep: np.ndarray, false_reject: float) -> float:
    """`thresholds.pixel_threshold(anomaly_maps(exact grids), keep, false_reject)`, computing
    only the patches under pixels that can reach the quantile (module docstring)."""
    b, h, w = g.upper.shape
    image_size, sigma = g.image_size, g.blur_sigma
    height, width = shapes.hw(image_size)
    keep = np.asarray(keep, bool)
    maps = lambda grid: anomaly_map.anomaly_maps(grid, image_size, sigma)  # noqa: E731
    if not g._finite() or not keep.any():
        return thresholds.pixel_threshold(maps(g.values), keep, false_reject)
    n = int(keep.sum()) * height * width
    # the lower of the two order statistics np.quantile (linear) reads, one lower for safety
    rank = max(0, int(np.floor((1.0 - false_reject) * (n - 1))) - 1)
    sy, sx = _supports(h, height, sigma), _supports(w, width, sigma)

    def under(pixels: np.ndarray) -> np.ndarray:
        """(B, h, w) bool: the patches under (kept, H, W) bool pixels."""
        k = pixels.shape[0]
        cols = (pixels.reshape(-1, width).astype(np.float32) @ sx).reshape(k, height, w)
        rows = sy.T @ cols.transpose(1, 0, 2).reshape(height, k * w)  # two plain GEMMs
        need = np.zeros((b, h, w), bool)
        need[keep] = rows.reshape(h, k, w).transpose(1, 0, 2) > 0
        return need

    # first the patches under the pixels with the largest bounds, twice as many pixels as reach
    # the quantile: through each tighter bound to exact, re-ranked at each step
    first = min(n, 2 * (n - rank))
    for _ in range(len(g.tighter) + 1):
        high = maps(g.upper_grid())[keep].reshape(-1)
        top = np.zeros(n, bool)
        top[np.argpartition(high, n - first)[n - first:]] = True
        g.tighten(under(top.reshape(-1, height, width)))
    while True:
        t = _order_statistic(maps(g.lower_grid())[keep].reshape(-1), rank)
        if not g.tighten(under(maps(g.upper_grid())[keep] >= t)):
            break
    return thresholds.pixel_threshold(maps(g.upper_grid()), keep, false_reject)
