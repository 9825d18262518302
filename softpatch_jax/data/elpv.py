"""ELPV solar cells (package `elpv-dataset`): normal = defect probability 0, anomalous = 1.

Cells with probability 1/3 or 2/3 are left out (uncertain labels). Categories are the cell types
`mono` and `poly`. ELPV has no train/test split and no masks: the normal cells are split by a seeded
permutation into train (`train_fraction`) and test; all anomalous cells are test images.
"""
import os
from typing import List

import numpy as np

from softpatch_jax.data.samples import Category, Sample

CATEGORIES = ("mono", "poly")


def default_root() -> str:
    try:
        import elpv_dataset
    except ImportError as e:
        raise ImportError("the ELPV data comes from the elpv-dataset package: "
                          "pip install elpv-dataset, or set data.root") from e
    return os.path.join(os.path.dirname(elpv_dataset.__file__), "data")


def _read_labels(root: str):
    labels = os.path.join(root, "labels.csv")
    if os.path.exists(labels) and not os.path.isfile(labels):
        raise ValueError(f"ELPV labels file {labels!r} is not a regular file; remove it or replace "
                         "it with the file")
    if not os.path.isfile(labels):
        raise FileNotFoundError(f"ELPV labels file {labels!r} does not exist; set data.root to the "
                                "folder holding labels.csv and images/ (or leave it empty)")
    rows = []
    with open(labels) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                rows.append((parts[0], float(parts[1]), parts[2]))
    return rows


def _refuse_irregular(root: str, paths: List[str]) -> None:
    """Listed cells that exist but are no regular files (a directory, a FIFO, whose read would
    block) fail here, by their stat, naming the first few."""
    bad = [p for p in paths
           if os.path.exists(os.path.join(root, p)) and not os.path.isfile(os.path.join(root, p))]
    if bad:
        raise ValueError(f"{len(bad)} ELPV images listed in labels.csv under {root!r} are not "
                         f"regular files: {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}; "
                         "remove them or replace them with images")


def list_categories(root: str) -> List[str]:
    return sorted({t for _, _, t in _read_labels(root or default_root())})


def load_category(root: str, name: str, seed: int, train_fraction: float = 0.5) -> Category:
    root = root or default_root()
    rows = _read_labels(root)
    if name not in {t for _, _, t in rows}:
        raise ValueError(f"unknown ELPV category {name!r}; choose from {', '.join(CATEGORIES)}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"data.train_fraction={train_fraction} must lie in (0, 1)")
    normal = [p for p, prob, t in rows if t == name and prob == 0.0]
    anomalous = [p for p, prob, t in rows if t == name and prob == 1.0]
    _refuse_irregular(root, normal + anomalous)
    rng = np.random.default_rng([seed, CATEGORIES.index(name) if name in CATEGORIES else 99])
    order = rng.permutation(len(normal))
    n_train = int(round(train_fraction * len(normal)))
    train_idx, test_idx = sorted(order[:n_train]), sorted(order[n_train:])

    def sample(p, label):
        return Sample(os.path.join(root, p), label, "defective" if label else "good",
                      f"{'defective' if label else 'good'}/{os.path.basename(p)}")

    train = [sample(normal[i], 0) for i in train_idx]
    test = [sample(normal[i], 0) for i in test_idx] + [sample(p, 1) for p in anomalous]
    return Category(name, train, test)
