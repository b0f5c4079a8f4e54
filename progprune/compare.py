"""Comparing masks: overlaps between methods and over time, and what each mask update cut.

Pure functions of mask and weight trees (host numpy in, Python floats out), for analysing the
records a run writes (``progprune.train.records``) or any masks at hand. Overlaps are per
prunable leaf and ``"global"`` (over all prunable weights), like `progprune.sparsity_summary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

from progprune.masks import prune_to_sparsity
from progprune.prunable import Prunable
from progprune.stats import prunable_leaves, sparsity_summary

PyTree = Any

__all__ = [
    "CutStats",
    "chance_jaccard",
    "cut_statistics",
    "jaccard",
    "oneshot_overlap",
    "pruned_at",
    "sparsity_trajectories",
]


def _pairs(a: PyTree, b: PyTree, prunable: Prunable) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(path, a_leaf, b_leaf)`` as flat bool arrays for the prunable leaves of `a`."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(
            "the two mask trees must have the same structure (e.g. both loaded with "
            f"load_mask_history, or both shaped like the params).\n  a: {jax.tree.structure(a)}"
            f"\n  b: {jax.tree.structure(b)}"
        )
    paths = dict(prunable_leaves(b, prunable))
    return [
        (path, np.ravel(np.asarray(x, bool)), np.ravel(np.asarray(paths[path], bool)))
        for path, x in prunable_leaves(a, prunable)
    ]


def _ratio(num: float, den: float) -> float:
    # Two empty sets are the same set: overlap 1.
    return num / den if den else 1.0


def jaccard(a: PyTree, b: PyTree, prunable: Prunable = None) -> dict[str, float]:
    """Jaccard overlap of the kept weights of two masks: ``|a & b| / |a | b|``.

    Args:
      a: a mask tree (True = kept).
      b: a mask tree with the structure of `a`.
      prunable: which leaves count (see `progprune.sparsity_summary`); by default rank >= 2.

    Returns:
      ``{path: overlap}`` per prunable leaf and ``"global"`` over all of them; 1.0 where both
      masks keep nothing.

    Example:
      >>> a = {"w": np.array([[True, True], [False, False]])}
      >>> b = {"w": np.array([[True, False], [True, False]])}
      >>> jaccard(a, b)
      {'w': 0.3333333333333333, 'global': 0.3333333333333333}
    """
    out, both, either = {}, 0, 0
    for path, x, y in _pairs(a, b, prunable):
        i, u = int(np.sum(x & y)), int(np.sum(x | y))
        out[path] = _ratio(i, u)
        both, either = both + i, either + u
    out["global"] = _ratio(both, either)
    return out


def chance_jaccard(a: PyTree, b: PyTree, prunable: Prunable = None) -> dict[str, float]:
    """The Jaccard overlap expected of random masks with the densities of `a` and `b`.

    Per leaf with densities ``p`` and ``q`` (kept shares) it is ``pq / (p + q - pq)``; globally
    the ratio of the expected intersection and union summed over leaves. It is the floor against
    which an overlap says the two masks agree more than their layer densities alone would make
    them.

    Example:
      >>> a = {"w": np.array([True, True, False, False])[None]}
      >>> chance_jaccard(a, a)
      {'w': 0.3333333333333333, 'global': 0.3333333333333333}
    """
    out, both, either = {}, 0.0, 0.0
    for path, x, y in _pairs(a, b, prunable):
        n = x.size
        p, q = (float(np.mean(x)), float(np.mean(y))) if n else (0.0, 0.0)
        i, u = n * p * q, n * (p + q - p * q)
        out[path] = _ratio(i, u)
        both, either = both + i, either + u
    out["global"] = _ratio(both, either)
    return out


def oneshot_overlap(
    masks: PyTree,
    params: PyTree,
    sparsity: ArrayLike,
    *,
    distribution: str = "global",
    prunable: Prunable = None,
) -> dict[str, float]:
    """Jaccard overlap of `masks` with one-shot magnitude pruning of `params` to `sparsity`.

    With `masks` a run's final mask and `params` its weights at some earlier step, this says how
    much of the final mask was already decided then: 1.0 means pruning those weights straight
    to the final sparsity would have given the final mask.

    Args:
      masks: a mask tree (e.g. the final mask of a run).
      params: a weight tree with the structure of `masks`.
      sparsity: the one-shot target, in [0, 1).
      distribution: how the one-shot mask spreads sparsity: global | uniform | erk.
      prunable: which leaves are pruned and compared (see `progprune.prune_to_sparsity`).

    Returns:
      `jaccard` of the two masks, per prunable leaf and ``"global"``.

    Example:
      >>> final = {"w": np.array([[True, False], [False, True]])}
      >>> oneshot_overlap(final, {"w": np.array([[3.0, 1.0], [2.0, 4.0]])}, 0.5)["global"]
      1.0
      >>> oneshot_overlap(final, {"w": np.array([[3.0, 2.0], [1.0, 0.5]])}, 0.5)["global"]
      0.3333333333333333
    """
    scores = jax.tree.map(lambda w: np.abs(np.asarray(w, np.float32)), params)
    oneshot = _oneshot(scores, sparsity, distribution=distribution, prunable=prunable)
    return jaccard(masks, jax.tree.map(np.asarray, oneshot), prunable)


# Jitted once per tree structure: a run's records are compared one after another.
_oneshot = jax.jit(prune_to_sparsity, static_argnames=("distribution", "prunable"))


def sparsity_trajectories(
    masks: Sequence[PyTree], prunable: Prunable = None
) -> dict[str, np.ndarray]:
    """Sparsity of each prunable leaf, and ``"global"``, along a sequence of masks.

    Example:
      >>> history = [{"w": np.array([[True, True]])}, {"w": np.array([[True, False]])}]
      >>> sparsity_trajectories(history)["w"].tolist()
      [0.0, 0.5]
    """
    rows = [sparsity_summary(m, prunable) for m in masks]
    return {key: np.array([r[key] for r in rows]) for key in (rows[0] if rows else {})}


def pruned_at(masks: Sequence[PyTree]) -> PyTree:
    """For each weight, the index of the first mask in `masks` that prunes it (``len`` if none).

    Args:
      masks: mask trees of one structure, oldest first (e.g. ``load_mask_history(...).masks``).

    Returns:
      A tree of int arrays with the masks' structure.

    Example:
      >>> history = [{"w": np.array([True, True, True])}, {"w": np.array([True, False, True])},
      ...            {"w": np.array([False, False, True])}]
      >>> pruned_at(history)["w"].tolist()
      [2, 1, 3]
    """
    if not masks:
        raise ValueError("pruned_at needs at least one mask tree.")

    def first_pruned(*leaves):
        dropped = ~np.stack([np.asarray(m, bool) for m in leaves])
        return np.where(dropped.any(0), dropped.argmax(0), len(leaves))

    return jax.tree.map(first_pruned, *masks)


class CutStats(NamedTuple):
    """What one mask update cut (see `cut_statistics`).

    Attributes:
      pruned: weights newly pruned by the update.
      threshold: the largest magnitude pruned (the cut); NaN if nothing was pruned.
      kept_min: the smallest magnitude kept; NaN if nothing was kept.
      pruned_median_ratio: median magnitude of the newly pruned weights over `threshold`: near
        1 the update cut through a dense band of similar weights, near 0 it removed weights far
        below the cut.
      near_kept: kept weights within ``(1 + margin) * threshold``: how many more an update whose
        cut was ``margin`` higher would have taken.
    """

    pruned: int
    threshold: float
    kept_min: float
    pruned_median_ratio: float
    near_kept: int


def cut_statistics(
    weights: PyTree,
    old_masks: PyTree,
    new_masks: PyTree,
    *,
    prunable: Prunable = None,
    margin: float = 0.1,
) -> CutStats:
    """What the mask update from `old_masks` to `new_masks`, ranking `weights`, cut.

    Pools every prunable leaf (the scope of a global ranking); pass a `prunable` regex naming
    one layer for that layer alone.

    Args:
      weights: the weights the update ranked (e.g. ``history.weights[k]`` with
        ``old_masks=history.masks[k]`` and ``new_masks=history.masks[k + 1]``).
      old_masks: the masks before the update.
      new_masks: the masks after it.
      prunable: which leaves are pooled.
      margin: the relative band above the cut counted in ``near_kept``.

    Returns:
      A `CutStats`.

    Example:
      >>> w = {"w": np.array([[0.1, 0.5, 0.52, 2.0]])}
      >>> old = {"w": np.array([[True, True, True, True]])}
      >>> new = {"w": np.array([[False, False, True, True]])}
      >>> cut_statistics(w, old, new)
      CutStats(pruned=2, threshold=0.5, kept_min=0.52, pruned_median_ratio=0.6, near_kept=1)
    """
    flat_w = dict(prunable_leaves(weights, prunable))
    pruned, kept = [], []
    for path, old, new in _pairs(old_masks, new_masks, prunable):
        magnitude = np.abs(np.ravel(np.asarray(flat_w[path], np.float64)))
        pruned.append(magnitude[old & ~new])
        kept.append(magnitude[new])
    pruned_w, kept_w = np.concatenate(pruned or [[]]), np.concatenate(kept or [[]])
    if not pruned_w.size:
        return CutStats(0, float("nan"), _min(kept_w), float("nan"), 0)
    t = float(pruned_w.max())
    ratio = float(np.median(pruned_w) / t) if t > 0 else float("nan")
    near = int(np.sum(kept_w <= (1.0 + margin) * t))
    return CutStats(int(pruned_w.size), t, _min(kept_w), ratio, near)


def _min(x: np.ndarray) -> float:
    return float(x.min()) if x.size else float("nan")
