"""Seconds per named stage of a run (result.json's `stage_seconds`), passed down explicitly.

    clock = StageClock()
    with clock.stage("coreset"):
        ...
    clock.seconds  # {"coreset": 6.12}

A stage entered twice accumulates. `NO_CLOCK` records nothing (the default of every argument).
"""
import contextlib
import time
from typing import Dict, Iterator

# result.json's stage_seconds, in the order a category runs them (absent where not run): the
# check that every image decodes (before any compute; in a sweep, on a category's first point in
# each process), FYD's alignment training, training features, the fit's stages (`fit` for methods
# without finer ones; `estimate` is an `auto` ratio's provisional fit), leave-own-image-out
# scores and thresholds, the training-set audit, the checkpoint, test features, scoring with the
# maps, metrics and the report's assets. JSON files sort their keys: show stages in this order.
STAGES = ("image_check", "prefilter", "alignment", "position_test", "features_train", "discriminator", "estimate", "coreset",
          "fit", "calibration", "audit", "checkpoint", "features_test", "scoring", "metrics",
          "report_assets")


class StageClock:
    def __init__(self):
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def rounded(self) -> Dict[str, float]:
        return {k: round(v, 2) for k, v in self.seconds.items()}


class _NoClock(StageClock):
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


NO_CLOCK = _NoClock()
