"""The command line as a new user meets it: every mistake is one line and an exit code, a run
never ends silently unpruned, logs are readable without a terminal, and a finished run is left
alone. Real Fashion-MNIST (the quickstart's data and model) where the behaviour depends on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ml_collections import ConfigDict

from progprune import methods

REPO = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not FMNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)"
)


def cli(*args: str, cwd: Path = REPO, config: str = "configs/tiny.py", timeout: int = 300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one device, as on a laptop
    cmd = [sys.executable, "-m", "progprune.train", f"--config={config}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess, code: int) -> str:
    """The run failed with `code` and said why on one line, without a traceback."""
    assert out.returncode == code, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-2000:]
    return errors[0]


# --- 1. a run reaches its target sparsity exactly, or refuses to start ----------------------


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 3000),
    steps_per_epoch=st.integers(1, 600),
    update_every=st.one_of(st.just(0), st.integers(1, 700)),
    fractions=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
    oneshot=st.floats(0, 1),
    method=st.sampled_from(["progressive", "gmp", "oneshot"]),
    target=st.sampled_from([0.5, 0.9, 0.98, 0.999]),
)
def test_every_accepted_run_ends_at_its_target_on_an_update_inside_the_run(
    total, steps_per_epoch, update_every, fractions, oneshot, method, target
):
    pruning = ConfigDict(
        dict(
            method=method,
            sparsity=target,
            begin_fraction=fractions[0],
            end_fraction=fractions[1],
            oneshot_fraction=oneshot,
            update_every=update_every,
            distribution="global",
            prunable=None,
        )
    )
    period = update_every or max(1, steps_per_epoch // 2)
    updates = range(0, total, period)  # optimizer counts at which `masked` may prune
    try:
        setup = methods.pruning_setup(pruning, total, steps_per_epoch)
    except ValueError as e:
        # Refused only when no update falls after the ramp's start, and the message says so.
        assert method != "oneshot" and updates[-1] <= round(fractions[0] * total)
        assert "update_every" in str(e) and "unpruned" in str(e)
        return
    assert setup.update_every == period
    assert setup.last_update in updates
    # The schedule is non-decreasing, so the sparsity reached is the value at the last update:
    # exactly the target (in float32, which the core rounds to exactly round(target * N)).
    reached = max(float(setup.schedule(c)) for c in {0, setup.last_update, updates[-1]})
    assert reached == float(setup.schedule(setup.last_update)) == float(np.float32(target))
    if method != "oneshot" and setup.last_update >= period:
        # Before that update the masks were sparser-or-equal, never past the target.
        assert float(setup.schedule(setup.last_update - period)) <= reached


@needs_fmnist
@pytest.mark.parametrize("length", ["--config.num_train_steps=200", "--config.num_epochs=0.3"])
def test_a_run_too_short_for_its_mask_updates_is_refused(tmp_path, length):
    half_an_epoch = "--config.pruning.update_every=0"
    out = cli(f"--workdir={tmp_path}", length, half_an_epoch, config="configs/quickstart.py")
    line = one_line_error(out, 2)
    assert "update_every=234" in line and "end unpruned" in line and "Set --config." in line
    assert not list((tmp_path / "checkpoints").glob("*"))  # nothing was trained


@needs_fmnist
def test_a_short_real_run_reaches_exactly_its_target(tmp_path):
    out = cli(
        f"--workdir={tmp_path}",
        "--config.num_train_steps=60",
        "--config.pruning.update_every=20",  # the error above suggests this kind of fix
        config="configs/quickstart.py",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    n = 784 * 300 + 300 * 100 + 100 * 10
    assert summary["sparsity"] == round(0.9 * n) / n


# --- 2, 3. mistakes: one line, and the corrected command works ------------------------------


@needs_fmnist
def test_failed_start_does_not_block_the_corrected_command(tmp_path):
    out = cli(
        f"--workdir={tmp_path}",
        f"--config.data.data_dir={tmp_path / 'nowhere'}",
        config="configs/quickstart.py",
    )
    line = one_line_error(out, 2)
    assert "nowhere" in line and "prepare" in line  # where it looked, and how to get the data
    fixed = cli(
        f"--workdir={tmp_path}",
        "--config.num_train_steps=20",
        "--config.pruning.update_every=5",
        config="configs/quickstart.py",
    )
    assert fixed.returncode == 0, fixed.stderr[-2000:]


def test_missing_config_file(tmp_path):
    line = one_line_error(cli(f"--workdir={tmp_path}", config="configs/nope.py"), 2)
    assert "config file 'configs/nope.py' not found" in line


def test_absolute_config_path_works_from_any_directory(tmp_path):
    out = cli(
        f"--workdir={tmp_path / 'w'}",
        "--config.num_train_steps=8",
        cwd=tmp_path,
        config=str(REPO / "configs" / "tiny.py"),
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_imp_runs_from_the_command_line(tmp_path):
    out = cli(
        f"--workdir={tmp_path}",
        "--config.num_train_steps=8",
        "--config.pruning.method=imp",
        "--config.pruning.imp_rounds=1",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rounds = json.loads((tmp_path / "imp_rounds.json").read_text())
    assert [r["target_sparsity"] for r in rounds] == [0.0, 0.5]


# --- 4, 5. logs without a terminal; a finished run is left alone ----------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    out = cli(f"--workdir={workdir}", "--config.num_train_steps=30")
    assert out.returncode == 0, out.stderr[-2000:]
    return workdir, out


def test_plain_progress_lines_when_stdout_is_not_a_terminal(finished):
    _, out = finished
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Training tiny_mlp on digits/train") and "steps 0..30" in lines[0]
    steps = [line.split()[1] for line in lines if line.startswith("step ")]
    assert steps == ["5/30", "10/30", "15/30", "20/30", "25/30", "30/30"]  # log_every_steps=5
    row = next(line for line in lines if line.startswith("step 10/30"))
    for field in ("epoch", "loss", "accuracy", "sparsity", "img/s", "left"):
        assert field in row, row
    assert [line.split()[3] for line in lines if line.startswith("eval at")] == ["22:", "30:"]
    assert "\r" not in out.stdout + out.stderr  # no progress bar redraws in a log file


def test_rerunning_a_finished_run_changes_nothing(finished):
    workdir, _ = finished
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    again = cli(f"--workdir={workdir}", "--config.num_train_steps=30")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "is already complete (step 30 of 30); nothing to train" in again.stdout
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    # No new TensorBoard events file, summary.json (and its wall-clock) untouched. The lock
    # file is rewritten with the new holder; nothing else.
    assert {p.name for p in after} == {p.name for p in before}
    changed = [p.name for p in after if after[p] != before.get(p)]
    assert changed == [".lock"], changed
