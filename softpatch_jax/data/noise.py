"""The noisy-training-set protocol (METHOD.md): anomalous test images moved or copied into training.

noise count = int(ratio * number of clean training images), drawn without replacement from the
anomalous test images with a seeded generator, or given explicitly as a list of sample names
(e.g. `test/bent_lead/002.png`) to reproduce another run's split. With `overlap=False` the drawn
images leave the test set; with `overlap=True` the test set stays whole.
"""
import dataclasses
import zlib
from typing import List, Sequence

import numpy as np

from softpatch_jax.data.samples import Category, Sample


@dataclasses.dataclass(frozen=True)
class NoisySplit:
    train: List[Sample]       # clean training images followed by the injected ones
    test: List[Sample]
    injected: List[Sample]


def category_rng(seed: int, category: str, purpose: str) -> np.random.Generator:
    """A generator for one (seed, category, purpose): categories and purposes draw independently."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(purpose.encode())])


def subsample(samples: Sequence[Sample], limit: int, rng: np.random.Generator,
              stratify: bool = False) -> List[Sample]:
    """At most `limit` samples (0 = all), drawn without replacement, order kept. With `stratify`,
    normal and anomalous samples keep their proportions."""
    samples = list(samples)
    if limit <= 0 or len(samples) <= limit:
        return samples
    if stratify:
        pos = [i for i, s in enumerate(samples) if s.label == 1]
        neg = [i for i, s in enumerate(samples) if s.label == 0]
        n_pos = int(round(limit * len(pos) / len(samples)))
        keep = list(rng.choice(pos, n_pos, replace=False)) + list(
            rng.choice(neg, limit - n_pos, replace=False))
    else:
        keep = rng.choice(len(samples), limit, replace=False)
    return [samples[i] for i in sorted(keep)]


def inject_noise(category: Category, ratio: float, overlap: bool, seed: int,
                 files: Sequence[str] = ()) -> NoisySplit:
    """Builds the noisy training set of one category."""
    if ratio < 0:
        raise ValueError(f"noise.ratio={ratio} must be >= 0")
    pool = category.anomalous_test
    if files:
        if len(set(files)) != len(files):
            raise ValueError("noise.files names an image twice; list each injected image once")
        if not pool:
            raise ValueError(f"noise.files is set but category {category.name!r} has no "
                             "anomalous test images to inject")
        by_name = {s.name: s for s in pool}
        unknown = [f for f in files if f not in by_name]
        if unknown:
            raise ValueError(f"noise.files names {unknown[:3]} that are not anomalous test images "
                             f"of {category.name!r} (expected names like {pool[0].name!r})")
        injected = [by_name[f] for f in files]
    else:
        count = int(ratio * len(category.train))
        if count > len(pool):
            raise ValueError(
                f"noise.ratio={ratio} needs {count} anomalous images but category "
                f"{category.name!r} has only {len(pool)}; lower noise.ratio to at most "
                f"{len(pool) / len(category.train):.3f}")
        rng = category_rng(seed, category.name, "noise")
        injected = [pool[i] for i in rng.choice(len(pool), count, replace=False)]
    names = {s.name for s in injected}
    test = list(category.test) if overlap else [s for s in category.test if s.name not in names]
    return NoisySplit(list(category.train) + injected, test, injected)
