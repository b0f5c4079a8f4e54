"""Data-parallel training on forced CPU devices: how deep a queue XLA:CPU survives, and speed.

Two measurements, each in fresh subprocesses (a process's device count is fixed when JAX starts):

1. ``queue``: the deepest queue of dispatched-but-unfinished programs with collectives that
   XLA:CPU completes. A minimal data-parallel step (one matmul, one all-reduce) is dispatched N
   times without waiting, for N found by bisection; a run that has not finished after
   ``--probe_timeout`` seconds is a deadlock (XLA itself aborts after its 40 s rendezvous
   timeout). This is why the trainer bounds the steps in flight on several CPU devices
   (``progprune.train.parallel.steps_in_flight``).
2. ``speed``: images/s of the real quickstart (LeNet-300-100, Fashion-MNIST, batch 128) on 1, 2
   and 8 forced devices under both launchers, and on 1 device with 1, 2, 4 steps in flight and
   no bound, from the trainer's own metrics rows (the first row, which holds the compile, is
   left out). The devices share the same CPU cores, so no speed-up is expected from more
   devices: the point is that it runs, and what the collectives and the bound cost.

    python benchmarks/multidevice.py                 # both, ~10 minutes on 2 idle cores
    python benchmarks/multidevice.py --only speed

Prints tables and writes benchmarks/results/multidevice.json (with the git commit); the
committed one holds the queue depths `progprune.train.parallel` cites.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._report import write_result  # noqa: E402
from experiments.run_sweep import code_version  # noqa: E402  (imports no JAX)

FLAG = "--xla_force_host_platform_device_count"

# One data-parallel step with one all-reduce, dispatched N times before waiting once.
PROBE = """
import sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
n = jax.device_count()
mesh = jax.make_mesh((n,), ("d",))
def step(w, x):
    g = jax.lax.pmean(jnp.tanh(x @ w), "d")
    return w - 1e-3 * g, g.sum()
f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()),
                          check_vma=False), donate_argnums=0)
put = lambda a: jax.device_put(a, NamedSharding(mesh, P()))
w, x = put(np.zeros((256, 256), np.float32)), put(np.ones((256, 256), np.float32))
jax.block_until_ready(f(w, x))
w = put(np.zeros((256, 256), np.float32))
outs = []
for _ in range(int(sys.argv[1])):
    w, m = f(w, x)
    outs.append(m)
jax.block_until_ready(outs)
print("finished")
"""


def _env(devices: int) -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{FLAG}={devices}")


def probe_finishes(devices: int, depth: int, timeout: float) -> bool:
    """Whether `depth` queued steps on `devices` devices finish within `timeout` seconds."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(depth)],
            env=_env(devices),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and "finished" in done.stdout


def deepest_queue(devices: int, timeout: float, high: int = 512) -> dict:
    """Bisection for the largest depth that finishes (``None`` if even `high` does)."""
    if probe_finishes(devices, high, timeout):
        return {"devices": devices, "max_finished": None, "first_deadlock": None, "probed": high}
    low = 1
    while high - low > 1:
        mid = (low + high) // 2
        if probe_finishes(devices, mid, timeout):
            low = mid
        else:
            high = mid
    return {"devices": devices, "max_finished": low, "first_deadlock": high}


def quickstart_speed(devices: int, kind: str, in_flight: int, epochs: float) -> dict:
    """Median images/s of the quickstart's logged windows after the first (compile) one."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [
            sys.executable,
            "-m",
            "progprune.train",
            "--config=configs/quickstart.py",
            f"--workdir={workdir}",
            f"--config.num_epochs={epochs}",
            f"--config.parallel={kind}",
            f"--config.max_steps_in_flight={in_flight}",
            "--config.eval_every_epochs=100",  # evaluate at the end only
        ]
        t0 = time.perf_counter()
        done = subprocess.run(
            cmd, cwd=REPO, env=_env(devices), capture_output=True, text=True, timeout=900
        )
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            return {"devices": devices, "parallel": kind, "error": done.stderr[-500:]}
        rows = [json.loads(x) for x in Path(workdir, "metrics.jsonl").read_text().splitlines()]
        rates = [r["images_per_sec"] for r in rows if "images_per_sec" in r][1:]
        summary = json.loads(Path(workdir, "summary.json").read_text())
    return {
        "devices": devices,
        "parallel": kind,
        "max_steps_in_flight": in_flight or "auto",
        "images_per_sec": statistics.median(rates),
        "images_per_sec_windows": rates,
        "eval_accuracy": summary["eval_accuracy"],
        "process_wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("queue", "speed"), default=None)
    parser.add_argument("--probe_timeout", type=float, default=30.0)
    parser.add_argument("--epochs", type=float, default=3.0)
    args = parser.parse_args()
    result = {
        "commit": code_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "queue": [],
        "speed": [],
    }
    if args.only in (None, "queue"):
        print("deepest queue of dispatched steps (one all-reduce each) that finishes")
        for devices in (2, 8):
            row = deepest_queue(devices, args.probe_timeout)
            result["queue"].append(row)
            print(
                f"  {devices} devices: finishes up to {row['max_finished']}, "
                f"deadlocks from {row['first_deadlock']}",
                flush=True,
            )
    if args.only in (None, "speed"):
        print("quickstart images/s (median of logged windows after the first)")
        cases = [(1, "shard_map", n) for n in (1, 2, 4, 0)]
        cases += [(d, k, 0) for d in (2, 8) for k in ("shard_map", "pmap")]
        for devices, kind, in_flight in cases:
            row = quickstart_speed(devices, kind, in_flight, args.epochs)
            result["speed"].append(row)
            rate = row.get("images_per_sec")
            shown = f"{rate:,.0f}" if rate else row.get("error", "?")
            print(
                f"  {devices} device(s) {kind:9s} in flight {in_flight or 'auto':>4}: {shown}",
                flush=True,
            )
    write_result(REPO / "benchmarks" / "results" / "multidevice.json", result)


if __name__ == "__main__":
    main()
