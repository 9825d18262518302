"""Property tests of the image and mask readers (issue 24): over random bytes, modes, bit depths,
sizes and damage, every reader either returns what its docstring promises or raises one
ValueError naming the file: never another exception, never a hang (hypothesis' deadline)."""
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from softpatch_jax.data import preprocess

# format -> modes PIL writes in it (the modes users' cameras and tools produce)
WRITABLE = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
            "JPEG": ("L", "RGB", "CMYK"),
            "BMP": ("1", "L", "P", "RGB"),
            "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
            "GIF": ("L", "P")}
SETTINGS = settings(max_examples=100, deadline=5000, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def encoded_images(draw):
    """-> (format, mode, (width, height), encoded bytes) of a random image."""
    fmt = draw(st.sampled_from(sorted(WRITABLE)))
    mode = draw(st.sampled_from(WRITABLE[fmt]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    if mode in ("I;16", "I"):
        hi = 65535 if mode == "I;16" else 2 ** 20
        img = Image.fromarray(rng.integers(0, hi, (h, w)).astype(np.int32)).convert("I")
        if mode == "I;16":
            img = Image.frombytes("I;16", (w, h), rng.integers(0, hi, (h, w))
                                  .astype("<u2").tobytes())
    elif mode == "F":
        img = Image.fromarray(rng.uniform(-0.5, 2.0, (h, w)).astype(np.float32))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return fmt, mode, (w, h), buf.getvalue()


def _only_value_errors(fn):
    """fn() -> its result, or None when it raised ValueError naming the file; any other
    exception fails the test."""
    try:
        return fn()
    except ValueError as e:
        assert "cannot read image 'x.img'" in str(e) or "'x.img'" in str(e), str(e)
        assert "\n" not in str(e)
        return None


@SETTINGS
@given(encoded_images(), st.integers(4, 40), st.data())
def test_every_readable_image_reads_to_the_promised_shapes(image, resize, draw):
    fmt, mode, size, data = image
    crop = draw.draw(st.integers(1, resize))
    assert preprocess.check_image("x.img", data) == size
    img = preprocess.load_image("x.img", resize, crop, data=data)
    assert img.shape == (crop, crop, 3) and img.dtype == np.float32 and np.isfinite(img).all()
    pixels = img * preprocess.IMAGENET_STD + preprocess.IMAGENET_MEAN
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    mask = preprocess.load_mask("x.img", resize, crop, data=data)
    assert mask.shape == (crop, crop) and mask.dtype == bool


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes_never_escape_as_anything_but_one_line(data):
    for read in (lambda: preprocess.check_image("x.img", data),
                 lambda: preprocess.load_image("x.img", 16, 16, data=data),
                 lambda: preprocess.load_mask("x.img", 16, 16, data=data)):
        _only_value_errors(read)


@SETTINGS
@given(encoded_images(), st.data())
def test_damaged_files_are_refused_or_read_whole(image, draw):
    """Truncated anywhere, or bytes overwritten anywhere: the check refuses the file, or the
    file reads (whatever `check_image` accepts, `load_image` reads too)."""
    fmt, mode, size, data = image
    cut = draw.draw(st.integers(0, len(data) - 1))
    damaged = [data[:cut]]
    at = draw.draw(st.integers(0, len(data) - 1))
    junk = draw.draw(st.binary(min_size=1, max_size=8))
    damaged.append(data[:at] + junk + data[at + len(junk):])
    for bad in damaged:
        checked = _only_value_errors(lambda: preprocess.check_image("x.img", bad))
        loaded = _only_value_errors(lambda: preprocess.load_image("x.img", 16, 16, data=bad))
        if checked is not None and fmt != "JPEG":
            # the check decoded the file whole: the load must read it too (a JPEG is checked
            # at 1/8 scale, whose decoder may tolerate what the full one refuses)
            assert loaded is not None, (fmt, mode, len(bad))
        if loaded is not None:
            assert loaded.shape == (16, 16, 3) and np.isfinite(loaded).all()


@pytest.mark.parametrize("mode", ["1", "L", "I;16", "F", "RGB"])
def test_masks_of_every_mode_mark_non_zero_pixels(mode):
    on = np.zeros((12, 12), bool)
    on[3:7, 5:9] = True
    if mode == "I;16":
        img = Image.frombytes("I;16", (12, 12), (on * 3).astype("<u2").tobytes())
    elif mode == "F":
        img = Image.fromarray(np.where(on, 0.5, 0.0).astype(np.float32))
    else:
        img = Image.fromarray((on * 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    mask = preprocess.load_mask("x.img", 12, 12, data=buf.getvalue())
    np.testing.assert_array_equal(mask, on)
