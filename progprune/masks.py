"""Mask computation: keep the highest scores, prune exactly ``round(sparsity * N)`` entries.

Masks are pytrees of bool arrays with the structure of the params; True means the weight is
active. Leaves that are not prunable are all True (never ``None``), so every mask tree can be
used with ``jax.tree.map`` against the params directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from progprune.distributions import check_distribution, layer_counts
from progprune.prunable import Prunable, leaves_with_paths, prunable_mask
from progprune.schedules import Schedule, bad_sparsity_message, check_schedule, check_sparsity
from progprune.select import order_keys, select_smallest

PyTree = Any
MaskUpdater = Callable[..., PyTree]

__all__ = ["all_true_masks", "check_masks", "mask_updater", "prune_to_sparsity"]


def all_true_masks(params: PyTree) -> PyTree:
    """A mask tree that keeps every weight."""
    return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)


def check_masks(masks: PyTree, params: PyTree, name: str = "masks") -> PyTree:
    """Returns ``masks`` as bool arrays after checking they match the params' structure."""
    m_def = jax.tree.structure(masks)
    p_def = jax.tree.structure(params)
    if m_def != p_def:
        raise ValueError(
            f"{name} must have the structure of the params.\n  {name}: {m_def}\n  params: {p_def}"
        )
    for (path, m), (_, p) in zip(
        leaves_with_paths(masks)[0], leaves_with_paths(params)[0], strict=True
    ):
        if jnp.shape(m) != jnp.shape(p):
            raise ValueError(
                f"{name} leaf {path!r} has shape {jnp.shape(m)} but the param has {jnp.shape(p)}."
            )
    return jax.tree.map(lambda m: jnp.asarray(m).astype(bool), masks)


def _prune(
    scores: PyTree,
    sparsity: jax.Array,
    masks: PyTree | None,
    distribution: str,
    flags: list[bool],
) -> PyTree:
    """Core of the mask computation; ``flags`` says which leaves are prunable."""
    leaves, treedef = jax.tree.flatten(scores)
    old = jax.tree.leaves(masks) if masks is not None else [None] * len(leaves)
    picked = [i for i, f in enumerate(flags) if f]
    keys = [order_keys(leaves[i], old[i]) for i in picked]
    sizes = [int(leaves[i].size) for i in picked]
    shapes = [tuple(leaves[i].shape) for i in picked]
    counts = layer_counts(sizes, shapes, sparsity, distribution)
    segment = [0] * len(picked) if distribution == "global" else list(range(len(picked)))
    # Masks only shrink: inactive entries have key 0, and all of them stay selected.
    selected = select_smallest(keys, counts, segment, all_zero_keys=masks is not None)
    new = [
        jnp.ones(jnp.shape(leaf), bool) if o is None else o
        for leaf, o in zip(leaves, old, strict=True)
    ]
    for i, s in zip(picked, selected, strict=True):
        new[i] = ~s
    return jax.tree.unflatten(treedef, new)


def _is_concrete(x: ArrayLike) -> bool:
    try:
        float(x)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False
    return True


def valid_sparsity(sparsity: jax.Array) -> jax.Array:
    """Whether a (traced) sparsity is in [0, 1); False for NaN."""
    return (sparsity >= 0) & (sparsity < 1)


def _raise_bad_sparsity(value: Any, step: Any, name: str) -> None:
    raise ValueError(bad_sparsity_message(float(value), None if step is None else int(step), name))


def _prune_valid(
    score_fn: Callable[[], PyTree],
    sparsity: jax.Array,
    masks: PyTree | None,
    distribution: str,
    flags: list[bool],
    step: jax.Array | None,
    name: str,
) -> PyTree:
    """``_prune`` for a traced sparsity that may be outside [0, 1).

    Such a value prunes nothing (the masks are returned unchanged) and raises, through a host
    callback, when the result is computed: under ``jit`` no exception can be raised at the value
    itself, and pruning a wrong amount (round() drops the sign of -0.5; 1.2 prunes everything)
    must never pass silently. ``score_fn`` builds the scores inside the branch, where they fuse
    into the selection instead of being written out first.
    """
    shapes = jax.eval_shape(score_fn)
    keep = jax.tree.map(lambda x: jnp.ones(x.shape, bool), shapes) if masks is None else masks

    def report():
        jax.debug.callback(functools.partial(_raise_bad_sparsity, name=name), sparsity, step)
        return keep

    def prune():
        return _prune(score_fn(), sparsity, masks, distribution, flags)

    return jax.lax.cond(valid_sparsity(sparsity), prune, report)


def prune_to_sparsity(
    scores: PyTree,
    sparsity: ArrayLike,
    *,
    masks: PyTree | None = None,
    distribution: str = "global",
    prunable: Prunable = None,
) -> PyTree:
    """Masks that prune exactly ``round(sparsity * N)`` prunable entries with the lowest scores.

    ``N`` is the number of prunable weights (per layer for ``uniform`` and ``erk``). Ties are
    broken by position: leaves in ``tree_flatten`` order, then row-major, earlier first. With
    ``masks``, entries already pruned stay pruned and count towards the total.

    Args:
      scores: pytree like the params (e.g. ``|w|``, or ``|w * g|`` for SNIP).
      sparsity: fraction to prune, in [0, 1); may be traced. A traced value outside [0, 1)
        prunes nothing and raises when the result is computed (the error then arrives wrapped
        in a ``JaxRuntimeError``).
      masks: optional current masks; only their active entries are ranked.
      distribution: ``"global"`` (one ranking over all prunable leaves), ``"uniform"`` (the same
        sparsity in every layer) or ``"erk"`` (Erdős–Rényi-Kernel per-layer densities).
      prunable: which leaves may be pruned (see :func:`progprune.prunable_mask`).

    Returns:
      A pytree of bool arrays (True = kept) with the structure of ``scores``.

    Example:
      >>> scores = {"w": jnp.array([[3.0, 1.0], [2.0, 4.0]])}
      >>> prune_to_sparsity(scores, 0.5)["w"].tolist()
      [[True, False], [False, True]]
    """
    check_distribution(distribution)
    if callable(scores) or callable(sparsity):
        raise ValueError(
            "prune_to_sparsity takes scores (a pytree of arrays like the params, e.g. "
            "jax.tree.map(jnp.abs, params)) and a sparsity (a number in [0, 1)), not functions: "
            "for a schedule, pass schedule(step), or use progprune.mask_updater(schedule)."
        )
    flags = jax.tree.leaves(prunable_mask(scores, prunable))
    if masks is not None:
        masks = check_masks(masks, scores)
    if _is_concrete(sparsity):
        check_sparsity(sparsity, "sparsity")
        return _prune(scores, jnp.asarray(sparsity, jnp.float32), masks, distribution, flags)
    sparsity = jnp.asarray(sparsity, jnp.float32)
    return _prune_valid(lambda: scores, sparsity, masks, distribution, flags, None, "sparsity")


def mask_updater(
    schedule: Schedule, *, distribution: str = "global", prunable: Prunable = None
) -> MaskUpdater:
    """The pure mask update of progressive pruning: ``(params, step, masks=None) -> masks``.

    At ``step`` the returned function keeps the largest-magnitude active weights so that exactly
    ``round(schedule(step) * N)`` prunable weights are pruned (or as many as are pruned already,
    if more: masks only shrink). ``step`` may be traced, so a jitted updater compiles once.

    The schedule is checked when the updater is built (see ``progprune.schedules.check_schedule``).
    A value outside [0, 1) at a later step is never pruned to: with a concrete ``step`` the call
    raises a ValueError; under ``jit`` the masks come back unchanged and the error is raised
    when the result is computed (wrapped in a ``JaxRuntimeError``).

    Args:
      schedule: function ``step -> sparsity`` (e.g. :func:`progprune.linear_schedule`).
      distribution: ``"global"``, ``"uniform"`` or ``"erk"``.
      prunable: which leaves may be pruned (see :func:`progprune.prunable_mask`).

    Returns:
      ``update_masks(params, step, masks=None)``; without ``masks`` every weight counts as active.

    Example:
      >>> update_masks = mask_updater(linear_schedule(0.5, 0, 10))
      >>> params = {"w": jnp.array([[3.0, -1.0], [2.0, 4.0]])}
      >>> jax.jit(update_masks)(params, 10)["w"].tolist()
      [[True, False], [False, True]]
    """
    check_distribution(distribution)
    check_schedule(schedule)

    def update_masks(params: PyTree, step: ArrayLike, masks: PyTree | None = None) -> PyTree:
        flags = jax.tree.leaves(prunable_mask(params, prunable))
        if masks is not None:
            masks = check_masks(masks, params)
        sparsity = jnp.asarray(schedule(step), jnp.float32)
        scores = functools.partial(jax.tree.map, jnp.abs, params)
        if _is_concrete(sparsity):
            if not valid_sparsity(sparsity):
                raise ValueError(bad_sparsity_message(float(sparsity), step))
            return _prune(scores(), sparsity, masks, distribution, flags)
        step = jnp.asarray(step, jnp.int32)
        return _prune_valid(scores, sparsity, masks, distribution, flags, step, "schedule")

    return update_masks
