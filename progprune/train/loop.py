"""`train_and_evaluate`: the training loop, resumable from its own checkpoints."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

import progprune
from progprune.train import build, metrics, records
from progprune.train.checkpoint import Checkpointer, config_diff, config_fingerprint
from progprune.train.parallel import make_launcher, select_devices
from progprune.train.state import to_host
from progprune.train.validate import validate

PyTree = Any
# Files a run writes into its workdir; removed together when config.overwrite replaces a run.
RUN_FILES = (
    "checkpoints",
    "corrupt_checkpoints",
    "metrics.jsonl",
    "tensorboard",
    "summary.json",
    "config.json",
    "rewind_params",
    "final_params",
    "records",
)


class PreemptedError(RuntimeError):
    """Raised after a SIGTERM/preemption notice: the state was checkpointed; rerun to resume.

    Example:
      >>> try:  # doctest: +SKIP
      ...     train_and_evaluate(config, workdir)
      ... except PreemptedError:
      ...     sys.exit(143)  # the scheduler reruns the same command, which resumes
    """


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    initial_masks: PyTree | None = None,
    initial_params: PyTree | None = None,
) -> dict[str, Any]:
    """Trains and evaluates one run as `config` says; resumes from `workdir` if it can.

    Args:
      config: a config from ``configs/`` (see ``configs/default.py`` for every field).
      workdir: where checkpoints, metrics.jsonl, TensorBoard events and summary.json go.
      initial_masks: masks to start from (``pruning.method="fixed"``, e.g. an IMP round).
      initial_params: params replacing the fresh initialisation (e.g. an IMP rewind point).

    Returns:
      The summary (also in ``workdir/summary.json``): eval_accuracy, eval_loss, sparsity
      (global, over prunable weights), per_layer_sparsity, wall_clock_s, epochs, steps.

    Example:
      >>> from configs import tiny  # doctest: +SKIP
      >>> train_and_evaluate(tiny.get_config(), "/tmp/tiny")["eval_accuracy"]  # doctest: +SKIP
    """
    if config.pruning.method == "imp":
        from progprune.methods.imp import run_imp

        return run_imp(config, workdir, train_fn=train_and_evaluate)
    if config.pruning.method == "fixed" and initial_masks is None:
        raise ValueError(
            "config.pruning.method='fixed' keeps the masks passed as initial_masks, but none "
            "were passed; use method 'dense' for no pruning."
        )
    devices = select_devices(config.num_devices)
    path = validate(config, workdir, len(devices))
    prepare_workdir(config, path)
    run = Run(config, path, devices, initial_masks, initial_params)
    try:
        return run.train()
    finally:
        run.close()


def prepare_workdir(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Refuses a workdir holding a different run (unless config.overwrite); records the config.

    Writes ``workdir/config.json`` (the config and its fingerprint). With ``config.overwrite``
    a different run's files (`RUN_FILES`) are deleted first.

    Example:
      >>> import tempfile
      >>> from configs import tiny
      >>> workdir = Path(tempfile.mkdtemp())
      >>> prepare_workdir(tiny.get_config(), workdir)
      >>> other = tiny.get_config()
      >>> other.seed = 1
      >>> prepare_workdir(other, workdir)
      Traceback (most recent call last):
      ValueError: workdir '...' holds a different run (config differs in seed); ...
    """
    record = workdir / "config.json"
    mine = {"fingerprint": config_fingerprint(config), "config": config.to_dict()}
    if record.exists():
        theirs = json.loads(record.read_text())
        if theirs.get("fingerprint") != mine["fingerprint"]:
            if not config.overwrite:
                diff = config_diff(theirs.get("config", {}), json.loads(json.dumps(mine["config"])))
                raise ValueError(
                    f"workdir {str(workdir)!r} holds a different run (config differs in "
                    f"{', '.join(diff) or 'its fingerprint'}); use another --workdir, or pass "
                    "--config.overwrite=True to delete that run and start over."
                )
            if jax.process_index() == 0:
                for name in RUN_FILES:
                    p = workdir / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    elif (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()):
        raise ValueError(
            f"workdir {str(workdir)!r} holds checkpoints but no config.json, so it cannot be "
            "shown to be this run; use another --workdir (or delete it)."
        )
    if jax.process_index() == 0:
        # Write-then-rename: another process never reads a half-written record.
        tmp = record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(mine, indent=2, sort_keys=True, default=str))
        tmp.replace(record)


def save_params(path: Path, params: PyTree) -> None:
    """Writes a params pytree with orbax (synchronously), replacing nothing that exists.

    Example:
      >>> import tempfile, numpy as np
      >>> path = Path(tempfile.mkdtemp()) / "params"
      >>> save_params(path, {"w": np.ones(2, np.float32)})
      >>> ocp.StandardCheckpointer().restore(path)["w"]
      array([1., 1.], dtype=float32)
    """
    if not path.exists():
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path.absolute(), params)


def load_final_params(workdir: str) -> PyTree:
    """Params at the end of the run in `workdir` (host numpy pytree).

    Example:
      >>> params = load_final_params("/tmp/tiny")  # doctest: +SKIP
      >>> sorted(params)  # doctest: +SKIP
      ['fc1', 'fc2']
    """
    return to_host(ocp.StandardCheckpointer().restore(Path(workdir).absolute() / "final_params"))


def load_rewind_params(workdir: str) -> PyTree:
    """Params saved at ``config.pruning.rewind_step`` of the run in `workdir` (host numpy).

    Example:
      >>> params = load_rewind_params("/tmp/tiny")  # doctest: +SKIP
      >>> train_and_evaluate(config, "/tmp/round2", initial_params=params,  # doctest: +SKIP
      ...                    initial_masks=masks)
    """
    return to_host(ocp.StandardCheckpointer().restore(Path(workdir).absolute() / "rewind_params"))


class Run:
    """One training run's moving parts; `train` runs it from the latest checkpoint to the end.

    Used by `train_and_evaluate` only; it holds the host-side bookkeeping of the loop (metric
    window, last evaluation, preemption flag) that a checkpoint must carry.

    Example:
      >>> run = Run(config, Path(workdir), jax.devices(), None, None)  # doctest: +SKIP
      >>> summary = run.train()  # then run.close(), in a `finally`  # doctest: +SKIP
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: Path,
        devices: Sequence[jax.Device],
        initial_masks: PyTree | None,
        initial_params: PyTree | None,
    ):
        self.config, self.workdir = config, workdir
        ds = build.load_data(config)
        plan = build.make_plan(config, len(ds.train))
        self.spe, self.total_steps = plan.steps_per_epoch, plan.total_steps
        self.lr_fn, self.setup = plan.learning_rate, plan.pruning
        train_step, eval_step = build.make_steps(config, ds, plan.tx, len(devices))
        self.launcher = make_launcher(config.parallel, train_step, eval_step, devices)
        self.ckpt = Checkpointer(
            workdir, max_to_keep=config.max_to_keep, async_save=config.async_checkpointing
        )
        fresh = build.initial_state(
            config, plan.tx, ds.train, initial_masks=initial_masks, initial_params=initial_params
        )
        self.host_state, self.resumed = to_host(fresh), None
        restored = self.ckpt.restore_latest(self.host_state)
        if restored is not None:
            self.host_state, self.resumed = restored
        self.recorder = records.make_recorder(
            config, workdir, self.setup, self.total_steps, self.host_state, self.launcher.get_state
        )
        put = self.launcher.put_data
        self.train_data = (put(ds.train.images), put(ds.train.labels))
        self.eval_data = (put(ds.eval.images), put(ds.eval.labels))
        self.data_names = (ds.train.name, ds.eval.name)
        self._preempted = False
        self._old_handler = None  # the SIGTERM handler to restore in `close`
        self.last_eval: tuple[int | None, dict[str, float] | None] = (None, None)

    # -- the loop ---------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Runs the remaining steps; returns (and writes) the summary."""
        config, launcher = self.config, self.launcher
        start = int(self.host_state.step)
        resumed = self.resumed or {}
        self.elapsed = resumed.get("wall_clock_s", 0.0)
        self.window = resumed.get("window", [])  # per-step metrics since the last log row
        self.last_sparsity = resumed.get("last_sparsity")
        self.writer = metrics.MetricWriter(self.workdir, resume_step=start)
        self.progress = metrics.Progress(config.progress_bar, self.total_steps, start)
        self._watch_sigterm()
        if start == 0:  # the rewind point of IMP when rewind_step is 0
            save_params(self.workdir / "rewind_params", self.host_state.params)
        metrics.log(
            "Training %s on %s: steps %d..%d (%d/epoch) on %d devices (%s)",
            *(config.model, self.data_names[0], start, self.total_steps, self.spe),
            *(launcher.num_devices, config.parallel),
        )
        state = launcher.put_state(self.host_state)
        self.t0 = time.time()
        self.tick, pending = (self.t0, start), []
        for step in range(start + 1, self.total_steps + 1):
            if self._preempted or self._multihost_preempted(step - 1):
                self._checkpoint(state, step - 1, pending)
                raise PreemptedError(f"preempted at step {step - 1}; checkpoint saved, rerun")
            state, m = launcher.train_step(state, *self.train_data)
            pending.append((step, m))
            self.progress.update()
            self._periodic(state, step, pending)
        self.progress.close()
        summary = self._summary(state)
        self.writer.close()
        return summary

    def _periodic(self, state, step: int, pending: list) -> None:
        """Logging, evaluation, rewind snapshot and checkpoint, each when its period says."""
        config, last = self.config, step == self.total_steps
        if self.recorder is not None:  # masks (and weights) at every mask update
            self.recorder.after_step(step, state)
        if step % config.log_every_steps == 0 or last:
            row = self._train_row(state, step, pending)
            self.writer.write(step, {**row, **self._layer_detail()})
            self.progress.show(row)
        elif self.setup.schedule is not None and (step - 1) % self.setup.update_every == 0:
            self.layers = self._sparsity(state)  # this step may have updated the masks
            detail = self._layer_detail()
            if detail:
                self.writer.write(step, detail)
        if step % max(1, round(config.eval_every_epochs * self.spe)) == 0 or last:
            self.last_eval = (step, self._evaluate(state))
            self.writer.write(step, self.last_eval[1])
            self.tick = (time.time(), step)  # images/s measures training only
        if step == config.pruning.rewind_step:
            save_params(self.workdir / "rewind_params", self.launcher.get_state(state.params))
        if step % config.checkpoint_every_steps == 0 or last:
            self._checkpoint(state, step, pending)
            self.tick = (time.time(), step)

    def _drain(self, pending: list) -> None:
        """Moves per-step device metrics ``(step, metrics)`` to the host window (one sync)."""
        host = self.launcher.get_state([m for _, m in pending])  # one batched transfer
        self.window += [
            {"step": s, **{k: float(v) for k, v in m.items()}}
            for (s, _), m in zip(pending, host, strict=True)
        ]
        pending.clear()
        bad = [r["step"] for r in self.window if not _finite(r)]
        if bad:
            steps = self.ckpt.steps()
            kept = (
                f"The last good checkpoint (step {steps[-1]}) is kept in {self.ckpt.directory}"
                if steps
                else "No checkpoint had been saved yet"
            )
            raise FloatingPointError(
                f"loss/gradients became non-finite (NaN or inf) at step {bad[0]}; training "
                f"stopped. {kept}. Lower config.learning_rate or check the data."
            )

    def _train_row(self, state, step: int, pending: list) -> dict[str, Any]:
        self._drain(pending)
        row = metrics.mean_rows([{k: v for k, v in r.items() if k != "step"} for r in self.window])
        self.window = []
        self.layers = self._sparsity(state)
        tick, self.tick = self.tick, (time.time(), step)
        seconds = max(self.tick[0] - tick[0], 1e-9)
        row.update(
            epoch=step / self.spe,
            learning_rate=float(self.lr_fn(step - 1)),
            sparsity=self.layers["global"],
            images_per_sec=(step - tick[1]) * self.config.batch_size / seconds,
        )
        return row

    def _layer_detail(self) -> dict[str, Any]:
        """Global and per-layer sparsity if the masks changed since the last row, else {}."""
        if self.layers["global"] == self.last_sparsity:
            return {}
        self.last_sparsity = self.layers["global"]
        layers = {k: v for k, v in self.layers.items() if k != "global"}
        return {"sparsity": self.last_sparsity, "per_layer_sparsity": layers}

    def _sparsity(self, state) -> dict[str, float]:
        masks = self.launcher.get_state(progprune.get_masks(state.opt_state))
        summary = progprune.sparsity_summary(masks)
        return {k: float(v) for k, v in summary.items()}

    def _evaluate(self, state) -> dict[str, float]:
        return self.launcher.get_metrics(self.launcher.eval_step(state, *self.eval_data))

    def _checkpoint(self, state, step: int, pending: list) -> None:
        self._drain(pending)  # raises on NaN: a bad state is never saved
        host = self.launcher.get_state(state)
        meta = {
            "config": json.loads(json.dumps(self.config.to_dict(), default=str)),
            "fingerprint": config_fingerprint(self.config),
            "window": self.window,
            "last_sparsity": self.last_sparsity,
            "wall_clock_s": self.elapsed + time.time() - self.t0,
        }
        self.ckpt.save(host, meta)

    def _summary(self, state) -> dict[str, Any]:
        self.ckpt.wait()
        step, metrics_at_step = self.last_eval
        eval_metrics = metrics_at_step if step == self.total_steps else self._evaluate(state)
        layers = self._sparsity(state)
        host_params = self.launcher.get_state(state.params)
        save_params(self.workdir / "final_params", host_params)
        summary = {
            "eval_accuracy": eval_metrics["eval_accuracy"],
            "eval_loss": eval_metrics["eval_loss"],
            "sparsity": layers.pop("global"),
            "per_layer_sparsity": layers,
            "target_sparsity": self.config.pruning.sparsity,
            "method": self.config.pruning.method,
            "model": self.config.model,
            "data": self.data_names[0],
            "steps": self.total_steps,
            "epochs": self.total_steps / self.spe,
            "wall_clock_s": self.elapsed + time.time() - self.t0,
            "devices": self.launcher.num_devices,
            "parallel": self.config.parallel,
        }
        if jax.process_index() == 0:
            (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
            print(metrics.format_summary(summary), flush=True)
        return summary

    # -- preemption -------------------------------------------------------------------
    def _watch_sigterm(self) -> None:
        def handler(signum, frame):
            self._preempted = True

        try:
            self._old_handler = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: rely on orbax's multi-host notice only
            self._old_handler = None

    def _multihost_preempted(self, step: int) -> bool:
        return jax.process_count() > 1 and self.ckpt.reached_preemption(step)

    def close(self) -> None:
        """Restores the SIGTERM handler and waits for pending checkpoint writes."""
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
        self.ckpt.wait()
        self.ckpt.close()


def _finite(row: dict) -> bool:
    return all(v == v and abs(v) != float("inf") for k, v in row.items() if k != "step")
