"""Specification of progprune.data loading: IDX, tfds, digits, synthetic, and their errors.

The device-resident pipeline is specified in test_data_pipeline.py.
"""

from __future__ import annotations

import doctest
import gzip
import importlib
import io
import socket
import types
from unittest import mock

import numpy as np
import pytest

from progprune import data
from progprune.data import idx, tfds_source
from progprune.data.__main__ import main as cli_main

# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-5, 0, 7], np.int8),
        np.array([[-300, 2], [3, 40000 - 65536]], np.int16),
        np.array([1, -(2**31), 2**31 - 1], np.int32),
        np.array([0.5, -1.25], np.float32),
        np.array([1e300], np.float64),
    ],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / f"x-idx{array.ndim}-ubyte{suffix}"
    data.write_idx(path, array)
    out = data.read_idx(path)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_idx_header_bytes_are_the_format(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    data.write_idx(path, np.array([3, 1, 2], np.uint8))
    assert path.read_bytes() == bytes.fromhex("0000080100000003030102")


def test_idx_gzip_detected_from_content_not_name(tmp_path):
    path = tmp_path / "plain-name-idx1-ubyte"
    path.write_bytes(gzip.compress(bytes.fromhex("00000801000000020709")))
    np.testing.assert_array_equal(data.read_idx(path), [7, 9])


def _valid_idx(tmp_path, name="t10k-images-idx3-ubyte", gz=False):
    path = tmp_path / (name + (".gz" if gz else ""))
    data.write_idx(
        path, np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    )
    return path


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:-1], "truncated IDX file"),
        (lambda b: b[:10], "truncated IDX header"),
        (lambda b: b + b"\x00", "too long"),
        (lambda b: b"\x01" + b[1:], "not an IDX file"),
        (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),  # unknown dtype code
        (lambda b: b"", "not an IDX file"),
    ],
)
def test_idx_bad_raw_file_errors_name_the_file(tmp_path, mangle, message):
    path = _valid_idx(tmp_path)
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[: len(b) // 2], "truncated gzip"),
        (lambda b: b[:20] + bytes(x ^ 0xFF for x in b[20:40]) + b[40:], "corrupt gzip"),
    ],
)
def test_idx_bad_gzip_errors_name_the_file(tmp_path, mangle, message):
    path = _valid_idx(tmp_path, gz=True)
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def _write_mnist_dir(directory, n_train=5, n_test=3, sep="-", gz=True, seed=0):
    """Writes MNIST-format files with random content; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        ext = ".gz" if gz else ""
        data.write_idx(directory / f"{prefix}-images{sep}idx3-ubyte{ext}", images)
        data.write_idx(directory / f"{prefix}-labels{sep}idx1-ubyte{ext}", labels)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize(("sep", "gz", "subdir"), [("-", True, False), (".", False, True)])
def test_load_idx_directory(tmp_path, sep, gz, subdir):
    written = _write_mnist_dir(tmp_path / "mnist" if subdir else tmp_path, sep=sep, gz=gz)
    for split, (images, labels) in written.items():
        ds = data.load("mnist", split, data_dir=tmp_path)
        assert ds.images.shape == (len(labels), 28, 28, 1) and ds.images.dtype == np.uint8
        np.testing.assert_array_equal(ds.images[..., 0], images)
        assert ds.labels.dtype == np.int32
        np.testing.assert_array_equal(ds.labels, labels)
        assert ds.num_classes == 10 and "IDX" in ds.name


def test_idx_label_count_mismatch_names_both_files(tmp_path):
    _write_mnist_dir(tmp_path)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz.*train-images-idx3"):
        data.load("mnist", "train", data_dir=tmp_path, source="idx")


def test_idx_label_out_of_range_names_the_file(tmp_path):
    _write_mnist_dir(tmp_path)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 10, 1], np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: label 10 outside"):
        data.load("mnist", "test", data_dir=tmp_path)


debian = pytest.mark.skipif(
    not idx.DEBIAN_FASHION_MNIST.is_dir(),
    reason=f"real Fashion-MNIST absent: apt-get install dataset-fashion-mnist "
    f"(puts it in {idx.DEBIAN_FASHION_MNIST})",
)


@debian
@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist_from_debian(split, n):
    ds = data.load("fashion_mnist", split)
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.uint8
    # Fashion-MNIST is exactly balanced: n / 10 images per class.
    np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), [n // 10] * 10)
    assert str(idx.DEBIAN_FASHION_MNIST) in ds.name
    if split == "train":
        mean, std = data.stats("fashion_mnist")
        assert ds.images.mean() == pytest.approx(mean[0], abs=1e-3)
        assert ds.images.std() == pytest.approx(std[0], abs=1e-3)


def test_digits_is_real_and_split_fixed():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert train.images.shape == (1437, 8, 8, 1) and test.images.shape == (360, 8, 8, 1)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    assert set(np.unique(train.labels)) == set(range(10)) and train.num_classes == 10
    mean, std = data.stats("digits")
    assert train.images.mean() == pytest.approx(mean[0], abs=1e-3)
    assert train.images.std() == pytest.approx(std[0], abs=1e-3)


def test_synthetic_is_named_as_such_and_deterministic():
    a = data.synthetic((6, 5, 2), num_classes=4, n=50, seed=3)
    b = data.synthetic((6, 5, 2), num_classes=4, n=50, seed=3)
    assert a.name.startswith("synthetic") and "not a real data set" in a.name
    assert a.images.shape == (50, 6, 5, 2) and a.labels.max() < 4
    np.testing.assert_array_equal(a.images, b.images)
    train, test = data.load("synthetic", "train"), data.load("synthetic", "test")
    assert train.images.shape[1:] == (32, 32, 3) and "not a real data set" in test.name
    assert not np.array_equal(train.images[: len(test)], test.images)


# ---------------------------------------------------------------- bad input


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        data.load("imagenet", "train")
    for name in data.DATASET_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="train, test"):
        data.load("mnist", "validation")
    with pytest.raises(ValueError, match="auto, idx, tfds"):
        data.load("mnist", "train", source="hub")
    with pytest.raises(ValueError, match="IDX files hold only mnist, fashion_mnist"):
        data.load("cifar10", "train", source="idx")
    with pytest.raises(ValueError, match="valid names"):
        data.stats("imagenet")


@pytest.fixture
def no_network_or_tfds(monkeypatch):
    """Fails the test if anything resolves a host, downloads, or calls into tfds."""
    import tensorflow_datasets as tfds

    def forbidden(*args, **kwargs):
        raise AssertionError("must not be called for missing data")

    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    monkeypatch.setattr(tfds, "data_source", forbidden)
    monkeypatch.setattr(tfds, "builder", forbidden)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", forbidden)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", forbidden)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist"])
@pytest.mark.parametrize("source", ["auto", "tfds"])
def test_missing_data_dir_names_path_and_prepare_command(
    tmp_path, no_network_or_tfds, name, source
):
    wrong = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError) as err:
        data.load(name, "train", data_dir=wrong, source=source)
    message = str(err.value)
    assert str(wrong / name) in message
    assert f"python -m progprune.data prepare {name} --data_dir {wrong}" in message


def test_missing_data_uses_tfds_data_dir_env(tmp_path, monkeypatch, no_network_or_tfds):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
    with pytest.raises(FileNotFoundError, match="prepare cifar10 --data_dir .*env_dir"):
        data.load("cifar10", "test")


def test_wrong_data_dir_does_not_fall_back_to_debian(tmp_path, no_network_or_tfds):
    with pytest.raises(FileNotFoundError) as err:
        data.load("fashion_mnist", "train", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value) and "prepare fashion_mnist" in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


def test_tfrecord_only_dir_is_explained(tmp_path, no_network_or_tfds):
    version = tmp_path / "cifar10" / "3.0.2"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
    (version / "cifar10-train.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="TFRecord files"):
        data.load("cifar10", "train", data_dir=tmp_path)


def test_prepare_without_network_fails_at_once_naming_host(tmp_path, monkeypatch, capsys):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds_source, "_require_tensorflow", lambda: None)

    def no_dns(host, port):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(tfds, "builder", mock.Mock(side_effect=AssertionError("no download")))
    assert cli_main(["prepare", "cifar10", "--data_dir", str(tmp_path)]) == 1
    assert "cannot resolve www.cs.toronto.edu" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        data.prepare("fashion_mnist", tmp_path)


def test_prepare_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
    real_find_spec = tfds_source.importlib.util.find_spec
    monkeypatch.setattr(
        tfds_source.importlib.util,
        "find_spec",
        lambda name: None if name == "tensorflow" else real_find_spec(name),
    )
    with pytest.raises(RuntimeError, match="pip install tensorflow"):
        data.prepare("cifar10", tmp_path)


# ---------------------------------------------------------------- tfds


def test_tfds_mock_data_reads_without_tensorflow(tmp_path):
    import tensorflow_datasets as tfds

    # find_prepared looks only at file names; mock_data then supplies the examples.
    version = tmp_path / "cifar10" / "3.0.2"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
    (version / "cifar10-train.array_record-00000-of-00001").write_bytes(b"")
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("cifar10", "train", data_dir=tmp_path)
    assert ds.images.shape == (12, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10 and "tfds" in ds.name


def _write_raw_cifar10(directory, n_per_file=4, seed=0):
    """CIFAR-10's binary format: per record 1 label byte, then 3x32x32 CHW pixels."""
    rng = np.random.default_rng(seed)
    batches = directory / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    records = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (n_per_file, 3073), np.uint8)
        rec[:, 0] %= 10
        rec.tofile(batches / name)
        records[name] = rec
    (batches / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    return records


def _png_without_tensorflow(self, image):
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_prepare_then_load_real_array_record_files(tmp_path, monkeypatch, capsys):
    """The real tfds prepare + TF-free read path, offline, on CIFAR-10 files we write.

    tfds's prepare step needs TensorFlow for two things only (reading the raw files and
    PNG-encoding); this test supplies both without it, and stubs the download.
    """
    import tensorflow_datasets as tfds
    import tensorflow_datasets.image_classification.cifar as cifar
    from tensorflow_datasets.core.features import image_feature

    records = _write_raw_cifar10(tmp_path / "raw")
    fake_tf = types.SimpleNamespace(
        io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=open))
    )
    monkeypatch.setattr(tfds_source, "_require_tensorflow", lambda: None)
    monkeypatch.setattr(tfds_source, "_require_network", lambda name: None)
    monkeypatch.setattr(cifar, "tf", fake_tf)
    monkeypatch.setattr(image_feature._ImageEncoder, "_encode_image", _png_without_tensorflow)
    monkeypatch.setattr(
        tfds.download.DownloadManager,
        "download_and_extract",
        lambda self, url: str(tmp_path / "raw"),
    )
    data_dir = tmp_path / "tfds"
    assert cli_main(["prepare", "cifar10", "--data_dir", str(data_dir)]) == 0
    assert "prepared cifar10" in capsys.readouterr().out

    ds = data.load("cifar10", "test", data_dir=data_dir)
    raw = records["test_batch.bin"]
    expected = {r[1:].reshape(3, 32, 32).transpose(1, 2, 0).tobytes(): int(r[0]) for r in raw}
    got = {img.tobytes(): int(lab) for img, lab in zip(ds.images, ds.labels, strict=True)}
    assert ds.images.shape == (len(raw), 32, 32, 3) and got == expected
    assert len(data.load("cifar10", "train", data_dir=data_dir)) == 5 * len(raw)
    assert cli_main(["info", "--data_dir", str(data_dir)]) == 0
    assert f"cifar10        tfds: {data_dir / 'cifar10' / '3.0.2'}" in capsys.readouterr().out


# ---------------------------------------------------------------- docstrings


@debian  # some examples read the real Fashion-MNIST files
@pytest.mark.parametrize(
    "name",
    [
        "progprune.data.__main__",
        "progprune.data.dataset",
        "progprune.data.digits",
        "progprune.data.idx",
        "progprune.data.pipeline",
        "progprune.data.sources",
        "progprune.data.synthetic",
        "progprune.data.tfds_source",
    ],
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    assert result.attempted > 0, f"{name} has no docstring example"
