"""The train state: everything a run needs to continue bit-exactly from a checkpoint."""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class TrainState(NamedTuple):
    """Whole state of a training run; a pytree, saved as one checkpoint item.

    Attributes:
      step: int32 scalar, number of optimizer steps taken.
      params: model parameters (float32).
      batch_stats: BatchNorm running statistics (``{}`` for models without BatchNorm).
      opt_state: optimizer state; holds the pruning masks (``progprune.get_masks``).
      rng: uint32[2] key. Never advanced: per-step randomness is ``fold_in(rng, step)``, which
        is what makes resume exact and independent of the device count.

    Example:
      >>> s = TrainState(jnp.int32(0), {"w": jnp.ones(2)}, {}, (), jax.random.PRNGKey(0))
      >>> len(jax.tree.leaves(s))
      3
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rng: jax.Array


def to_host(tree: PyTree) -> PyTree:
    """Copies a (replicated) device pytree to host numpy arrays.

    Works for fully replicated global arrays in multi-process runs too: each process reads its
    own first shard instead of gathering across hosts.

    >>> to_host({"a": jnp.ones(2)})["a"]
    array([1., 1.], dtype=float32)
    """

    def local(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x

    tree = jax.tree.map(local, tree)
    for x in jax.tree.leaves(tree):  # start every copy before waiting on any
        if isinstance(x, jax.Array):
            x.copy_to_host_async()
    # A copy, not np.asarray: on CPU that is a view of the device buffer, which the next step
    # overwrites in place once the state is donated to it, while an async checkpoint still
    # writes the view (its checksum, taken at save time, then no longer matches).
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def all_finite(tree: PyTree) -> bool:
    """True if every floating-point leaf of a host pytree is finite.

    >>> all_finite({"w": np.array([1.0, np.nan])})
    False
    """
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return all(bool(np.isfinite(x).all()) for x in leaves if np.issubdtype(x.dtype, np.floating))


def state_checksum(state: TrainState) -> str:
    """A CRC32 over every leaf's bytes (hex); detects silently corrupt checkpoint data.

    >>> s = TrainState(np.int32(0), {"w": np.zeros(2, np.float32)}, {}, (), np.zeros(2, np.uint32))
    >>> len(state_checksum(s))
    8
    """
    crc = 0
    for leaf in jax.tree.leaves(state):
        arr = np.ascontiguousarray(np.asarray(leaf))
        crc = zlib.crc32(str((arr.dtype.str, arr.shape)).encode(), crc)
        crc = zlib.crc32(arr.tobytes(), crc)
    return f"{crc:08x}"


def zero_pruned(params: PyTree, masks: PyTree) -> PyTree:
    """Sets to 0.0 the weights whose mask entry is False.

    >>> zero_pruned({"w": jnp.ones(2)}, {"w": jnp.array([True, False])})["w"]
    Array([1., 0.], dtype=float32)
    """
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)
