"""`progprune.masked` under jax.pmap and jax.shard_map on 8 forced host CPU devices.

With replicated params and grads pmean'ed over the data axis, every device must hold the same
masks and params as a single-device run on the whole batch (conftest.py forces 8 devices).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import progprune

N_DEV = 8
N_STEPS = 7  # mask updates at counts 0, 2, 4, 6
SCHEDULE = progprune.linear_schedule(0.6, begin_step=0, end_step=6)


def init_params():
    rng = np.random.default_rng(0)
    return {
        "Dense_0": {
            "bias": jnp.asarray(rng.normal(size=8) * 0.1, jnp.float32),
            "kernel": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
        },
        "Dense_1": {
            "bias": jnp.asarray(rng.normal(size=3) * 0.1, jnp.float32),
            "kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
        },
    }


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    return jnp.mean((h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"] - y) ** 2)


def batches(n, batch=4 * N_DEV):
    rng = np.random.default_rng(1)
    return [
        (
            jnp.asarray(rng.normal(size=(batch, 4)), jnp.float32),
            jnp.asarray(rng.normal(size=(batch, 3)), jnp.float32),
        )
        for _ in range(n)
    ]


def make_tx():
    return progprune.masked(optax.sgd(0.1, momentum=0.9), SCHEDULE, update_every=2)


def step_body(tx, params, state, x, y, axis_name=None, auto_psum=False):
    if auto_psum:
        # shard_map with check_vma=True psums the grads of replicated (invariant) params by
        # itself, so each device contributes its share of the mean loss instead of a pmean.
        grads = jax.grad(lambda p: loss_fn(p, x, y) / N_DEV)(params)
    else:
        grads = jax.grad(loss_fn)(params, x, y)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def single_device_run(n_steps):
    tx = make_tx()
    params = init_params()
    state = tx.init(params)
    step = jax.jit(lambda p, s, x, y: step_body(tx, p, s, x, y))
    history = []
    for x, y in batches(n_steps):
        params, state = step(params, state, x, y)
        history.append((params, state.masks))
    return history


def assert_close_and_same_masks(params, masks, ref_params, ref_masks):
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for m, r in zip(jax.tree.leaves(masks), jax.tree.leaves(ref_masks), strict=True):
        np.testing.assert_array_equal(np.asarray(m), np.asarray(r))
    for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks), strict=True):
        np.testing.assert_array_equal(np.asarray(w)[~np.asarray(m)], 0.0)


def test_eight_devices_are_forced():
    assert jax.device_count() == N_DEV


@pytest.fixture(scope="module")
def reference():
    return single_device_run(N_STEPS)


def test_pmap_matches_single_device(reference):
    tx = make_tx()
    replicate = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (N_DEV, *x.shape)), t)
    params = replicate(init_params())
    state = replicate(tx.init(init_params()))
    step = jax.pmap(lambda p, s, x, y: step_body(tx, p, s, x, y, "data"), axis_name="data")
    shard = lambda a: a.reshape(N_DEV, -1, *a.shape[1:])
    for (x, y), (ref_params, ref_masks) in zip(batches(N_STEPS), reference, strict=True):
        params, state = step(params, state, shard(x), shard(y))
        for d in range(N_DEV):
            take = lambda t, d=d: jax.tree.map(lambda a: a[d], t)
            assert_close_and_same_masks(take(params), take(state.masks), ref_params, ref_masks)
    assert sum(int((~np.asarray(m[0])).sum()) for m in jax.tree.leaves(state.masks)) == round(
        0.6 * 56
    )


@pytest.mark.parametrize("check_vma", [False, True])
def test_shard_map_matches_single_device(reference, check_vma):
    tx = make_tx()
    mesh = jax.make_mesh((N_DEV,), ("data",))
    step = jax.jit(
        jax.shard_map(
            lambda p, s, x, y: step_body(tx, p, s, x, y, "data", auto_psum=check_vma),
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data")),
            out_specs=(P(), P()),
            check_vma=check_vma,
        )
    )
    # make_mesh gives explicit axes: place the batch sharded and params/state replicated.
    put = lambda t, spec: jax.device_put(t, NamedSharding(mesh, spec))
    params = put(init_params(), P())
    state = put(tx.init(init_params()), P())
    for (x, y), (ref_params, ref_masks) in zip(batches(N_STEPS), reference, strict=True):
        params, state = step(params, state, put(x, P("data")), put(y, P("data")))
        assert_close_and_same_masks(params, state.masks, ref_params, ref_masks)
        # Every device's copy holds the same masks.
        for m in jax.tree.leaves(state.masks):
            shards = [np.asarray(s.data) for s in m.addressable_shards]
            assert len(shards) == N_DEV
            for s in shards[1:]:
                np.testing.assert_array_equal(s, shards[0])
    assert sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(state.masks)) == round(0.6 * 56)
