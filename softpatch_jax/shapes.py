"""Input sizes and where an image lands on the input canvas.

`data.image_size` is N (an N x N input, as 0.2 had it) or (height, width); `data.tile` is 0 (no
tiling) or a tile size of the same form. `data.resize` R > 0: the image's shorter side is resized
to R (bilinear, aspect kept) and the canvas cut from its centre, as torchvision's Resize +
CenterCrop do; R = 0 ("fit"): the whole image is resized, aspect kept, to fit the canvas and the
rest of the canvas is filled by replicating its edge, so no part of the image is cut away.
`placement` says where the image's pixels lie on the canvas in either case; maps are cut back to
that box so they keep each image's aspect ratio.
"""
import dataclasses
from typing import Sequence, Tuple, Union

Size = Union[int, Sequence[int]]


def hw(size: Size) -> Tuple[int, int]:
    """N or (height, width) -> (height, width); ValueError for anything else."""
    if isinstance(size, bool):
        raise ValueError(f"a size is N or (height, width), got {size!r}")
    if isinstance(size, int):
        return size, size
    try:
        h, w = size
        if isinstance(h, bool) or isinstance(w, bool) or int(h) != h or int(w) != w:
            raise TypeError
        return int(h), int(w)
    except (TypeError, ValueError):
        raise ValueError(f"a size is N or (height, width) in pixels, got {size!r}") from None


def canonical(size: Size):
    """N for a square size, else [height, width] (as JSON stores it)."""
    h, w = hw(size)
    return h if h == w else [h, w]


def describe(size: Size) -> str:
    """'224' or '640x256' (height x width)."""
    h, w = hw(size)
    return str(h) if h == w else f"{h}x{w}"


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where an image of (width, height) goes on a canvas: resized to `resized` (width, height),
    then cut at (`cut_left`, `cut_top`) to the canvas (resize > 0) or pasted into it (fit) so
    that its pixels cover `box`, (top, left, height, width) on the canvas."""
    resized: Tuple[int, int]
    cut_left: int
    cut_top: int
    box: Tuple[int, int, int, int]


def placement(width: int, height: int, resize: int, size: Size) -> Placement:
    """Geometry of `preprocess` for one image (see the module docstring). Raises ValueError
    naming data.image_size when the canvas does not fit inside the resized image."""
    ch, cw = hw(size)
    if resize > 0:
        # torchvision's Resize(int): the shorter side to `resize`, the other truncated
        if width <= height:
            resized = (resize, int(resize * height / width))
        else:
            resized = (int(resize * width / height), resize)
        rw, rh = resized
        if ch > rh or cw > rw:
            raise ValueError(f"data.image_size={describe(size)} is larger than the resized image "
                             f"{rh}x{rw} (height x width); lower data.image_size, raise "
                             "data.resize, or set data.resize=0 to fit the whole image")
        top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
        return Placement(resized, left, top, (0, 0, ch, cw))
    scale = min(ch / height, cw / width)
    rw = min(cw, max(1, int(round(width * scale))))
    rh = min(ch, max(1, int(round(height * scale))))
    top, left = (ch - rh) // 2, (cw - rw) // 2
    return Placement((rw, rh), 0, 0, (top, left, rh, rw))


def tiles(size: Size, tile: Size) -> Tuple[int, int]:
    """(rows, columns) of tiles of `tile` on a canvas of `size`; tile 0: (1, 1). ValueError
    naming data.tile when the tiles do not cover the canvas exactly."""
    if tile == 0:
        return 1, 1
    (h, w), (th, tw) = hw(size), hw(tile)
    if th < 1 or tw < 1 or h % th or w % tw:
        raise ValueError(f"data.tile={describe(tile)} must divide data.image_size="
                         f"{describe(size)} exactly (height and width); choose a divisor or 0")
    return h // th, w // tw
