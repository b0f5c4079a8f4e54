"""Specification of what the core does with bad input it cannot refuse up front.

A schedule is checked when the optimizer or updater is built (at step 0); a value outside [0, 1)
at a later, traced step never prunes a wrong amount: ``masked`` leaves the masks as they are and
records the fault for ``check_pruning``; ``mask_updater`` and ``prune_to_sparsity`` raise when
the result is computed. Pruned weights that are not 0.0 one update after masks change (NaN or
inf weights, a transformation chained after ``masked``) are recorded the same way. Masks that
revive pruned entries restart their optimizer state, or are refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import progprune
from progprune.methods.random_masks import keep_counts, random_masks

N = 192  # prunable weights below


def params0(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a": {"kernel": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)},
        "b": {"kernel": jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)},
        "b_bias": jnp.zeros(4),
    }


def n_pruned(masks):
    return int(sum(np.size(m) - np.sum(m) for m in jax.tree.leaves(masks)))


def run(tx, steps, params=None):
    """``steps`` jitted updates with constant gradients; returns (params, state, pruned counts)."""
    params = params0() if params is None else params
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    counts = []
    for _ in range(steps):
        params, state = step(params, state)
        counts.append(n_pruned(progprune.get_masks(state)))
    return params, state, counts


# -- checked when built ------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, match",
    [
        (0.5, "constant_schedule"),
        ("linear", "must be a function step -> sparsity, got 'linear'"),
        (progprune.linear_schedule, "factory must be called"),
        (lambda step: 1.2 + 0 * step, r"schedule\(0\) returned 1.2"),
        (lambda step: jnp.float32(-0.5), r"returned -0.5"),
        (lambda step: jnp.nan, r"returned nan"),
        (lambda step: jnp.zeros(3), "shape"),
    ],
)
def test_bad_schedules_are_refused_when_built(schedule, match):
    with pytest.raises(ValueError, match=match):
        progprune.masked(optax.sgd(0.1), schedule)
    with pytest.raises(ValueError, match=match):
        progprune.mask_updater(schedule)


def test_an_optimizer_factory_is_refused_with_the_call_to_make():
    with pytest.raises(ValueError, match=r"masked\(optax.sgd\(0.1\), schedule\)"):
        progprune.masked(optax.sgd, progprune.constant_schedule(0.5))


def test_an_object_that_is_only_half_a_transformation_is_refused():
    class InitOnly:
        def init(self, params):
            return ()

    with pytest.raises(ValueError, match="optax transformation"):
        progprune.masked(InitOnly(), None)


def test_a_ramp_that_passes_one_after_the_run_is_accepted():
    # Only step 0 is tried: a later step may lie beyond the run the schedule was written for.
    progprune.masked(optax.sgd(0.1), lambda step: 0.001 * step)


# -- a schedule that goes bad at a traced step -------------------------------------------


def schedule_bad_at(bad_step, value, good=0.5):
    """``good`` at every step except ``bad_step``."""
    return lambda step: jnp.where(step == bad_step, jnp.float32(value), jnp.float32(good))


@pytest.mark.parametrize("value", [-0.5, 1.2, 1.0, np.inf, np.nan])
def test_masked_never_prunes_a_bad_value_and_records_it(value):
    # Valid at steps 0 and 2 (0.5, 0.8), bad at step 1: step 1 changes nothing, step 2 prunes
    # as scheduled (one bad value does not stop pruning for the rest of the run).
    def schedule(step):
        good = jnp.where(step < 2, 0.5, 0.8)
        return jnp.where(step == 1, jnp.float32(value), good.astype(jnp.float32))

    tx = progprune.masked(optax.sgd(0.1), schedule)
    _, state, counts = run(tx, 3)
    assert counts == [96, 96, round(0.8 * N)]
    faults = state.faults
    assert int(faults.bad_sparsity_step) == 1
    np.testing.assert_equal(float(faults.bad_sparsity), np.float32(value))
    with pytest.raises(ValueError, match=r"schedule\(1\) returned"):
        progprune.check_pruning(state)


def test_a_fixed_mask_run_records_no_fault():
    tx = progprune.masked(optax.sgd(0.1, momentum=0.9), None)
    params, state, counts = run(tx, 3)
    assert counts == [0, 0, 0]
    progprune.check_pruning(state, params)
    assert int(state.faults.bad_sparsity_step) == -1


def test_a_healthy_run_records_no_fault():
    tx = progprune.masked(optax.sgd(0.1), progprune.linear_schedule(0.9, 0, 10), update_every=2)
    params, state, counts = run(tx, 12)
    assert counts[-1] == round(0.9 * N)
    progprune.check_pruning(state, params)
    assert int(state.faults.bad_sparsity_step) == -1


def test_mask_updater_raises_for_a_bad_value_concrete_and_traced():
    update = progprune.mask_updater(schedule_bad_at(3, 1.2))
    params = params0()
    assert n_pruned(update(params, 2)) == 96
    with pytest.raises(ValueError, match=r"schedule\(3\) returned 1.2"):
        update(params, 3)
    with pytest.raises(Exception, match=r"schedule\(3\) returned 1.2"):
        jax.block_until_ready(jax.jit(update)(params, 3))
    assert n_pruned(jax.jit(update)(params, 2)) == 96


@pytest.mark.parametrize("value", [-0.5, 1.2, np.nan])
def test_prune_to_sparsity_raises_for_a_bad_traced_value(value):
    scores = jax.tree.map(jnp.abs, params0())
    fn = jax.jit(lambda s: progprune.prune_to_sparsity(scores, s))
    assert n_pruned(fn(jnp.float32(0.25))) == 48
    with pytest.raises(Exception, match="outside"):
        jax.block_until_ready(fn(jnp.float32(value)))


def test_prune_to_sparsity_refuses_a_schedule_in_place_of_a_value():
    with pytest.raises(ValueError, match="schedule"):
        progprune.prune_to_sparsity(params0(), progprune.constant_schedule(0.5))


# -- pruned weights that are not 0.0 -----------------------------------------------------


def test_a_nan_weight_that_gets_pruned_stays_nan_and_is_reported():
    params = params0()
    # The smallest magnitude is pruned first; a NaN compares as large, so put it where the
    # masks of a 0.5 sparsity prune it anyway: set by hand with set_masks.
    params["a"]["kernel"] = params["a"]["kernel"].at[0, 0].set(jnp.nan)
    tx = progprune.masked(optax.sgd(0.0), None)
    state = tx.init(params)
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    masks["a"]["kernel"] = masks["a"]["kernel"].at[0, 0].set(False)
    state = progprune.set_masks(state, masks)
    grads = jax.tree.map(jnp.zeros_like, params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert np.isnan(float(params["a"]["kernel"][0, 0]))  # NaN + (-NaN) is NaN: documented
    with pytest.raises(ValueError, match="after update 2, 1 pruned weights are NaN or inf"):
        progprune.check_pruning(state, params)
    progprune.check_pruning(state)  # without params only the recorded faults are read


def test_a_transformation_after_masked_is_reported():
    tx = optax.chain(
        progprune.masked(optax.sgd(0.1), progprune.constant_schedule(0.5), update_every=10),
        optax.scale(0.5),
    )
    params, state, _ = run(tx, 2)
    # Half of -w was applied: pruned weights sit at half their value.
    masks = progprune.get_masks(state)
    assert np.any(np.asarray(params["a"]["kernel"])[~np.asarray(masks["a"]["kernel"])] != 0)
    with pytest.raises(ValueError, match="last transformation"):
        progprune.check_pruning(state, params)


def test_params_changed_outside_the_optimizer_are_reported():
    tx = progprune.masked(optax.sgd(0.0), progprune.constant_schedule(0.5), update_every=100)
    params, state, _ = run(tx, 3)
    progprune.check_pruning(state, params)
    masks = progprune.get_masks(state)
    moved = jax.tree.map(lambda p: p + 1.0, params)
    with pytest.raises(ValueError, match=r"after update 3, 96 pruned weights are not 0.0"):
        progprune.check_pruning(state, moved)
    assert n_pruned(masks) == 96


def test_masks_set_by_hand_are_checked_only_after_the_next_update():
    # set_masks prunes weights that are not 0.0 yet: the next update zeroes them.
    tx = progprune.masked(optax.sgd(0.0), None)
    params = params0()
    half = progprune.prune_to_sparsity(jax.tree.map(jnp.abs, params), 0.5)
    state = progprune.set_masks(tx.init(params), half)
    progprune.check_pruning(state, params)
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    progprune.check_pruning(state, optax.apply_updates(params, updates))
    with pytest.raises(ValueError, match="not 0.0"):
        progprune.check_pruning(state, params)  # the params before that update


# -- set_masks reviving pruned entries ---------------------------------------------------


def test_reviving_without_tx_is_refused_after_updates():
    tx = progprune.masked(optax.sgd(0.1, momentum=0.9), progprune.constant_schedule(0.5))
    _, state, _ = run(tx, 1)  # one update is enough to make the inner state stale
    all_true = jax.tree.map(lambda m: jnp.ones_like(m), progprune.get_masks(state))
    with pytest.raises(ValueError, match="revive 96 pruned entries"):
        progprune.set_masks(state, all_true)
    # Masks that only prune more need no tx.
    fewer = jax.tree.map(lambda m: m & False, progprune.get_masks(state))
    progprune.set_masks(state, fewer)


def test_reviving_with_tx_restarts_the_momentum_of_revived_entries_only():
    tx = progprune.masked(optax.sgd(0.1, momentum=0.9), None)
    params = params0()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)

    def steps(params, state, n):
        for _ in range(n):
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        return params, state

    # Every weight gathers momentum, then half are pruned (their momentum decays, not to 0).
    params, state = steps(params, tx.init(params), 2)
    half = progprune.prune_to_sparsity(jax.tree.map(jnp.abs, params0()), 0.5)
    params, state = steps(params, progprune.set_masks(state, half), 2)
    trace_before = state.inner_state[0].trace
    quarter = progprune.prune_to_sparsity(jax.tree.map(jnp.abs, params0()), 0.25)
    revived = jax.tree.map(lambda new, old: new & ~old, quarter, half)
    state = progprune.set_masks(state, quarter, tx=tx)
    trace_after = state.inner_state[0].trace
    for before, after, r in zip(
        jax.tree.leaves(trace_before),
        jax.tree.leaves(trace_after),
        jax.tree.leaves(revived),
        strict=True,
    ):
        r = np.asarray(r)
        assert np.all(np.asarray(before)[r] != 0.0)  # there was stale momentum to restart
        np.testing.assert_array_equal(np.asarray(after)[r], 0.0)
        np.testing.assert_array_equal(np.asarray(after)[~r], np.asarray(before)[~r])
    assert sum(int(np.sum(r)) for r in jax.tree.leaves(revived)) > 0


def test_set_masks_under_jit_needs_tx():
    tx = progprune.masked(optax.sgd(0.1, momentum=0.9), progprune.constant_schedule(0.5))
    _, state, _ = run(tx, 1)
    all_true = jax.tree.map(lambda m: jnp.ones_like(m), progprune.get_masks(state))
    with pytest.raises(ValueError, match=r"cannot tell under jit.*tx=tx"):
        jax.jit(progprune.set_masks)(state, all_true)
    with pytest.raises(ValueError, match=r"cannot tell under jit.*tx=tx"):  # only masks traced
        jax.jit(lambda m: progprune.set_masks(state, m))(all_true)
    jax.jit(lambda s, m: progprune.set_masks(s, m, tx=tx))(state, all_true)  # with tx: fine


def test_check_pruning_names_params_that_do_not_match_the_masks():
    tx = progprune.masked(optax.sgd(0.1), progprune.constant_schedule(0.5))
    params, state, _ = run(tx, 2)
    fewer = {"a": params["a"], "b": params["b"]}
    with pytest.raises(ValueError, match="params have 2 leaves but the masks 3"):
        progprune.check_pruning(state, fewer)
    reshaped = dict(params, b_bias=jnp.zeros(5))
    with pytest.raises(ValueError, match=r"a param of shape \(5,\) has a mask of shape \(4,\)"):
        progprune.check_pruning(state, reshaped)


def test_reviving_with_another_optimizer_as_tx_is_refused():
    tx = progprune.masked(optax.sgd(0.1, momentum=0.9), progprune.constant_schedule(0.5))
    _, state, _ = run(tx, 2)
    all_true = jax.tree.map(lambda m: jnp.ones_like(m), progprune.get_masks(state))
    other = progprune.masked(optax.adam(1e-3), None)  # its state has another structure
    with pytest.raises(ValueError, match="tx must be the transformation that built opt_state"):
        progprune.set_masks(state, all_true, tx=other)


# -- random masks count like the core ----------------------------------------------------


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.987])
def test_random_masks_prune_exactly_what_prune_to_sparsity_prunes(distribution, sparsity):
    params = params0()
    masks = random_masks(jax.random.key(0), params, sparsity, distribution=distribution)
    core = progprune.prune_to_sparsity(
        jax.tree.map(jnp.abs, params), sparsity, distribution=distribution
    )
    assert n_pruned(masks) == n_pruned(core)
    shapes = [(8, 16), (16, 4)]
    assert sum(keep_counts(shapes, sparsity, distribution)) == N - n_pruned(core)


def test_random_masks_refuse_the_global_distribution():
    with pytest.raises(ValueError, match="per-layer distribution"):
        random_masks(jax.random.key(0), params0(), 0.5, distribution="global")


def test_a_state_with_two_masked_optimizers_is_ambiguous():
    params = params0()
    tx = optax.chain(progprune.masked(optax.sgd(0.1), None), progprune.masked(optax.sgd(0.1), None))
    with pytest.raises(ValueError, match="several MaskedPruningStates"):
        progprune.get_masks(tx.init(params))
