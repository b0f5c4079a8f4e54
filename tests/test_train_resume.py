"""Checkpoint specifications: exact resume after SIGKILL, fallback from a corrupt checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from configs import tiny
from progprune.train import build, train_and_evaluate
from progprune.train.checkpoint import Checkpointer
from progprune.train.state import to_host

from runs import (
    assert_same_final_params,
    checkpoint_steps,
    configured,
    metric_rows,
    rerun,
    start_then_signal,
    train_command,
)

OVERRIDES = {  # long enough to be killed mid-run; odd periods so the kill lands anywhere
    "num_epochs": 8.0,
    "checkpoint_every_steps": 7,
    "log_every_steps": 5,
    "async_checkpointing": True,
}


def _config():
    return configured(tiny.get_config(), OVERRIDES)


def _command(workdir: Path) -> list[str]:
    return train_command(workdir, OVERRIDES)


def _assert_same_run(a: Path, b: Path) -> None:
    assert_same_final_params(a, b)
    assert metric_rows(a) == metric_rows(b)
    sa, sb = (json.loads((w / "summary.json").read_text()) for w in (a, b))
    sa.pop("wall_clock_s"), sb.pop("wall_clock_s")
    assert sa == sb


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (in-process: the CLI calls the same function)."""
    workdir = tmp_path_factory.mktemp("reference")
    train_and_evaluate(_config(), str(workdir))
    return workdir


def test_sigkill_then_rerun_is_bit_identical(reference, tmp_path):
    workdir = tmp_path / "killed"
    ckpts = workdir / "checkpoints"
    start_then_signal(_command(workdir), lambda: max(checkpoint_steps(ckpts), default=0) >= 50)
    assert not (workdir / "summary.json").exists()
    killed_at = max(json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open())
    assert killed_at < 176  # really interrupted (8 epochs x 22 steps)
    rerun(_command(workdir))
    _assert_same_run(reference, workdir)


def _corrupt(step_dir: Path) -> None:
    """Overwrites the array data files of a checkpoint with garbage of the same size."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 64]
    assert files
    for p in files:
        p.write_bytes(os.urandom(p.stat().st_size))


def test_corrupt_latest_checkpoint_falls_back_and_finishes_identically(reference, tmp_path):
    workdir = tmp_path / "corrupt"
    shutil.copytree(reference, workdir)
    ckpt = Checkpointer(workdir)
    steps = ckpt.steps()
    ckpt.close()
    # Pretend the run died after its second-to-last checkpoint with the last one corrupt.
    for name in ("summary.json", "final_params"):
        path = workdir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _corrupt(workdir / "checkpoints" / str(steps[-1]))
    train_and_evaluate(_config(), str(workdir))
    moved = list((workdir / "corrupt_checkpoints").iterdir())
    assert [p.name.split("_")[0] for p in moved] == [str(steps[-1])]
    _assert_same_run(reference, workdir)


def test_tampered_checkpoint_is_detected_by_checksum(reference, tmp_path):
    workdir = tmp_path / "tampered"
    shutil.copytree(reference / "checkpoints", workdir / "checkpoints")
    ckpt = Checkpointer(workdir)
    steps = ckpt.steps()
    meta_file = workdir / "checkpoints" / str(steps[-1]) / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["checksum"] = "00000000"  # as if the data no longer matched what was written
    meta_file.write_text(json.dumps(meta))
    state, _ = ckpt.restore_latest(_fresh_host_state(_config()))
    assert int(state.step) == steps[-2]
    assert (workdir / "corrupt_checkpoints").exists()


def _fresh_host_state(config):
    """A host TrainState with the structure a run of `config` checkpoints."""
    ds = build.load_data(config)
    tx = build.make_plan(config, len(ds.train)).tx
    return to_host(build.initial_state(config, tx, ds.train))


def test_sigterm_checkpoints_at_once_and_rerun_is_bit_identical(reference, tmp_path):
    workdir = tmp_path / "preempted"
    ckpts = workdir / "checkpoints"
    # SIGTERM is what a preempted VM or a scheduler sends.
    proc = start_then_signal(
        _command(workdir), lambda: bool(checkpoint_steps(ckpts)), signal.SIGTERM
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "preempted at step" in err
    stopped_at = int(err.split("preempted at step ")[1].split(";")[0])
    # Saved right where it stopped, not at the last periodic checkpoint.
    assert checkpoint_steps(ckpts)[-1] == stopped_at
    rerun(_command(workdir))
    _assert_same_run(reference, workdir)
