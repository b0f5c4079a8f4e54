"""tensorflow-datasets, read without TensorFlow: `tfds.data_source` over array_record files.

Reading needs tensorflow-datasets, array-record and pillow (to decode the PNG images);
TensorFlow is not imported. Building the array_record files once (`prepare`) goes through
tfds's own download-and-prepare, which does need TensorFlow and the internet.

Two facts shape this module. A tfds download with no network retries DNS for minutes
before it fails, so reading always passes `download=False`; and asked for data it has
not got, `tfds.data_source` fails with a misleading message about TFRecord files. So
before calling tfds at all we look on disk for the prepared files, and if they are
missing we raise one error that names the directory and the command that fills it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import numpy as np

from progprune.data.dataset import ArrayDataset
from progprune.data.idx import debian_hint

TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")
# Hosts the tfds builders download from; resolved before a download so that a machine
# without network fails at once instead of retrying for minutes.
_DOWNLOAD_HOSTS = {
    "mnist": "storage.googleapis.com",
    "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "cifar10": "www.cs.toronto.edu",
    "cifar100": "www.cs.toronto.edu",
}


def prepare_command(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The shell command that downloads and prepares `name` into `data_dir`.

    >>> prepare_command("cifar10", "/data")
    'python -m progprune.data prepare cifar10 --data_dir /data'
    """
    return f"python -m progprune.data prepare {name} --data_dir {tfds_data_dir(data_dir)}"


def tfds_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (tfds's own default).

    >>> str(tfds_data_dir("/data"))
    '/data'
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("TFDS_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / "tensorflow_datasets"


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in path.name.split("."))
    except ValueError:
        return (-1,)


def find_prepared(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The newest `<data_dir>/<name>/<version>/` holding array_record files of `split`.

    Looks at the file system only: no tfds import, no network.

    >>> find_prepared("cifar10", "train", "/nonexistent") is None
    True
    """
    root = tfds_data_dir(data_dir) / name
    if not root.is_dir():
        return None
    versions = sorted(
        (d for d in root.iterdir() if d.is_dir() and _version_key(d) != (-1,)),
        key=_version_key,
        reverse=True,
    )
    for version in versions:
        has_info = (version / "dataset_info.json").is_file()
        if has_info and any(version.glob(f"{name}-{split}.array_record-*")):
            return version
    return None


def missing_data_error(
    name: str, split: str, data_dir: str | os.PathLike | None, extra: str = ""
) -> FileNotFoundError:
    """The error raised when `name` is not prepared: names the directory and the command.

    Args:
      name: the tfds data set.
      split: "train" or "test".
      data_dir: the tfds data directory looked in (None: the default).
      extra: a sentence appended to the first line (e.g. where IDX files were looked for).

    >>> print(missing_data_error("cifar10", "train", "/data"))
    no prepared tfds data set 'cifar10' (split 'train') under /data/cifar10.
    Download and prepare it once (needs internet and TensorFlow):
      python -m progprune.data prepare cifar10 --data_dir /data
    """
    root = tfds_data_dir(data_dir)
    has_tfrecord = any((root / name).glob(f"*/{name}-{split}.tfrecord-*"))
    why = (
        " (found TFRecord files, written by tfds.load with TensorFlow; the TF-free reader "
        "needs array_record files)"
        if has_tfrecord
        else ""
    )
    return FileNotFoundError(
        f"no prepared tfds data set {name!r} (split {split!r}) under {root / name}{why}.{extra}\n"
        f"Download and prepare it once (needs internet and TensorFlow):\n"
        f"  {prepare_command(name, data_dir)}"
    )


def load_tfds(name: str, split: str, data_dir: str | os.PathLike | None = None) -> ArrayDataset:
    """Loads a prepared tfds split into host memory, without TensorFlow.

    Args:
      name: one of TFDS_NAMES.
      split: "train" or "test".
      data_dir: the tfds data directory; default $TFDS_DATA_DIR or ~/tensorflow_datasets.

    Returns:
      An ArrayDataset (images uint8 [N, H, W, C], labels int32), in the order tfds stored it.

    Raises:
      FileNotFoundError: if the split is not prepared there, naming the directory and the
        prepare command; tfds is not called and nothing is downloaded.

    >>> load_tfds("cifar10", "train", "/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileNotFoundError: no prepared tfds data set 'cifar10' ...
    """
    version_dir = find_prepared(name, split, data_dir)
    if version_dir is None:
        raise missing_data_error(name, split, data_dir)
    import tensorflow_datasets as tfds  # heavy and optional: imported only when used

    source = tfds.data_source(
        f"{name}:{version_dir.name}",
        split=split,
        data_dir=str(version_dir.parent.parent),
        download=False,
    )
    return _to_arrays(source, f"{name}/{split} (tfds: {version_dir})")


def _to_arrays(source, name: str) -> ArrayDataset:
    """Decodes every example of a tfds data source into one uint8/int32 array pair."""
    num_classes = int(source.dataset_info.features["label"].num_classes)
    n = len(source)
    first = source[0]
    images = np.empty((n, *np.shape(first["image"])), np.uint8)
    labels = np.empty((n,), np.int32)
    # Example by example: tfds's batched __getitems__ is not supported by its mock
    # data source, and this costs only ~0.1 ms per CIFAR image.
    for i in range(n):
        example = source[i] if i else first
        images[i], labels[i] = example["image"], example["label"]
    return ArrayDataset(images=images, labels=labels, num_classes=num_classes, name=name)


def _require_tensorflow() -> None:
    missing = [m for m in ("tensorflow", "importlib_resources") if not importlib.util.find_spec(m)]
    if missing:
        raise RuntimeError(
            f"preparing a tfds data set needs {' and '.join(missing)} (for tfds's download-"
            f"and-prepare step only; reading needs no TensorFlow): "
            f"pip install {' '.join(missing)}"
        )


def _require_network(name: str) -> None:
    host = _DOWNLOAD_HOSTS[name]
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise RuntimeError(
            f"cannot resolve {host} ({e}); preparing {name!r} needs internet: prepare it on a "
            "machine with network access and copy its data directory here." + debian_hint(name)
        ) from e


def prepare(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Downloads `name` and writes it as array_record files under `data_dir`.

    Needs internet and TensorFlow (once). Checks both first, so it fails at once with a
    clear message rather than after minutes of DNS retries.

    Args:
      name: one of TFDS_NAMES.
      data_dir: the tfds data directory; default $TFDS_DATA_DIR or ~/tensorflow_datasets.

    Returns:
      The prepared version directory, e.g. ~/tensorflow_datasets/cifar10/3.0.2.

    Raises:
      ValueError: if `name` is not one of TFDS_NAMES.
      RuntimeError: if TensorFlow or the network is missing, saying what to do.

    >>> prepare("digits")
    Traceback (most recent call last):
    ValueError: tfds can prepare mnist, fashion_mnist, cifar10, cifar100; got 'digits' ...
    """
    if name not in TFDS_NAMES:
        raise ValueError(
            f"tfds can prepare {', '.join(TFDS_NAMES)}; got {name!r} (digits and synthetic "
            "need no preparing: load them directly)"
        )
    _require_tensorflow()
    _require_network(name)
    import tensorflow_datasets as tfds

    root = tfds_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=str(root), file_format="array_record")
    # tfds's GCS mirror holds TFRecord files, which the TF-free reader cannot use.
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    builder.download_and_prepare(download_config=config)
    return Path(builder.data_dir)
