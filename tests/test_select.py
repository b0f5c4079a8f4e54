"""Specification of the selection primitives: exact rounding of s * N and the order of keys.

`round_fraction` is checked against Python's exact rational arithmetic (``Fraction``, whose
``round`` goes half to even), above 2**23 entries where float32 would be off by one, and on
products landing exactly on .5. `order_keys` must order keys as the floats, with -0.0 and +0.0
equal (ties broken by position) and NaN last.
"""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import progprune
from progprune.distributions import layer_counts
from progprune.select import order_keys, round_fraction, select_smallest

F32 = np.float32


def exact_round(fraction: float, n: int) -> int:
    """round(fraction * n) in exact arithmetic, half to even (what round() does on Fraction)."""
    return round(Fraction(float(F32(fraction))) * n)


# Eager calls: round_fraction's ops are cached by shape and dtype, not by n, so a new n costs
# no compilation; inputs are padded to 8 entries so that one shape serves every call.
def _round_many(fractions, n: int) -> np.ndarray:
    padded = np.zeros(8, F32)
    padded[: len(fractions)] = fractions
    return np.asarray(round_fraction(jnp.asarray(padded), n))[: len(fractions)]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0, exclude_max=True, width=32), min_size=1, max_size=8),
    st.one_of(st.integers(0, 2**31 - 1), st.integers(2**23, 2**26), st.integers(0, 300)),
)
def test_round_fraction_is_exact_for_float32_fractions_and_any_n(fractions, n):
    expected = [exact_round(f, n) for f in fractions]
    np.testing.assert_array_equal(_round_many(fractions, n), expected)


@st.composite
def exact_halves(draw):
    """(fraction, n) whose exact product is an odd multiple of 1/2: fraction = a / 2**e with a
    odd, n = 2**(e-1) * b with b odd, so fraction * n = a * b / 2."""
    e = draw(st.integers(1, 24))
    a = draw(st.integers(0, 2 ** (e - 1) - 1)) * 2 + 1  # odd, below 2**e: a fraction < 1
    b_max = (2**31 - 1) // 2 ** (e - 1)
    b = draw(st.integers(0, (b_max - 1) // 2)) * 2 + 1
    return a / 2**e, 2 ** (e - 1) * b


@settings(max_examples=150, deadline=None)
@given(exact_halves())
def test_round_fraction_rounds_exact_halves_to_even(case):
    fraction, n = case
    assert Fraction(fraction) * n % 1 == Fraction(1, 2)
    got = int(_round_many([fraction], n)[0])
    half_down = int(Fraction(fraction) * n)  # floor of x.5
    assert got == (half_down if half_down % 2 == 0 else half_down + 1)
    assert got == exact_round(fraction, n)


@pytest.mark.parametrize(
    "fraction,n,expected",
    [
        (0.5, 1, 0),  # 0.5 -> 0 (even)
        (0.5, 3, 2),  # 1.5 -> 2
        (0.5, 5, 2),  # 2.5 -> 2
        (0.25, 10, 2),  # 2.5 -> 2
        (0.75, 10, 8),  # 7.5 -> 8
        (0.375, 4, 2),  # 1.5 -> 2
        (0.5, 2**31 - 1, 2**30),  # 1073741823.5 -> 1073741824
        (0.0, 2**31 - 1, 0),
        (2.0**-149, 2**31 - 1, 0),  # the smallest subnormal
        (1.0 - 2.0**-24, 2**31 - 1, 2**31 - 1 - 128),  # the largest float32 below 1
    ],
)
def test_round_fraction_hand_computed(fraction, n, expected):
    assert int(_round_many([fraction], n)[0]) == expected


@pytest.mark.parametrize("n", [248_095, 11_164_352, 16_777_217, 33_554_431, 2**31 - 1])
def test_round_fraction_where_float32_products_slip(n):
    # float32(s) * n rounded to float32 loses the fraction above 2**24 (and can land on .5 below
    # it: float32(0.9) * 248,095 is 223,285.4999... exactly but 223,285.5 in float32).
    fractions = [0.9, 0.8, 0.95, 0.98, 0.99, 0.5, 0.123456789, 0.7]
    np.testing.assert_array_equal(_round_many(fractions, n), [exact_round(f, n) for f in fractions])


def test_the_slipping_cases_really_slip_in_float32():
    fractions = np.asarray([0.9, 0.8, 0.95, 0.98, 0.99, 0.123456789, 0.7], F32)
    for n in (248_095, 2**31 - 1):
        float32_rounded = np.round(fractions * F32(n)).astype(np.int64)
        assert np.any(float32_rounded != [exact_round(f, n) for f in fractions]), n


def test_round_fraction_rejects_n_out_of_range():
    for n in (-1, 2**31):
        with pytest.raises(ValueError, match=r"n must be in \[0, 2\*\*31\)"):
            round_fraction(jnp.float32(0.5), n)


def test_round_fraction_under_jit_with_traced_fraction():
    f = jax.jit(lambda s: round_fraction(s, 248_095))
    for s in (0.9, 0.5, 0.1):
        assert int(f(jnp.float32(s))) == exact_round(s, 248_095)


def test_counts_of_every_distribution_are_exact_above_2_to_the_24():
    # Layers of ~18.9M weights (37.8M in all), where float32(s) * n would be off by 1 or 2.
    shapes = [(3, 3, 2047, 1025), (3, 3, 1023, 2049), (1023, 11)]
    sizes = [int(np.prod(s)) for s in shapes]
    for fraction in (0.9, 0.7):
        s = jnp.float32(fraction)
        got = int(layer_counts(sizes, shapes, s, "global")[0])
        assert got == exact_round(fraction, sum(sizes))
        uniform = np.asarray(layer_counts(sizes, shapes, s, "uniform"))
        np.testing.assert_array_equal(uniform, [exact_round(fraction, n) for n in sizes])


# ------------------------------------------------------------------------------ order_keys


def test_order_keys_follow_float_order():
    # (XLA on CPU flushes subnormals to zero, so the smallest magnitudes here are normal.)
    x = np.array([-np.inf, -3.0e38, -1.0, -2e-38, 0.0, 2e-38, 1e-37, 0.5, 1.0, 3.0e38, np.inf], F32)
    keys = np.asarray(order_keys(jnp.asarray(x)))
    assert keys.dtype == np.uint32
    assert np.all(np.diff(keys.astype(np.int64)) > 0)  # strictly increasing
    assert keys.min() >= 1 and keys.max() < 0xFFFFFFFF  # 0 and the pad key are reserved
    nan, inf = np.asarray(order_keys(jnp.asarray([np.nan, np.inf], jnp.float32)))
    assert nan == inf  # NaN ranks with +inf: above every number, so it is never pruned first


def test_order_keys_fold_negative_zero_into_zero():
    keys = np.asarray(order_keys(jnp.asarray([-0.0, 0.0, -2e-38, 2e-38], jnp.float32)))
    assert keys[0] == keys[1]
    assert keys[2] < keys[0] < keys[3]


def test_order_keys_inactive_entries_get_zero_and_rank_first():
    keys = order_keys(jnp.asarray([-np.inf, 2.0, 0.0]), jnp.asarray([True, False, True]))
    assert np.asarray(keys).tolist()[1] == 0
    assert np.asarray(keys).min() == 0 and np.asarray(keys)[0] > 0


def test_order_keys_of_bfloat16_match_float32():
    x = jnp.asarray([-2.5, -0.0, 0.0, 0.75, 3.0], jnp.bfloat16)
    np.testing.assert_array_equal(order_keys(x), order_keys(x.astype(jnp.float32)))


def test_negative_and_positive_zero_tie_and_ties_go_to_earlier_positions():
    # Scores may be negative (GraSP) or -0.0 (e.g. -w * g with w = 0): -0.0 and +0.0 are equal
    # scores, so the two smallest of these four are the zeros at positions 0 and 1.
    prune = jax.jit(progprune.prune_to_sparsity)
    scores = {"w": jnp.asarray([[0.0, -0.0, 1.0, -0.0]], jnp.float32)}
    masks = prune(scores, 0.5)
    np.testing.assert_array_equal(np.asarray(masks["w"]), [[False, False, True, True]])
    scores = {"w": jnp.asarray([[-0.0, 2.0], [0.0, -0.0]], jnp.float32)}
    masks = prune(scores, 0.5)  # k = 2: positions 0 and 2
    np.testing.assert_array_equal(np.asarray(masks["w"]), [[False, True], [False, True]])


def test_select_smallest_with_signed_zero_keys_across_leaves():
    a = order_keys(jnp.asarray([0.0, 5.0, -0.0], jnp.float32))
    b = order_keys(jnp.asarray([-0.0, 0.0], jnp.float32))
    got = jax.jit(lambda a, b: select_smallest([a, b], jnp.asarray([2], jnp.int32), [0, 0]))(a, b)
    # Four equal zeros; the first two positions go (were -0.0 below +0.0: a[2] and b[0]).
    assert [np.asarray(x).tolist() for x in got] == [[True, False, True], [False, False]]


def test_select_smallest_rejects_segments_that_are_not_runs():
    keys = [jnp.ones(3, jnp.uint32)] * 3
    with pytest.raises(ValueError, match="segments must be consecutive runs"):
        select_smallest(keys, jnp.asarray([1, 1], jnp.int32), [0, 1, 0])
    with pytest.raises(ValueError, match="segments must be consecutive runs"):
        select_smallest(keys, jnp.asarray([1, 1, 1], jnp.int32), [0, 2, 2])


@pytest.mark.parametrize("n", [2**31 - 1, 1_999_999_999, 123_456_789, 11_173_962])
def test_round_fraction_is_exact_in_every_binade(n):
    # Uniform draws rarely reach small binades, where the shift crosses the 32-bit word boundary
    # of the 64-bit product (a fraction in [2**-9, 2**-8) shifts by exactly 32): 8 fractions
    # from each binade [2**-e, 2**-(e-1)), for e = 1..60.
    rng = np.random.default_rng(n)
    for e in range(1, 61):
        fractions = (2.0**-e * (1 + rng.random(8))).astype(F32)
        expected = [exact_round(f, n) for f in fractions]
        np.testing.assert_array_equal(_round_many(fractions, n), expected, err_msg=f"2**-{e}")


def test_round_fraction_sees_a_sticky_bit_in_the_products_high_word():
    # 2**-17 * 328,192 = 2.50390625: just above a half, and the one bit that says so is bit 32
    # of the 64-bit product (2**23 * 328,192 = 641 * 2**32, shifted right by 40).
    assert exact_round(2.0**-17, 328_192) == 3
    np.testing.assert_array_equal(_round_many([2.0**-17], 328_192), [3])
