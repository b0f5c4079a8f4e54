"""Exact selection of the k smallest entries of a pytree without sorting.

A full sort of every weight (``jnp.sort``/``argsort``/``lax.top_k``) costs seconds per mask update
on a CPU for a ResNet-18. Instead the scores are mapped to ``uint32`` keys whose integer order is
the float order, and the k-th smallest key is found by bisection on the keys: each step is one
compare-and-count pass over the leaves, with the keys recomputed inside the pass (no copy of the
weights is ever materialised). A strided sample brackets the threshold first, so a ResNet-18
needs about 20 passes instead of 32. Ties at the threshold are broken by position (earlier
flattened position first) with a second bisection over positions, run only when needed.

Segments let one pass serve several independent selections (one per layer for the ``uniform`` and
``erk`` distributions): every leaf belongs to one segment and each segment has its own ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["order_keys", "round_fraction", "select_smallest"]

# Row width of the packed buffer. Counts are first summed along rows in uint8, which XLA
# vectorises well on CPU; 128 keeps a row's count below 256.
_ROW = 128
_PAD_KEY = np.uint32(0xFFFFFFFF)
# Rows (of _ROW entries) sampled to bracket the threshold before the full-size bisection.
_SAMPLE_ROWS = 256


def order_keys(scores: jax.Array, active: jax.Array | None = None) -> jax.Array:
    """Maps float scores to uint32 keys with the same order; inactive entries get key 0.

    Active keys are always >= 1, so inactive (already pruned) entries rank below every active
    one. -0.0 is folded into +0.0 so equal values tie; NaN ranks above +inf.
    """
    x = scores.astype(jnp.float32)
    x = jnp.where(x == 0, jnp.float32(0), x)
    x = jnp.where(jnp.isnan(x), jnp.float32(jnp.inf), x)
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31) == 1
    keys = jnp.where(negative, ~bits, bits | np.uint32(0x80000000))
    if active is not None:
        keys = jnp.where(active, keys, np.uint32(0))
    return keys


def round_fraction(fraction: jax.Array, n: int) -> jax.Array:
    """Exact ``round(fraction * n)`` (half to even) for a float32 ``fraction`` in [0, 1).

    float32 arithmetic would be off by one for n above ~2^23; the product of the 24-bit
    mantissa and ``n`` is formed exactly in two uint32 words instead.
    """
    if not 0 <= n < 2**31:
        raise ValueError(f"n must be in [0, 2**31), got {n}.")
    bits = lax.bitcast_convert_type(jnp.asarray(fraction, jnp.float32), jnp.uint32)
    biased = ((bits >> 23) & 0xFF).astype(jnp.int32)
    mantissa = bits & np.uint32(0x7FFFFF)
    m = jnp.where(biased > 0, mantissa | np.uint32(0x800000), mantissa)
    shift = jnp.where(biased > 0, 150 - biased, 149)  # fraction = m / 2**shift, shift >= 24
    nh, nl = np.uint32(n >> 16), np.uint32(n & 0xFFFF)
    mh, ml = m >> 16, m & np.uint32(0xFFFF)
    a = ml * nl
    b = mh * nl + ml * nh
    lo = a + (b << 16)
    hi = mh * nh + (b >> 16) + (lo < a).astype(jnp.uint32)

    def shr(amount):  # (hi, lo) >> amount for amount in [1, 63], low word only
        amount = amount.astype(jnp.uint32)
        from_hi = hi >> jnp.clip(amount - 32, 0, 31)
        from_lo = (lo >> jnp.minimum(amount, 31)) | (hi << jnp.clip(32 - amount, 0, 31))
        return jnp.where(amount >= 32, from_hi, from_lo)

    def low_bits_nonzero(amount):  # any of the lowest `amount` bits set, amount in [1, 63]
        amount = amount.astype(jnp.uint32)
        lo_mask = jnp.where(amount >= 32, np.uint32(0xFFFFFFFF), (np.uint32(1) << amount) - 1)
        hi_mask = jnp.where(
            amount > 32, (np.uint32(1) << jnp.clip(amount - 32, 0, 31)) - 1, np.uint32(0)
        )
        return ((lo & lo_mask) != 0) | ((hi & hi_mask) != 0)

    big = shift >= 56  # the product is below 2**55, so it rounds to 0
    s = jnp.minimum(shift, 55)
    q = shr(s)
    half_bit = shr(s - 1) & 1
    sticky = low_bits_nonzero(s - 1)
    up = (half_bit == 1) & (sticky | ((q & 1) == 1))
    result = (q + up.astype(jnp.uint32)).astype(jnp.int32)
    return jnp.where(big | (m == 0), 0, result)


KeyFn = Callable[[int], jax.Array]


def _rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Splits a flattened array into whole rows [r, _ROW] and the remaining tail."""
    flat = x.reshape(-1)
    whole = flat.size // _ROW * _ROW
    return flat[:whole].reshape(-1, _ROW), flat[whole:]


def _count(pred: jax.Array) -> jax.Array:
    """Number of True entries of a boolean array, as int32."""
    rows, tail = _rows(pred)
    # Row sums in uint8 first: XLA vectorises them well on CPU, a plain int32 sum it does not.
    per_row = jnp.sum(rows.astype(jnp.uint8), axis=1, dtype=jnp.uint8).astype(jnp.int32)
    return jnp.sum(per_row) + jnp.sum(tail, dtype=jnp.int32)


class _Segments(NamedTuple):
    """Static description of which leaf belongs to which segment."""

    of_leaf: np.ndarray  # int32 [num_leaves]
    count: int

    def total(self, per_leaf: list[jax.Array]) -> jax.Array:
        """Per-segment sums of per-leaf int32 scalars."""
        stacked = jnp.stack(per_leaf)
        if self.count == 1:
            return jnp.sum(stacked)[None]
        return jnp.zeros((self.count,), jnp.int32).at[self.of_leaf].add(stacked)

    def leaf(self, per_segment: jax.Array, i: int) -> jax.Array:
        return per_segment[int(self.of_leaf[i])]


def _bisect(
    key_of: KeyFn, num_leaves: int, seg: _Segments, k: jax.Array, low: jax.Array, high: jax.Array
) -> jax.Array:
    """Per segment, the k-th smallest key, given count(key < low) < k <= count(key < high).

    Keeps that invariant while halving [low, high); ends at high == low + 1, where ``low`` is
    the largest value with count(key < low) < k, i.e. the k-th smallest key.
    """

    def cond(bounds):
        low, high = bounds
        return jnp.any(high - low > 1)

    def body(bounds):
        low, high = bounds
        mid = low + (high - low) // 2
        counts = seg.total([_count(key_of(i) < seg.leaf(mid, i)) for i in range(num_leaves)])
        below, open_ = counts < k, high - low > 1
        return jnp.where(open_ & below, mid, low), jnp.where(open_ & ~below, mid, high)

    return lax.while_loop(cond, body, (low, high))[0]


def _bracket(key_of: KeyFn, num_leaves: int, k: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Narrow starting bounds for a single-segment bisection, from a strided sample of rows.

    The sample's quantiles around rank k/n give [low, high] with high probability; one counting
    pass checks it, and the full key range is used when the check fails, so the result is exact
    either way.
    """
    full = (jnp.zeros((1,), jnp.uint32), jnp.full((1,), _PAD_KEY, jnp.uint32))
    stride = n // _ROW // _SAMPLE_ROWS
    if stride < 2:
        return full
    parts = [_rows(key_of(i))[0][::stride] for i in range(num_leaves)]
    sample = jnp.concatenate([p for p in parts if p.size] or [jnp.zeros((0, _ROW), jnp.uint32)])
    m = sample.size
    if m == 0:
        return full
    q = k.astype(jnp.float32) / n
    spread = 5.0 * jnp.sqrt(m * q * (1.0 - q)) + 16.0
    r_low = jnp.floor(q * m - spread).astype(jnp.int32)
    r_high = jnp.ceil(q * m + spread).astype(jnp.int32)
    one = _Segments(np.zeros(1, np.int32), 1)
    sample_low = _bisect(lambda i: sample, 1, one, jnp.maximum(r_low, 1), *full)
    sample_high = _bisect(lambda i: sample, 1, one, jnp.clip(r_high, 1, m), *full)
    low = jnp.where(r_low >= 1, sample_low, 0)
    high = jnp.where(r_high < m, jnp.minimum(sample_high, _PAD_KEY - 1) + 1, _PAD_KEY)
    under = sum(_count(key_of(i) < low[0]) for i in range(num_leaves))
    over = sum(_count(key_of(i) < high[0]) for i in range(num_leaves))
    ok = (under < k) & (over >= k)
    return jnp.where(ok, low, full[0]), jnp.where(ok, high, full[1])


def select_smallest(
    keys: Sequence[jax.Array], k: jax.Array, leaf_segment: Sequence[int]
) -> list[jax.Array]:
    """Marks, per segment, exactly the ``k[s]`` smallest keys; ties go to earlier positions.

    Args:
      keys: uint32 arrays (any shape, no entry equal to 0xFFFFFFFF); leaf order, then row-major
        order, is the tie order. Elementwise expressions are best: they are fused into every
        counting pass instead of being stored.
      k: int32 [num_segments], how many to select in each segment (at most its size).
      leaf_segment: for each leaf, the index of its segment.

    Returns:
      Boolean arrays shaped like ``keys``, True where selected.
    """
    num = len(keys)
    if num == 0:
        return []
    seg = _Segments(np.asarray(leaf_segment, np.int32), int(k.shape[0]))
    k = jnp.maximum(k.astype(jnp.int32), 0)
    k1 = jnp.maximum(k, 1)  # k == 0 selects nothing: `take` below is then False

    def key_of(i):
        return keys[i]

    if seg.count == 1:
        low, high = _bracket(key_of, num, k1, sum(int(x.size) for x in keys))
    else:
        low = jnp.zeros((seg.count,), jnp.uint32)
        high = jnp.full((seg.count,), _PAD_KEY, jnp.uint32)
    threshold = _bisect(key_of, num, seg, k1, low, high)
    t = [seg.leaf(threshold, i) for i in range(num)]
    wanted = k - seg.total([_count(keys[i] < t[i]) for i in range(num)])  # ties to take
    ties = seg.total([_count(keys[i] == t[i]) for i in range(num)])
    offsets = np.cumsum([0] + [int(x.size) for x in keys])

    def position(i):
        return jnp.uint32(offsets[i]) + lax.iota(jnp.uint32, keys[i].size).reshape(keys[i].shape)

    def last_tie():  # per segment, the position of the last tie to take
        def tie_key(i):
            return jnp.where(keys[i] == t[i], position(i), _PAD_KEY)

        start = jnp.zeros((seg.count,), jnp.uint32)
        end = jnp.full((seg.count,), offsets[-1], jnp.uint32)
        return _bisect(tie_key, num, seg, jnp.maximum(wanted, 1), start, end)

    every_tie = jnp.full((seg.count,), _PAD_KEY, jnp.uint32)
    last = lax.cond(jnp.all(ties == wanted), lambda: every_tie, last_tie)
    out = []
    for i in range(num):
        take = seg.leaf(wanted, i) > 0
        tie_taken = (keys[i] == t[i]) & take & (position(i) <= seg.leaf(last, i))
        out.append((keys[i] < t[i]) | tie_taken)
    return out
