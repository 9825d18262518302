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


LAYOUTS = ("mvtec", "visa_prepared", "visa_raw", "btad", "folder")


def make_mvtec_category(root: str, name: str = "widget", n_train: int = 12, n_good: int = 4,
                        defects=("blob",), n_defect: int = 4, size: int = 64,
                        seed: int = 0) -> str:
    """Writes <root>/<name>/{train/good, test/<type>, ground_truth/<type>} and returns its path."""
    return make_category(root, "mvtec", name, n_train, n_good, defects, n_defect, size, seed)


def make_category(root: str, layout: str = "mvtec", name: str = "widget", n_train: int = 12,
                  n_good: int = 4, defects=("blob",), n_defect: int = 4, size: int = 64,
                  seed: int = 0) -> str:
    """Writes one category in `layout` (see LAYOUTS; VisA layouts use the single type 'bad').
    The same seed gives the same pixels in every layout. Returns the category folder."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    rng = np.random.default_rng(seed)
    base = os.path.join(root, name)
    to8 = lambda a: (np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    good = "ok" if layout == "btad" else "good"
    ext = ".bmp" if layout == "btad" else ".png"
    if layout.startswith("visa"):
        defects = ("bad",)
    train = [to8(_part(rng, size)) for _ in range(n_train)]
    test_good = [to8(_part(rng, size)) for _ in range(n_good)]
    bad = {d: [] for d in defects}
    for d in defects:
        for _ in range(n_defect):
            img, mask = _defect(rng, _part(rng, size))
            bad[d].append((to8(img), mask.astype(np.uint8) * 255))
    if layout == "visa_raw":
        rows = ["object,split,label,image,mask"]
        for i, img in enumerate(train + test_good):
            rel = f"{name}/Data/Images/Normal/{i:04d}.JPG".replace(".JPG", ".png")
            _save(os.path.join(root, rel), img)
            rows.append(f"{name},{'train' if i < n_train else 'test'},normal,{rel},")
        for i, (img, mask) in enumerate(bad["bad"]):
            rel, mrel = f"{name}/Data/Images/Anomaly/{i:03d}.png", f"{name}/Data/Masks/Anomaly/{i:03d}.png"
            _save(os.path.join(root, rel), img)
            _save(os.path.join(root, mrel), (mask > 0).astype(np.uint8))  # VisA masks: 0/1
            rows.append(f"{name},test,anomaly,{rel},{mrel}")
        csv_path = os.path.join(root, "split_csv", "1cls.csv")
        os.makedirs(os.path.dirname(csv_path), exist_ok=True)
        mode = "a" if os.path.isfile(csv_path) else "w"
        with open(csv_path, mode) as f:
            f.write("\n".join(rows[1:] if mode == "a" else rows) + "\n")
        return base
    if layout == "folder":
        for i, img in enumerate(train + test_good):
            _save(os.path.join(base, "good", f"{i:03d}.png"), img)
        for d, items in bad.items():
            for i, (img, mask) in enumerate(items):
                _save(os.path.join(base, "defective", d, f"{i:03d}.png"), img)
                _save(os.path.join(base, "masks", d, f"{i:03d}.png"), mask)
        return base
    for i, img in enumerate(train):
        _save(os.path.join(base, "train", good, f"{i:03d}{ext}"), img)
    for i, img in enumerate(test_good):
        _save(os.path.join(base, "test", good, f"{i:03d}{ext}"), img)
    suffix = "_mask" if layout == "mvtec" else ""
    for d, items in bad.items():
        folder = "ko" if layout == "btad" else d
        for i, (img, mask) in enumerate(items):
            _save(os.path.join(base, "test", folder, f"{i:03d}{ext}"), img)
            _save(os.path.join(base, "ground_truth", folder, f"{i:03d}{suffix}.png"), mask)
    return base


def _surface(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A tall or wide textured surface (fine stripes across, a little noise), RGB in [0, 1]."""
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    img = 0.5 + 0.08 * np.sin(yy / 2.5 + rng.uniform(0, 6.3)) + rng.normal(0, 0.015, yy.shape)
    img = img + 0.04 * np.cos(xx / 7.0)
    return np.stack([img, img, img], -1)


def make_surface_folder(root: str, name: str = "strip", n_good: int = 16, n_defect: int = 4,
                        height: int = 160, width: int = 48, edge: str = "top", jitter: int = 3,
                        seed: int = 0) -> str:
    """A `folder` category of tall (or wide) surfaces whose defects (a dark spot with its exact
    mask) lie within `width` / 8 of the `edge` ("top" or "bottom", the ends a centre square crop
    cuts away). Heights vary by up to `jitter` pixels, as real parts' images do. Returns the
    category folder: good/, defective/, masks/ (mirroring defective/)."""
    if edge not in ("top", "bottom"):
        raise ValueError(f"edge={edge!r}: choose top or bottom")
    rng = np.random.default_rng(seed)
    base = os.path.join(root, name)
    to8 = lambda a: (np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    for i in range(n_good):
        h = height + int(rng.integers(0, jitter + 1))
        _save(os.path.join(base, "good", f"{i:03d}.png"), to8(_surface(rng, h, width)))
    for i in range(n_defect):
        h = height + int(rng.integers(0, jitter + 1))
        img = _surface(rng, h, width)
        r = max(2, width // 8)
        cy = r + 2 if edge == "top" else h - r - 3
        cx = int(rng.integers(r + 2, width - r - 2))
        yy, xx = np.mgrid[:h, :width]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        img[mask] = 0.05
        _save(os.path.join(base, "defective", f"{i:03d}.png"), to8(img))
        _save(os.path.join(base, "masks", f"{i:03d}.png"), mask.astype(np.uint8) * 255)
    return base
