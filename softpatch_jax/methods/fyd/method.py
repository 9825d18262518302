"""The FYD method: spatial transformers trained on the training images (`prepare`), then PaDiM on
the aligned maps, scored in the aligned frame and warped back to the input frame."""
from typing import Any, Dict

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.features.extractor import finest_first
from softpatch_jax.features.padim import padim_features
from softpatch_jax.methods.base import Features, FeatureSpec, Scores
from softpatch_jax.methods.fyd import model as fyd
from softpatch_jax.methods.fyd import train as fyd_train
from softpatch_jax.methods.padim import GaussianState, PaDiM, feature_options
from softpatch_jax.methods.registry import register
from softpatch_jax.ops import warp as affine


@flax.struct.dataclass
class FYDState:
    gaussians: GaussianState
    variables: Dict[str, Any]       # FYD's trained {'params', 'batch_stats'}

    def to_arrays(self):
        return {**self.gaussians.to_arrays(),
                "fyd": jax.tree.map(np.asarray, self.variables)}

    @classmethod
    def from_arrays(cls, arrays) -> "FYDState":
        return cls(GaussianState.from_arrays(arrays), arrays["fyd"])


class FYD(PaDiM):
    name = "fyd"
    cacheable_features = False

    def __init__(self, *, options: fyd_train.Options, resize: int = 256, load_batch: int = 16,
                 identity: Dict = None, **padim):
        super().__init__(**padim)
        self.features = FeatureSpec(self.features.layers, self.features.padim_dim,
                                    data_parallel=False)
        self.options, self.resize, self.load_batch = options, resize, load_batch
        self.identity = identity or {}

    @classmethod
    def from_config(cls, config) -> "FYD":
        if config.data.tile:  # its alignment warps the whole image, not tiles
            raise ValueError(f"data.tile={config.data.tile!r} is not available with "
                             "model.method=fyd, which aligns whole images; set data.tile=0")
        b = config.backbone
        identity = dict(backbone=b.name, weights=b.weights, taps=config.padim.layers,
                        dtype=b.dtype, seed=config.seed)
        return cls(options=fyd_train.Options.from_config(config.fyd), resize=config.data.resize,
                   load_batch=config.data.batch_size, identity=identity,
                   **feature_options(config))

    def _aligned(self, base, variables):
        return fyd.AlignedEmbedder(base, fyd.build(self.options, base.module, base.layers),
                                   variables)

    def prepare(self, samples, extractor, directory: str, key: jax.Array):
        variables = fyd_train.train(self.options, samples, extractor,
                                    directory, key, self.resize,
                                    self.image_size, self.load_batch, self.identity)
        return self._aligned(extractor, variables), variables

    def extractor_for(self, fitted: FYDState, extractor):
        return self._aligned(extractor, fitted.variables)

    def fit(self, features: Features, key: jax.Array, learned=None,
            progress: bool = True) -> FYDState:
        if learned is None:
            raise ValueError("FYD fits on aligned features: run prepare() first")
        return FYDState(super().fit(features, key, progress=progress), learned)

    def score(self, fitted: FYDState, features: Features) -> Scores:
        unwarp = None
        if features.warps is not None:
            unwarp = lambda grids: fyd.unwarp_grids(grids, features.warps)  # noqa: E731
        return self.gaussian_scores(fitted.gaussians, features, unwarp)

    def traced_scorer(self, fitted: FYDState):
        scorer, inputs = super().traced_scorer(fitted.gaussians)
        return scorer, {**inputs, "fyd": fitted.variables["params"]}

    def traced_features(self, embedder):
        """As fyd.model.AlignedEmbedder, with the variables traced: PaDiM features of the
        aligned maps, and each image's warp from the finest grid's frame to the input's."""
        net = fyd.build(self.options, embedder.module, embedder.layers)
        channels = np.asarray(embedder.padim_channels)

        def aligned(inputs, images):
            maps, warps, _, _ = fyd.align(net, inputs["fyd"], inputs["backbone"], images)
            finest = max(net.taps, key=lambda t: maps[t].shape[1])
            warp = warps["image"]
            if finest in warps:  # finest-grid position -> aligned image -> input image
                warp = affine.compose(warps["image"], warps[finest])
            ordered = finest_first(maps, net.taps)
            return padim_features([m.astype(jnp.float32) for m in ordered], channels), warp
        return aligned

    def fitted_from_arrays(self, arrays) -> FYDState:
        return FYDState.from_arrays(arrays)


register(FYD)
