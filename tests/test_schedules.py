"""Specification of the sparsity schedules: exact values, dtype, jit/vmap with traced steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import progprune

STEPS = np.arange(-5, 140)


def _frac(t, begin, end):
    return np.clip((t - begin) / (end - begin), 0.0, 1.0)


def _linear_ref(t, final, begin, end, initial):
    return initial + (final - initial) * _frac(t, begin, end)


def _poly_ref(t, final, begin, end, initial, power):
    return final + (initial - final) * (1.0 - _frac(t, begin, end)) ** power


def _cosine_ref(t, final, begin, end, initial):
    return initial + (final - initial) * 0.5 * (1.0 - np.cos(np.pi * _frac(t, begin, end)))


def _values(schedule, steps=STEPS):
    """Schedule values at `steps`, computed under jit+vmap with traced int32 steps."""
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        (progprune.linear_schedule(0.8, begin_step=10, end_step=110), 0, 0.0),
        (progprune.linear_schedule(0.8, begin_step=10, end_step=110), 10, 0.0),
        (progprune.linear_schedule(0.8, begin_step=10, end_step=110), 60, 0.4),
        (progprune.linear_schedule(0.8, begin_step=10, end_step=110), 110, 0.8),
        (progprune.linear_schedule(0.8, begin_step=10, end_step=110), 10_000, 0.8),
        (progprune.linear_schedule(0.9, 0, 100, initial_sparsity=0.5), 0, 0.5),
        (progprune.linear_schedule(0.9, 0, 100, initial_sparsity=0.5), 50, 0.7),
        (progprune.polynomial_schedule(0.8, 0, 100), 0, 0.0),
        # 0.8 + (0 - 0.8) * (1 - 0.5) ** 3 = 0.7: Zhu & Gupta's cubic schedule.
        (progprune.polynomial_schedule(0.8, 0, 100), 50, 0.7),
        (progprune.polynomial_schedule(0.8, 0, 100), 100, 0.8),
        (progprune.polynomial_schedule(0.8, 0, 100, power=1.0), 25, 0.2),
        (progprune.polynomial_schedule(0.8, 0, 100, initial_sparsity=0.4, power=2.0), 50, 0.7),
        (progprune.cosine_schedule(0.8, 0, 100), 0, 0.0),
        (progprune.cosine_schedule(0.8, 0, 100), 50, 0.4),
        (progprune.cosine_schedule(0.8, 0, 100), 100, 0.8),
        (progprune.cosine_schedule(0.8, 0, 100, initial_sparsity=0.2), 50, 0.5),
        (progprune.one_shot_schedule(0.7, 5), 0, 0.0),
        (progprune.one_shot_schedule(0.7, 5), 4, 0.0),
        (progprune.one_shot_schedule(0.7, 5), 5, 0.7),
        (progprune.one_shot_schedule(0.7, 5), 1_000_000, 0.7),
        (progprune.constant_schedule(0.3), 0, 0.3),
        (progprune.constant_schedule(0.3), 123_456, 0.3),
        (progprune.constant_schedule(0.0), 7, 0.0),
    ],
)
def test_hand_computed_values(schedule, step, expected):
    # Python int, numpy int and traced int32 steps all give the same float32 scalar.
    for s in (step, np.int32(step), jnp.asarray(step, jnp.int32)):
        value = schedule(s)
        assert jnp.asarray(value).dtype == jnp.float32
        assert jnp.shape(value) == ()
        np.testing.assert_allclose(float(value), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(float(jax.jit(schedule)(step)), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("final", "begin", "end"), [(0.9, 0, 100), (0.5, 20, 120), (0.95, 3, 7)])
def test_linear_matches_formula(final, begin, end):
    for init in (0.0, 0.25):
        got = _values(progprune.linear_schedule(final, begin, end, initial_sparsity=init))
        np.testing.assert_allclose(got, _linear_ref(STEPS, final, begin, end, init), atol=1e-6)


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
def test_polynomial_matches_formula(power):
    for begin, end, init in [(0, 100, 0.0), (10, 130, 0.3)]:
        sched = progprune.polynomial_schedule(0.9, begin, end, initial_sparsity=init, power=power)
        ref = _poly_ref(STEPS, 0.9, begin, end, init, power)
        np.testing.assert_allclose(_values(sched), ref, atol=1e-6)


def test_polynomial_default_power_is_three():
    default = _values(progprune.polynomial_schedule(0.9, 0, 100))
    cubic = _values(progprune.polynomial_schedule(0.9, 0, 100, power=3.0))
    np.testing.assert_array_equal(default, cubic)


def test_cosine_matches_formula():
    for begin, end, init in [(0, 100, 0.0), (10, 130, 0.3)]:
        sched = progprune.cosine_schedule(0.9, begin, end, initial_sparsity=init)
        np.testing.assert_allclose(
            _values(sched), _cosine_ref(STEPS, 0.9, begin, end, init), atol=1e-6
        )


def test_one_shot_and_constant_under_vmap():
    np.testing.assert_allclose(
        _values(progprune.one_shot_schedule(0.6, 30)), np.where(STEPS >= 30, 0.6, 0.0), atol=1e-7
    )
    np.testing.assert_allclose(
        _values(progprune.constant_schedule(0.6)), np.full(STEPS.shape, 0.6), atol=1e-7
    )


@pytest.mark.parametrize(
    "schedule",
    [
        progprune.linear_schedule(0.9, 0, 100),
        progprune.polynomial_schedule(0.9, 0, 100),
        progprune.cosine_schedule(0.9, 0, 100),
        progprune.one_shot_schedule(0.9, 50),
    ],
)
def test_monotone_non_decreasing_and_bounded(schedule):
    values = _values(schedule)
    assert np.all(np.diff(values) >= -1e-7)
    assert values.min() >= 0.0 and values.max() <= 0.9 + 1e-6


@pytest.mark.parametrize("as_array", [False, True])
def test_schedule_does_not_recompile_for_new_steps(as_array):
    traces = []

    def traced(step):
        traces.append(1)  # Python side effect: runs once per trace.
        return progprune.linear_schedule(0.9, 0, 100)(step)

    f = jax.jit(traced)
    for step in range(0, 120, 7):
        f(jnp.asarray(step, jnp.int32) if as_array else step)
    assert len(traces) == 1


@pytest.mark.parametrize(
    "make", [progprune.linear_schedule, progprune.polynomial_schedule, progprune.cosine_schedule]
)
def test_ramps_end_exactly_on_the_final_sparsity(make):
    # float32(0.01) + float32(0.3 - 0.01) is one ulp off float32(0.3): the end of the ramp must
    # give the final value itself, or round(s * N) can miss the target count.
    assert np.float32(0.01) + np.float32(0.3 - 0.01) != np.float32(0.3)
    schedule = make(0.3, begin_step=2, end_step=12, initial_sparsity=0.01)
    for step in (12, 13, 1000):
        assert schedule(step) == np.float32(0.3), step
    assert schedule(0) == np.float32(0.01) and schedule(2) == np.float32(0.01)


def test_one_shot_at_step_zero_and_the_edges_of_validity():
    schedule = progprune.one_shot_schedule(0.5, step=0)  # prune at the very first step
    assert schedule(0) == np.float32(0.5)
    assert 0 < progprune.polynomial_schedule(0.5, 0, 10, power=1e-3)(5) < 0.5  # any power > 0
    assert progprune.linear_schedule(0.5, begin_step=0, end_step=1)(1) == np.float32(0.5)
