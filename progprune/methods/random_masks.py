"""Random pruning at initialisation with the per-layer densities of a core distribution.

The control for pruning-at-init methods: each layer keeps as many weights as a layer-wise
distribution of the core prescribes (``"uniform"`` or ``"erk"``, see
``progprune.distributions``), but *which* weights survive is random. The mask stays fixed during
training. Counts are the core's: each layer keeps exactly as many weights as
``prune_to_sparsity`` with the same distribution keeps there.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import progprune
from progprune.distributions import PER_LAYER_DISTRIBUTIONS, layer_counts
from progprune.schedules import check_sparsity

PyTree = Any


def keep_counts(shapes: Sequence[Sequence[int]], sparsity: float, distribution: str) -> list[int]:
    """Weights each prunable leaf keeps, from the leaves' shapes alone.

    The core's own per-layer counts (``progprune.distributions.layer_counts``): each layer
    keeps exactly as many weights as ``progprune.prune_to_sparsity`` with the same
    ``distribution`` keeps there, so random masks differ from magnitude masks only in *which*
    weights survive.

    >>> keep_counts([(4, 5), (10,)], 0.5, "uniform")
    [10, 5]
    """
    check_sparsity(sparsity, "sparsity")
    if distribution not in PER_LAYER_DISTRIBUTIONS:
        raise ValueError(
            f"random masks need a per-layer distribution, one of "
            f"{', '.join(PER_LAYER_DISTRIBUTIONS)}; got {distribution!r}."
        )
    sizes = [int(np.prod(s)) for s in shapes]
    pruned = layer_counts(sizes, shapes, jnp.float32(sparsity), distribution)
    return [n - int(k) for n, k in zip(sizes, np.asarray(pruned), strict=True)]


def random_masks(
    rng: jax.Array,
    params: PyTree,
    sparsity: float,
    *,
    distribution: str = "erk",
    prunable: Any = None,
) -> PyTree:
    """Random masks with the per-layer counts of ``distribution``.

    Each prunable leaf keeps :func:`keep_counts` weights (as many as
    ``progprune.prune_to_sparsity`` keeps there with the same distribution), at positions drawn
    uniformly at random (a permutation per leaf from ``jax.random.fold_in(rng, leaf_index)``).
    Non-prunable leaves are all-true.

    Args:
      rng: a PRNG key.
      params: the parameter pytree (only shapes and which leaves are prunable matter).
      sparsity: share of prunable weights to remove, in [0, 1).
      distribution: one of ``progprune.distributions.PER_LAYER_DISTRIBUTIONS``: ``"erk"`` or
        ``"uniform"``.
      prunable: which leaves may be pruned (see ``progprune.prunable_mask``).

    Returns:
      A pytree of bool arrays shaped like ``params``.

    >>> params = {"b": jnp.zeros(5), "k": jnp.zeros((4, 5))}
    >>> masks = random_masks(jax.random.key(0), params, 0.75, distribution="uniform")
    >>> int((~masks["k"]).sum()), bool(masks["b"].all())
    (15, True)
    """
    leaves, treedef = jax.tree.flatten(params)
    is_prunable = jax.tree.leaves(progprune.prunable_mask(params, prunable))
    shapes = [np.shape(x) for x, p in zip(leaves, is_prunable, strict=True) if p]
    counts = iter(keep_counts(shapes, sparsity, distribution))
    masks = []
    for i, (leaf, p) in enumerate(zip(leaves, is_prunable, strict=True)):
        if not p:
            masks.append(jnp.ones(jnp.shape(leaf), bool))
            continue
        order = jax.random.permutation(jax.random.fold_in(rng, i), np.size(leaf))
        flat = jnp.zeros(np.size(leaf), bool).at[order[: next(counts)]].set(True)
        masks.append(flat.reshape(jnp.shape(leaf)))
    return jax.tree.unflatten(treedef, masks)
