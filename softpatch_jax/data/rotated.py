"""A generated misaligned category: every image of an MVTec-layout category (train and test) and
its mask rotated about the image centre by its own seeded angle in [-180, 180) degrees, written in
the MVTec layout, so that every reader, sweep and feature cache reads it unchanged (issue 17).

- Angles: one per image, from (seed, the image's name, e.g. `test/bent_lead/002.png`), so an
  image's angle does not depend on which other files exist; a mask takes its image's angle.
- Images: bilinear (`ops/warp.py`, the package's affine warp). The corners that the rotation
  brings in from outside the frame are filled with the image's border colour (per channel, the
  median of its outermost pixel ring), blended at the edge as bilinear interpolation against that
  constant (`scipy.ndimage.rotate(..., order=1, mode='grid-constant', cval=colour)`); a reflected
  fill would paste mirrored copies of the part into the corners.
- Masks: nearest neighbour (they stay binary), zero (no defect) outside the frame
  (`scipy.ndimage.rotate(..., order=0, mode='grid-constant', cval=0)`).
- Written once: `<dst>/<name>/rotation.json` records the source's fingerprint (every file's
  relative path, size and modification time), the seed and every angle; a rerun with the same
  source and seed does nothing (so the files keep their modification times and the feature
  caches stay valid). The category is written in a staging folder and renamed into place whole.

python -m experiments.make_rotated --src ../shared/data/mvtec_ad/transistor --dst runs/data --seed 0
"""
import json
import os
import shutil
import zlib
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from softpatch_jax.data import mvtec
from softpatch_jax.files import fingerprint, staged_dir, write_json
from softpatch_jax.ops import warp

MARKER = "rotation.json"
ANGLE_RANGE = (-180.0, 180.0)


def image_angle(seed: int, name: str) -> float:
    """Degrees in [-180, 180) for the image named `name` (e.g. 'train/good/000.png'),
    counter-clockwise as displayed (scipy.ndimage.rotate's sign)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return float(rng.uniform(*ANGLE_RANGE))


def rotation_theta(angle_deg: float, height: int, width: int) -> np.ndarray:
    """(2, 3) `ops.warp` matrix (output -> input, normalised coordinates) of a rotation by
    `angle_deg` about the image centre, in pixel space (so non-square images rotate rigidly)."""
    a = np.deg2rad(angle_deg)
    # The content turns by `a` (counter-clockwise on screen, y down): an output offset (dx, dy)
    # reads the input at R(a)^T (dx, dy), R(a) = [[cos, sin], [-sin, cos]].
    c, s = np.cos(a), np.sin(a)
    inverse = np.array([[c, -s], [s, c]])
    scale = np.diag([width / 2.0, height / 2.0])  # normalised -> pixel offsets from the centre
    lin = np.linalg.inv(scale) @ inverse @ scale
    return np.concatenate([lin, np.zeros((2, 1))], axis=1).astype(np.float32)


def border_colour(image: np.ndarray) -> np.ndarray:
    """image (H, W, C) -> (C,) per-channel median of the outermost pixel ring."""
    ring = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]], axis=0)
    return np.median(ring, axis=0)


@jax.jit
def _warp_with_coverage(image: jnp.ndarray, theta: jnp.ndarray):
    """image (H, W, C), theta (2, 3) -> bilinear warp with zeros outside (H, W, C), and the
    share of each output pixel's bilinear weight that fell inside the image (H, W, 1)."""
    ones = jnp.ones(image.shape[:2] + (1,), image.dtype)
    both = jnp.concatenate([image, ones], axis=-1)[None]
    out = warp.warp(both, theta[None], padding="zeros")[0]
    return out[..., :-1], out[..., -1:]


def rotate_image(image: np.ndarray, angle_deg: float, fill=None) -> np.ndarray:
    """image (H, W, C) float -> (H, W, C) float32 rotated by `angle_deg` about its centre,
    bilinear; outside the frame the constant `fill` (C,) (default: `border_colour`), interpolated
    at the edge as one more pixel value (scipy's mode='grid-constant')."""
    image = np.asarray(image, np.float32)
    fill = border_colour(image) if fill is None else np.asarray(fill, np.float32)
    theta = rotation_theta(angle_deg, *image.shape[:2])
    inside, coverage = _warp_with_coverage(jnp.asarray(image), jnp.asarray(theta))
    return np.asarray(inside + (1.0 - coverage) * fill, np.float32)


def rotate_mask(mask: np.ndarray, angle_deg: float) -> np.ndarray:
    """mask (H, W) -> (H, W) of the same dtype rotated by `angle_deg`, nearest neighbour (the
    input pixel whose centre is nearest, rounding halves up as scipy's order=0), 0 outside."""
    h, w = mask.shape
    a = np.deg2rad(angle_deg)
    rows, cols = np.mgrid[:h, :w].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0  # centre in pixel-centre coordinates
    dy, dx = rows - cy, cols - cx
    # The inverse of rotation_theta's map, in float64 so that no half-way case flips.
    src_x = np.cos(a) * dx - np.sin(a) * dy + cx
    src_y = np.sin(a) * dx + np.cos(a) * dy + cy
    xi, yi = np.floor(src_x + 0.5).astype(np.int64), np.floor(src_y + 0.5).astype(np.int64)
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    out = np.zeros_like(mask)
    out[inside] = mask[yi[inside], xi[inside]]
    return out


def source_fingerprint(src: str) -> str:
    """Fingerprint of every file under `src`: relative path, size and modification time."""
    stamps = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            stamps.append([os.path.relpath(os.path.join(root, f), src), st.st_size,
                           st.st_mtime_ns])
    return fingerprint({"files": stamps})


def _write_rotated(src_path: str, dst_path: str, angle: float, is_mask: bool) -> None:
    with Image.open(src_path) as img:
        mode = img.mode
        arr = np.asarray(img)
    if is_mask:
        out = rotate_mask(arr if arr.ndim == 2 else arr[..., 0], angle)
    else:
        planar = arr[..., None] if arr.ndim == 2 else arr
        hi = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else None
        out = rotate_image(planar.astype(np.float32), angle)
        out = np.clip(np.rint(out), 0, hi).astype(arr.dtype) if hi else out.astype(arr.dtype)
        out = out[..., 0] if arr.ndim == 2 else out
    os.makedirs(os.path.dirname(dst_path), exist_ok=True)
    Image.fromarray(out, mode if mode in ("L", "RGB", "RGBA", "I;16", "1") else None).save(dst_path)


def _read_marker(path: str) -> Dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def make_rotated_category(src_category_dir: str, dst_root: str, name: str, seed: int) -> str:
    """Writes `<dst_root>/<name>`: the MVTec-layout category at `src_category_dir` with every
    training and test image and its mask rotated by its own seeded angle (module docstring).
    Returns the category folder. Idempotent: with the same source files and seed it does
    nothing; otherwise it rewrites the folder whole (staged, then renamed). Refuses to replace
    a folder it did not write."""
    src = os.path.abspath(src_category_dir)
    if not os.path.isdir(src):
        raise ValueError(f"source category {src_category_dir!r} does not exist; pass the folder "
                         "that holds train/, test/ and ground_truth/ (e.g. "
                         "../shared/data/mvtec_ad/transistor)")
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"category name {name!r} must be a plain folder name, e.g. "
                         "transistor_rotated")
    final = os.path.join(dst_root, name)
    marker = {"source": src, "source_fingerprint": source_fingerprint(src), "seed": int(seed),
              "angle_range_deg": list(ANGLE_RANGE), "image_interpolation": "bilinear",
              "mask_interpolation": "nearest", "fill": "image border colour (per-channel median "
              "of the outermost pixel ring); masks 0"}
    stored = _read_marker(os.path.join(final, MARKER))
    if os.path.lexists(final):
        if not stored:
            raise ValueError(f"{final!r} exists and was not written by make_rotated_category (no "
                             f"{MARKER}); remove it or choose another destination or name")
        if all(stored.get(k) == v for k, v in marker.items() if k != "source"):
            return final
    category = mvtec.load_category(os.path.dirname(src), os.path.basename(src))
    angles: Dict[str, float] = {}
    os.makedirs(dst_root, exist_ok=True)
    with staged_dir(final) as out:
        written = set()
        for s in category.train + category.test:
            angle = angles[s.name] = image_angle(seed, s.name)
            _write_rotated(s.path, os.path.join(out, s.name), angle, is_mask=False)
            written.add(os.path.realpath(s.path))
            if s.mask_path:
                rel = os.path.relpath(s.mask_path, src)
                _write_rotated(s.mask_path, os.path.join(out, rel), angle, is_mask=True)
                written.add(os.path.realpath(s.mask_path))
        for root, _, files in os.walk(src):  # licence and readme files: copied as they are
            for f in files:
                path = os.path.join(root, f)
                rel = os.path.relpath(path, src)
                if rel.split(os.sep)[0] in ("train", "test", "ground_truth"):
                    continue  # images the reader does not list (none in MVTec) are left out
                os.makedirs(os.path.join(out, os.path.dirname(rel)), exist_ok=True)
                shutil.copy2(path, os.path.join(out, rel))
        write_json(os.path.join(out, MARKER), {**marker, "angles_deg": angles})
    return final


def angles_of(category_dir: str) -> Dict[str, float]:
    """{image name: degrees} of a generated category (from its marker)."""
    return _read_marker(os.path.join(category_dir, MARKER)).get("angles_deg", {})
