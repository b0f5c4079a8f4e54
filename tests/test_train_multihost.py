"""Two processes on localhost (jax.distributed + gloo CPU collectives) == one process.

Each process has 2 CPU devices; the 2-process run must match a 1-process run on 4 devices
with the same global batch (same final params within 1e-5, identical metrics rows up to
float noise), and only process 0 writes the run's files (checked on the files themselves).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from progprune.train import load_final_params

REPO = Path(__file__).resolve().parent.parent
FLAGS = [
    "--config=configs/tiny.py",
    "--config.num_train_steps=12",
    "--config.checkpoint_every_steps=5",
]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    cmd = [sys.executable, "-m", "progprune.train", *FLAGS]
    single = subprocess.run(
        [*cmd, f"--workdir={tmp_path / 'single'}"],
        cwd=REPO,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    port, workdir = _free_port(), tmp_path / "multi"
    procs = [
        subprocess.Popen(
            [
                *cmd,
                f"--workdir={workdir}",
                "--distributed",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    a, b = load_final_params(str(tmp_path / "single")), load_final_params(str(workdir))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    sa, sb = (json.loads((w / "summary.json").read_text()) for w in (tmp_path / "single", workdir))
    assert sb["devices"] == 4
    assert sb["eval_accuracy"] == pytest.approx(sa["eval_accuracy"], abs=1e-6)
    assert sb["sparsity"] == sa["sparsity"]
    assert "eval_accuracy" in outs[0][0] and "eval_accuracy" not in outs[1][0]  # process 0 only
    _assert_written_once(tmp_path / "single", workdir)


def _assert_written_once(single: Path, multi: Path) -> None:
    """The shared workdir holds what one writer writes: had process 1 written too, rows would
    be doubled and a second (or a doubled) TensorBoard file would appear."""

    def rows(workdir: Path) -> list[tuple]:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], tuple(sorted(r))) for r in map(json.loads, lines)]

    assert rows(multi) == rows(single)
    events = [sorted((w / "tensorboard").glob("events.out.tfevents*")) for w in (single, multi)]
    assert [len(e) for e in events] == [1, 1]
    sizes = [e[0].stat().st_size for e in events]
    assert sizes[1] < 1.5 * sizes[0], sizes
