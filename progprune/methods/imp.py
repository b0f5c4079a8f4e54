"""Iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

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

Each round writes ``workdir/round_<k>/`` (the trainer's workdir), ``workdir/masks/round_<k>.npz``
and appends to ``workdir/imp_rounds.json``; ``workdir/summary.json`` is the last round's summary
with the whole ``rounds`` list, so every sparsity level of the chain can be read from one run.
Finished rounds are skipped when the chain is run again, so a chain resumes.
"""

import json
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

    >>> save_masks("/tmp/imp/masks/round_1.npz", masks)  # doctest: +SKIP
    """
    flat = jax.tree_util.tree_flatten_with_path(masks)[0]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez_compressed(path, **{path_str(p): np.asarray(m, bool) for p, m in flat})


def load_masks(path: str, like: PyTree) -> PyTree:
    """Read masks written by ``save_masks`` into the structure of ``like`` (e.g. the params).

    >>> masks = load_masks("/tmp/imp/masks/round_1.npz", params)  # doctest: +SKIP
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


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def _round_config(config: ml_collections.ConfigDict, sparsity: float) -> ml_collections.ConfigDict:
    """One round's trainer config. Every round runs as ``dense``: the trainer keeps
    ``initial_masks`` fixed for any unscheduled method, so rounds ``k >= 1`` train with the mask
    the chain gives them (and ``method="imp"`` would start a chain again). Only round 0 needs
    to save rewind params."""
    config = config.copy_and_resolve_references()
    config.pruning.method = "dense"
    config.pruning.sparsity = sparsity
    if sparsity > 0.0:
        config.pruning.rewind_step = 0
    return config


def _train_round(train_fn: TrainFn, config, workdir: str, **init) -> dict:
    """Trains one round unless its ``summary.json`` exists already (then the chain resumes)."""
    done = os.path.join(workdir, "summary.json")
    if os.path.exists(done):
        return _read_json(done)
    return train_fn(config, workdir, **init)


def _record(k: int, target: float, summary: dict, previous: list[dict]) -> dict:
    """Per-round summary; the cumulative cost counts every training the round depended on."""
    epochs = float(summary.get("epochs", 0.0))
    seconds = float(summary.get("wall_clock_s", 0.0))
    return {
        "round": k,
        "target_sparsity": target,
        "sparsity": float(summary.get("sparsity", target)),
        "eval_accuracy": float(summary["eval_accuracy"]),
        "eval_loss": float(summary.get("eval_loss", float("nan"))),
        "epochs": epochs,
        "wall_clock_s": seconds,
        "cumulative_epochs": epochs + sum(r["epochs"] for r in previous),
        "cumulative_wall_clock_s": seconds + sum(r["wall_clock_s"] for r in previous),
    }


def _load_rewind(load: Callable[[str], PyTree], workdir: str, rewind_step: int) -> PyTree | None:
    if rewind_step == 0:
        return None
    try:
        return load(workdir)
    except Exception as e:  # the loader's own error names a file, not the likely cause
        raise ValueError(
            f"no rewind params in {workdir}: does its training reach "
            f"config.pruning.rewind_step={rewind_step}? Lower rewind_step or train longer."
        ) from e


def run_imp(
    config: ml_collections.ConfigDict,
    workdir: str,
    train_fn: TrainFn | None = None,
    *,
    load_final_params: Callable[[str], PyTree] | None = None,
    load_rewind_params: Callable[[str], PyTree] | None = None,
    sparsities: Sequence[float] | None = None,
) -> dict:
    """Runs (or resumes) one IMP chain with rewinding; returns the last round's summary.

    Args:
      config: the trainer config; ``config.pruning`` gives the round sparsities (see
        ``imp_sparsities``), ``rewind_step`` and ``prunable``.
      workdir: the chain's directory (layout in the module docstring).
      train_fn: ``train_fn(config, workdir, *, initial_masks=None, initial_params=None) -> dict``;
        defaults to ``progprune.train.train_and_evaluate``.
      load_final_params: ``workdir -> params`` after a round (default from ``progprune.train``).
      load_rewind_params: ``workdir -> params`` at the rewind step (default from
        ``progprune.train``); not called when ``rewind_step`` is 0: with the same seed the
        trainer re-creates the same initialisation, so rounds then get ``initial_params=None``.
      sparsities: the rounds' sparsities, overriding ``imp_sparsities(config.pruning)`` (a sweep
        passes its targets here to run one chain through all of them).

    Returns:
      The last round's summary, plus ``rounds``: one record per round (round 0 is dense) with its
      sparsity, accuracy, and own and cumulative epochs and wall-clock seconds.

    >>> summary = run_imp(config, "/tmp/imp")  # doctest: +SKIP
    >>> [(r["sparsity"], r["eval_accuracy"]) for r in summary["rounds"]]  # doctest: +SKIP
    """
    if train_fn is None or load_final_params is None or load_rewind_params is None:
        from progprune import train  # deferred: the trainer imports this module to dispatch

        train_fn = train_fn or train.train_and_evaluate
        load_final_params = load_final_params or train.load_final_params
        load_rewind_params = load_rewind_params or train.load_rewind_params
    round_dir = lambda k: os.path.join(workdir, f"round_{k}")
    prunable, rewind_step = config.pruning.prunable, config.pruning.rewind_step
    summary = _train_round(train_fn, _round_config(config, 0.0), round_dir(0))
    rounds = [_record(0, 0.0, summary, [])]
    rewind = _load_rewind(load_rewind_params, round_dir(0), rewind_step)
    params, masks = load_final_params(round_dir(0)), None
    for k, target in enumerate(sparsities or imp_sparsities(config.pruning), start=1):
        masks = imp_next_masks(params, masks, target, prunable=prunable)
        save_masks(os.path.join(workdir, "masks", f"round_{k}.npz"), masks)
        start = None
        if rewind is not None:
            start = jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), rewind, masks)
        summary = _train_round(
            train_fn,
            _round_config(config, target),
            round_dir(k),
            initial_masks=masks,
            initial_params=start,
        )
        rounds.append(_record(k, target, summary, rounds))
        _write_json(os.path.join(workdir, "imp_rounds.json"), rounds)
        params = load_final_params(round_dir(k))
    final = {**summary, "rounds": rounds, "method": "imp"}
    final["epochs"], final["wall_clock_s"] = (
        rounds[-1]["cumulative_epochs"],
        rounds[-1]["cumulative_wall_clock_s"],
    )
    _write_json(os.path.join(workdir, "summary.json"), final)
    return final
