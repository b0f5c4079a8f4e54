"""A run's workdir: one process at a time, the record of which run it holds, finished runs.

``lock`` keeps a second process out for the whole run (an OS file lock, released on any exit,
SIGKILL included, so it is never stale). ``prepare`` decides whether a workdir holds this run,
another run or no run yet, recovering ``config.json`` from the checkpoints when it is missing or
damaged. ``finished_summary`` recognises a run that is already complete.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from progprune.train.checkpoint import Checkpointer, config_diff, config_fingerprint
from progprune.train.errors import StorageError, WorkdirBusyError
from progprune.train.state import to_host

PyTree = Any
LOGGER = logging.getLogger("progprune.train")
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
)
LOCK_FILE = ".lock"
# Settings of the optimizer that a run may change when it resumes from its checkpoint with
# --config.resume_changed=True (e.g. a lower learning rate after a NaN stop): they change how
# the remaining steps update the weights, not what the state holds or when masks change.
RESUMABLE_CHANGES = (
    "learning_rate",
    "lr_schedule",
    "warmup_epochs",
    "lr_decay_fractions",
    "lr_decay_factor",
    "momentum",
    "nesterov",
    "weight_decay",
)


@contextlib.contextmanager
def lock(workdir: Path) -> Iterator[None]:
    """Holds ``workdir/.lock`` for the body, or raises `WorkdirBusyError` naming the holder.

    Only process 0 of a multi-process run takes it (all processes share the workdir).

    Example:
      >>> import tempfile
      >>> workdir = Path(tempfile.mkdtemp())
      >>> with lock(workdir):
      ...     with lock(workdir):
      ...         pass
      Traceback (most recent call last):
      progprune.train.errors.WorkdirBusyError: workdir '...' is in use by pid ...
    """
    if jax.process_index() != 0:
        yield
        return
    path = workdir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StorageError(f"cannot create the lock file {path}: {e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirBusyError(
                f"workdir {str(workdir)!r} is in use by {holder}; wait for that run to finish "
                "(or stop it), or pass another --workdir."
            ) from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        me = f"pid {os.getpid()} on {socket.gethostname()} (started {started})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _read_record(record: Path) -> dict | None:
    """config.json as written by `prepare`, or None if it is missing or damaged."""
    try:
        theirs = json.loads(record.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None
    except OSError as e:
        raise StorageError(f"cannot read {record}: {e}") from e
    return theirs if isinstance(theirs, dict) and "fingerprint" in theirs else None


def _write_record(record: Path, content: dict) -> None:
    if jax.process_index() != 0:
        return
    tmp = record.with_suffix(".json.tmp")  # write-then-rename: never a half-written record
    try:
        tmp.write_text(json.dumps(content, indent=2, sort_keys=True, default=str))
        tmp.replace(record)
    except OSError as e:
        raise StorageError(f"cannot write {record}: {e}") from e


def remove_run(workdir: Path) -> None:
    """Deletes the files of the run in `workdir` (`RUN_FILES`), as ``config.overwrite`` asks."""
    if jax.process_index() != 0:
        return
    for name in RUN_FILES:
        p = workdir / name
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def prepare(config: ml_collections.ConfigDict, workdir: Path, ckpt: Checkpointer) -> None:
    """Makes `workdir` hold this run, or refuses (``ValueError``) if it holds another one.

    A workdir without checkpoints holds no run (a start that failed before its first
    checkpoint, say): it is taken as it is. One with checkpoints holds the run recorded in
    ``config.json``, or, if that file is missing or damaged, the run recorded in its latest
    checkpoint (the file is then rewritten). A different run is refused unless
    ``config.overwrite`` (delete it) or, for changes of `RESUMABLE_CHANGES` only,
    ``config.resume_changed`` (continue it with the new settings; the change is recorded).

    Example:
      >>> import tempfile
      >>> from configs import tiny
      >>> workdir = Path(tempfile.mkdtemp())
      >>> prepare(tiny.get_config(), workdir, Checkpointer(workdir))
      >>> (workdir / "config.json").exists()
      True
    """
    record = workdir / "config.json"
    mine = {"fingerprint": config_fingerprint(config), "config": _plain(config), "changes": []}
    if not ckpt.steps():
        _write_record(record, mine)
        return
    theirs = _read_record(record)
    if theirs is None:
        try:
            meta = ckpt.latest_meta()
        except ValueError:
            if not config.overwrite:
                raise
            meta = None  # nothing tells which run it was; overwrite was asked for anyway
        if meta is not None:
            what = "missing" if not record.exists() else "damaged"
            _warn(f"{record} was {what}; recovered it from checkpoint {meta['step']}.")
            theirs = {"fingerprint": meta["fingerprint"], "config": meta["config"], "changes": []}
            _write_record(record, theirs)
    if theirs is not None and theirs["fingerprint"] == mine["fingerprint"]:
        return
    diff = config_diff(theirs.get("config", {}), mine["config"]) if theirs else []
    if config.overwrite:
        remove_run(workdir)
        ckpt.reload()
        _write_record(record, mine)
        return
    if config.resume_changed and diff and set(diff) <= set(RESUMABLE_CHANGES):
        step = ckpt.steps()[-1]
        mine["changes"] = [*theirs.get("changes", []), {"from_step": step, "changed": diff}]
        _warn(f"resuming from step {step} with changed {', '.join(diff)}.")
        _write_record(record, mine)
        return
    hint = ""
    if diff and set(diff) <= set(RESUMABLE_CHANGES):
        hint = "pass --config.resume_changed=True to continue it with the new settings, or "
    raise ValueError(
        f"workdir {str(workdir)!r} holds a different run (config differs in "
        f"{', '.join(diff) or 'its fingerprint'}); {hint}use another --workdir, or pass "
        "--config.overwrite=True to delete that run and start over."
    )


def _plain(config: ml_collections.ConfigDict) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=str))


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def finished_summary(workdir: Path, ckpt: Checkpointer) -> dict | None:
    """The summary of a run that already ran to its end in `workdir`, else None.

    Complete means: ``summary.json`` exists and names the step of the latest checkpoint.

    Example:
      >>> import tempfile
      >>> finished_summary(Path(tempfile.mkdtemp()), Checkpointer(tempfile.mkdtemp())) is None
      True
    """
    path = workdir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    steps = ckpt.steps()
    return summary if steps and summary.get("steps") == steps[-1] else None


def save_params(path: Path, params: PyTree) -> None:
    """Writes a params pytree with orbax (synchronously), replacing nothing that exists.

    Example:
      >>> import tempfile, numpy as np
      >>> path = Path(tempfile.mkdtemp()) / "params"
      >>> save_params(path, {"w": np.ones(2, np.float32)})
      >>> ocp.StandardCheckpointer().restore(path)["w"]
      array([1., 1.], dtype=float32)
    """
    if path.exists():
        return
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path.absolute(), params)
    except OSError as e:
        raise StorageError(f"cannot write {path}: {e}") from e


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
    """
    return to_host(ocp.StandardCheckpointer().restore(Path(workdir).absolute() / "rewind_params"))
