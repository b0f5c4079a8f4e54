"""Specifications of progprune.export: exact round trips, encodings, sizes, bad input, real runs.

Model params come from ``jax.eval_shape`` of each model's init filled with numpy normals (no
compile, no training); masks keep a chosen density per kernel. The real-run tests train the
quickstart (LeNet-300-100 on real Fashion-MNIST) for 300 steps once per module.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict
from hypothesis import given, settings
from hypothesis import strategies as st

import progprune.export as ppx
from progprune import models
from progprune.export.__main__ import main
from progprune.export.format import decode_leaf, encode_leaf

REPO = Path(__file__).resolve().parent.parent
INPUT = {"lenet300_100": (1, 28, 28, 1), "lenet5": (1, 28, 28, 1), "tiny_mlp": (1, 8, 8, 1)}
INPUT["tiny_cnn"] = INPUT["tiny_mlp"]
# Kernel densities cycled over a model's kernels: every encoding occurs in every model.
DENSITIES = (0.3, 0.02, 1.0, 0.0, 0.1)


@functools.cache
def abstract_variables(name: str):
    """The model's variables as ShapeDtypeStructs (traced, never run)."""
    model = models.get_model(name, 10)
    x = jnp.zeros(INPUT.get(name, (1, 32, 32, 3)))
    return jax.eval_shape(lambda: model.init(jax.random.key(0, impl="rbg"), x, train=False))


def sparse_model(name: str, dtype=np.float32, densities=DENSITIES, seed=0):
    """(params, masks, batch_stats): normal weights, pruned entries exactly 0."""
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(
        lambda s: rng.standard_normal(s.shape, np.float32).astype(dtype),
        abstract_variables(name),
    )
    params = variables["params"]
    kernels = iter(range(10**6))

    def mask(p):
        if p.ndim < 2:
            return np.ones(p.shape, bool)
        return rng.random(p.shape) < densities[next(kernels) % len(densities)]

    masks = jax.tree.map(mask, params)
    params = jax.tree.map(lambda p, m: np.where(m, p, np.zeros((), p.dtype)), params, masks)
    return params, masks, variables.get("batch_stats")


def assert_identical(a, b):
    """Same tree structure (container types included), dtypes, shapes and bytes."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert (x.dtype, x.shape) == (y.dtype, y.shape)
        assert x.tobytes() == y.tobytes()


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_round_trip_is_bit_identical_for_every_model(name, dtype, tmp_path):
    params, masks, batch_stats = sparse_model(name, dtype)
    path = tmp_path / "model.ppx"
    ppx.save(path, params, masks, batch_stats=batch_stats, metadata={"model": name})
    loaded = ppx.load_export(path)
    assert_identical(loaded.params, params)
    assert_identical(loaded.masks, masks)
    assert_identical(loaded.batch_stats, batch_stats)
    assert loaded.metadata == {"model": name}
    assert_identical(ppx.load(path), (params, masks))
    encodings = {layer.encoding for layer in ppx.size_report(path).layers}
    assert encodings == {"dense", "bitmask", "gaps"}


def test_containers_come_back_as_they_were(tmp_path):
    params = FrozenDict(
        {
            "dense": {"kernel": np.array([[0.0, 1.5], [0.0, 0.0]], np.float32)},
            "blocks": [np.arange(3, dtype=np.int32), (np.float32(2.0), None)],
            "scale": jnp.asarray([1.0, 0.0], jnp.bfloat16),
        }
    )
    masks = {  # plain dicts where the params have a FrozenDict: kept as given
        "dense": FrozenDict({"kernel": np.array([[False, True], [False, False]])}),
        "blocks": [np.ones(3, bool), (np.array(True), None)],
        "scale": np.array([True, False]),
    }
    path = tmp_path / "model.ppx"
    ppx.save(path, params, masks)
    loaded_params, loaded_masks = ppx.load(path)
    assert type(loaded_params) is FrozenDict and type(loaded_masks) is dict
    assert type(loaded_params["blocks"]) is list and type(loaded_params["blocks"][1]) is tuple
    assert loaded_params["blocks"][1][1] is None
    assert list(loaded_params) == ["dense", "blocks", "scale"]  # insertion order kept
    assert_identical(loaded_params, jax.tree.map(np.asarray, params))
    assert_identical(loaded_masks, masks)


# -------------------------------------------------------------------------------- encodings


def test_encodings_exact_on_small_leaves():
    w = np.zeros(64, np.float32)
    w[[3, 4, 10]] = [1.0, -2.0, 3.0]
    record = encode_leaf("w", w, w != 0)
    # 3 one-byte gaps beat the 8-byte bitmask; gaps = pruned entries before each kept one.
    assert record["encoding"] == "gaps"
    assert record["index"].dtype == np.uint8 and record["index"].tolist() == [3, 0, 5]
    assert record["values"].tolist() == [1.0, -2.0, 3.0]
    eight = np.zeros(64, bool)
    eight[::8] = True  # 8 kept: 8 gap bytes are not fewer than 8 bitmask bytes
    record = encode_leaf("w", np.where(eight, 1.0, 0.0).astype(np.float32), eight)
    assert record["encoding"] == "bitmask" and record["index"].tolist() == [128] * 8
    far = np.zeros(10_000, bool)
    far[[0, 9_999]] = True  # a gap of 9,998 needs uint16
    record = encode_leaf("w", far.astype(np.float32), far)
    assert record["index"].dtype == np.uint16 and record["index"].tolist() == [0, 9_998]
    assert encode_leaf("b", np.ones(3, np.float32), None)["encoding"] == "dense"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 7), min_size=0, max_size=3),
    st.floats(0.0, 1.0),
    st.sampled_from(["float32", "bfloat16", "int8", "float16"]),
    st.integers(0, 2**31),
)
def test_encode_decode_is_identity_and_picks_the_smaller_index(shape, density, dtype, seed):
    rng = np.random.default_rng(seed)
    keep = rng.random(shape) < density
    value = np.where(keep, rng.integers(-9, 9, shape), 0).astype(jnp.dtype(dtype))
    record = encode_leaf("w", value, keep)
    got_value, got_keep = decode_leaf("w", record)
    assert got_value.tobytes() == value.tobytes() and got_value.dtype == value.dtype
    assert (got_keep == keep).all() and got_keep.shape == keep.shape
    n, k = math.prod(shape), int(keep.sum())
    if k < n:
        gaps = np.diff(np.flatnonzero(keep), prepend=-1) - 1
        gap_bytes = k * (1 if gaps.size == 0 or gaps.max() < 256 else 2)
        assert record["index"].nbytes == min(gap_bytes, math.ceil(n / 8))


# ------------------------------------------------------------------------------------ sizes


def top_k_masks(params, sparsity: float):
    """Each kernel keeps its largest (1 - sparsity) share of |w| (numpy stable argsort)."""

    def mask(p):
        if p.ndim < 2:
            return np.ones(p.shape, bool)
        keep = np.ones(p.size, bool)
        keep[np.argsort(np.abs(p).ravel(), kind="stable")[: round(sparsity * p.size)]] = False
        return keep.reshape(p.shape)

    return jax.tree.map(mask, params)


@pytest.mark.parametrize("sparsity, bound", [(0.9, 0.20), (0.98, 0.05)])
@pytest.mark.parametrize("name", ["lenet300_100", "lenet5", "resnet20"])
def test_file_size_bounds(name, sparsity, bound, tmp_path):
    # Every layer at the target sparsity: no layer is emptied, so every index is paid for
    # (benchmarks/export_size.py measures all models, with global masks too).
    params, _, batch_stats = sparse_model(name, densities=(1.0,))
    masks = top_k_masks(params, sparsity)
    params = jax.tree.map(lambda p, m: np.where(m, p, np.float32(0)), params, masks)
    ppx.save(tmp_path / "m.ppx", params, masks, batch_stats=batch_stats)
    report = ppx.size_report(tmp_path / "m.ppx")
    dense = sum(x.nbytes for x in jax.tree.leaves((params, batch_stats)))
    assert report.dense_bytes == dense
    assert report.file_bytes == os.path.getsize(tmp_path / "m.ppx")
    assert report.file_bytes <= bound * dense, str(report)


# -------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def export_file(tmp_path_factory):
    params, masks, batch_stats = sparse_model("tiny_cnn")
    path = tmp_path_factory.mktemp("export") / "model.ppx"
    ppx.save(path, params, masks, batch_stats=batch_stats)
    return path


@pytest.mark.parametrize("where", [0.03, 0.2, 0.5, 0.99, 1.0])
def test_a_corrupted_byte_is_detected(export_file, tmp_path, where):
    data = bytearray(export_file.read_bytes())
    data[min(int(where * len(data)), len(data) - 1)] ^= 0x10  # 0.03: in the stored checksum
    (tmp_path / "bad.ppx").write_bytes(bytes(data))
    with pytest.raises(ppx.CorruptExportError, match=r"bad.ppx' is (truncated or )?corrupt"):
        ppx.load(tmp_path / "bad.ppx")


@pytest.mark.parametrize("keep", [0.5, 0.999, 30])
def test_a_truncated_file_is_detected(export_file, tmp_path, keep):
    data = export_file.read_bytes()
    cut = int(keep * len(data)) if keep < 1 else keep
    (tmp_path / "cut.ppx").write_bytes(data[:cut])
    with pytest.raises(ppx.CorruptExportError, match="truncated or corrupt"):
        ppx.load(tmp_path / "cut.ppx")


def test_a_file_that_is_not_an_export(tmp_path):
    np.savez(tmp_path / "weights.npz", w=np.ones(3))
    (tmp_path / "empty.ppx").write_bytes(b"")
    for bad in (tmp_path / "weights.npz", tmp_path / "empty.ppx", tmp_path):
        with pytest.raises(ppx.NotAnExportError, match="pass a file written by"):
            ppx.load(bad)
    with pytest.raises(FileNotFoundError, match="no export file at .*write one with"):
        ppx.load(tmp_path / "missing.ppx")


def test_masks_that_do_not_match_the_params(tmp_path):
    params, masks, _ = sparse_model("tiny_mlp")
    missing = {**masks, "fc2": {"kernel": masks["fc2"]["kernel"]}}
    with pytest.raises(ppx.MaskMismatchError, match=r"missing \['fc2/bias'\], extra \[\]"):
        ppx.save(tmp_path / "m.ppx", params, missing)
    transposed = {**masks, "fc1": {**masks["fc1"], "kernel": masks["fc1"]["kernel"].T}}
    with pytest.raises(ppx.MaskMismatchError, match="mask 'fc1/kernel' has shape"):
        ppx.save(tmp_path / "m.ppx", params, transposed)
    assert not list(tmp_path.iterdir())


def test_a_failed_save_overwrites_nothing(export_file, tmp_path, monkeypatch):
    target = tmp_path / "model.ppx"
    target.write_bytes(export_file.read_bytes())
    params, masks, _ = sparse_model("tiny_mlp")
    unpruned = jax.tree.map(lambda p: p + np.float32(1), params)  # pruned entries not zero
    with pytest.raises(ppx.ExportError, match="fc1/kernel' is not 0.0 at \\d+ pruned positions"):
        ppx.save(target, unpruned, masks)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ppx.save(target, params, masks)
    assert target.read_bytes() == export_file.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.ppx"]  # no temporary left behind


# ---------------------------------------------------------------------------- sparse path


@pytest.mark.parametrize("name", ["lenet300_100", "tiny_mlp"])
def test_sparse_mlp_computes_what_the_model_computes(name):
    model = models.get_model(name, 10)
    params, masks, _ = sparse_model(name, densities=(0.05, 0.0, 0.3))  # 0.0: an emptied layer
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, *INPUT[name][1:]), np.float32))
    mlp = ppx.to_sparse_mlp(params)
    kept = [int(layer.kernel.nse) for layer in mlp.layers]
    assert kept == [int(m["kernel"].sum()) for m in masks.values()]  # only kept weights stored
    got = jax.jit(ppx.sparse_mlp_apply)(mlp, x)
    want = model.apply({"params": params}, x, train=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sparse_mlp_refuses_what_it_cannot_compute():
    params, _, _ = sparse_model("lenet5")
    with pytest.raises(ValueError, match="'conv1'] is not a dense layer"):
        ppx.to_sparse_mlp(params)
    params, _, _ = sparse_model("lenet300_100")
    with pytest.raises(ValueError, match="layer 'fc1' takes 784 inputs but the previous layer"):
        ppx.to_sparse_mlp(params, layers=("fc2", "fc1", "fc3"))


@pytest.mark.parametrize(
    "name",
    [
        "progprune.export.format",
        "progprune.export.report",
        "progprune.export.sparse",
        "progprune.export.__main__",
    ],
)
def test_docstring_examples(name):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(importlib.import_module(name), optionflags=flags)
    assert result.failed == 0 and result.attempted > 0


# ----------------------------------------------------------------- a real quickstart run


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quickstart (LeNet-300-100, real Fashion-MNIST) shortened to 300 steps."""
    from configs import quickstart
    from progprune.train import train_and_evaluate

    config = quickstart.get_config()
    config.num_train_steps, config.num_devices, config.progress_bar = 300, 1, False
    workdir = tmp_path_factory.mktemp("quickstart")
    train_and_evaluate(config, str(workdir))
    return workdir


def test_cli_exports_a_real_run_and_checks_its_accuracy_exactly(quickstart_run, tmp_path, capsys):
    out = tmp_path / "quickstart.ppx"
    assert main([f"--workdir={quickstart_run}", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "params/fc1/kernel" in printed and f"wrote {out}" in printed
    assert main([f"--check={out}"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((quickstart_run / "summary.json").read_text())
    accuracy = float(printed.split()[1])
    assert accuracy == summary["eval_accuracy"], printed
    assert "equal)" in printed

    from progprune.train import load_final_params

    export = ppx.load_export(out)
    assert_identical(export.params, load_final_params(str(quickstart_run)))
    pruned = sum(int((~m).sum()) for m in jax.tree.leaves(export.masks))
    assert pruned == round(0.9 * (784 * 300 + 300 * 100 + 100 * 10))  # global 90% of kernels
    assert export.metadata["model"] == "lenet300_100" and export.metadata["step"] == 300
    assert ppx.size_report(out).ratio <= 0.20


def test_sparse_forward_of_a_real_export_matches_the_model(quickstart_run, tmp_path):
    from progprune import data
    from progprune.export.runs import export_run

    export_run(quickstart_run, tmp_path / "q.ppx")
    params, _ = ppx.load(tmp_path / "q.ppx")
    test = data.load("fashion_mnist", "test")
    mean, std = data.stats("fashion_mnist")
    x = data.preprocess(jnp.asarray(test.images[:256]), None, augment=False, mean=mean, std=std)
    want = models.get_model("lenet300_100", 10).apply({"params": params}, x, train=False)
    got = jax.jit(ppx.sparse_mlp_apply)(ppx.to_sparse_mlp(params), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (np.argmax(got, -1) == np.argmax(want, -1)).all()


def test_cli_bad_input_prints_one_line(quickstart_run, tmp_path, capsys):
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    (no_checkpoint / "config.json").write_text((quickstart_run / "config.json").read_text())
    cases = {
        f"--workdir={no_checkpoint}": "no checkpoint in",
        f"--workdir={tmp_path / 'nowhere'}": "does not exist",
        f"--workdir={tmp_path}": "has no readable config.json",
        f"--check={quickstart_run / 'config.json'}": "is not a progprune export",
    }
    for arg, message in cases.items():
        assert main([arg, f"--out={tmp_path / 'x.ppx'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (no_checkpoint / "checkpoints").exists()  # nothing created in the workdir
    # As a process: one line on stderr, no traceback, status 2.
    cmd = [sys.executable, "-m", "progprune.export", f"--report={no_checkpoint / 'config.json'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is not a progprune export" in proc.stderr and "Traceback" not in proc.stderr
