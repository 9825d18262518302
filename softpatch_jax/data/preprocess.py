"""Standard preprocessing (METHOD.md step 1), as torchvision does it on PIL images: resize the
shorter side to `resize` (bilinear), centre-crop `crop`, scale to [0, 1], ImageNet mean/std.
Masks get the same resize and crop; a pixel is anomalous only if it stays at 1 (255) after resizing.
Grayscale images are replicated to three channels.
"""
import concurrent.futures
import io
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _resize_crop(img: Image.Image, resize: int, crop: int) -> Image.Image:
    w, h = img.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    if size != (w, h):
        img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    if crop > min(w, h):
        raise ValueError(f"data.image_size={crop} is larger than the resized image {w}x{h}; "
                         "set data.image_size <= data.resize")
    top = int(round((h - crop) / 2.0))
    left = int(round((w - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def _open(path: str, mode: str, data: Optional[bytes] = None) -> Image.Image:
    """Opens a file, or encoded bytes when `data` is given (`path` then only names it)."""
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            return img.convert(mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path!r} does not exist") from None
    except Exception as e:  # PIL raises several types for corrupt files
        raise ValueError(f"cannot read image {path!r} ({e}); replace or remove the file") from None


def augment(img: Image.Image, rotation_deg: float, shift_x: float, shift_y: float) -> Image.Image:
    """Rotation about the centre and translation (fractions of the size), bilinear, black fill."""
    w, h = img.size
    return img.rotate(rotation_deg, resample=Image.BILINEAR,
                      translate=(shift_x * w, shift_y * h))


def load_image(path: str, resize: int = 256, crop: int = 224, aug=None,
               data: Optional[bytes] = None) -> np.ndarray:
    """-> (crop, crop, 3) float32, ImageNet-normalised. `aug`: (degrees, dx, dy) or None,
    applied to the original image before resizing. `data`: encoded bytes instead of the file."""
    img = _open(path, "RGB", data)
    if aug is not None:
        img = augment(img, *aug)
    img = _resize_crop(img, resize, crop)
    return (np.asarray(img, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def load_sample_mask(sample, resize: int = 256, crop: int = 224) -> np.ndarray:
    """The mask of a Sample, from its file or its stored bytes; zeros when it has none."""
    if sample.mask_bytes is not None:
        return load_mask(sample.path + ":mask", resize, crop, data=sample.mask_bytes)
    return load_mask(sample.mask_path, resize, crop, sample.path)


def load_mask(path: Optional[str], resize: int = 256, crop: int = 224,
              image_path: Optional[str] = None, data: Optional[bytes] = None) -> np.ndarray:
    """-> (crop, crop) bool; all False when path is None. The mask must match its image's size.

    Any non-zero value marks a defect (MVTec masks are 0/255, some VisA releases use 0/1); the
    binarised mask is resized like the image and a pixel stays anomalous only where it remains 255.
    """
    if path is None:
        return np.zeros((crop, crop), bool)
    mask = _open(path, "L", data)
    if image_path is not None:
        with Image.open(image_path) as img:
            if img.size != mask.size:
                raise ValueError(f"mask {path!r} is {mask.size[0]}x{mask.size[1]} but its image "
                                 f"{image_path!r} is {img.size[0]}x{img.size[1]}; masks must "
                                 "have the image's size")
    mask = Image.fromarray(((np.asarray(mask) > 0) * 255).astype(np.uint8))
    return np.asarray(_resize_crop(mask, resize, crop)) == 255


def _load(item, resize, crop):
    if isinstance(item, str):
        return load_image(item, resize, crop)
    return load_image(item.path, resize, crop, item.augment, item.image_bytes)


def batches(samples: Sequence, batch_size: int, resize: int, crop: int,
            workers: int = 4) -> Iterator[Tuple[int, np.ndarray]]:
    """Yields (start, (n, crop, crop, 3) images) batches of Samples (or plain paths), decoded
    ahead by a thread pool so that reading overlaps the backbone; only two batches are ever
    in memory, never the whole dataset."""
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
                   crop: int) -> Iterator[Tuple[int, int, np.ndarray]]:
    """As `batches`, but every batch is padded with zero images to `batch_size` (one compiled
    shape for jitted consumers): yields (start, n real images, (batch_size, crop, crop, 3))."""
    for start, imgs in batches(samples, batch_size, resize, crop):
        n = imgs.shape[0]
        if n < batch_size:
            imgs = np.concatenate([imgs, np.zeros((batch_size - n,) + imgs.shape[1:], imgs.dtype)])
        yield start, n, imgs
