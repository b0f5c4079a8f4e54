"""Specifications of experiments/: sweep definitions, the resumable runner, the aggregator, and
sweep 2 (CIFAR-10) end to end on tfds mock data."""

import csv
import json
import os

import numpy as np
import pytest

from experiments import aggregate, run_sweep, sweeps
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


TINY = {"config": "configs/tiny.py", "model": "tiny_mlp", "num_train_steps": 4}


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
        if g["method"] in ("progressive", "gmp"):  # 2 steps end mid-ramp
            assert 0.0 < g["measured_sparsity"] < g["sparsity"]
        elif g["method"] != "dense":  # at-init masks and IMP rounds: exact from the start
            assert g["measured_sparsity"] == pytest.approx(g["sparsity"], abs=1e-4)
    assert {g["model"] for g in groups} == {"resnet18", "vgg_like", "vgg19"}
    assert os.path.exists(tmp_path / "out" / "cifar10_mock.md")
