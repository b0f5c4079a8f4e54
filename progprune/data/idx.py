"""IDX files: the original MNIST / Fashion-MNIST format, gzipped or raw.

Format: two zero bytes, a dtype code, the number of dimensions, then each dimension as a
big-endian uint32, then the values in C order (big-endian). We read it ourselves rather
than through tfds because the Debian package `dataset-fashion-mnist` ships gzip files that
are not byte-identical to the ones tfds registers checksums for.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from progprune.data.dataset import ArrayDataset

# dtype codes of the IDX format; multi-byte types are big-endian on disk.
_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}

# Where the Debian package `dataset-fashion-mnist` puts real Fashion-MNIST.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("mnist", "fashion_mnist")
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_NUM_CLASSES = 10


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # not gzip, whatever the suffix says
        return raw
    # zlib directly: ~1.5x faster than gzip.decompress on the 26 MB Fashion-MNIST file.
    stream = zlib.decompressobj(wbits=31)
    try:
        data = stream.decompress(raw)
        if stream.unused_data:  # several gzip members: rare; let gzip handle them
            data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    if not stream.eof:
        raise ValueError(f"{path}: truncated gzip data (stream ends early)")
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzipped or raw) into a native-endian numpy array.

    Args:
      path: the file; gzip is detected from its content, not its name.

    Returns:
      The array, with the shape and dtype its header declares.

    Raises:
      ValueError: naming the file, if it is truncated, too long, or not IDX at all.

    >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape
    (10000,)
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _DTYPES or data[3] == 0:
        raise ValueError(
            f"{path}: not an IDX file (header {data[:4].hex() or 'empty'}; expected 0000, "
            f"a dtype code in {sorted(hex(c) for c in _DTYPES)}, and ndim >= 1)"
        )
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        kind = "truncated" if len(data) - header < expected else "too long"
        raise ValueError(
            f"{path}: {kind} IDX file: header declares shape {shape} of {dtype.name} "
            f"({expected} bytes of values), found {len(data) - header} bytes"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes `array` as an IDX file, gzipped when `path` ends in ".gz".

    >>> import numpy as np, tempfile
    >>> p = tempfile.mkdtemp() + "/x-idx1-ubyte.gz"
    >>> write_idx(p, np.arange(3, dtype=np.uint8)); read_idx(p).tolist()
    [0, 1, 2]
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}; use one of {list(_CODES)}")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, _DTYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def _split_file(directory: Path, split: str, kind: str) -> Path | None:
    """The IDX file for split/kind ("images" or "labels") in `directory`, or None."""
    prefix, dims = _SPLIT_PREFIX[split], "idx3" if kind == "images" else "idx1"
    # Both spellings occur in the wild ("-idx3-ubyte" from the original sites,
    # ".idx3-ubyte" from some mirrors), each raw or gzipped.
    for sep in ("-", "."):
        for suffix in (".gz", ""):
            candidate = directory / f"{prefix}-{kind}{sep}{dims}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    return None


def expected_files(split: str) -> str:
    """The IDX file names `load_idx` looks for, as error messages name them.

    >>> expected_files("test")
    't10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]'
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(_SPLIT_PREFIX)}")
    prefix = _SPLIT_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]"


def debian_hint(name: str) -> str:
    """For "fashion_mnist", a sentence on getting it offline from Debian; else "".

    Appended to every error about missing Fashion-MNIST (no files, no network).

    >>> debian_hint("mnist")
    ''
    """
    if name != "fashion_mnist":
        return ""
    return (
        f" Offline, real Fashion-MNIST comes with Debian: apt-get install "
        f"dataset-fashion-mnist (files in {DEBIAN_FASHION_MNIST})."
    )


def idx_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched, in order, for the IDX files of `name`.

    With a `data_dir`: `data_dir/name`, then `data_dir` itself. Without one: the Debian
    Fashion-MNIST directory for "fashion_mnist", nothing for "mnist".

    >>> [str(d) for d in idx_dirs("mnist", "/data")]
    ['/data/mnist', '/data']
    >>> idx_dirs("mnist", None)
    []
    """
    if data_dir is not None:
        return [Path(data_dir) / name, Path(data_dir)]
    return [DEBIAN_FASHION_MNIST] if name == "fashion_mnist" else []


def find_idx_dir(name: str, split: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The first directory of `idx_dirs` holding both IDX files of `split`, or None.

    >>> find_idx_dir("mnist", "train", "/nonexistent") is None
    True
    """
    for directory in idx_dirs(name, data_dir):
        if _split_file(directory, split, "images") and _split_file(directory, split, "labels"):
            return directory
    return None


def load_idx(name: str, split: str, directory: str | os.PathLike) -> ArrayDataset:
    """Loads one split of MNIST-format IDX files from `directory`.

    Args:
      name: "mnist" or "fashion_mnist" (both have 10 classes and 28x28 grey images).
      split: "train" (train-* files) or "test" (t10k-* files).
      directory: where the files are.

    Returns:
      An ArrayDataset with images [N, 28, 28, 1] uint8.

    >>> ds = load_idx("fashion_mnist", "test", "/usr/share/datasets/fashion-mnist")
    >>> ds.images.shape
    (10000, 28, 28, 1)
    """
    files = expected_files(split)  # also validates `split`
    directory = Path(directory)
    image_file = _split_file(directory, split, "images")
    label_file = _split_file(directory, split, "labels")
    if image_file is None or label_file is None:
        raise FileNotFoundError(
            f"no IDX {split} files in {directory}; expected {files} there (or the spelling "
            "with '.idx3'/'.idx1')."
        )
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{image_file}: expected uint8 images [N, H, W], got {images.shape}")
    if labels.shape != images.shape[:1] or labels.dtype != np.uint8:
        raise ValueError(
            f"{label_file}: expected {images.shape[0]} uint8 labels to match {image_file}, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise ValueError(f"{label_file}: label {labels.max()} outside [0, {_NUM_CLASSES})")
    return ArrayDataset(
        images=images[..., None],
        labels=labels.astype(np.int32),
        num_classes=_NUM_CLASSES,
        name=f"{name}/{split} (IDX: {directory})",
    )
