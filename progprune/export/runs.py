"""Exports of training runs: the latest checkpoint to a file, and a file back to its accuracy.

`export_run` reads a ``progprune.train`` workdir through the trainer's own pieces
(``config.json``, ``build.initial_state`` for the checkpoint's structure, ``Checkpointer`` to
restore the newest valid step) and saves params, masks, batch statistics and the run's config.
`evaluate_export` rebuilds the run's model and evaluation step from that config and evaluates
the export on the run's evaluation split (the test split in every shipped config) exactly as
the trainer did, so its accuracy equals the run's ``summary.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

import progprune
from progprune.export.format import ExportError, load_export, save
from progprune.export.report import SizeReport, size_report
from progprune.train import build
from progprune.train.checkpoint import Checkpointer
from progprune.train.parallel import make_launcher, select_devices
from progprune.train.state import TrainState, to_host

__all__ = ["evaluate_export", "export_run"]


def _run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config recorded in ``workdir/config.json``, or FileNotFoundError with the fix."""
    if not workdir.is_dir():
        raise FileNotFoundError(
            f"workdir {str(workdir)!r} does not exist; pass the --workdir of a progprune.train run."
        )
    record = workdir / "config.json"
    try:
        return ml_collections.ConfigDict(json.loads(record.read_text())["config"])
    except (OSError, ValueError, KeyError):
        pass
    if _checkpoint_steps(workdir):  # config.json lost or damaged: each checkpoint holds it
        return ml_collections.ConfigDict(Checkpointer(workdir).latest_meta()["config"])
    raise FileNotFoundError(
        f"{str(workdir)!r} has no readable config.json, so it is not a progprune.train "
        f"workdir; pass the --workdir given to python -m progprune.train.{_round_hint(workdir)}"
    )


def _round_hint(workdir: Path) -> str:
    """Where an IMP chain keeps its rounds' checkpoints (each round is a trainer workdir)."""
    rounds = sorted(p.name for p in workdir.glob("round_*") if (p / "checkpoints").is_dir())
    return f" Its IMP rounds are workdirs of their own: {', '.join(rounds)}." if rounds else ""


def _checkpoint_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def export_run(
    workdir: str | os.PathLike, out: str | os.PathLike, *, data_dir: str | None = None
) -> SizeReport:
    """Exports the latest valid checkpoint of a training run; returns the file's size table.

    The file holds params, masks and batch statistics, and as metadata the model name, the
    run's config, the step, the data set's shape and the run's summary if the run finished at
    that step. As on resume, a corrupt latest checkpoint is set aside
    (``workdir/corrupt_checkpoints/``) and the previous one used.

    Args:
      workdir: the ``--workdir`` of a ``python -m progprune.train`` run.
      out: the export file to write.
      data_dir: where the run's data set is, if not where its config says.

    Raises:
      FileNotFoundError: if `workdir` is not a run's workdir or holds no checkpoint.

    Example:
      >>> print(export_run("/tmp/quickstart", "/tmp/quickstart.ppx"))  # doctest: +SKIP
    """
    workdir = Path(workdir).absolute()
    config = _run_config(workdir)
    if not _checkpoint_steps(workdir):
        raise FileNotFoundError(
            f"no checkpoint in {str(workdir / 'checkpoints')!r}; train first (python -m "
            f"progprune.train --config=... --workdir={workdir}) or pass a run's workdir."
            f"{_round_hint(workdir)}"
        )
    if data_dir is not None:
        config.data.data_dir = data_dir
    ds = build.load_data(config)  # the model's input shape and classes come from the data
    target = to_host(
        build.initial_state(config, build.make_plan(config, len(ds.train)).tx, ds.train)
    )
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        restored = ckpt.restore_latest(target)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(
            f"no valid checkpoint in {str(workdir / 'checkpoints')!r} (the unreadable ones were "
            f"moved to {str(workdir / 'corrupt_checkpoints')!r}); train the run again."
        )
    state, _ = restored
    save(
        out,
        state.params,
        progprune.get_masks(state.opt_state),
        batch_stats=state.batch_stats,
        metadata=_metadata(config, workdir, int(state.step), ds),
    )
    return size_report(out)


def _metadata(
    config: ml_collections.ConfigDict, workdir: Path, step: int, ds: build.Datasets
) -> dict[str, Any]:
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return {
        "model": config.model,
        "config": json.loads(json.dumps(config.to_dict(), default=str)),
        "step": step,
        "num_classes": ds.train.num_classes,
        "image_shape": list(ds.train.image_shape),
        "workdir": str(workdir),
        # The run's final numbers belong to this export only if it is the final step.
        "summary": summary if summary and summary.get("steps") == step else None,
    }


def evaluate_export(
    path: str | os.PathLike, *, data_dir: str | None = None, num_devices: int | None = None
) -> dict[str, float]:
    """Evaluates an export of a run on the run's evaluation split, as the trainer does.

    The run's config rebuilds the model (with its compute dtype), the data pipeline and the
    evaluation step; the export's params and batch statistics are evaluated on as many devices
    as the run used, so the accuracy equals the one in the run's ``summary.json``.

    Args:
      path: an export written by `export_run` (or by ``save`` with ``metadata={"config": ...}``).
      data_dir: where the data set is, if not where the run's config says.
      num_devices: devices to evaluate on (default: the run's ``config.num_devices``).

    Returns:
      ``{"eval_accuracy": ..., "eval_loss": ..., "num_examples": ...}``.

    Raises:
      ExportError: if the export holds no training config.

    Example:
      >>> evaluate_export("/tmp/quickstart.ppx")["eval_accuracy"]  # doctest: +SKIP
      0.8957
    """
    export = load_export(path)
    if "config" not in export.metadata:
        raise ExportError(
            f"{str(path)!r} holds no training config, so its data and model are unknown; "
            "export the run with python -m progprune.export --workdir=... --out=..."
        )
    config = ml_collections.ConfigDict(export.metadata["config"])
    if data_dir is not None:
        config.data.data_dir = data_dir
    devices = select_devices(config.num_devices if num_devices is None else num_devices)
    ds = build.load_data(config)
    plan = build.make_plan(config, len(ds.train))
    train_step, eval_step = build.make_steps(config, ds, plan.tx, len(devices))
    launcher = make_launcher(config.parallel, train_step, eval_step, devices)
    # The evaluation reads params and batch statistics only; the optimizer state is not exported.
    state = TrainState(
        jnp.int32(export.metadata.get("step", 0)),
        export.params,
        export.batch_stats if export.batch_stats is not None else {},
        (),
        jax.random.PRNGKey(config.seed),
    )
    images, labels = launcher.put_data(ds.eval.images), launcher.put_data(ds.eval.labels)
    metrics = launcher.get_metrics(launcher.eval_step(launcher.put_state(state), images, labels))
    return {**metrics, "num_examples": len(ds.eval)}
