"""The device-resident input pipeline: pure, jittable pieces for inside the train step.

The whole split lives on the device(s) as uint8. Each step the jitted train step calls

    idx = batch_indices(seed, step, n, batch_size)     # which examples
    x, y = gather(images, labels, idx)                  # uint8 batch
    x = preprocess(x, rng, augment=..., mean=..., std=...)   # float32, normalised

so no data crosses from the host during training. Everything is a function of
(seed, step, rng), so a run resumed at step s sees exactly the batches an uninterrupted
run sees from step s on.

Shuffling draws a fresh permutation of the split each epoch from (seed, epoch). We do not
materialise it: a `jax.random.permutation` of the split in every step adds ~27 ms a step on
a CPU core (50k indices, batch 128: benchmarks/results/data_pipeline.json), almost a
whole LeNet-5 step, and doing it once per epoch would need state carried
through the step. Instead a keyed Feistel network (a pseudo-random permutation of
[0, 2^(2h)), walked in cycles back into [0, n)) maps the batch's positions in the epoch
straight to example indices: O(batch_size) work, any step, no state.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

_FEISTEL_ROUNDS = 6  # of a well-mixing hash: a good shuffle, not a cryptographic one

# Per-channel mean and std of each training split, in the 0-255 pixel scale (the scale of
# the uint8 images), so preprocess computes (x - mean) / std on raw pixel values.
_STATS = {
    "mnist": ((33.318,), (78.567,)),  # 0.1307, 0.3081 of 255
    "fashion_mnist": ((72.940,), (90.021,)),
    "cifar10": ((125.307, 122.950, 113.865), (62.993, 62.089, 66.705)),
    "cifar100": ((129.304, 124.070, 112.434), (68.170, 65.392, 70.418)),
    "digits": ((77.886,), (95.712,)),
    # Synthetic pixels are uniform-ish on 0-255; one value broadcasts over any channels.
    "synthetic": ((127.5,), (73.6,)),
}
_AUGMENT = ("cifar10", "cifar100")


def stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of data set `name`'s training split, in 0-255 pixel units.

    >>> stats("fashion_mnist")
    ((72.94,), (90.021,))
    """
    if name not in _STATS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(_STATS)}")
    return _STATS[name]


def default_augment(name: str) -> bool:
    """Whether `name` is trained with crop+flip augmentation by default (CIFAR only).

    >>> default_augment("cifar10"), default_augment("fashion_mnist")
    (True, False)
    """
    stats(name)  # validates the name
    return name in _AUGMENT


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped).

    >>> steps_per_epoch(60000, 128)
    468
    """
    if not 0 < batch_size <= num_examples:
        raise ValueError(
            f"need 0 < batch_size <= num_examples, got batch_size={batch_size} for "
            f"{num_examples} examples; use a batch size between 1 and {num_examples}."
        )
    return num_examples // batch_size


def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche ("lowbias32", C. Wellons's hash-prospector)."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _feistel(x: jax.Array, round_keys: jax.Array, half_bits: int) -> jax.Array:
    mask = jnp.uint32((1 << half_bits) - 1)
    left, right = x >> half_bits, x & mask
    for i in range(round_keys.shape[0]):
        left, right = right, left ^ (_mix(right ^ round_keys[i]) & mask)
    return (left << half_bits) | right


def _permute(positions: jax.Array, key: jax.Array, n: int) -> jax.Array:
    """Maps positions in [0, n) through a pseudo-random permutation of [0, n) keyed by `key`."""
    half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
    # Round keys come from threefry; the rounds themselves use a cheap integer hash,
    # which compiles in milliseconds where per-element threefry took seconds.
    keys = jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)
    # Cycle walking: the Feistel network permutes [0, 4^half_bits) ⊇ [0, n); applying it
    # again until a value lands in [0, n) gives a permutation of [0, n). At most 4n / n
    # expected walks, since 4^half_bits < 4n.
    out = _feistel(positions.astype(jnp.uint32), keys, half_bits)
    return lax.while_loop(
        lambda y: jnp.any(y >= n),
        lambda y: jnp.where(y >= n, _feistel(y, keys, half_bits), y),
        out,
    )


@functools.partial(jax.jit, static_argnames="num_examples")
def epoch_permutation(
    seed: int | jax.Array, epoch: int | jax.Array, num_examples: int
) -> jax.Array:
    """The order in which epoch `epoch` visits the examples: int32 [num_examples].

    `batch_indices` takes consecutive slices of this; it exists for tests and host code.

    >>> sorted(epoch_permutation(0, 0, 5).tolist())
    [0, 1, 2, 3, 4]
    """
    key = jax.random.fold_in(jax.random.key(seed), epoch)
    return _permute(jnp.arange(num_examples), key, num_examples).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size"))
def batch_indices(
    seed: int | jax.Array, step: int | jax.Array, num_examples: int, batch_size: int
) -> jax.Array:
    """Indices of the examples in training batch `step`: int32 [batch_size].

    Epoch `step // steps_per_epoch` visits the examples in a permutation drawn from
    (seed, epoch); this returns slice `step % steps_per_epoch` of it. Jittable with a
    traced `step` (and `seed`); `num_examples` and `batch_size` are static.

    >>> idx = batch_indices(0, 7, 100, 10)
    >>> idx.shape, idx.dtype
    ((10,), dtype('int32'))
    """
    spe = steps_per_epoch(num_examples, batch_size)
    step = jnp.asarray(step, jnp.int32)
    key = jax.random.fold_in(jax.random.key(seed), step // spe)
    positions = (step % spe) * batch_size + jnp.arange(batch_size)
    return _permute(positions, key, num_examples).astype(jnp.int32)


def gather(images: jax.Array, labels: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The batch `idx` of a device-resident split: (uint8 [B, H, W, C], int32 [B]).

    >>> x, y = gather(jnp.zeros((10, 2, 2, 1), jnp.uint8), jnp.arange(10), jnp.array([3, 1]))
    >>> y.tolist()
    [3, 1]
    """
    return jnp.take(images, idx, axis=0), jnp.take(labels, idx, axis=0)


def _crop_and_flip(x: jax.Array, keys: jax.Array, pad: int) -> jax.Array:
    """Per example: a random crop of the zero-padded image, then a random left-right flip."""
    _, h, w, _ = x.shape
    bounds = jnp.array([2 * pad + 1, 2 * pad + 1, 2])
    dy, dx, flip = jax.vmap(lambda k: jax.random.randint(k, (3,), 0, bounds))(keys).T
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    # Index arithmetic instead of a vmapped dynamic_slice: one gather per axis is ~1.7x
    # faster on CPU. A flipped crop reads the crop's columns right to left.
    rows = dy[:, None] + jnp.arange(h)
    cols = dx[:, None] + jnp.where(flip[:, None] == 1, w - 1 - jnp.arange(w), jnp.arange(w))
    x = jnp.take_along_axis(padded, rows[:, :, None, None], axis=1)
    return jnp.take_along_axis(x, cols[:, None, :, None], axis=2)


def _normalise(x: jax.Array, mean, std) -> jax.Array:
    """(x - mean) / std per channel, on [B, H, W*C] with mean/std tiled along W*C."""
    b, h, w, c = x.shape
    mean = jnp.tile(jnp.broadcast_to(jnp.asarray(mean, jnp.float32), (c,)), w)
    std = jnp.tile(jnp.broadcast_to(jnp.asarray(std, jnp.float32), (c,)), w)
    # The same arithmetic as broadcasting over a trailing axis of 1 or 3 channels, but XLA
    # on CPU vectorises it (up to 15x faster when fused into a reduction).
    return ((x.reshape(b, h, w * c).astype(jnp.float32) - mean) / std).reshape(b, h, w, c)


def _shard_like_batch(ids: jax.Array, x: jax.Array) -> jax.Array:
    """Gives `ids` the batch sharding of `x` where it is explicit (vmap needs them equal)."""
    sharding = jax.typeof(x).sharding
    if sharding.spec and sharding.spec[0] is not None:
        ids = jax.sharding.reshard(
            ids, NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))
        )
    return ids


@functools.partial(jax.jit, static_argnames=("augment", "pad"))
def preprocess(
    x: jax.Array,
    rng: jax.Array | None,
    *,
    augment: bool,
    mean: Sequence[float] | jax.Array,
    std: Sequence[float] | jax.Array,
    pad: int = 4,
    example_ids: jax.Array | None = None,
) -> jax.Array:
    """Turns a uint8 batch into normalised float32, optionally augmented.

    With `augment`, each image is zero-padded by `pad` pixels (black, before
    normalisation, as torchvision's RandomCrop), cropped back to its size at a random
    offset, and flipped left-right with probability 1/2. Example i draws its crop and flip
    from `fold_in(rng, example_ids[i])`, so results do not depend on how the batch is
    split across devices.

    Args:
      x: uint8 [B, H, W, C].
      rng: a PRNG key (new-style or raw uint32); may be None when `augment` is False.
      augment: whether to crop and flip.
      mean: per-channel mean in 0-255 units (see `stats`); broadcasts over C.
      std: per-channel std in 0-255 units.
      pad: crop padding in pixels.
      example_ids: int [B], a distinct id per example of the global batch; default
        arange(B), its position in the batch. Under shard_map, where each device sees a
        slice of the batch, pass the global positions (or the `batch_indices`).

    Returns:
      float32 [B, H, W, C]: (augmented x - mean) / std.

    >>> x = jnp.full((2, 4, 4, 1), 100, jnp.uint8)
    >>> preprocess(x, None, augment=False, mean=(50.0,), std=(25.0,))[0, 0, 0, 0]
    Array(2., dtype=float32)
    """
    if augment:
        if rng is None:
            raise ValueError(
                "preprocess(augment=True) needs an rng key; pass rng=jax.random.key(seed) "
                "(or augment=False)."
            )
        ids = jnp.arange(x.shape[0]) if example_ids is None else example_ids
        keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, _shard_like_batch(ids, x))
        x = _crop_and_flip(x, keys, pad)
    return _normalise(x, mean, std)
