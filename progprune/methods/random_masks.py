"""Random pruning at initialisation with prescribed per-layer densities.

The control for pruning-at-init methods: the same number of weights per layer as a chosen layer-wise
distribution (uniform, or ERK as in RigL), but *which* weights survive is random. The mask stays
fixed during training.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import progprune
from progprune.prunable import leaves_with_paths

PyTree = Any
DISTRIBUTIONS = ("uniform", "erk")


def layer_densities(
    params: PyTree, sparsity: float, *, distribution: str = "erk", prunable: Any = None
) -> list[float]:
    """Per-leaf densities (share of weights kept), in ``jax.tree.leaves(params)`` order.

    Non-prunable leaves get 1.0. ``"uniform"`` gives every prunable leaf ``1 - sparsity``;
    ``"erk"`` takes ``progprune.erk_densities``.

    >>> layer_densities({"b": jnp.zeros(3), "k": jnp.zeros((4, 5))}, 0.75, distribution="uniform")
    [1.0, 0.25]
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    is_prunable = jax.tree.leaves(progprune.prunable_mask(params, prunable))
    if distribution == "uniform":
        return [1.0 - sparsity if p else 1.0 for p in is_prunable]
    # erk_densities returns {path: density} for the prunable leaves only.
    erk = progprune.erk_densities(params, sparsity, prunable=prunable)
    paths = [path for path, _ in leaves_with_paths(params)[0]]
    return [float(erk[path]) if p else 1.0 for path, p in zip(paths, is_prunable, strict=True)]


def apportion(densities: list[float], sizes: list[int], total_keep: int) -> list[int]:
    """Integer keep-counts per leaf, each ``floor`` or ``ceil`` of ``density * size``, summing to
    ``total_keep`` (largest-remainder rounding), so the global sparsity is exact.

    >>> apportion([0.5, 0.5, 0.5], [3, 3, 3], 5)
    [2, 2, 1]
    """
    exact = np.asarray(densities, np.float64) * np.asarray(sizes)
    counts = np.clip(np.floor(exact + 1e-9), 0, sizes).astype(np.int64)
    # Hand out the missing (or take back the extra) units by fractional part; stable ties keep
    # earlier leaves first, so the result is deterministic.
    remainder = int(total_keep - counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    step = 1 if remainder > 0 else -1
    if remainder < 0:
        order = order[::-1]
    while remainder != 0:
        moved = False
        for i in order:
            if remainder == 0:
                break
            if 0 <= counts[i] + step <= sizes[i]:
                counts[i] += step
                remainder -= step
                moved = True
        if not moved:
            raise ValueError(f"cannot keep {total_keep} weights in leaves of sizes {sizes}")
    return counts.tolist()


def random_masks(
    rng: jax.Array,
    params: PyTree,
    sparsity: float,
    *,
    distribution: str = "erk",
    prunable: Any = None,
) -> PyTree:
    """Random masks with the per-leaf densities of ``distribution`` and exact global sparsity.

    Exactly ``round(sparsity * N)`` of the ``N`` prunable weights are pruned (as in
    ``progprune.prune_to_sparsity``); each prunable leaf keeps ``floor`` or ``ceil`` of
    ``density * size`` weights, at positions drawn uniformly at random (a permutation per leaf
    from ``jax.random.fold_in(rng, leaf_index)``). Non-prunable leaves are all-true.

    Args:
      rng: a PRNG key.
      params: the parameter pytree (only shapes and which leaves are prunable matter).
      sparsity: share of prunable weights to remove, in [0, 1).
      distribution: ``"erk"`` or ``"uniform"``.
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
    densities = layer_densities(params, sparsity, distribution=distribution, prunable=prunable)
    sizes = [int(np.size(x)) if p else 0 for x, p in zip(leaves, is_prunable, strict=True)]
    total = sum(sizes)
    counts = apportion(densities, sizes, total - round(sparsity * total))
    masks = []
    for i, (leaf, p, k) in enumerate(zip(leaves, is_prunable, counts, strict=True)):
        if not p:
            masks.append(jnp.ones(jnp.shape(leaf), bool))
            continue
        order = jax.random.permutation(jax.random.fold_in(rng, i), np.size(leaf))
        flat = jnp.zeros(np.size(leaf), bool).at[order[:k]].set(True)
        masks.append(flat.reshape(jnp.shape(leaf)))
    return jax.tree.unflatten(treedef, masks)
