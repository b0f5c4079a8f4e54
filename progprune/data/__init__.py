"""progprune.data: data sets in host memory and a device-resident input pipeline.

Loading (host, numpy):
  `load(name, split, data_dir=None, source="auto")` -> ArrayDataset for the names in
  DATASET_NAMES: mnist and fashion_mnist (IDX files or tfds), cifar10 and cifar100
  (tfds, read without TensorFlow), digits (scikit-learn) and synthetic (random images,
  named as such). `python -m progprune.data prepare NAME --data_dir D` downloads a tfds
  data set once; `python -m progprune.data info` shows what is found locally.

Pipeline (device, jittable, used inside the train step):
  `batch_indices`, `gather`, `preprocess`, `steps_per_epoch`, `stats`, `default_augment`.
"""

from progprune.data.dataset import ArrayDataset
from progprune.data.digits import load_digits
from progprune.data.idx import read_idx, write_idx
from progprune.data.pipeline import (
    batch_indices,
    default_augment,
    epoch_permutation,
    gather,
    preprocess,
    stats,
    steps_per_epoch,
)
from progprune.data.sources import DATASET_NAMES, SPLITS, describe, load
from progprune.data.synthetic import synthetic
from progprune.data.tfds_source import prepare, prepare_command

__all__ = [
    "DATASET_NAMES",
    "SPLITS",
    "ArrayDataset",
    "batch_indices",
    "default_augment",
    "describe",
    "epoch_permutation",
    "gather",
    "load",
    "load_digits",
    "prepare",
    "prepare_command",
    "preprocess",
    "read_idx",
    "stats",
    "steps_per_epoch",
    "synthetic",
    "write_idx",
]
