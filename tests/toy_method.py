"""The toy method the extension tests register (tests/pipeline/test_extending.py,
tests/export/test_new_method_exports.py): squared distance of each patch to its position's mean
training patch, written only as a traced scorer, so that the base class scores with it and
export serialises it with no export code."""
import flax.struct
import jax.numpy as jnp
import numpy as np

from softpatch_jax.methods.base import FeatureSpec, Method
from softpatch_jax.settings import comma_list


@flax.struct.dataclass
class MeanState:
    mean: np.ndarray  # (P, D) the mean training patch per position

    def to_arrays(self):
        return {"mean": np.asarray(self.mean)}


class DistanceToMean(Method):
    """A toy method: squared distance of each patch to its position's mean training patch."""
    name = "toy_distance_to_mean"

    def __init__(self, *, layers, image_size, blur_sigma):
        self.features = FeatureSpec(tuple(layers))
        self.image_size, self.blur_sigma = image_size, blur_sigma

    @classmethod
    def from_config(cls, config):
        return cls(layers=comma_list(config.backbone.layers), image_size=config.data.image_size,
                   blur_sigma=config.model.blur_sigma)

    def fit(self, features, key, learned=None, progress=True):
        return MeanState(features.patches.mean(axis=0))

    def traced_scorer(self, fitted):
        """Its only scoring code: the base class scores with it and export serialises it."""
        def scorer(inputs, feats):  # (N, P, D) -> (N, P) patch scores, (N,) image scores
            patch = jnp.sum((feats - inputs["mean"]) ** 2, axis=-1)
            return patch, patch.max(axis=1)
        return scorer, {"mean": np.asarray(fitted.mean, np.float32)}

    def fitted_from_arrays(self, arrays):
        return MeanState(arrays["mean"])
