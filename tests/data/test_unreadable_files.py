"""Files as users have them (issue 24): one policy for fit and predict. A file that exists but
cannot be read as an image (empty, truncated, not an image, a mask of another size) is left out,
named in one warning and listed; a path that does not exist stays an error; what a folder scan
finds that is no regular file (a link loop, a FIFO) is skipped; nothing hangs."""
import io
import logging
import os
import time

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from softpatch_jax import data
from softpatch_jax.data import mvtec, preprocess, synthetic
from softpatch_jax.pipeline import evaluate, predict, validation


def _png_bytes(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1] + (3,), 120, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(size=(64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size[::-1] + (3,), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("content, why", [
    (b"", "the file is empty"),
    (b"no image here, just text", "not an image format PIL reads"),
    (_png_bytes()[:-40], "truncated"),           # the last IDAT bytes and IEND gone
    (_jpeg_bytes()[:len(_jpeg_bytes()) // 2], "truncated"),
])
def test_check_image_names_the_file_and_the_reason(tmp_path, content, why):
    path = tmp_path / "part 7, é.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=why) as e:
        preprocess.check_image(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_check_image_accepts_what_load_image_reads(tmp_path):
    jpeg_named_png = tmp_path / "photo.png"  # a wrong extension: PIL reads the content
    jpeg_named_png.write_bytes(_jpeg_bytes())
    assert preprocess.check_image(str(jpeg_named_png)) == (64, 48)
    trailing = tmp_path / "trailing.jpg"  # bytes after the end marker, as some cameras write
    trailing.write_bytes(_jpeg_bytes() + b"\x00extra")
    assert preprocess.check_image(str(trailing)) == (64, 48)
    assert preprocess.load_image(str(trailing), 32, 32).shape == (32, 32, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        preprocess.check_image(str(tmp_path / "missing.png"))


def _damage(root, name="w"):
    """A category with a zero-byte and a truncated training image, a text file named like a test
    image, a defective image whose mask has another size, a PNG named .jpg and an empty defect
    folder. -> the names expected to be left out."""
    base = synthetic.make_mvtec_category(str(root), name, n_train=10, n_good=3, n_defect=3,
                                         size=32)
    train = os.path.join(base, "train", "good")
    open(os.path.join(train, "001.png"), "wb").close()
    with open(os.path.join(train, "004.png"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) - 40)
    with open(os.path.join(base, "test", "good", "000.png"), "w") as f:
        f.write("not an image")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(
        os.path.join(base, "ground_truth", "blob", "002_mask.png"))
    os.rename(os.path.join(train, "007.png"), os.path.join(train, "007.jpg"))
    os.makedirs(os.path.join(base, "test", "scratch"))  # an empty class folder
    return ["test/blob/002.png", "test/good/000.png", "train/good/001.png", "train/good/004.png"]


def test_unreadable_files_are_left_out_and_listed(tmp_path):
    expected = _damage(tmp_path)
    category = mvtec.load_category(str(tmp_path), "w")
    kept, left_out = data.leave_out_unreadable(category)
    assert [name for name, _ in left_out] == expected
    reasons = dict(left_out)
    assert "the file is empty" in reasons["train/good/001.png"]
    assert "truncated" in reasons["train/good/004.png"]
    assert "not an image format" in reasons["test/good/000.png"]
    assert "16x16 but its image is 32x32" in reasons["test/blob/002.png"]
    assert len(kept.train) == 8 and "train/good/007.jpg" in [s.name for s in kept.train]
    assert len(kept.test) == len(category.test) - 2
    assert not {s.name for s in kept.train + kept.test} & set(expected)


def _config(root, ratio=0.2):
    return ConfigDict(dict(
        seed=3, data=dict(name="mvtec", root=str(root), category="w", source="folder",
                          train_fraction=0.8, max_train=0, max_test=0),
        noise=dict(ratio=ratio, mode="no_overlap", overlap=False, files="", fold=0)))


def test_the_noise_is_drawn_as_if_the_unreadable_files_were_never_there(tmp_path):
    expected = _damage(tmp_path / "damaged")
    synthetic.make_mvtec_category(str(tmp_path / "clean"), "w", n_train=10, n_good=3,
                                  n_defect=3, size=32)
    clean = tmp_path / "clean" / "w"
    for name in expected:  # the clean twin simply lacks them
        os.remove(clean / name)
    os.remove(clean / "ground_truth" / "blob" / "002_mask.png")
    os.rename(clean / "train" / "good" / "007.png", clean / "train" / "good" / "007.jpg")
    damaged = evaluate.prepare_split(_config(tmp_path / "damaged"), "w")
    reference = evaluate.prepare_split(_config(tmp_path / "clean"), "w")
    names = lambda samples: [s.name for s in samples]  # noqa: E731
    assert damaged.injected and names(damaged.injected) == names(reference.injected)
    assert names(damaged.train) == names(reference.train)
    assert names(damaged.test) == names(reference.test)
    assert [n for n, _ in damaged.left_out] == expected and reference.left_out == ()
    assert damaged.check_seconds > 0


def test_one_warning_names_the_files_and_the_run_refuses_when_no_training_image_reads(
        tmp_path, caplog):
    _damage(tmp_path)
    split = evaluate.prepare_split(_config(tmp_path, ratio=0.0), "w")
    with caplog.at_level(logging.WARNING):
        validation.check_split(split, "w")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "4 file(s) cannot be read and are left out" in warnings[0]
    assert "unreadable.txt" in warnings[0] and "test/blob/002.png" in warnings[0]
    train = tmp_path / "w" / "train" / "good"
    for f in train.iterdir():
        f.write_bytes(b"")
    with pytest.raises(ValueError, match="none of the training images of category 'w' can be "
                                         "read .*the file is empty"):
        evaluate.prepare_split(_config(tmp_path), "w")


def test_a_named_missing_path_stays_an_error(tmp_path):
    base = synthetic.make_mvtec_category(str(tmp_path), "w", n_train=3, n_good=1, n_defect=1,
                                         size=16)
    os.remove(os.path.join(base, "ground_truth", "blob", "000_mask.png"))
    with pytest.raises(FileNotFoundError, match="mask of test image test/blob/000.png is missing"):
        evaluate.prepare_split(_config(tmp_path), "w")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict.expand_images([str(tmp_path / "nope.png")])


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this system")
def test_symbolic_link_loops_end_and_are_skipped(tmp_path, caplog):
    folder = tmp_path / "lot 7"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png_bytes())
    os.symlink("loop.png", folder / "loop.png")        # a link to itself
    os.symlink("gone.png", folder / "dangling.png")    # a broken link
    os.symlink(".", folder / "again")                  # a folder loop
    os.symlink("..", folder / "up")
    start = time.time()
    with caplog.at_level(logging.WARNING):
        walked = predict.expand_images([str(folder)])
        globbed = predict.expand_images([str(folder / "**" / "*.png")])
        listed = mvtec.images_in(str(folder))
    assert time.time() - start < 10
    assert walked == [str(folder / "a.png")]
    assert str(folder / "a.png") in globbed and all(os.path.isfile(p) for p in globbed)
    assert listed == ["a.png"]
    skipped = [r.getMessage() for r in caplog.records if "not regular files" in r.getMessage()]
    assert skipped and all("loop.png" in m and "dangling.png" in m for m in skipped[:1])


def test_predict_leaves_out_what_the_fit_would_leave_out(tmp_path):
    good = tmp_path / "good, \"quoted\" <b>.png"
    good.write_bytes(_png_bytes((40, 70)))
    empty, truncated = tmp_path / "empty.png", tmp_path / "cut.jpg"
    empty.write_bytes(b"")
    truncated.write_bytes(_jpeg_bytes()[:300])
    paths, unreadable = predict.readable([str(good), str(empty), str(truncated)])
    assert paths == [str(good)]
    assert [p for p, _ in unreadable] == [str(empty), str(truncated)]
    assert "the file is empty" in unreadable[0][1] and "runcated" in unreadable[1][1]
    for (path, why) in unreadable:  # the fit's check gives the same verdict
        assert why in preprocess.sample_problem(data.Sample(path, 0, "good", "x.png"))


def test_images_flag_keeps_names_that_hold_commas(tmp_path):
    folder = tmp_path / "lot 7, line 2"
    folder.mkdir()
    (folder / "a, b.png").write_bytes(_png_bytes())
    (tmp_path / "c.png").write_bytes(_png_bytes())
    flag = f"{folder},{folder / 'a, b.png'}, {tmp_path / 'c.png'},{tmp_path / 'nope.png'}"
    assert predict.split_images(flag) == [str(folder), str(folder / "a, b.png"),
                                          str(tmp_path / "c.png"), str(tmp_path / "nope.png")]
    assert predict.split_images("a.png,dir/") == ["a.png", "dir/"]
    assert predict.split_images("") == []
