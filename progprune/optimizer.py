"""``masked``: an optax wrapper that trains a sparse network and prunes it progressively."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from progprune.distributions import check_distribution
from progprune.masks import _prune, all_true_masks, check_masks
from progprune.prunable import Prunable, prunable_mask
from progprune.schedules import Schedule

PyTree = Any

__all__ = ["MaskedPruningState", "get_masks", "masked", "set_masks"]


class MaskedPruningState(NamedTuple):
    """State of :func:`masked`.

    Attributes:
      count: number of updates applied so far (int32); the step the schedule is evaluated at.
      sparsity: the scheduled sparsity the current masks were computed for (float32).
      masks: pytree of bool arrays shaped like the params; False = pruned.
      inner_state: state of the wrapped optimizer.
    """

    count: jax.Array
    sparsity: jax.Array
    masks: PyTree
    inner_state: optax.OptState


def masked(
    inner: optax.GradientTransformation,
    schedule: Schedule | None,
    *,
    update_every: int = 1,
    distribution: str = "global",
    prunable: Prunable = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that training prunes the network progressively by weight magnitude.

    At every ``update_every``-th update while ``schedule`` rises, the masks are recomputed from
    the magnitudes of the active weights (ranked over all prunable leaves for ``"global"``) so
    that exactly ``round(schedule(count) * N)`` prunable weights are pruned; masks only shrink.
    Gradients are masked before ``inner`` sees them (its momentum and second moments of pruned
    weights receive nothing), and for pruned entries the update is ``-w``, so after
    ``optax.apply_updates`` pruned weights are exactly 0.0 with no second call.

    This is not ``optax.masked``: that one applies ``inner`` to the leaves a static mask selects
    and passes the other leaves' updates through untouched. Here masks are element-wise, change
    during training, and pruned entries are zeroed rather than left alone.

    Args:
      inner: the optimizer to wrap (any optax transformation, e.g. with weight decay).
      schedule: ``step -> sparsity`` (see :func:`progprune.linear_schedule`), or ``None`` for
        fixed masks, all True at init and set with :func:`progprune.set_masks`.
      update_every: recompute masks every this many updates (>= 1).
      distribution: ``"global"``, ``"uniform"`` or ``"erk"``.
      prunable: which leaves may be pruned (see :func:`progprune.prunable_mask`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``, and passes
      extra keyword arguments to ``inner``. Its state is a :class:`MaskedPruningState`.

    Example:
      >>> import optax
      >>> tx = masked(optax.sgd(0.1), linear_schedule(0.5, 0, 10), update_every=5)
      >>> params = {"w": jnp.arange(1.0, 5.0).reshape(2, 2)}
      >>> state = tx.init(params)
      >>> for _ in range(11):
      ...     updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> get_masks(state)["w"].tolist()
      [[False, False], [True, True]]
    """
    if int(update_every) != update_every or update_every < 1:
        raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}.")
    check_distribution(distribution)
    if schedule is not None and not callable(schedule):
        raise ValueError(f"schedule must be a function step -> sparsity or None, got {schedule!r}.")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> MaskedPruningState:
        if schedule is not None:
            prunable_mask(params, prunable)  # fail early if nothing can be pruned
        return MaskedPruningState(
            count=jnp.zeros([], jnp.int32),
            sparsity=jnp.zeros([], jnp.float32),
            masks=all_true_masks(params),
            inner_state=inner.init(params),
        )

    def refresh(params, state):
        if schedule is None:
            return state.masks, state.sparsity
        target = jnp.asarray(schedule(state.count), jnp.float32)
        due = (state.count % update_every == 0) & (target > state.sparsity)

        def recompute():
            # Scores are built inside the branch so steps without an update never pay for them.
            flags = jax.tree.leaves(prunable_mask(params, prunable))
            scores = jax.tree.map(jnp.abs, params)
            return _prune(scores, target, state.masks, distribution, flags)

        masks = lax.cond(due, recompute, lambda: state.masks)
        return masks, jnp.where(due, target, state.sparsity)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "progprune.masked needs the params to prune: call tx.update(grads, opt_state, "
                "params)."
            )
        masks, sparsity = refresh(params, state)
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, masks)
        inner_updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
        # -w for pruned entries: apply_updates then leaves them exactly 0, whatever inner did.
        new_updates = jax.tree.map(
            lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), inner_updates, params, masks
        )
        new_state = MaskedPruningState(
            count=optax.safe_int32_increment(state.count),
            sparsity=sparsity,
            masks=masks,
            inner_state=inner_state,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _is_state(x: Any) -> bool:
    return isinstance(x, MaskedPruningState)


def _find_states(opt_state: PyTree) -> list[MaskedPruningState]:
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_state) if _is_state(x)]
    if not found:
        raise ValueError(
            "opt_state holds no MaskedPruningState: build the optimizer with progprune.masked(...)."
        )
    if len(found) > 1:
        raise ValueError("opt_state holds several MaskedPruningStates; pass the one you mean.")
    return found


def get_masks(opt_state: PyTree) -> PyTree:
    """The current masks inside an optimizer state built with :func:`masked`.

    The state may be nested in other optax states (``optax.MultiSteps``, ``optax.chain``, ...).

    Args:
      opt_state: the optimizer state.

    Returns:
      The pytree of bool masks (True = kept), shaped like the params.

    Example:
      >>> import optax
      >>> tx = masked(optax.sgd(0.1), None)
      >>> get_masks(tx.init({"w": jnp.ones((2, 2))}))["w"].tolist()
      [[True, True], [True, True]]
    """
    return _find_states(opt_state)[0].masks


def set_masks(opt_state: PyTree, masks: PyTree) -> PyTree:
    """Returns ``opt_state`` with its masks replaced (for fixed masks: SNIP, GraSP, IMP, random).

    Weights that the new masks prune become exactly 0 at the next update.

    Args:
      opt_state: an optimizer state built with :func:`masked`, possibly nested.
      masks: pytree of bools with the structure and shapes of the current masks.

    Returns:
      The new optimizer state.

    Raises:
      ValueError: if ``masks`` does not match the structure or shapes of the current masks.

    Example:
      >>> import optax
      >>> state = masked(optax.sgd(0.1), None).init({"w": jnp.ones(2)})
      >>> state = set_masks(state, {"w": jnp.array([True, False])})
      >>> get_masks(state)["w"].tolist()
      [True, False]
    """
    current = _find_states(opt_state)[0]
    new_masks = check_masks(masks, current.masks)
    return jax.tree.map(
        lambda x: x._replace(masks=new_masks) if _is_state(x) else x, opt_state, is_leaf=_is_state
    )
