"""Exact selection of the k smallest entries of a pytree without sorting.

A full sort of every weight (``jnp.sort``/``argsort``/``lax.top_k``) costs seconds per mask update
on a CPU for a ResNet-18. Instead the scores are mapped to ``uint32`` keys whose integer order is
the float order, and the k-th smallest key is found by bisection on the keys: each step is one
compare-and-count pass over the leaves (no concatenated copy of the weights is made). A strided
sample brackets the threshold first, so a ResNet-18 needs about 20 passes instead of 32. Ties at
the threshold are broken by position (earlier flattened position first): the ties of every row
are counted, and only the row holding the last tie to take is searched.

All counting passes (entries already pruned, the bracket check, the bisection, the count below
the threshold and the ties per row) run in the body of one ``while_loop``. Besides being compact,
this matters for speed: XLA's CPU runtime pays, at every execution, for each reduction compiled
into a program, including those in the untaken branch of the optimizer's ``lax.cond``. Counting
code inlined at five places made every training step without a mask update slower on a
ResNet-18-sized tree (~0.3 ms, against under 0.1 ms compiled once: timed while writing e116bdf,
not kept in a committed result; ``benchmarks/results/mask_update.json`` has that commit's step
times).

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
        counts = seg.total(
            [jnp.sum(_row_counts(key_of(i) < seg.leaf(mid, i))) for i in range(num_leaves)]
        )
        return _halve(low, high, mid, counts < k, high - low > 1)

    return lax.while_loop(cond, body, (low, high))[0]


def _halve(
    low: jax.Array, high: jax.Array, mid: jax.Array, below: jax.Array, open_: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One bisection step where ``open_``: ``mid`` becomes ``low`` if fewer than k keys are below
    it (``below``), else ``high``."""
    return jnp.where(open_ & below, mid, low), jnp.where(open_ & ~below, mid, high)


def _bracket(
    key_of: KeyFn, num_leaves: int, k: jax.Array, n: int
) -> tuple[jax.Array, jax.Array] | None:
    """Candidate bounds for a single-segment bisection, from a strided sample of rows.

    The sample's quantiles around rank k/n give [low, high] with high probability; the caller
    checks them with two counting passes and uses the full key range when they fail, so the
    result is exact either way. ``None`` when the leaves are too small to sample.
    """
    stride = n // _ROW // _SAMPLE_ROWS
    if stride < 2:
        return None
    parts = [_rows(key_of(i))[0][::stride] for i in range(num_leaves)]
    sample = jnp.concatenate([p for p in parts if p.size] or [jnp.zeros((0, _ROW), jnp.uint32)])
    m = sample.size
    if m == 0:
        return None
    full = (jnp.zeros((1,), jnp.uint32), jnp.full((1,), _PAD_KEY, jnp.uint32))
    q = k.astype(jnp.float32) / n
    spread = 5.0 * jnp.sqrt(m * q * (1.0 - q)) + 16.0
    r_low = jnp.floor(q * m - spread).astype(jnp.int32)
    r_high = jnp.ceil(q * m + spread).astype(jnp.int32)
    one = _Segments(np.zeros(1, np.int32), 1)
    sample_low = _bisect(lambda i: sample, 1, one, jnp.maximum(r_low, 1), *full)
    sample_high = _bisect(lambda i: sample, 1, one, jnp.clip(r_high, 1, m), *full)
    low = jnp.where(r_low >= 1, sample_low, 0)
    high = jnp.where(r_high < m, jnp.minimum(sample_high, _PAD_KEY - 1) + 1, _PAD_KEY)
    return low, high


# Phases of the counting loop in _threshold, in order; each runs one counting pass.
_ZEROS, _UNDER, _OVER, _BISECT, _FINAL, _TIES, _DONE = range(7)


class _Search(NamedTuple):
    phase: jax.Array  # int32 scalar
    k: jax.Array  # int32 [segments]
    low: jax.Array  # uint32 [segments]
    high: jax.Array  # uint32 [segments]
    under: jax.Array  # int32 [segments], count below the candidate low
    below: jax.Array  # int32 [segments], count below the threshold (at the end)
    rows_below: jax.Array  # int32 [rows], per-row counts below the threshold
    ties: jax.Array  # int32 [rows], per-row counts of keys equal to the threshold


def _threshold(
    key_of: KeyFn,
    layout: _RowLayout,
    seg: _Segments,
    k: jax.Array,
    bracket: tuple[jax.Array, jax.Array] | None,
    all_zero_keys: bool,
) -> _Search:
    """Per segment, the k-th smallest key (``low`` of the result), the count below it and the
    ties at it per row.

    Every counting pass (zero keys, checking the bracket, bisection, the count below the
    threshold, the ties) runs in the body of one while loop, so the per-leaf reductions are
    compiled once rather than once per pass: the CPU runtime pays per execution for every
    reduction compiled into a program, even in the untaken branch of the optimizer's
    ``lax.cond``, so this keeps the training steps without a mask update cheap.
    """
    num_leaves = layout.first_row.size
    full_low = jnp.zeros((seg.count,), jnp.uint32)
    full_high = jnp.full((seg.count,), _PAD_KEY, jnp.uint32)
    after_zeros = _UNDER if bracket is not None else _BISECT
    low, high = bracket if bracket is not None else (full_low, full_high)
    zeros = jnp.zeros((seg.count,), jnp.int32)
    no_rows = jnp.zeros((layout.leaf_of_row.size,), jnp.int32)
    first = _ZEROS if all_zero_keys else after_zeros
    start = _Search(jnp.int32(first), k, low, high, zeros, zeros, no_rows, no_rows)

    def body(s: _Search) -> _Search:
        mid = s.low + (s.high - s.low) // 2
        bound = jnp.select(
            [s.phase == _ZEROS, s.phase == _UNDER, s.phase == _OVER, s.phase == _FINAL],
            [jnp.ones_like(mid), s.low, s.high, s.low],
            mid,
        )
        bound = jnp.where(s.phase == _TIES, s.low + 1, bound)  # low < the pad key: no overflow
        leaf_rows = [_row_counts(key_of(i) < seg.leaf(bound, i)) for i in range(num_leaves)]
        per_row = jnp.concatenate(leaf_rows)
        if seg.count == 1:
            counts = jnp.sum(per_row)[None]
        else:  # per-leaf sums: cheaper here than sums over runs of the concatenated rows
            counts = seg.total([jnp.sum(r) for r in leaf_rows])
        # Zero keys are the entries already pruned: never select fewer.
        k = jnp.where(s.phase == _ZEROS, jnp.maximum(s.k, counts), s.k)
        k1 = jnp.maximum(k, 1)  # k == 0 selects nothing, but the search needs a key
        # The bracket holds when count(< low) < k <= count(< high); otherwise use the full range.
        failed = (s.phase == _OVER) & ((s.under >= k1) | (counts < k1))
        low = jnp.where(failed, full_low, s.low)
        high = jnp.where(failed, full_high, s.high)
        low, high = _halve(low, high, mid, counts < k1, (s.phase == _BISECT) & (high - low > 1))
        phase = jnp.select(
            [s.phase == _ZEROS, s.phase == _BISECT],
            [jnp.int32(after_zeros), jnp.where(jnp.any(high - low > 1), _BISECT, _FINAL)],
            s.phase + 1,
        )
        return _Search(
            phase=phase.astype(jnp.int32),
            k=k,
            low=low,
            high=high,
            under=jnp.where(s.phase == _UNDER, counts, s.under),
            below=jnp.where(s.phase == _FINAL, counts, s.below),
            rows_below=jnp.where(s.phase == _FINAL, per_row, s.rows_below),
            ties=jnp.where(s.phase == _TIES, per_row - s.rows_below, s.ties),
        )

    return lax.while_loop(lambda s: s.phase != _DONE, body, start)


def _padded_rows(x: jax.Array) -> jax.Array:
    """A leaf as [rows, _ROW], its last row filled up with the never-selected key."""
    flat = x.reshape(-1)
    pad = -flat.size % _ROW
    if pad:
        flat = jnp.concatenate([flat, jnp.full((pad,), _PAD_KEY, flat.dtype)])
    return flat.reshape(-1, _ROW)


def _last_tie_position(
    keys: Sequence[jax.Array],
    layout: _RowLayout,
    seg: _Segments,
    threshold: jax.Array,
    wanted: jax.Array,
    ties: jax.Array,
) -> jax.Array:
    """Per segment, the flattened position of the ``wanted``-th key equal to its threshold.

    ``ties`` (per row, from the counting loop) has a cumulative sum over rows (tens of
    thousands, not millions of entries) that finds the row holding the wanted tie; that row
    alone is searched. Random float32 weights tie at the threshold more often than not (a
    ResNet-18 has ~3 ties), so this runs at every update.
    """
    num_rows = layout.leaf_of_row.size
    seg_of_row = seg.of_leaf[layout.leaf_of_row]
    # Segments are whole leaves in order; an empty segment points past the last row.
    first_row_of_seg = np.searchsorted(seg_of_row, np.arange(seg.count))
    inclusive = jnp.cumsum(ties)
    before = (inclusive - ties)[np.minimum(first_row_of_seg, num_rows - 1)]
    within_seg = inclusive - before[seg_of_row]
    need = jnp.maximum(wanted, 1)
    # Ties accumulate along a segment's rows, so the rows before the wanted one are those
    # holding fewer; a segment with nothing to take gets any row, unused.
    short = (within_seg < need[seg_of_row]).astype(jnp.int32)
    row = jnp.minimum(jnp.asarray(first_row_of_seg) + seg.rows_total(short, layout), num_rows - 1)
    need_in_row = need - (within_seg[row] - ties[row])
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
    column = jnp.argmax(jnp.cumsum(equal.astype(jnp.int32), axis=1) >= need_in_row[:, None], 1)
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
      keys: uint32 arrays (any shape, no entry equal to 0xFFFFFFFF); leaf order, then row-major
        order, is the tie order.
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
    if all(x.size == 0 for x in keys):
        return [jnp.zeros(x.shape, bool) for x in keys]
    k = jnp.maximum(k.astype(jnp.int32), 0)

    def key_of(i):
        return keys[i]

    layout = _RowLayout.of([int(x.size) for x in keys])
    bracket = None
    if seg.count == 1:
        bracket = _bracket(key_of, num, jnp.maximum(k, 1), sum(int(x.size) for x in keys))
    found = _threshold(key_of, layout, seg, k, bracket, all_zero_keys)
    k, threshold = found.k, found.low
    t = [seg.leaf(threshold, i) for i in range(num)]
    wanted = k - found.below  # ties to take
    last = _last_tie_position(keys, layout, seg, threshold, wanted, found.ties)
    out, offset = [], 0
    for i, key in enumerate(keys):
        position = jnp.uint32(offset) + lax.iota(jnp.uint32, key.size).reshape(key.shape)
        take = seg.leaf(wanted, i) > 0
        out.append((key < t[i]) | ((key == t[i]) & take & (position <= seg.leaf(last, i))))
        offset += int(key.size)
    return out
