"""tensorflow-datasets builders `mvtec_ad`, `visa` and `btad` (manual download, one builder config
per category), and the reader behind `data.source=tfds`.

Build once, read from any `data_dir` (a TPU VM's bucket, say):

    tfds build mvtec_ad --imports softpatch_jax.data.tfds_builders \
        --manual_dir /data/mvtec_ad --config transistor --data_dir ~/tensorflow_datasets

Each example holds the image as decoded by PIL in RGB (stored as lossless PNG), its mask (zeros when
the image has none), label, defect type and the sample name of the folder readers, so that reading
through TFDS gives arrays identical to reading the folders. Only this module imports TensorFlow
(through tensorflow-datasets): install the `tfds` extra to use it.
"""
import os
from typing import List

import numpy as np
import tensorflow_datasets as tfds

from softpatch_jax.data import mvtec, preprocess
from softpatch_jax.data.samples import Category, Sample

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper")
VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
                   "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")
BTAD_CATEGORIES = ("01", "02", "03")
CATEGORIES = {"mvtec": MVTEC_CATEGORIES, "visa": VISA_CATEGORIES, "btad": BTAD_CATEGORIES}

_FEATURES = dict(
    image=tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
    mask=tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
    has_mask=tfds.features.Scalar(dtype=np.bool_),
    label=tfds.features.ClassLabel(names=["normal", "anomalous"]),
    defect=tfds.features.Text(),
    name=tfds.features.Text(),
)


class _AnomalyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared logic: read a category with the folder reader, store every sample."""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(_FEATURES))

    def _read(self, root: str, category: str) -> Category:
        raise NotImplementedError  # each dataset names its layout

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        cat = self._read(root, self.builder_config.name)
        return {"train": self._generate_examples(cat.train), "test": self._generate_examples(cat.test)}

    def _generate_examples(self, samples: List[Sample]):
        for s in samples:
            # Read as the folder readers do (EXIF orientation, 16-bit scaling, masks non-zero).
            rgb = np.asarray(preprocess.open_image(s.path, "RGB"))
            if s.mask_path:
                mask = np.asarray(preprocess.open_image(s.mask_path, "mask"))[..., None]
            else:
                mask = np.zeros(rgb.shape[:2] + (1,), np.uint8)
            yield s.name, dict(image=rgb, mask=mask, has_mask=s.mask_path is not None,
                               label=s.label, defect=s.defect, name=s.name)


class MvtecAd(_AnomalyBuilder):
    """MVTec AD (Bergmann et al.): 15 categories of industrial images with pixel masks."""
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in MVTEC_CATEGORIES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download MVTec AD from the MVTec website (registration required), extract it and pass "
        "the folder holding the category folders (bottle/, cable/, ...) as --manual_dir.")

    def _read(self, root, category):
        return mvtec.load_category(root, category)


class Visa(_AnomalyBuilder):
    """VisA (Zou et al.): 12 categories, raw layout with split_csv/1cls.csv or prepared layout."""
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in VISA_CATEGORIES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download VisA_20220922.tar from the Amazon science repository, extract it and pass the "
        "folder holding split_csv/ and the category folders as --manual_dir (or a prepared "
        "train/good, test/{good,bad}, ground_truth/bad layout).")

    def _read(self, root, category):
        if os.path.isdir(os.path.join(root, "split_csv")):
            return mvtec.load_visa_raw(root, category)
        return mvtec.load_category(root, category)


class Btad(_AnomalyBuilder):
    """BTAD (Mishra et al.): 3 products, train/ok, test/{ok,ko}, ground_truth/ko."""
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in BTAD_CATEGORIES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download BTAD (BeanTech anomaly detection) and pass the folder holding 01/, 02/, 03/ "
        "as --manual_dir.")

    def _read(self, root, category):
        return mvtec.load_category(root, category, good="ok")


BUILDERS = {"mvtec": "mvtec_ad", "visa": "visa", "btad": "btad"}


def load_category(dataset: str, category: str, data_dir: str) -> Category:
    """Reads a built category: encoded images and masks are kept (not decoded) until a batch
    needs them."""
    if dataset not in BUILDERS:
        raise ValueError(f"data.source=tfds serves {', '.join(BUILDERS)}, not {dataset!r}")
    name = f"{BUILDERS[dataset]}/{category}"
    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name} is not built in data.tfds_dir={data_dir!r}; run: tfds build "
            f"{BUILDERS[dataset]} --imports softpatch_jax.data.tfds_builders --manual_dir DIR "
            f"--config {category}" + (f" --data_dir {data_dir}" if data_dir else ""))
    splits = {}
    decoders = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
        rows = []
        for ex in tfds.as_numpy(ds):
            sample_name = ex["name"].decode()
            rows.append(Sample(f"tfds:{name}/{sample_name}", int(ex["label"]),
                               ex["defect"].decode(), sample_name, None,
                               image_bytes=bytes(ex["image"]),
                               mask_bytes=bytes(ex["mask"]) if ex["has_mask"] else None))
        splits[split] = sorted(rows, key=lambda s: s.name)  # the folder readers' order
    return Category(category, splits["train"], splits["test"])

