"""Images -> features: the backbone's tapped maps through `patch.patch_features` (or PaDiM's
channel selection), jitted as one function and run over a streaming batch iterator.

Every extractor (this `Embedder`, `cache.FeatureCache` around one, FYD's `AlignedEmbedder`) has
`extract(samples, resize, image_size, batch_size, desc) -> methods.base.Features` and
`grid(image_size)`; `image_size` is N or (height, width) (`shapes`).

With `tile` set, each image is cut into tiles of that size, the tiles go through the backbone
one grid position at a time (`jax.lax.map`: the working set of one tile per image, whatever the
image's size) and their patch grids are put back together in place: a canvas far larger than
the backbone's comfortable size keeps its resolution. For a convolutional backbone the features
equal the whole image's except within a receptive field of a tile's border.
"""
import functools
from typing import Callable, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax import shapes
from softpatch_jax.data import preprocess
from softpatch_jax.features import padim, patch
from softpatch_jax.features.backbones import build_backbone
from softpatch_jax.features.types import ALL_CHANNELS, BackboneSpec, Features, FeatureSpec


def finest_first(maps: Dict[str, jnp.ndarray], taps: Sequence[str]) -> List[jnp.ndarray]:
    """The tapped maps (B, h, w, C), finest grid first."""
    return sorted((maps[name] for name in taps), key=lambda m: -m.shape[1])


def tiled(fn: Callable, tile: Tuple[int, int], tile_grid: Tuple[int, int]) -> Callable:
    """`fn(variables, images (B, th, tw, 3)) -> (B, gh * gw, E)` on a canvas of tiles: ->
    `f(variables, images (B, r * th, k * tw, 3)) -> (B, r * gh * k * gw, E)`, row-major on the
    stitched (r * gh, k * gw) grid."""
    (th, tw), (gh, gw) = tile, tile_grid

    def run(variables, images):
        b, h, w, c = images.shape
        r, k = h // th, w // tw
        x = images.reshape(b, r, th, k, tw, c).transpose(1, 3, 0, 2, 4, 5)
        feats = jax.lax.map(lambda t: fn(variables, t), x.reshape(r * k, b, th, tw, c))
        e = feats.shape[-1]
        feats = feats.reshape(r, k, b, gh, gw, e).transpose(2, 0, 3, 1, 4, 5)
        return feats.reshape(b, r * gh * k * gw, e)
    return run


def run_batches(fn: Callable, samples: Sequence, resize: int, image_size, batch_size: int,
                desc: str) -> Tuple[np.ndarray, ...]:
    """Reads, preprocesses (augments where a Sample says so) and runs `fn` on padded batches of
    Samples, image paths or image arrays. `fn(images (batch, H, W, 3))` returns an array or a
    tuple of arrays with the batch first. -> tuple of (N, ...) float32 arrays, one per output."""
    outputs = None
    with tqdm(total=len(samples), desc=desc, leave=False) as bar:
        for start, n, imgs in preprocess.padded_batches(samples, batch_size, resize, image_size):
            result = fn(imgs)
            parts = result if isinstance(result, tuple) else (result,)
            if outputs is None:  # allocated once: no second copy of the features
                outputs = [np.empty((len(samples),) + p.shape[1:], np.float32) for p in parts]
            for out, p in zip(outputs, parts):
                out[start:start + n] = np.asarray(p)[:n]
            bar.update(n)
    return tuple(outputs)


class Embedder:
    """Holds a backbone and its variables; `__call__` maps (B, H, W, 3) images to (B, P, E)."""

    def __init__(self, backbone: str, layers: Sequence[str], weights: str = "",
                 cache_dir: str = "", seed: int = 0, embed_dim: int = 1024, patch_size: int = 3,
                 dtype: str = "float32", padim_dim: int = 0, mesh=None, tile=0):
        """`padim_dim` > 0: PaDiM features (the tapped maps on the finest grid, `padim_dim`
        channels drawn with the seed; `ALL_CHANNELS`: all of them) instead of locally aware
        patch features. `mesh`: split each batch over its devices (data parallel). `tile`: 0,
        or N or (height, width): embed tiles of that size (module docstring)."""
        self.layers = tuple(layers)
        self.tile = shapes.hw(tile) if tile else None
        self.module, self.variables = build_backbone(backbone, self.layers, weights, cache_dir,
                                                     seed, dtype)
        self.padim_channels = ()
        if padim_dim:
            key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x9AD1)
            total = sum(s[-1] for s in self.tap_shapes(64).values())
            chosen = (np.arange(total) if padim_dim == ALL_CHANNELS
                      else padim.select_channels(key, total, padim_dim))
            self.padim_channels = tuple(int(c) for c in chosen)
        self.embed_dim = len(self.padim_channels) or embed_dim
        fn = functools.partial(self.embed_arrays, self.module, self.layers, embed_dim, patch_size,
                               self.padim_channels)
        if self.tile:
            fn = tiled(fn, self.tile, self._grid(self.tile))
        self.embed_fn = fn  # (variables, images) -> features, unjitted: export traces it
        self.devices = 1
        if mesh is not None:
            from softpatch_jax.ops import sharding

            self._fn, self.devices = sharding.data_parallel(fn, mesh), mesh.devices.size
        else:
            self._fn = jax.jit(fn)

    @staticmethod
    def embed_arrays(module, layers, embed_dim, patch_size, padim_channels, variables, images):
        ordered = finest_first(module.apply(variables, images), layers)
        if padim_channels:
            return padim.padim_features(ordered, np.asarray(padim_channels))
        return patch.patch_features(ordered, embed_dim, patch_size)

    def tap_shapes(self, image_size, batch: int = 1) -> Dict[str, Tuple[int, ...]]:
        """Shapes of the tapped maps for `batch` inputs of `image_size` (no computation)."""
        out = jax.eval_shape(lambda v, x: self.module.apply(v, x), self.variables,
                             jax.ShapeDtypeStruct((batch, *shapes.hw(image_size), 3), jnp.float32))
        return {name: tuple(m.shape) for name, m in out.items()}

    def _grid(self, image_size) -> Tuple[int, int]:
        """The finest tap's grid (h, w) for one pass of the backbone over `image_size`."""
        taps = self.tap_shapes(image_size).values()
        return max(s[1] for s in taps), max(s[2] for s in taps)

    def grid(self, image_size) -> Tuple[int, int]:
        """Patch grid (h, w) for inputs of `image_size`: the finest tap's, stitched from the
        tiles' grids when tiling."""
        if not self.tile:
            return self._grid(image_size)
        (rows, cols), (gh, gw) = shapes.tiles(image_size, self.tile), self._grid(self.tile)
        return rows * gh, cols * gw

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(self.variables, jnp.asarray(images)))

    def embed(self, samples: Sequence, resize: int, image_size,
              batch_size: int = 16, desc: str = "features") -> np.ndarray:
        """Samples or image paths -> (N, P, E) float32 features."""
        batch_size = -(-batch_size // self.devices) * self.devices  # a multiple of the devices
        return run_batches(self, samples, resize, image_size, batch_size, desc)[0]

    def extract(self, samples: Sequence, resize: int, image_size, batch_size: int = 16,
                desc: str = "features"):
        return Features(self.embed(samples, resize, image_size, batch_size, desc),
                        self.grid(image_size))


def make_extractor(backbone: BackboneSpec, spec: FeatureSpec, seed: int, cache_dir: str = "",
                   multi_device: bool = True, tile=0) -> Embedder:
    """The Embedder of a method's FeatureSpec on `backbone`; a device mesh for data parallelism
    when `multi_device`, the spec allows it and there is more than one device; `tile`:
    data.tile."""
    mesh = None
    if multi_device and spec.data_parallel and jax.device_count() > 1:
        from softpatch_jax.ops import sharding

        mesh = sharding.device_mesh()
    b = backbone
    return Embedder(b.name, spec.layers, b.weights, cache_dir, seed, b.embed_dim, b.patch_size,
                    b.dtype, spec.padim_dim, mesh=mesh, tile=tile)
