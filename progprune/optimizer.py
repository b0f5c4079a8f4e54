"""``masked``: an optax wrapper that trains a sparse network and prunes it progressively."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from progprune.distributions import check_distribution
from progprune.masks import _is_concrete, _prune, all_true_masks, check_masks, valid_sparsity
from progprune.prunable import Prunable, prunable_mask
from progprune.schedules import Schedule, bad_sparsity_message, check_schedule
from progprune.select import count_true

PyTree = Any

__all__ = [
    "MaskedPruningState",
    "PruningFaults",
    "check_pruning",
    "get_masks",
    "masked",
    "set_masks",
]


class PruningFaults(NamedTuple):
    """What :func:`masked` found wrong under ``jit``, recorded for :func:`check_pruning`.

    Only the first fault is kept; a healthy state keeps the initial values.

    Attributes:
      bad_sparsity_step: the first step (update count) at which the schedule returned a value
        outside [0, 1) (NaN included), or -1. Masks are not updated at such a step.
      bad_sparsity: that value (float32).
    """

    bad_sparsity_step: jax.Array
    bad_sparsity: jax.Array


def _no_faults() -> PruningFaults:
    # Fresh arrays: a training step that donates its state cannot donate one buffer twice.
    return PruningFaults(jnp.full([], -1, jnp.int32), jnp.zeros([], jnp.float32))


class MaskedPruningState(NamedTuple):
    """State of :func:`masked`.

    Attributes:
      count: number of updates applied so far (int32); the step the schedule is evaluated at.
      sparsity: the scheduled sparsity the current masks were computed for (float32).
      masks: pytree of bool arrays shaped like the params; False = pruned.
      inner_state: state of the wrapped optimizer.
      zeroed_from: the update count from which every pruned weight of the params is 0.0 (an
        update zeroes them; masks set with :func:`set_masks` take effect at the next one);
        :func:`check_pruning` checks params against it (int32).
      faults: what went wrong so far (see :class:`PruningFaults` and :func:`check_pruning`).
    """

    count: jax.Array
    sparsity: jax.Array
    masks: PyTree
    inner_state: optax.OptState
    zeroed_from: jax.Array
    faults: PruningFaults


def is_update_step(count: Any, update_every: int) -> Any:
    """Whether the update taken at ``count`` (updates done before it) recomputes the masks.

    The one rule for when masks may change (they do if the schedule has also risen): ``masked``
    applies it to its traced count, and host code (the trainer's logging, mask records) asks it
    with a Python int instead of re-deriving it.

    >>> is_update_step(20, 10), is_update_step(25, 10)
    (True, False)
    """
    return count % update_every == 0


def _check_inner(inner: Any) -> None:
    if callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None)):
        return
    if callable(inner):
        name = getattr(inner, "__qualname__", repr(inner))
        raise ValueError(
            f"inner must be an optax transformation, got the function {name} that builds one: "
            f"call it with its hyperparameters, e.g. masked(optax.sgd(0.1), schedule), not "
            "masked(optax.sgd, schedule)."
        )
    raise ValueError(
        f"inner must be an optax transformation such as optax.sgd(0.1), got {inner!r}."
    )


def _record_bad_sparsity(
    faults: PruningFaults, step: jax.Array, target: jax.Array, valid: jax.Array
) -> PruningFaults:
    """``faults`` with a schedule value outside [0, 1), if it is the first."""
    first = ~valid & (faults.bad_sparsity_step < 0)
    return faults._replace(
        bad_sparsity_step=jnp.where(first, step, faults.bad_sparsity_step),
        bad_sparsity=jnp.where(first, target, faults.bad_sparsity),
    )


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

    That holds only if ``masked`` is the last transformation: ``optax.chain(masked(sgd, s),
    optax.scale(0.5))`` halves the ``-w`` and leaves pruned weights at half their value; put
    the others inside, ``masked(optax.chain(sgd, optax.scale(0.5)), s)``. A pruned weight that
    is NaN or inf stays so, since ``apply_updates`` adds the update (NaN + u is NaN).
    :func:`check_pruning` with the params detects both. A schedule value outside [0, 1) leaves
    the masks as they are and is recorded in the state's ``faults`` (nothing can be raised
    inside ``jit``); :func:`check_pruning` raises on it.

    This is not ``optax.masked``: that one applies ``inner`` to the leaves a static mask selects
    and passes the other leaves' updates through untouched. Here masks are element-wise, change
    during training, and pruned entries are zeroed rather than left alone.

    Args:
      inner: the optimizer to wrap (any optax transformation, e.g. with weight decay).
      schedule: ``step -> sparsity`` (see :func:`progprune.linear_schedule`), or ``None`` for
        fixed masks, all True at init and set with :func:`progprune.set_masks`. It is checked
        at a few steps here (see ``progprune.schedules.check_schedule``).
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
      >>> check_pruning(state, params)  # raises if pruning went wrong
    """
    _check_inner(inner)
    if int(update_every) != update_every or update_every < 1:
        raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}.")
    check_distribution(distribution)
    if schedule is not None:
        check_schedule(schedule)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> MaskedPruningState:
        if schedule is not None:
            prunable_mask(params, prunable)  # fail early if nothing can be pruned
        return MaskedPruningState(
            count=jnp.zeros([], jnp.int32),
            sparsity=jnp.zeros([], jnp.float32),
            masks=all_true_masks(params),
            inner_state=inner.init(params),
            zeroed_from=jnp.zeros([], jnp.int32),
            faults=_no_faults(),
        )

    def scheduled(state):
        """The schedule's sparsity, whether it is one (in [0, 1)), and whether masks are due."""
        if schedule is None:
            return state.sparsity, jnp.bool_(True), jnp.bool_(False)
        target = jnp.asarray(schedule(state.count), jnp.float32)
        valid = valid_sparsity(target)
        due = is_update_step(state.count, update_every) & valid & (target > state.sparsity)
        return target, valid, due

    def refresh(params, state, target, due):
        if schedule is None:
            return state.masks

        def recompute():
            # Scores are built inside the branch so steps without an update never pay for them.
            # Nothing else sits in this branch: XLA's CPU runtime pays at every step for what an
            # untaken branch holds (a pruned-weight count here cost ~4 ms a step on a
            # ResNet-18-sized tree), which is why check_pruning counts on the host instead.
            flags = jax.tree.leaves(prunable_mask(params, prunable))
            scores = jax.tree.map(jnp.abs, params)
            return _prune(scores, target, state.masks, distribution, flags)

        return lax.cond(due, recompute, lambda: state.masks)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "progprune.masked needs the params to prune: call tx.update(grads, opt_state, "
                "params)."
            )
        target, valid, due = scheduled(state)
        masks = refresh(params, state, target, due)
        faults = _record_bad_sparsity(state.faults, state.count, target, valid)
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, masks)
        inner_updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
        # -w for pruned entries: apply_updates then leaves them exactly 0, whatever inner did.
        new_updates = jax.tree.map(
            lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), inner_updates, params, masks
        )
        new_state = MaskedPruningState(
            count=optax.safe_int32_increment(state.count),
            sparsity=jnp.where(due, target, state.sparsity),
            masks=masks,
            inner_state=inner_state,
            zeroed_from=state.zeroed_from,
            faults=faults,
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


def _restart_revived(
    tx: optax.GradientTransformation, opt_state: PyTree, state: MaskedPruningState, revived: PyTree
) -> optax.OptState:
    """``state.inner_state`` with the revived entries of its param-shaped leaves set to the
    values ``tx.init`` gives them (momentum and Adam's moments: 0), as for a new weight."""
    zeros = jax.tree.map(lambda m: jnp.zeros(jnp.shape(m), jnp.float32), revived)
    fresh_state = tx.init(zeros)
    if jax.tree.structure(fresh_state) != jax.tree.structure(opt_state):
        raise ValueError("tx must be the transformation that built opt_state (tx.init(params)).")
    fresh = _find_states(fresh_state)[0].inner_state
    mask_def = jax.tree.structure(revived)
    shapes = [jnp.shape(m) for m in jax.tree.leaves(revived)]

    def params_like(x):
        leaves = jax.tree.leaves(x)
        return jax.tree.structure(x) == mask_def and [jnp.shape(v) for v in leaves] == shapes

    def restart(old, new):
        if not params_like(old):
            return old
        return jax.tree.map(
            lambda o, n, r: jnp.where(r, jnp.asarray(n).astype(o.dtype), o), old, new, revived
        )

    return jax.tree.map(restart, state.inner_state, fresh, is_leaf=params_like)


def _check_revival(state: MaskedPruningState, revived: PyTree) -> None:
    """Refuses, without ``tx``, masks that revive entries of a state already updated."""
    count = state.count
    if _is_concrete(count) and int(count) == 0:
        return  # nothing trained yet: the inner state still holds its initial values
    any_revived = sum(count_true(r) for r in jax.tree.leaves(revived))
    if not _is_concrete(count) or not _is_concrete(any_revived):
        raise ValueError(
            "set_masks cannot tell under jit whether masks revive pruned entries, whose inner "
            "optimizer state must then restart: pass the optimizer, set_masks(opt_state, masks, "
            "tx=tx)."
        )
    if int(any_revived):
        raise ValueError(
            f"masks revive {int(any_revived)} pruned entries of an optimizer state already "
            f"updated {int(count)} times; their momentum and moments are stale. Pass the "
            "optimizer so that they restart from its initial values: set_masks(opt_state, "
            "masks, tx=tx)."
        )


def set_masks(
    opt_state: PyTree, masks: PyTree, *, tx: optax.GradientTransformation | None = None
) -> PyTree:
    """Returns ``opt_state`` with its masks replaced (for fixed masks: SNIP, GraSP, IMP, random).

    Weights that the new masks prune become exactly 0 at the next update (and are checked to be
    0.0 at the one after, see :func:`check_pruning`).

    An entry the new masks keep but the current ones prune is *revived*: it restarts as a new
    weight would, at 0.0 with its entries in the inner optimizer's state (momentum, Adam's
    moments) reset to what ``tx.init`` gives them, so no stale momentum moves it. That reset
    needs ``tx``; without it, reviving entries of a state already updated raises.

    Args:
      opt_state: an optimizer state built with :func:`masked`, possibly nested.
      masks: pytree of bools with the structure and shapes of the current masks.
      tx: the transformation that built ``opt_state``; needed to revive entries of a state
        already updated, and under ``jit``.

    Returns:
      The new optimizer state.

    Raises:
      ValueError: if ``masks`` does not match the structure or shapes of the current masks, or
        revives entries without ``tx``.

    Example:
      >>> import optax
      >>> state = masked(optax.sgd(0.1), None).init({"w": jnp.ones(2)})
      >>> state = set_masks(state, {"w": jnp.array([True, False])})
      >>> get_masks(state)["w"].tolist()
      [True, False]
    """
    current = _find_states(opt_state)[0]
    new_masks = check_masks(masks, current.masks)
    revived = jax.tree.map(lambda new, old: new & ~old, new_masks, current.masks)
    if tx is None:
        _check_revival(current, revived)
        inner_state = current.inner_state
    else:
        inner_state = _restart_revived(tx, opt_state, current, revived)
    new = current._replace(
        masks=new_masks,
        inner_state=inner_state,
        # The next update zeroes the newly pruned weights; params are checked from then on.
        zeroed_from=optax.safe_int32_increment(current.count),
    )
    return jax.tree.map(lambda x: new if _is_state(x) else x, opt_state, is_leaf=_is_state)


def _unzeroed(params: PyTree, masks: PyTree) -> tuple[int, int]:
    """How many pruned entries of ``params`` are not 0.0, and how many of those are NaN or inf.

    Counted on the host (numpy), so that no training step pays for it.
    """
    p_leaves, m_leaves = jax.tree.leaves(params), jax.tree.leaves(masks)
    if len(p_leaves) != len(m_leaves):
        raise ValueError(
            f"params have {len(p_leaves)} leaves but the masks {len(m_leaves)}: pass the params "
            "the optimizer updates."
        )
    unzeroed = nonfinite = 0
    for p, m in zip(p_leaves, m_leaves, strict=True):
        p, m = np.asarray(jax.device_get(p)), np.asarray(jax.device_get(m))
        if p.shape != m.shape:
            raise ValueError(f"a param of shape {p.shape} has a mask of shape {m.shape}.")
        pruned = p[~m]
        unzeroed += int(np.count_nonzero(pruned != 0))
        nonfinite += int(np.count_nonzero(~np.isfinite(pruned)))
    return unzeroed, nonfinite


def _fault_messages(state: MaskedPruningState, params: PyTree | None) -> list[str]:
    f = jax.tree.map(np.asarray, jax.device_get(state.faults))
    messages = []
    if f.bad_sparsity_step >= 0:
        messages.append(bad_sparsity_message(float(f.bad_sparsity), int(f.bad_sparsity_step)))
    count, zeroed_from = int(np.asarray(state.count)), int(np.asarray(state.zeroed_from))
    if params is None or count < zeroed_from:
        return messages  # masks set since the last update: weights are zeroed at the next one
    n, nonfinite = _unzeroed(params, state.masks)
    at = f"after update {count}"
    if nonfinite:
        messages.append(
            f"{at}, {nonfinite} pruned weights are NaN or inf, which no update brings back to "
            "0.0 (apply_updates adds the update, and NaN + u and inf - inf are NaN): they were "
            "non-finite when pruned; find where the NaN or inf came from."
        )
    if n > nonfinite:
        messages.append(
            f"{at}, {n - nonfinite} pruned weights are not 0.0: masked must be the last "
            "transformation, since its update for a pruned weight is -w, and one after it "
            "(e.g. optax.chain(masked(sgd, s), optax.scale(0.5))) changes that. Put the "
            "others inside: masked(optax.chain(sgd, optax.scale(0.5)), s). Params changed "
            "outside the optimizer after an update do the same."
        )
    return messages


def check_pruning(opt_state: PyTree, params: PyTree | None = None) -> None:
    """Raises if pruning went wrong: a fault recorded by :func:`masked`, or pruned weights not 0.0.

    ``masked`` cannot raise inside ``jit``, so it records in its state (see
    :class:`PruningFaults`) the first schedule value outside [0, 1), at which it left the masks
    unchanged; reading it costs a few scalars. With ``params`` (those the optimizer updated), it
    also checks on the host that every pruned weight is exactly 0.0, as each update leaves them;
    one that is not means ``masked`` is not the last transformation of a chain, the params were
    changed outside the optimizer, or the weight is NaN/inf. That check reads every weight, so
    call it where the loop already fetches the params (e.g. at checkpoints), not every step.

    Args:
      opt_state: an optimizer state built with :func:`masked`, possibly nested.
      params: optional; the params after the last update.

    Raises:
      ValueError: naming each fault, its step and the fix.

    Example:
      >>> import optax
      >>> tx = masked(optax.sgd(0.1), None)
      >>> params = {"w": jnp.ones(2)}
      >>> check_pruning(tx.init(params), params)  # a healthy state: no error
    """
    messages = _fault_messages(_find_states(opt_state)[0], params)
    if messages:
        raise ValueError("progprune.masked: " + " Also: ".join(messages))
