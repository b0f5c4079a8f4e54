"""Mask records: what the trainer writes with config.record_masks, and that resume keeps them."""

from __future__ import annotations

import doctest
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import progprune
from configs import tiny
from progprune import compare
from progprune.train import build, records, train_and_evaluate
from progprune.train.checkpoint import Checkpointer

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _recording_config():
    config = tiny.get_config()
    config.record_masks = True
    config.record_weights = "kernel"
    return config


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("recorded")
    config = _recording_config()
    summary = train_and_evaluate(config, str(workdir))
    return workdir, config, summary


def _assert_same_masks(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@jax.jit
def _prune(scores, sparsity, masks):
    return progprune.prune_to_sparsity(scores, sparsity, masks=masks)


def _assert_update_rule(history, schedule, every):
    """Record k's weights, ranked from record k's masks, give record k+1's masks (the rule)."""
    checked = 0
    for k in range(len(history.steps) - 1):
        step, following = history.steps[k], history.steps[k + 1]
        if following != step + every:  # the last record follows the last step, not an update
            continue
        kernels = lambda tree: {layer: {"kernel": tree[layer]["kernel"]} for layer in tree}
        scores = jax.tree.map(np.abs, kernels(history.weights[k]))
        masks_k = kernels(history.masks[k])
        expected = _prune(scores, schedule(step), masks_k)
        got = kernels(history.masks[k + 1])
        _assert_same_masks(expected, got)
        checked += 1
    assert checked >= 2


def test_records_hold_every_update_and_follow_the_rule(recorded):
    workdir, config, summary = recorded
    history = records.load_mask_history(workdir)
    assert history.steps == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44]  # every 4 steps + last
    assert set(history.masks[0]) == {"fc1", "fc2"}
    assert set(history.masks[0]["fc1"]) == {"kernel", "bias"}  # the whole mask tree
    assert set(history.weights[0]["fc1"]) == {"kernel"}  # only what record_weights names
    assert all(np.all(leaf) for leaf in jax.tree.leaves(history.masks[0]))  # step 0: dense
    final = progprune.sparsity_summary(history.masks[-1])
    assert final["global"] == summary["sparsity"]
    plan = build.make_plan(config, num_train_examples=1437)
    _assert_update_rule(history, plan.pruning.schedule, plan.pruning.update_every)


def test_resumed_run_ends_with_the_same_records(recorded, tmp_path):
    reference, config, _ = recorded
    workdir = tmp_path / "resumed"
    shutil.copytree(reference, workdir)
    ckpt = Checkpointer(workdir)
    steps = ckpt.steps()
    ckpt.close()
    # Pretend the run died after its first kept checkpoint, having written later records that a
    # different trajectory would not have: resume must drop and rewrite them.
    for step in steps[1:]:
        shutil.rmtree(workdir / "checkpoints" / str(step))
    for name in ("summary.json", "final_params"):
        path = workdir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    stale = records.load_mask_history(workdir)
    records.write_record(workdir / "records", 999, stale.masks[0], {})
    later = steps[0] + 4 - steps[0] % 4
    records.write_record(workdir / "records", later, stale.masks[0], stale.weights[0])
    train_and_evaluate(config, str(workdir))
    a, b = records.load_mask_history(reference), records.load_mask_history(workdir)
    assert a.steps == b.steps
    _assert_same_masks((a.masks, a.weights), (b.masks, b.weights))


def test_off_by_default_and_fixed_masks_record_first_and_last(tmp_path):
    config = tiny.get_config()
    assert not config.record_masks and config.record_weights is None
    setup = build.make_plan(config, num_train_examples=1437).pruning
    assert records.make_recorder(config, tmp_path, setup, 44, None, None) is None
    with pytest.raises(FileNotFoundError, match="record_masks=True"):
        records.load_mask_history(tmp_path)
    config.pruning.method, config.record_masks, config.num_train_steps = "random", True, 9
    train_and_evaluate(config, str(tmp_path / "random"))
    history = records.load_mask_history(tmp_path / "random")
    assert history.steps == [0, 9]  # fixed masks: no updates in between
    _assert_same_masks(history.masks[0], history.masks[1])
    assert progprune.sparsity_summary(history.masks[0])["global"] == 0.5
    assert history.weights == [{}, {}]


@pytest.mark.parametrize(
    "masks_on, weights, match",
    [(False, "kernel", "set config.record_masks=True"), (True, "(", "is not a regex")],
)
def test_bad_record_settings_fail_before_training(tmp_path, masks_on, weights, match):
    config = tiny.get_config()
    config.record_masks, config.record_weights = masks_on, weights
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(config, str(tmp_path))


def test_records_round_trip_bit_packing_exactly(tmp_path):
    rng = np.random.default_rng(0)
    masks = {
        "a": {"kernel": rng.random((3, 5)) < 0.5, "bias": np.ones(7, bool)},
        "b": [rng.random((2, 2, 3)) < 0.3],
    }
    weights = {"a": {"kernel": rng.normal(size=(3, 5)).astype(np.float32)}}
    path = records.write_record(tmp_path / "records", 12, masks, weights)
    assert path.stat().st_size < 2000
    history = records.load_mask_history(tmp_path)
    assert history.steps == [12]
    got = history.masks[0]
    np.testing.assert_array_equal(got["a"]["kernel"], masks["a"]["kernel"])
    np.testing.assert_array_equal(got["a"]["bias"], masks["a"]["bias"])
    np.testing.assert_array_equal(got["b"]["0"], masks["b"][0])  # list index -> key "0"
    np.testing.assert_array_equal(history.weights[0]["a"]["kernel"], weights["a"]["kernel"])
    assert not list((tmp_path / "records").glob("*.tmp"))


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs the dataset-fashion-mnist package")
def test_records_on_real_fashion_mnist(tmp_path):
    from configs import quickstart

    config = quickstart.get_config()
    config.num_train_steps, config.pruning.update_every = 30, 10
    config.record_masks, config.record_weights = True, ".*"
    summary = train_and_evaluate(config, str(tmp_path))
    history = records.load_mask_history(tmp_path)
    assert history.steps == [0, 10, 20, 30]
    assert progprune.sparsity_summary(history.masks[-1])["global"] == summary["sparsity"]
    plan = build.make_plan(config, num_train_examples=60_000)
    _assert_update_rule(history, plan.pruning.schedule, 10)
    # All weights recorded: each update's cut sits below every weight it kept.
    for k in range(len(history.steps) - 1):
        cut = compare.cut_statistics(history.weights[k], history.masks[k], history.masks[k + 1])
        assert cut.pruned == 0 or cut.threshold <= cut.kept_min


def test_docstring_examples():
    result = doctest.testmod(records, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
