"""Scores images with a model exported by `python -m softpatch_jax.main --mode=export`.

Standalone: needs numpy and jax only (and PIL to read image files); nothing of softpatch_jax.
Each export folder holds a copy of this file, so the folder alone is the deployment:

    python loader.py EXPORT_DIR image.png [image ...]      # prints score and verdict per image

    from loader import Scorer
    scorer = Scorer("DIR/export/widget")
    out = scorer.score_files(["a.png", "b.png"])
    out = scorer.score(images)   # (N, H, W, 3) float32, preprocessed as `load_image` does

Outputs: 'scores' (N,), 'maps' (N, H, W) on the input canvas (meta.json's image_size), 'verdicts'
(N,) bool (score >= the image threshold; None when the export has none) and 'masks' (N, H, W)
bool (map >= the pixel threshold; None without one); `score_files` adds each image's 'boxes'
and its map cut to them, 'image_maps', in the image's aspect ratio. The scorer runs fixed
batches of meta.json's `batch_size`; the last batch is padded with zero images whose outputs are
dropped.
"""
import json
import os
import stat
import sys

import jax
import numpy as np
from jax import export as jax_export


# -- preprocessing: the package's data/preprocess.py, copied (tested to agree) ------------------
def _to_8bit(img):
    """16-bit integer images: value / 257 rounded; float images: [0, 1] (x 255) when their finite
    maximum is <= 1, else 0..255; other modes as they are."""
    from PIL import Image

    if not (img.mode in ("I", "F") or img.mode.startswith("I;16")):
        return img
    if img.mode == "F":
        v = np.asarray(img, np.float64)
        finite = v[np.isfinite(v)]
        if finite.size == 0 or finite.max() <= 1.0:
            v = v * 255.0
        v = np.clip(np.rint(np.nan_to_num(v, nan=0.0)), 0, 255)
    else:
        v = (np.clip(np.asarray(img, np.int64), 0, 65535) + 128) // 257
    return Image.fromarray(v.astype(np.uint8))


def _hw(size):
    """N or [height, width] -> (height, width)."""
    return (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)


def placement(width: int, height: int, resize: int, size):
    """-> (resized (w, h), cut (left, top) or None, pad (left, top) or None, box (top, left,
    height, width) of the image's own pixels on the canvas): resize > 0, the shorter side to
    `resize` and a centre cut; 0, the whole image fitted in, aspect kept."""
    ch, cw = _hw(size)
    if resize > 0:
        rw, rh = ((resize, int(resize * height / width)) if width <= height
                  else (int(resize * width / height), resize))
        if ch > rh or cw > rw:
            raise ValueError(f"image size {ch}x{cw} is larger than the resized image {rh}x{rw}")
        top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
        return (rw, rh), (left, top), None, (0, 0, ch, cw)
    scale = min(ch / height, cw / width)
    rw = min(cw, max(1, int(round(width * scale))))
    rh = min(ch, max(1, int(round(height * scale))))
    top, left = (ch - rh) // 2, (cw - rw) // 2
    return (rw, rh), None, (left, top), (top, left, rh, rw)


def _place(img, resize: int, size) -> np.ndarray:
    """The image on the canvas: resized (bilinear), centre-cut or edge-padded -> uint8 array."""
    from PIL import Image

    resized, cut, pad, _ = placement(img.size[0], img.size[1], resize, size)
    if resized != img.size:
        img = img.resize(resized, Image.BILINEAR)
    ch, cw = _hw(size)
    if cut is not None:
        return np.asarray(img.crop((cut[0], cut[1], cut[0] + cw, cut[1] + ch)))
    a = np.asarray(img)
    return np.pad(a, ((pad[1], ch - pad[1] - a.shape[0]), (pad[0], cw - pad[0] - a.shape[1]),
                      (0, 0)), mode="edge")


def _require_regular(path: str) -> None:
    """Refuses what is not a regular file by its stat alone, as the package does: opening a FIFO
    named like an image would wait forever for a writer."""
    mode = os.stat(path).st_mode  # a missing file: FileNotFoundError naming it
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a special file")
        raise ValueError(f"{path!r} is not a regular file (it is {kind}); remove it or replace "
                         "it with an image")


def read_rgb(path: str):
    """An image file as an upright RGB PIL image."""
    from PIL import Image, ImageOps

    _require_regular(path)
    with Image.open(path) as img:
        ImageOps.exif_transpose(img, in_place=True)
        return _to_8bit(img).convert("RGB")


def load_image(path: str, resize: int, crop, mean, std) -> np.ndarray:
    """An image file -> (H, W, 3) float32 on the canvas `crop` (N or [H, W]): upright by its
    EXIF orientation, RGB, resized and centre-cut (or fitted whole, resize 0), scaled to
    [0, 1] and normalised by `mean` and `std` (per channel)."""
    return load_image_and_box(path, resize, crop, mean, std)[0]


def load_image_and_box(path: str, resize: int, crop, mean, std):
    """-> (`load_image`'s array, (top, left, height, width) of the image's own pixels on the
    canvas), from one decoding of the file."""
    img = read_rgb(path)
    box = placement(img.size[0], img.size[1], resize, crop)[3]
    img = _place(img, resize, crop)
    return ((img.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
            / np.asarray(std, np.float32)), box


# -- the scorer ---------------------------------------------------------------------------------
class Scorer:
    """An export folder (scorer.bin, arrays.npz, meta.json) ready to score images."""

    def __init__(self, directory: str):
        self.directory = directory
        try:
            with open(os.path.join(directory, "meta.json")) as f:
                self.meta = json.load(f)
            with open(os.path.join(directory, "scorer.bin"), "rb") as f:
                blob = bytearray(f.read())
            with np.load(os.path.join(directory, "arrays.npz")) as z:
                arrays = {k: z[k] for k in z.files}
        except OSError as e:
            raise ValueError(f"{directory!r} is not a complete export ({e}); export again with "
                             "--mode=export") from None
        try:
            self.exported = jax_export.deserialize(blob)
        except Exception as e:  # an older jax than the exporter's, or a damaged file
            raise ValueError(f"cannot load {directory}/scorer.bin with jax {jax.__version__} "
                             f"(exported with jax {self.meta.get('jax_version')}): {e}") from None
        self.batch = int(self.meta["batch_size"])
        self.image_size = _hw(self.meta["image_size"])  # (height, width)
        self._inputs = jax.device_put(arrays)  # on the device once, reused by every batch
        self._call = jax.jit(self.exported.call)

    def score(self, images) -> dict:
        """(N, H, W, 3) preprocessed images -> {'scores', 'maps', 'verdicts', 'masks'} (NumPy;
        'verdicts' / 'masks' None when the export has no image / pixel threshold)."""
        images = np.asarray(images, np.float32)
        h, w = self.image_size
        if images.ndim != 4 or images.shape[1:] != (h, w, 3) or not len(images):
            raise ValueError(f"images must be (N, {h}, {w}, 3) with N >= 1, got "
                             f"{images.shape}")
        parts = {k: [] for k in ("scores", "maps", "verdicts", "masks")}
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            n = len(chunk)
            if n < self.batch:  # the program's batch is fixed: pad with zero images
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, h, w, 3), np.float32)])
            out = self._call(chunk, self._inputs)
            for k in parts:
                parts[k].append(np.asarray(out[k])[:n])
        result = {k: np.concatenate(v) for k, v in parts.items()}
        if self.meta.get("image_threshold") is None:
            result["verdicts"] = None
        if self.meta.get("pixel_threshold") is None:
            result["masks"] = None
        return result

    def load(self, path: str) -> np.ndarray:
        return self.load_with_box(path)[0]

    def load_with_box(self, path: str):
        """-> (the preprocessed image, its (top, left, height, width) box on the canvas)."""
        m = self.meta
        return load_image_and_box(path, m["resize"], m["image_size"], m["mean"], m["std"])

    def score_files(self, paths) -> dict:
        """Image files -> `score`'s outputs (read batch by batch), plus 'boxes' (N, 4) (top, left,
        height, width of each image's own pixels on the canvas) and 'image_maps': each map cut to
        its box, so it keeps its image's aspect ratio."""
        paths = list(paths)
        if not paths:
            raise ValueError("no image files to score")
        outs, boxes = [], []
        for i in range(0, len(paths), self.batch):
            loaded = [self.load_with_box(p) for p in paths[i:i + self.batch]]
            outs.append(self.score(np.stack([image for image, _ in loaded])))
            boxes += [box for _, box in loaded]
        result = {k: None if outs[0][k] is None else np.concatenate([o[k] for o in outs])
                  for k in outs[0]}
        result["boxes"] = np.array(boxes, np.int64)
        result["image_maps"] = [m[t:t + bh, x:x + bw]
                                for m, (t, x, bh, bw) in zip(result["maps"], result["boxes"])]
        return result


def main(argv) -> int:
    if len(argv) < 3:
        print(f"usage: python {os.path.basename(argv[0])} EXPORT_DIR image [image ...]",
              file=sys.stderr)
        return 2
    try:
        scorer = Scorer(argv[1])
        out = scorer.score_files(argv[2:])
    except (OSError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    threshold = scorer.meta.get("image_threshold")
    print(f"# {scorer.meta.get('category')} ({scorer.meta.get('method')}), image threshold "
          f"{'none' if threshold is None else repr(threshold)}")
    print("image\tscore\tverdict")
    for i, path in enumerate(argv[2:]):
        verdict = "-" if out["verdicts"] is None else (
            "anomalous" if out["verdicts"][i] else "normal")
        print(f"{path}\t{float(out['scores'][i])!r}\t{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
