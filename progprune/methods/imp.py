"""Iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019; Frankle et al. 2020):
the pure parts. The driver that trains the rounds stands above the trainer, in
`progprune.drivers.imp`.

One IMP *chain*: round 0 trains the dense network and remembers its weights at
``config.pruning.rewind_step`` (the rewind point; step 0 is the original lottery ticket). Round
``k >= 1`` prunes, by global magnitude among the weights that survived round ``k - 1``, down to the
round's sparsity, rewinds the surviving weights to the rewind point and trains again with that mask
fixed. Every round is a full training run, so reaching round ``k`` costs ``k + 1`` trainings.

Round sparsities. The classical recipe removes a fixed share ``p`` (20%) of the remaining weights
per round, ``s_r = 1 - (1 - p)^r`` (``imp_round_sparsities``). A sweep over several targets reuses
**one chain per seed**: ``imp_chain_sparsities(targets, rate)`` puts a round at every target, in
increasing order, and inserts intermediate rounds only where a step would prune more than ``rate``
of the remaining weights. With ``rate=1`` the rounds are exactly the targets ("IMP with rewinding,
rounds at the sweep's sparsities"), which prunes up to 60% of the remaining weights per round on
{0.5, 0.8, 0.9, 0.95, 0.98, 0.99}: coarser, and cheaper, than the classical 20%.

The driver writes ``workdir/round_<k>/`` (the trainer's workdir per round),
``workdir/masks/round_<k>.npz`` (`save_masks`) and ``workdir/imp_rounds.json``.
"""

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import progprune
from progprune.prunable import path_str

PyTree = Any
TrainFn = Callable[..., dict]


def imp_round_sparsities(target: float, rate: float) -> list[float]:
    """Sparsity after each pruning round when each round removes ``rate`` of the remaining weights.

    ``s_r = 1 - (1 - rate)^r`` for ``r = 1, 2, ...`` until the target is reached; the last round is
    exactly ``target``.

    >>> [round(s, 3) for s in imp_round_sparsities(0.5, 0.2)]
    [0.2, 0.36, 0.488, 0.5]
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must be in [0, 1), got {target}")
    if target == 0.0:
        return []
    if rate == 1.0:
        return [target]
    rounds = math.ceil(math.log1p(-target) / math.log1p(-rate) - 1e-9)
    return [1.0 - (1.0 - rate) ** r for r in range(1, rounds)] + [target]


def imp_chain_sparsities(targets: Sequence[float], rate: float = 1.0) -> list[float]:
    """Round sparsities of one chain that hits every target, pruning at most ``rate`` per round.

    Between consecutive targets ``a < b`` the rounds continue geometrically from ``a`` (each one
    removing ``rate`` of what remains) and end exactly at ``b``.

    >>> imp_chain_sparsities([0.9, 0.5, 0.8])
    [0.5, 0.8, 0.9]
    >>> [round(s, 3) for s in imp_chain_sparsities([0.5, 0.9], rate=0.5)]
    [0.5, 0.75, 0.875, 0.9]
    """
    chain, previous = [], 0.0
    for target in sorted(set(targets)):
        if target <= previous:
            continue
        # Remaining-weight fraction to go from `previous` to `target`, as a target "from dense".
        relative = 1.0 - (1.0 - target) / (1.0 - previous)
        steps = imp_round_sparsities(relative, rate)
        chain += [1.0 - (1.0 - previous) * (1.0 - s) for s in steps[:-1]] + [target]
        previous = target
    return chain


def imp_next_masks(
    params: PyTree, masks: PyTree | None, sparsity: float, *, prunable: Any = None
) -> PyTree:
    """Masks for the next IMP round: global magnitude pruning among surviving weights.

    Weights already pruned (``masks`` False) stay pruned; of the ``N`` prunable weights exactly
    ``round(sparsity * N)`` end up pruned. ``masks=None`` means all weights survive.

    >>> imp_next_masks({"k": jnp.array([[3.0, -1.0], [0.5, 2.0]])}, None, 0.5)["k"].tolist()
    [[True, False], [False, True]]
    """
    scores = jax.tree.map(jnp.abs, params)
    return progprune.prune_to_sparsity(scores, sparsity, masks=masks, prunable=prunable)


def save_masks(path: str, masks: PyTree) -> None:
    """Write a mask pytree to ``.npz``, one array per leaf keyed by its ``/``-joined path.

    Written to a temporary name and renamed, so a crash never leaves a torn file.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "masks", "round_1.npz")
    >>> save_masks(path, {"k": np.array([True, False])})
    >>> load_masks(path, {"k": np.zeros(2)})["k"].tolist()
    [True, False]
    """
    flat = jax.tree_util.tree_flatten_with_path(masks)[0]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **{path_str(p): np.asarray(m, bool) for p, m in flat})
    os.replace(tmp, path)


def load_masks(path: str, like: PyTree) -> PyTree:
    """Read masks written by ``save_masks`` into the structure of ``like`` (e.g. the params).

    See the `save_masks` example.
    """
    with np.load(path) as data:
        flat, treedef = jax.tree_util.tree_flatten_with_path(like)
        return jax.tree.unflatten(treedef, [jnp.asarray(data[path_str(p)]) for p, _ in flat])


def imp_sparsities(pruning: ml_collections.ConfigDict) -> list[float]:
    """The chain's round sparsities from ``config.pruning``.

    The target is ``sparsity`` (or, if the config has a non-empty ``imp_sparsities`` tuple, every
    sparsity in it: one chain for a whole sweep). With ``imp_rounds > 0`` a single target is
    reached in exactly that many rounds, each removing the same share of the remaining weights
    (``imp_rate`` is then unused); with ``imp_rounds == 0`` each round removes at most
    ``imp_rate`` of the remaining weights (``1.0``: one round per target).

    >>> p = ml_collections.ConfigDict({"sparsity": 0.9, "imp_rounds": 0, "imp_rate": 0.5})
    >>> [round(s, 3) for s in imp_sparsities(p)]
    [0.5, 0.75, 0.875, 0.9]
    """
    targets = tuple(pruning.get("imp_sparsities", None) or ()) or (pruning.sparsity,)
    rounds = int(pruning.get("imp_rounds", 0) or 0)
    if rounds > 0 and len(targets) == 1:
        rate = 1.0 - (1.0 - targets[0]) ** (1.0 / rounds)
        return [1.0 - (1.0 - rate) ** r for r in range(1, rounds)] + [targets[0]]
    return imp_chain_sparsities(targets, float(pruning.get("imp_rate", 1.0) or 1.0))
