"""Readers, preprocessing and the noisy-data protocol on generated data."""
import os

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from softpatch_jax import data
from softpatch_jax.data import elpv, mvtec, noise, preprocess, synthetic


def test_mvtec_reader_counts_and_masks(mvtec_root):
    cat = mvtec.load_category(mvtec_root, "widget")
    assert len(cat.train) == 12 and len(cat.test) == 12 and any(s.has_mask for s in cat.test)
    assert {s.defect for s in cat.test} == {"good", "blob", "scratch"}
    assert all((s.mask_path is None) == (s.label == 0) for s in cat.test)
    assert cat.test[0].name.startswith("test/")


def test_category_selection(mvtec_root):
    assert data.category_names("mvtec", mvtec_root, "all") == ["widget"]
    assert data.category_names("mvtec", mvtec_root, "widget") == ["widget"]
    with pytest.raises(ValueError, match="unknown category bolt.*available: widget"):
        data.category_names("mvtec", mvtec_root, "widget,bolt")
    with pytest.raises(FileNotFoundError, match="does not exist; set data.root"):
        data.category_names("mvtec", mvtec_root + "/missing", "all")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.category_names("kitti", mvtec_root, "all")
    with pytest.raises(ValueError, match="data.source=tfds serves mvtec, visa, btad, not "
                                         "data.name='elpv'"):
        data.category_names("elpv", "", "all", source="tfds")


def test_a_registered_reader_is_chosen_by_name_everywhere(mvtec_root, monkeypatch):
    """A dataset is one `data.register(Reader(...))`: names, category selection, loading and
    the config check take it with no other change."""
    from softpatch_jax.pipeline import validation
    from conftest import load_config

    def load(d, category, seed):  # the widget's images, under another layout's name
        cat = mvtec.load_category(d.root, "widget")
        return data.Category(category, cat.train[:3], cat.test)
    monkeypatch.setitem(data._READERS, "toy", data.Reader("toy", lambda root: ["part"], load))
    assert "toy" in data.names() and data.get("toy").name == "toy"
    assert data.category_names("toy", mvtec_root, "all") == ["part"]
    cat = data.load_category(ConfigDict(dict(name="toy", root=mvtec_root)), "part", 0)
    assert cat.name == "part" and len(cat.train) == 3
    c = load_config("default.py")
    c.data.name, c.data.root, c.data.category = "toy", mvtec_root, "part"
    validation.check_config(c)  # accepted: the reader's name is known
    c.data.name = "toy2"
    with pytest.raises(ValueError, match="data.name='toy2' is unknown; choose one of .*toy"):
        validation.check_config(c)


def test_missing_mask_is_named(tmp_path):
    base = synthetic.make_mvtec_category(str(tmp_path), "w", n_train=2, n_good=1, n_defect=1)
    (tmp_path / "w" / "ground_truth" / "blob" / "000_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="mask of test image test/blob/000.png is missing"):
        mvtec.load_category(str(tmp_path), "w")
    assert base


def test_preprocessing_resize_crop_normalise(tmp_path):
    img = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = preprocess.load_image(str(tmp_path / "a.png"), 256, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    # The same steps done by hand with PIL: shorter side 256, centre crop, ImageNet stats.
    ref = Image.fromarray(img).resize((341, 256), Image.BILINEAR)
    ref = np.asarray(ref.crop((58, 16, 282, 240)), np.float32) / 255.0
    ref = (ref - preprocess.IMAGENET_MEAN) / preprocess.IMAGENET_STD
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_grayscale_is_replicated_and_masks_threshold_at_one(tmp_path):
    g = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    Image.fromarray(g).save(tmp_path / "g.png")
    out = preprocess.load_image(str(tmp_path / "g.png"), 64, 64)
    np.testing.assert_allclose(out[..., 0] * preprocess.IMAGENET_STD[0] + preprocess.IMAGENET_MEAN[0],
                               out[..., 1] * preprocess.IMAGENET_STD[1] + preprocess.IMAGENET_MEAN[1],
                               atol=1e-6)
    m = np.zeros((64, 64), np.uint8)
    m[10:30, 10:30] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    mask = preprocess.load_mask(str(tmp_path / "m.png"), 32, 32)
    assert mask.dtype == bool and mask.shape == (32, 32)
    assert mask[8, 8] and not mask[4, 4] and not mask[15, 5]
    assert not preprocess.load_mask(None, 32, 32).any()


def test_bad_images_and_masks_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        preprocess.load_image(str(tmp_path / "bad.png"))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match=r"mask.png. is 32x32 but its image"):
        preprocess.load_mask(str(tmp_path / "mask.png"), 64, 64, str(tmp_path / "img.png"))


def test_batches_stream_in_order(tmp_path):
    paths = []
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    got = list(preprocess.batches(paths, 2, 8, 8))
    assert [s for s, _ in got] == [0, 2, 4] and [b.shape[0] for _, b in got] == [2, 2, 1]
    firsts = np.concatenate([b[:, 0, 0, 0] for _, b in got])
    assert np.all(np.diff(firsts) > 0)


def _category(mvtec_root):
    return mvtec.load_category(mvtec_root, "widget")


def test_noise_counts_overlap_and_reproducibility(mvtec_root):
    cat = _category(mvtec_root)
    a = noise.inject_noise(cat, 0.5, "no_overlap", seed=0)
    assert len(a.injected) == int(0.5 * 12) == 6
    assert len(a.train) == 18 and len(a.test) == 12 - 6
    assert not {s.name for s in a.injected} & {s.name for s in a.test}
    assert all(s.label == 1 for s in a.injected)
    b = noise.inject_noise(cat, 0.5, "overlap", seed=0)
    assert [s.name for s in b.injected] == [s.name for s in a.injected]  # same seed, same draw
    assert len(b.test) == 12 and {s.name for s in b.injected} <= {s.name for s in b.test}
    c = noise.inject_noise(cat, 0.5, "no_overlap", seed=1)
    assert [s.name for s in c.injected] != [s.name for s in a.injected]
    assert len(noise.inject_noise(cat, 0.0, "no_overlap", 0).injected) == 0


def test_noise_ratio_beyond_the_anomalies_is_an_error(mvtec_root):
    with pytest.raises(ValueError, match=r"noise.ratio=0.9 needs 10 anomalous images but "
                                         r"category 'widget' can give only 8.*overlap_repeat"):
        noise.inject_noise(_category(mvtec_root), 0.9, "overlap", 0)


def test_no_overlap_keeps_an_anomaly_to_test_and_its_suggestion_is_valid(mvtec_root):
    import re

    cat = _category(mvtec_root)  # 12 training images, 8 anomalies
    with pytest.raises(ValueError, match="can give only 7") as err:
        noise.inject_noise(cat, 8 / 12, "no_overlap", 0)  # would move every anomaly out
    ratio = float(re.search(r"at most ([0-9.]+)", str(err.value)).group(1))
    split = noise.inject_noise(cat, ratio, "no_overlap", 0)
    assert len(split.injected) == 7 and sum(s.label for s in split.test) == 1


def test_explicit_noise_files(mvtec_root):
    cat = _category(mvtec_root)
    split = noise.inject_noise(cat, 0.1, "no_overlap", 0, files=["test/blob/001.png"])
    assert [s.name for s in split.injected] == ["test/blob/001.png"]
    with pytest.raises(ValueError, match="not anomalous test images"):
        noise.inject_noise(cat, 0.1, "no_overlap", 0, files=["test/good/000.png"])


def test_subsample_is_seeded_and_stratified(mvtec_root):
    cat = _category(mvtec_root)
    a = noise.subsample(cat.test, 6, noise.category_rng(0, "widget", "test"), stratify=True)
    b = noise.subsample(cat.test, 6, noise.category_rng(0, "widget", "test"), stratify=True)
    assert [s.name for s in a] == [s.name for s in b]
    assert sum(s.label for s in a) == 4  # 8 of 12 anomalous -> 4 of 6
    assert noise.subsample(cat.test, 0, np.random.default_rng(0)) == cat.test


def test_elpv_split():
    pytest.importorskip("elpv_dataset", reason="elpv-dataset not installed")
    cat = elpv.load_category("", "mono", seed=0, train_fraction=0.5)
    normal_test = [s for s in cat.test if s.label == 0]
    assert len(cat.train) + len(normal_test) == 588 and len(cat.train) == 294
    assert sum(s.label for s in cat.test) == 313 and not any(s.has_mask for s in cat.test)
    assert not {s.name for s in cat.train} & {s.name for s in normal_test}
    again = elpv.load_category("", "mono", seed=0, train_fraction=0.5)
    assert [s.name for s in again.train] == [s.name for s in cat.train]
    assert elpv.list_categories("") == ["mono", "poly"]
    with pytest.raises(ValueError, match="unknown ELPV category"):
        elpv.load_category("", "cdte", seed=0)


@pytest.mark.parametrize("layout,dataset,good", [
    ("mvtec", "mvtec", "good"), ("visa_prepared", "visa", "good"), ("visa_raw", "visa", "good"),
    ("btad", "btad", "ok"), ("folder", "folder", "good")])
def test_every_layout_reads_the_same_data(tmp_path, layout, dataset, good):
    synthetic.make_category(str(tmp_path), layout, "part", n_train=6, n_good=3, n_defect=4,
                            defects=("blob",), size=32, seed=5)
    cfg = ConfigDict({"name": dataset, "root": str(tmp_path), "train_fraction": 6 / 9})
    assert data.category_names(dataset, str(tmp_path), "all") == ["part"]
    cat = data.load_category(cfg, "part", seed=0)
    counts = split_counts(cat)
    assert counts == {"train": 6, "test": 7, "anomalous": 4, "masks": 4}, counts
    for s in (s for s in cat.test if s.label == 1):  # 0/255 and 0/1 masks both binarise
        m = preprocess.load_mask(s.mask_path, 32, 32, s.path)
        assert m.any() and not m.all()


def test_layouts_give_identical_arrays(tmp_path):
    paths = {}
    for layout in ("mvtec", "btad", "visa_raw"):
        synthetic.make_category(str(tmp_path / layout), layout, "part", n_train=3, n_good=1,
                                n_defect=2, size=32, seed=9)
        name = {"mvtec": "mvtec", "btad": "btad", "visa_raw": "visa"}[layout]
        cat = data.load_category(ConfigDict({"name": name, "root": str(tmp_path / layout),
                                             "train_fraction": 0.5}), "part", 0)
        paths[layout] = cat
    ref = paths["mvtec"]
    for other in ("btad", "visa_raw"):
        cat = paths[other]
        for a, b in zip(ref.train, cat.train):
            np.testing.assert_array_equal(preprocess.load_image(a.path, 32, 32),
                                          preprocess.load_image(b.path, 32, 32))
        for a, b in zip([s for s in ref.test if s.label], [s for s in cat.test if s.label]):
            np.testing.assert_array_equal(preprocess.load_mask(a.mask_path, 32, 32),
                                          preprocess.load_mask(b.mask_path, 32, 32))


def test_overlap_repeat_repeats_only_when_needed(mvtec_root):
    cat = _category(mvtec_root)  # 12 train, 8 anomalous
    enough = noise.inject_noise(cat, 0.5, "overlap_repeat", seed=0)
    plain = noise.inject_noise(cat, 0.5, "overlap", seed=0)
    assert [s.name for s in enough.injected] == [s.name for s in plain.injected]
    assert all(s.augment is None for s in enough.injected)
    many = noise.inject_noise(cat, 1.5, "overlap_repeat", seed=0)  # 18 from 8
    assert len(many.injected) == 18 and len(many.test) == len(cat.test)
    first, repeats = many.injected[:8], many.injected[8:]
    assert sorted(s.name for s in first) == sorted(s.name for s in cat.anomalous_test)
    assert all(s.augment is not None for s in repeats) and all(s.augment is None for s in first)
    for angle, dx, dy in (s.augment for s in repeats):
        assert abs(angle) <= 3.0 and abs(dx) <= 0.03 and abs(dy) <= 0.03
    again = noise.inject_noise(cat, 1.5, "overlap_repeat", seed=0)
    assert [(s.name, s.augment) for s in again.injected] == [(s.name, s.augment) for s in many.injected]
    rows = noise.describe(many)
    assert len(rows) == 18 and "rotation_deg" in rows[-1] and "rotation_deg" not in rows[0]


def test_folds_are_independent_draws(mvtec_root):
    cat = _category(mvtec_root)
    a = noise.inject_noise(cat, 0.25, "no_overlap", seed=0, fold=0)
    b = noise.inject_noise(cat, 0.25, "no_overlap", seed=0, fold=1)
    assert [s.name for s in a.injected] != [s.name for s in b.injected]
    with pytest.raises(ValueError, match="noise.mode='sometimes' is unknown"):
        noise.inject_noise(cat, 0.25, "sometimes", seed=0)


def test_augmented_repeat_moves_the_image(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    img[20:40, 20:40] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    plain = preprocess.load_image(str(tmp_path / "a.png"), 64, 64)
    shifted = preprocess.load_image(str(tmp_path / "a.png"), 64, 64, (0.0, 3 / 64, 0.0))
    np.testing.assert_allclose(shifted[:, 23:43], plain[:, 20:40], atol=1e-5)


def test_real_transistor_counts():
    from conftest import MVTEC_ROOT
    if not os.path.isdir(os.path.join(MVTEC_ROOT, "transistor")):
        pytest.skip("MVTec transistor not present in ../shared/data")
    counts = split_counts(mvtec.load_category(MVTEC_ROOT, "transistor"))
    assert counts == {"train": 213, "test": 100, "anomalous": 40, "masks": 40}


def test_empty_and_missing_categories(tmp_path):
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    with pytest.raises(ValueError, match="no training images"):
        mvtec.load_category(str(tmp_path), "empty")
    (tmp_path / "half" / "train" / "good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="lacks its test folder"):
        mvtec.load_category(str(tmp_path), "half")


def split_counts(category) -> dict:
    """Counts a reader's output: train, test, anomalous test, masks."""
    labels = np.array([s.label for s in category.test])
    return {"train": len(category.train), "test": len(category.test),
            "anomalous": int(labels.sum()), "masks": sum(bool(s.mask_path) for s in category.test)}
