"""SNIP: prune at initialisation by connection sensitivity (Lee et al., 2019).

The sensitivity of weight ``w_j`` is the derivative of the loss with respect to a multiplicative
gate ``c_j`` on it, taken at ``c = 1``: ``dL/dc_j = w_j * dL/dw_j``. SNIP keeps the weights with the
largest ``|w_j * dL/dw_j|`` and prunes the rest, once, before training; the mask then stays fixed.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

import progprune

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]


def mean_gradient(loss_fn: LossFn, params: PyTree, batches: Sequence[Any]) -> PyTree:
    """Gradient of the mean of ``loss_fn`` over ``batches`` (one gradient per batch, averaged).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: the parameter pytree.
      batches: a non-empty sequence of batches, e.g. ``(x, y)`` pairs.

    Returns:
      A pytree shaped like ``params``.

    >>> loss = lambda p, b: jnp.sum(p["w"] * b)
    >>> mean_gradient(loss, {"w": jnp.ones(2)}, [jnp.ones(2), 3 * jnp.ones(2)])["w"]
    Array([2., 2.], dtype=float32)
    """
    if not batches:
        raise ValueError("batches must hold at least one batch")
    grad_fn = jax.jit(jax.grad(loss_fn))
    total = grad_fn(params, batches[0])
    for batch in batches[1:]:
        total = jax.tree.map(jnp.add, total, grad_fn(params, batch))
    return jax.tree.map(lambda g: g / len(batches), total)


def snip_scores(loss_fn: LossFn, params: PyTree, batches: Sequence[Any]) -> PyTree:
    """Connection sensitivity ``|w * g|``, ``g`` the gradient of the mean loss over ``batches``.

    The gradient is averaged over batches before the absolute value, as if the batches were one
    large batch (the reference implementation accumulates gradients the same way). The common
    normalisation by the sum of all scores does not change the ranking and is left out.

    >>> loss = lambda p, b: jnp.sum(p["w"] ** 2 * b)
    >>> snip_scores(loss, {"w": jnp.array([1.0, -2.0])}, [jnp.ones(2)])["w"]
    Array([2., 8.], dtype=float32)
    """
    grads = mean_gradient(loss_fn, params, batches)
    return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)


def snip_masks(
    loss_fn: LossFn,
    params: PyTree,
    batches: Sequence[Any],
    sparsity: float,
    *,
    prunable: Any = None,
) -> PyTree:
    """SNIP masks: the ``sparsity`` share of prunable weights with the lowest ``|w * g|`` pruned.

    Ranking is global over all prunable leaves; the count pruned is exact (see
    ``progprune.prune_to_sparsity``). Non-prunable leaves get all-true masks.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (the training loss, e.g. cross-entropy).
      params: parameters at initialisation.
      batches: batches to take the gradient on (SNIP uses one; more lower its variance).
      sparsity: share of prunable weights to remove, in [0, 1).
      prunable: which leaves may be pruned (see ``progprune.prunable_mask``).

    Returns:
      A pytree of bool arrays shaped like ``params``.

    >>> loss = lambda p, x: jnp.sum((x @ p["w"]) ** 2)  # |w * g| = [[3, 4], [1.5, 6]]
    >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    >>> snip_masks(loss, params, [jnp.ones((1, 2))], 0.5)["w"].tolist()
    [[False, True], [False, True]]
    """
    scores = snip_scores(loss_fn, params, batches)
    return progprune.prune_to_sparsity(scores, sparsity, prunable=prunable)
