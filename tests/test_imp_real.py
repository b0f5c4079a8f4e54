"""IMP, driven above the trainer, on real configs: LeNet-5 on real Fashion-MNIST, a BatchNorm
model, and a chain killed mid-round and resumed (bit-identical to an uninterrupted chain).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from progprune.drivers import run
from progprune.methods import imp
from progprune.train import load_final_params

from runs import checkpoint_steps, rerun, start_then_signal, train_command

REPO = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _kernels(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree) if np.ndim(x) >= 2]


def _check_chain(workdir: Path, targets: list[float]) -> None:
    """Each round reaches its target exactly, keeps the previous round's pruned weights pruned,
    and trained with its mask: pruned weights are 0.0 at its end, the survivors are not."""
    summary = json.loads((workdir / "summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["target_sparsity"] for r in rounds] == [0.0, *targets]
    previous = None
    for k, target in enumerate(targets, start=1):
        params = load_final_params(str(workdir / f"round_{k}"))
        masks = imp.load_masks(str(workdir / "masks" / f"round_{k}.npz"), params)
        n = sum(m.size for m in _kernels(masks))
        assert sum((~m).sum() for m in _kernels(masks)) == round(target * n)
        assert rounds[k]["sparsity"] == round(target * n) / n
        for w, m in zip(_kernels(params), _kernels(masks), strict=True):
            assert np.all(w[~m] == 0.0) and np.all(w[m] != 0.0)
        if previous is not None:
            assert all(not np.any(b & ~a) for a, b in zip(previous, _kernels(masks), strict=True))
        previous = _kernels(masks)
    assert summary["epochs"] == pytest.approx(sum(r["epochs"] for r in rounds))


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_imp_chain_on_lenet5_and_real_fashion_mnist(tmp_path):
    from configs import lenet5_fashion_mnist

    config = lenet5_fashion_mnist.get_config()
    config.num_train_steps, config.progress_bar = 30, False
    config.pruning.method, config.pruning.imp_sparsities = "imp", (0.5, 0.9)
    config.pruning.imp_rate, config.pruning.rewind_step = 1.0, 5
    summary = run(config, str(tmp_path))
    _check_chain(tmp_path, [0.5, 0.9])
    assert summary["eval_accuracy"] > 0.5  # 30 steps of a pruned LeNet-5: far above chance
    assert (tmp_path / "round_0" / "rewind_params").exists()


def _bn_chain_args(workdir: Path) -> list[str]:
    overrides = {
        "model": "tiny_cnn",  # BatchNorm: its statistics are part of every round's state
        "num_train_steps": 24,
        "checkpoint_every_steps": 4,
        "pruning.method": "imp",
        "pruning.imp_sparsities": "(0.5,0.8)",
        "pruning.imp_rate": 1.0,
        "pruning.rewind_step": 3,
    }
    return train_command(workdir, overrides)


def _env() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


def test_imp_chain_with_batchnorm_killed_mid_round_resumes_bit_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    rerun(_bn_chain_args(whole), env=_env())
    _check_chain(whole, [0.5, 0.8])
    # Kill once round 1 has a checkpoint: round 0 is finished, round 1 half-way.
    round_1 = killed / "round_1" / "checkpoints"
    start_then_signal(_bn_chain_args(killed), lambda: bool(checkpoint_steps(round_1)), env=_env())
    assert not (killed / "summary.json").exists(), "the chain finished before it was killed"
    rerun(_bn_chain_args(killed), env=_env())
    for k in (0, 1, 2):
        a = load_final_params(str(whole / f"round_{k}"))
        b = load_final_params(str(killed / f"round_{k}"))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)
    rounds = [json.loads((d / "imp_rounds.json").read_text()) for d in (whole, killed)]
    strip = lambda rs: [{k: v for k, v in r.items() if "wall_clock" not in k} for r in rs]
    assert strip(rounds[0]) == strip(rounds[1])
