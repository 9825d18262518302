"""What a dataset reader yields: one category's clean training and test samples, by file."""
import dataclasses
import hashlib
import os
from typing import List, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Sample:
    path: str                 # image file
    label: int                # 0 normal, 1 anomalous
    defect: str               # 'good' or the defect type
    name: str                 # stable id, e.g. 'test/bent_lead/002.png'
    mask_path: Optional[str] = None  # ground-truth mask file; None = all zeros
    # (rotation degrees, x shift, y shift as fractions of the size) for augmented noise repeats
    augment: Optional[Tuple[float, float, float]] = None
    # Encoded image/mask bytes when the sample comes from a store (TFDS), not a file.
    image_bytes: Optional[bytes] = dataclasses.field(default=None, repr=False)
    mask_bytes: Optional[bytes] = dataclasses.field(default=None, repr=False)

    @property
    def has_mask(self) -> bool:
        return self.mask_path is not None or self.mask_bytes is not None

    def stamp(self, mask: bool = True) -> str:
        """What identifies this sample's content: its name, augmentation, and each file's path,
        size and modification time (or a hash of stored bytes); `mask=False` leaves the mask out.
        An image replaced in place changes the stamp, so nothing computed from the old one is
        reused."""
        parts = [self.name, repr(self.augment), _content(self.path, self.image_bytes)]
        if mask:
            parts.append(_content(self.mask_path, self.mask_bytes))
        return "|".join(parts)


def _content(path: Optional[str], data: Optional[bytes]) -> str:
    if data is not None:
        return "sha1:" + hashlib.sha1(data).hexdigest()
    if path is None:
        return "-"
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def item_stamp(item) -> str:
    """What identifies an image given as a Sample (its `stamp` without the mask), a path (the
    file's path, size and modification time) or an array (a hash of its shape, type and
    values): what a resumable step keys its state on."""
    if isinstance(item, Sample):
        return item.stamp(mask=False)
    if isinstance(item, str):
        return _content(item, None)
    a = np.ascontiguousarray(item)
    return _content(None, repr((a.shape, str(a.dtype))).encode() + a.tobytes())


@dataclasses.dataclass(frozen=True)
class Category:
    name: str
    train: List[Sample]       # clean (normal) training images
    test: List[Sample]        # normal and anomalous test images

    @property
    def anomalous_test(self) -> List[Sample]:
        return [s for s in self.test if s.label == 1]
