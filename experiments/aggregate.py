"""Turns a sweep's workdirs into ``experiments/results/<sweep>.{md,csv,png}``.

    python -m experiments.aggregate --sweep=fmnist_lenet300_cpu

For every model, method and target sparsity: mean ± std test accuracy over seeds (final accuracy
at the end of training, never the best epoch), the gap to dense, the measured sparsity and the
training cost (epochs and wall-clock, summed over all trainings the result needed: an IMP level
reached in round ``k`` costs its ``k + 1`` trainings). IMP levels are read from the rounds of one
chain per seed. The plot has accuracy against remaining weights (log scale), one line per method.
A hand-written ``<out>/<sweep>_notes.md``, if present, is copied into the report.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
from collections import defaultdict
from typing import Any

Row = dict[str, Any]
METHOD_ORDER = ("dense", "progressive", "gmp", "oneshot", "imp", "snip", "grasp", "random")
CSV_FIELDS = (
    "model",
    "method",
    "sparsity",
    "n",
    "accuracy_mean",
    "accuracy_std",
    "dense_gap",
    "measured_sparsity",
    "epochs",
    "wall_clock_s",
    "seeds",
)


def _read(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def run_rows(run_dir: str) -> list[Row]:
    """One row per result in a run directory (an IMP chain gives one per pruned round).

    ``epochs`` and ``wall_clock_s`` are the whole cost of the result (an IMP round: its chain
    so far); ``training_epochs`` is the length of one training (an IMP round's own length).
    An IMP chain still running contributes the rounds it has finished (``imp_rounds.json``).
    """
    if not os.path.exists(os.path.join(run_dir, "run.json")):
        return []
    run = _read(os.path.join(run_dir, "run.json"))["overrides"]
    # A "label" names a variant of a method (e.g. another schedule) in the tables.
    method = run["pruning.method"]
    base = {"model": run["model"], "method": run.get("label", method), "seed": run["seed"]}
    if method == "imp":
        rounds_file = os.path.join(run_dir, "imp_rounds.json")
        rounds = _read(rounds_file) if os.path.exists(rounds_file) else []
        return [
            {
                **base,
                "sparsity": r["target_sparsity"],
                "measured_sparsity": r["sparsity"],
                "accuracy": r["eval_accuracy"],
                "epochs": r["cumulative_epochs"],
                "wall_clock_s": r["cumulative_wall_clock_s"],
                "training_epochs": r["epochs"],
            }
            for r in rounds
            if r["round"] > 0
        ]
    summary_file = os.path.join(run_dir, "summary.json")
    if not os.path.exists(summary_file):
        return []
    s = _read(summary_file)
    return [
        {
            **base,
            "sparsity": run["pruning.sparsity"],
            "measured_sparsity": s["sparsity"],
            "accuracy": s["eval_accuracy"],
            "epochs": s["epochs"],
            "wall_clock_s": s["wall_clock_s"],
            "training_epochs": s["epochs"],
        }
    ]


def planned_rows(run: Row) -> list[Row]:
    """The rows a sweep's run gives once finished (`run_rows`' keys, no results): one, or one
    per level of an IMP chain.

    >>> run = {"model": "m", "pruning.method": "imp", "seed": 0, "num_epochs": 10.0,
    ...        "pruning.sparsity": 0.9, "pruning.imp_sparsities": (0.5, 0.9)}
    >>> [(r["method"], r["sparsity"], r["training_epochs"]) for r in planned_rows(run)]
    [('imp', 0.5, 10.0), ('imp', 0.9, 10.0)]
    """
    method = run["pruning.method"]
    base = {
        "model": run["model"],
        "method": run.get("label", method),
        "seed": run["seed"],
        "training_epochs": float(run["num_epochs"]),
    }
    if method == "imp":  # runs before commit 7d412e9 named the levels "imp_chain"
        levels = run.get("pruning.imp_sparsities", run.get("imp_chain", ()))
        return [{**base, "sparsity": float(s)} for s in levels]
    return [{**base, "sparsity": float(run["pruning.sparsity"])}]


def collect(sweep_dir: str) -> list[Row]:
    """Rows of every run directory under ``sweep_dir``."""
    return [row for d in sorted(glob.glob(os.path.join(sweep_dir, "*"))) for row in run_rows(d)]


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value).

    >>> mean_std([1.0, 3.0])
    (2.0, 1.4142135623730951)
    """
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def seed_stats(rs: list[Row]) -> Row:
    """What a cell says about its runs (one a seed): accuracy in %, mean ± std, mean costs.

    >>> rs = [{"seed": s, "accuracy": a, "measured_sparsity": 0.9, "epochs": 5.0,
    ...        "wall_clock_s": 9.0} for s, a in ((1, 0.9), (0, 0.8))]
    >>> {k: v for k, v in seed_stats(rs).items() if k in ("n", "seeds", "epochs")}
    {'n': 2, 'epochs': 5.0, 'seeds': '0 1'}
    """
    acc_mean, acc_std = mean_std([100.0 * r["accuracy"] for r in rs])
    return {
        "n": len(rs),
        "accuracy_mean": acc_mean,
        "accuracy_std": acc_std,
        "measured_sparsity": sum(r["measured_sparsity"] for r in rs) / len(rs),
        "epochs": sum(r["epochs"] for r in rs) / len(rs),
        "wall_clock_s": sum(r["wall_clock_s"] for r in rs) / len(rs),
        "seeds": " ".join(str(s) for s in sorted(r["seed"] for r in rs)),
    }


def summarize(rows: list[Row]) -> list[Row]:
    """Groups rows by (model, method, sparsity); accuracy in %, std with ddof=1 over seeds.

    >>> rows = [{"model": "m", "method": "dense", "sparsity": 0.0, "seed": s, "accuracy": a,
    ...          "measured_sparsity": 0.0, "epochs": 5.0, "wall_clock_s": 9.0}
    ...         for s, a in ((0, 0.9), (1, 0.8))]
    >>> [(g["n"], round(g["accuracy_mean"], 2), g["dense_gap"]) for g in summarize(rows)]
    [(2, 85.0, 0.0)]
    """
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["method"], float(r["sparsity"]))].append(r)
    out = []
    for (model, method, sparsity), rs in groups.items():
        out.append({"model": model, "method": method, "sparsity": sparsity, **seed_stats(rs)})
    dense = {g["model"]: g["accuracy_mean"] for g in out if g["method"] == "dense"}
    for g in out:
        g["dense_gap"] = g["accuracy_mean"] - dense.get(g["model"], float("nan"))
    order = lambda g: (g["model"], _method_rank(g["method"]), g["sparsity"])
    return sorted(out, key=order)


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def write_csv(path: str, groups: list[Row]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for g in groups:
            writer.writerow(
                {
                    k: round(v, 4) if isinstance(v, float) else v
                    for k, v in g.items()
                    if k in CSV_FIELDS
                }
            )


def _cell(g: Row | None, key: str, fmt: str) -> str:
    if g is None:
        return "–"
    if key == "accuracy":
        std = "" if math.isnan(g["accuracy_std"]) else f" ± {g['accuracy_std']:.2f}"
        return f"{g['accuracy_mean']:.2f}{std}"
    return format(g[key], fmt)


def grid(groups: list[Row], model: str, key: str, fmt: str = ".2f") -> list[str]:
    """A markdown table: one row per method, one column per sparsity (dense in its own row)."""
    mine = [g for g in groups if g["model"] == model]
    levels = sorted({g["sparsity"] for g in mine if g["method"] != "dense"})
    by = {(g["method"], g["sparsity"]): g for g in mine}
    methods = sorted({g["method"] for g in mine}, key=_method_rank)
    lines = [
        "| method | " + " | ".join(f"{s:g}" for s in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for m in methods:
        if m == "dense":
            g = next(g for g in mine if g["method"] == "dense")
            lines.append(f"| dense (0) | {_cell(g, key, fmt)} |" + " |" * (len(levels) - 1))
            continue
        lines.append(
            f"| {m} | " + " | ".join(_cell(by.get((m, s)), key, fmt) for s in levels) + " |"
        )
    return lines


def versus_progressive(groups: list[Row], model: str) -> list[str]:
    """Progressive minus each method (pp of accuracy), per sparsity; '*' when the difference is
    larger than the two standard deviations added (a rough, not a statistical, test)."""
    mine = {(g["method"], g["sparsity"]): g for g in groups if g["model"] == model}
    levels = sorted({s for (m, s) in mine if m == "progressive"})
    others = sorted({m for (m, _) in mine if m not in ("progressive", "dense")}, key=_method_rank)
    lines = [
        "| progressive − | " + " | ".join(f"{s:g}" for s in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for m in others:
        cells = []
        for s in levels:
            p, o = mine.get(("progressive", s)), mine.get((m, s))
            if o is None:
                cells.append("–")
                continue
            d = p["accuracy_mean"] - o["accuracy_mean"]
            noise = (p["accuracy_std"] if p["n"] > 1 else 0) + (
                o["accuracy_std"] if o["n"] > 1 else 0
            )
            cells.append(f"{d:+.2f}{'*' if abs(d) > noise > 0 else ''}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def plot(path: str, groups: list[Row], title: str) -> None:
    """Accuracy vs remaining weights (log scale, sparser to the right), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({g["model"] for g in groups})
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [g for g in groups if g["model"] == model]
        for method in sorted({g["method"] for g in mine}, key=_method_rank):
            pts = sorted((g for g in mine if g["method"] == method), key=lambda g: g["sparsity"])
            if method == "dense":
                ax.axhline(pts[0]["accuracy_mean"], color="k", ls="--", lw=1, label="dense")
                continue
            std = [0.0 if math.isnan(g["accuracy_std"]) else g["accuracy_std"] for g in pts]
            ax.errorbar(
                [100 * (1 - g["sparsity"]) for g in pts],
                [g["accuracy_mean"] for g in pts],
                yerr=std,
                marker="o",
                ms=3,
                capsize=2,
                label=method,
                lw=2.2 if method == "progressive" else 1.2,
            )
        ax.set_xscale("log")
        remaining = sorted({100 * (1 - g["sparsity"]) for g in mine if g["method"] != "dense"})
        ax.set_xticks(remaining, [f"{r:g}" for r in remaining])
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("remaining weights (%), log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{title}: {model}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def invocation_lines(sweep_dir: str) -> list[str]:
    """Markdown bullets: each invocation of the sweep (command, times, commit) and its machine."""
    path = os.path.join(sweep_dir, "invocations.json")
    if not os.path.exists(path):
        return ["(no invocations.json: runs were not started by experiments.run_sweep)"]
    lines = []
    for inv in _read(path):
        m = inv["machine"]
        lines += [
            f"- `{inv['command']}` — started {inv['started']}, last run finished "
            f"{inv.get('finished', '?')}, {inv.get('trained', 0)} run(s) trained, "
            f"failed: {inv.get('failed') or 'none'}; code at commit "
            f"`{inv.get('commit', 'not recorded')}`",
            f"  - host {m['host']}, {m['cpu_count']} CPU(s), Python {m['python']}, "
            f"JAX {m['jax']}, devices {', '.join(m['devices'])}",
            *(f"  - `{line}`" for line in m["lscpu"]),
        ]
    return lines


def _table(title: str, table: list[str], note: str = "") -> list[str]:
    return [f"### {title}", "", *([note, ""] if note else []), *table, ""]


def model_section(groups: list[Row], model: str) -> list[str]:
    """Accuracy, gap to dense, progressive's differences, cost and sparsity for one model."""
    mine = {g["method"] for g in groups if g["model"] == model}
    seeds = sorted({g["n"] for g in groups if g["model"] == model})
    lines = [f"## {model}", "", f"Seeds per cell: {', '.join(map(str, seeds))}.", ""]
    lines += _table("Test accuracy (%)", grid(groups, model, "accuracy"))
    if "dense" in mine:
        lines += _table("Gap to dense (pp)", grid(groups, model, "dense_gap", "+.2f"))
    if "progressive" in mine and len(mine - {"dense"}) > 1:
        note = "`*`: the difference exceeds the two standard deviations added."
        versus = versus_progressive(groups, model)
        lines += _table("Progressive minus each method (pp)", versus, note)
    lines += _table("Training cost: epochs", grid(groups, model, "epochs", ".0f"))
    cost = grid(groups, model, "wall_clock_s", ".0f")
    lines += _table("Training cost: wall-clock (s, mean over seeds)", cost)
    return lines + _table("Measured sparsity", grid(groups, model, "measured_sparsity", ".4f"))


def report(sweep: str, sweep_dir: str, groups: list[Row], notes: str | None) -> str:
    """The markdown report."""
    lines = [
        f"# Sweep `{sweep}`",
        "",
        "Generated by `python -m experiments.aggregate --sweep=" + sweep + "` from "
        f"`{sweep_dir}`. Accuracy: top-1 test accuracy (%) at the end of training, mean ± "
        "std (ddof=1) over seeds; sparsity: share of prunable weights (kernels) removed. "
        "Cost: epochs and wall-clock seconds of every training the result needed (IMP at "
        "its k-th level: k + 1 trainings, one chain per seed).",
        "",
        "## Runs",
        "",
        *invocation_lines(sweep_dir),
        "",
    ]
    if notes:
        lines += ["## Findings", "", notes.strip(), ""]
    for model in sorted({g["model"] for g in groups}):
        lines += model_section(groups, model)
    lines += [f"![accuracy vs remaining weights]({sweep}.png)", ""]
    return "\n".join(lines)


def aggregate(sweep: str, root: str, out: str) -> list[Row]:
    """Writes ``<out>/<sweep>.{md,csv,png}``; returns the grouped rows."""
    sweep_dir = os.path.join(root, sweep)
    groups = summarize(collect(sweep_dir))
    if not groups:
        raise FileNotFoundError(f"no finished runs under {sweep_dir}")
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, f"{sweep}.csv"), groups)
    plot(os.path.join(out, f"{sweep}.png"), groups, sweep)
    notes_file = os.path.join(out, f"{sweep}_notes.md")
    notes = None
    if os.path.exists(notes_file):
        with open(notes_file) as f:
            notes = f.read()
    with open(os.path.join(out, f"{sweep}.md"), "w") as f:
        f.write(report(sweep, sweep_dir, groups, notes))
    return groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", required=True, help="sweep name (a directory under --root)")
    parser.add_argument("--root", default="workdirs", help="parent of the run directories")
    parser.add_argument("--out", default="experiments/results", help="for the .md, .csv, .png")
    args = parser.parse_args(argv)
    groups = aggregate(args.sweep, args.root, args.out)
    print(f"{len(groups)} cells -> {args.out}/{args.sweep}.md, .csv, .png")


if __name__ == "__main__":
    main()
