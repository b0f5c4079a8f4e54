"""README's figures against the committed results they come from, cell for cell.

Every number README.md (and the quickstart config's docstring) reports from a run or a benchmark
is recomputed here from the committed CSV or JSON and compared as printed. When a result is
rerun, update the README to the new file; when a README figure changes, it must come from a file.
No training: this reads files only.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"
BENCH = REPO / "benchmarks" / "results"
README = (REPO / "README.md").read_text()

SPARSITIES = ("0.5", "0.8", "0.9", "0.95", "0.98", "0.99")
README_METHODS = {"imp (rewinding)": "imp", "random (ERK)": "random"}
EXPORT_MODELS = {
    "LeNet-300-100": "lenet300_100",
    "LeNet-5": "lenet5",
    "VGG-like": "vgg_like",
    "VGG-19": "vgg19",
    "ResNet-18": "resnet18",
    "ResNet-20": "resnet20",
    "ResNet-32": "resnet32",
}


def section(title: str) -> str:
    """The README text under a `## ` or `### ` heading, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", README, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def table(text: str, first_header: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table whose header starts with first_header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def read_csv(name: str) -> dict[tuple[str, str], dict[str, str]]:
    with open(RESULTS / name) as f:
        return {(r["method"], r["sparsity"]): r for r in csv.DictReader(f)}


def read_json(path: Path):
    return json.loads(path.read_text())


def pct(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Results measured here: the LeNet-300-100 table and the claims made from it.


def test_results_table_matches_the_sweep_csv_cell_for_cell():
    rows = read_csv("fmnist_lenet300_cpu.csv")
    readme_rows = table(section("Results measured here"), "method")
    assert [r[0] for r in readme_rows] == [
        "progressive",
        "gmp",
        "oneshot",
        "imp (rewinding)",
        "snip",
        "grasp",
        "random (ERK)",
    ]
    for name, *cells, trainings in readme_rows:
        method = README_METHODS.get(name, name)
        want = [pct(float(rows[method, s]["accuracy_mean"])) for s in SPARSITIES]
        assert cells == want, f"README row {name!r}: {cells} but the CSV says {want}"
        counts = sorted({round(float(rows[method, s]["epochs"]) / 10) for s in SPARSITIES})
        want_trainings = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        assert trainings == want_trainings, name


def test_results_dense_line_matches_the_csv():
    dense = read_csv("fmnist_lenet300_cpu.csv")["dense", "0.0"]
    want = f"dense: {pct(float(dense['accuracy_mean']))} ± {pct(float(dense['accuracy_std']))}"
    assert want in section("Results measured here")


def test_the_50_to_80_percent_claim_names_exactly_the_significant_differences():
    # README: beyond the seeds' spread (difference > the two stds added) progressive trails IMP
    # at 50% and beats random at 80% (GraSP everywhere); the other methods tie it there.
    rows = read_csv("fmnist_lenet300_cpu.csv")
    significant = set()
    for method in ("gmp", "oneshot", "imp", "snip", "random"):
        for s in ("0.5", "0.8"):
            p, m = rows["progressive", s], rows[method, s]
            gap = float(p["accuracy_mean"]) - float(m["accuracy_mean"])
            if abs(gap) > float(p["accuracy_std"]) + float(m["accuracy_std"]):
                significant.add((method, s, "beats" if gap > 0 else "trails"))
    assert significant == {("imp", "0.5", "trails"), ("random", "0.8", "beats")}
    text = " ".join(section("Results measured here").split())
    assert "progressive trails IMP at 50% and beats random at 80%" in text


def test_schedule_ablation_gain_matches_its_csv():
    default = read_csv("fmnist_lenet300_cpu.csv")
    ablation = read_csv("fmnist_lenet300_cpu_schedules.csv")
    gains = [
        float(ablation["progressive-end0.5-every20", s]["accuracy_mean"])
        - float(default["progressive", s]["accuracy_mean"])
        for s in ("0.98", "0.99")
    ]
    want = f"recovers {gains[0]:.1f}–{gains[1]:.1f} pp at 98–99%"
    assert want in " ".join(section("Results measured here").split())


# ---------------------------------------------------------------------------------------------
# Speed: benchmarks/results/mask_update.json and masked_training_step.json.


def speed_text() -> str:
    text = " ".join(section("Results measured here").split())
    return text[text.index("Speed (") :]


def test_mask_update_figures_match_the_benchmark():
    r = read_json(BENCH / "mask_update.json")
    text = speed_text()
    assert f"~{r['update_masks_ms']:.0f} ms against ~{r['full_sort_ms'] / 1e3:.1f} s" in text
    assert f"(≈{r['speedup_vs_full_sort']:.0f}×)" in text
    assert f"~{r['read_all_weights_ms']:.1f} ms for one read" in text
    assert f"{r['n_params'] / 1e6:.2f}M weights" in text


def test_optimizer_step_ratios_match_the_benchmark():
    r = read_json(BENCH / "mask_update.json")
    text = speed_text()
    masked = f"costs {r['sgd_masked_over_plain']:.2f}× (SGD with momentum) and "
    masked += f"{r['adamw_masked_over_plain']:.2f}× (AdamW)"
    assert masked in text
    floor = f"already costs {r['sgd_floor_over_plain']:.2f}× and {r['adamw_floor_over_plain']:.2f}×"
    assert floor in text
    fixed = [r[f"{opt}_masked_fixed_over_plain"] for opt in ("sgd", "adamw")]
    assert f"({fixed[0]:.2f}× and {fixed[1]:.2f}×)" in text
    cond = sorted(
        r[f"{opt}_masked_step_ms"] - r[f"{opt}_masked_fixed_step_ms"] for opt in ("sgd", "adamw")
    )
    assert f"`lax.cond` adds ~{cond[0]:.1f}–{cond[1]:.1f} ms" in text


def test_training_step_overhead_matches_the_benchmark():
    r = read_json(BENCH / "masked_training_step.json")
    want = f"`masked` costs {100 * (r['masked_over_plain'] - 1):.1f}% over the plain optimizer"
    assert want in speed_text()
    repeat = read_json(BENCH / "masked_training_step_repeat.json")
    assert f"(the repeat: {100 * (repeat['masked_over_plain'] - 1):.1f}%;".replace("-", "−") in (
        speed_text()
    )
    assert f"a step takes {r['plain_step_ms']:.0f} ms)" in speed_text()


def test_repeated_optimizer_step_ratios_match_the_benchmark():
    a, b = read_json(BENCH / "mask_update.json"), read_json(BENCH / "mask_update_repeat.json")
    assert a["commit"] == b["commit"]  # the same code, measured twice
    text = speed_text()
    assert (
        f"(the repeat: {b['sgd_masked_over_plain']:.2f}× and {b['adamw_masked_over_plain']:.2f}×"
        in text
    )
    assert f"floor {b['sgd_floor_over_plain']:.2f}× and {b['adamw_floor_over_plain']:.2f}×" in text
    assert f"from {a['sgd_plain_step_ms']:.1f} to {b['sgd_plain_step_ms']:.1f} ms" in text
    updating = [a[f"{opt}_masked_updating_step_ms"] for opt in ("sgd", "adamw")]
    assert f"takes {updating[0]:.0f} ms (SGD) and {updating[1]:.0f} ms (AdamW)" in text


# ---------------------------------------------------------------------------------------------
# Quickstart: experiments/results/quickstart_run.json (the README command, run as written).


def quickstart_run() -> dict:
    run = read_json(RESULTS / "quickstart_run.json")
    assert re.fullmatch(r"[0-9a-f]{40}", run["commit"]), "the run must name its commit"
    return run["summary"]


def test_quickstart_figures_match_the_committed_run():
    s = quickstart_run()
    layers = s["per_layer_sparsity"]
    per_layer = "/".join(f"{100 * layers[f'fc{i}/kernel']:.1f}" for i in (1, 2, 3))
    want = (
        f"test accuracy {s['eval_accuracy']:.4f}, kernels fc1/fc2/fc3 at {per_layer}% sparsity, "
        f"{s['wall_clock_s']:.0f} s of training"
    )
    assert want in " ".join(section("Quickstart").split())
    assert s["sparsity"] == pytest.approx(0.9) and s["epochs"] == 20.0


def test_quickstart_config_docstring_matches_the_committed_run():
    from configs import quickstart

    s = quickstart_run()
    doc = " ".join(quickstart.__doc__.split())
    layers = s["per_layer_sparsity"]
    per_layer = ", ".join(f"fc{i} {layers[f'fc{i}/kernel']:.3f}" for i in (1, 2, 3))
    assert f"test accuracy {s['eval_accuracy']:.4f} at {s['sparsity']:.4f}" in doc
    assert f"({per_layer})" in doc
    assert f"{s['wall_clock_s']:.0f} s of training" in doc


def test_quickstart_export_figures_match_the_benchmark():
    r = read_json(BENCH / "export_quickstart.json")
    want = (
        f"exports to {r['file_bytes']:,} bytes, {100 * r['ratio']:.1f}% of its dense "
        f"{r['dense_bytes'] / 1e6:.2f} MB, and the export's test accuracy is the run's "
        f"{r['export_eval_accuracy']:.4f} exactly"
    )
    assert want in " ".join(section("Export a sparse model").split())
    assert r["accuracy_equal"]
    # The export benchmark and the quickstart run trained the same thing: same accuracy.
    assert r["run_eval_accuracy"] == quickstart_run()["eval_accuracy"]


# ---------------------------------------------------------------------------------------------
# Export sizes and sparse inference.


def megabytes(n: int) -> str:
    mb = n / 1e6
    return f"{mb:.2f} MB" if mb < 10 else f"{mb:.1f} MB"


def test_export_size_table_matches_the_benchmark():
    r = read_json(BENCH / "export_size.json")
    rows = {(x["model"], x["sparsity"]): x for x in r["rows"] if x["distribution"] == "global"}
    readme_rows = table(section("Export a sparse model"), "model")
    assert [row[0] for row in readme_rows] == list(EXPORT_MODELS)
    for name, dense, *cells in readme_rows:
        model = EXPORT_MODELS[name]
        assert dense == megabytes(rows[model, 0.9]["dense_bytes"]), name
        want = [f"{100 * rows[model, s]['ratio']:.1f}%" for s in (0.9, 0.95, 0.98, 0.99)]
        assert cells == want, f"README row {name!r}: {cells} but the JSON says {want}"


def test_export_size_side_figures_match_the_benchmark():
    rows = read_json(BENCH / "export_size.json")["rows"]
    text = " ".join(section("Export a sparse model").split())
    tiny = [x for x in rows if x["model"].startswith("tiny")]
    dense_kb = sorted(x["dense_bytes"] / 1e3 for x in tiny)
    ratios = sorted(100 * x["ratio"] for x in tiny)
    assert f"{dense_kb[0]:.0f}–{dense_kb[-1]:.0f} kB dense" in text
    assert f"stay at {ratios[0]:.0f}–{ratios[-1]:.0f}%" in text
    glob = {(x["model"], x["sparsity"]): x["ratio"] for x in rows if x["distribution"] == "global"}
    worst = max(
        100 * (x["ratio"] - glob[x["model"], x["sparsity"]])
        for x in rows
        if x["distribution"] != "global" and not x["model"].startswith("tiny")
    )
    assert worst < 0.5 and "under +0.5 pp more" in text


def lenet300_inference() -> dict[tuple[float, int, str], dict]:
    r = read_json(BENCH / "sparse_inference.json")
    return {
        (x["sparsity"], x["batch"], x["variant"]): x
        for x in r["rows"]
        if x["case"] == "lenet300_100"
    }


def test_sparse_inference_figures_match_the_benchmark():
    rows = lenet300_inference()
    text = " ".join(section("Export a sparse model").split())
    speedups = ", ".join(
        f"{rows[s, 128, 'bcsr']['speedup_vs_dense']:.1f}× ({round(100 * s)}%)"
        for s in (0.9, 0.95, 0.98)
    )
    want = f"{speedups} and {rows[0.99, 128, 'bcsr']['speedup_vs_dense']:.1f}× (99%)"
    assert want in text
    dense128 = sorted(rows[s, 128, "dense"]["time_min_us"] for s in (0.9, 0.95, 0.98, 0.99))
    assert f"({dense128[0]:.0f}–{dense128[-1]:.0f} µs)" in text
    slower = sorted(1 / rows[s, 1, "bcsr"]["speedup_vs_dense"] for s in (0.9, 0.95, 0.98, 0.99))
    assert f"{slower[0]:.1f}–{slower[-1]:.0f}× **slower**" in text
    dense1 = sorted(rows[s, 1, "dense"]["time_min_us"] for s in (0.9, 0.95, 0.98, 0.99))
    assert f"(the dense forward takes {dense1[0]:.0f}–{dense1[-1]:.0f} µs)" in text
    bcoo, dense = rows[0.99, 1, "bcoo"]["time_min_us"], rows[0.99, 1, "dense"]["time_min_us"]
    assert f"({bcoo:.0f} vs {dense:.0f} µs)" in text


def test_sparse_module_table_matches_the_benchmark():
    import progprune.export.sparse as sparse

    rows = lenet300_inference()
    for s in (0.9, 0.95, 0.98, 0.99):
        d128, b128 = rows[s, 128, "dense"], rows[s, 128, "bcsr"]
        d1, b1 = rows[s, 1, "dense"], rows[s, 1, "bcsr"]
        cells = [
            f"{round(100 * s)}%",
            f"{d128['time_min_us']:.0f} us",
            f"{b128['time_min_us']:.0f} us ({b128['speedup_vs_dense']:.1f}x)",
            f"{d1['time_min_us']:.0f} us",
            f"{b1['time_min_us']:.0f} us ({b1['speedup_vs_dense']:.2f}x)",
        ]
        assert re.search(r"\s+".join(re.escape(c) for c in cells), sparse.__doc__), cells


# ---------------------------------------------------------------------------------------------
# Results notes: the GraSP temperature check.


def test_grasp_temperature_figures_match_their_json():
    rows = read_json(RESULTS / "grasp_temperature_fmnist_lenet300_seed0.json")
    acc = {(r["sparsity"], r["temperature"]): 100 * r["accuracy"] for r in rows}
    pairs = ", ".join(f"{acc[s, 1.0]:.2f} → {acc[s, 200.0]:.2f}" for s in (0.9, 0.95, 0.98))
    gains = ", ".join(f"{acc[s, 200.0] - acc[s, 1.0]:+.1f}" for s in (0.9, 0.95, 0.98))
    random = read_csv("fmnist_lenet300_cpu.csv")
    means = " / ".join(pct(float(random["random", s]["accuracy_mean"])) for s in SPARSITIES[2:5])
    at99 = f"({acc[0.99, 1.0]:.2f} → {acc[0.99, 200.0]:.2f})"
    for name in ("fmnist_lenet300_cpu_notes.md", "fmnist_lenet300_cpu.md"):
        text = " ".join((RESULTS / name).read_text().split())
        assert f"({pairs} %: {gains} pp)" in text, name
        assert f"random's mean over 3 seeds ({means})" in text, name
        assert f"no better at 99% {at99}" in text, name


# -- equal cost ------------------------------------------------------------------------------

EQUAL_COST_COLUMNS = ("imp", "progressive", "gmp", "progressive-end0.5-every20")
CELL = re.compile(r"([\d.]+) ± ([\d.]+) \((\d+)\)")


def _equal_cost_cells() -> dict[tuple, list[dict[str, str]]]:
    cells: dict[tuple, list[dict[str, str]]] = {}
    with open(RESULTS / "fmnist_equal_cost.csv") as f:
        for r in csv.DictReader(f):
            key = (r["model"], r["method"], float(r["sparsity"]), float(r["epochs"]))
            cells.setdefault(key, []).append(r)
    return cells


def _printed(row: dict[str, str]) -> tuple[str, str]:
    return f"{float(row['accuracy_mean']):.2f}", f"{float(row['accuracy_std']):.2f}"


def test_equal_cost_table_matches_its_csv():
    text = section("Equal cost: one training cycle given IMP's budget")
    header = "| model | sparsity | IMP | progressive | GMP | progressive-end0.5-every20 |"
    assert header in text  # the columns below are read in this order
    cells = _equal_cost_cells()
    rows = table(text, "model")
    assert {r[0] for r in rows} == {"LeNet-300-100", "LeNet-5"}
    checked = 0
    for row in rows:
        model, sparsity = EXPORT_MODELS[row[0]], float(row[1])
        for method, cell in zip(EQUAL_COST_COLUMNS, row[2:6], strict=True):
            found = CELL.findall(cell)
            assert found, f"{row[0]} {sparsity} {method}: no 'mean ± std (epochs)' in {cell!r}"
            for mean, std, epochs in found:
                candidates = cells.get((model, method, sparsity, float(epochs)), [])
                assert (mean, std) in [_printed(c) for c in candidates], (row[0], method, cell)
                checked += 1
        match = re.fullmatch(r"(\S+), (\d+) ep \(.*\): ([\d.]+) ± ([\d.]+)", row[6])
        assert match, row[6]
        method, epochs, mean, std = match.groups()
        candidates = cells.get((model, method, sparsity, float(epochs)), [])
        assert (mean, std) in [_printed(c) for c in candidates], row[6]
    assert checked >= len(rows) * len(EQUAL_COST_COLUMNS)
