"""Checkpoints of the whole train state with orbax, validated on restore.

Each checkpoint holds two items: ``state`` (the `TrainState` as host numpy arrays) and
``meta`` (JSON: step, the config and its fingerprint, the host-side bookkeeping of the loop,
and a CRC32 over the state's bytes and every other field of ``meta``). Orbax writes to a
temporary directory and renames it on commit, so a run killed mid-save leaves no partial step
behind.

On restore, damaged data and failing storage are told apart. First every file of the step is
opened and read: one that cannot be (permissions, an I/O error) stops the run with a
`StorageError` naming it, and nothing is moved. A step whose files read but do not restore,
whose checksum or step disagrees, or whose parameters are not finite is damaged: it is moved to
``workdir/corrupt_checkpoints/`` with a warning and the previous step is tried. A failed write
raises `StorageError` at once (the previous checkpoint stays as it was) instead of waiting out
orbax's background threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from progprune.train.errors import StorageError
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
    "resume_changed",
    "record_masks",
    "record_weights",
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
      >>> import tempfile, numpy as np
      >>> state = TrainState(np.asarray(3, np.int32), {"w": np.ones(2, np.float32)}, {}, (),
      ...                    np.zeros(2, np.uint32))
      >>> ckpt = Checkpointer(tempfile.mkdtemp(), async_save=False)
      >>> ckpt.save(state, {"config": {}, "fingerprint": "x", "window": []})
      >>> restored, meta = ckpt.restore_latest(state)
      >>> int(restored.step), meta["window"]
      (3, [])
      >>> ckpt.close()
    """

    def __init__(self, workdir: str | Path, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.corrupt_dir = Path(workdir).absolute() / "corrupt_checkpoints"
        self.failed = False  # a write failed: orbax's background threads may hang on close
        self.last_save: int | None = None  # the step of the latest write started
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        try:
            self.manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "meta")
            )
        except OSError as e:
            raise StorageError(f"cannot use checkpoint directory {self.directory}: {e}") from e

    def steps(self) -> list[int]:
        """The steps that have a checkpoint on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def reload(self) -> None:
        """Lists the steps on disk again (after files were moved or deleted)."""
        self.manager.reload()

    def save(self, state: TrainState, meta: dict[str, Any]) -> None:
        """Saves a host-numpy state (async if enabled); refuses a non-finite one.

        Raises:
          StorageError: if this or an earlier (async) write failed; nothing is waited for.
        """
        step = int(state.step)
        if not all_finite(state.params):
            raise FloatingPointError(f"refusing to checkpoint non-finite parameters at {step=}")
        self._raise_failed_write()
        if step in self.manager.all_steps():
            return  # Already saved (e.g. the final step after a resume).
        self._probe_writable()
        # A snapshot: an async write serializes `meta` later, and the caller's live objects (the
        # trainer's metric window) may have grown by then, so the written meta would no longer
        # match the checksum taken now.
        meta = json.loads(json.dumps(dict(meta, step=step, time=time.time()), default=str))
        meta.update(checksum=meta_checksum(state, meta), checksum_version=2)
        previous, self.last_save = self.last_save, step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - any failure to write is a storage fault
            # manager.save first waits for the previous (async) write: its error shows here.
            failed = previous if previous is not None and previous not in self.steps() else step
            raise self._write_error(failed, e) from e

    def _probe_writable(self) -> None:
        """Writes and removes a small file, so a read-only or full disk fails here, at once."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".probe") as f:
                f.write(b"\0" * 512)  # a full disk refuses even this; 2 kB files pass
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self.failed = True
            raise StorageError(
                f"cannot write checkpoints to {self.directory}: {e}. Free space or fix the "
                f"permissions and rerun; {self._kept()}."
            ) from e

    def _kept(self) -> str:
        steps = self.steps()
        return f"checkpoint {steps[-1]} is kept" if steps else "no checkpoint was written yet"

    def _write_error(self, step: int | None, error: BaseException) -> StorageError:
        self.failed = True
        return StorageError(
            f"writing checkpoint {step} to {self.directory} failed ({_os_reason(error)}); "
            f"{self._kept()}. Fix the storage and rerun to resume."
        )

    def check(self) -> None:
        """Raises `StorageError` if a background (async) write has failed since it started."""
        self._raise_failed_write()

    def _raise_failed_write(self) -> None:
        """Raises the error of a background write that failed since the last call, if any."""
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._write_error(self.last_save, e) from e

    def _check_readable(self, step: int) -> None:
        """Opens and reads every file of `step`; an OS error is a storage fault, not damage."""

        def fail(e: OSError) -> None:
            raise StorageError(
                f"cannot read checkpoint {step} ({e.filename}): {e.strerror}. Fix the "
                "permissions or the storage and rerun; no checkpoint was moved or deleted."
            ) from e

        for root, _, files in os.walk(self.directory / str(step), onerror=fail):
            for name in files:
                try:
                    with open(os.path.join(root, name), "rb") as f:
                        while f.read(1 << 20):
                            pass
                except OSError as e:
                    fail(e)

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
        if meta.get("checksum_version") == 2:
            expected = meta_checksum(state, meta)
        else:  # written before the checksum covered meta: the state alone
            expected = state_checksum(state)
        if expected != meta.get("checksum"):
            problems.append("checksum mismatch")
        if not all_finite(state.params):
            problems.append("non-finite parameters")
        if problems:
            raise ValueError("; ".join(problems))
        return state, meta

    def latest_meta(self) -> dict[str, Any]:
        """``meta`` of the newest checkpoint whose meta reads (for a lost config.json).

        Raises:
          ValueError: if no checkpoint's meta can be read.
        """
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                )
                meta = dict(restored.meta)
            except Exception:  # noqa: BLE001, S112 - try the previous step
                continue
            if {"config", "fingerprint"} <= set(meta):
                return dict(meta, step=step)
        raise ValueError(
            f"no checkpoint in {self.directory} records its config; pass "
            "--config.overwrite=True to start over in this workdir, or use another --workdir."
        )

    def restore_latest(self, target: TrainState) -> tuple[TrainState, dict] | None:
        """Restores the newest valid checkpoint, setting damaged ones aside; None if none exists.

        Raises:
          StorageError: if a checkpoint's files cannot be read (nothing is moved then).
        """
        steps = self.steps()
        for step in reversed(steps):
            self._check_readable(step)
            try:
                return self._restore(step, target)
            except Exception as e:  # noqa: BLE001 - readable but unusable: damaged data.
                self._set_aside(step, e)
        if steps and jax.process_index() == 0:
            print(
                f"warning: none of the {len(steps)} checkpoint(s) in {self.directory} could be "
                f"restored (moved to {self.corrupt_dir}); training starts again from step 0.",
                file=sys.stderr,
                flush=True,
            )
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        dest = self.corrupt_dir / f"{step}_{int(time.time())}"
        if jax.process_index() == 0:
            print(
                f"warning: checkpoint {step} is damaged ({type(error).__name__}: "
                f"{str(error)[:300]}); moved to {dest}, trying the previous one.",
                file=sys.stderr,
                flush=True,
            )
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
        """Blocks until every pending (async) save is committed.

        Raises:
          StorageError: if a pending write failed.
        """
        if self.failed:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_error(self.last_save, e) from e

    def close(self) -> None:
        """Waits for pending saves and releases the manager's threads.

        After a failed write it returns at once: orbax's threads of that write would wait
        out their own timeout (minutes) for a directory that was never created.
        """
        if not self.failed:
            self.manager.close()


def _os_reason(error: BaseException) -> str:
    """The operating system's reason inside a (possibly wrapped) write error.

    >>> _os_reason(ValueError("OUT_OF_RANGE: Failed to write: File too large [os_error_code='27']"))
    '[Errno 27] File too large'
    """
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return f"[Errno {seen.errno}] {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    # The storage library reports OS errors inside its own message.
    found = re.search(r"([^:]+?) \[os_error_code='?(\d+)'?\]", str(error))
    if found:
        return f"[Errno {found.group(2)}] {found.group(1).strip()}"
    return f"{type(error).__name__}: {str(error)[:300]}"


def meta_checksum(state: TrainState, meta: dict[str, Any]) -> str:
    """CRC32 (hex) over the state's bytes and every field of `meta` but the checksum itself.

    Covers what a resume restores besides the state (the metric window, the wall-clock, the
    config), so a damaged digit in ``meta`` is detected like a damaged weight.

    Example:
      >>> import numpy as np
      >>> w, rng = {"w": np.zeros(2, np.float32)}, np.zeros(2, np.uint32)
      >>> s = TrainState(np.int32(0), w, {}, (), rng)
      >>> meta_checksum(s, {"window": [1.0]}) == meta_checksum(s, {"window": [1.5]})
      False
    """
    fields = {k: v for k, v in meta.items() if k not in ("checksum", "checksum_version")}
    text = json.dumps(fields, sort_keys=True, default=str).encode()
    return f"{zlib.crc32(text, int(state_checksum(state), 16)):08x}"
