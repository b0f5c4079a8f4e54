"""The IMP driver: one chain of trainings with rewinding, above the trainer.

Round 0 trains the dense network and keeps its weights at ``config.pruning.rewind_step``; round
``k >= 1`` prunes by global magnitude among the weights that survived round ``k - 1`` down to
the round's sparsity (`progprune.methods.imp.imp_next_masks`), rewinds the surviving weights and
trains again with those masks fixed (trainer method ``fixed``). Every round is a whole training
run, so reaching round ``k`` costs ``k + 1`` trainings.

Each round writes ``workdir/round_<k>/`` (the trainer's workdir), ``workdir/masks/round_<k>.npz``
and rewrites ``workdir/imp_rounds.json``; ``workdir/summary.json`` is the last round's summary
with the whole ``rounds`` list, so every sparsity level of the chain can be read from one run.
Finished rounds are skipped when the chain is run again, so a chain resumes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from progprune import train
from progprune.methods.imp import imp_next_masks, imp_sparsities, save_masks

PyTree = Any
TrainFn = Callable[..., dict]


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj: Any) -> None:
    """Write-then-rename: a crash leaves the old file or the new one, never a torn one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _round_config(config: ml_collections.ConfigDict, sparsity: float) -> ml_collections.ConfigDict:
    """One round's trainer config: round 0 trains ``dense`` (and keeps its weights at the
    rewind step); later rounds train with ``fixed`` masks, the ones the chain gives them."""
    config = config.copy_and_resolve_references()
    config.pruning.method = "fixed" if sparsity > 0.0 else "dense"
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
) -> dict:
    """Runs (or resumes) one IMP chain with rewinding; returns the last round's summary.

    Args:
      config: the trainer config with ``pruning.method="imp"``; ``config.pruning`` gives the
        round sparsities (`progprune.methods.imp.imp_sparsities`: ``imp_sparsities`` for one
        chain through several targets, ``imp_rounds``, ``imp_rate``), ``rewind_step`` and
        ``prunable``.
      workdir: the chain's directory (layout in the module docstring).
      train_fn: ``train_fn(config, workdir, *, initial_masks=None, initial_params=None) -> dict``;
        defaults to ``progprune.train.train_and_evaluate``.
      load_final_params: ``workdir -> params`` after a round (default from ``progprune.train``).
      load_rewind_params: ``workdir -> params`` at the rewind step (default from
        ``progprune.train``); not called when ``rewind_step`` is 0: with the same seed the
        trainer re-creates the same initialisation, so rounds then get ``initial_params=None``.

    Returns:
      The last round's summary, plus ``rounds``: one record per round (round 0 is dense) with its
      sparsity, accuracy, and own and cumulative epochs and wall-clock seconds.

    Example:
      >>> import tempfile
      >>> from configs import tiny
      >>> config = tiny.get_config()
      >>> config.num_train_steps, config.progress_bar = 8, False
      >>> config.pruning.method, config.pruning.imp_sparsities = "imp", (0.5, 0.8)
      >>> config.pruning.imp_rate = 1.0  # one round per target
      >>> summary = run_imp(config, tempfile.mkdtemp())  # doctest: +ELLIPSIS
      Training tiny_mlp on digits/train ...
      >>> [(r["round"], r["target_sparsity"]) for r in summary["rounds"]]
      [(0, 0.0), (1, 0.5), (2, 0.8)]
    """
    if config.pruning.method != "imp":
        raise ValueError(
            f"run_imp runs method 'imp'; config.pruning.method={config.pruning.method!r}"
        )
    train_fn = train_fn or train.train_and_evaluate
    load_final_params = load_final_params or train.load_final_params
    load_rewind_params = load_rewind_params or train.load_rewind_params
    round_dir = lambda k: os.path.join(workdir, f"round_{k}")
    prunable, rewind_step = config.pruning.prunable, config.pruning.rewind_step
    summary = _train_round(train_fn, _round_config(config, 0.0), round_dir(0))
    rounds = [_record(0, 0.0, summary, [])]
    rewind = _load_rewind(load_rewind_params, round_dir(0), rewind_step)
    params, masks = load_final_params(round_dir(0)), None
    for k, target in enumerate(imp_sparsities(config.pruning), start=1):
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
