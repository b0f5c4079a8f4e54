"""Specification of sparsity statistics and mask-change counts."""

import jax.numpy as jnp
import numpy as np
import pytest

import progprune

MASKS = {
    "params": {
        "Conv_0": {"kernel": jnp.asarray(np.arange(8).reshape(2, 2, 1, 2) >= 6)},  # 6 of 8 False
        "Dense_0": {
            "bias": jnp.asarray([True, True, True, True]),
            "kernel": jnp.asarray([[False, True, True, True], [True, False, True, False]]),
        },
    }
}

PARAMS = {
    "params": {
        "Conv_0": {"kernel": jnp.where(MASKS["params"]["Conv_0"]["kernel"], 1.5, 0.0)},
        "Dense_0": {
            "bias": jnp.asarray([0.0, 0.0, 1.0, 2.0]),  # zeros in a bias do not count
            "kernel": jnp.where(MASKS["params"]["Dense_0"]["kernel"], -0.3, 0.0),
        },
    }
}

EXPECTED = {"params/Conv_0/kernel": 6 / 8, "params/Dense_0/kernel": 3 / 8, "global": 9 / 16}


@pytest.mark.parametrize("tree", [MASKS, PARAMS], ids=["masks", "params"])
def test_sparsity_summary(tree):
    summary = progprune.sparsity_summary(tree)
    assert set(summary) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert isinstance(summary[key], float)
        assert summary[key] == pytest.approx(value, abs=1e-7)


def test_sparsity_summary_dense_tree_is_zero():
    summary = progprune.sparsity_summary({"w": jnp.ones((3, 3)), "b": jnp.zeros(3)})
    assert summary == {"w": 0.0, "global": 0.0}


def test_sparsity_summary_global_weights_by_size():
    tree = {"big": jnp.zeros((10, 10)), "small": jnp.ones((1, 4))}
    summary = progprune.sparsity_summary(tree)
    assert summary["big"] == 1.0 and summary["small"] == 0.0
    assert summary["global"] == pytest.approx(100 / 104)


def test_mask_changes_counts():
    old = {"a": jnp.asarray([[True, True, False, True]]), "b": jnp.asarray([[True, False]])}
    new = {"a": jnp.asarray([[False, True, True, False]]), "b": jnp.asarray([[False, False]])}
    # pruned: a[0], a[3], b[0]; revived: a[2].
    changes = progprune.mask_changes(old, new)
    assert {k: int(v) for k, v in changes.items()} == {"pruned": 3, "revived": 1, "changed": 4}


def test_mask_changes_identical_and_lists():
    masks = [jnp.asarray([[True, False]]), (jnp.ones((2, 2), bool),)]
    changes = progprune.mask_changes(masks, masks)
    assert {k: int(v) for k, v in changes.items()} == {"pruned": 0, "revived": 0, "changed": 0}
    shrunk = [jnp.asarray([[False, False]]), (jnp.zeros((2, 2), bool),)]
    changes = progprune.mask_changes(masks, shrunk)
    assert {k: int(v) for k, v in changes.items()} == {"pruned": 5, "revived": 0, "changed": 5}
