"""Checkpoints of the whole train state with orbax, validated on restore.

Each checkpoint holds two items: ``state`` (the `TrainState` as host numpy arrays) and
``meta`` (JSON: step, the state's CRC32, the config and its fingerprint). Orbax writes to a
temporary directory and renames it on commit, so a run killed mid-save leaves no partial
step behind. On restore a step whose files are unreadable, whose checksum or step disagrees,
or whose parameters are not finite is moved to ``workdir/corrupt_checkpoints/`` with a
warning and the previous step is tried; a good checkpoint is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from progprune.train.state import TrainState, all_finite, state_checksum

# Fields that change how a run is watched or stored, not what it computes: a resumed run may
# change them without being "a different run".
NON_SEMANTIC_KEYS = (
    "overwrite",
    "progress_bar",
    "log_every_steps",
    "checkpoint_every_steps",
    "max_to_keep",
    "async_checkpointing",
    "eval_every_epochs",
    "max_steps_in_flight",
)


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
    """SHA-256 (16 hex) of the config without `NON_SEMANTIC_KEYS`.

    >>> from ml_collections import ConfigDict
    >>> config_fingerprint(ConfigDict({"a": 1, "overwrite": True})) == config_fingerprint(
    ...     ConfigDict({"a": 1, "overwrite": False}))
    True
    """
    d = {k: v for k, v in config.to_dict().items() if k not in NON_SEMANTIC_KEYS}
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested config dicts, as dotted paths.

    >>> config_diff({"a": 1, "p": {"s": 0.9}}, {"a": 1, "p": {"s": 0.5}})
    ['p.s']
    """
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb and key not in NON_SEMANTIC_KEYS:
            out.append(prefix + key)
    return out


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for one workdir.

    Example:
      >>> ckpt = Checkpointer("/tmp/ckpt_doc", max_to_keep=2)  # doctest: +SKIP
      >>> ckpt.save(state, {"config": {}, "fingerprint": "x"})  # doctest: +SKIP
      >>> state, meta = ckpt.restore_latest(target_state)       # doctest: +SKIP
    """

    def __init__(self, workdir: str | Path, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.corrupt_dir = Path(workdir).absolute() / "corrupt_checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def steps(self) -> list[int]:
        """The steps that have a checkpoint on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, meta: dict[str, Any]) -> None:
        """Saves a host-numpy state (async if enabled); refuses a non-finite one."""
        step = int(state.step)
        if not all_finite(state.params):
            raise FloatingPointError(f"refusing to checkpoint non-finite parameters at {step=}")
        meta = dict(meta, step=step, checksum=state_checksum(state), time=time.time())
        if step in self.manager.all_steps():
            return  # Already saved (e.g. the final step after a resume).
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def _restore(self, step: int, target: TrainState) -> tuple[TrainState, dict]:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        state, meta = restored.state, restored.meta
        state = jax.tree.map(lambda x: jax.device_get(x), state)
        problems = []
        if meta.get("step") != step or int(state.step) != step:
            problems.append(f"step mismatch (dir {step}, meta {meta.get('step')}, {state.step=})")
        if state_checksum(state) != meta.get("checksum"):
            problems.append("checksum mismatch")
        if not all_finite(state.params):
            problems.append("non-finite parameters")
        if problems:
            raise ValueError("; ".join(problems))
        return state, meta

    def restore_latest(self, target: TrainState) -> tuple[TrainState, dict] | None:
        """Restores the newest valid checkpoint, setting bad ones aside; None if none exists."""
        for step in reversed(self.steps()):
            try:
                return self._restore(step, target)
            except Exception as e:  # noqa: BLE001 - any failure means "this step is unusable".
                self._set_aside(step, e)
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        dest = self.corrupt_dir / f"{step}_{int(time.time())}"
        logging.warning(
            "Checkpoint at step %d is unusable (%s: %s); moved to %s, trying the previous one.",
            step,
            type(error).__name__,
            str(error)[:300],
            dest,
        )
        if jax.process_index() == 0:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), dest)
        if jax.process_count() > 1:  # everyone sees the move before listing steps again
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"progprune_set_aside_{step}")
        self.manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """Whether a multi-host preemption notice asks to save and stop at `step`."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until every pending (async) save is committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's threads."""
        self.manager.close()
