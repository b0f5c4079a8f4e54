"""Every bad input raises one clear ValueError naming the argument (and the allowed range)."""

import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import progprune

PARAMS = {"Dense_0": {"bias": jnp.zeros(3), "kernel": jnp.ones((2, 3))}}
RANGE = r"\[0(\.0)?, ?1(\.0)?\)"  # "[0, 1)"


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan")])
@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda s: progprune.linear_schedule(s, 0, 10), "final_sparsity"),
        (lambda s: progprune.polynomial_schedule(s, 0, 10), "final_sparsity"),
        (lambda s: progprune.cosine_schedule(s, 0, 10), "final_sparsity"),
        (lambda s: progprune.linear_schedule(0.5, 0, 10, initial_sparsity=s), "initial_sparsity"),
        (
            lambda s: progprune.polynomial_schedule(0.5, 0, 10, initial_sparsity=s),
            "initial_sparsity",
        ),
        (lambda s: progprune.cosine_schedule(0.5, 0, 10, initial_sparsity=s), "initial_sparsity"),
        (lambda s: progprune.one_shot_schedule(s, 5), "sparsity"),
        (lambda s: progprune.constant_schedule(s), "sparsity"),
        (lambda s: progprune.prune_to_sparsity(PARAMS, s), "sparsity"),
        (lambda s: progprune.erk_densities(PARAMS, s), "sparsity"),
    ],
)
def test_sparsity_outside_unit_interval(make, name, bad):
    message = _raises(rf"\b{name}\b", make, bad)
    assert re.search(RANGE, message), message


@pytest.mark.parametrize(
    "make",
    [progprune.linear_schedule, progprune.polynomial_schedule, progprune.cosine_schedule],
)
def test_end_before_begin(make):
    message = _raises(r"\bend_step\b", make, 0.5, begin_step=10, end_step=5)
    assert "begin_step" in message


@pytest.mark.parametrize(
    "make", [progprune.linear_schedule, progprune.polynomial_schedule, progprune.cosine_schedule]
)
@pytest.mark.parametrize(
    ("begin", "end", "match"),
    [
        (5, 5, r"end_step must be greater than begin_step"),
        (-1, 10, r"begin_step must be >= 0, got -1"),
        (1.5, 10, r"begin_step and end_step must be integers"),
        (0, 10.5, r"begin_step and end_step must be integers"),
    ],
)
def test_ramp_steps(make, begin, end, match):
    _raises(match, make, 0.5, begin_step=begin, end_step=end)


@pytest.mark.parametrize("bad", ["lots", None, [0.5]])
def test_sparsity_that_is_not_a_number(bad):
    message = _raises(
        r"final_sparsity must be a number in \[0, 1\), got", progprune.linear_schedule, bad, 0, 10
    )
    assert repr(bad) in message


@pytest.mark.parametrize("step", [-1, 2.5])
def test_one_shot_step(step):
    _raises(r"step must be an integer >= 0", progprune.one_shot_schedule, 0.5, step)


@pytest.mark.parametrize("power", [0.0, -1.0])
def test_polynomial_power(power):
    _raises(r"power must be positive", progprune.polynomial_schedule, 0.5, 0, 10, power=power)


def test_sparsity_check_returns_a_python_float():
    from progprune.schedules import check_sparsity

    for value in (np.float32(0.25), jnp.float32(0.25), np.asarray(0.25), 0.25):
        got = check_sparsity(value, "sparsity")
        assert type(got) is float and got == 0.25


@pytest.mark.parametrize("update_every", [0, -3])
def test_update_every_below_one(update_every):
    message = _raises(
        r"\bupdate_every\b",
        progprune.masked,
        optax.sgd(0.1),
        progprune.constant_schedule(0.5),
        update_every=update_every,
    )
    assert "1" in message


def _masked_init(**kw):
    progprune.masked(optax.sgd(0.1), progprune.constant_schedule(0.5), **kw).init(PARAMS)


def _updater_call(**kw):
    progprune.mask_updater(progprune.constant_schedule(0.5), **kw)(PARAMS, 0)


@pytest.mark.parametrize(
    "fn",
    [
        _masked_init,
        _updater_call,
        lambda **kw: progprune.prune_to_sparsity(PARAMS, 0.5, **kw),
        lambda **kw: progprune.erk_densities(PARAMS, 0.5, **kw),
    ],
    ids=["masked.init", "mask_updater", "prune_to_sparsity", "erk_densities"],
)
@pytest.mark.parametrize(
    "prunable", ["no_such_layer", lambda path, leaf: False], ids=["regex", "predicate"]
)
def test_prunable_selecting_nothing(fn, prunable):
    _raises(r"\bprunable\b", fn, prunable=prunable)


def test_default_prunable_selecting_nothing():
    only_biases = {"bias": jnp.zeros(3)}
    _raises(r"\bprunable\b", progprune.prune_to_sparsity, only_biases, 0.5)


@pytest.mark.parametrize(
    "fn",
    [
        _masked_init,
        _updater_call,
        # Refused when the updater is built, before any call.
        lambda **kw: progprune.mask_updater(progprune.constant_schedule(0.5), **kw),
        lambda **kw: progprune.prune_to_sparsity(PARAMS, 0.5, **kw),
    ],
    ids=["masked", "mask_updater", "mask_updater_built", "prune_to_sparsity"],
)
def test_unknown_distribution(fn):
    message = _raises(r"\bdistribution\b", fn, distribution="gloabl")
    assert "gloabl" in message
    for allowed in ("global", "uniform"):
        assert allowed in message


WRONG_MASKS = [
    {"Dense_0": {"kernel": jnp.ones((2, 3), bool)}},  # a leaf missing
    {"Dense_0": {"bias": jnp.ones(3, bool), "kernel": jnp.ones((3, 2), bool)}},  # wrong shape
    [jnp.ones(3, bool), jnp.ones((2, 3), bool)],  # wrong container
]


@pytest.mark.parametrize("masks", WRONG_MASKS, ids=["missing", "shape", "container"])
def test_set_masks_structure_mismatch(masks):
    state = progprune.masked(optax.sgd(0.1), None).init(PARAMS)
    _raises(r"\bmasks\b", progprune.set_masks, state, masks)


@pytest.mark.parametrize("masks", WRONG_MASKS, ids=["missing", "shape", "container"])
def test_update_masks_structure_mismatch(masks):
    update = progprune.mask_updater(progprune.constant_schedule(0.5))
    _raises(r"\bmasks\b", update, PARAMS, 0, masks=masks)
    _raises(r"\bmasks\b", progprune.prune_to_sparsity, PARAMS, 0.5, masks=masks)
