"""The Python API: fit on images (arrays or files), get scores, maps, verdicts and the training
set's audit back, save, load and export, all without a workdir.

    import softpatch_jax
    model = softpatch_jax.SoftPatch(discriminator="lof")   # or PatchCore(), SoftPatchPlus(), ...
    fitted = model.fit(train_images)          # (N, H, W, 3) uint8, a list of arrays or of paths
    result = model.predict(fitted, test_images)
    result.scores, result.maps, result.verdicts, result.masks   # (N,), (N, H, W), (N,), ...
    fitted.audit.flagged                      # which training images look defective
    fitted.save("widget"); fitted = softpatch_jax.load("widget")
    fitted.export("widget_export")            # a scorer needing only jax and numpy

Settings are config fields (softpatch_jax/defaults.py), given by a name one section holds
(`discriminator="gaussian"`, `coreset_ratio=0.2`) or as `config={"bank.coreset_ratio": 0.2}`;
they are checked as a command line's are, before any compute. Underneath are the pipeline's own
steps (`evaluate.fit_category`, `predict.score_items`, `checkpoint`, `exporter`), so a model fitted
here and the same category fitted by the command line give the same numbers, and each loads
the other's saved folder (a CLI category folder: DIR/categories/<name>).
"""
import dataclasses
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import ml_collections
import numpy as np

from softpatch_jax import defaults, methods
from softpatch_jax.data import preprocess
from softpatch_jax.export import exporter
from softpatch_jax.io import checkpoint
from softpatch_jax.pipeline import decisions, evaluate, predict, validation
from softpatch_jax.upgrade import upgrade


@dataclasses.dataclass
class Audit:
    """Which training images look defective: `scores` (N,) (higher = more suspicious), `flagged`
    (N,) bool at the audit's contamination, `names` (N,) in the order given (after `load`: most
    suspicious first, as the audit file lists them)."""
    names: List[str]
    scores: np.ndarray
    flagged: np.ndarray

    @property
    def ranking(self) -> List[str]:
        """The names, most suspicious first."""
        return [self.names[i] for i in np.argsort(-self.scores, kind="stable")]


@dataclasses.dataclass
class Prediction:
    """Scores of N images: `scores` (N,), `maps` (N, H, W) anomaly maps on the model's input
    canvas (data.image_size: the image resized by data.resize and centre-cropped, or fitted
    whole with data.resize=0), `verdicts` (N,) bool and `masks` (N, H, W) bool at the fit's
    label-free thresholds (None without them), `boxes` (N, 4) int: (top, left, height, width)
    of each image's own pixels on the canvas; `image_map(i)` is map i cut to its box, so it
    keeps the image's aspect ratio."""
    names: List[str]
    scores: np.ndarray
    maps: np.ndarray
    verdicts: Optional[np.ndarray]
    masks: Optional[np.ndarray]
    boxes: Optional[np.ndarray] = None

    def image_map(self, i: int) -> np.ndarray:
        """(height, width) anomaly map of image i over its own pixels."""
        if self.boxes is None:
            return self.maps[i]
        top, left, height, width = (int(v) for v in self.boxes[i])
        return self.maps[i, top:top + height, left:left + width]


@dataclasses.dataclass
class Fitted:
    """A fitted model: the method and its state, the config it was fitted with, the audit of
    its training images and the label-free thresholds."""
    method: methods.Method
    state: Any
    config: ml_collections.ConfigDict
    name: str = "images"
    grid: Optional[Sequence[int]] = None  # (h, w) patch grid the checkpoint records
    audit: Optional[Audit] = None
    image_threshold: Optional[float] = None
    pixel_threshold: Optional[float] = None
    thresholds: Optional[dict] = None  # threshold.json's record

    def save(self, path: str) -> str:
        """Writes `path`/checkpoint, `path`/threshold.json and the audit, `path`/audit_<folder>.csv
        (the layout of a command-line category folder) -> `path`."""
        os.makedirs(path, exist_ok=True)
        grid = self.grid or evaluate.extractor_for(self.config, self.method).grid(
            self.config.data.image_size)
        checkpoint.save_model(os.path.join(path, "checkpoint"), self.state.to_arrays(),
                              self.config.to_dict(), tuple(grid))
        if self.thresholds is not None:
            decisions.write_threshold_record(path, self.thresholds)
        if self.audit is not None:
            folder = os.path.basename(os.path.normpath(path))  # as categories/<c>/audit_<c>.csv
            decisions.write_audit(os.path.join(path, f"audit_{folder}.csv"), self.audit.names,
                                  decisions.Calibration(self.audit.scores, self.audit.flagged))
        return path

    def predict(self, images: Sequence, names: Optional[Sequence[str]] = None) -> Prediction:
        """Scores `images` (image arrays or paths, as `Model.fit` takes them) -> a Prediction."""
        return _predict(self, images, names)

    def export(self, path: str, batch: int = exporter.DEFAULT_BATCH) -> str:
        """A standalone scorer in `path` (exporter.py: scorer.bin, arrays.npz, meta.json,
        loader.py) -> `path`."""
        return exporter.export_fitted(self.method, self.state, self.config, path, self.name,
                                      batch, self.image_threshold, self.pixel_threshold,
                                      "the fit's threshold.json" if self.thresholds else None)


def load(path: str) -> Fitted:
    """A folder written by `Fitted.save` or a command-line fit's DIR/categories/<name>."""
    method, state, config = predict.load_fitted(os.path.join(path, "checkpoint"))
    record = decisions.read_threshold(path)
    name = os.path.basename(os.path.normpath(path))
    rows = decisions.read_audit(os.path.join(path, f"audit_{name}.csv"))
    audit = None if rows is None else Audit(*rows)
    return Fitted(method, state, config, name, audit=audit,
                  image_threshold=(record or {}).get("image_threshold"),
                  pixel_threshold=(record or {}).get("pixel_threshold"), thresholds=record)


# Sections a keyword may set besides the methods' own (noise is the protocol's, not a fit's).
API_SECTIONS = ("data", "audit", "threshold", "runtime")


class Model:
    """A method with its settings (`method`: a registered name, methods.names())."""

    def __init__(self, method: str = methods.DEFAULT, *, seed: int = 0,
                 config: Optional[Dict] = None, **fields):
        c = defaults.get_config()
        c.model.method, c.seed = method, seed
        where = f"softpatch_jax.{type(self).__name__}"
        given = {methods.resolve_field(k, c, where, API_SECTIONS): v for k, v in fields.items()}
        given.update({methods.resolve_field(k, c, f"{where}(config=...)", API_SECTIONS): v
                      for k, v in (config or {}).items()})
        for dotted, value in given.items():
            section, key = dotted.split(".")
            c[section][key] = value
        self.config = upgrade(c)
        self.method = validation.check_config(self.config)  # one line naming a bad value
        if self.config.model.prefilter:  # never a fit of another config than the one asked
            raise ValueError(f"{where}: model.prefilter is applied by the command line's fit "
                             "and sweeps only (python -m softpatch_jax.main), not by this API "
                             "yet; leave it '' and drop the images you distrust before fit()")

    def fit(self, images: Sequence, name: str = "images",
            names: Optional[Sequence[str]] = None) -> Fitted:
        """Fits on `images` ((N, H, W, 3) or (N, H, W) uint8, floats in [0, 1], a list of such
        arrays or of image paths) with the audit and the label-free thresholds (audit.*,
        threshold.*). `name` seeds the fit as a command-line category of that name does."""
        items, names = predict.items_and_names(images, names)
        self.method.check(len(items))
        settings = decisions.Settings.from_config(self.config)
        extractor = evaluate.extractor_for(self.config, self.method)
        key = evaluate.category_key(self.config.seed, name)
        with tempfile.TemporaryDirectory(prefix="softpatch_jax_fit_") as folder:  # FYD's
            fitted = evaluate.fit_category(self.method, items, extractor, self.config.data, key,
                                           folder, name, settings, self.config.seed)
        cal = fitted.calibration
        audit = (None if cal.noise_scores is None else
                 Audit(list(names), np.asarray(cal.noise_scores), np.asarray(cal.flagged)))
        return Fitted(self.method, fitted.state, self.config, name,
                      fitted.extractor.grid(self.config.data.image_size), audit,
                      cal.image_threshold, cal.pixel_threshold, cal.threshold_record(settings))

    def predict(self, fitted: Fitted, images: Sequence,
                names: Optional[Sequence[str]] = None) -> Prediction:
        """Scores `images` (as `fit` takes them) with `fitted` -> a Prediction."""
        return fitted.predict(images, names)


def _predict(fitted: Fitted, images: Sequence, names: Optional[Sequence[str]]) -> Prediction:
    items, names = predict.items_and_names(images, names)
    extractor = evaluate.extractor_for(fitted.config, fitted.method)
    scores = predict.score_items(fitted.method, fitted.state, fitted.config, items, extractor,
                                 f"{fitted.name}: features")
    maps = scores.maps()
    d = fitted.config.data
    boxes = np.array([preprocess.canvas_box(item, d.resize, d.image_size) for item in items],
                     np.int64).reshape(-1, 4)
    image_t, pixel_t = fitted.image_threshold, fitted.pixel_threshold
    return Prediction(list(names), scores.image, maps,
                      None if image_t is None else scores.image >= image_t,
                      None if pixel_t is None else maps >= pixel_t, boxes)


class SoftPatch(Model):
    """SoftPatch (denoise.* and bank.* fields; discriminator="none" is PatchCore's bank)."""

    def __init__(self, **settings):
        super().__init__("softpatch", **settings)


class SoftPatchPlus(Model):
    """SoftPatch+ (softpatch_plus.*, denoise.* and bank.* fields)."""

    def __init__(self, **settings):
        super().__init__("softpatch_plus", **settings)


class PatchCore(Model):
    """PatchCore (bank.* fields)."""

    def __init__(self, **settings):
        super().__init__("patchcore", **settings)


class PaDiM(Model):
    """PaDiM (padim.* fields)."""

    def __init__(self, **settings):
        super().__init__("padim", **settings)


class FYD(Model):
    """FYD (fyd.* and padim.* fields)."""

    def __init__(self, **settings):
        super().__init__("fyd", **settings)
