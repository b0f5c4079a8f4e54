"""Specification of the device-resident pipeline: batch_indices, gather, preprocess."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from progprune import data


def test_steps_per_epoch_drops_remainder():
    assert data.steps_per_epoch(60000, 128) == 468
    assert data.steps_per_epoch(100, 10) == 10
    with pytest.raises(ValueError):
        data.steps_per_epoch(5, 10)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 1000, 4097, 60000])
def test_epoch_permutation_is_a_permutation(n):
    perm = np.asarray(data.epoch_permutation(0, 3, n))
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))


@pytest.mark.parametrize(("n", "batch"), [(100, 10), (103, 10), (60000, 128)])
def test_batch_indices_epochs_cover_distinct_examples(n, batch):
    indices = jax.jit(lambda seed, step: data.batch_indices(seed, step, n, batch))
    spe = data.steps_per_epoch(n, batch)
    orders = []
    for epoch in range(2):
        order = np.concatenate([indices(7, epoch * spe + s) for s in range(spe)])
        assert len(np.unique(order)) == spe * batch and order.min() >= 0 and order.max() < n
        reference = np.asarray(data.epoch_permutation(7, epoch, n))
        np.testing.assert_array_equal(order, reference[: spe * batch])
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    assert indices._cache_size() == 1  # a traced step: one compilation for all steps


def test_batch_indices_deterministic_and_seeded():
    a = data.batch_indices(0, 123, 1000, 32)
    np.testing.assert_array_equal(a, data.batch_indices(0, 123, 1000, 32))
    traced = jax.jit(lambda step: data.batch_indices(0, step, 1000, 32))(123)
    np.testing.assert_array_equal(a, traced)
    assert not np.array_equal(a, data.batch_indices(1, 123, 1000, 32))
    assert not np.array_equal(a, data.batch_indices(0, 124, 1000, 32))


def test_shuffle_is_uniform_over_first_position():
    # Over 2000 epochs each of 10 examples should come first ~200 times; a biased or
    # degenerate permutation (identity, fixed rotation) fails this by far.
    first = jax.vmap(lambda e: data.epoch_permutation(0, e, 10)[0])(jnp.arange(2000))
    counts = np.bincount(np.asarray(first), minlength=10)
    assert counts.min() > 140 and counts.max() < 260, counts


def test_gather_takes_rows():
    images = jnp.arange(5 * 2 * 2 * 1, dtype=jnp.uint8).reshape(5, 2, 2, 1)
    x, y = data.gather(images, jnp.arange(5, dtype=jnp.int32) * 10, jnp.array([4, 0, 4]))
    np.testing.assert_array_equal(x, np.asarray(images)[[4, 0, 4]])
    np.testing.assert_array_equal(y, [40, 0, 40])


def _batch(b=16, h=12, w=10, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, h, w, c), np.uint8)


def test_preprocess_without_augment_is_exact_normalisation():
    x = _batch()
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    out = data.preprocess(jnp.asarray(x), None, augment=False, mean=mean, std=std)
    expected = (x.astype(np.float32) - np.float32(mean)) / np.float32(std)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, expected)


def _candidates(image, pad):
    """Every crop of the zero-padded image, and each flipped."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + h, dx : dx + w]
            yield (dy, dx, 0), crop
            yield (dy, dx, 1), crop[:, ::-1]


def _augment_params(x, out, pad):
    """For each example, the (dy, dx, flip) that produced it (asserting one exists)."""
    params = []
    for image, result in zip(x, out, strict=True):
        found = [p for p, c in _candidates(image, pad) if np.array_equal(c, result)]
        assert found, "augmented image is not a crop (or flipped crop) of the padded input"
        params.append(found[0])
    return params


def test_augment_is_crop_of_padded_then_flip():
    x = jnp.asarray(_batch(b=32))
    identity = dict(augment=True, mean=(0.0,), std=(1.0,))
    out = data.preprocess(x, jax.random.key(0), **identity)
    params = _augment_params(np.asarray(x), np.asarray(out).astype(np.uint8), pad=4)
    assert len({p[:2] for p in params}) > 10  # offsets vary across the batch
    assert {p[2] for p in params} == {0, 1}  # both flipped and unflipped occur
    np.testing.assert_array_equal(out, data.preprocess(x, jax.random.key(0), **identity))
    assert not np.array_equal(out, data.preprocess(x, jax.random.key(1), **identity))


def test_augment_normalises_after_cropping():
    x, rng = jnp.asarray(_batch(b=4)), jax.random.key(5)
    raw = data.preprocess(x, rng, augment=True, mean=(0.0,), std=(1.0,))
    mean, std = np.float32([3.0, 4.0, 5.0]), np.float32([2.0, 2.0, 4.0])
    norm = data.preprocess(x, rng, augment=True, mean=mean, std=std)
    np.testing.assert_array_equal(norm, (np.asarray(raw) - mean) / std)
    with pytest.raises(ValueError, match="needs an rng"):
        data.preprocess(x, None, augment=True, mean=(0.0,), std=(1.0,))


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_augment_identical_on_1_and_8_devices(axis_type):
    assert jax.device_count() == 8, "conftest forces 8 host devices"
    x, rng = jnp.asarray(_batch(b=32)), jax.random.key(11)
    kw = dict(augment=True, mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    on_one = jax.device_put(x, jax.devices()[0])
    one = jax.jit(lambda x, r: data.preprocess(x, r, **kw))(on_one, rng)
    assert len(one.sharding.device_set) == 1

    mesh = jax.make_mesh((8,), ("batch",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    sharded_x = jax.device_put(x, NamedSharding(mesh, P("batch")))
    sharded = jax.jit(lambda x, r: data.preprocess(x, r, **kw))(sharded_x, rng)
    assert len(sharded.sharding.device_set) == 8

    def per_device(x_local, r):  # each device: its 4 examples, global ids from its index
        local = x_local.shape[0]
        ids = jax.lax.axis_index("batch") * local + jnp.arange(local)
        return data.preprocess(x_local, r, example_ids=ids, **kw)

    mapped = jax.jit(
        jax.shard_map(per_device, mesh=mesh, in_specs=(P("batch"), P()), out_specs=P("batch"))
    )(sharded_x, rng)
    np.testing.assert_array_equal(one, sharded)
    np.testing.assert_array_equal(one, mapped)


def test_full_device_step_matches_host_reference():
    """batch_indices + gather + preprocess in one jit equals the same steps done by hand."""
    ds = data.synthetic((8, 8, 3), num_classes=5, n=50, seed=0)
    images, labels = jnp.asarray(ds.images), jnp.asarray(ds.labels)
    mean, std = (100.0, 110.0, 120.0), (50.0, 55.0, 60.0)

    @jax.jit
    def step_batch(step):
        idx = data.batch_indices(3, step, 50, 16)
        x, y = data.gather(images, labels, idx)
        rng = jax.random.fold_in(jax.random.key(9), step)
        return data.preprocess(x, rng, augment=True, mean=mean, std=std, pad=2), y

    x, y = step_batch(4)  # epoch 1, batch 1
    idx = np.asarray(data.epoch_permutation(3, 1, 50))[16:32]
    np.testing.assert_array_equal(y, ds.labels[idx])
    expected = data.preprocess(
        jnp.asarray(ds.images[idx]),
        jax.random.fold_in(jax.random.key(9), 4),
        augment=True,
        mean=mean,
        std=std,
        pad=2,
    )
    np.testing.assert_array_equal(x, expected)


def test_stats_and_default_augment():
    for name in data.DATASET_NAMES:
        mean, std = data.stats(name)
        assert len(mean) == len(std) and all(0 < s < 128 for s in std)
    assert len(data.stats("cifar10")[0]) == 3 and data.default_augment("cifar10")
    assert not data.default_augment("fashion_mnist")
