"""Sizes and placement on the input canvas (shapes.py, data/preprocess.place and the export
loader's copy): the centre crop as torchvision cuts it, the fit mode that keeps every pixel and
the aspect ratio, masks alike, and the boxes that cut maps back to each image's shape."""
import numpy as np
import pytest
from PIL import Image

from softpatch_jax import shapes
from softpatch_jax.data import preprocess
from softpatch_jax.export import loader


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def test_sizes_take_n_or_height_and_width():
    assert shapes.hw(224) == (224, 224) and shapes.hw((640, 256)) == (640, 256)
    assert shapes.hw([640, 256]) == (640, 256)
    assert shapes.canonical((224, 224)) == 224 and shapes.canonical((640, 256)) == [640, 256]
    assert shapes.describe((640, 256)) == "640x256" and shapes.describe(224) == "224"
    for bad in ("224", (1, 2, 3), True, (2.5, 3), None):
        with pytest.raises(ValueError, match="N or \\(height, width\\)"):
            shapes.hw(bad)
    assert shapes.tiles((640, 256), 0) == (1, 1)
    assert shapes.tiles((640, 256), (160, 128)) == (4, 2)
    with pytest.raises(ValueError, match=r"^data.tile=100 must divide data.image_size=640x256"):
        shapes.tiles((640, 256), 100)


@pytest.mark.parametrize("w,h,crop", [(250, 630, 224), (630, 250, 224), (250, 630, (256, 200)),
                                      (300, 300, (240, 180))])
def test_the_centre_crop_is_torchvision_s(w, h, crop):
    """Resize(shorter side) + CenterCrop, written out: 0.2's square crop, and its (h, w) form."""
    img, resize = _image(w, h), 256
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    ch, cw = shapes.hw(crop)
    top, left = int(round((size[1] - ch) / 2.0)), int(round((size[0] - cw) / 2.0))
    ref = np.asarray(img.resize(size, Image.BILINEAR).crop((left, top, left + cw, top + ch)))
    np.testing.assert_array_equal(preprocess.place(img, resize, crop), ref)
    np.testing.assert_array_equal(loader._place(img, resize, crop), ref)
    assert shapes.placement(w, h, resize, crop).box == (0, 0, ch, cw)


def test_fit_keeps_every_pixel_and_the_aspect_ratio():
    """resize 0: a 50 x 100 (w x h) image on a 40 x 40 canvas is resized to 20 x 40 and padded
    10 columns each side with its own edge; on a 100 x 50 canvas it fills it exactly."""
    img = _image(50, 100, seed=1)
    out = preprocess.place(img, 0, 40)
    inner = np.asarray(img.resize((20, 40), Image.BILINEAR))
    np.testing.assert_array_equal(out[:, 10:30], inner)
    np.testing.assert_array_equal(out[:, :10], np.repeat(inner[:, :1], 10, axis=1))
    np.testing.assert_array_equal(out[:, 30:], np.repeat(inner[:, -1:], 10, axis=1))
    assert shapes.placement(50, 100, 0, 40).box == (0, 10, 40, 20)
    np.testing.assert_array_equal(loader._place(img, 0, 40), out)
    full = preprocess.place(img, 0, (100, 50))
    np.testing.assert_array_equal(full, np.asarray(img))
    assert shapes.placement(50, 100, 0, (100, 50)).box == (0, 0, 100, 50)
    # heights varying by a few pixels (KolektorSDD): each fitted whole, aspect within a pixel
    for h in (617, 630, 642):
        top, left, bh, bw = shapes.placement(250, h, 0, (640, 256)).box
        assert bh <= 640 and bw <= 256 and (bh == 640 or bw == 256)
        assert abs(bw / bh - 250 / h) < 2.0 / bh


def test_fitted_masks_keep_the_defect_and_pad_with_none(tmp_path):
    """A defect at the very top of a tall image survives the fit (a centre square crop cuts it
    away), and the padding holds no defect."""
    mask = np.zeros((120, 40), np.uint8)
    mask[:10, 15:25] = 255
    path = str(tmp_path / "mask.png")
    Image.fromarray(mask).save(path)
    Image.fromarray(np.zeros((120, 40, 3), np.uint8)).save(str(tmp_path / "img.png"))
    fitted = preprocess.load_mask(path, 0, (60, 40), str(tmp_path / "img.png"))
    assert fitted.shape == (60, 40)
    top, left, bh, bw = shapes.placement(40, 120, 0, (60, 40)).box
    assert (top, left, bh, bw) == (0, 10, 60, 20)
    assert fitted[:5].any() and not fitted[:, :left].any() and not fitted[:, left + bw:].any()
    cropped = preprocess.load_mask(path, 40, 40, str(tmp_path / "img.png"))
    assert not cropped.any()  # the square crop never sees it


def test_canvas_boxes_of_paths_arrays_and_samples(tmp_path):
    path = str(tmp_path / "tall.png")
    _image(48, 161).save(path)
    box = shapes.placement(48, 161, 0, (160, 48)).box
    assert preprocess.canvas_box(path, 0, (160, 48)) == box
    assert preprocess.canvas_box(np.zeros((161, 48, 3), np.uint8), 0, (160, 48)) == box
    assert preprocess.canvas_box(path, 64, 48) == (0, 0, 48, 48)
    assert box[2] / box[3] == pytest.approx(161 / 48, rel=0.03)
