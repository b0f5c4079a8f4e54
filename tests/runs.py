"""What the trainer tests share: configs with overrides, the CLI's command, killing a run.

Imported by the test modules as ``runs`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from progprune.train import load_final_params

REPO = Path(__file__).resolve().parent.parent


def configured(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]):
    """`config` with ``{"a.b": value}`` overrides set, as ``--config.a.b=value`` would."""
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        setattr(config[section] if section else config, field, value)
    return config


def train_command(
    workdir: Path, overrides: Mapping[str, Any] = {}, config_file: str = "configs/tiny.py"
) -> list[str]:
    """``python -m progprune.train`` with `overrides` as ``--config.`` flags."""
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    return [
        sys.executable,
        "-m",
        "progprune.train",
        f"--config={config_file}",
        f"--workdir={workdir}",
        *flags,
    ]


def checkpoint_steps(directory: Path) -> list[int]:
    """The steps of the finished checkpoints in `directory` (none if it does not exist)."""
    return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())


def start_then_signal(
    command: list[str],
    ready: Callable[[], bool],
    sig: int = signal.SIGKILL,
    timeout: float = 300,
    env: dict | None = None,
) -> subprocess.Popen:
    """Starts `command`, sends `sig` once `ready()` holds; fails if the run ended before that.

    Returns the process; after SIGKILL it has been waited for, otherwise the caller collects it.
    """
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, (
        f"run ended before it could be signalled: {proc.stderr.read()[-2000:]}"
    )
    proc.send_signal(sig)
    if sig == signal.SIGKILL:
        proc.wait()
    return proc


def rerun(command: list[str], timeout: float = 600, env: dict | None = None) -> None:
    """Runs `command` to its end and checks that it succeeded."""
    out = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]


def metric_rows(workdir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` without throughput (wall-clock: differs between runs)."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_sec"} for line in lines]


def assert_same_final_params(a: Path, b: Path) -> None:
    """The final parameters of two runs are bit-identical."""
    pa, pb = load_final_params(str(a)), load_final_params(str(b))
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(x, y)
