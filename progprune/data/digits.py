"""scikit-learn's digits: 1797 real 8x8 grey images, shipped inside scikit-learn.

The smallest real data set we have, for fast tests. It has no official split, so we fix
one: the first 1437 images train, the last 360 test (the 80/20 of sklearn's usual
examples, without shuffling, so every run sees the same split).
"""

from __future__ import annotations

import numpy as np

from progprune.data.dataset import ArrayDataset

NUM_TRAIN = 1437


def load_digits(split: str) -> ArrayDataset:
    """Loads one split of sklearn's digits as uint8 [N, 8, 8, 1] images.

    Pixel values 0..16 are scaled to 0..255 (rounded) so every data set shares one range.

    >>> load_digits("test").images.shape
    (360, 8, 8, 1)
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits: train, test")
    from sklearn.datasets import load_digits as sklearn_digits  # optional dependency

    raw = sklearn_digits()
    images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = raw.target.astype(np.int32)
    part = slice(None, NUM_TRAIN) if split == "train" else slice(NUM_TRAIN, None)
    return ArrayDataset(
        images=images[part],
        labels=labels[part],
        num_classes=10,
        name=f"digits/{split} (scikit-learn 8x8)",
    )
