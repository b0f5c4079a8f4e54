"""`train_and_evaluate`: the training loop, resumable from its own checkpoints."""

from __future__ import annotations

import collections
import json
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

import progprune
from progprune.train import build, metrics, records
from progprune.train import workdir as workdirs
from progprune.train.checkpoint import Checkpointer, config_fingerprint
from progprune.train.errors import NonFiniteError, PreemptedError, StorageError
from progprune.train.parallel import make_launcher, select_devices, steps_in_flight
from progprune.train.state import to_host
from progprune.train.validate import validate

PyTree = Any


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    initial_masks: PyTree | None = None,
    initial_params: PyTree | None = None,
) -> dict[str, Any]:
    """Trains and evaluates one run as `config` says; resumes from `workdir` if it can.

    The workdir is locked for the run's life (a second process gets `WorkdirBusyError`). A run
    that already finished is not trained again: its summary is returned as it is.

    Args:
      config: a config from ``configs/`` (see ``configs/default.py`` for every field).
      workdir: where checkpoints, metrics.jsonl, TensorBoard events and summary.json go.
      initial_masks: masks to train with, for ``pruning.method="fixed"`` (e.g. an IMP round).
      initial_params: params replacing the fresh initialisation (e.g. an IMP rewind point).

    Returns:
      The summary (also in ``workdir/summary.json``): eval_accuracy, eval_loss, sparsity
      (global, over prunable weights), per_layer_sparsity, wall_clock_s, epochs, steps.

    Raises:
      ValueError, FileNotFoundError: bad config, missing data, a workdir holding another run.
      NonFiniteError, WorkdirBusyError, StorageError, PreemptedError: see
        `progprune.train.errors` (each with its exit code on the command line).

    Example:
      >>> import tempfile
      >>> from configs import tiny
      >>> config = tiny.get_config()
      >>> config.num_train_steps, config.progress_bar = 8, False
      >>> workdir = tempfile.mkdtemp()
      >>> summary = train_and_evaluate(config, workdir)  # doctest: +ELLIPSIS
      Training tiny_mlp on digits/train ...
      >>> train_and_evaluate(config, workdir)["steps"]  # doctest: +ELLIPSIS
      Run in ... is already complete (step 8 of 8); nothing to train.
      8
    """
    if config.pruning.method == "imp":
        raise ValueError(
            "config.pruning.method='imp' is a chain of training runs, not one: run it with "
            "progprune.drivers.run(config, workdir) or `python -m progprune.train`."
        )
    if (config.pruning.method == "fixed") != (initial_masks is not None):
        raise ValueError(
            "config.pruning.method='fixed' trains with the masks passed as initial_masks, and "
            "only it takes them; use method 'dense' for no pruning, or pass initial_masks with "
            f"method 'fixed' (got method {config.pruning.method!r}, initial_masks "
            f"{'given' if initial_masks is not None else 'not given'})."
        )
    devices = select_devices(config.num_devices)
    path = validate(config, workdir, len(devices))
    with workdirs.lock(path):
        ckpt = Checkpointer(
            path, max_to_keep=config.max_to_keep, async_save=config.async_checkpointing
        )
        try:
            workdirs.prepare(config, path, ckpt)
            done = workdirs.finished_summary(path, ckpt)
            if done is not None:
                if jax.process_index() == 0:
                    print(
                        f"Run in {path} is already complete (step {done['steps']} of "
                        f"{done['steps']}); nothing to train.",
                        flush=True,
                    )
                return done
            run = Run(config, path, devices, ckpt, initial_masks, initial_params)
            try:
                return run.train()
            finally:
                run.close()
        finally:
            ckpt.close()


# Kept importable from here: IMP drivers and notebooks load a finished run's weights.
load_final_params = workdirs.load_final_params
load_rewind_params = workdirs.load_rewind_params


class Run:
    """One training run's moving parts; `train` runs it from the latest checkpoint to the end.

    Used by `train_and_evaluate` only; it holds the host-side bookkeeping of the loop (metric
    window, last evaluation, preemption flag) that a checkpoint must carry.

    Example:
      >>> run = Run(config, Path(workdir), jax.devices(), ckpt, None, None)  # doctest: +SKIP
      >>> summary = run.train()  # then run.close(), in a `finally`  # doctest: +SKIP
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: Path,
        devices: Sequence[jax.Device],
        ckpt: Checkpointer,
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
        self.max_in_flight = steps_in_flight(devices, config.max_steps_in_flight)
        self.ckpt = ckpt
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
        self.report = metrics.Reporter(config.progress_bar, self.total_steps, start)
        self._watch_sigterm()
        devices = f"{launcher.num_devices} device{'s' * (launcher.num_devices > 1)}"
        self.report.start(
            f"Training {config.model} on {self.data_names[0]}: steps {start}..{self.total_steps}"
            f" ({self.spe}/epoch) on {devices} ({config.parallel})"
            + (f", resumed from checkpoint {start}" if self.resumed else "")
        )
        state = launcher.put_state(self.host_state)
        self.t0 = time.time()
        self.tick, pending = (self.t0, start), []
        in_flight = collections.deque()  # metrics of steps dispatched but not waited for
        for step in range(start + 1, self.total_steps + 1):
            if self._preempted or self._multihost_preempted(step - 1):
                self._checkpoint(state, step - 1, pending)
                self.ckpt.wait()
                raise PreemptedError(f"preempted at step {step - 1}; checkpoint saved, rerun")
            state, m = launcher.train_step(state, *self.train_data)
            pending.append((step, m))
            in_flight.append(m)
            if self.max_in_flight is not None and len(in_flight) > self.max_in_flight:
                jax.block_until_ready(in_flight.popleft())
            self.report.update()
            self._periodic(state, step, pending)
        self.report.close()
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
            steps_per_sec = row["images_per_sec"] / config.batch_size
            self.report.train_row(step, row, (self.total_steps - step) / max(steps_per_sec, 1e-9))
            self.ckpt.check()  # a background checkpoint write that failed stops the run now
        elif self.setup.may_update_masks(step - 1):
            self.layers = self._sparsity(state)  # this step may have updated the masks
            detail = self._layer_detail()
            if detail:
                self.writer.write(step, detail)
        if step % max(1, round(config.eval_every_epochs * self.spe)) == 0 or last:
            self.last_eval = (step, self._evaluate(state))
            self.writer.write(step, self.last_eval[1])
            self.report.eval_row(step, self.last_eval[1])
            self.tick = (time.time(), step)  # images/s measures training only
        if step == config.pruning.rewind_step:  # > 0: step 0 is re-created from the seed
            params = self.launcher.get_state(state.params)
            workdirs.save_params(self.workdir / "rewind_params", params)
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
            resume = (
                " To continue from it with a lower learning rate, rerun the same command with "
                "--config.learning_rate=<lower> --config.resume_changed=True; or check the data."
                if steps
                else " Lower config.learning_rate or check the data."
            )
            raise NonFiniteError(
                f"loss/gradients became non-finite (NaN or inf) at step {bad[0]}; training "
                f"stopped. {kept}.{resume}"
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
        self._check_pruning(state)
        masks = self.launcher.get_state(progprune.get_masks(state.opt_state))
        summary = progprune.sparsity_summary(masks)
        return {k: float(v) for k, v in summary.items()}

    def _check_pruning(self, state) -> None:
        """Raises if the masked optimizer recorded a fault (see ``progprune.check_pruning``)."""
        is_state = lambda x: isinstance(x, progprune.MaskedPruningState)  # noqa: E731
        # Only the fault scalars travel to the host, not the masks or the optimizer's moments
        # (without params, check_pruning reads nothing else).
        light = [
            x._replace(masks=None, inner_state=None)
            for x in jax.tree.leaves(state.opt_state, is_leaf=is_state)
            if is_state(x)
        ]
        progprune.check_pruning(self.launcher.get_state(light))

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
        # The host copy is here anyway: check that every pruned weight is 0.0 before saving.
        progprune.check_pruning(host.opt_state, host.params)
        self.ckpt.save(host, meta)

    def _summary(self, state) -> dict[str, Any]:
        self.ckpt.wait()
        step, metrics_at_step = self.last_eval
        eval_metrics = metrics_at_step if step == self.total_steps else self._evaluate(state)
        layers = self._sparsity(state)
        host_params = self.launcher.get_state(state.params)
        workdirs.save_params(self.workdir / "final_params", host_params)
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
            path, tmp = self.workdir / "summary.json", self.workdir / "summary.json.tmp"
            try:  # write-then-rename: summary.json marks a finished run, never a torn one
                tmp.write_text(json.dumps(summary, indent=2))
                tmp.replace(path)
            except OSError as e:
                raise StorageError(f"cannot write {path}: {e}") from e
            self.report.line(metrics.format_summary(summary))
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
        """Restores the SIGTERM handler, closes the bar and waits for pending checkpoints."""
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
        if hasattr(self, "report"):
            self.report.close()
        self.ckpt.wait()


def _finite(row: dict) -> bool:
    return all(v == v and abs(v) != float("inf") for k, v in row.items() if k != "step")
