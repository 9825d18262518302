"""MVTec AD layout: <root>/<cat>/train/good, <cat>/test/<type>, <cat>/ground_truth/<type>/NNN_mask.png."""
import os
from typing import List

from softpatch_jax.data.samples import Category, Sample

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _images(folder: str) -> List[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))


def list_categories(root: str) -> List[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder {root!r} does not exist; set data.root to the "
                                "folder that holds the MVTec categories")
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "train")))


def load_category(root: str, name: str) -> Category:
    base = os.path.join(root, name)
    if not os.path.isdir(base):
        known = list_categories(root)
        raise FileNotFoundError(f"unknown category {name!r}: {base!r} does not exist; "
                                f"categories under {root!r}: {', '.join(known) or 'none'}")
    good = os.path.join(base, "train", "good")
    test_dir = os.path.join(base, "test")
    for d in (good, test_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"category {name!r} lacks {d!r}; expected the MVTec layout "
                                    "train/good, test/<type>, ground_truth/<type>")
    train = [Sample(os.path.join(good, f), 0, "good", f"train/good/{f}") for f in _images(good)]
    if not train:
        raise ValueError(f"category {name!r} has no training images in {good!r}")
    test, has_masks = [], False
    for defect in sorted(os.listdir(test_dir)):
        folder = os.path.join(test_dir, defect)
        if not os.path.isdir(folder):
            continue
        for f in _images(folder):
            mask = None
            if defect != "good":
                stem = os.path.splitext(f)[0]
                mask = os.path.join(base, "ground_truth", defect, f"{stem}_mask.png")
                if not os.path.isfile(mask):
                    raise FileNotFoundError(f"mask {mask!r} for test image test/{defect}/{f} is "
                                            "missing; every anomalous test image needs one")
                has_masks = True
            test.append(Sample(os.path.join(folder, f), int(defect != "good"), defect,
                               f"test/{defect}/{f}", mask))
    if not test:
        raise ValueError(f"category {name!r} has no test images in {test_dir!r}")
    return Category(name, train, test, has_masks)
