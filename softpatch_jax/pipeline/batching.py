"""Several sweep points' coresets as one batched program (`sweep.batch_points`).

A greedy coreset is a long chain of small steps; on an accelerator one of them leaves most of the
device idle, while a sweep holds many independent ones. The points of a batch run in threads,
each with its method's sampler wrapped in a `BatchedCoreset`; a selection waits at a shared
`CoresetHub` until every running point is either waiting for a selection or finished, and the
last to arrive runs all waiting selections as one `coreset.greedy_coreset_batch` call. Problems of
different sizes are padded with zero-weight rows, which never change the picks; a point asking
for fewer picks takes the prefix of the longer run (greedy picks are sequential), so each result
equals its single run exactly.
"""
import dataclasses
import threading
from typing import List, Optional

import numpy as np

from softpatch_jax.ops import coreset


@dataclasses.dataclass
class _Request:
    reduced: np.ndarray
    count: int
    key: object
    weights: Optional[np.ndarray]
    num_starts: int
    result: Optional[np.ndarray] = None
    error: Optional[BaseException] = None
    done: bool = False


class CoresetHub:
    """The meeting point of the selections of the points that run together."""

    def __init__(self):
        self._cv = threading.Condition()
        self._active = 0
        self._waiting: List[_Request] = []
        self.batches: List[int] = []  # sizes of the batched calls made (for tests and logs)

    def join(self) -> None:
        with self._cv:
            self._active += 1

    def leave(self) -> None:
        with self._cv:
            self._active -= 1
            self._maybe_run()

    def select(self, reduced, count: int, key, weights, num_starts: int) -> np.ndarray:
        req = _Request(np.asarray(reduced, np.float32), count, key,
                       None if weights is None else np.asarray(weights, np.float32), num_starts)
        with self._cv:
            self._waiting.append(req)
            self._maybe_run()
            while not req.done:
                self._cv.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def _maybe_run(self) -> None:
        """Runs the waiting selections when no running point can add one (lock held)."""
        if not self._waiting or len(self._waiting) < self._active:
            return
        batch, self._waiting = self._waiting, []
        try:
            for req, picks in zip(batch, _run(batch)):
                req.result = picks
        except BaseException as e:  # every waiting point sees the failure
            for req in batch:
                req.error = e
        for req in batch:
            req.done = True
        self.batches.append(len(batch))
        self._cv.notify_all()


def _run(batch: List[_Request]) -> List[np.ndarray]:
    """Pads the problems to one size and runs them in one batched call."""
    n = max(r.reduced.shape[0] for r in batch)
    d = batch[0].reduced.shape[1]
    xs = np.zeros((len(batch), n, d), np.float32)
    ws = np.zeros((len(batch), n), np.float32)
    for i, r in enumerate(batch):
        xs[i, :len(r.reduced)] = r.reduced
        ws[i, :len(r.reduced)] = 1.0 if r.weights is None else r.weights
    sizes = [len(r.reduced) for r in batch]
    starts = {r.num_starts for r in batch}
    if len(starts) != 1:
        raise ValueError("points of one batch must share bank.num_starts")
    picks = coreset.greedy_coreset_batch(xs, max(r.count for r in batch), [r.key for r in batch],
                                         ws, num_starts=starts.pop(), sizes=sizes)
    return [np.asarray(p[:r.count]) for p, r in zip(picks, batch)]


@dataclasses.dataclass(frozen=True)
class BatchedCoreset:
    """A `GreedyCoreset` whose selections meet at `hub`; projection is the inner one's."""
    inner: coreset.GreedyCoreset
    hub: CoresetHub
    progress: bool = False

    def project(self, features, key):
        return self.inner.project(features, key)

    def select(self, reduced, count: int, key, weights=None) -> np.ndarray:
        return self.hub.select(reduced, count, key, weights, self.inner.num_starts)


def batched(sampler, hub: CoresetHub):
    """`sampler` with its selections batched at `hub` where it is a greedy coreset; any other
    (a random subsample) as it is: it has no greedy chain to batch."""
    return BatchedCoreset(sampler, hub) if isinstance(sampler, coreset.GreedyCoreset) else sampler

