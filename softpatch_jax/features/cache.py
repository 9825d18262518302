"""On-disk cache of patch features, one .npy per image, so that sweep points share one extraction.

The folder is keyed by everything that changes a feature (backbone, its weights file's hash or the
random seed, taps, dtype, embedding size, patch size, resize, crop); a file inside by the image's
path, name, size and modification time (or its bytes) and its augmentation (`Sample.stamp`). A
changed config or an image replaced in place therefore never reads stale features, and an
interrupted extraction keeps what it finished (each file is written atomically).
"""
import hashlib
import os
from typing import Sequence

import numpy as np


from softpatch_jax import shapes
from softpatch_jax.features.backbones import convert, resolve_weights
from softpatch_jax.features.types import BackboneSpec, Features, FeatureSpec
from softpatch_jax.files import atomic_path, file_sha256, fingerprint
from softpatch_jax.version import RESULTS_VERSION


def config_key(backbone: BackboneSpec, data_config, spec: FeatureSpec, seed: int) -> str:
    """Hex digest of the fields that determine the features of `spec` on `backbone`."""
    weights = resolve_weights(backbone.name, backbone.weights)
    if weights == "random":
        weights = f"random:{seed}"
    elif weights:
        weights = file_sha256(weights)
    fields = dict(backbone=backbone.name, weights=weights, layers=",".join(spec.layers),
                  padim=(spec.padim_dim, seed) if spec.padim_dim else None,
                  dtype=backbone.dtype, embed_dim=backbone.embed_dim,
                  patch_size=backbone.patch_size, resize=data_config.resize,
                  image_size=shapes.canonical(data_config.image_size),
                  version=convert.CONVERSION_VERSION, package=RESULTS_VERSION)
    if data_config.tile:  # keys from before tiling existed stay valid
        fields["tile"] = shapes.canonical(data_config.tile)
    return fingerprint(fields)


def _sample_key(sample) -> str:
    return hashlib.sha1(sample.stamp(mask=False).encode()).hexdigest()


class FeatureCache:
    """Wraps an extractor: `embed`/`extract` extract only the images not cached."""

    def __init__(self, embedder, directory: str):
        self.embedder = embedder
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def grid(self, image_size):
        return self.embedder.grid(image_size)

    def tap_shapes(self, image_size, batch: int = 1):
        return self.embedder.tap_shapes(image_size, batch)

    def _path(self, sample) -> str:
        return os.path.join(self.directory, _sample_key(sample) + ".npy")

    def embed(self, samples: Sequence, resize: int, image_size, batch_size: int = 16,
              desc: str = "features") -> np.ndarray:
        missing = [s for s in samples if not os.path.isfile(self._path(s))]
        if missing:
            feats = self.embedder.embed(missing, resize, image_size, batch_size, desc)
            for s, f in zip(missing, feats):
                with atomic_path(self._path(s)) as tmp:
                    np.save(tmp, f)
        return np.stack([np.load(self._path(s)) for s in samples])

    def extract(self, samples: Sequence, resize: int, image_size, batch_size: int = 16,
                desc: str = "features") -> Features:
        return Features(self.embed(samples, resize, image_size, batch_size, desc),
                        self.grid(image_size))
