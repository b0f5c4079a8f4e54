"""Specification of `progprune.masked`: a drop-in optax wrapper that keeps pruned weights at 0.

Semantics: state count c starts at 0; when c % update_every == 0 and begin <= c <= end, the masks
are recomputed from the params passed to `update` before the update is computed; gradients are
masked before the inner optimizer; the update of a pruned entry is -w.
"""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import progprune


def init_params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "bias": jnp.asarray(rng.normal(size=8) * 0.1 + 0.5, jnp.float32),
            "kernel": jnp.asarray(rng.normal(size=(4, 8)), dtype),
        },
        "Dense_1": {
            "bias": jnp.asarray(rng.normal(size=3) * 0.1 + 0.5, jnp.float32),
            "kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
        },
    }


N_PRUNABLE = 4 * 8 + 8 * 3


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["Dense_0"]["kernel"].astype(jnp.float32) + params["Dense_0"]["bias"])
    out = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    return jnp.mean((out - y) ** 2)


def batches(n, seed=1, batch=16):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, batch, 4)).astype(np.float32)
    ys = rng.normal(size=(n, batch, 3)).astype(np.float32)
    return list(zip(jnp.asarray(xs), jnp.asarray(ys), strict=True))


def make_step(tx, jit=True):
    def step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step) if jit else step


def run(tx, params, n_steps, seed=1, jit=True):
    step, state, history = make_step(tx, jit), tx.init(params), []
    for x, y in batches(n_steps, seed):
        params, state = step(params, state, x, y)
        history.append((params, state))
    return history


def n_pruned(masks):
    return sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(masks))


def assert_pruned_are_zero(params, masks):
    for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks), strict=True):
        w, m = np.asarray(w.astype(jnp.float32)), np.asarray(m)
        assert m.shape == w.shape
        np.testing.assert_array_equal(w[~m], 0.0)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_trees_close(a, b, rtol=1e-6, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def expected_pruned(schedule, step, update_every, begin, end):
    """round(schedule(c) * N) for the last update step c <= step (0 if none)."""
    updates = [c for c in range(begin, min(step, end) + 1) if c % update_every == 0]
    return round(float(schedule(updates[-1])) * N_PRUNABLE) if updates else 0


def random_masks(params, seed=3, keep=0.5):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda w: (
            jnp.asarray(rng.random(w.shape) < keep) if w.ndim >= 2 else jnp.ones(w.shape, bool)
        ),
        params,
    )


INNERS = {
    "sgd_momentum_wd": lambda: optax.chain(
        optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9)
    ),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
}


# ---------------------------------------------------------------- identity when dense


@pytest.mark.parametrize(
    "inner",
    [
        lambda: optax.sgd(0.1, momentum=0.9),
        lambda: optax.adam(1e-2),
        INNERS["sgd_momentum_wd"],
        INNERS["adamw"],
    ],
    ids=["sgd_momentum", "adam", "sgd_momentum_wd", "adamw"],
)
def test_all_true_masks_identical_to_inner(inner):
    txs = [
        progprune.masked(inner(), None),
        progprune.masked(inner(), progprune.linear_schedule(0.0, 0, 10), update_every=2),
    ]
    ref = inner()
    grad_fn = jax.jit(jax.grad(loss_fn))
    ref_update = jax.jit(ref.update)
    params = init_params()
    grads = grad_fn(params, *batches(1)[0])
    for tx in txs:
        # Op by op (no jit) the update is bitwise identical.
        updates, _ = tx.update(grads, tx.init(params), params)
        assert_trees_equal(updates, ref.update(grads, ref.init(params), params)[0])
        # Jitted, XLA may fuse the two programs differently (1-ulp differences seen with Adam).
        tx_update = jax.jit(tx.update)
        params = init_params()
        state, ref_state = tx.init(params), ref.init(params)
        for x, y in batches(6):
            grads = grad_fn(params, x, y)
            updates, state = tx_update(grads, state, params)
            ref_updates, ref_state = ref_update(grads, ref_state, params)
            assert_trees_close(updates, ref_updates, rtol=1e-5, atol=1e-9)
            assert_trees_close(state.inner_state, ref_state, rtol=1e-5, atol=1e-9)
            assert n_pruned(state.masks) == 0
            params = optax.apply_updates(params, updates)


def test_state_type_count_and_initial_masks():
    params = init_params()
    tx = progprune.masked(optax.sgd(0.1), progprune.linear_schedule(0.5, 0, 10))
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    state = tx.init(params)
    assert isinstance(state, progprune.MaskedPruningState)
    assert int(state.count) == 0
    assert jax.tree.structure(state.masks) == jax.tree.structure(params)
    assert all(m.dtype == jnp.bool_ and np.asarray(m).all() for m in jax.tree.leaves(state.masks))
    history = run(tx, params, 3)
    assert [int(s.count) for _, s in history] == [1, 2, 3]


def test_docstring_contrasts_with_optax_masked_and_state_has_own_name():
    assert "optax.masked" in progprune.masked.__doc__
    assert progprune.MaskedPruningState is not optax.MaskedState
    assert progprune.MaskedPruningState.__name__ != optax.MaskedState.__name__
    assert {"count", "masks", "inner_state"} <= set(progprune.MaskedPruningState._fields)


def test_extra_args_are_accepted():
    params = init_params()
    tx = progprune.masked(optax.sgd(0.1), None)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params, value=jnp.float32(1.0))
    np.testing.assert_allclose(np.asarray(updates["Dense_0"]["kernel"]), -0.1)


def test_extra_args_reach_an_inner_that_takes_none():
    # A plain GradientTransformation (no **extra_args) still works under masked with them.
    plain = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(lambda g: -g, updates), state),
    )
    params = init_params()
    tx = progprune.masked(plain, progprune.constant_schedule(0.5), update_every=1)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params, value=jnp.float32(1.0))
    assert float(jnp.max(updates["Dense_0"]["bias"])) == -1.0


def test_update_without_params_names_the_call_to_make():
    params = init_params()
    tx = progprune.masked(optax.sgd(0.1), progprune.constant_schedule(0.5))
    fix = r"tx.update\(grads, opt_state, params\)"
    with pytest.raises(ValueError, match="needs the params.*" + fix):
        tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params))


def test_a_state_of_another_optimizer_is_refused_by_name():
    state = optax.sgd(0.1).init(init_params())
    with pytest.raises(ValueError, match="holds no MaskedPruningState.*progprune.masked"):
        progprune.get_masks(state)


def test_fixed_masks_record_no_fault():
    # Without a schedule nothing is ever "outside [0, 1)": check_pruning stays quiet.
    params = init_params()
    masks = progprune.prune_to_sparsity(jax.tree.map(jnp.abs, params), 0.5)
    tx = progprune.masked(optax.sgd(0.1), None)
    state = progprune.set_masks(tx.init(params), masks)
    for _ in range(3):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        params = optax.apply_updates(params, updates)
    progprune.check_pruning(state, params)
    assert int(state.faults.bad_sparsity_step) == -1


# ------------------------------------------------------------------ the update itself


def test_one_step_update_formula():
    params, masks = init_params(), random_masks(init_params())
    inner = optax.sgd(0.1, momentum=0.9)
    tx = progprune.masked(inner, None)
    state = progprune.set_masks(tx.init(params), masks)
    grads = jax.grad(loss_fn)(params, *batches(1)[0])
    updates, new_state = tx.update(grads, state, params)
    masked_grads = jax.tree.map(lambda g, m: g * m, grads, masks)
    inner_updates, inner_state = inner.update(masked_grads, inner.init(params), params)
    expected = jax.tree.map(lambda m, u, w: jnp.where(m, u, -w), masks, inner_updates, params)
    assert_trees_equal(updates, expected)
    assert_trees_equal(new_state.inner_state, inner_state)
    assert_trees_equal(new_state.masks, masks)
    for w in jax.tree.leaves(optax.apply_updates(params, updates)):
        assert w.dtype == jnp.float32
    assert_pruned_are_zero(optax.apply_updates(params, updates), masks)


@pytest.mark.parametrize("inner", list(INNERS), ids=list(INNERS))
def test_pruned_weights_exactly_zero_over_100_steps(inner):
    schedule = progprune.linear_schedule(0.8, begin_step=0, end_step=60)
    tx = progprune.masked(INNERS[inner](), schedule, update_every=10)
    prev = None
    for t, (params, state) in enumerate(run(tx, init_params(), 100)):
        assert_pruned_are_zero(params, state.masks)
        assert n_pruned(state.masks) == expected_pruned(schedule, t, 10, 0, 60)
        if prev is not None:  # masks only shrink
            for o, m in zip(jax.tree.leaves(prev), jax.tree.leaves(state.masks), strict=True):
                assert not np.any(np.asarray(m) & ~np.asarray(o))
        prev = state.masks
        for layer in ("Dense_0", "Dense_1"):  # biases stay dense
            assert np.asarray(state.masks[layer]["bias"]).all()
            assert np.all(np.asarray(params[layer]["bias"]) != 0.0)
    assert n_pruned(prev) == round(0.8 * N_PRUNABLE)


def test_bfloat16_leaf_is_zeroed_exactly():
    params = init_params(dtype=jnp.bfloat16)
    tx = progprune.masked(optax.sgd(0.05, momentum=0.9), progprune.constant_schedule(0.5))
    for params_t, state in run(tx, params, 5):
        assert params_t["Dense_0"]["kernel"].dtype == jnp.bfloat16
        assert_pruned_are_zero(params_t, state.masks)
        assert n_pruned(state.masks) == N_PRUNABLE // 2


@pytest.mark.parametrize(
    ("inner", "moments"),
    [("sgd_momentum_wd", ("trace",)), ("adamw", ("mu", "nu"))],
)
def test_inner_moments_of_pruned_entries_stay_zero(inner, moments):
    masks = random_masks(init_params())
    params = jax.tree.map(lambda w, m: w * m, init_params(), masks)  # as after a prune
    tx = progprune.masked(INNERS[inner](), None)
    step, state = make_step(tx), progprune.set_masks(tx.init(params), masks)
    for x, y in batches(100):
        params, state = step(params, state, x, y)
        assert_pruned_are_zero(params, masks)
    for name in moments:
        assert_pruned_are_zero(optax.tree_utils.tree_get(state.inner_state, name), masks)
        active = np.asarray(optax.tree_utils.tree_get(state.inner_state, name)["Dense_0"]["kernel"])
        assert np.any(active[np.asarray(masks["Dense_0"]["kernel"])] != 0.0)


def test_masks_recomputed_only_on_update_steps_from_pre_update_params():
    schedule = progprune.linear_schedule(0.6, begin_step=3, end_step=9)
    tx = progprune.masked(optax.sgd(0.1, momentum=0.5), schedule, update_every=3)
    updater = jax.jit(progprune.mask_updater(schedule))
    step, params = make_step(tx), init_params()
    state = tx.init(params)
    for c, (x, y) in enumerate(batches(15)):
        before, old_masks = params, state.masks
        params, state = step(params, state, x, y)
        if c % 3 == 0 and 3 <= c <= 9:
            assert_trees_equal(state.masks, updater(before, c, masks=old_masks))
        else:
            assert_trees_equal(state.masks, old_masks)
        assert n_pruned(state.masks) == expected_pruned(schedule, c, 3, 3, 9)
        assert int(state.count) == c + 1
    assert n_pruned(state.masks) == round(float(schedule(9)) * N_PRUNABLE)


@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_pruned_entries_stay_pruned_at_the_next_update_even_when_large(distribution):
    # Masks set from outside prune the *largest* weights, which are not zeroed until the next
    # update; that update also recomputes the masks (schedule 0.25 -> 0.5): the pruned entries
    # must stay pruned although they now have the largest magnitudes, and only the smallest
    # active ones join them.
    schedule = lambda c: jnp.where(c == 0, 0.25, 0.5)
    tx = progprune.masked(optax.sgd(0.1), schedule, distribution=distribution)
    params = init_params()
    state = tx.init(params)
    big = jax.tree.map(lambda w: jnp.abs(w) >= jnp.quantile(jnp.abs(w), 0.75), params)
    state = state._replace(count=jnp.int32(1), sparsity=jnp.float32(0.25))  # masks of step 0
    state = progprune.set_masks(
        state,
        jax.tree.map(lambda b, w: ~b if w.ndim >= 2 else jnp.ones(w.shape, bool), big, params),
    )
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    for b, m, w in zip(*map(jax.tree.leaves, (big, state.masks, params)), strict=True):
        b, m, w = np.asarray(b), np.asarray(m), np.abs(np.asarray(w))
        if w.ndim < 2:
            continue
        assert not np.any(m & b)  # none revived
        newly = ~m & ~b
        assert newly.sum() > 0 and w[newly].max() <= w[m].min()
    assert n_pruned(state.masks) == (
        round(0.5 * N_PRUNABLE) if distribution == "global" else round(0.5 * 32) + round(0.5 * 24)
    )
    assert_pruned_are_zero(optax.apply_updates(params, updates), state.masks)


def test_masks_set_at_init_are_kept_by_the_scheduled_updates_that_follow():
    # A ticket chosen at init (here: random, 30% of each kernel) and then progressive pruning to
    # 60%: set_masks does not zero the weights, so at the first update the pruned entries still
    # have their (often large) values; they must stay pruned through every later update.
    schedule = progprune.linear_schedule(0.6, begin_step=0, end_step=6, initial_sparsity=0.3)
    tx = progprune.masked(optax.sgd(0.1, momentum=0.5), schedule, update_every=2)
    params = init_params(3)
    rng = np.random.default_rng(0)
    ticket = jax.tree.map(
        lambda w: jnp.asarray(
            rng.random(w.shape) >= 0.3 if w.ndim >= 2 else np.ones(w.shape, bool)
        ),
        params,
    )
    state = progprune.set_masks(tx.init(params), ticket)
    step, masks = make_step(tx), ticket
    for x, y in batches(8):
        params, state = step(params, state, x, y)
        new = progprune.get_masks(state)
        for old, m in zip(jax.tree.leaves(masks), jax.tree.leaves(new), strict=True):
            assert not np.any(np.asarray(m) & ~np.asarray(old))  # nothing revived
        masks = new
    for t, m in zip(jax.tree.leaves(ticket), jax.tree.leaves(masks), strict=True):
        assert not np.any(np.asarray(m) & ~np.asarray(t))  # the ticket's pruned stay pruned
    assert n_pruned(masks) == round(0.6 * N_PRUNABLE)
    assert_pruned_are_zero(params, masks)


def test_fixed_masks_updated_outside_the_step_equal_the_scheduled_wrapper():
    # The pattern the README offers for the cheapest steps: masked(inner, None), with the masks
    # recomputed by a separately jitted mask_updater and set_masks on the update steps.
    schedule = progprune.linear_schedule(0.6, begin_step=3, end_step=9)
    scheduled = progprune.masked(optax.sgd(0.1, momentum=0.5), schedule, update_every=3)
    fixed = progprune.masked(optax.sgd(0.1, momentum=0.5), None)
    updater = jax.jit(progprune.mask_updater(schedule))
    step_a, step_b = make_step(scheduled), make_step(fixed)
    params_a = params_b = init_params()
    state_a, state_b = scheduled.init(params_a), fixed.init(params_b)
    for c, (x, y) in enumerate(batches(15)):
        if c % 3 == 0 and 3 <= c <= 9:
            masks = updater(params_b, c, masks=progprune.get_masks(state_b))
            state_b = progprune.set_masks(state_b, masks)
        params_a, state_a = step_a(params_a, state_a, x, y)
        params_b, state_b = step_b(params_b, state_b, x, y)
        assert_trees_equal(state_a.masks, state_b.masks)
        assert_trees_equal(params_a, params_b)


def test_masks_follow_schedule_at_last_grid_step_with_off_grid_begin_and_end():
    # After the call at count c, exactly round(s(g) * N) weights are pruned, g the last multiple
    # of update_every <= c: the initial sparsity applies from count 0, and the final sparsity is
    # reached at the first grid step after end_step (10 is off the grid of 3).
    schedule = progprune.linear_schedule(0.6, begin_step=4, end_step=10, initial_sparsity=0.2)
    tx = progprune.masked(optax.sgd(0.1, momentum=0.5), schedule, update_every=3)
    counts = [n_pruned(s.masks) for _, s in run(tx, init_params(), 15)]
    k = lambda c: round(float(schedule(c)) * N_PRUNABLE)
    assert counts == [k(c - c % 3) for c in range(15)]
    assert counts[-1] == round(0.6 * N_PRUNABLE)


def test_uniform_distribution_prunes_each_layer_exactly():
    tx = progprune.masked(optax.sgd(0.1), progprune.constant_schedule(0.75), distribution="uniform")
    _, state = run(tx, init_params(), 1)[-1]
    assert n_pruned(state.masks["Dense_0"]["kernel"]) == 24
    assert n_pruned(state.masks["Dense_1"]["kernel"]) == 18


def test_prunable_regex_limits_pruning():
    tx = progprune.masked(
        optax.sgd(0.1), progprune.constant_schedule(0.5), prunable="Dense_1/kernel"
    )
    params, state = run(tx, init_params(), 2)[-1]
    assert n_pruned(state.masks["Dense_0"]) == 0
    assert n_pruned(state.masks["Dense_1"]["kernel"]) == 12
    assert_pruned_are_zero(params, state.masks)


# ------------------------------------------------------------------- get/set masks


def test_get_set_masks_round_trip_and_effect():
    params, masks = init_params(), random_masks(init_params())
    tx = progprune.masked(optax.adam(1e-2), None)
    state = tx.init(params)
    new_state = progprune.set_masks(state, masks)
    assert isinstance(new_state, progprune.MaskedPruningState)
    assert_trees_equal(progprune.get_masks(new_state), masks)
    assert_trees_equal(progprune.get_masks(state), jax.tree.map(lambda m: m | True, masks))
    params, _ = make_step(tx)(params, new_state, *batches(1)[0])
    assert_pruned_are_zero(params, masks)


def test_get_set_masks_inside_chain():
    params, masks = init_params(), random_masks(init_params())
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), progprune.masked(optax.sgd(0.1, momentum=0.9), None)
    )
    state = progprune.set_masks(tx.init(params), masks)
    assert isinstance(state, tuple) and len(state) == 2
    assert_trees_equal(progprune.get_masks(state), masks)
    step = make_step(tx)
    for x, y in batches(5):
        params, state = step(params, state, x, y)
        assert_pruned_are_zero(params, masks)
    assert_trees_equal(progprune.get_masks(state), masks)


# ------------------------------------------------------------------------ recompiles


def test_no_recompiles_across_steps_and_mask_updates():
    traces = []
    tx = progprune.masked(
        optax.sgd(0.1, momentum=0.9), progprune.linear_schedule(0.7, 0, 12), update_every=4
    )

    def step(params, state, x, y):
        traces.append(1)  # Python side effect: runs once per trace.
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step)
    params = init_params()
    state = tx.init(params)
    for x, y in batches(20):
        params, state = jitted(params, state, x, y)
    assert len(traces) == 1
    assert jitted._cache_size() == 1
    assert n_pruned(state.masks) == round(0.7 * N_PRUNABLE)


def test_mask_updater_does_not_recompile_per_step():
    updater = jax.jit(progprune.mask_updater(progprune.linear_schedule(0.7, 0, 12)))
    params, masks = init_params(), None
    masks = updater(params, 0)
    for step in range(1, 15):
        masks = updater(params, step, masks=masks)
    assert updater._cache_size() == 2  # one trace without old masks, one with
    assert n_pruned(masks) == round(0.7 * N_PRUNABLE)


# ----------------------------------------------------------------- drop-in settings


def test_flax_train_state_apply_gradients():
    schedule = progprune.linear_schedule(0.5, 0, 10)
    tx = progprune.masked(optax.sgd(0.05, momentum=0.9), schedule, update_every=5)
    ts = train_state.TrainState.create(apply_fn=loss_fn, params=init_params(), tx=tx)

    @jax.jit
    def train_step(ts, x, y):
        return ts.apply_gradients(grads=jax.grad(ts.apply_fn)(ts.params, x, y))

    ref = run(tx, init_params(), 20)
    for (x, y), (p_ref, s_ref) in zip(batches(20), ref, strict=True):
        ts = train_step(ts, x, y)
        assert_trees_equal(ts.params, p_ref)
        assert_trees_equal(progprune.get_masks(ts.opt_state), s_ref.masks)
        assert_pruned_are_zero(ts.params, progprune.get_masks(ts.opt_state))
    assert n_pruned(progprune.get_masks(ts.opt_state)) == round(0.5 * N_PRUNABLE)


class TinyNNX(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def test_flax_nnx_optimizer():
    schedule = progprune.linear_schedule(0.5, 0, 10)
    tx = progprune.masked(optax.sgd(0.05, momentum=0.9), schedule, update_every=5)
    model = TinyNNX(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def nnx_loss(model, x, y):
        return jnp.mean((model(x) - y) ** 2)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        optimizer.update(model, nnx.grad(nnx_loss)(model, x, y))

    # Reference: the same tx in a plain optax loop over the pure parameter state.
    graphdef, ref_params = nnx.split(TinyNNX(nnx.Rngs(0)), nnx.Param)
    ref_params = nnx.as_pure(ref_params)
    ref_state = tx.init(ref_params)

    @jax.jit
    def ref_step(params, state, x, y):
        f = lambda p: nnx_loss(nnx.merge(graphdef, p), x, y)
        updates, state = tx.update(jax.grad(f)(params), state, params)
        return optax.apply_updates(params, updates), state

    for t, (x, y) in enumerate(batches(20)):
        train_step(model, optimizer, x, y)
        ref_params, ref_state = ref_step(ref_params, ref_state, x, y)
        got = nnx.as_pure(nnx.state(model, nnx.Param))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref_params), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        zeros = sum(int((np.asarray(k) == 0.0).sum()) for k in (model.l1.kernel, model.l2.kernel))
        assert zeros == expected_pruned(schedule, t, 5, 0, 10)
    assert int(optimizer.step[...]) == 20


def test_inject_hyperparams_inner():
    schedule = progprune.linear_schedule(0.6, 0, 8)
    injected = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.9)
    got = run(progprune.masked(injected, schedule, update_every=2), init_params(), 12)
    ref = run(
        progprune.masked(optax.sgd(0.05, momentum=0.9), schedule, update_every=2), init_params(), 12
    )
    for (p, s), (p_ref, s_ref) in zip(got, ref, strict=True):
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_ref), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        assert_trees_equal(s.masks, s_ref.masks)
    # Hyperparameters stay reachable through the wrapper's state: lr 0 freezes active weights.
    params, state = got[-1]
    state = optax.tree_utils.tree_set(state, learning_rate=jnp.float32(0.0))
    assert float(optax.tree_utils.tree_get(state, "learning_rate")) == 0.0
    new_params, _ = make_step(progprune.masked(injected, schedule, update_every=2))(
        params, state, *batches(1)[0]
    )
    assert_trees_equal(new_params, params)


def test_multisteps_outside():
    k, schedule = 2, progprune.linear_schedule(0.6, 0, 6)
    inner = progprune.masked(optax.sgd(0.1, momentum=0.9), schedule, update_every=2)
    tx = optax.MultiSteps(inner, every_k_schedule=k)
    params = ref_params = init_params()
    state, ref_state = tx.init(params), inner.init(params)
    step, ref_step, grad_fn = make_step(tx), jax.jit(inner.update), jax.jit(jax.grad(loss_fn))
    data = batches(2 * 10)
    for i in range(10):
        pair = data[2 * i : 2 * i + 2]
        for x, y in pair:
            params, state = step(params, state, x, y)
            assert_pruned_are_zero(params, progprune.get_masks(state))
        grads = [grad_fn(ref_params, x, y) for x, y in pair]
        mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
        updates, ref_state = ref_step(mean, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        assert_trees_equal(progprune.get_masks(state), ref_state.masks)
        assert int(state.inner_opt_state.count) == i + 1
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert n_pruned(progprune.get_masks(state)) == round(0.6 * N_PRUNABLE)
