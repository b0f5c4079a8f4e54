"""Trainer specifications: golden step, launcher equivalence, outputs, bad input, NaN stop.

Runs on scikit-learn's digits with the tiny models (configs/tiny.py); 8 host CPU devices are
forced by conftest.py.
"""

from __future__ import annotations

import doctest
import importlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

import progprune
from configs import tiny
from progprune import methods
from progprune.train import build, load_final_params, metrics, parallel, train_and_evaluate
from progprune.train.checkpoint import Checkpointer
from progprune.train.state import to_host
from progprune.train.validate import validate

from runs import configured

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_steps(config, num_devices: int, kind: str, num_steps: int):
    """Runs `num_steps` train steps without files; returns (losses, host state, eval metrics)."""
    ds = build.load_data(config)
    tx = build.make_plan(config, len(ds.train)).tx
    train_step, eval_step = build.make_steps(config, ds, tx, num_devices)
    launcher = parallel.make_launcher(kind, train_step, eval_step, jax.devices()[:num_devices])
    state = launcher.put_state(to_host(build.initial_state(config, tx, ds.train)))
    train_data = (launcher.put_data(ds.train.images), launcher.put_data(ds.train.labels))
    losses = []
    for _ in range(num_steps):
        state, m = launcher.train_step(state, *train_data)
        losses.append(launcher.get_metrics(m)["train_loss"])
    eval_data = (launcher.put_data(ds.eval.images), launcher.put_data(ds.eval.labels))
    evals = launcher.get_metrics(launcher.eval_step(state, *eval_data))
    return np.array(losses), launcher.get_state(state), evals


def test_golden_one_step():
    config = tiny.get_config()
    losses, state, _ = run_steps(config, 1, "shard_map", 1)
    abs_sum = sum(float(np.abs(x).sum()) for x in jax.tree.leaves(state.params))
    message = (
        "Golden numbers changed. Update them ONLY if you meant to change initialisation, batch "
        "order, preprocessing, the loss or the optimizer (and say so in the commit); a refactor "
        "of the trainer must reproduce them exactly."
    )
    assert losses[0] == pytest.approx(2.3370308876037598, rel=1e-6), (losses[0], message)
    assert abs_sum == pytest.approx(258.12081725522876, rel=1e-6), (abs_sum, message)
    assert int(state.step) == 1


def _bn_augment_config():
    # BatchNorm (tiny_cnn), augmentation and three mask updates: everything that could differ.
    config = tiny.get_config()
    config.model, config.data.augment = "tiny_cnn", True
    config.pruning.update_every, config.pruning.end_fraction = 2, 1.0
    config.num_train_steps = 6  # masks updated at steps 0, 2, 4 towards 50%
    return config


@pytest.fixture(scope="module")
def one_device_run():
    return run_steps(_bn_augment_config(), 1, "shard_map", 6)


@pytest.mark.parametrize("kind", ["shard_map", "pmap"])
def test_eight_devices_match_one(kind, one_device_run):
    ref_losses, ref, ref_eval = one_device_run
    losses, got, got_eval = run_steps(_bn_augment_config(), 8, kind, 6)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-5)
    masks, ref_masks = progprune.get_masks(got.opt_state), progprune.get_masks(ref.opt_state)
    for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(ref_masks), strict=True):
        np.testing.assert_array_equal(a, b)
    assert progprune.sparsity_summary(masks)["global"] > 0.1  # the masks did change
    assert got_eval["eval_accuracy"] == pytest.approx(ref_eval["eval_accuracy"], abs=1e-6)
    assert got_eval["eval_loss"] == pytest.approx(ref_eval["eval_loss"], abs=1e-5)


def test_bfloat16_keeps_float32_params():
    config = tiny.get_config()
    config.dtype = "bfloat16"
    losses, state, evals = run_steps(config, 1, "shard_map", 3)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
    assert np.isfinite(losses).all() and np.isfinite(evals["eval_loss"])
    f32_losses, _, _ = run_steps(tiny.get_config(), 1, "shard_map", 3)
    assert not np.array_equal(losses, f32_losses)  # bf16 compute really happened
    np.testing.assert_allclose(losses, f32_losses, rtol=0.05)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    config = tiny.get_config()
    return workdir, config, train_and_evaluate(config, str(workdir))


def test_summary_and_metrics(tiny_run):
    workdir, config, summary = tiny_run
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk == summary
    assert summary["sparsity"] == pytest.approx(0.5, abs=1e-3)  # the target, reached exactly
    # 2 epochs of a tiny MLP on real digits at 50% sparsity: measured 0.8639 (311 of 360) and
    # loss 0.553; a change that costs ten test images or more fails here.
    assert summary["eval_accuracy"] > 0.835
    assert 0 < summary["eval_loss"] < 0.65  # chance is ln 10 = 2.3
    assert summary["steps"] == 44 and summary["epochs"] == 2.0
    assert set(summary["per_layer_sparsity"]) == {"fc1/kernel", "fc2/kernel"}
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train_loss" in r]
    eval_rows = [r for r in rows if "eval_accuracy" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30, 35, 40, 44]
    assert [r["step"] for r in eval_rows] == [22, 44]
    for r in train_rows:
        assert {"train_loss", "train_accuracy", "sparsity", "learning_rate"} <= set(r)
    sparsities = [r["sparsity"] for r in train_rows]
    assert sparsities == sorted(sparsities) and sparsities[-1] == summary["sparsity"]
    assert "per_layer_sparsity" in train_rows[0]  # written when the masks changed
    assert eval_rows[-1]["eval_accuracy"] == summary["eval_accuracy"]
    events = [p.name for p in (workdir / "tensorboard").iterdir()]
    assert any(name.startswith("events.out.tfevents") for name in events)
    kernel = load_final_params(str(workdir))["fc1"]["kernel"]
    assert np.mean(kernel == 0) >= summary["per_layer_sparsity"]["fc1/kernel"]  # pruned => 0.0


def test_rerun_of_finished_run_resumes_nothing(tiny_run):
    workdir, config, summary = tiny_run
    # A rerun that trained again would rewrite metrics.jsonl with new images_per_sec values;
    # resuming at the final step leaves the file byte for byte as it was.
    rows = (workdir / "metrics.jsonl").read_text()
    again = train_and_evaluate(config, str(workdir))
    assert (workdir / "metrics.jsonl").read_text() == rows
    assert again["eval_accuracy"] == summary["eval_accuracy"]
    assert again["sparsity"] == summary["sparsity"]


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("pruning.sparsity", 1.0, r"config.pruning.sparsity must be in \[0, 1\)"),
        ("batch_size", 60, r"batch_size=60 is invalid: not divisible by the 8 devices"),
        ("pruning.method", "magic", r"pruning.method='magic' is invalid: unknown choice"),
        ("learning_rate", -0.1, r"learning_rate=-0.1 is invalid: must be > 0"),
    ],
)
def test_bad_values_fail_before_work(tmp_path, key, value, match):
    config = configured(tiny.get_config(), {key: value})
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_key_and_wrong_type_in_python(tmp_path):
    config = tiny.get_config()
    with pytest.raises(AttributeError, match="learning_rat"):  # configs are locked
        config.learning_rat = 0.1
    with pytest.raises(TypeError):  # and type-safe
        config.batch_size = "64"
    # A config built from a plain dict has no type-safe fields: the validator catches types.
    d = tiny.get_config().to_dict()
    d["batch_size"] = "64"
    with pytest.raises(ValueError, match=r"config.batch_size='64' is invalid: expected a number"):
        train_and_evaluate(ml_collections.ConfigDict(d), str(tmp_path))


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="is not writable"):
        train_and_evaluate(tiny.get_config(), str(blocker / "run"))


def test_workdir_of_a_different_run_is_refused(tiny_run, tmp_path):
    workdir, config, _ = tiny_run
    other = tiny.get_config()
    other.pruning.sparsity = 0.6
    with pytest.raises(ValueError, match=r"holds a different run \(config differs in pruning"):
        train_and_evaluate(other, str(workdir))
    assert Checkpointer(workdir).steps()[-1] == 44  # untouched


def test_overwrite_replaces_a_different_run(tmp_path):
    config = tiny.get_config()
    config.num_train_steps, config.pruning.update_every = 3, 1
    train_and_evaluate(config, str(tmp_path))
    config.pruning.sparsity, config.overwrite = 0.3, True
    summary = train_and_evaluate(config, str(tmp_path))
    assert summary["target_sparsity"] == 0.3


def _cli(*args, cwd=REPO):
    cmd = [sys.executable, "-m", "progprune.train", "--config=configs/tiny.py", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_rejects_unknown_key_and_wrong_type(tmp_path):
    out = _cli(f"--workdir={tmp_path}", "--config.learning_rat=0.1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown config key 'learning_rat'. Did you mean \"learning_rate\"" in out.stderr
    out = _cli(f"--workdir={tmp_path}", "--config.pruning.sparsity=lots")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--config.pruning.sparsity=lots: could not convert string to float" in out.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny.get_config()
    # Warmup from 0 to an absurd rate: finite for a few steps, then the loss overflows.
    config.learning_rate, config.warmup_epochs = 1e12, 2.0
    config.checkpoint_every_steps, config.log_every_steps = 2, 1
    with pytest.raises(FloatingPointError, match=r"non-finite \(NaN or inf\) at step \d+"):
        train_and_evaluate(config, str(tmp_path))
    ckpt = Checkpointer(tmp_path)
    steps = ckpt.steps()
    assert steps, "a checkpoint before the NaN should exist"
    state, _ = ckpt.restore_latest(_fresh_host_state(config))
    assert int(state.step) == steps[-1]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def _fresh_host_state(config):
    ds = build.load_data(config)
    tx = build.make_plan(config, len(ds.train)).tx
    return to_host(build.initial_state(config, tx, ds.train))


CONFIGS = sorted(
    p.stem for p in (Path(REPO) / "configs").glob("*.py") if not p.stem.startswith("_")
)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_validates_and_documents_its_command(name, tmp_path):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config()
    validate(config, tmp_path, num_devices=1)
    doc = module.__doc__
    assert f"python -m progprune.train --config=configs/{name}.py" in doc
    if name == "default":
        return
    # Every accuracy a config states is the paper's (with its source), measured here (with the
    # committed artifact or test that holds it), or plainly not run: never an "expected" figure.
    assert "Expected" not in doc and "expect " not in doc
    assert re.search(r"Paper: .*\(.+\)|Measured here: |Not run here", doc, re.S)
    for path in re.findall(r"(?:experiments|benchmarks)/results/[\w./-]+\.(?:csv|json)", doc):
        assert (Path(REPO) / path).is_file(), path
    if "Measured here: " in doc:
        assert re.search(r"(?:experiments|benchmarks)/results/\S+\.json|tests/test_\w+\.py", doc)


@pytest.mark.slow
def test_quickstart_on_real_fashion_mnist(tmp_path):
    from configs import quickstart

    config = quickstart.get_config()
    config.num_devices = 1  # as the README command runs it on a CPU
    summary = train_and_evaluate(config, str(tmp_path))
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    # measured 0.8957 (20 epochs, 1 CPU device): experiments/results/quickstart_run.json
    assert summary["eval_accuracy"] > 0.885


def test_pruning_setup_resolves_durations_to_steps():
    p = tiny.get_config().pruning
    p.sparsity, p.begin_fraction, p.end_fraction, p.update_every = 0.8, 0.25, 0.75, 0
    setup = methods.pruning_setup(p, total_steps=1000, steps_per_epoch=100)
    assert setup.update_every == 50  # half an epoch
    assert [float(setup.schedule(s)) for s in (0, 250, 500, 750, 1000)] == pytest.approx(
        [0.0, 0.0, 0.4, 0.8, 0.8]
    )
    p.method, p.oneshot_fraction = "oneshot", 0.33  # 330 -> on the update grid: 350
    setup = methods.pruning_setup(p, total_steps=1000, steps_per_epoch=100)
    assert float(setup.schedule(349)) == 0.0
    assert float(setup.schedule(350)) == pytest.approx(0.8)
    for method in ("dense", "snip", "grasp", "random", "fixed"):
        p.method = method
        assert methods.pruning_setup(p, 1000, 100).schedule is None


def test_fixed_method_needs_masks(tmp_path):
    config = tiny.get_config()
    config.pruning.method = "fixed"
    with pytest.raises(ValueError, match="initial_masks"):
        train_and_evaluate(config, str(tmp_path))


ROW = {"epoch": 1.0, "train_loss": 0.25, "train_accuracy": 0.9, "sparsity": 0.5}


def test_progress_bar_only_on_a_tty(monkeypatch, capsys):
    class FakeTty(io.StringIO):
        def isatty(self):
            return True

    tty = FakeTty()
    monkeypatch.setattr(sys, "stderr", tty)
    report = metrics.Reporter(True, total=10, initial=0)
    report.start("Training x")
    report.update(10)
    report.train_row(10, {**ROW, "images_per_sec": 1e4}, seconds_left=0.0)
    report.eval_row(10, {"eval_accuracy": 0.75, "eval_loss": 0.5})
    report.close()
    shown = tty.getvalue()
    assert "10/10" in shown and "sparsity=0.5" in shown and "loss=0.25" in shown, shown
    # The start line and the evaluation go to stdout, above the bar; training rows are on it.
    assert capsys.readouterr().out.splitlines() == [
        "Training x",
        "eval at step 10: accuracy 0.7500 loss 0.5000",
    ]
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a log file: no bar
    report = metrics.Reporter(True, total=10, initial=0)
    report.start("Training x")
    assert report.bar is None


DOCUMENTED = [
    "progprune.drivers",
    "progprune.drivers.imp",
    "progprune.methods",
    "progprune.train.build",
    "progprune.train.errors",
    "progprune.train.workdir",
    "progprune.train.checkpoint",
    "progprune.train.loop",
    "progprune.train.metrics",
    "progprune.train.parallel",
    "progprune.train.state",
    "progprune.train.steps",
    "progprune.train.validate",
    "configs.default",
    "configs._cifar",
    "configs._lenet",
]


@pytest.mark.parametrize("name", DOCUMENTED)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    assert result.attempted > 0, f"{name} has no runnable docstring example"
