"""What every method is: the `Method` interface, the features it reads and the scores it gives.

A method is a class registered by name (`methods.register`). `from_config` is the only place that
reads the method's config sections (`config.bank.*`, `config.denoise.*`, ...); below it everything
takes explicit arguments. A run:

    method = methods.from_config(config)
    method.check(n_train)                                  # before any compute
    extractor, learned = method.prepare(samples, extractor, directory, key)   # FYD trains here
    fitted = method.fit(extractor.extract(train, ...), key, learned)
    scores = method.score(fitted, extractor.extract(test, ...))

The fitted state is a `flax.struct` dataclass (a pytree) whose `to_arrays` / `from_arrays` give the
flat dict of arrays that checkpoints store (stable across versions: old checkpoints load).
"""
import dataclasses
from typing import Any, Callable, ClassVar, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.evaluation import anomaly_map
from softpatch_jax.features.types import Features, FeatureSpec  # noqa: F401 (re-exported)
from softpatch_jax.timing import NO_CLOCK, StageClock


# Export's traceable pieces (see Method.traced_scorer / traced_features).
TracedScorer = Callable[[Dict[str, Any], Any], Tuple[Any, Optional[Any]]]
TracedFeatures = Callable[[Dict[str, Any], Any], Tuple[Any, Optional[Any]]]


@dataclasses.dataclass
class Scores:
    """Scores of T test images: `image` (T,), `grids` (T, h, w) patch scores in the input frame;
    `maps()` the (T, H, W) anomaly maps (upsampled and blurred), computed once when first asked
    for (PaDiM computes them while scoring and hands them over)."""
    image: np.ndarray
    grids: np.ndarray
    image_size: object  # N or (H, W)
    blur_sigma: float
    _maps: Optional[np.ndarray] = None

    def maps(self) -> np.ndarray:
        if self._maps is None:
            self._maps = anomaly_map.anomaly_maps(self.grids, self.image_size, self.blur_sigma)
        return self._maps


@dataclasses.dataclass
class TrainingNoise:
    """What a method's denoising says about its B training images: `patch_scores` (B, P), higher
    = more likely noise (a discriminator's scores, or SoftPatch+'s fused ranks), and `removed`
    (B, P) bool, the patches it kept out of the memory bank (None where it removes none);
    `estimate` the contamination estimate its denoising used (evaluation/contamination.py; None
    where it used none) and `ratios` the removal ratios it applied, by config field;
    `estimate_scores` (B, P), the discriminator scores whose outliers the estimate counts as
    defective patches, where they are not `patch_scores` (SoftPatch+: its first discriminator's)."""
    patch_scores: np.ndarray
    removed: Optional[np.ndarray] = None
    estimate: Optional[Any] = None
    ratios: Optional[Dict[str, float]] = None
    estimate_scores: Optional[np.ndarray] = None

    @property
    def scores_for_estimate(self) -> np.ndarray:
        return self.patch_scores if self.estimate_scores is None else self.estimate_scores


class Method:
    """The interface of a method; see the module docstring. Subclasses set `name` (the
    registry's key, `model.method`) and `features` (a FeatureSpec) and implement `fit`, `score`
    and `fitted_from_arrays`."""
    name: ClassVar[str] = ""
    # False where the features depend on the training images (FYD aligns them): not cacheable.
    cacheable_features: ClassVar[bool] = True
    # Config fields of its own beyond softpatch_jax/defaults.py, {section: {field: default}}
    # (e.g. {"model": {"my_radius": 2}}): without them a config setting them is refused as
    # misspelt. The default is what from_config reads when a config lacks the field.
    config_fields: ClassVar[Dict[str, Dict[str, Any]]] = {}
    features: FeatureSpec
    # The stage `prepare` is timed as in result.json's stage_seconds (where it learns anything).
    prepare_stage: ClassVar[str] = "alignment"

    @classmethod
    def from_config(cls, config) -> "Method":
        raise NotImplementedError

    def with_sampler(self, wrap: Callable[[Any], Any]) -> "Method":
        """This method with its memory-bank sampler (an ops.coreset.Sampler) replaced by
        `wrap(sampler)`: the hook through which a sweep batches several points' coreset
        selections. A method without a sampler returns itself."""
        return self

    @property
    def label(self) -> str:
        """What a results title says about the denoising ('none' without a discriminator)."""
        return "none"

    def check(self, n_train: int) -> None:
        """One-line error (naming the config field) when `n_train` training images are too few."""
        if n_train < 2:
            raise ValueError(f"model.method={self.name} needs at least 2 training images per "
                             f"position, but there are {n_train}; add training images")

    def prepare(self, samples: Sequence, extractor, directory: str,
                key: jax.Array) -> Tuple[Any, Any]:
        """Learns from the training images before features are taken -> (the extractor to use
        from now on, learned state handed to `fit`). Identity for all but FYD."""
        return extractor, None

    def extractor_for(self, fitted, extractor):
        """The extractor that scores with `fitted` (FYD: the base wrapped in its alignment)."""
        return extractor

    def fit(self, features: Features, key: jax.Array, learned: Any = None,
            progress: bool = True):
        raise NotImplementedError

    def fit_with_noise(self, features: Features, key: jax.Array, learned: Any = None,
                       progress: bool = True, clock: StageClock = NO_CLOCK
                       ) -> Tuple[Any, Optional[TrainingNoise]]:
        """`fit`, and what its denoising found in the training images (None without one);
        `clock` gets the fit's stages (here one, 'fit')."""
        with clock.stage("fit"):
            return self.fit(features, key, learned, progress), None

    def score(self, fitted, features: Features) -> Scores:
        """By default the traced scorer itself, jitted, on the features: a method that writes
        only `traced_scorer` scores in process and exports from that one function. (The
        memory-bank methods override it with their pruned host search, equal bit for bit.)
        Needs `image_size` and `blur_sigma` attributes for the maps."""
        fn, inputs = self.traced_scorer(fitted)
        patch, image = jax.jit(fn)(inputs, jnp.asarray(features.patches))
        grids = np.asarray(patch).reshape(len(features), *features.grid)
        maps = anomaly_map.anomaly_maps(grids, self.image_size, self.blur_sigma)
        image = maps.max(axis=(1, 2)) if image is None else np.asarray(image)
        return Scores(image, grids, self.image_size, self.blur_sigma, maps)

    def traced_scorer(self, fitted) -> Tuple[TracedScorer, Dict[str, Any]]:
        """The method's scoring as one traceable function, which --mode=export serialises:
        -> (fn(inputs, features (N, P, D)) -> ((N, P) patch scores in the frame the features
        are in, (N,) image scores, or None for the maximum of the anomaly map), inputs: the
        nested dict of arrays fn reads, names that do not clash with 'backbone',
        'image_threshold' and 'pixel_threshold'). Its results equal `score`'s (export parity
        tests). A method without one cannot be exported: one line says so."""
        raise ValueError(f"model.method={self.name} has no traced scorer, so it cannot be "
                         "exported; score it with --mode=predict")

    @classmethod
    def exportable(cls) -> bool:
        return cls.traced_scorer is not Method.traced_scorer

    def traced_features(self, embedder) -> TracedFeatures:
        """fn(inputs, images (N, H, W, 3)) -> ((N, P, D) features, (N, 2, 3) warps from the
        frame the features are in to the input frame, or None): the extractor's own function
        on inputs['backbone'] (FYD aligns first)."""
        return lambda inputs, images: (embedder.embed_fn(inputs["backbone"], images), None)

    def training_scores(self, fitted, features: Features) -> Scores:
        """Scores of the B training images in `features` (those `fitted` was fitted on, in the
        same order), each as if it had been left out of the fit (leave-own-image-out), for
        thresholds from unlabeled data. NotImplementedError where the method has no such
        one-pass form (the caller then refits on folds)."""
        raise NotImplementedError(f"{self.name} has no leave-own-image-out scoring")

    def training_bounds(self, fitted, features: Features):
        """`training_scores`' patch scores as certified bounds, computed exactly on demand:
        (evaluation.pruned.BoundedGrids of the image scores, those of the maps), so that
        calibration computes only the patches its answers depend on. NotImplementedError where
        the method has no such form (the caller then takes `training_scores`)."""
        raise NotImplementedError(f"{self.name} has no bounded leave-own-image-out scores")

    def fitted_from_arrays(self, arrays: Dict[str, Any]):
        raise NotImplementedError

    def summary(self, fitted) -> Dict[str, Any]:
        """Facts about a fitted model for the results (e.g. the memory bank size)."""
        return {}
