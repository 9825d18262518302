"""Folder readers for the MVTec-style layouts and their relatives.

- MVTec AD:       <root>/<cat>/train/good, test/<type>, ground_truth/<type>/NNN_mask.png
- VisA prepared:  <root>/<cat>/train/good, test/{good,bad}, ground_truth/bad/NNN.png
- BTAD:           <root>/01|02|03/train/ok, test/{ok,ko}, ground_truth/ko/NNN.png|.bmp
- VisA raw:       <root>/<cat>/Data/Images/{Normal,Anomaly}, Data/Masks/Anomaly,
                  <root>/split_csv/1cls.csv (columns object,split,label,image,mask)
- own folders:    <root>/<cat>/good/*, <cat>/defective/[<type>/]*, optional <cat>/masks/ mirroring
                  defective/ (normal images are split by seed into train and test)

A mask is found as `<stem>_mask.<ext>` or `<stem>.<ext>` with any image extension.
"""
import csv
import logging
import os
from typing import List, Optional


from softpatch_jax.data.samples import Category, Sample

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def images_in(folder: str) -> List[str]:
    """Sorted image file names in a folder. Only regular files (or links to them): opening a FIFO
    named like an image blocks forever, so such entries are skipped with one warning."""
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))
    files = [f for f in names if os.path.isfile(os.path.join(folder, f))]
    if len(files) < len(names):
        skipped = sorted(set(names) - set(files))
        logging.warning("skipping %d entries of %r that are not regular files (directories, FIFOs, "
                        "sockets or broken links): %s%s", len(skipped), folder,
                        ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
    return files


def find_mask(folder: str, stem: str) -> Optional[str]:
    for name in (f"{stem}_mask", stem):
        for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
            path = os.path.join(folder, name + ext)
            if os.path.isfile(path):
                return path
    return None


def _refuse_irregular(path: str, what: str) -> None:
    """A clear ValueError when `path` exists but is no regular file (a directory, FIFO, socket),
    rather than "does not exist" or a read that blocks."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{what} is not a regular file; remove it or replace it with a file")


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist; check data.root, data.category "
                                "and data.name (the layout)")


def list_categories(root: str, layout: str = "mvtec") -> List[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder {root!r} does not exist; set data.root to the "
                                "folder that holds the categories")
    marker = {"mvtec": "train", "visa_raw": "Data", "folder": "good"}[layout]
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, marker)))


def _unknown(root: str, name: str, layout: str) -> FileNotFoundError:
    known = list_categories(root, layout)
    return FileNotFoundError(f"unknown category {name!r}: {os.path.join(root, name)!r} does not "
                             f"exist; categories under {root!r}: {', '.join(known) or 'none'}")


def load_category(root: str, name: str, good: str = "good") -> Category:
    """MVTec AD, VisA prepared (good='good') and BTAD (good='ok')."""
    base = os.path.join(root, name)
    if not os.path.isdir(base):
        raise _unknown(root, name, "mvtec")
    train_dir = os.path.join(base, "train", good)
    test_dir = os.path.join(base, "test")
    _require_dir(train_dir, f"category {name!r} lacks its training folder")
    _require_dir(test_dir, f"category {name!r} lacks its test folder")
    train = [Sample(os.path.join(train_dir, f), 0, "good", f"train/{good}/{f}")
             for f in images_in(train_dir)]
    if not train:
        raise ValueError(f"category {name!r} has no training images in {train_dir!r}")
    test = []
    for defect in sorted(os.listdir(test_dir)):
        folder = os.path.join(test_dir, defect)
        if not os.path.isdir(folder):
            continue
        for f in images_in(folder):
            mask = None
            if defect != good:
                stem = os.path.splitext(f)[0]
                mask = find_mask(os.path.join(base, "ground_truth", defect), stem)
                if mask is None:
                    raise FileNotFoundError(
                        f"the mask of test image test/{defect}/{f} is missing: expected "
                        f"ground_truth/{defect}/{stem}_mask.png (or {stem}.png) in {base!r}")
            test.append(Sample(os.path.join(folder, f), int(defect != good),
                               "good" if defect == good else defect, f"test/{defect}/{f}", mask))
    if not test:
        raise ValueError(f"category {name!r} has no test images in {test_dir!r}")
    return Category(name, train, test)


def load_visa_raw(root: str, name: str) -> Category:
    """VisA in its published layout, split by `split_csv/1cls.csv`."""
    split_csv = os.path.join(root, "split_csv", "1cls.csv")
    if not os.path.isdir(os.path.join(root, name)):
        raise _unknown(root, name, "visa_raw")
    _refuse_irregular(split_csv, f"VisA split file {split_csv!r}")
    if not os.path.isfile(split_csv):
        raise FileNotFoundError(f"VisA split file {split_csv!r} does not exist; the raw layout "
                                "needs <root>/split_csv/1cls.csv")
    train, test = [], []
    with open(split_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["object"] != name:
                continue
            path = os.path.join(root, row["image"])
            _refuse_irregular(path, f"image {path!r} listed in {split_csv!r}")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"image {path!r} listed in {split_csv!r} does not exist")
            anomalous = row["label"] == "anomaly"
            mask = os.path.join(root, row["mask"]) if anomalous and row.get("mask") else None
            if anomalous and mask is not None:
                _refuse_irregular(mask, f"the mask {mask!r} of {row['image']!r}")
            if anomalous and (mask is None or not os.path.isfile(mask)):
                raise FileNotFoundError(f"the mask of {row['image']!r} is missing "
                                        f"({row.get('mask') or 'no mask column'})")
            s = Sample(path, int(anomalous), "bad" if anomalous else "good",
                       f"{row['split']}/{'bad' if anomalous else 'good'}/"
                       f"{os.path.basename(row['image'])}", mask)
            (train if row["split"] == "train" else test).append(s)
    if not train:
        raise ValueError(f"no training images of VisA category {name!r} in {split_csv!r}")
    train.sort(key=lambda s: s.name)  # name order, as every other reader
    test.sort(key=lambda s: s.name)
    return Category(name, train, test)


def load_own_folder(root: str, name: str, seed: int, train_fraction: float) -> Category:
    """A user's own parts: good/ (split into train and test by seed), defective/ (test only,
    optionally in per-type subfolders), optional masks/ mirroring defective/."""
    from softpatch_jax.data.noise import category_rng

    base = os.path.join(root, name)
    if not os.path.isdir(base):
        raise _unknown(root, name, "folder")
    good_dir, bad_dir = os.path.join(base, "good"), os.path.join(base, "defective")
    _require_dir(good_dir, f"category {name!r} lacks its folder of normal images")
    good = images_in(good_dir)
    if len(good) < 2:
        raise ValueError(f"category {name!r} needs at least 2 normal images in {good_dir!r}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"data.train_fraction={train_fraction} must lie in (0, 1)")
    order = category_rng(seed, name, "split").permutation(len(good))
    n_train = min(len(good) - 1, max(1, int(round(train_fraction * len(good)))))
    train = [Sample(os.path.join(good_dir, good[i]), 0, "good", f"good/{good[i]}")
             for i in sorted(order[:n_train])]
    test = [Sample(os.path.join(good_dir, good[i]), 0, "good", f"good/{good[i]}")
            for i in sorted(order[n_train:])]
    mask_root = os.path.join(base, "masks")
    if os.path.isdir(bad_dir):
        groups = [("defective", bad_dir)] + [
            (t, os.path.join(bad_dir, t)) for t in sorted(os.listdir(bad_dir))
            if os.path.isdir(os.path.join(bad_dir, t))]
        for defect, folder in groups:
            rel = "" if folder == bad_dir else defect
            for f in images_in(folder):
                mask = None
                if os.path.isdir(mask_root):
                    mask = find_mask(os.path.join(mask_root, rel), os.path.splitext(f)[0])
                test.append(Sample(os.path.join(folder, f), 1, defect,
                                   "/".join(p for p in ("defective", rel, f) if p), mask))
    return Category(name, train, test)
