"""What a dataset reader yields: one category's clean training and test samples, by file."""
import dataclasses
from typing import List, Optional, Tuple


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


@dataclasses.dataclass(frozen=True)
class Category:
    name: str
    train: List[Sample]       # clean (normal) training images
    test: List[Sample]        # normal and anomalous test images

    @property
    def anomalous_test(self) -> List[Sample]:
        return [s for s in self.test if s.label == 1]
