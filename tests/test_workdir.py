"""A workdir under faults and concurrency: nothing lost, nothing hung, every error named.

Each test reproduces one fault: two processes on one workdir, a SIGKILLed lock holder, a write
that fails (a real OS error: the file-size limit of the process, which holds for root too), a
torn metrics line, a damaged or deleted config.json, an unreadable or damaged checkpoint, a
damaged digit in a checkpoint's metadata, a NaN stop resumed with a lower learning rate.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import tiny
from progprune.train import StorageError, WorkdirBusyError, metrics, train_and_evaluate
from progprune.train import workdir as workdirs
from progprune.train.checkpoint import Checkpointer
from progprune.train.state import TrainState

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, preexec=None, timeout: int = 300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, "-m", "progprune.train", "--config=configs/tiny.py", *args]
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec
    )


def short(steps: int = 20, **fields):
    config = tiny.get_config()
    config.num_train_steps = steps
    for key, value in fields.items():
        setattr(config, key, value)
    return config


# --- 1. one process per workdir -----------------------------------------------------------


def test_a_second_process_is_refused_with_the_holder_named(tmp_path):
    with workdirs.lock(tmp_path):
        t0 = time.time()
        out = cli(f"--workdir={tmp_path}")
    assert out.returncode == 4, out.stderr[-2000:]
    assert f"is in use by pid {os.getpid()}" in out.stderr and "Traceback" not in out.stderr
    assert time.time() - t0 < 120  # refused before any data or training
    assert not (tmp_path / "checkpoints").exists()


def test_the_lock_of_a_killed_process_is_free(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib; from progprune.train import workdir as w\n"
            "with w.lock(pathlib.Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"), workdirs.lock(tmp_path):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with workdirs.lock(tmp_path):  # the kernel released it with the process
        assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    config = short()
    config.pruning.sparsity = 0.5
    config.learning_rate = -1.0  # refused by validation, after nothing was locked...
    with pytest.raises(ValueError):
        train_and_evaluate(config, str(tmp_path))
    config = short(steps=8, data=config.data)
    config.data.data_dir = str(tmp_path / "nowhere")
    config.data.name = "fashion_mnist"
    with pytest.raises(FileNotFoundError):  # ...and by the data, while it was locked
        train_and_evaluate(config, str(tmp_path))
    with workdirs.lock(tmp_path):
        pass


# --- 2. a failed write fails at once, and keeps what was written --------------------------


def _limit_file_size(limit: int):
    def apply() -> None:  # a write past `limit` bytes fails with EFBIG, for root too
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_a_failed_background_checkpoint_write_stops_the_run_at_once(tmp_path):
    # Every file of a tiny checkpoint is over 2 kB (its _METADATA alone is 5 kB); config.json
    # and the first metrics rows are not. The write fails in orbax's background thread.
    t0 = time.time()
    out = cli(
        f"--workdir={tmp_path}",
        "--config.async_checkpointing=True",
        "--config.log_every_steps=100",
        preexec=_limit_file_size(2_000),
        timeout=240,  # orbax's own wait for a failed write is 300 s
    )
    assert out.returncode == 5, out.stderr[-3000:]
    line = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert len(line) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"writing checkpoint 10 to {tmp_path}/checkpoints failed" in line[0]
    assert "[Errno 27] File too large" in line[0] and "no checkpoint was written yet" in line[0]
    assert time.time() - t0 < 180


def _state(step: int, value: float) -> TrainState:
    noise = np.random.default_rng(step).standard_normal((64, 64)).astype(np.float32)
    params = {"w": noise + np.float32(value)}  # 16 kB that do not compress
    return TrainState(np.asarray(step, np.int32), params, {}, (), np.zeros(2, np.uint32))


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(_state(1, 1.0), {"config": {}, "fingerprint": "f", "window": []})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, hard))
    try:
        with pytest.raises(StorageError, match="writing checkpoint 2 .* checkpoint 1 is kept"):
            ckpt.save(_state(2, 2.0), {"config": {}, "fingerprint": "f", "window": []})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    ckpt.close()
    again = Checkpointer(tmp_path, async_save=False)
    assert again.steps() == [1]
    state, _ = again.restore_latest(_state(0, 0.0))
    assert int(state.step) == 1
    np.testing.assert_array_equal(state.params["w"], _state(1, 1.0).params["w"])


def test_an_unusable_checkpoint_directory_is_a_storage_error(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the directory should be")
    out = cli(f"--workdir={tmp_path}")
    assert out.returncode == 5 and "checkpoints" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


# --- 3, 5. side files: recovered where they can be, named where they cannot ---------------


@pytest.fixture
def interrupted(tmp_path):
    """A tiny run of 20 steps as a kill right after its checkpoint at step 10 leaves it."""
    # Logged every 4 steps: the checkpoint at 10 carries the metrics of steps 9 and 10.
    config = short(checkpoint_every_steps=10, log_every_steps=4)
    train_and_evaluate(config, str(tmp_path))
    for name in ("checkpoints/20", "final_params", "summary.json"):
        path = tmp_path / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return tmp_path, config


def _fingerprint(config) -> str:
    from progprune.train.checkpoint import config_fingerprint

    return config_fingerprint(config)


def _rows(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_torn_last_metrics_line_is_dropped_on_resume(interrupted):
    workdir, config = interrupted
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 12, "train_lo')  # what a crash mid-append leaves
    train_and_evaluate(config, str(workdir))
    steps = [r["step"] for r in _rows(workdir) if "train_loss" in r]
    assert steps == [4, 8, 12, 16, 20]


def test_a_damaged_metrics_line_in_the_middle_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a JSON row.*delete that"):
        metrics.truncate_jsonl(path, 5)


def test_metrics_are_rewritten_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n')
    monkeypatch.setattr(
        Path, "replace", lambda self, target: (_ for _ in ()).throw(OSError(28, "full"))
    )
    with pytest.raises(StorageError, match="cannot rewrite"):
        metrics.truncate_jsonl(path, 1)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'  # a crash here loses nothing


@pytest.mark.parametrize("damage", ["garbled", "deleted"])
def test_config_json_is_recovered_from_the_checkpoint(interrupted, damage, capfd):
    workdir, config = interrupted
    record = workdir / "config.json"
    record.write_text("{not json") if damage == "garbled" else record.unlink()
    summary = train_and_evaluate(config, str(workdir))
    assert summary["steps"] == 20
    assert "recovered it from checkpoint 10" in capfd.readouterr().err
    assert json.loads(record.read_text())["fingerprint"] == _fingerprint(config)


def test_overwrite_gets_past_a_damaged_config_json(interrupted):
    workdir, config = interrupted
    (workdir / "config.json").write_text("\x00\x00")
    config.pruning.sparsity, config.overwrite = 0.3, True
    assert train_and_evaluate(config, str(workdir))["target_sparsity"] == 0.3


def test_a_workdir_without_checkpoints_holds_no_run(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"fingerprint": "other", "config": {}}))
    assert train_and_evaluate(short(steps=8), str(tmp_path))["steps"] == 8


# --- 4, 6. restore: damaged data set aside, failing storage named ------------------------


def test_an_unreadable_checkpoint_stops_the_run_and_moves_nothing(interrupted, monkeypatch):
    workdir, config = interrupted
    import progprune.train.checkpoint as checkpoint_module

    def unreadable(path, *args, **kwargs):
        if "checkpoints" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "open", unreadable, raising=False)
    with pytest.raises(StorageError, match=r"cannot read checkpoint 10 .*Permission denied"):
        train_and_evaluate(config, str(workdir))
    assert Checkpointer(workdir).steps() == [10]
    assert not (workdir / "corrupt_checkpoints").exists()


def _meta_file(workdir: Path, step: int) -> Path:
    return workdir / "checkpoints" / str(step) / "meta" / "metadata"


def test_a_damaged_digit_in_checkpoint_metadata_is_detected(interrupted, capfd):
    workdir, config = interrupted
    meta = _meta_file(workdir, 10)
    text = meta.read_text()
    window = json.loads(text)["window"]
    assert window, "the metric window must be in the checkpoint for this test to mean anything"
    digit = str(window[0]["train_loss"])[-2]
    changed = text.replace(
        str(window[0]["train_loss"]),
        str(window[0]["train_loss"])[:-2]
        + str((int(digit) + 1) % 10)
        + str(window[0]["train_loss"])[-1],
        1,
    )
    assert changed != text
    meta.write_text(changed)
    summary = train_and_evaluate(config, str(workdir))
    err = capfd.readouterr().err
    assert "checkpoint 10 is damaged (ValueError: checksum mismatch)" in err
    assert "none of the 1 checkpoint(s)" in err and "starts again from step 0" in err
    assert summary["steps"] == 20 and list((workdir / "corrupt_checkpoints").iterdir())


# --- 7, 8. exit codes; a NaN stop resumed with a lower learning rate ---------------------


def test_nan_stop_exits_3_and_resumes_with_a_lower_learning_rate(tmp_path):
    args = [
        f"--workdir={tmp_path}",
        "--config.learning_rate=1e12",
        "--config.warmup_epochs=2.0",
        "--config.checkpoint_every_steps=2",
        "--config.log_every_steps=1",
    ]
    out = cli(*args)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "--config.resume_changed=True" in out.stderr and "Traceback" not in out.stderr
    kept = Checkpointer(tmp_path).steps()[-1]
    refused = cli(*args[:1], "--config.learning_rate=0.05", *args[2:])
    assert refused.returncode == 2 and "--config.resume_changed=True" in refused.stderr
    resumed = cli(
        *args[:1], "--config.learning_rate=0.05", *args[2:], "--config.resume_changed=True"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {kept} with changed learning_rate" in resumed.stderr
    assert f"resumed from checkpoint {kept}" in resumed.stdout
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["changes"] == [{"from_step": kept, "changed": ["learning_rate"]}]
    # Other changes stay refused, with or without the flag.
    other = cli(*args[:1], "--config.seed=3", "--config.resume_changed=True")
    assert other.returncode == 2 and "differs in seed" in other.stderr
    assert jax.tree.leaves(json.loads((tmp_path / "summary.json").read_text()))
