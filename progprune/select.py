"""Exact selection of the k smallest entries of a pytree without sorting.

A full sort of every weight (``jnp.sort``/``argsort``/``lax.top_k``) costs seconds per mask update
on a CPU for a ResNet-18. Instead the scores are mapped to ``uint32`` keys whose integer order is
the float order, and the k-th smallest key is found by bisection on the keys: each step is one
compare-and-count pass over the leaves (no concatenated copy of the weights is made). A strided
sample brackets the threshold first, so a ResNet-18 needs about 20 passes instead of 32. Ties at
the threshold are broken by position (earlier flattened position first): one pass counts the
ties per row, and only the row holding the last tie to take is searched.

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

# Leaves are counted as rows of _ROW entries: counts are first summed along rows in uint8,
# which XLA vectorises well on CPU; 128 keeps a row's count below 256.
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


def _padded_rows(x: jax.Array) -> jax.Array:
    """A leaf as [rows, _ROW], its last row filled up with the never-selected key."""
    flat = x.reshape(-1)
    pad = -flat.size % _ROW
    if pad:
        flat = jnp.concatenate([flat, jnp.full((pad,), _PAD_KEY, flat.dtype)])
    return flat.reshape(-1, _ROW)


class _RowLayout(NamedTuple):
    """Static row bookkeeping: every leaf split into rows of _ROW entries."""

    leaf_of_row: np.ndarray  # leaf index of each row
    first_row: np.ndarray  # first row of each leaf
    row_start: np.ndarray  # flattened position (over all leaves) of each row's first entry

    @classmethod
    def of(cls, sizes: Sequence[int]) -> _RowLayout:
        rows = [-(-n // _ROW) for n in sizes]
        offsets = np.cumsum([0, *sizes])[:-1]
        first_row = np.cumsum([0, *rows])[:-1]
        leaf_of_row = np.repeat(np.arange(len(sizes)), rows)
        within = np.arange(leaf_of_row.size) - first_row[leaf_of_row]
        return cls(leaf_of_row, first_row, offsets[leaf_of_row] + within * _ROW)


def _last_tie_position(
    keys: Sequence[jax.Array], threshold: jax.Array, wanted: jax.Array, seg: _Segments
) -> jax.Array:
    """Per segment, the flattened position of the ``wanted``-th key equal to its threshold.

    One pass counts the ties of every row; a cumulative sum over rows (tens of thousands, not
    millions of entries) finds the row holding the wanted tie, and that row alone is searched.
    Random float32 weights tie at the threshold more often than not (a ResNet-18 has ~3 ties),
    so this runs at every update.
    """
    layout = _RowLayout.of([int(x.size) for x in keys])
    rows = [_padded_rows(x) for x in keys]
    per_row = jnp.concatenate(
        [
            jnp.sum((r == seg.leaf(threshold, i)).astype(jnp.uint8), axis=1, dtype=jnp.uint8)
            for i, r in enumerate(rows)
        ]
    ).astype(jnp.int32)
    # Segments are whole leaves in order (one for "global", one per leaf otherwise).
    seg_of_row = seg.of_leaf[layout.leaf_of_row]
    first_row_of_seg = np.searchsorted(seg_of_row, np.arange(seg.count))
    inclusive = jnp.cumsum(per_row)
    within_seg = inclusive - (inclusive - per_row)[first_row_of_seg][seg_of_row]
    hit = within_seg >= jnp.maximum(wanted, 1)[seg_of_row]
    last = []
    for s in range(seg.count):
        lo = int(first_row_of_seg[s])
        hi = int(first_row_of_seg[s + 1]) if s + 1 < seg.count else per_row.size
        if hi == lo:  # a segment of empty leaves selects nothing
            last.append(jnp.uint32(0))
            continue
        row = lo + jnp.argmax(hit[lo:hi])
        need = jnp.maximum(wanted[s], 1) - (within_seg[row] - per_row[row])
        leaves = [i for i in range(len(keys)) if seg.of_leaf[i] == s and rows[i].shape[0]]
        # Fetch that row's keys: the row of each candidate leaf, then the one it belongs to.
        candidates = jnp.stack(
            [
                lax.dynamic_index_in_dim(
                    rows[i], jnp.clip(row - layout.first_row[i], 0, rows[i].shape[0] - 1), 0, False
                )
                for i in leaves
            ]
        )
        slot = np.zeros(len(keys), np.int32)
        slot[leaves] = np.arange(len(leaves))
        which = jnp.asarray(slot)[jnp.asarray(layout.leaf_of_row)[row]]
        equal = candidates[which] == threshold[s]
        column = jnp.argmax(jnp.cumsum(equal.astype(jnp.int32)) >= need)
        last.append(jnp.asarray(layout.row_start, jnp.uint32)[row] + column.astype(jnp.uint32))
    return jnp.stack(last)


def select_smallest(
    keys: Sequence[jax.Array], k: jax.Array, leaf_segment: Sequence[int]
) -> list[jax.Array]:
    """Marks, per segment, exactly the ``k[s]`` smallest keys; ties go to earlier positions.

    Args:
      keys: uint32 arrays (any shape, no entry equal to 0xFFFFFFFF); leaf order, then row-major
        order, is the tie order.
      k: int32 [num_segments], how many to select in each segment (at most its size).
      leaf_segment: for each leaf, its segment; segments are runs of consecutive leaves
        numbered 0, 1, ... in order.

    Returns:
      Boolean arrays shaped like ``keys``, True where selected.
    """
    num = len(keys)
    if num == 0:
        return []
    seg = _Segments(np.asarray(leaf_segment, np.int32), int(k.shape[0]))
    if np.any(np.diff(seg.of_leaf) < 0) or np.any(np.diff(seg.of_leaf) > 1):
        raise ValueError(f"segments must be consecutive runs of leaves, got {leaf_segment}.")
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
    last = _last_tie_position(keys, threshold, wanted, seg)
    out, offset = [], 0
    for i, key in enumerate(keys):
        position = jnp.uint32(offset) + lax.iota(jnp.uint32, key.size).reshape(key.shape)
        take = seg.leaf(wanted, i) > 0
        out.append((key < t[i]) | ((key == t[i]) & take & (position <= seg.leaf(last, i))))
        offset += int(key.size)
    return out
