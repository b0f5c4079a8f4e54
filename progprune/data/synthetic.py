"""Synthetic images: NOT a real data set; for shape, speed and smoke tests only.

Each class has a fixed random template and every image is its class's template blended
with noise, so a model can learn it (a smoke test can see the loss fall) but nothing
learnt here says anything about real data. The name of every synthetic ArrayDataset
starts with "synthetic" and says so.
"""

from __future__ import annotations

import numpy as np

from progprune.data.dataset import ArrayDataset

# Sizes `load("synthetic", split)` uses; call `synthetic` directly for other shapes.
DEFAULT_SHAPE = (32, 32, 3)
DEFAULT_SIZES = {"train": 1024, "test": 256}


def synthetic(
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    num_classes: int = 10,
    n: int = 1024,
    seed: int = 0,
) -> ArrayDataset:
    """Generates `n` synthetic uint8 images of `shape` in `num_classes` classes.

    The class templates depend on `shape` and `num_classes` only (not on `seed`), so a
    train and a test set made with different seeds share the same classes.

    >>> ds = synthetic((8, 8, 1), num_classes=3, n=5, seed=0)
    >>> ds.images.shape, ds.name
    ((5, 8, 8, 1), 'synthetic 8x8x1, 3 classes (random; not a real data set)')
    """
    if len(shape) != 3 or min(shape) < 1 or num_classes < 1 or n < 0:
        raise ValueError(
            f"need shape (H, W, C), num_classes >= 1, n >= 0; got {shape}, {num_classes}, {n}"
        )
    templates = np.random.default_rng(0).integers(0, 256, (num_classes, *shape), np.uint8)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    noise = rng.integers(0, 256, (n, *shape), np.uint8)
    # Half template, half noise; halving each first keeps the sum in uint8 (<= 254), so
    # 50k CIFAR-sized images need no float copy.
    images = templates[labels] // 2 + noise // 2
    h, w, c = shape
    return ArrayDataset(
        images=images,
        labels=labels,
        num_classes=num_classes,
        name=f"synthetic {h}x{w}x{c}, {num_classes} classes (random; not a real data set)",
    )
