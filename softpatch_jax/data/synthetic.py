"""Small MVTec-format datasets for tests and examples: a textured part (a disc on a background)
with pasted defects (bright or dark blobs) whose masks are exact."""
import os

import numpy as np
from PIL import Image


def _part(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    base = 0.35 + 0.05 * np.sin(12 * xx + rng.uniform(0, 0.3)) * np.cos(9 * yy)
    cy, cx = 0.5 + rng.uniform(-0.02, 0.02, 2)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < 0.3 ** 2
    img = np.where(disc, 0.7 + 0.04 * np.sin(40 * xx) * np.sin(40 * yy), base)
    img = img + rng.normal(0, 0.01, img.shape)
    return np.stack([img, img * 0.95, img * 0.9], -1)


def _defect(rng: np.random.Generator, img: np.ndarray):
    size = img.shape[0]
    r = rng.integers(size // 12, size // 6)
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    out = img.copy()
    out[mask] = rng.choice([0.05, 1.0])
    return out, mask


def _save(path: str, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def make_mvtec_category(root: str, name: str = "widget", n_train: int = 12, n_good: int = 4,
                        defects=("blob",), n_defect: int = 4, size: int = 64,
                        seed: int = 0) -> str:
    """Writes <root>/<name>/{train/good, test/<type>, ground_truth/<type>} and returns its path."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, name)
    to8 = lambda a: (np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    for i in range(n_train):
        _save(os.path.join(base, "train", "good", f"{i:03d}.png"), to8(_part(rng, size)))
    for i in range(n_good):
        _save(os.path.join(base, "test", "good", f"{i:03d}.png"), to8(_part(rng, size)))
    for defect in defects:
        for i in range(n_defect):
            img, mask = _defect(rng, _part(rng, size))
            _save(os.path.join(base, "test", defect, f"{i:03d}.png"), to8(img))
            _save(os.path.join(base, "ground_truth", defect, f"{i:03d}_mask.png"),
                  mask.astype(np.uint8) * 255)
    return base
