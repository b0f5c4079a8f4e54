"""Specifications of the baseline mask sources: SNIP, GraSP, random, IMP.

Scores are checked against direct computations on a 2-layer network written in plain jnp (GraSP
against an explicit Hessian from ``jax.hessian``); masks against exact counts.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import progprune
import progprune.drivers
import progprune.methods
import progprune.train
from progprune.drivers import imp as imp_driver
from progprune.methods import grasp, imp, random_masks, snip


def two_layer_params(seed: int = 0) -> dict:
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "dense1": {"kernel": jax.random.normal(k1, (6, 5)), "bias": jnp.zeros(5)},
        "dense2": {
            "kernel": jax.random.normal(k2, (5, 3)) / 2,
            "bias": jax.random.normal(k3, (3,)),
        },
    }


def two_layer_loss(params: dict, batch: tuple) -> jax.Array:
    x, y = batch
    h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    logits = h @ params["dense2"]["kernel"] + params["dense2"]["bias"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def make_batches(n_batches: int = 2, size: int = 8, seed: int = 1) -> list:
    keys = jax.random.split(jax.random.key(seed), 2 * n_batches)
    return [
        (
            jax.random.normal(keys[2 * i], (size, 6)),
            jax.random.randint(keys[2 * i + 1], (size,), 0, 3),
        )
        for i in range(n_batches)
    ]


def concat(batches: list) -> tuple:
    return jnp.concatenate([b[0] for b in batches]), jnp.concatenate([b[1] for b in batches])


def kernels(tree: dict) -> np.ndarray:
    return np.concatenate([np.ravel(tree["dense1"]["kernel"]), np.ravel(tree["dense2"]["kernel"])])


# --- SNIP -----------------------------------------------------------------------------------------


def test_snip_scores_equal_abs_weight_times_gradient_of_the_pooled_batch():
    params, batches = two_layer_params(), make_batches()
    # Equal-size batches: the mean of the batch means is the mean over the pooled batch.
    g = jax.grad(two_layer_loss)(params, concat(batches))
    expected = jax.tree.map(lambda w, gw: np.abs(np.asarray(w) * np.asarray(gw)), params, g)
    got = snip.snip_scores(two_layer_loss, params, batches)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, expected)


def test_snip_masks_keep_the_highest_scores_with_exact_count():
    params, batches = two_layer_params(), make_batches()
    masks = snip.snip_masks(two_layer_loss, params, batches, 0.6)
    scores = kernels(snip.snip_scores(two_layer_loss, params, batches))
    kept = kernels(masks)
    n = scores.size
    assert (~kept).sum() == round(0.6 * n)
    assert scores[kept].min() >= scores[~kept].max()
    assert bool(jnp.all(masks["dense1"]["bias"])) and bool(jnp.all(masks["dense2"]["bias"]))


# --- GraSP ----------------------------------------------------------------------------------------


def test_grasp_scores_equal_minus_theta_times_explicit_hessian_times_gradient():
    params, batches = two_layer_params(), make_batches()
    flat, unravel = ravel_pytree(params)
    pooled = concat(batches)
    loss_flat = lambda v: two_layer_loss(unravel(v), pooled)
    H = jax.hessian(loss_flat)(flat)
    g = jax.grad(loss_flat)(flat)
    expected = -np.asarray(flat) * (np.asarray(H) @ np.asarray(g))
    got, _ = ravel_pytree(grasp.grasp_scores(two_layer_loss, params, batches))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert np.abs(expected).max() > 1e-3  # the check is not vacuous


def test_grasp_masks_prune_the_highest_scores():
    params, batches = two_layer_params(), make_batches()
    masks = grasp.grasp_masks(two_layer_loss, params, batches, 0.5)
    scores = kernels(grasp.grasp_scores(two_layer_loss, params, batches))
    kept = kernels(masks)
    assert (~kept).sum() == round(0.5 * scores.size)
    # Highest S(-theta) = -theta * Hg removed, lowest kept (GraSP, Algorithm 1).
    assert scores[~kept].min() >= scores[kept].max()


# --- random ---------------------------------------------------------------------------------------


def conv_params() -> dict:
    return {
        "conv": {"kernel": jnp.ones((3, 3, 3, 16)), "bias": jnp.ones(16)},
        "fc1": {"kernel": jnp.ones((256, 64)), "bias": jnp.ones(64)},
        "fc2": {"kernel": jnp.ones((64, 10)), "bias": jnp.ones(10)},
    }


def counts(masks: dict) -> dict:
    return {k: int(np.sum(v["kernel"])) for k, v in masks.items()}


def core_counts(params: dict, sparsity: float, distribution: str) -> dict:
    """Kept weights per layer of the core's magnitude masks with the same distribution."""
    scores = jax.tree.map(jnp.abs, params)
    return counts(progprune.prune_to_sparsity(scores, sparsity, distribution=distribution))


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_random_uniform_masks_keep_the_cores_count_in_every_layer(sparsity):
    # Random masks are the control for magnitude masks: the same count in every layer, only
    # which weights survive differs. Each count is round-half-even of (1 - s) * n.
    params = conv_params()
    masks = random_masks.random_masks(jax.random.key(0), params, sparsity, distribution="uniform")
    kept = counts(masks)
    assert kept == core_counts(params, sparsity, "uniform")
    for k, v in params.items():
        n = v["kernel"].size
        assert kept[k] in (math.floor((1 - sparsity) * n), math.ceil((1 - sparsity) * n))
    assert all(bool(jnp.all(v["bias"])) for v in masks.values())


def test_random_erk_masks_follow_erk_densities_per_layer():
    params, sparsity = conv_params(), 0.9
    densities = progprune.erk_densities(params, sparsity)  # {path: density}, prunable leaves
    assert set(densities) == {"conv/kernel", "fc1/kernel", "fc2/kernel"}
    assert len(set(densities.values())) == 3  # ERK differs from uniform here
    masks = random_masks.random_masks(jax.random.key(0), params, sparsity, distribution="erk")
    for name, d in densities.items():
        layer = name.split("/")[0]
        n = params[layer]["kernel"].size
        assert int(masks[layer]["kernel"].sum()) in (math.floor(d * n), math.ceil(d * n))
    assert counts(masks) == core_counts(params, sparsity, "erk")


def test_random_masks_depend_on_the_key_and_only_on_it():
    params = conv_params()
    a = random_masks.random_masks(jax.random.key(0), params, 0.8, distribution="uniform")
    b = random_masks.random_masks(jax.random.key(0), params, 0.8, distribution="uniform")
    c = random_masks.random_masks(jax.random.key(1), params, 0.8, distribution="uniform")
    assert np.array_equal(kernels_all(a), kernels_all(b))
    assert not np.array_equal(kernels_all(a), kernels_all(c))


def kernels_all(masks: dict) -> np.ndarray:
    return np.concatenate([np.ravel(v["kernel"]) for v in masks.values()])


# --- IMP ------------------------------------------------------------------------------------------


def test_imp_round_sparsities_are_geometric_and_end_exactly_at_target():
    got = imp.imp_round_sparsities(0.9, 0.2)
    assert len(got) == 11  # 0.8**10 = 0.107 > 0.1 >= 0.8**11
    np.testing.assert_allclose(got[:-1], [1 - 0.8**r for r in range(1, 11)])
    assert got[-1] == 0.9
    assert (
        imp.imp_round_sparsities(0.36, 0.2)[-1] == 0.36
        and len(imp.imp_round_sparsities(0.36, 0.2)) == 2
    )
    assert imp.imp_round_sparsities(0.99, 1.0) == [0.99]


def test_imp_chain_passes_through_every_target_without_pruning_more_than_rate():
    targets = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99]
    assert imp.imp_chain_sparsities(targets) == targets
    chain = imp.imp_chain_sparsities(targets, rate=0.2)
    assert set(targets) <= set(chain) and chain == sorted(chain)
    remaining = [1.0] + [1 - s for s in chain]
    pruned_share = [1 - b / a for a, b in zip(remaining, remaining[1:], strict=False)]
    assert max(pruned_share) <= 0.2 + 1e-9


def test_imp_next_masks_prune_by_magnitude_among_survivors_only():
    w = jnp.array([[5.0, -4.0, 0.1], [3.0, -2.0, 1.0]])
    params = {"k": w, "b": jnp.ones(3)}
    first = imp.imp_next_masks(params, None, 0.5)
    assert np.array_equal(first["k"], [[True, True, False], [True, False, False]])
    # Revive nothing: a pruned weight stays pruned even if it is now the largest.
    trained = {"k": jnp.array([[0.2, 9.0, 7.0], [1.0, 8.0, 6.0]]), "b": jnp.ones(3)}
    second = imp.imp_next_masks(trained, first, 5 / 6)
    assert np.array_equal(second["k"], [[False, True, False], [False, False, False]])
    assert bool(jnp.all(second["b"]))


def test_masks_npz_round_trip(tmp_path):
    masks = random_masks.random_masks(jax.random.key(3), conv_params(), 0.7, distribution="uniform")
    path = os.path.join(tmp_path, "masks", "round_1.npz")
    imp.save_masks(path, masks)
    back = imp.load_masks(path, conv_params())
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), masks, back)


def imp_config(targets=(0.5, 0.8, 0.9), rate=1.0, rewind_step=0) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.pruning = ml_collections.ConfigDict(
        {
            "method": "imp",
            "sparsity": max(targets),
            "imp_rounds": 0,
            "imp_rate": rate,
            "rewind_step": rewind_step,
            "prunable": None,
            "imp_sparsities": tuple(targets),
        }
    )
    return config


class FakeTrainer:
    """Stands in for the trainer: "training" adds 1 to every surviving weight and records calls."""

    def __init__(self):
        self.calls, self.params = [], {}
        self.init = two_layer_params()

    def train(self, config, workdir, *, initial_masks=None, initial_params=None):
        start = self.init if initial_params is None else initial_params
        masks = (
            initial_masks
            if initial_masks is not None
            else jax.tree.map(lambda w: jnp.ones(w.shape, bool), start)
        )
        final = jax.tree.map(lambda w, m: jnp.where(m, w + 1.0, 0.0), start, masks)
        self.params[workdir] = final
        self.calls.append((config.pruning.method, config.pruning.sparsity, initial_params))
        summary = {
            "eval_accuracy": 0.5,
            "sparsity": 1.0 - float(kernels(masks).mean()),
            "epochs": 2.0,
            "wall_clock_s": 1.5,
        }
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
        return summary


@pytest.mark.parametrize("rewind_step", [0, 3])
def test_run_imp_chains_rounds_rewinds_and_resumes(tmp_path, rewind_step):
    fake = FakeTrainer()
    rewound = jax.tree.map(lambda w: w * 0.5, fake.init)  # stands for the params at rewind_step
    kw = dict(load_final_params=lambda d: fake.params[d], load_rewind_params=lambda d: rewound)
    config = imp_config(rewind_step=rewind_step)
    summary = imp_driver.run_imp(config, str(tmp_path), fake.train, **kw)
    assert [r["target_sparsity"] for r in summary["rounds"]] == [0.0, 0.5, 0.8, 0.9]
    np.testing.assert_allclose(
        [r["sparsity"] for r in summary["rounds"]], [0.0, 0.5, 0.8, 0.9], atol=1 / 45
    )
    assert [r["cumulative_epochs"] for r in summary["rounds"]] == [2.0, 4.0, 6.0, 8.0]
    assert summary["epochs"] == 8.0
    assert fake.calls[0][:2] == ("dense", 0.0)
    # Later rounds train with the chain's masks as the trainer's fixed-mask method.
    assert [c[:2] for c in fake.calls[1:]] == [("fixed", s) for s in (0.5, 0.8, 0.9)]
    load = lambda k: imp.load_masks(os.path.join(tmp_path, "masks", f"round_{k}.npz"), fake.init)
    for k in (1, 2, 3):
        start = fake.calls[k][2]
        if rewind_step == 0:
            assert start is None  # the trainer re-creates the seed's initialisation
        else:  # restart from the rewind point, pruned weights zeroed
            expected = jax.tree.map(lambda w, m: jnp.where(m, w, 0.0), rewound, load(k))
            jax.tree.map(np.testing.assert_array_equal, start, expected)
    assert not np.any(kernels(load(3)) & ~kernels(load(1)))  # masks only shrink
    with open(os.path.join(tmp_path, "summary.json")) as f:
        assert len(json.load(f)["rounds"]) == 4
    n_calls = len(fake.calls)
    imp_driver.run_imp(config, str(tmp_path), fake.train, **kw)  # a second run trains nothing
    assert len(fake.calls) == n_calls


def test_imp_sparsities_from_config():
    p = ml_collections.ConfigDict({"sparsity": 0.9, "imp_rounds": 3, "imp_rate": 0.2})
    got = imp.imp_sparsities(p)
    assert len(got) == 3 and got[-1] == 0.9
    np.testing.assert_allclose(got[:2], [1 - 0.1 ** (1 / 3), 1 - 0.1 ** (2 / 3)])
    p.imp_rounds = 0
    assert imp.imp_sparsities(p) == imp.imp_round_sparsities(0.9, 0.2)


# --- with the trainer, on the tiny config -----------------------------------------------------


def tiny_config(method: str, sparsity: float = 0.7, steps: int = 6) -> ml_collections.ConfigDict:
    from configs import tiny

    config = tiny.get_config()
    config.pruning.method = method
    config.pruning.sparsity = sparsity
    config.num_train_steps = steps
    config.progress_bar = False
    return config


@pytest.mark.parametrize("method", ["snip", "grasp", "random"])
def test_at_init_masks_stay_fixed_through_training(tmp_path, method):
    from progprune.train import build, load_final_params, train_and_evaluate

    config = tiny_config(method)
    summary = train_and_evaluate(config, str(tmp_path))
    ds = build.load_data(config).train
    setup = progprune.methods.pruning_setup(config.pruning, 6, 6)
    tx = build.make_optimizer(config, lambda step: 0.1, setup)
    initial = progprune.get_masks(build.initial_state(config, tx, ds).opt_state)
    final = load_final_params(str(tmp_path))
    # Surviving kernel weights are nonzero after training; pruned ones exactly zero.
    for m, w in zip(jax.tree.leaves(initial), jax.tree.leaves(final), strict=True):
        if np.ndim(w) >= 2:
            np.testing.assert_array_equal(np.asarray(w) != 0, m)
    n = sum(np.size(w) for w in jax.tree.leaves(final) if np.ndim(w) >= 2)
    assert summary["sparsity"] == round(0.7 * n) / n


def test_imp_chain_on_the_tiny_config_reaches_each_target_exactly(tmp_path):
    config = tiny_config("imp", sparsity=0.8, steps=4)
    config.pruning.imp_rounds = 2
    config.pruning.rewind_step = 2
    summary = progprune.drivers.run(config, str(tmp_path))
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    params = progprune.train.load_final_params(os.path.join(tmp_path, "round_2"))
    n = sum(np.size(w) for w in jax.tree.leaves(params) if np.ndim(w) >= 2)
    for r in rounds[1:]:
        assert r["sparsity"] == round(r["target_sparsity"] * n) / n
    assert rounds[-1]["target_sparsity"] == 0.8 and summary["epochs"] == 3 * rounds[0]["epochs"]
    # Round 2 keeps round 1's pruned weights pruned.
    m1 = imp.load_masks(os.path.join(tmp_path, "masks", "round_1.npz"), params)
    m2 = imp.load_masks(os.path.join(tmp_path, "masks", "round_2.npz"), params)
    assert all(
        not np.any(np.asarray(b) & ~np.asarray(a))
        for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2), strict=True)
    )


@pytest.mark.parametrize("method", ["progressive", "gmp"])
@pytest.mark.parametrize(
    ("total_steps", "end_fraction", "expected_end"),
    [(468, 0.6, 234), (4680, 0.75, 3510), (1000, 0.5, 500), (1000, 0.55, 600)],
)
def test_ramp_ends_on_a_mask_update_step_within_the_run(
    method, total_steps, end_fraction, expected_end
):
    # Masks change only every `update_every` steps; a ramp ending between two of them, or
    # after the last one, would leave the run short of its target sparsity.
    from configs.default import get_pruning_config
    from progprune.methods import pruning_setup

    pruning = get_pruning_config()
    pruning.method, pruning.sparsity, pruning.end_fraction = method, 0.9, end_fraction
    pruning.update_every = 234 if total_steps in (468, 4680) else 100
    setup = pruning_setup(pruning, total_steps, steps_per_epoch=468)
    assert float(setup.schedule(expected_end)) == pytest.approx(0.9)
    assert float(setup.schedule(expected_end - 1)) < 0.9
    assert expected_end % setup.update_every == 0 and expected_end < total_steps
