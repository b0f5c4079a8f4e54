"""How a target sparsity is spread over layers: global, uniform, or ERK.

``global`` ranks all prunable weights together, so it needs one count; ``uniform`` and ``erk`` fix
a count per layer. Per-layer counts are computed with traced sparsity so that a schedule can drive
them under ``jit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from progprune.prunable import Prunable, leaves_with_paths, prunable_mask
from progprune.schedules import check_sparsity
from progprune.select import round_fraction

# The distributions that fix a density per layer (random masks need one of these).
PER_LAYER_DISTRIBUTIONS = ("uniform", "erk")
DISTRIBUTIONS = ("global", *PER_LAYER_DISTRIBUTIONS)

__all__ = [
    "DISTRIBUTIONS",
    "PER_LAYER_DISTRIBUTIONS",
    "check_distribution",
    "erk_densities",
    "layer_densities",
]


def check_distribution(distribution: str) -> str:
    """Raises a ValueError unless ``distribution`` is one of :data:`DISTRIBUTIONS`."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}."
        )
    return distribution


def _erk_raw(shape: Sequence[int]) -> float:
    # Evci et al. 2020: density proportional to (sum of dims) / (product of dims); for a dense
    # kernel (n_in + n_out)/(n_in n_out), for a conv kernel (h + w + c_in + c_out)/(h w c_in c_out).
    size = int(np.prod(shape))
    return float(sum(shape)) / size if size else 0.0


def layer_densities(
    shapes: Sequence[Sequence[int]], sparsity: jax.Array, distribution: str
) -> jax.Array:
    """Per-layer density (fraction kept) for ``uniform`` or ``erk``; float32 [num_layers].

    For ERK, layers whose density would exceed 1 are made dense and the scale is solved again
    for the rest, until no layer exceeds 1 (at most ``num_layers`` rounds).
    """
    check_distribution(distribution)
    sparsity = jnp.asarray(sparsity, jnp.float32)
    num = len(shapes)
    if distribution == "uniform" or num == 0:
        return jnp.full((num,), 1.0, jnp.float32) - sparsity
    sizes = jnp.asarray([float(np.prod(s)) for s in shapes], jnp.float32)
    raw = jnp.asarray([_erk_raw(s) for s in shapes], jnp.float32)
    kept_total = (1.0 - sparsity) * jnp.sum(sizes)

    def solve(dense):
        budget = kept_total - jnp.sum(jnp.where(dense, sizes, 0.0))
        weight = jnp.sum(jnp.where(dense, 0.0, raw * sizes))
        scale = budget / jnp.maximum(weight, 1e-30)
        return jnp.where(dense, 1.0, scale * raw)

    dense = jnp.zeros((num,), bool)
    for _ in range(num):
        dense = dense | (solve(dense) > 1.0)
    return jnp.clip(solve(dense), 0.0, 1.0)


def layer_counts(
    sizes: Sequence[int], shapes: Sequence[Sequence[int]], sparsity: jax.Array, distribution: str
) -> jax.Array:
    """Number of weights to prune per segment: one segment for global, one per layer otherwise."""
    if distribution == "global":
        return round_fraction(sparsity, int(sum(sizes)))[None]
    if distribution == "uniform":
        counts = [round_fraction(sparsity, n) for n in sizes]
        return jnp.stack(counts) if counts else jnp.zeros((0,), jnp.int32)
    densities = layer_densities(shapes, sparsity, distribution)
    counts = [round_fraction(1.0 - densities[i], n) for i, n in enumerate(sizes)]
    return jnp.stack(counts) if counts else jnp.zeros((0,), jnp.int32)


def erk_densities(params: Any, sparsity: float, prunable: Prunable = None) -> dict[str, float]:
    """ERK density (fraction of weights kept) of each prunable leaf at an overall sparsity.

    Args:
      params: pytree of arrays.
      sparsity: overall fraction of prunable weights to remove, in [0, 1).
      prunable: which leaves may be pruned (see :func:`progprune.prunable_mask`).

    Returns:
      ``{path: density}`` for the prunable leaves; layers that ERK would make denser than 1
      are dense (1.0).

    Example:
      >>> params = {"a": jnp.ones((100, 100)), "b": jnp.ones((100, 10))}
      >>> d = erk_densities(params, 0.9)
      >>> d["b"] > d["a"]
      True
    """
    sparsity = check_sparsity(sparsity, "sparsity")
    flat, _ = leaves_with_paths(params)
    chosen = jax.tree_util.tree_leaves(prunable_mask(params, prunable))
    picked = [(path, leaf) for (path, leaf), c in zip(flat, chosen, strict=True) if c]
    densities = layer_densities([leaf.shape for _, leaf in picked], sparsity, "erk")
    return {path: float(d) for (path, _), d in zip(picked, np.asarray(densities), strict=True)}
