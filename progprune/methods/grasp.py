"""GraSP: prune at initialisation preserving gradient flow (Wang, Zhang & Grosse, 2020).

GraSP looks at how removing weights changes the gradient norm ``g^T g`` after one step. To first
order, removing the perturbation ``delta = -theta`` (i.e. zeroing weights) changes it by
``2 * delta^T H g``, so the paper scores each weight with

    S(-theta) = -theta ⊙ (H g),

``g`` the loss gradient and ``H`` the loss Hessian at initialisation. A *large* score means that
removing the weight *reduces* the gradient flow *least* (or increases it), so GraSP removes the
weights with the **highest** scores and keeps the lowest (paper, Algorithm 1: keep ``S < tau``
with ``tau`` the ``(1 - p)``-th percentile; the reference code `pruner/GraSP.py` keeps
``score <= threshold`` where ``threshold`` is the smallest of the ``top-k`` scores it removes).
Unlike SNIP there is no absolute value: the sign matters.

``H g`` is a Hessian-vector product, computed forward-over-reverse: ``jax.jvp`` of ``jax.grad``
along ``g``, never forming ``H``.

The reference implementation divides the logits by a temperature ``T = 200`` before the loss, to
keep the softmax from saturating; pass such a ``loss_fn`` if you want that (``grasp_masks`` uses
whatever loss it is given).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

import progprune
from progprune.methods.snip import mean_gradient

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]


def hessian_vector_product(loss_fn: LossFn, params: PyTree, batch: Any, vector: PyTree) -> PyTree:
    """``H v`` for the Hessian ``H`` of ``loss_fn(., batch)`` at ``params`` (forward-over-reverse).

    >>> loss = lambda p, b: jnp.sum(p["w"] ** 3) * b
    >>> hessian_vector_product(loss, {"w": jnp.array([1.0, 2.0])}, 1.0, {"w": jnp.ones(2)})["w"]
    Array([ 6., 12.], dtype=float32)
    """
    grad_fn = lambda p: jax.grad(loss_fn)(p, batch)
    return jax.jvp(grad_fn, (params,), (vector,))[1]


def grasp_scores(loss_fn: LossFn, params: PyTree, batches: Sequence[Any]) -> PyTree:
    """GraSP scores ``-theta ⊙ (H g)``; the **highest** scores are the ones GraSP prunes.

    With several batches, ``g`` is the gradient of the mean loss and ``H`` the Hessian of the mean
    loss, so ``H g = mean_b H_b g`` (accumulated one batch at a time). Any positive rescaling of the
    scores (the reference code sums instead of averaging, and divides by ``|sum(S)|``) leaves the
    ranking unchanged.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: parameters at initialisation.
      batches: a non-empty sequence of batches.

    Returns:
      A pytree shaped like ``params`` with ``-params * (H g)``.

    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p["w"] ** 2)  # H = diag(b), g = b * w
    >>> grasp_scores(loss, {"w": jnp.array([1.0, 2.0])}, [jnp.array([1.0, 3.0])])["w"]
    Array([ -1., -36.], dtype=float32)
    """
    grads = jax.lax.stop_gradient(mean_gradient(loss_fn, params, batches))
    hvp = jax.jit(lambda p, b, v: hessian_vector_product(loss_fn, p, b, v))
    total = hvp(params, batches[0], grads)
    for batch in batches[1:]:
        total = jax.tree.map(jnp.add, total, hvp(params, batch, grads))
    return jax.tree.map(lambda w, hg: -w * hg / len(batches), params, total)


def grasp_masks(
    loss_fn: LossFn,
    params: PyTree,
    batches: Sequence[Any],
    sparsity: float,
    *,
    prunable: Any = None,
) -> PyTree:
    """GraSP masks: the ``sparsity`` share of prunable weights with the highest GraSP score pruned.

    ``progprune.prune_to_sparsity`` prunes the lowest scores, so it is given ``-score``. The count
    pruned is exact and the ranking global over prunable leaves; other leaves stay all-true.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: parameters at initialisation.
      batches: batches for ``g`` and ``H g``.
      sparsity: share of prunable weights to remove, in [0, 1).
      prunable: which leaves may be pruned (see ``progprune.prunable_mask``).

    Returns:
      A pytree of bool arrays shaped like ``params``.

    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p["w"] ** 2)  # score = -w * H g = -b**2 w**2
    >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    >>> grasp_masks(loss, params, [jnp.ones((2, 2))], 0.5)["w"].tolist()  # the highest go
    [[False, True], [False, True]]
    """
    scores = grasp_scores(loss_fn, params, batches)
    return progprune.prune_to_sparsity(
        jax.tree.map(jnp.negative, scores), sparsity, prunable=prunable
    )
