"""What a sweep planned against what finished: every result its definition in
``experiments/sweeps.py`` should give, the ones no finished run gave, and the commits its
invocations ran. The reports use it so that an unfinished sweep is never summarised silently.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from experiments import aggregate, sweeps

Row = aggregate.Row


def cell_key(r: Row) -> tuple[str, str, float, float]:
    """A result's cell: model, method, sparsity and the length of one training."""
    return (r["model"], r["method"], float(r["sparsity"]), float(r["training_epochs"]))


def missing(plan: list[Row], rows: list[Row]) -> list[Row]:
    """The planned results (`aggregate.planned_rows`) that no row gives, grouped by cell: the
    cell's keys, its missing seeds and how many seeds were planned.

    >>> plan = [{"model": "m", "method": "gmp", "sparsity": 0.9, "training_epochs": 10.0,
    ...          "seed": s} for s in (0, 1, 2)]
    >>> [(c["method"], c["seeds"], c["n_planned"]) for c in missing(plan, plan[:1])]
    [('gmp', (1, 2), 3)]
    """
    done = {(*cell_key(r), r["seed"]) for r in rows}
    planned, absent = defaultdict(set), defaultdict(list)
    for p in plan:
        planned[cell_key(p)].add(p["seed"])
        if (*cell_key(p), p["seed"]) not in done:
            absent[cell_key(p)].append(p["seed"])
    fields = ("model", "method", "sparsity", "training_epochs")
    return [
        {
            **dict(zip(fields, k, strict=True)),
            "seeds": tuple(sorted(s)),
            "n_planned": len(planned[k]),
        }
        for k, s in absent.items()
    ]


def _run_state(sweep_dir: str, run: sweeps.Run) -> str:
    """What a planned run's directory shows: not started, failed, unfinished, or finished (an
    IMP chain that stopped before a level)."""
    workdir = os.path.join(sweep_dir, sweeps.run_name(run))
    if not os.path.isdir(workdir):
        return "not started"
    if os.path.exists(os.path.join(workdir, "error.txt")):
        return "failed (error.txt)"
    if os.path.exists(os.path.join(workdir, "summary.json")):
        return "finished without this result"
    return "started, not finished"


def check(sweep: str, sweep_dir: str, rows: list[Row]) -> tuple[list[Row], list[str]]:
    """The sweep's missing results (`missing`) and markdown lines saying what is missing, and
    which finished results its plan does not hold (a definition changed since they ran)."""
    runs = sweeps.SWEEPS.get(sweep)
    if runs is None:
        return [], [
            f"`{sweep}`: not a sweep of `experiments/sweeps.py`; completeness unchecked.",
            "",
        ]
    plan = [p | {"run": r} for r in runs for p in aggregate.planned_rows(r)]
    absent = missing(plan, rows)
    done = len(plan) - sum(len(c["seeds"]) for c in absent)
    lines = [
        f"`{sweep}`: {done} of {len(plan)} planned results finished" + (":" if absent else ".")
    ]
    if absent:
        lines += [
            "",
            "| model | method | sparsity | epochs per training | seeds missing (run state) |",
            "|---|---|---|---|---|",
        ]
    runs_of = {(*cell_key(p), p["seed"]): p["run"] for p in plan}
    for c in absent:
        states = [f"{s} ({_run_state(sweep_dir, runs_of[(*cell_key(c), s)])})" for s in c["seeds"]]
        lines.append(
            f"| {c['model']} | {c['method']} | {c['sparsity']:g} | {c['training_epochs']:g} | "
            f"{', '.join(states)} of {c['n_planned']} |"
        )
    extra = sorted({cell_key(r) for r in rows} - {cell_key(p) for p in plan})
    if extra:
        cells_ = "; ".join(f"{m} {s:g} at {e:g} epochs ({model})" for model, m, s, e in extra)
        lines += ["", f"Finished but not in the sweep's plan: {cells_}."]
    return absent, [*lines, ""]


def commits(sweep_dir: str) -> list[str]:
    """The commits the sweep's invocations ran (``invocations.json``), in order, once each."""
    path = os.path.join(sweep_dir, "invocations.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(dict.fromkeys(inv.get("commit", "unknown") for inv in json.load(f)))
