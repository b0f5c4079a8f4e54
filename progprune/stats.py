"""Sparsity statistics of mask or parameter trees."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from progprune.masks import check_masks
from progprune.prunable import Prunable, leaves_with_paths, prunable_mask

PyTree = Any

__all__ = ["mask_changes", "prunable_leaves", "sparsity_summary"]


def prunable_leaves(tree: PyTree, prunable: Prunable = None) -> list[tuple[str, Any]]:
    """``(path, leaf)`` of the prunable leaves of a mask tree or a parameter tree.

    Mask trees are bool, so the rule is applied to their shapes: by default the leaves of rank
    >= 2; a regex or predicate sees each leaf as float. Integer leaves are never prunable.

    Example:
      >>> [p for p, _ in prunable_leaves({"w": jnp.ones((2, 2), bool), "b": jnp.ones(2, bool)})]
      ['w']
    """
    flat, _ = leaves_with_paths(tree)
    if prunable is None:
        flags = [np.ndim(leaf) >= 2 for _, leaf in flat]
    else:
        as_float = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), tree)
        flags = jax.tree.leaves(prunable_mask(as_float, prunable))
    return [
        (path, leaf)
        for (path, leaf), chosen in zip(flat, flags, strict=True)
        if chosen and _bool_or_float(leaf)
    ]


def _bool_or_float(leaf: Any) -> bool:
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    return jnp.issubdtype(dtype, jnp.bool_) or jnp.issubdtype(dtype, jnp.floating)


def _zero_fraction_counts(tree: PyTree, prunable: Prunable) -> list[tuple[str, int, int]]:
    """``(path, zeros, size)`` for each prunable leaf; bool leaves count False as zero."""
    rows = []
    for path, leaf in prunable_leaves(tree, prunable):
        leaf = jnp.asarray(leaf)
        rows.append((path, int(jnp.sum(leaf == 0)), int(leaf.size)))
    return rows


def sparsity_summary(tree: PyTree, prunable: Prunable = None) -> dict[str, float]:
    """Fraction of pruned entries per prunable leaf and over all of them.

    Works on masks (False counts as pruned) and on params (exact zeros count as pruned).

    Args:
      tree: a mask tree or a parameter tree.
      prunable: which leaves to count (see :func:`progprune.prunable_mask`); by default the
        leaves of rank >= 2 (dense and conv kernels).

    Returns:
      ``{path: sparsity}`` for each prunable leaf and ``"global"``: the fraction over all prunable
      weights (0.0 if there are none).

    Example:
      >>> sparsity_summary({"w": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "b": jnp.zeros(2)})
      {'w': 0.75, 'global': 0.75}
    """
    rows = _zero_fraction_counts(tree, prunable)
    summary = {path: zeros / size if size else 0.0 for path, zeros, size in rows}
    total = sum(size for _, _, size in rows)
    summary["global"] = sum(zeros for _, zeros, _ in rows) / total if total else 0.0
    return summary


def mask_changes(old_masks: PyTree, new_masks: PyTree) -> dict[str, int]:
    """How many entries changed between two mask trees.

    Args:
      old_masks: earlier masks.
      new_masks: later masks, same structure.

    Returns:
      ``{"pruned": kept -> pruned, "revived": pruned -> kept, "changed": their sum}``.

    Example:
      >>> mask_changes({"w": jnp.array([True, True])}, {"w": jnp.array([True, False])})
      {'pruned': 1, 'revived': 0, 'changed': 1}
    """
    new_masks = check_masks(new_masks, old_masks, name="new_masks")
    pairs = zip(jax.tree.leaves(old_masks), jax.tree.leaves(new_masks), strict=True)
    pruned = revived = 0
    for old, new in pairs:
        old = jnp.asarray(old, bool)
        pruned += int(jnp.sum(old & ~new))
        revived += int(jnp.sum(~old & new))
    return {"pruned": pruned, "revived": revived, "changed": pruned + revived}
