"""Exact selection of the k smallest entries of a pytree without sorting.

A full sort of every weight (``jnp.sort``/``argsort``/``lax.top_k``) costs seconds per mask update
on a CPU for a ResNet-18. Instead the scores are mapped to ``uint32`` keys whose integer order is
the float order, packed into one ``[rows, 128]`` buffer, and the k-th smallest key is found by
bisection on its 32 bits: each of the 32 passes is one compare-and-count over the buffer. Ties at
the threshold are broken by position (earlier flattened position first) with a second bisection
over positions, run only when there are ties to break.

Segments let one pass serve several independent selections (one per layer for the ``uniform`` and
``erk`` distributions): every leaf belongs to one segment and each segment has its own ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["order_keys", "round_fraction", "select_smallest"]

# Row width of the packed buffer. Counts are first summed along rows in uint8, which XLA
# vectorises well on CPU; 128 keeps a row's count below 256.
_ROW = 128
_PAD_KEY = np.uint32(0xFFFFFFFF)
# Rows sampled to bracket the threshold before the full-size bisection.
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


def _pack(keys: Sequence[jax.Array], pad_each: bool) -> tuple[jax.Array, list[int]]:
    """Concatenates flat keys into [rows, _ROW].

    With ``pad_each`` every leaf starts a new row (so rows never mix segments); otherwise leaves
    are packed back to back and only the end is padded. Returns the buffer and, per leaf, the
    number of buffer elements it spans.
    """
    pieces, spans = [], []
    for k in keys:
        pieces.append(k.reshape(-1))
        span = -(-k.size // _ROW) * _ROW if pad_each else k.size
        if span > k.size:
            pieces.append(jnp.full((span - k.size,), _PAD_KEY, jnp.uint32))
        spans.append(span)
    total = sum(spans)
    tail = -(-total // _ROW) * _ROW - total
    if tail:
        pieces.append(jnp.full((tail,), _PAD_KEY, jnp.uint32))
    if not pieces:
        return jnp.zeros((0, _ROW), jnp.uint32), spans
    return jnp.concatenate(pieces).reshape(-1, _ROW), spans


def _counts(less: jax.Array, row_segment: np.ndarray | None, num_segments: int) -> jax.Array:
    """Per-segment number of True in a boolean [rows, _ROW] array, as int32."""
    per_row = jnp.sum(less.astype(jnp.uint8), axis=1, dtype=jnp.uint8).astype(jnp.int32)
    if row_segment is None:
        return jnp.sum(per_row)[None]
    return jax.ops.segment_sum(
        per_row, jnp.asarray(row_segment), num_segments=num_segments, indices_are_sorted=True
    )


def _per_row(values: jax.Array, row_segment: np.ndarray | None) -> jax.Array:
    """Per-segment values broadcast against the packed buffer."""
    if row_segment is None:
        return values[0]
    return values[jnp.asarray(row_segment)][:, None]


def _bisect(
    packed: jax.Array,
    k: jax.Array,
    row_segment: np.ndarray | None,
    low: jax.Array,
    high: jax.Array,
) -> jax.Array:
    """Per segment, the k-th smallest key, given count(key < low) < k <= count(key < high).

    Keeps that invariant while halving [low, high); ends at high == low + 1, where ``low`` is
    the largest value with count(key < low) < k, i.e. the k-th smallest key.
    """
    num_segments = int(k.shape[0])

    def cond(bounds):
        low, high = bounds
        return jnp.any(high - low > 1)

    def body(bounds):
        low, high = bounds
        mid = low + (high - low) // 2
        below = _counts(packed < _per_row(mid, row_segment), row_segment, num_segments) < k
        open_ = high - low > 1
        return jnp.where(open_ & below, mid, low), jnp.where(open_ & ~below, mid, high)

    return lax.while_loop(cond, body, (low, high))[0]


def _bracket(packed: jax.Array, k: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Narrow starting bounds for a single-segment bisection, from a strided sample of rows.

    The sample's quantiles around rank k/n give [low, high] with high probability; one
    counting pass checks it, and the full key range is used when the check fails, so the
    result is exact either way. Saves about a third of the passes on large trees.
    """
    rows = packed.shape[0]
    stride = max(1, rows // _SAMPLE_ROWS)
    sample = packed[::stride]
    m = sample.size
    full = (jnp.zeros((1,), jnp.uint32), jnp.full((1,), _PAD_KEY, jnp.uint32))
    if stride == 1:
        return full
    q = k.astype(jnp.float32) / n
    center = q * m
    spread = 5.0 * jnp.sqrt(m * q * (1.0 - q)) + 16.0
    r_low = jnp.floor(center - spread).astype(jnp.int32)
    r_high = jnp.ceil(center + spread).astype(jnp.int32)
    sample_low = _bisect(sample, jnp.maximum(r_low, 1), None, *full)
    sample_high = _bisect(sample, jnp.clip(r_high, 1, m), None, *full)
    low = jnp.where(r_low >= 1, sample_low, 0)
    high = jnp.where(r_high < m, jnp.minimum(sample_high, _PAD_KEY - 1) + 1, _PAD_KEY)
    under = _counts(packed < low[0], None, 1)
    over = _counts(packed < high[0], None, 1)
    ok = (under < k) & (over >= k)
    return jnp.where(ok, low, full[0]), jnp.where(ok, high, full[1])


def select_smallest(
    keys: Sequence[jax.Array], k: jax.Array, leaf_segment: Sequence[int]
) -> list[jax.Array]:
    """Marks, per segment, exactly the ``k[s]`` smallest keys; ties go to earlier positions.

    Args:
      keys: uint32 arrays (any shape, none equal to 0xFFFFFFFF); leaf order, then row-major
        order, is the tie order.
      k: int32 [num_segments], how many to select in each segment (at most its size).
      leaf_segment: for each leaf, the index of its segment.

    Returns:
      Boolean arrays shaped like ``keys``, True where selected.
    """
    num_segments = int(k.shape[0])
    packed, spans = _pack(keys, pad_each=num_segments > 1)
    if packed.shape[0] == 0:
        return [jnp.zeros(key.shape, bool) for key in keys]
    row_segment = None
    if num_segments > 1:
        row_segment = np.repeat(np.asarray(leaf_segment, np.int32), np.asarray(spans) // _ROW)
    k = jnp.maximum(k.astype(jnp.int32), 0)
    k1 = jnp.maximum(k, 1)  # k == 0 selects nothing; `take` below handles it

    if row_segment is None:
        low, high = _bracket(packed, k1, sum(key.size for key in keys))
    else:
        low = jnp.zeros((num_segments,), jnp.uint32)
        high = jnp.full((num_segments,), _PAD_KEY, jnp.uint32)
    threshold = _per_row(_bisect(packed, k1, row_segment, low, high), row_segment)
    below = packed < threshold
    ties = packed == threshold
    wanted = k - _counts(below, row_segment, num_segments)  # ties to take, per segment
    take = _per_row(wanted > 0, row_segment)

    def take_all_ties():
        return below | (ties & take)

    def take_first_ties():
        row = lax.broadcasted_iota(jnp.uint32, packed.shape, 0)
        position = row * _ROW + lax.broadcasted_iota(jnp.uint32, packed.shape, 1)
        tie_keys = jnp.where(ties, position, _PAD_KEY)
        start = jnp.zeros((num_segments,), jnp.uint32)
        end = jnp.full((num_segments,), packed.size, jnp.uint32)
        last = _bisect(tie_keys, jnp.maximum(wanted, 1), row_segment, start, end)
        return below | (ties & take & (tie_keys <= _per_row(last, row_segment)))

    tie_count = _counts(ties, row_segment, num_segments)
    selected = lax.cond(jnp.all(tie_count == wanted), take_all_ties, take_first_ties)
    flat = selected.reshape(-1)
    out, offset = [], 0
    for key, span in zip(keys, spans, strict=True):
        out.append(flat[offset : offset + key.size].reshape(key.shape))
        offset += span
    return out
