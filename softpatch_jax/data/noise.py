"""The noisy-training-set protocol (METHOD.md; SoftPatch+ for repeats).

noise count = int(ratio * number of clean training images), drawn from the anomalous test images
with a generator seeded by (seed, category, fold), or given explicitly as sample names
(e.g. `test/bent_lead/002.png`) to reproduce another run's split. Modes:

- `no_overlap`: drawn without replacement; the drawn images leave the test set.
- `overlap`: drawn without replacement; the test set stays whole (the injected anomalies are
  evaluated too).
- `overlap_repeat`: as `overlap`, but when the category has fewer anomalies than the count, every
  anomaly is drawn once and the rest are drawn again with replacement, each repeat lightly augmented
  (rotation uniform in +-3 degrees, translation uniform in +-3 % per axis). With enough anomalies
  it draws exactly as `overlap` does.
"""
import dataclasses
import zlib
from typing import List, Sequence, Tuple

import numpy as np

from softpatch_jax.data.samples import Category, Sample

MODES = ("no_overlap", "overlap", "overlap_repeat")
MAX_ROTATION_DEG = 3.0
MAX_SHIFT = 0.03


@dataclasses.dataclass(frozen=True)
class NoisySplit:
    train: List[Sample]       # clean training images followed by the injected ones
    test: List[Sample]
    injected: List[Sample]    # with `augment` set on augmented repeats
    # [(sample name, why)] of the category's files that could not be read and were left out
    # before the noise draw, and the seconds that check took in this process (0 when reused)
    left_out: Tuple[Tuple[str, str], ...] = ()
    check_seconds: float = 0.0


def category_rng(seed: int, category: str, purpose: str) -> np.random.Generator:
    """A generator for one (seed, category, purpose): categories and purposes draw independently."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(purpose.encode())])


def resolve_mode(mode: str, overlap: bool) -> str:
    """noise.mode wins; an empty mode falls back on the boolean noise.overlap."""
    if not mode:
        return "overlap" if overlap else "no_overlap"
    if mode not in MODES:
        raise ValueError(f"noise.mode={mode!r} is unknown; choose one of {', '.join(MODES)}")
    return mode


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


def _by_names(pool: List[Sample], files: Sequence[str], category: str) -> List[Sample]:
    if len(set(files)) != len(files):
        raise ValueError("noise.files names an image twice; list each injected image once")
    if not pool:
        raise ValueError(f"noise.files is set but category {category!r} has no anomalous test "
                         "images to inject")
    by_name = {s.name: s for s in pool}
    unknown = [f for f in files if f not in by_name]
    if unknown:
        raise ValueError(f"noise.files names {unknown[:3]} that are not anomalous test images "
                         f"of {category!r} (expected names like {pool[0].name!r})")
    return [by_name[f] for f in files]


def inject_noise(category: Category, ratio: float, mode: str, seed: int,
                 files: Sequence[str] = (), fold: int = 0) -> NoisySplit:
    """Builds the noisy training set of one category (`mode` as in MODES)."""
    mode = resolve_mode(mode, False)
    if ratio < 0:
        raise ValueError(f"noise.ratio={ratio} must be >= 0")
    pool = category.anomalous_test
    if files:
        injected = _by_names(pool, files, category.name)
    else:
        count = int(ratio * len(category.train))
        rng = category_rng(seed, category.name, f"noise/{fold}")
        # no_overlap moves the drawn images out of the test set: keep one anomaly to test on.
        available = len(pool) - 1 if mode == "no_overlap" and pool else len(pool)
        if count <= available:
            injected = [pool[i] for i in rng.choice(len(pool), count, replace=False)]
        elif mode == "overlap_repeat":
            if not pool:
                raise ValueError(f"noise.ratio={ratio} needs anomalous images but category "
                                 f"{category.name!r} has none")
            injected = [pool[i] for i in rng.permutation(len(pool))]
            for i in rng.choice(len(pool), count - len(pool), replace=True):
                angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
                dx, dy = (float(v) for v in rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2))
                injected.append(dataclasses.replace(pool[i], augment=(angle, dx, dy)))
        else:
            raise ValueError(
                f"noise.ratio={ratio} needs {count} anomalous images but category "
                f"{category.name!r} can give only {available}"
                + (" (no_overlap keeps one for the test set)" if mode == "no_overlap" else "")
                + f"; {_fix(available, len(category.train), mode)}")
    names = {s.name for s in injected}
    test = list(category.test) if mode != "no_overlap" else [
        s for s in category.test if s.name not in names]
    return NoisySplit(list(category.train) + injected, test, injected)


def _fix(available: int, n_train: int, mode: str) -> str:
    """A suggestion that leads to a valid run: the largest ratio whose count fits, or a mode."""
    repeat = "use noise.mode=overlap_repeat"
    if available == 0:
        return repeat if mode == "overlap" or mode == "overlap_repeat" else \
            "use noise.mode=overlap or overlap_repeat"
    ratio = np.ceil(available / n_train * 1000) / 1000  # the largest 3-decimal ratio that fits
    while int(ratio * n_train) > available:
        ratio = round(ratio - 0.001, 3)
    return f"lower noise.ratio to at most {ratio:.3f} or {repeat}"


def describe(split: NoisySplit) -> List[dict]:
    """The injected images and their augmentations, for the workdir record."""
    out = []
    for s in split.injected:
        row = {"name": s.name, "defect": s.defect}
        if s.augment is not None:
            row.update(rotation_deg=s.augment[0], shift_x=s.augment[1], shift_y=s.augment[2])
        out.append(row)
    return out
