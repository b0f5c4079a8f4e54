"""`load(name, split)`: one entry point over IDX files, tfds, scikit-learn and synthetic data."""

from __future__ import annotations

import os

from progprune.data import idx, tfds_source
from progprune.data.dataset import ArrayDataset
from progprune.data.digits import load_digits
from progprune.data.synthetic import DEFAULT_SHAPE, DEFAULT_SIZES, synthetic

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100", "digits", "synthetic")
SPLITS = ("train", "test")
SOURCES = ("auto", "idx", "tfds")


def _check(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s: {', '.join(valid)}")


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
) -> ArrayDataset:
    """Loads split `split` of data set `name` into host memory.

    Where the data comes from, for source="auto":
      * mnist, fashion_mnist: IDX files (train-*/t10k-*, gzipped or not) in
        `data_dir/name` or `data_dir`; with no `data_dir`, Fashion-MNIST from Debian's
        package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist). Failing
        that, tfds as below.
      * mnist, fashion_mnist, cifar10, cifar100: array_record files prepared by tfds under
        `data_dir` (default $TFDS_DATA_DIR, else ~/tensorflow_datasets), read without
        TensorFlow. Missing files raise FileNotFoundError naming the directory and the
        `python -m progprune.data prepare ...` command; nothing is downloaded here.
      * digits: scikit-learn's 8x8 digits (first 1437 train, last 360 test).
      * synthetic: random CIFAR-shaped images, clearly named; see `synthetic()` for
        other shapes.
    source="idx" or "tfds" forces that source.

    Args:
      name: one of DATASET_NAMES.
      split: "train" or "test".
      data_dir: where to look (see above); None for the defaults.
      source: "auto", "idx" or "tfds".

    Returns:
      An ArrayDataset: images uint8 [N, H, W, C], labels int32 [N].

    >>> ds = load("fashion_mnist", "train")   # Debian's real Fashion-MNIST, < 1 s
    >>> ds.images.shape, ds.num_classes
    ((60000, 28, 28, 1), 10)
    """
    _check(name, DATASET_NAMES, "data set name")
    _check(split, SPLITS, "split")
    _check(source, SOURCES, "source")
    if name in ("digits", "synthetic"):
        if source != "auto":
            raise ValueError(f"{name!r} has no {source!r} source; use source='auto'")
        if name == "digits":
            return load_digits(split)
        return synthetic(DEFAULT_SHAPE, 10, DEFAULT_SIZES[split], seed=SPLITS.index(split))
    if source in ("auto", "idx") and name in idx.IDX_NAMES:
        directory = idx.find_idx_dir(name, split, data_dir)
        if directory is not None:
            return idx.load_idx(name, split, directory)
        if source == "idx":
            raise _missing_idx_error(name, split, data_dir)
    elif source == "idx":
        raise ValueError(f"IDX files hold only {', '.join(idx.IDX_NAMES)}; got {name!r}")
    if source == "auto" and tfds_source.find_prepared(name, split, data_dir) is None:
        raise _missing_any_error(name, split, data_dir)
    return tfds_source.load_tfds(name, split, data_dir)


def _looked_in(name: str, data_dir: str | os.PathLike | None) -> str:
    dirs = idx.idx_dirs(name, data_dir)
    return ", ".join(str(d) for d in dirs) if dirs else "(no directory: pass data_dir)"


def _missing_idx_error(
    name: str, split: str, data_dir: str | os.PathLike | None
) -> FileNotFoundError:
    return FileNotFoundError(
        f"no IDX files for {name!r} split {split!r}; looked in {_looked_in(name, data_dir)}. "
        f"Put {idx.expected_files(split)} in one of those directories (or pass the data_dir "
        "that holds them), or use source='auto' to fall back to tfds." + idx.debian_hint(name)
    )


def _missing_any_error(
    name: str, split: str, data_dir: str | os.PathLike | None
) -> FileNotFoundError:
    extra = ""
    if name in idx.IDX_NAMES:
        looked_in = _looked_in(name, data_dir)
        extra = f" No IDX files either (looked in {looked_in})." + idx.debian_hint(name)
    return tfds_source.missing_data_error(name, split, data_dir, extra)


def describe(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """Where `load(name, ...)` would read the training split from, or what is missing.

    >>> describe("digits")
    'scikit-learn (bundled)'
    """
    _check(name, DATASET_NAMES, "data set name")
    if name == "digits":
        return "scikit-learn (bundled)"
    if name == "synthetic":
        return "generated (random; not a real data set)"
    found = []
    if name in idx.IDX_NAMES and (d := idx.find_idx_dir(name, "train", data_dir)):
        found.append(f"IDX: {d}")
    if d := tfds_source.find_prepared(name, "train", data_dir):
        found.append(f"tfds: {d}")
    if found:
        return "; ".join(found)
    return f"missing: {tfds_source.prepare_command(name, data_dir)}"
