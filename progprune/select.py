"""Exact selection of the k smallest entries of a pytree without sorting.

A full sort of every weight (``jnp.sort``/``argsort``/``lax.top_k``) costs seconds per mask update
on a CPU for a ResNet-18. Instead the scores are mapped to ``uint32`` keys whose integer order is
the float order, and the threshold (the largest key with at most k keys below it) is found by
bisection on the keys: each step is one compare-and-count pass over the leaves (no concatenated
copy of the weights is made). The order statistics of a strided sample bracket the threshold
first, so a ResNet-18 needs about 20 passes instead of 32. Every key below the threshold is
selected; ties at it are broken by position (earlier flattened position first): the ties of every
row are counted, and only the row holding the first tie left out is searched.

The counting passes run as named steps of one ``while_loop`` (see ``_threshold``): count the entries
already pruned, check the bracket's two sides, bisect, count below the threshold, count the ties.
One loop body is more than compact: XLA's CPU runtime pays, at every execution, for each
reduction compiled into a program, including those in the untaken branch of the optimizer's
``lax.cond``. Counting code inlined at five places made every training step without a mask update
slower on a ResNet-18-sized tree (~0.3 ms, against under 0.1 ms compiled once: timed while writing
e116bdf, not kept in a committed result; ``benchmarks/results/mask_update.json`` has today's
step times).

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

__all__ = ["count_true", "order_keys", "round_fraction", "select_smallest"]

# Leaves are counted as rows of _ROW entries: counts are first summed along rows in uint8,
# which XLA vectorises well on CPU; 128 keeps a row's count below 256.
_ROW = 128
# Pads partial rows; never selected. Keys stay below _PAD_KEY - 1, so that a bound one above
# any key (up to _PAD_KEY) is still a uint32.
_PAD_KEY = np.uint32(0xFFFFFFFF)
# Rows (of _ROW entries) sampled to bracket the threshold before the full-size bisection.
_SAMPLE_ROWS = 256


def order_keys(scores: jax.Array, active: jax.Array | None = None) -> jax.Array:
    """Maps float scores to uint32 keys with the same order; inactive entries get key 0.

    Active keys are always >= 1, so inactive (already pruned) entries rank below every active
    one. -0.0 is folded into +0.0 so equal values tie; NaN ranks as +inf (above every number).
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


def _row_counts(pred: jax.Array) -> jax.Array:
    """True entries per row of _ROW entries of a boolean array (a partial last row included)."""
    rows, tail = _rows(pred)
    # Row sums in uint8 first: XLA vectorises them well on CPU, a plain int32 sum it does not.
    per_row = jnp.sum(rows.astype(jnp.uint8), axis=1, dtype=jnp.uint8).astype(jnp.int32)
    if tail.size:
        per_row = jnp.concatenate([per_row, jnp.sum(tail, dtype=jnp.int32)[None]])
    return per_row


def count_true(pred: jax.Array) -> jax.Array:
    """Number of True entries of a boolean array, as an int32 scalar (row sums first, as above)."""
    return jnp.sum(_row_counts(pred))


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

    def rows_total(self, per_row: jax.Array, layout: _RowLayout) -> jax.Array:
        """Per-segment sums of an int32 value per row (rows as in ``layout``)."""
        if self.count == 1:
            return jnp.sum(per_row)[None]
        # Segments are runs of rows: differences of a cumulative sum (a scatter-add is slower).
        of_row = self.of_leaf[layout.leaf_of_row]
        bounds = np.searchsorted(of_row, np.arange(self.count + 1))
        inclusive = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(per_row)])
        return inclusive[bounds[1:]] - inclusive[bounds[:-1]]

    def leaf(self, per_segment: jax.Array, i: int) -> jax.Array:
        return per_segment[int(self.of_leaf[i])]


def _bracket(
    key_of: KeyFn, num_leaves: int, k: jax.Array, n: int
) -> tuple[jax.Array, jax.Array] | None:
    """Candidate bounds ``(low, high)`` for a single-segment search, from a strided sample.

    Order statistics of a sorted sample of rows, a few standard deviations either side of rank
    ``k / n``, give with high probability a ``low`` with at most ``k`` keys below it and a ``high``
    with more than ``k``. The search checks each side with one counting pass and widens a side
    that fails to the full key range, so the result is exact either way. ``None`` when the leaves
    are too small to sample.
    """
    stride = n // _ROW // _SAMPLE_ROWS
    if stride < 2:
        return None
    parts = [_rows(key_of(i))[0][::stride] for i in range(num_leaves)]
    parts = [p.reshape(-1) for p in parts if p.size]
    if not parts:
        return None
    # A few hundred rows: sorting them costs about what two bisections over them did.
    sample = jnp.sort(jnp.concatenate(parts))
    m = sample.size
    q = k.astype(jnp.float32) / n
    spread = 5.0 * jnp.sqrt(m * q * (1.0 - q)) + 16.0
    r_low = jnp.floor(q * m - spread).astype(jnp.int32)
    r_high = jnp.ceil(q * m + spread).astype(jnp.int32)
    # sample[r] has at most r sample keys below it; sample[r] + 1 has more than r.
    low = jnp.where(r_low >= 0, sample[jnp.clip(r_low, 0, m - 1)], np.uint32(0))
    high = jnp.where(r_high < m, sample[jnp.clip(r_high, 0, m - 1)] + 1, _PAD_KEY)
    return low, high


class _Search(NamedTuple):
    """Per-segment state of the counting loop in :func:`_threshold`.

    Invariant: at most k keys lie below ``low`` and more than k below ``high``, or the segment
    is closed (``high == low + 1``) with exactly k below ``low``. Either way the selection is the
    keys below ``low`` and the first ``k - below`` keys equal to it.
    """

    step: jax.Array  # int32 scalar: index in the step list of the pass that runs next
    k: jax.Array  # int32: how many keys to select
    low: jax.Array  # uint32: at the end, the threshold
    high: jax.Array  # uint32
    below: jax.Array  # int32: keys below the threshold (set by the count-below step)


class _RowCounts(NamedTuple):
    """Per-row counts (int32 [rows]) at the threshold, for the tie search.

    Kept out of the steps' ``lax.switch``: its branches would copy them at every pass.
    """

    below: jax.Array  # keys below the threshold
    ties: jax.Array  # keys equal to the threshold


class _Step(NamedTuple):
    """One counting pass: count the keys below ``bound(s)``, then ``update(s, counts)``.

    ``counts`` are per segment; ``update`` also sets the next step's index.
    """

    name: str
    bound: Callable[[_Search], jax.Array]
    update: Callable[[_Search, jax.Array], _Search]


def _next(s: _Search, **changes: jax.Array) -> _Search:
    return s._replace(step=s.step + 1, **changes)


def _close(s: _Search, exact: jax.Array, at: jax.Array) -> _Search:
    """Closes the segments where exactly k keys lie below ``at``: no search is left there."""
    return s._replace(low=jnp.where(exact, at, s.low), high=jnp.where(exact, at + 1, s.high))


def _keep_pruned(s: _Search, counts: jax.Array) -> _Search:
    # Keys below 1 are 0: the entries already pruned. All of them stay selected; where they are
    # all there is to select (nothing new to prune), the search is over.
    k = jnp.maximum(s.k, counts)
    return _next(_close(s._replace(k=k), counts == k, jnp.ones_like(s.low)))


def _check_low(s: _Search, counts: jax.Array) -> _Search:
    s = _close(s, counts == s.k, s.low)
    return _next(s, low=jnp.where(counts <= s.k, s.low, np.uint32(0)))


def _check_high(s: _Search, counts: jax.Array) -> _Search:
    keep = (counts > s.k) | (s.high - s.low == 1)
    return _next(s, high=jnp.where(keep, s.high, _PAD_KEY))


def _mid(s: _Search) -> jax.Array:
    return s.low + (s.high - s.low) // 2


def _halve(s: _Search, counts: jax.Array) -> _Search:
    # A closed segment (high == low + 1) has mid == low and k keys or fewer below it: it stays.
    mid, ok = _mid(s), counts <= s.k
    s = s._replace(low=jnp.where(ok, mid, s.low), high=jnp.where(ok, s.high, mid))
    s = _close(s, counts == s.k, mid)
    return s._replace(step=jnp.where(jnp.any(s.high - s.low > 1), s.step, s.step + 1))


def _record_below(s: _Search, counts: jax.Array) -> _Search:
    return _next(s, below=counts)


KEEP_PRUNED = _Step("keep pruned", lambda s: jnp.ones_like(s.low), _keep_pruned)
CHECK_LOW = _Step("check low", lambda s: s.low, _check_low)
CHECK_HIGH = _Step("check high", lambda s: s.high, _check_high)
BISECT = _Step("bisect", _mid, _halve)
COUNT_BELOW = _Step("count below", lambda s: s.low, _record_below)
# low + 1 does not overflow: keys, hence low, stay below _PAD_KEY - 1.
COUNT_TIES = _Step("count ties", lambda s: s.low + 1, lambda s, counts: _next(s))


def _threshold(
    key_of: KeyFn,
    layout: _RowLayout,
    seg: _Segments,
    k: jax.Array,
    bracket: tuple[jax.Array, jax.Array] | None,
    keep_pruned: bool,
) -> tuple[_Search, _RowCounts]:
    """Per segment, the largest key with at most k keys below it (``low`` of the result) and
    the count below it; per row, the counts below and at it.

    Runs the steps of the search in order, each one counting pass, in one ``while_loop``: the
    per-leaf reductions are compiled once (see the module docstring for why that matters).
    """
    steps = [KEEP_PRUNED] if keep_pruned else []
    steps += [CHECK_LOW, CHECK_HIGH] if bracket is not None else []
    steps += [BISECT, COUNT_BELOW, COUNT_TIES]
    num_leaves = layout.first_row.size
    low, high = bracket if bracket is not None else (np.uint32(0), _PAD_KEY)
    start = _Search(
        step=jnp.int32(0),
        k=k,
        low=jnp.broadcast_to(jnp.asarray(low, jnp.uint32), (seg.count,)),
        high=jnp.broadcast_to(jnp.asarray(high, jnp.uint32), (seg.count,)),
        below=jnp.zeros((seg.count,), jnp.int32),
    )
    no_rows = jnp.zeros((layout.leaf_of_row.size,), jnp.int32)

    def count_below(bound: jax.Array) -> tuple[jax.Array, jax.Array]:
        leaf_rows = [_row_counts(key_of(i) < seg.leaf(bound, i)) for i in range(num_leaves)]
        rows = jnp.concatenate(leaf_rows)
        if seg.count == 1:
            return jnp.sum(rows)[None], rows
        # Per-leaf sums: cheaper here than sums over runs of the concatenated rows.
        return seg.total([jnp.sum(r) for r in leaf_rows]), rows

    def body(carry: tuple[_Search, _RowCounts]) -> tuple[_Search, _RowCounts]:
        s, kept = carry
        bound = jnp.stack([step.bound(s) for step in steps])[s.step]
        counts, rows = count_below(bound)
        kept = _RowCounts(
            below=jnp.where(s.step == steps.index(COUNT_BELOW), rows, kept.below),
            ties=jnp.where(s.step == steps.index(COUNT_TIES), rows - kept.below, kept.ties),
        )
        return lax.switch(s.step, [step.update for step in steps], s, counts), kept

    start_rows = _RowCounts(no_rows, no_rows)
    return lax.while_loop(lambda c: c[0].step < len(steps), body, (start, start_rows))


def _padded_rows(x: jax.Array) -> jax.Array:
    """A leaf as [rows, _ROW], its last row filled up with the never-selected key."""
    flat = x.reshape(-1)
    pad = -flat.size % _ROW
    if pad:
        flat = jnp.concatenate([flat, jnp.full((pad,), _PAD_KEY, flat.dtype)])
    return flat.reshape(-1, _ROW)


def _tie_position(
    keys: Sequence[jax.Array],
    layout: _RowLayout,
    seg: _Segments,
    threshold: jax.Array,
    rank: jax.Array,
    ties: jax.Array,
) -> jax.Array:
    """Per segment, the flattened position of the ``rank``-th (from 1) key equal to its threshold.

    ``ties`` (per row, from the counting loop) has a cumulative sum over rows (tens of
    thousands, not millions of entries) that finds the row holding the wanted tie; that row
    alone is searched. Random float32 weights tie at the threshold more often than not (a
    ResNet-18 has ~3 ties), so this runs at every update. A segment without such a tie gets
    some position, unused: none of its keys equals its threshold.
    """
    num_rows = layout.leaf_of_row.size
    seg_of_row = seg.of_leaf[layout.leaf_of_row]
    # Segments are whole leaves in order; an empty segment points past the last row.
    first_row_of_seg = np.searchsorted(seg_of_row, np.arange(seg.count))
    inclusive = jnp.cumsum(ties)
    before = (inclusive - ties)[np.minimum(first_row_of_seg, num_rows - 1)]
    within_seg = inclusive - before[seg_of_row]
    # Ties accumulate along a segment's rows, so the rows before the wanted one are those
    # holding fewer.
    short = (within_seg < rank[seg_of_row]).astype(jnp.int32)
    row = jnp.minimum(jnp.asarray(first_row_of_seg) + seg.rows_total(short, layout), num_rows - 1)
    rank_in_row = rank - (within_seg[row] - ties[row])
    # That row's keys: the matching row of every leaf, then the one of the leaf it belongs to.
    leaf_rows = [_padded_rows(x) for x in keys]
    candidates = jnp.stack(
        [
            r[jnp.clip(row - layout.first_row[i], 0, r.shape[0] - 1)]
            if r.shape[0]
            else jnp.full((seg.count, _ROW), _PAD_KEY, jnp.uint32)
            for i, r in enumerate(leaf_rows)
        ]
    )
    leaf = jnp.asarray(layout.leaf_of_row)[row]
    equal = candidates[leaf, jnp.arange(seg.count)] == threshold[:, None]
    column = jnp.argmax(jnp.cumsum(equal.astype(jnp.int32), axis=1) >= rank_in_row[:, None], 1)
    return jnp.asarray(layout.row_start, jnp.uint32)[row] + column.astype(jnp.uint32)


def select_smallest(
    keys: Sequence[jax.Array],
    k: jax.Array,
    leaf_segment: Sequence[int],
    *,
    all_zero_keys: bool = False,
) -> list[jax.Array]:
    """Marks, per segment, exactly the ``k[s]`` smallest keys; ties go to earlier positions.

    Args:
      keys: uint32 arrays (any shape) from :func:`order_keys` (any keys below 0xFFFFFFFE do);
        leaf order, then row-major order, is the tie order.
      k: int32 [num_segments], how many to select in each segment (at most its size).
      leaf_segment: for each leaf, its segment; segments are runs of consecutive leaves
        numbered 0, 1, ... in order.
      all_zero_keys: select at least every key equal to 0 (raising ``k`` where needed); with
        :func:`order_keys` those are the entries already pruned, so masks only shrink.

    Returns:
      Boolean arrays shaped like ``keys``, True where selected.
    """
    num = len(keys)
    if num == 0:
        return []
    seg = _Segments(np.asarray(leaf_segment, np.int32), int(k.shape[0]))
    if np.any(np.diff(seg.of_leaf) < 0) or np.any(np.diff(seg.of_leaf) > 1):
        raise ValueError(f"segments must be consecutive runs of leaves, got {leaf_segment}.")
    leaf_sizes = [int(x.size) for x in keys]
    if not any(leaf_sizes):
        return [jnp.zeros(x.shape, bool) for x in keys]
    k = jnp.maximum(k.astype(jnp.int32), 0)
    # A segment asked for all of its keys (a sparsity just below 1 rounds to every weight) has no
    # threshold with more than k keys above it, which the search needs: it searches for none
    # there, and every key of it is selected below.
    sizes = np.bincount(seg.of_leaf, weights=leaf_sizes, minlength=seg.count)
    full = k >= jnp.asarray(sizes, jnp.int32)
    k = jnp.where(full, 0, k)

    def key_of(i):
        return keys[i]

    layout = _RowLayout.of(leaf_sizes)
    bracket = None
    if seg.count == 1:
        bracket = _bracket(key_of, num, k, sum(leaf_sizes))
    found, rows = _threshold(key_of, layout, seg, k, bracket, all_zero_keys)
    # Every key below the threshold is selected, and the first `k - below` ties at it: the ties
    # before the next one, which exists because more than k keys lie below threshold + 1.
    left_out = _tie_position(keys, layout, seg, found.low, found.k - found.below + 1, rows.ties)
    out, offset = [], 0
    for i, key in enumerate(keys):
        position = jnp.uint32(offset) + lax.iota(jnp.uint32, key.size).reshape(key.shape)
        t = seg.leaf(found.low, i)
        chosen = (key < t) | ((key == t) & (position < seg.leaf(left_out, i)))
        out.append(chosen | seg.leaf(full, i))
        offset += leaf_sizes[i]
    return out
