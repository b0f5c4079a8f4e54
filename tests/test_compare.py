"""Mask comparisons: exact values on small trees, and invariants on random ones."""

from __future__ import annotations

import doctest

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import progprune
from progprune import compare

A = {
    "fc1": {"kernel": np.array([[1, 1, 0], [1, 0, 0]], bool), "bias": np.array([1, 0], bool)},
    "fc2": {"kernel": np.array([[1, 0], [0, 0]], bool), "bias": np.array([1, 1], bool)},
}
B = {
    "fc1": {"kernel": np.array([[1, 0, 1], [1, 0, 0]], bool), "bias": np.array([0, 0], bool)},
    "fc2": {"kernel": np.array([[0, 1], [0, 0]], bool), "bias": np.array([1, 1], bool)},
}


def test_jaccard_exact_per_layer_and_global_kernels_only():
    # fc1: both keep (0,0),(1,0); either keeps 4 -> 2/4. fc2: disjoint -> 0/2. Global 2/6.
    assert compare.jaccard(A, B) == {"fc1/kernel": 0.5, "fc2/kernel": 0.0, "global": 2 / 6}
    assert compare.jaccard(A, A) == {"fc1/kernel": 1.0, "fc2/kernel": 1.0, "global": 1.0}
    assert compare.jaccard(A, B, prunable="fc1/kernel") == {"fc1/kernel": 0.5, "global": 0.5}


def test_jaccard_of_two_empty_masks_is_one_and_structures_must_match():
    empty = {"w": np.zeros((2, 2), bool)}
    assert compare.jaccard(empty, empty) == {"w": 1.0, "global": 1.0}
    with pytest.raises(ValueError, match="same structure"):
        compare.jaccard(A, {"w": np.ones((2, 2), bool)})


def test_chance_jaccard_exact():
    # fc1: p = q = 1/2 -> pq / (p + q - pq) = (1/4) / (3/4) = 1/3.
    # fc2: p = q = 1/4 -> (1/16) / (7/16) = 1/7. Global: (6/4 + 4/16) / (6*3/4 + 4*7/16).
    got = compare.chance_jaccard(A, B)
    assert got["fc1/kernel"] == pytest.approx(1 / 3)
    assert got["fc2/kernel"] == pytest.approx(1 / 7)
    assert got["global"] == pytest.approx((1.5 + 0.25) / (4.5 + 1.75))


def test_chance_jaccard_is_the_mean_over_random_masks():
    rng = np.random.default_rng(0)
    n, kept = 2000, (400, 900)
    overlaps = []
    for _ in range(200):
        masks = []
        for k in kept:
            m = np.zeros(n, bool)
            m[rng.choice(n, k, replace=False)] = True
            masks.append({"w": m.reshape(40, 50)})
        overlaps.append(compare.jaccard(*masks)["global"])
    expected = compare.chance_jaccard(*masks)["global"]
    assert np.mean(overlaps) == pytest.approx(expected, rel=0.02)


def test_oneshot_overlap_equals_jaccard_with_prune_to_sparsity():
    rng = np.random.default_rng(1)
    params = {"a": rng.normal(size=(6, 5)).astype(np.float32), "b": rng.normal(size=(4, 4))}
    masks = jax.tree.map(lambda w: rng.random(w.shape) < 0.4, params)
    for distribution in ("global", "uniform"):
        oneshot = progprune.prune_to_sparsity(
            jax.tree.map(np.abs, params), 0.6, distribution=distribution
        )
        assert compare.oneshot_overlap(
            masks, params, 0.6, distribution=distribution
        ) == compare.jaccard(masks, jax.tree.map(np.asarray, oneshot))
    scores = jax.tree.map(np.abs, params)
    oneshot = jax.tree.map(np.asarray, progprune.prune_to_sparsity(scores, 0.6))
    assert compare.oneshot_overlap(oneshot, params, 0.6)["global"] == 1.0


def test_sparsity_trajectories_and_pruned_at_exact():
    history = [
        {"w": np.array([[1, 1, 1, 1]], bool), "b": np.array([1], bool)},
        {"w": np.array([[1, 0, 1, 1]], bool), "b": np.array([1], bool)},
        {"w": np.array([[0, 0, 1, 1]], bool), "b": np.array([1], bool)},
    ]
    traj = compare.sparsity_trajectories(history)
    assert set(traj) == {"w", "global"}
    np.testing.assert_array_equal(traj["w"], [0.0, 0.25, 0.5])
    at = compare.pruned_at(history)
    np.testing.assert_array_equal(at["w"], [[2, 1, 3, 3]])
    np.testing.assert_array_equal(at["b"], [3])
    with pytest.raises(ValueError, match="at least one"):
        compare.pruned_at([])


@jax.jit
def _prune(scores, sparsity, masks):
    return progprune.prune_to_sparsity(scores, sparsity, masks=masks)


@settings(max_examples=20, deadline=None)
@given(
    hnp.arrays(np.float32, (3, 7), elements=st.floats(-4, 4, width=32, allow_subnormal=False)),
    st.data(),
)
def test_pruned_at_inverts_a_shrinking_history(scores, data):
    # A shrinking history: ever higher sparsities of one ranking, as progressive pruning makes.
    levels = sorted(data.draw(st.lists(st.floats(0, 0.95), min_size=1, max_size=5)))
    history, masks = [], {"w": np.ones(scores.shape, bool)}
    for s in levels:
        masks = jax.tree.map(np.asarray, _prune({"w": np.abs(scores)}, s, masks))
        history.append(masks)
    at = compare.pruned_at(history)["w"]
    for k, m in enumerate(history):
        np.testing.assert_array_equal(m["w"], at > k)


def test_cut_statistics_exact_and_scoped_by_prunable():
    weights = {"a": np.array([[0.1, -0.4, 0.5, 3.0]]), "b": np.array([[0.2, 0.43, -2.0]])}
    old = {"a": np.array([[0, 1, 1, 1]], bool), "b": np.array([[1, 1, 1]], bool)}
    new = {"a": np.array([[0, 0, 1, 1]], bool), "b": np.array([[0, 1, 1]], bool)}
    # Newly pruned: 0.4 (a) and 0.2 (b); 0.1 was pruned before and does not count. Of the kept
    # 0.5, 3.0, 0.43, 2.0 only 0.43 is within 1.1 * 0.4.
    cut = compare.cut_statistics(weights, old, new)
    assert cut == compare.CutStats(2, 0.4, 0.43, pytest.approx(0.75), 1)
    # Only layer b: pruned 0.2; kept 0.43 and 2.0, both above 1.1 * 0.2.
    cut_b = compare.cut_statistics(weights, old, new, prunable="^b$")
    assert cut_b == compare.CutStats(1, 0.2, 0.43, 1.0, 0)
    same = compare.cut_statistics(weights, new, new)
    assert same.pruned == 0 and np.isnan(same.threshold) and same.kept_min == 0.43


# Subnormal weights are left out: XLA's CPU backend flushes them to zero, so the masks rank them
# as 0.0 while numpy does not.
@settings(max_examples=20, deadline=None)
@given(
    hnp.arrays(np.float32, (4, 6), elements=st.floats(-4, 4, width=32, allow_subnormal=False)),
    st.floats(0.05, 0.9),
)
def test_cut_of_a_magnitude_update_lies_below_every_kept_weight(w, s):
    dense = {"w": np.ones_like(w, bool)}
    masks = jax.tree.map(np.asarray, _prune({"w": np.abs(w)}, s, dense))
    cut = compare.cut_statistics({"w": w}, dense, masks)
    assert cut.pruned == round(s * w.size)
    if cut.pruned and cut.pruned < w.size:
        assert cut.threshold <= cut.kept_min
        assert 0.0 <= cut.pruned_median_ratio <= 1.0 or cut.threshold == 0.0


def test_docstring_examples():
    result = doctest.testmod(compare, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
