"""The in-memory data set type every loader returns."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """One split of an image-classification data set, held in host memory.

    Attributes:
      images: uint8 array [N, H, W, C] (channels last, also for grey images).
      labels: int32 array [N], each in [0, num_classes).
      num_classes: number of classes.
      name: what the data is, e.g. "fashion_mnist/train (IDX: /usr/share/...)" or
        "synthetic 32x32x3 (random, not a real data set)": printed in logs and summaries.

    >>> import numpy as np
    >>> ds = ArrayDataset(np.zeros((2, 8, 8, 1), np.uint8), np.array([0, 1], np.int32), 2, "toy")
    >>> len(ds), ds.image_shape
    (2, (8, 8, 1))
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"{self.name}: images must be uint8 [N, H, W, C], got "
                f"{self.images.dtype} {self.images.shape}; convert with .astype(np.uint8), and "
                "give grey images a trailing channel axis of 1 (images[..., None])"
            )
        if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"{self.name}: labels must be int32 [{self.images.shape[0]}], got "
                f"{self.labels.dtype} {self.labels.shape}; pass one label per image, converted "
                "with .astype(np.int32)"
            )
        if self.labels.size and not 0 <= self.labels.min() <= self.labels.max() < self.num_classes:
            raise ValueError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), got "
                f"[{self.labels.min()}, {self.labels.max()}]; remap the labels to 0..K-1 or "
                "raise num_classes"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.images.shape[1:])
