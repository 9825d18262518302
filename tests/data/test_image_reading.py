"""Images are read as people expect: 16-bit and float files at their scale, EXIF orientation
applied to images and masks, and special files (FIFOs, directories) never opened."""
import logging
import os
import threading

import numpy as np
import pytest
from PIL import Image

from softpatch_jax.data import elpv, mvtec, preprocess, synthetic

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


def _pixels(img: np.ndarray) -> np.ndarray:
    """load_image's output back in [0, 1]."""
    return img * preprocess.IMAGENET_STD + preprocess.IMAGENET_MEAN


def _gradient16(h: int = 48, w: int = 64) -> np.ndarray:
    """0..65535 across the image plus noise, so every 8-bit level boundary is crossed."""
    ramp = np.linspace(0, 65535, w)[None, :] * np.linspace(0.2, 1.0, h)[:, None]
    noise = np.random.default_rng(0).integers(0, 2000, (h, w))
    return np.clip(ramp + noise, 0, 65535).astype(np.uint16)


@pytest.mark.parametrize("ext,mode", [("png", "I;16"), ("tif", "I;16"), ("tif", "I;16B")])
def test_16bit_reads_like_its_8bit_scale(tmp_path, ext, mode):
    arr = _gradient16()
    p16, p8 = tmp_path / f"g16.{ext}", tmp_path / "g8.png"
    Image.frombytes(mode, arr.shape[::-1], arr.astype(">u2" if mode.endswith("B") else "<u2")
                    .tobytes()).save(p16)
    Image.fromarray(np.round(arr / 257).astype(np.uint8)).save(p8)
    assert Image.open(p16).mode.startswith("I")  # really stored wide
    a = _pixels(preprocess.load_image(str(p16), 48, 48))
    b = _pixels(preprocess.load_image(str(p8), 48, 48))
    assert np.abs(a - b).max() <= 1 / 255 + 1e-5
    assert a.std() > 0.1  # not the solid white of convert("RGB")


def test_16bit_scale_is_value_over_257_rounded(tmp_path):
    values = np.array([[0, 128, 129, 257, 385, 386, 32896, 65535]], np.uint16)
    Image.fromarray(np.repeat(values, 8, axis=0)).save(tmp_path / "v.png")
    got = np.round(_pixels(preprocess.load_image(str(tmp_path / "v.png"), 8, 8)) * 255)
    np.testing.assert_array_equal(got[0, :, 0], [0, 0, 1, 1, 1, 2, 128, 255])
    assert (got[..., 0] == got[..., 2]).all()  # grey replicated to RGB


def test_int32_tiff_is_read_as_16bit(tmp_path):
    values = np.array([[-7, 0, 257, 65535, 70000, 2 ** 31 - 1, 514, 1000]], np.int32)
    Image.fromarray(np.repeat(values, 8, axis=0)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    got = np.round(_pixels(preprocess.load_image(str(tmp_path / "i.tif"), 8, 8)) * 255)
    np.testing.assert_array_equal(got[0, :, 1], [0, 0, 1, 255, 255, 255, 2, 4])


def test_float_tiff_in_unit_range_reads_like_8bit(tmp_path):
    arr8 = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray((arr8 / 255.0).astype(np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(arr8).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    a = _pixels(preprocess.load_image(str(tmp_path / "f.tif"), 40, 40))
    b = _pixels(preprocess.load_image(str(tmp_path / "g8.png"), 40, 40))
    assert np.abs(a - b).max() <= 1 / 255 + 1e-5
    assert a.std() > 0.1


def test_float_tiff_above_one_is_0_to_255_clipped_nan_zero(tmp_path):
    values = np.array([[np.nan, -5.0, 0.4, 1.0, 127.6, 255.0, 300.0, np.inf]], np.float32)
    Image.fromarray(np.repeat(values, 8, axis=0)).save(tmp_path / "f.tif")
    got = np.round(_pixels(preprocess.load_image(str(tmp_path / "f.tif"), 8, 8)) * 255)
    np.testing.assert_array_equal(got[0, :, 0], [0, 0, 0, 1, 128, 255, 255, 255])


def _tagged(arr: np.ndarray, path, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif)


def test_exif_orientation_is_applied_to_image_and_mask(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)  # 64 wide, 40 high as stored
    mask = np.zeros((40, 64), np.uint8)
    mask[2:12, 40:60] = 255  # top right as stored
    _tagged(img, tmp_path / "img.png")
    _tagged(mask, tmp_path / "mask.png")
    # orientation 6: the viewer turns the stored pixels 90 degrees clockwise
    Image.fromarray(np.rot90(img, -1).copy()).save(tmp_path / "img_rot.png")
    Image.fromarray(np.rot90(mask, -1).copy()).save(tmp_path / "mask_rot.png")
    np.testing.assert_array_equal(preprocess.load_image(str(tmp_path / "img.png"), 40, 40),
                                  preprocess.load_image(str(tmp_path / "img_rot.png"), 40, 40))
    tagged = preprocess.load_mask(str(tmp_path / "mask.png"), 40, 40, str(tmp_path / "img.png"))
    upright = preprocess.load_mask(str(tmp_path / "mask_rot.png"), 40, 40,
                                   str(tmp_path / "img_rot.png"))
    assert upright.any() and not upright.all()
    np.testing.assert_array_equal(tagged, upright)
    # the size check compares upright sizes: a physically turned mask fits the tagged image ...
    np.testing.assert_array_equal(
        preprocess.load_mask(str(tmp_path / "mask_rot.png"), 40, 40, str(tmp_path / "img.png")),
        upright)
    # ... and the stored (untagged, 64x40) mask does not
    Image.fromarray(mask).save(tmp_path / "mask_flat.png")
    with pytest.raises(ValueError, match="is 64x40 but its image .* is 40x64"):
        preprocess.load_mask(str(tmp_path / "mask_flat.png"), 40, 40, str(tmp_path / "img.png"))


def test_16bit_mask_of_ones_marks_defects(tmp_path):
    mask = np.zeros((32, 32), np.uint16)
    mask[4:20, 8:24] = 1
    Image.fromarray(mask).save(tmp_path / "m16.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "m8.png")
    assert Image.open(tmp_path / "m16.png").mode == "I;16"
    got = preprocess.load_mask(str(tmp_path / "m16.png"), 32, 32)
    assert got.sum() == 16 * 16
    np.testing.assert_array_equal(got, preprocess.load_mask(str(tmp_path / "m8.png"), 32, 32))


def _within(seconds: float, fn):
    """fn() in a thread: its result or exception, failing (never hanging) after `seconds`."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: B036 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return t.is_alive(), out


@needs_fifo
def test_fifo_in_train_folder_is_skipped_and_never_opened(tmp_path, caplog):
    synthetic.make_mvtec_category(str(tmp_path), "w", n_train=3, n_good=1, n_defect=1)
    train = tmp_path / "w" / "train" / "good"
    fifo = train / "bad.png"
    os.mkfifo(fifo)
    (train / "y.png").mkdir()
    try:
        with caplog.at_level(logging.WARNING):
            names = mvtec.images_in(str(train))
        assert names == ["000.png", "001.png", "002.png"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "skipping 2" in warnings[0]
        assert "bad.png" in warnings[0] and "y.png" in warnings[0]
        assert len(mvtec.load_category(str(tmp_path), "w").train) == 3

        hung, out = _within(5.0, lambda: preprocess.load_image(str(fifo), 32, 32))
        assert not hung, "load_image blocked on a FIFO"
        assert isinstance(out.get("error"), ValueError), out
        assert "not a regular file (it is a FIFO)" in str(out["error"])
        assert "bad.png" in str(out["error"])
        hung, out = _within(5.0, lambda: preprocess.load_mask(str(fifo), 32, 32))
        assert not hung and isinstance(out.get("error"), ValueError), out
    finally:  # a blocked reader (the bug) is released by a writer, so the run can end
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    with pytest.raises(ValueError, match="not a regular file \\(it is a directory\\)"):
        preprocess.load_image(str(train / "y.png"), 32, 32)


@needs_fifo
def test_visa_raw_names_a_listed_special_file(tmp_path):
    synthetic.make_category(str(tmp_path), "visa_raw", "part", n_train=2, n_good=1, n_defect=1,
                            size=32, seed=0)
    images = tmp_path / "part" / "Data" / "Images" / "Normal"
    first = sorted(images.iterdir())[0]
    first.unlink()
    os.mkfifo(first)
    with pytest.raises(ValueError, match=f"{first.name}.* is not a regular file"):
        mvtec.load_visa_raw(str(tmp_path), "part")
    first.unlink()
    with pytest.raises(FileNotFoundError, match=f"{first.name}.* does not exist"):
        mvtec.load_visa_raw(str(tmp_path), "part")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(first)
    mask = tmp_path / "part" / "Data" / "Masks" / "Anomaly" / "000.png"
    mask.unlink()
    mask.mkdir()
    with pytest.raises(ValueError, match="mask .*000.png.* is not a regular file"):
        mvtec.load_visa_raw(str(tmp_path), "part")


@needs_fifo
def test_elpv_names_a_listed_special_file(tmp_path):
    (tmp_path / "images").mkdir()
    cells = [f"images/cell{i:04d}.png" for i in range(4)]
    for c in cells[:3]:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / c)
    os.mkfifo(tmp_path / cells[3])
    (tmp_path / "labels.csv").write_text(
        "".join(f"{c} {p} mono\n" for c, p in zip(cells, (0.0, 0.0, 1.0, 0.0))))
    with pytest.raises(ValueError, match="1 ELPV images .* not regular files: images/cell0003"):
        elpv.load_category(str(tmp_path), "mono", seed=0)
    os.unlink(tmp_path / cells[3])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / cells[3])
    assert len(elpv.load_category(str(tmp_path), "mono", seed=0).test) >= 1
