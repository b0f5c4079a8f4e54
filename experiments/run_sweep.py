"""Runs a sweep from ``experiments/sweeps.py`` here, one run after another, or prints its commands.

    python -m experiments.run_sweep --sweep=fmnist_lenet300_cpu            # run, resumable
    python -m experiments.run_sweep --sweep=cifar10 --print_commands       # one line per run
    python -m experiments.run_sweep --sweep=cifar10 --only=resnet18-snip-s0.8-seed0

Each run gets ``<root>/<sweep>/<run name>/`` (``--root`` defaults to ``workdirs``) with the
trainer's files plus ``run.json`` (its overrides). A run whose ``summary.json`` exists is skipped,
so rerunning the same command resumes a sweep (an interrupted run also resumes from its own
checkpoint). Every invocation appends the command, the machine and the times to
``<root>/<sweep>/invocations.json``, which ``experiments/aggregate.py`` quotes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import Any

import ml_collections
from absl import logging as absl_logging

from experiments import sweeps

RUNNER_KEYS = ("config", "label", "tag")  # read here, not config fields


def load_config(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file given by path (as ``--config=`` takes it)."""
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def make_config(run: sweeps.Run) -> ml_collections.ConfigDict:
    """The base config with the run's dotted overrides applied; unknown keys are errors.

    >>> make_config({"config": "configs/default.py", "pruning.sparsity": 0.5}).pruning.sparsity
    0.5
    """
    config = load_config(run["config"])
    for key, value in run.items():
        if key in RUNNER_KEYS:
            continue
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"run override {key!r} is not a field of {run['config']}")
        node[leaf] = tuple(value) if isinstance(value, list) else value
    config.progress_bar = False
    return config


def execute(run: sweeps.Run, workdir: str) -> dict[str, Any]:
    """Trains one run (an IMP run is a whole chain) in this process; returns its summary."""
    from progprune import drivers  # deferred: --print_commands needs no JAX

    config = make_config(run)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump({"name": sweeps.run_name(run), "overrides": run}, f, indent=2)
    return drivers.run(config, workdir)


def code_version() -> str:
    """The git commit this checkout runs (``+dirty`` with uncommitted changes), or "unknown".

    >>> len(code_version()) >= 7
    True
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        run = lambda *a: subprocess.run(
            ["git", *a], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What ran the sweep: CPU (``lscpu``), core count, Python and JAX versions, host."""
    import jax

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    keep = ("Architecture", "CPU(s):", "Model name", "Thread(s)", "Core(s)", "Socket(s)")
    return {
        "host": platform.node(),
        "lscpu": [line for line in lscpu.splitlines() if line.startswith(keep)],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
    }


def _log_invocation(sweep_dir: str, record: dict) -> None:
    path = os.path.join(sweep_dir, "invocations.json")
    history = []
    if os.path.exists(path):
        with open(path) as f:
            history = json.load(f)
    history = [h for h in history if h.get("started") != record["started"]] + [record]
    with open(path, "w") as f:
        json.dump(history, f, indent=2)


def run_sweep(name: str, root: str, only: list[str], max_runs: int = 0) -> list[str]:
    """Runs the sweep's unfinished runs in order; returns the names of runs that failed.

    A failing run is recorded (``error.txt``) and the sweep goes on; a preemption (SIGTERM)
    stops the sweep.
    """
    from progprune.train import PreemptedError, WorkdirBusyError

    sweep_dir = os.path.join(root, name)
    os.makedirs(sweep_dir, exist_ok=True)
    now = lambda: datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    record = {
        "command": " ".join([os.path.basename(sys.executable), "-m", __spec__.name, *sys.argv[1:]]),
        "started": now(),
        "commit": code_version(),
        "machine": machine(),
    }
    _log_invocation(sweep_dir, record)
    failed, trained = [], 0
    runs = [r for r in sweeps.SWEEPS[name] if not only or sweeps.run_name(r) in only]
    for i, run in enumerate(runs):
        workdir = os.path.join(sweep_dir, sweeps.run_name(run))
        if os.path.exists(os.path.join(workdir, "summary.json")):
            continue
        if max_runs and trained >= max_runs:
            break
        print(f"[{i + 1}/{len(runs)}] {sweeps.run_name(run)}", flush=True)
        t0 = time.time()
        try:
            summary = execute(run, workdir)
            print(
                f"  accuracy {summary['eval_accuracy']:.4f} sparsity {summary['sparsity']:.4f} "
                f"in {time.time() - t0:.0f} s",
                flush=True,
            )
        except PreemptedError:
            raise  # SIGTERM: the run checkpointed; stop the sweep, rerunning resumes it
        except WorkdirBusyError as e:  # another runner has this run: leave it to that one
            print(f"  skipped: {e}", flush=True)
            continue
        except Exception:  # noqa: BLE001 - one failed run must not stop a long sweep
            failed.append(sweeps.run_name(run))
            with open(os.path.join(workdir, "error.txt"), "w") as f:
                f.write(traceback.format_exc())
            print(f"  FAILED (see {workdir}/error.txt)", flush=True)
        trained += 1
        record.update(finished=now(), trained=trained, failed=failed)
        _log_invocation(sweep_dir, record)
    return failed


def commands(name: str, root: str) -> list[str]:
    """One shell command per run, to spread a sweep over other machines."""
    return [
        f"python -m experiments.run_sweep --sweep={name} --root={root} "
        f"--only={sweeps.run_name(run)}"
        for run in sweeps.SWEEPS[name]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", required=True, choices=sorted(sweeps.SWEEPS))
    parser.add_argument("--root", default="workdirs", help="parent of the run directories")
    parser.add_argument("--print_commands", action="store_true", help="print, do not run")
    parser.add_argument("--only", action="append", default=[], help="run name (repeatable)")
    parser.add_argument("--max_runs", type=int, default=0, help="stop after N trainings")
    args = parser.parse_args(argv)
    if args.print_commands:
        print("\n".join(commands(args.sweep, args.root)))
        return 0
    # Our progress at INFO; orbax's per-save chatter only from WARNING up (as the trainer's CLI).
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("progprune").setLevel(logging.INFO)
    failed = run_sweep(args.sweep, args.root, args.only, args.max_runs)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
