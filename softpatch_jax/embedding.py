"""Images -> patch features: the backbone's tapped maps through `features.patch_features`, jitted
as one function and run over a streaming batch iterator."""
import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax import features, padim
from softpatch_jax.backbones import build_backbone
from softpatch_jax.data import preprocess


class Embedder:
    """Holds a backbone and its variables; `__call__` maps (B, H, W, 3) images to (B, P, E)."""

    def __init__(self, backbone: str, layers: Sequence[str], weights: str = "",
                 cache_dir: str = "", seed: int = 0, embed_dim: int = 1024, patch_size: int = 3,
                 dtype: str = "float32", padim_dim: int = 0, mesh=None):
        """`padim_dim` > 0: PaDiM features (the tapped maps on the finest grid, `padim_dim`
        channels drawn with the seed) instead of locally aware patch features."""
        self.layers = tuple(layers)
        self.module, self.variables = build_backbone(backbone, self.layers, weights, cache_dir,
                                                     seed, dtype)
        self.padim_channels = ()
        if padim_dim:
            key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x9AD1)
            self.padim_channels = tuple(
                int(c) for c in padim.select_channels(key, self._channels(), padim_dim))
        self.embed_dim = len(self.padim_channels) or embed_dim
        self.patch_size = patch_size
        fn = functools.partial(self._embed, self.module, self.layers, embed_dim, patch_size,
                               self.padim_channels)
        self.devices = 1
        if mesh is not None:  # data parallel: the batch split over the mesh's devices
            from softpatch_jax import sharding

            self._fn, self.devices = sharding.data_parallel(fn, mesh), mesh.devices.size
        else:
            self._fn = jax.jit(fn)

    @staticmethod
    def _embed(module, layers, embed_dim, patch_size, padim_channels, variables, images):
        maps = module.apply(variables, images)
        ordered = sorted((maps[name] for name in layers), key=lambda m: -m.shape[1])  # finest first
        if padim_channels:
            return padim.padim_features(ordered, np.asarray(padim_channels))
        return features.patch_features(ordered, embed_dim, patch_size)

    def _tap_shapes(self, image_size: int):
        """Shapes of the tapped maps for square inputs of `image_size` (no computation)."""
        out = jax.eval_shape(lambda v, x: self.module.apply(v, x), self.variables,
                             jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
        return [m.shape for m in out.values()]

    def _channels(self) -> int:
        """Total channels of the taps (PaDiM draws its channels from these)."""
        return sum(shape[-1] for shape in self._tap_shapes(64))

    def grid(self, image_size: int) -> Tuple[int, int]:
        """Patch grid (h, w) for square inputs of `image_size`: the finest tap's."""
        shapes = self._tap_shapes(image_size)
        return max(s[1] for s in shapes), max(s[2] for s in shapes)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(self.variables, jnp.asarray(images)))

    def embed(self, samples: Sequence, resize: int, image_size: int,
              batch_size: int = 16, desc: str = "features") -> np.ndarray:
        """Reads, preprocesses (augments where a Sample says so) and embeds Samples or image
        paths -> (N, P, E) float32."""
        h, w = self.grid(image_size)
        batch_size = -(-batch_size // self.devices) * self.devices  # a multiple of the devices
        out = np.empty((len(samples), h * w, self.embed_dim), np.float32)
        with tqdm(total=len(samples), desc=desc, leave=False) as bar:
            for start, n, imgs in preprocess.padded_batches(samples, batch_size, resize,
                                                            image_size):
                out[start:start + n] = self(imgs)[:n]
                bar.update(n)
        return out
