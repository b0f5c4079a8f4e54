"""Method dispatch: what ``config.pruning.method`` means to the trainer.

Every method is one of two kinds:

* scheduled (``progressive``, ``gmp``, ``oneshot``): masks recomputed from weight magnitudes
  during training by ``progprune.masked`` following a sparsity schedule;
* fixed (``dense``, ``snip``, ``grasp``, ``random``, ``fixed``): masks set once at
  initialisation and kept; ``dense`` keeps every weight, ``fixed`` takes the masks the caller
  passes as ``initial_masks`` (an IMP round).

``imp`` (iterative magnitude pruning with rewinding) is several trainings: a driver above the
trainer runs it (`progprune.drivers.run_imp`), training each round with ``fixed`` masks;
`progprune.methods.imp` holds its pure parts (round sparsities, the next round's masks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections

import progprune
from progprune.optimizer import is_update_step

PyTree = Any
METHODS = ("dense", "progressive", "gmp", "oneshot", "imp", "snip", "grasp", "random", "fixed")
SCHEDULED = ("progressive", "gmp", "oneshot")
AT_INIT = ("snip", "grasp", "random")


class PruningSetup(NamedTuple):
    """Arguments for ``progprune.masked`` and when its masks change, resolved to steps.

    Attributes:
      schedule: step -> sparsity, or None for fixed masks.
      update_every: masks may change at optimizer counts that are multiples of this.
      distribution: how the sparsity is spread over layers.
      prunable: which leaves may be pruned (path regex, None = kernels).
      last_update: the last optimizer count at which the schedule changes the masks (where
        it reaches the target), or None for fixed masks. Always inside the run.
    """

    schedule: Callable | None
    update_every: int
    distribution: str
    prunable: str | None
    last_update: int | None = None

    def may_update_masks(self, count: int) -> bool:
        """Whether the optimizer step taken at ``count`` (= steps done before it) may change
        the masks: the host-side twin of the rule inside ``progprune.masked``.

        >>> PruningSetup(lambda t: 0.5, 10, "global", None, 20).may_update_masks(20)
        True
        """
        return self.schedule is not None and bool(is_update_step(count, self.update_every))


def check_method(method: str) -> str:
    """Raises a ValueError naming the choices unless ``method`` is one of `METHODS`.

    >>> check_method("gmp")
    'gmp'
    """
    if method not in METHODS:
        raise ValueError(f"config.pruning.method={method!r} is unknown; use one of {METHODS}.")
    return method


def _ceil_to(step: int, period: int) -> int:
    return -(-step // period) * period


def pruning_setup(
    pruning: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int
) -> PruningSetup:
    """Schedule and mask-update steps for a method, with durations resolved to steps.

    The one place that decides when masks change. ``masked`` recomputes masks at optimizer
    counts ``0, u, 2u, ...`` (``u = update_every``) that lie inside the run (``< total_steps``);
    the schedule's ramp is made to end on one of them, the last one at the latest, so every
    accepted run ends at exactly its target sparsity. A run with no mask update after the
    ramp begins is refused, with the fix, instead of ending unpruned.

    Args:
      pruning: the ``config.pruning`` block.
      total_steps: optimizer steps in the whole run.
      steps_per_epoch: steps in one pass over the training split.

    Returns:
      A `PruningSetup`; its schedule is None for fixed-mask methods.

    Raises:
      ValueError: if no mask update falls after the ramp begins (the run would end unpruned).

    Example:
      >>> from ml_collections import ConfigDict
      >>> p = ConfigDict(dict(method="progressive", sparsity=0.9, begin_fraction=0.0,
      ...     end_fraction=0.75, update_every=0, distribution="global", prunable=None))
      >>> setup = pruning_setup(p, total_steps=1000, steps_per_epoch=100)
      >>> setup.update_every, setup.last_update, round(float(setup.schedule(750)), 4)
      (50, 750, 0.9)
    """
    check_method(pruning.method)
    update_every = pruning.update_every or max(1, steps_per_epoch // 2)
    last = (total_steps - 1) // update_every * update_every  # the last update inside the run
    begin = round(pruning.begin_fraction * total_steps)
    schedule = end = None
    if pruning.method in ("progressive", "gmp"):
        if last <= begin:
            raise ValueError(_no_update_message(pruning, update_every, begin, total_steps))
        wanted = max(begin + 1, round(pruning.end_fraction * total_steps))
        end = min(_ceil_to(wanted, update_every), last)
        if pruning.method == "progressive":
            schedule = progprune.linear_schedule(pruning.sparsity, begin_step=begin, end_step=end)
        else:
            schedule = progprune.polynomial_schedule(pruning.sparsity, begin, end, power=3.0)
    elif pruning.method == "oneshot":
        at = round(pruning.oneshot_fraction * total_steps / update_every) * update_every
        end = min(at, last)
        schedule = progprune.one_shot_schedule(pruning.sparsity, end)
    return PruningSetup(schedule, update_every, pruning.distribution, pruning.prunable, end)


def _no_update_message(pruning, update_every: int, begin: int, total_steps: int) -> str:
    period = "(0: half an epoch) " if not pruning.update_every else ""
    room = max(1, (total_steps - 1 - begin) // 4)
    return (
        f"config.pruning.update_every={update_every} {period}leaves no mask update between the "
        f"ramp's start (step {begin}) and the end of the run ({total_steps} steps), so the run "
        f"would end unpruned instead of at sparsity {pruning.sparsity}. Set "
        f"--config.pruning.update_every={room} (or any value below {total_steps - begin}), or "
        "train longer."
    )


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
      >>> import jax.numpy as jnp
      >>> from configs.default import get_pruning_config
      >>> cfg = get_pruning_config()
      >>> cfg.method, cfg.sparsity = "snip", 0.5
      >>> loss_fn = lambda p, x: jnp.sum((x @ p["w"]) ** 2)
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
      >>> masks = initial_masks(cfg, params, loss_fn, [jnp.ones((1, 2))], jax.random.key(0))
      >>> masks["w"].tolist()
      [[False, True], [False, True]]
    """
    check_method(pruning.method)
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
