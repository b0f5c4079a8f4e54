"""Method dispatch: what ``config.pruning.method`` means to the trainer.

Every method is one of two kinds:

* scheduled (``progressive``, ``gmp``, ``oneshot``): masks recomputed from weight magnitudes
  during training by ``progprune.masked`` following a sparsity schedule;
* fixed (``dense``, ``snip``, ``grasp``, ``random``, ``fixed``): masks set once at
  initialisation and kept; ``dense`` keeps every weight, ``fixed`` takes the masks the caller
  passes as ``initial_masks`` (an IMP round).

``imp`` (iterative magnitude pruning with rewinding) runs several trainings and is driven by
`progprune.methods.imp.run_imp`, which calls the trainer once per round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections

import progprune

PyTree = Any
METHODS = ("dense", "progressive", "gmp", "oneshot", "imp", "snip", "grasp", "random", "fixed")
SCHEDULED = ("progressive", "gmp", "oneshot")
AT_INIT = ("snip", "grasp", "random")


class PruningSetup(NamedTuple):
    """Arguments for ``progprune.masked``: schedule (None => fixed masks) and friends."""

    schedule: Callable | None
    update_every: int
    distribution: str
    prunable: str | None


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"config.pruning.method={method!r}; use one of {METHODS}.")


def pruning_setup(
    pruning: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int
) -> PruningSetup:
    """Schedule and mask-update period for a method, with durations resolved to steps.

    Args:
      pruning: the ``config.pruning`` block.
      total_steps: optimizer steps in the whole run.
      steps_per_epoch: steps in one pass over the training split.

    Returns:
      A `PruningSetup`; its schedule is None for fixed-mask methods.

    Example:
      >>> from configs.default import get_pruning_config
      >>> setup = pruning_setup(get_pruning_config(), 1000, 100)
      >>> setup.update_every, round(float(setup.schedule(750)), 6)
      (50, 0.9)
    """
    _check_method(pruning.method)
    update_every = pruning.update_every or max(1, steps_per_epoch // 2)
    begin = round(pruning.begin_fraction * total_steps)
    # Masks change only on multiples of update_every, so the ramp ends on one: the next at or
    # after end_fraction, but never past the last one of the run, so the target is reached.
    last_update = (total_steps - 1) // update_every * update_every
    end = -(-round(pruning.end_fraction * total_steps) // update_every) * update_every
    end = max(begin + 1, min(end, last_update))
    if pruning.method == "progressive":
        schedule = progprune.linear_schedule(pruning.sparsity, begin_step=begin, end_step=end)
    elif pruning.method == "gmp":
        schedule = progprune.polynomial_schedule(pruning.sparsity, begin, end, power=3.0)
    elif pruning.method == "oneshot":
        # Masks are recomputed only on multiples of update_every: put the prune step on one.
        step = round(pruning.oneshot_fraction * total_steps / update_every) * update_every
        schedule = progprune.one_shot_schedule(pruning.sparsity, step)
    else:
        schedule = None
    return PruningSetup(schedule, update_every, pruning.distribution, pruning.prunable)


def initial_masks(
    pruning: ml_collections.ConfigDict,
    params: PyTree,
    loss_fn: Callable[[PyTree, Any], Any],
    batches: Sequence[Any],
    rng: jax.Array,
) -> PyTree | None:
    """Masks chosen at initialisation (SNIP, GraSP, random), or None for other methods.

    Args:
      pruning: the ``config.pruning`` block.
      params: freshly initialised parameters.
      loss_fn: ``loss_fn(params, (x, y)) -> scalar``.
      batches: ``config.pruning.score_batches`` preprocessed ``(x, y)`` training batches.
      rng: key for the random method.

    Example:
      >>> from configs.default import get_pruning_config
      >>> cfg = get_pruning_config()
      >>> cfg.method, cfg.sparsity = "snip", 0.5
      >>> loss_fn = lambda p, x: jnp.sum((x @ p["w"]) ** 2)
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
      >>> masks = initial_masks(cfg, params, loss_fn, [jnp.ones((1, 2))], jax.random.key(0))
      >>> masks["w"].tolist()
      [[False, True], [False, True]]
    """
    _check_method(pruning.method)
    kw = {"prunable": pruning.prunable}
    if pruning.method == "snip":
        from progprune.methods.snip import snip_masks

        return snip_masks(loss_fn, params, batches, pruning.sparsity, **kw)
    if pruning.method == "grasp":
        from progprune.methods.grasp import grasp_masks

        return grasp_masks(loss_fn, params, batches, pruning.sparsity, **kw)
    if pruning.method == "random":
        from progprune.methods.random_masks import random_masks

        dist = pruning.random_distribution
        return random_masks(rng, params, pruning.sparsity, distribution=dist, **kw)
    return None
