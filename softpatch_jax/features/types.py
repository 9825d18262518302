"""The backbone a run extracts with (`BackboneSpec`, read once from the config), what a method
asks of the features (`FeatureSpec`) and what an extractor returns (`Features`)."""
import dataclasses
from typing import Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """The `backbone` section of a config, read in one place (`from_config`): the extractor is
    built from it and the feature cache keys on it (`layers`: the methods' FeatureSpec)."""
    name: str                # efficientnet_lite0, ..., wide_resnet50_2
    weights: str = ""        # '' packaged ImageNet weights, 'random', or a state dict path
    dtype: str = "float32"   # the backbone's compute dtype
    embed_dim: int = 1024    # locally aware patch features: pooled size
    patch_size: int = 3      # locally aware patch features: neighbourhood

    @classmethod
    def from_config(cls, config) -> "BackboneSpec":
        b = config.backbone
        return cls(b.name, b.weights, b.dtype, b.embed_dim, b.patch_size)


ALL_CHANNELS = -1  # FeatureSpec.padim_dim: every tapped channel, none drawn


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Which features a method reads: locally aware patch features of `layers` (`padim_dim` 0),
    or PaDiM features, `padim_dim` seeded channels of `layers` on the finest grid (`ALL_CHANNELS`:
    every tapped channel, in tap order finest first; CFLOW reads each tap back from them).
    `data_parallel`: the extractor may split batches over devices."""
    layers: Tuple[str, ...]
    padim_dim: int = 0
    data_parallel: bool = True


@dataclasses.dataclass
class Features:
    """Features of N images: `patches` (N, P, D) on a (h, w) `grid` (P = h * w); `warps`
    (N, 2, 3): where a method aligned its inputs, each image's map from the grid's frame back to
    the input frame (None: the grid is in the input frame)."""
    patches: np.ndarray
    grid: Tuple[int, int]
    warps: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.patches.shape[0]
