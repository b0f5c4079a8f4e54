"""Equal-cost report: one training cycle at several lengths against IMP's chain of trainings.

    python -m experiments.equal_cost --sweep=fmnist_equal_cost_lenet300 \\
        --sweep=fmnist_equal_cost_lenet5 --name=fmnist_equal_cost

Reads the run directories through ``aggregate.run_rows`` and writes
``<out>/<name>.{md,csv,png}``. A cell is (model, method, sparsity, epochs of one training):
mean ± std (ddof=1) of the final test accuracy over seeds, with its whole cost in epochs and
wall-clock seconds (an IMP level: the chain up to the round that reached it). For each IMP
level the report names the cheapest single-cycle cell whose mean accuracy is at least IMP's
mean minus one IMP std, and each single-cycle method's gap to IMP at the longest length that
costs no more than IMP. A hand-written ``<out>/<name>_notes.md`` is copied in as findings.

Unfinished sweeps are reported, never silently: every result a sweep of ``experiments/sweeps.py``
plans but no finished run gave is listed (with the state of its run directory), a cell with
fewer seeds than planned says so next to its accuracy, and a cell with none reads "missing".
Each CSV row names its sweep and the commits that sweep's invocations ran.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections import defaultdict

from experiments import aggregate, completeness, sweeps

Row = aggregate.Row
NOT_ONE_CYCLE = ("dense", "imp")  # dense is not sparse; IMP is the many-cycle reference
CSV_FIELDS = (
    "model",
    "method",
    "sparsity",
    "training_epochs",
    "trainings",
    "epochs",
    "n",
    "accuracy_mean",
    "accuracy_std",
    "measured_sparsity",
    "wall_clock_s",
    "seeds",
    "n_planned",
    "sweep",
    "commits",
)


def cells(rows: list[Row]) -> list[Row]:
    """Groups rows by (model, method, sparsity, training length); accuracy in %.

    >>> rows = [{"model": "m", "method": "gmp", "sparsity": 0.9, "training_epochs": 10.0,
    ...          "epochs": 10.0, "seed": s, "accuracy": a, "measured_sparsity": 0.9,
    ...          "wall_clock_s": 5.0} for s, a in ((0, 0.8), (1, 0.9))]
    >>> [(c["n"], round(c["accuracy_mean"], 2), c["trainings"]) for c in cells(rows)]
    [(2, 85.0, 1)]
    """
    groups = defaultdict(list)
    for r in rows:
        groups[completeness.cell_key(r)].append(r)
    out = []
    for (model, method, sparsity, training_epochs), rs in groups.items():
        stats = aggregate.seed_stats(rs)
        out.append(
            {
                "model": model,
                "method": method,
                "sparsity": sparsity,
                "training_epochs": training_epochs,
                "trainings": round(stats["epochs"] / training_epochs),
                **stats,
                "sweep": " ".join(sorted({r.get("sweep", "") for r in rs})),
            }
        )
    order = lambda c: (c["model"], c["sparsity"], _rank(c["method"]), c["epochs"])
    return sorted(out, key=order)


def _rank(method: str) -> tuple[int, str]:
    """Methods in the aggregator's order, labelled variants after them by name (not by the
    order of a set, which changes from run to run)."""
    return aggregate._method_rank(method), method


def _std(cell: Row) -> float:
    return 0.0 if math.isnan(cell["accuracy_std"]) else cell["accuracy_std"]


def one_cycle(table: list[Row], model: str, sparsity: float) -> list[Row]:
    """The single-cycle cells of a model at a sparsity (every method and length)."""
    return [
        c
        for c in table
        if c["model"] == model and c["sparsity"] == sparsity and c["method"] not in NOT_ONE_CYCLE
    ]


def cheapest_match(table: list[Row], imp: Row) -> Row | None:
    """The single-cycle cell with the fewest total epochs (then the most accurate) whose mean
    accuracy is at least IMP's mean minus one IMP std; None if there is none.

    >>> imp = {"model": "m", "sparsity": 0.9, "accuracy_mean": 90.0, "accuracy_std": 0.5}
    >>> cell = lambda m, e, a: {"model": "m", "sparsity": 0.9, "method": m, "epochs": e,
    ...                         "accuracy_mean": a}
    >>> cheapest_match([cell("gmp", 10, 89.0), cell("gmp", 20, 89.6), cell("p", 20, 89.8)], imp)
    {'model': 'm', 'sparsity': 0.9, 'method': 'p', 'epochs': 20, 'accuracy_mean': 89.8}
    """
    bar = imp["accuracy_mean"] - _std(imp)
    matches = [
        c for c in one_cycle(table, imp["model"], imp["sparsity"]) if c["accuracy_mean"] >= bar
    ]
    return min(matches, key=lambda c: (c["epochs"], -c["accuracy_mean"]), default=None)


def bracket(table: list[Row], imp: Row, method: str) -> list[Row]:
    """`method`'s single-cycle cells at IMP's sparsity nearest to IMP's cost: the longest one
    costing at most IMP's epochs and the shortest costing at least as much (one cell if a run
    costs exactly that, none where the method was not run).

    >>> imp = {"model": "m", "sparsity": 0.9, "epochs": 30}
    >>> cell = lambda e: {"model": "m", "sparsity": 0.9, "method": "gmp", "epochs": e}
    >>> [c["epochs"] for c in bracket([cell(10), cell(20), cell(40), cell(70)], imp, "gmp")]
    [20, 40]
    """
    mine = [c for c in one_cycle(table, imp["model"], imp["sparsity"]) if c["method"] == method]
    below = max(
        (c for c in mine if c["epochs"] <= imp["epochs"]), key=lambda c: c["epochs"], default=None
    )
    above = min(
        (c for c in mine if c["epochs"] >= imp["epochs"]), key=lambda c: c["epochs"], default=None
    )
    if below is above:
        return [] if below is None else [below]
    return [c for c in (below, above) if c is not None]


def _acc(c: Row | None) -> str:
    if c is None:
        return "–"
    std = "" if math.isnan(c["accuracy_std"]) else f" ± {c['accuracy_std']:.2f}"
    planned = c.get("n_planned") or c["n"]
    partial = f" [{c['n']} of {planned} seeds]" if c["n"] < planned else ""
    return f"{c['accuracy_mean']:.2f}{std}{partial}"


def _diff(a: Row | None, b: Row | None) -> str:
    """a − b in pp; '*' when it exceeds the two stds added (a rough, not a statistical, test)."""
    if a is None or b is None:
        return "–"
    d = a["accuracy_mean"] - b["accuracy_mean"]
    return f"{d:+.2f}{'*' if abs(d) > _std(a) + _std(b) > 0 else ''}"


def _methods(table: list[Row], model: str) -> list[str]:
    found = {c["method"] for c in table if c["model"] == model}
    return sorted(found - set(NOT_ONE_CYCLE), key=_rank)


def _lengths(table: list[Row], model: str) -> list[float]:
    return sorted(
        {c["epochs"] for c in table if c["model"] == model and c["method"] not in ("imp",)}
    )


def accuracy_table(table: list[Row], model: str, gone: list[Row] = ()) -> list[str]:
    """Single-cycle accuracy: one row per (sparsity, method), one column per training length;
    "missing" where a planned cell has no finished run (`gone`, cells of `missing`)."""
    gone = [c | {"epochs": c["training_epochs"]} for c in gone if c["method"] != "imp"]
    both = table + gone
    by = {(c["method"], c["sparsity"], c["epochs"]): c for c in table if c["model"] == model}
    absent = {(c["method"], c["sparsity"], c["epochs"]) for c in gone if c["model"] == model}
    cell = lambda k: "missing" if k in absent else _acc(by.get(k))
    lengths = _lengths(both, model)
    lines = [
        "| sparsity | method | " + " | ".join(f"{e:g} ep" for e in lengths) + " |",
        "|---|---|" + "---|" * len(lengths),
        "| 0 | dense | " + " | ".join(cell(("dense", 0.0, e)) for e in lengths) + " |",
    ]
    for s in _levels(both, model):
        for m in _methods(both, model):
            lines.append(f"| {s:g} | {m} | " + " | ".join(cell((m, s, e)) for e in lengths) + " |")
    return lines


def _levels(table: list[Row], model: str) -> list[float]:
    """The sparsities a single-cycle method was run at (IMP's chains pass through more)."""
    mine = [c for c in table if c["model"] == model and c["method"] not in NOT_ONE_CYCLE]
    return sorted({c["sparsity"] for c in mine})


def _imps(table: list[Row], model: str) -> list[Row]:
    return [c for c in table if c["model"] == model and c["method"] == "imp"]


def imp_table(table: list[Row], model: str, gone: list[Row] = ()) -> list[str]:
    """IMP chains: accuracy at each sparsity, with the total epochs that level cost; "missing"
    where a planned level has no finished round (`gone`)."""
    absent = [c for c in _imps(gone, model)]
    levels = sorted({c["sparsity"] for c in _imps(table, model) + absent})
    chains = sorted({c["training_epochs"] for c in _imps(table, model) + absent})
    by = {(c["training_epochs"], c["sparsity"]): c for c in _imps(table, model)}
    by |= {(c["training_epochs"], c["sparsity"]): None for c in absent}
    lines = [
        "| IMP chain | " + " | ".join(f"{s:g}" for s in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for t in chains:
        row = [
            "missing"
            if (t, s) in by and by[(t, s)] is None
            else f"{_acc(by[(t, s)])} ({by[(t, s)]['epochs']:g} ep)"
            if (t, s) in by
            else "–"
            for s in levels
        ]
        lines.append(f"| {t:g} epochs/round | " + " | ".join(row) + " |")
    return lines


def _imp_levels(table: list[Row], model: str) -> list[Row]:
    """IMP cells at the sparsities the single-cycle methods were run at."""
    imps = [c for c in _imps(table, model) if c["sparsity"] in _levels(table, model)]
    return sorted(imps, key=lambda c: (c["sparsity"], c["training_epochs"]))


def _imp_head(imp: Row) -> str:
    return (
        f"| {imp['sparsity']:g} | {_acc(imp)} ({imp['epochs']:g} ep, "
        f"{imp['training_epochs']:g}/round) | "
    )


def _match(table: list[Row], imp: Row, method: str | None = None) -> str:
    """The cheapest match (of one method, or of any), or "none up to N epochs"."""
    mine = [c for c in table if method is None or c["method"] == method]
    match = cheapest_match(mine, imp)
    if match is None:
        costs = [c["epochs"] for c in one_cycle(mine, imp["model"], imp["sparsity"])]
        return f"none up to {max(costs, default=0):g} epochs"
    name = "" if method else f"{match['method']}, "
    ratio = match["epochs"] / imp["epochs"]
    return f"{name}{match['epochs']:g} ep ({ratio:.2g}× IMP's): {_acc(match)}"


def match_table(table: list[Row], model: str) -> list[str]:
    """Per IMP level: the cheapest single-cycle run within one IMP std, of any method and of
    each method."""
    methods = _methods(table, model)
    lines = [
        "| sparsity | IMP (cost) | cheapest match, any method | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for imp in _imp_levels(table, model):
        each = [_match(table, imp, m) for m in methods]
        lines.append(_imp_head(imp) + _match(table, imp) + " | " + " | ".join(each) + " |")
    return lines


def gap_table(table: list[Row], model: str) -> list[str]:
    """Per IMP level: each method's runs nearest to IMP's cost (`bracket`), minus IMP."""
    methods = _methods(table, model)
    lines = [
        "| sparsity | IMP (cost) | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for imp in _imp_levels(table, model):
        gaps = []
        for m in methods:
            cs = bracket(table, imp, m)
            gaps.append(" / ".join(f"{_diff(c, imp)} ({c['epochs']:g} ep)" for c in cs) or "–")
        lines.append(_imp_head(imp) + " | ".join(gaps) + " |")
    return lines


def summary_table(table: list[Row]) -> list[str]:
    """One row per model and sparsity against the IMP chain of shortest rounds: IMP, each
    single-cycle method's runs nearest to IMP's epochs (`bracket`), and the cheapest match."""
    models = sorted({c["model"] for c in table})
    methods = sorted({m for model in models for m in _methods(table, model)}, key=_rank)
    lines = [
        "| model | sparsity | IMP (epochs) | "
        + " | ".join(methods)
        + " | cheapest single cycle within 1 IMP std |",
        "|---|---|---|" + "---|" * (len(methods) + 1),
    ]
    for model in models:
        imps = _imp_levels(table, model)
        shortest = min((c["training_epochs"] for c in imps), default=None)
        for imp in (c for c in imps if c["training_epochs"] == shortest):
            cells = []
            for m in methods:
                cs = bracket(table, imp, m)
                cells.append(" / ".join(f"{_acc(c)} ({c['epochs']:g})" for c in cs) or "–")
            head = f"| {model} | {imp['sparsity']:g} | {_acc(imp)} ({imp['epochs']:g}) | "
            lines.append(head + " | ".join(cells) + f" | {_match(table, imp)} |")
    return lines


def difference_table(table: list[Row], model: str, a: str, b: str) -> list[str]:
    """`a` − `b` (pp) at every sparsity and length both were run at."""
    by = {(c["method"], c["sparsity"], c["epochs"]): c for c in table if c["model"] == model}
    lengths = [e for e in _lengths(table, model) if any(k[0] == a and k[2] == e for k in by)]
    lines = [
        f"| {a} − {b} | " + " | ".join(f"{e:g} ep" for e in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for s in _levels(table, model):
        row = " | ".join(_diff(by.get((a, s, e)), by.get((b, s, e))) for e in lengths)
        lines.append(f"| {s:g} | {row} |")
    return lines


def tally(table: list[Row], model: str, a: str, b: str) -> str:
    """How often `a` is below `b` over the cells both were run at (and how often clearly)."""
    by = {(c["method"], c["sparsity"], c["epochs"]): c for c in table if c["model"] == model}
    pairs = [(c, by[(b, s, e)]) for (m, s, e), c in by.items() if m == a and (b, s, e) in by]
    below = [p for p in pairs if p[0]["accuracy_mean"] < p[1]["accuracy_mean"]]
    clear = [p for p in below if _diff(*p).endswith("*")]
    return (
        f"{a} is below {b} in {len(below)} of {len(pairs)} cells "
        f"({len(clear)} by more than the stds added)"
    )


def write_csv(path: str, table: list[Row]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for c in table:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in c.items()})


def wall_table(table: list[Row], model: str) -> list[str]:
    """Wall-clock seconds (mean over seeds) of every cell, IMP levels included."""
    lines = ["| sparsity | method | cost: epochs → wall-clock s |", "|---|---|---|"]
    mine = [c for c in table if c["model"] == model]
    for s in sorted({c["sparsity"] for c in mine}):
        for m in sorted({c["method"] for c in mine if c["sparsity"] == s}, key=_rank):
            costs = sorted(
                (c["epochs"], c["wall_clock_s"])
                for c in mine
                if (c["method"], c["sparsity"]) == (m, s)
            )
            lines.append(
                f"| {s:g} | {m} | " + ", ".join(f"{e:g} → {w:.0f}" for e, w in costs) + " |"
            )
    return lines


def model_section(table: list[Row], model: str, gone: list[Row] = ()) -> list[str]:
    """Every table of one model (`gone`: planned cells without a finished run)."""
    seeds = sorted({c["n"] for c in table if c["model"] == model})
    lines = [f"## {model}", "", f"Seeds per cell: {', '.join(map(str, seeds))}.", ""]
    lines += aggregate._table(
        "Single cycle: test accuracy (%) by training length", accuracy_table(table, model, gone)
    )
    lines += aggregate._table(
        "IMP chains: test accuracy (%) (total epochs of the chain up to that level)",
        imp_table(table, model, gone),
    )
    note = "A match: a mean accuracy ≥ IMP's mean − IMP's std; the cheapest in total epochs."
    lines += aggregate._table("Does one cycle match IMP?", match_table(table, model), note)
    note = (
        "Each method's runs nearest to the epochs of IMP's chain to that level (the longest "
        "costing at most as much / the shortest costing at least as much; one run if it costs "
        "the same), minus IMP (pp); `*`: the difference exceeds the two stds added."
    )
    lines += aggregate._table("Gap to IMP at IMP's cost", gap_table(table, model), note)
    methods = _methods(table, model)
    best = sweeps.ABLATION_BEST["label"]  # the schedule ablation's best settings
    for a, b in (("progressive", "gmp"), (best, "progressive"), (best, "gmp")):
        if a in methods and b in methods:
            lines += aggregate._table(
                f"{a} − {b} (pp)",
                difference_table(table, model, a, b),
                tally(table, model, a, b) + ".",
            )
    return lines + aggregate._table("Cost", wall_table(table, model))


def report(
    name: str,
    sweep_dirs: list[str],
    table: list[Row],
    notes: str | None,
    coverage: tuple[list[Row], list[str]] = ([], []),
) -> str:
    """The markdown report; `coverage`: missing results and their lines (`completeness.check`)."""
    absent, coverage_lines = coverage
    flags = " ".join(f"--sweep={os.path.basename(d)}" for d in sweep_dirs)
    lines = [
        f"# Equal cost: `{name}`",
        "",
        f"Generated by `python -m experiments.equal_cost {flags} --name={name}`. Accuracy: "
        "top-1 test accuracy (%) at the end of training, mean ± std (ddof=1) over seeds. "
        "Cost: epochs (and wall-clock) of every training a result needed; an IMP level costs "
        "its chain up to the round that reached it.",
        "",
    ]
    if absent:
        lines += [
            f"**Partial: {sum(len(c['seeds']) for c in absent)} planned result(s) missing** "
            "(listed under Completeness). Every table below is drawn from the finished runs "
            "only; a cell short of seeds says so (`[n of N seeds]`).",
            "",
        ]
    lines += ["## Runs", ""]
    for d in sweep_dirs:
        lines += [f"`{os.path.basename(d)}`:", "", *aggregate.invocation_lines(d), ""]
    lines += ["## Completeness", "", *coverage_lines]
    note = (
        "Test accuracy (%) against the IMP chain with the shortest rounds. Single-cycle "
        "cells: the runs nearest to IMP's cost, the longest costing at most IMP's epochs / the "
        "shortest costing at least as much (total epochs in brackets)."
    )
    lines += aggregate._table("Summary", summary_table(table), note)
    if notes:
        lines += ["## Findings", "", notes.strip(), ""]
    gone = [c for c in absent if len(c["seeds"]) == c["n_planned"]]
    for model in sorted({c["model"] for c in table}):
        lines += model_section(table, model, gone)
    return "\n".join([*lines, f"![accuracy vs cost]({name}.png)", ""])


def equal_cost(sweep_names: list[str], root: str, out: str, name: str) -> list[Row]:
    """Writes ``<out>/<name>.{md,csv,png}`` from the sweeps' run directories; returns the cells."""
    sweep_dirs = [os.path.join(root, s) for s in sweep_names]
    rows, absent, coverage_lines = [], [], []
    for sweep, d in zip(sweep_names, sweep_dirs, strict=True):
        mine = [r | {"sweep": sweep} for r in aggregate.collect(d)]
        gaps, lines = completeness.check(sweep, d, mine)
        rows, absent, coverage_lines = rows + mine, absent + gaps, coverage_lines + lines
    table = cells(rows)
    if not table:
        raise FileNotFoundError(f"no finished runs under {', '.join(sweep_dirs)}")
    short = {completeness.cell_key(c): len(c["seeds"]) for c in absent}
    for c in table:
        planned = all(s in sweeps.SWEEPS for s in c["sweep"].split())
        c["n_planned"] = c["n"] + short.get(completeness.cell_key(c), 0) if planned else None
        commits = [
            x for s in c["sweep"].split() for x in completeness.commits(os.path.join(root, s))
        ]
        c["commits"] = " ".join(dict.fromkeys(commits))
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, f"{name}.csv"), table)
    from experiments.equal_cost_plot import plot  # imports this module's helpers

    plot(os.path.join(out, f"{name}.png"), table)
    notes_file = os.path.join(out, f"{name}_notes.md")
    notes = None
    if os.path.exists(notes_file):
        with open(notes_file) as f:
            notes = f.read()
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(report(name, sweep_dirs, table, notes, (absent, coverage_lines)))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="append", required=True, help="sweep (repeatable)")
    parser.add_argument("--root", default="workdirs", help="parent of the sweep directories")
    parser.add_argument("--out", default="experiments/results", help="for the .md, .csv, .png")
    parser.add_argument("--name", default="fmnist_equal_cost", help="file name of the outputs")
    args = parser.parse_args(argv)
    table = equal_cost(args.sweep, args.root, args.out, args.name)
    print(f"{len(table)} cells -> {args.out}/{args.name}.md, .csv, .png")


if __name__ == "__main__":
    main()
