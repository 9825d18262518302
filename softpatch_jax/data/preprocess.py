"""Standard preprocessing (METHOD.md step 1), as torchvision does it on PIL images: resize the
shorter side to `resize` (bilinear), centre-crop `crop`, scale to [0, 1], ImageNet mean/std; or,
with resize 0, the whole image fitted into the canvas, aspect kept (`shapes`). `crop` is N or
(height, width) throughout. Masks get the same resize and crop (or fit, padded with no defect);
a pixel is anomalous only if it stays at 1 (255) after resizing.
Grayscale images are replicated to three channels. Images and masks are first turned upright by
their EXIF orientation; 16-bit and float images are scaled to 8 bits (`_to_8bit`).
"""
import concurrent.futures
import io
import os
import stat
from typing import Callable, Iterator, Optional, Sequence, Tuple, TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageOps

from softpatch_jax import shapes

T = TypeVar("T")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def place(img: Image.Image, resize: int, size, fill: str = "edge") -> np.ndarray:
    """An image (or mask) on the input canvas as `shapes.placement` says: resized (bilinear),
    then cut from the centre (resize > 0) or padded to the canvas (resize 0; `fill` "edge"
    replicates the border, "constant" pads zeros). -> (H, W[, C]) uint8 array."""
    p = shapes.placement(img.size[0], img.size[1], resize, size)
    if p.resized != img.size:
        img = img.resize(p.resized, Image.BILINEAR)
    ch, cw = shapes.hw(size)
    if resize > 0:
        return np.asarray(img.crop((p.cut_left, p.cut_top, p.cut_left + cw, p.cut_top + ch)))
    a = np.asarray(img)
    top, left = p.box[:2]
    pads = ((top, ch - top - a.shape[0]), (left, cw - left - a.shape[1]))
    return np.pad(a, pads + ((0, 0),) * (a.ndim - 2), mode=fill)


def _require_regular(path: str) -> None:
    """Refuses what is not a regular file by its stat alone: opening a FIFO named like an image
    blocks forever, and a directory or socket fails with an obscure error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read image {path!r} ({e}); replace or remove the file") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device or other special file")
        raise ValueError(f"{path!r} is not a regular file (it is {kind}); remove it or replace it "
                         "with an image")


def _read(path: str, data: Optional[bytes], take: Callable[[Image.Image], T]) -> T:
    """`take` applied to the opened file (or encoded `data`, `path` then only names it), with the
    same errors for every unreadable input."""
    if data is None:
        _require_regular(path)
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            return take(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path!r} does not exist") from None
    except Image.UnidentifiedImageError:  # PIL's message names a file object, not the file
        empty = (len(data) == 0) if data is not None else os.path.getsize(path) == 0
        why = "the file is empty" if empty else "not an image format PIL reads"
        raise ValueError(f"cannot read image {path!r} ({why}); replace or remove the file"
                         ) from None
    except Exception as e:  # PIL raises several types for corrupt files
        raise ValueError(f"cannot read image {path!r} ({e}); replace or remove the file") from None


def _is_wide(img: Image.Image) -> bool:
    """Modes that convert() would clip at 255 (16-bit PNGs and TIFFs read as solid white)."""
    return img.mode in ("I", "F") or img.mode.startswith("I;16")


def _to_8bit(img: Image.Image) -> Image.Image:
    """Integer modes I;16* and I are read as 16-bit: clipped to 0..65535, then value / 257
    rounded (65535 -> 255). Float (F) images are taken as [0, 1] when their finite maximum is
    <= 1 (times 255), else as 0..255; rounded, clipped, NaN -> 0. Other modes are returned as they
    are, so 8-bit images read exactly as convert() reads them."""
    if not _is_wide(img):
        return img
    if img.mode == "F":
        v = np.asarray(img, np.float64)
        finite = v[np.isfinite(v)]
        if finite.size == 0 or finite.max() <= 1.0:
            v = v * 255.0
        v = np.clip(np.rint(np.nan_to_num(v, nan=0.0)), 0, 255)
    else:
        v = (np.clip(np.asarray(img, np.int64), 0, 65535) + 128) // 257  # = round(value / 257)
    return Image.fromarray(v.astype(np.uint8))


def _defects(img: Image.Image) -> Image.Image:
    """L mask, 255 wherever the stored value is non-zero: thresholded before any scaling, so a
    16-bit mask of 0/1 keeps its defects (NaN is no defect)."""
    if _is_wide(img):
        v = np.asarray(img)
        on = (v != 0) & ~np.isnan(v)
    else:
        on = np.asarray(img.convert("L")) > 0
    return Image.fromarray((on * 255).astype(np.uint8))


def open_image(path: str, mode: str, data: Optional[bytes] = None) -> Image.Image:
    """Opens a file, or encoded bytes when `data` is given (`path` then only names it), upright
    as its EXIF orientation says (cameras store rotated pixels plus a tag). `mode`: "RGB" or "L"
    (16-bit and float images scaled to 8 bits as `_to_8bit` says), or "mask" (`_defects`)."""
    def take(img: Image.Image) -> Image.Image:
        ImageOps.exif_transpose(img, in_place=True)
        return _defects(img) if mode == "mask" else _to_8bit(img).convert(mode)
    return _read(path, data, take)


def _upright_size(img: Image.Image) -> Tuple[int, int]:
    """(width, height) after `open_image`'s EXIF transpose, without decoding the pixels where the
    format allows it (orientations 5-8 swap the sides)."""
    w, h = img.size
    return (h, w) if img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8) else (w, h)


def image_size(path: str, data: Optional[bytes] = None) -> Tuple[int, int]:
    """(width, height) of an image file (or encoded `data`) as it reads upright; also checks
    that it is a readable image."""
    return _read(path, data, _upright_size)


def check_image(path: str, data: Optional[bytes] = None) -> Tuple[int, int]:
    """(width, height) as the image reads upright, after checking that the whole file decodes:
    a JPEG at 1/8 scale (its entropy-coded data still read to the end), other formats whole
    (reading a PNG's orientation decodes it anyway). Catches truncated files, zero bytes and
    other files named like images. A missing file raises FileNotFoundError, an unusable one
    ValueError naming it."""
    def take(img: Image.Image) -> Tuple[int, int]:
        size = _upright_size(img)  # before `draft`, which shrinks img.size
        if img.format == "JPEG":
            img.draft(None, (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()
        return size
    return _read(path, data, take)


def sample_problem(sample) -> Optional[str]:
    """Why a Sample cannot be used (its image or its mask unreadable, or a mask of another size
    than its image), or None. A file that does not exist still raises FileNotFoundError."""
    try:
        size = check_image(sample.path, sample.image_bytes)
        if sample.has_mask:
            mask = sample.mask_path or sample.path + ":mask"
            mask_size = check_image(mask, sample.mask_bytes)
            if mask_size != size:
                return (f"mask {mask!r} is {mask_size[0]}x{mask_size[1]} but its image is "
                        f"{size[0]}x{size[1]}; masks must have the image's size")
    except ValueError as e:
        return str(e)
    return None


def augment(img: Image.Image, rotation_deg: float, shift_x: float, shift_y: float) -> Image.Image:
    """Rotation about the centre and translation (fractions of the size), bilinear, black fill."""
    w, h = img.size
    return img.rotate(rotation_deg, resample=Image.BILINEAR,
                      translate=(shift_x * w, shift_y * h))


def load_image(path: str, resize: int = 256, crop=224, aug=None,
               data: Optional[bytes] = None) -> np.ndarray:
    """-> (H, W, 3) (canvas `crop`) float32, ImageNet-normalised. `aug`: (degrees, dx, dy) or None,
    applied to the original image before resizing. `data`: encoded bytes instead of the file."""
    img = open_image(path, "RGB", data)
    if aug is not None:
        img = augment(img, *aug)
    return normalised(img, resize, crop)


def display_image(sample, resize: int = 256, crop=224) -> np.ndarray:
    """A sample's image as the model sees it (augmented, resized, cropped), for people:
    (H, W, 3) (canvas `crop`) float in [0, 1], the ImageNet normalisation undone."""
    img = load_image(sample.path, resize, crop, sample.augment, sample.image_bytes)
    return np.clip(img * IMAGENET_STD + IMAGENET_MEAN, 0.0, 1.0)


def load_sample_mask(sample, resize: int = 256, crop=224) -> np.ndarray:
    """The mask of a Sample, from its file or its stored bytes; zeros when it has none."""
    if sample.mask_bytes is not None:
        return load_mask(sample.path + ":mask", resize, crop, data=sample.mask_bytes)
    return load_mask(sample.mask_path, resize, crop, sample.path)


def load_mask(path: Optional[str], resize: int = 256, crop=224,
              image_path: Optional[str] = None, data: Optional[bytes] = None) -> np.ndarray:
    """-> (H, W) bool on the canvas `crop`; all False when path is None. The mask must match
    its image's size.

    Any non-zero value marks a defect (MVTec masks are 0/255, some VisA releases use 0/1); the
    binarised mask is resized like the image and a pixel stays anomalous only where it remains 255.
    """
    if path is None:
        return np.zeros(shapes.hw(crop), bool)
    mask = open_image(path, "mask", data)
    if image_path is not None:
        size = image_size(image_path)  # both as `open_image` turns them upright
        if size != mask.size:
            raise ValueError(f"mask {path!r} is {mask.size[0]}x{mask.size[1]} but its image "
                             f"{image_path!r} is {size[0]}x{size[1]}; masks must "
                             "have the image's size")
    return place(mask, resize, crop, "constant") == 255


def array_image(array: np.ndarray) -> Image.Image:
    """An image held in memory (the Python API's input) as an RGB PIL image: (H, W), (H, W, 1),
    (H, W, 3) or (H, W, 4) of uint8, or of floats in [0, 1] (rounded to 8 bits, as a file would
    hold them). One line naming the problem otherwise."""
    a = np.asarray(array)
    shape = a.shape
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = a[..., 0] if a.shape[-1] == 1 else a[..., :3]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] == 3) or min(a.shape[:2]) < 1:
        raise ValueError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() \
                or a.min() < 0.0 or a.max() > 1.0:
            raise ValueError(f"an image array must hold uint8 values or floats in [0, 1], got "
                             f"{a.dtype} in [{a.min()}, {a.max()}]")
        a = np.round(a * 255.0).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def normalised(img: Image.Image, resize: int, crop) -> np.ndarray:
    """-> (H, W, 3) float32 on the canvas `crop`, ImageNet-normalised (`place`)."""
    return (place(img, resize, crop).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def canvas_box(item, resize: int, crop) -> Tuple[int, int, int, int]:
    """(top, left, height, width) of an item's own pixels on the canvas (a Sample, a path or
    an image array): the whole canvas when cropping, the fitted image when resize is 0."""
    if resize > 0:  # a centre cut fills the canvas whatever the image's size: nothing to open
        return (0, 0) + shapes.hw(crop)
    if isinstance(item, np.ndarray):
        w, h = item.shape[1], item.shape[0]
    elif isinstance(item, str):
        w, h = image_size(item)
    else:
        w, h = image_size(item.path, item.image_bytes)
    return shapes.placement(w, h, resize, crop).box


def _load(item, resize, crop):
    if isinstance(item, np.ndarray):
        return normalised(array_image(item), resize, crop)
    if isinstance(item, str):
        return load_image(item, resize, crop)
    return load_image(item.path, resize, crop, item.augment, item.image_bytes)


def batches(samples: Sequence, batch_size: int, resize: int, crop,
            workers: int = 4) -> Iterator[Tuple[int, np.ndarray]]:
    """Yields (start, (n, H, W, 3) images) batches of Samples (or plain paths, or image arrays:
    `array_image`), decoded ahead by a thread pool so that reading overlaps the backbone; only
    two batches are ever in memory, never the whole dataset."""
    paths = list(samples)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = []
        starts = list(range(0, len(paths), batch_size))
        for i, s in enumerate(starts):
            pending.append((s, [pool.submit(_load, p, resize, crop)
                                for p in paths[s:s + batch_size]]))
            if i >= 1:  # keep one batch decoding ahead
                s0, futs = pending.pop(0)
                yield s0, np.stack([f.result() for f in futs])
        for s0, futs in pending:
            yield s0, np.stack([f.result() for f in futs])


def padded_batches(samples: Sequence, batch_size: int, resize: int,
                   crop) -> Iterator[Tuple[int, int, np.ndarray]]:
    """As `batches`, but every batch is padded with zero images to `batch_size` (one compiled
    shape for jitted consumers): yields (start, n real images, (batch_size, H, W, 3))."""
    for start, imgs in batches(samples, batch_size, resize, crop):
        n = imgs.shape[0]
        if n < batch_size:
            imgs = np.concatenate([imgs, np.zeros((batch_size - n,) + imgs.shape[1:], imgs.dtype)])
        yield start, n, imgs
