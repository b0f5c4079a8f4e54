"""Specifications of experiments/: sweep definitions, the resumable runner, the aggregator, and
sweep 2 (CIFAR-10) end to end on tfds mock data."""

import csv
import doctest
import json
import os

import numpy as np
import pytest

from experiments import aggregate, completeness, equal_cost, run_sweep, sweeps
from progprune.train import validate


def check_config(run: dict) -> None:
    validate.check_config(run_sweep.make_config(run), num_devices=1)


def test_sweep1_has_every_method_sparsity_and_seed_with_one_imp_chain_per_seed():
    runs = sweeps.SWEEPS["fmnist_lenet"]
    cells = {
        (r["model"], r["pruning.method"], r["pruning.sparsity"], r["seed"])
        for r in runs
        if r["pruning.method"] not in ("dense", "imp")
    }
    assert len(cells) == 2 * 6 * 6 * 3 == len(runs) - 2 * 2 * 3
    imp = [r for r in runs if r["pruning.method"] == "imp"]
    assert len(imp) == 2 * 3
    assert all(r["pruning.imp_sparsities"] == sweeps.FMNIST_SPARSITIES for r in imp)
    assert all(r["pruning.imp_rate"] == 1.0 for r in imp)  # one round per target
    assert len({sweeps.run_name(r) for r in runs}) == len(runs)


def test_sweep2_has_the_papers_settings():
    runs = sweeps.SWEEPS["cifar10"]
    levels = {(r["model"], r["pruning.sparsity"]) for r in runs if r["pruning.method"] == "snip"}
    assert levels == {("resnet18", s) for s in (0.70, 0.729, 0.75, 0.80, 0.85)} | {
        ("vgg_like", 0.97),
        ("vgg19", 0.9797),
        ("vgg19", 0.98),
    }
    assert {r["pruning.method"] for r in runs} == set(sweeps.CIFAR_METHODS)
    assert len({sweeps.run_name(r) for r in runs}) == len(runs)


def test_lenet5_equal_cost_sweep_gives_one_cycle_imps_budget():
    runs = sweeps.SWEEPS["fmnist_equal_cost_lenet5"]
    short = min(r["num_epochs"] for r in runs)
    seeds, levels = (0, 1, 2), (0.9, 0.98)
    best = "progressive-end0.5-every20"
    cells = {
        (r.get("label", r["pruning.method"]), r["pruning.sparsity"], r["num_epochs"], r["seed"])
        for r in runs
        if r["pruning.method"] != "imp"
    }
    lengths = {
        "progressive": (short, 3 * short),
        "gmp": (short, 3 * short),
        best: (short, 3 * short),
        "snip": (short,),
    }
    expected = {("dense", 0.0, short, seed) for seed in seeds}
    for method, epochs in lengths.items():
        expected |= {(method, s, e, seed) for s in levels for e in epochs for seed in seeds}
    assert cells == expected
    imp = [r for r in runs if r["pruning.method"] == "imp"]
    assert [r["seed"] for r in imp] == list(seeds) and len(runs) == len(cells) + len(imp)
    # The long single cycles cost what IMP's chain to 98% costs: 3 trainings of `short`.
    assert all(r["pruning.imp_sparsities"] == levels and r["num_epochs"] == short for r in imp)
    assert all(r["pruning.rewind_step"] == round(0.05 * short * 468) for r in imp)
    assert all(r["model"] == "lenet5" and r["learning_rate"] == 0.05 for r in runs)
    assert [r["seed"] for r in runs] == sorted(r["seed"] for r in runs)  # whole seeds first
    assert len({sweeps.run_name(r) for r in runs}) == len(runs)


@pytest.mark.parametrize("name", sorted(sweeps.SWEEPS))
def test_every_run_of_every_sweep_is_a_valid_config(name):
    for run in sweeps.SWEEPS[name]:
        check_config(run)


def test_unknown_override_is_an_error():
    with pytest.raises(KeyError, match="pruning.sparsty"):
        run_sweep.make_config({"config": "configs/default.py", "pruning.sparsty": 0.5})


def test_print_commands_one_per_run():
    cmds = run_sweep.commands("cifar10", "/data/runs")
    assert len(cmds) == len(set(cmds)) == len(sweeps.SWEEPS["cifar10"])
    assert cmds[0].startswith("python -m experiments.run_sweep --sweep=cifar10 --root=/data/runs")


TINY = {"config": "configs/tiny.py", "model": "tiny_mlp", "num_train_steps": 8}


def test_runner_resumes_and_aggregator_reports_mean_and_std(tmp_path, monkeypatch):
    runs = sweeps.method_runs(
        TINY,
        ("dense", "progressive", "imp", "snip"),
        (0.5, 0.8),
        (0, 1),
        imp={"pruning.rewind_step": 1},
    )
    monkeypatch.setitem(sweeps.SWEEPS, "tiny", runs)
    assert run_sweep.run_sweep("tiny", str(tmp_path), only=[]) == []
    inv = json.loads((tmp_path / "tiny" / "invocations.json").read_text())
    assert inv[-1]["trained"] == len(runs) == 12
    assert run_sweep.run_sweep("tiny", str(tmp_path), only=[]) == []  # all done: trains nothing
    inv = json.loads((tmp_path / "tiny" / "invocations.json").read_text())
    assert len(inv) == 2 and inv[-1].get("trained", 0) == 0

    out = tmp_path / "results"
    groups = aggregate.aggregate("tiny", str(tmp_path), str(out))
    with open(out / "tiny.csv") as f:
        table = {(r["method"], float(r["sparsity"])): r for r in csv.DictReader(f)}
    assert set(table) == {("dense", 0.0)} | {
        (m, s) for m in ("progressive", "imp", "snip") for s in (0.5, 0.8)
    }
    accs = [
        json.loads(
            (tmp_path / "tiny" / f"tiny_mlp-snip-s0.8-seed{s}" / "summary.json").read_text()
        )["eval_accuracy"]
        * 100
        for s in (0, 1)
    ]
    cell = table[("snip", 0.8)]
    assert cell["n"] == "2" and float(cell["accuracy_mean"]) == pytest.approx(
        np.mean(accs), abs=1e-3
    )
    assert float(cell["accuracy_std"]) == pytest.approx(np.std(accs, ddof=1), abs=1e-3)
    # IMP's 0.8 level is its chain's second round: 3 trainings of 4 steps each.
    imp08 = next(g for g in groups if g["method"] == "imp" and g["sparsity"] == 0.8)
    dense = next(g for g in groups if g["method"] == "dense")
    assert imp08["epochs"] == pytest.approx(3 * dense["epochs"])
    assert imp08["measured_sparsity"] == pytest.approx(0.8, abs=1e-3)
    md = (out / "tiny.md").read_text()
    assert "| progressive |" in md and "run_sweep" in md and (out / "tiny.png").stat().st_size > 0


def mock_cifar10(data_dir) -> None:
    """File names that progprune.data's tfds reader looks for; tfds.testing.mock_data then
    supplies random examples, so nothing is downloaded."""
    for split in ("train", "test"):
        version = data_dir / "cifar10" / "3.0.2"
        version.mkdir(parents=True, exist_ok=True)
        (version / "dataset_info.json").write_text("{}")
        (version / f"cifar10-{split}.array_record-00000-of-00001").write_bytes(b"")


def shrink(run: dict, data_dir) -> dict:
    """The same run for 2 steps of 16 images (IMP: a 2-round chain rewinding to step 1)."""
    small = {
        **run,
        "num_train_steps": 2,
        "batch_size": 16,
        "eval_batch_size": 16,
        "data.data_dir": str(data_dir),
        "checkpoint_every_steps": 2,
        "log_every_steps": 1,
        "async_checkpointing": False,
    }
    if run["pruning.method"] == "imp":
        chain = run["pruning.imp_sparsities"][:2]
        small.update({"pruning.imp_sparsities": chain, "pruning.rewind_step": 1})
    return small


@pytest.mark.slow
def test_sweep2_runs_end_to_end_on_mock_cifar10(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    mock_cifar10(tmp_path / "tfds")
    # One run per (model, method): the other runs differ only in sparsity and seed.
    seen, runs = set(), []
    for run in sweeps.SWEEPS["cifar10"]:
        if (run["model"], run["pruning.method"]) not in seen and run["seed"] == 0:
            seen.add((run["model"], run["pruning.method"]))
            runs.append(shrink(run, tmp_path / "tfds"))
    assert len(runs) == 3 * 6
    monkeypatch.setitem(sweeps.SWEEPS, "cifar10_mock", runs)
    with tfds.testing.mock_data(num_examples=32):
        failed = run_sweep.run_sweep("cifar10_mock", str(tmp_path / "runs"), only=[])
    assert failed == []
    groups = aggregate.aggregate("cifar10_mock", str(tmp_path / "runs"), str(tmp_path / "out"))
    for g in groups:
        # Every method reaches its target exactly: the ramps end on the last mask update of
        # the 2 steps (updates every half epoch: every step), at-init masks and IMP rounds
        # from the start.
        if g["method"] != "dense":
            assert g["measured_sparsity"] == pytest.approx(g["sparsity"], abs=1e-4)
    assert {g["model"] for g in groups} == {"resnet18", "vgg_like", "vgg19"}
    assert os.path.exists(tmp_path / "out" / "cifar10_mock.md")


def fake_run(sweep_dir, name: str, overrides: dict, summary=None, imp_rounds=None) -> None:
    """A finished run directory as run_sweep leaves it (only the files the aggregators read)."""
    run_dir = sweep_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"name": name, "overrides": overrides}))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if imp_rounds is not None:
        (run_dir / "imp_rounds.json").write_text(json.dumps(imp_rounds))


def fake_equal_cost_sweep(sweep_dir) -> None:
    """Model "m", 2 seeds: dense at 10 and 20 epochs, progressive at 10, 20 and 40, GMP at 10
    (both at 0.9 only), an IMP chain of 10 epochs per round through 0.5 and 0.9."""
    accuracies = {
        ("dense", 0.0, 10.0): (0.890, 0.894),
        ("dense", 0.0, 20.0): (0.900, 0.902),
        ("progressive", 0.9, 10.0): (0.880, 0.884),
        ("progressive", 0.9, 20.0): (0.897, 0.901),
        ("progressive", 0.9, 40.0): (0.905, 0.907),
        ("gmp", 0.9, 10.0): (0.890, 0.892),
    }
    for (method, sparsity, epochs), accs in accuracies.items():
        for seed, acc in enumerate(accs):
            run = {"model": "m", "pruning.method": method, "pruning.sparsity": sparsity}
            run.update(seed=seed, num_epochs=epochs, tag=f"e{epochs:g}")
            summary = {"eval_accuracy": acc, "sparsity": sparsity, "epochs": epochs}
            fake_run(sweep_dir, sweeps.run_name(run), run, {**summary, "wall_clock_s": epochs})
    for seed, (a5, a9) in enumerate(((0.899, 0.898), (0.901, 0.902))):
        run = {"model": "m", "pruning.method": "imp", "imp_chain": (0.5, 0.9), "seed": seed}
        rounds = [
            {"round": k, "target_sparsity": s, "sparsity": s, "eval_accuracy": a, "epochs": 10.0}
            | {"cumulative_epochs": 10.0 * (k + 1), "cumulative_wall_clock_s": 11.0 * (k + 1)}
            for k, (s, a) in enumerate(((0.0, 0.89), (0.5, a5), (0.9, a9)))
        ]
        fake_run(sweep_dir, sweeps.run_name({**run, "tag": "e10"}), run, imp_rounds=rounds)


def test_equal_cost_report_on_a_fake_sweep(tmp_path):
    fake_equal_cost_sweep(tmp_path / "fake")
    out = tmp_path / "results"
    equal_cost.equal_cost(["fake"], str(tmp_path), str(out), "fake_cost")
    with open(out / "fake_cost.csv") as f:
        table = {
            (r["method"], float(r["sparsity"]), float(r["epochs"])): r for r in csv.DictReader(f)
        }
    assert set(table) == {
        ("dense", 0.0, 10.0),
        ("dense", 0.0, 20.0),
        ("progressive", 0.9, 10.0),
        ("progressive", 0.9, 20.0),
        ("progressive", 0.9, 40.0),
        ("gmp", 0.9, 10.0),
        ("imp", 0.5, 20.0),  # IMP levels cost their chain: 2 and 3 trainings of 10 epochs
        ("imp", 0.9, 30.0),
    }
    imp = table[("imp", 0.9, 30.0)]
    assert (imp["n"], imp["trainings"], imp["training_epochs"], imp["seeds"]) == (
        "2",
        "3",
        "10.0",
        "0 1",
    )
    assert float(imp["accuracy_mean"]) == pytest.approx(90.0, abs=1e-4)
    assert float(imp["accuracy_std"]) == pytest.approx(0.2828, abs=1e-4)
    assert float(imp["wall_clock_s"]) == pytest.approx(33.0)
    assert float(table[("progressive", 0.9, 20.0)]["accuracy_mean"]) == pytest.approx(
        89.9, abs=1e-4
    )

    md = (out / "fake_cost.md").read_text()
    # IMP at 0.9 = 90.00 ± 0.28; the bar is 89.72: progressive's 20-epoch 89.90 is the cheapest
    # match, GMP (89.10 at 10 epochs) has none.
    imp_head = "| 0.9 | 90.00 ± 0.28 (30 ep, 10/round) | "
    match = "progressive, 20 ep (0.67× IMP's): 89.90 ± 0.28 | 20 ep (0.67× IMP's): 89.90 ± 0.28"
    match += " | none up to 10 epochs |"
    assert imp_head + match in md
    # Gaps at IMP's 30 epochs: progressive's runs of 20 and 40 epochs around it, GMP's 10.
    assert imp_head + "-0.10 (20 ep) / +0.60* (40 ep) | -0.90* (10 ep) |" in md
    summary = "| m | 0.9 | 90.00 ± 0.28 (30) | 89.90 ± 0.28 (20) / 90.60 ± 0.14 (40) | "
    assert summary + "89.10 ± 0.14 (10) | progressive, 20 ep (0.67× IMP's): 89.90 ± 0.28 |" in md
    assert "| 0.9 | progressive | 88.20 ± 0.28 | 89.90 ± 0.28 | 90.60 ± 0.14 |" in md
    assert "| 0 | dense | 89.20 ± 0.28 | 90.10 ± 0.14 | – |" in md
    assert "| 0.9 | gmp | 89.10 ± 0.14 | – | – |" in md  # a cell not run is shown, as "–"
    assert "| 0.9 | -0.90* | – | – |" in md  # progressive − gmp
    assert "progressive is below gmp in 1 of 1 cells (1 by more than the stds added)" in md
    assert "| 10 epochs/round | 90.00 ± 0.14 (20 ep) | 90.00 ± 0.28 (30 ep) |" in md
    assert (out / "fake_cost.png").stat().st_size > 0


def test_equal_cost_report_names_every_missing_result(tmp_path, monkeypatch):
    """A sweep stopped early: its plan (`sweeps.SWEEPS`) is compared with the finished runs;
    nothing it planned is left out silently."""
    fake_equal_cost_sweep(tmp_path / "fake")
    one = {"model": "m", "pruning.sparsity": 0.9}
    plan = [
        {**one, "pruning.method": method, "num_epochs": epochs, "seed": seed, "tag": f"e{epochs:g}"}
        for method, epochs, seeds in (("progressive", 10.0, (0, 1, 2)), ("gmp", 20.0, (0, 1)))
        for seed in seeds
    ]  # progressive at 10 epochs lacks seed 2; GMP at 20 epochs was never run
    chain = {"pruning.imp_sparsities": (0.5, 0.9, 0.95), "num_epochs": 10.0, "tag": "e10"}
    plan += [{**one, "pruning.method": "imp", "seed": s, **chain} for s in (0, 1)]
    (tmp_path / "fake" / sweeps.run_name(plan[2])).mkdir()  # started, then stopped
    monkeypatch.setitem(sweeps.SWEEPS, "fake", plan)
    out = tmp_path / "results"
    table = equal_cost.equal_cost(["fake"], str(tmp_path), str(out), "fake_cost")

    md = (out / "fake_cost.md").read_text()
    assert "**Partial: 5 planned result(s) missing**" in md
    assert "`fake`: 6 of 11 planned results finished:" in md
    assert "| m | progressive | 0.9 | 10 | 2 (started, not finished) of 3 |" in md
    assert "| m | gmp | 0.9 | 20 | 0 (not started), 1 (not started) of 2 |" in md
    chain = "0 (started, not finished), 1 (started, not finished) of 2"
    assert f"| m | imp | 0.95 | 10 | {chain} |" in md  # the chains stopped after 0.9
    assert "Finished but not in the sweep's plan: dense 0 at 10 epochs (m); " in md
    # Short cells say so; a planned cell without runs reads "missing", one never planned "–".
    assert "| 0.9 | progressive | 88.20 ± 0.28 [2 of 3 seeds] | 89.90 ± 0.28 | 90.60" in md
    assert "| 0.9 | gmp | 89.10 ± 0.14 | missing | – |" in md
    assert "| 10 epochs/round | 90.00 ± 0.14 (20 ep) | 90.00 ± 0.28 (30 ep) | missing |" in md
    by = {(c["method"], c["sparsity"], c["epochs"]): c for c in table}
    assert by[("progressive", 0.9, 10.0)]["n_planned"] == 3
    assert by[("dense", 0.0, 10.0)]["n_planned"] == 2  # finished, but planned nowhere: n
    with open(out / "fake_cost.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["sweep"], r["commits"]) for r in rows} == {("fake", "")}


@pytest.mark.parametrize(
    "module",
    [aggregate, completeness, equal_cost, sweeps],
    ids=lambda m: m.__name__.rsplit(".", 1)[-1],
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module.__name__}"
    assert result.attempted > 0, f"{module.__name__} has no docstring example"
