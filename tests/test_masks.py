"""Specification of mask computation: exact small trees, a numpy top-k reference, ERK.

The reference for global pruning: concatenate |w| (float32) of the prunable leaves in
tree-flatten order, stable argsort, prune the first k = round(sparsity * N). Already-pruned
entries rank below every active weight; masks only shrink. Uniform: the same per leaf.
"""

import functools

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import progprune

F32 = np.float32


def _a(x, dtype=jnp.float32):
    return jnp.asarray(np.asarray(x, dtype=np.float64), dtype)


def _np_leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def reference_masks(scores, sparsity, flags, old=None, distribution="global"):
    """Numpy reference: list of bool arrays (one per leaf, flatten order)."""
    scores = [np.asarray(jnp.asarray(s, jnp.float32)) for s in scores]
    old = [np.ones(s.shape, bool) for s in scores] if old is None else [np.asarray(m) for m in old]
    out = [o.copy() for o in old]
    groups = [[i] for i, f in enumerate(flags) if f]
    if distribution == "global":
        groups = [[i for i, f in enumerate(flags) if f]]
    for idx in groups:
        key = np.concatenate([scores[i].ravel() for i in idx]).astype(F32)
        active = np.concatenate([old[i].ravel() for i in idx])
        key = np.where(active, key, -np.inf)  # Already-pruned entries rank first.
        k = round(float(F32(sparsity)) * key.size)
        order = np.argsort(key, kind="stable")
        keep = np.ones(key.size, bool)
        keep[order[:k]] = False
        keep &= active  # Masks only shrink.
        offsets = np.cumsum([0] + [scores[i].size for i in idx])
        for j, i in enumerate(idx):
            out[i] = keep[offsets[j] : offsets[j + 1]].reshape(scores[i].shape)
    return out


def _assert_masks_equal(got, expected_leaves, like):
    assert jax.tree.structure(got) == jax.tree.structure(like)
    for g, e, p in zip(jax.tree.leaves(got), expected_leaves, jax.tree.leaves(like), strict=True):
        assert g.dtype == jnp.bool_
        assert g.shape == p.shape
        np.testing.assert_array_equal(np.asarray(g), e)


# Eager calls compile op by op for every new shape (seconds each on a loaded CPU), so most
# tests go through jitted functions whose sparsity is traced: one compile per tree layout.
# The schedule below gives sparsity = step / 10_000 for steps in [0, 9900].
SCHEDULE = progprune.linear_schedule(0.99, begin_step=0, end_step=9900)


def _step(sparsity):
    return round(sparsity * 10_000)


@functools.cache
def _jit_updater(distribution="global", prunable=None):
    return jax.jit(progprune.mask_updater(SCHEDULE, distribution=distribution, prunable=prunable))


@functools.cache
def _jit_pruner(distribution="global"):
    return jax.jit(functools.partial(progprune.prune_to_sparsity, distribution=distribution))


def update(params, sparsity, masks=None, **kwargs):
    """mask_updater at a step where the schedule gives `sparsity` (to 1e-4), jitted."""
    return _jit_updater(**kwargs)(params, _step(sparsity), masks=masks)


def prune(scores, sparsity, masks=None, distribution="global"):
    """prune_to_sparsity, jitted with a traced sparsity."""
    return _jit_pruner(distribution)(scores, jnp.float32(sparsity), masks=masks)


# ---------------------------------------------------------------- exact small trees

SMALL = {
    "a": _a([[3.0, 1.0], [2.0, 4.0]]),
    "b": _a([[-0.5, 5.0, 0.1]]),
    "c": _a([0.01, 0.02]),  # rank 1: a bias, never pruned by default
}


def test_exact_global_small_tree():
    # |w| in flatten order: a = 3 1 2 4, b = .5 5 .1 -> the 3 smallest: b[2], b[0], a[1].
    expected = {
        "a": np.array([[True, False], [True, True]]),
        "b": np.array([[False, True, False]]),
        "c": np.array([True, True]),
    }
    scores = jax.tree.map(jnp.abs, SMALL)
    for masks in (
        prune(scores, 3 / 7),
        update(SMALL, 3 / 7),
    ):
        _assert_masks_equal(masks, jax.tree.leaves(expected), SMALL)


def test_exact_uniform_small_tree():
    # Per leaf k = round(n / 3): a -> 1 (the 1.0), b -> 1 (the 0.1).
    masks = prune(jax.tree.map(jnp.abs, SMALL), 1 / 3, distribution="uniform")
    expected = [
        np.array([[True, False], [True, True]]),
        np.array([[True, True, False]]),
        np.array([True, True]),
    ]
    _assert_masks_equal(masks, expected, SMALL)


def test_ties_are_broken_by_position_earlier_first():
    params = {"x": _a([[1.0, -1.0], [1.0, 1.0]]), "y": _a([[-1.0, 1.0]])}
    _assert_masks_equal(
        update(params, 0.5),
        [np.array([[False, False], [False, True]]), np.array([[True, True]])],
        params,
    )
    masks = prune(jax.tree.map(jnp.abs, params), 5 / 6)
    _assert_masks_equal(masks, [np.zeros((2, 2), bool), np.array([[False, True]])], params)


def test_ties_follow_tree_flatten_order_not_insertion_order():
    # dicts flatten in sorted-key order, so "a" comes before "b" although inserted later.
    params = {"b": _a([[2.0, 2.0]]), "a": _a([[2.0, 2.0]])}
    masks = prune(jax.tree.map(jnp.abs, params), 0.5)
    assert not np.asarray(masks["a"]).any()
    assert np.asarray(masks["b"]).all()


def test_all_equal_weights_uniform_prunes_leading_entries():
    params = {"x": jnp.full((2, 2), 2.0), "y": jnp.full((1, 4), 2.0)}
    masks = prune(jax.tree.map(jnp.abs, params), 0.5, distribution="uniform")
    _assert_masks_equal(
        masks,
        [np.array([[False, False], [True, True]]), np.array([[False, False, True, True]])],
        params,
    )


def test_all_equal_weights_global():
    params = {"x": jnp.full((3, 3), 0.7)}
    for k in range(9):  # sparsity 1 is out of range
        masks = update(params, k / 9)
        expected = np.arange(9).reshape(3, 3) >= k
        _assert_masks_equal(masks, [expected], params)


def test_old_masks_rank_first_and_masks_only_shrink():
    params = {"x": _a([[1.0, 2.0], [3.0, 4.0]])}
    old = {"x": jnp.array([[True, True], [True, False]])}  # the largest weight is already pruned
    # k = 2: the pruned 4.0 plus the smallest active 1.0.
    _assert_masks_equal(
        update(params, 0.5, masks=old), [np.array([[False, True], [True, False]])], params
    )
    # k = 1 or 0 <= already pruned: nothing is revived.
    for s in (0.25, 0.0):
        _assert_masks_equal(update(params, s, masks=old), [np.asarray(old["x"])], params)
    # Same through prune_to_sparsity with explicit scores.
    got = prune(jax.tree.map(jnp.abs, params), 0.5, masks=old)
    _assert_masks_equal(got, [np.array([[False, True], [True, False]])], params)


def test_pruned_entries_rank_below_active_zero_weights():
    params = {"x": _a([[0.0, 9.0, 0.0, 5.0]])}
    old = {"x": jnp.array([[True, False, True, True]])}
    got = update(params, 0.5, masks=old)
    _assert_masks_equal(got, [np.array([[False, False, True, True]])], params)


def test_scores_can_be_negative():
    scores = {"x": _a([[-3.0, 2.0, -1.0, 0.0]])}
    got = prune(scores, 0.5)
    _assert_masks_equal(got, [np.array([[False, True, False, True]])], scores)


def test_zero_sparsity_keeps_everything():
    masks = update(SMALL, 0.0)
    _assert_masks_equal(masks, [np.ones(x.shape, bool) for x in jax.tree.leaves(SMALL)], SMALL)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_a_traced_low_precision_sparsity_counts_as_its_float32_value(dtype):
    # round(s * N) is taken in float32 whatever dtype a traced sparsity arrives in.
    scores = {"w": jnp.asarray(np.random.default_rng(0).random((37, 41)), jnp.float32)}
    sparsity = jnp.asarray(0.3, dtype)
    traced = jax.jit(progprune.prune_to_sparsity)(scores, sparsity)["w"]
    k = round(float(np.float32(sparsity)) * 37 * 41)
    assert int((~traced).sum()) == k
    concrete = progprune.prune_to_sparsity(scores, float(np.float32(sparsity)))["w"]
    np.testing.assert_array_equal(traced, concrete)


def test_schedule_value_at_traced_step_is_used():
    sched = progprune.linear_schedule(6 / 7, begin_step=0, end_step=6)
    update = jax.jit(progprune.mask_updater(sched))
    for step in range(8):
        masks = update(SMALL, step)
        pruned = sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(masks))
        assert pruned == min(step, 6)


# ------------------------------------------------------------ pytree kinds and dtypes


def _mixed_tree(rng):
    return {
        "bf16": jnp.asarray(rng.normal(size=(3, 4)), jnp.bfloat16),
        "conv": jnp.asarray(rng.normal(size=(2, 2, 1, 3)), jnp.float32),
        "empty": jnp.zeros((0, 5), jnp.float32),
        "int": jnp.asarray(rng.integers(-5, 5, size=(3, 3)), jnp.int32),
        "vec": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
    }


@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: t,
        FrozenDict,
        lambda t: [t["bf16"], (t["conv"], t["empty"]), t["int"], t["vec"]],
        lambda t: nnx.State(t),
    ],
    ids=["dict", "FrozenDict", "list-tuple", "nnx.State"],
)
@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_any_pytree_mixed_dtypes_zero_size_and_int_leaves(wrap, distribution):
    params = wrap(_mixed_tree(np.random.default_rng(0)))
    leaves = _np_leaves(params)
    flags = [x.ndim >= 2 and not np.issubdtype(x.dtype, np.integer) for x in leaves]
    expected = reference_masks(
        [np.abs(x.astype(F32)) for x in leaves], 0.4, flags, distribution=distribution
    )
    _assert_masks_equal(update(params, 0.4, distribution=distribution), expected, params)


def test_only_empty_prunable_leaves_select_nothing():
    tree = {"w": jnp.zeros((0, 3)), "b": jnp.ones(4)}
    for distribution in ("global", "uniform", "erk"):
        masks = prune(tree, 0.5, distribution=distribution)
        assert masks["w"].shape == (0, 3) and masks["w"].dtype == jnp.bool_
        assert bool(jnp.all(masks["b"]))


def test_nnx_model_state():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(3, 4, rngs=rngs)
            self.l2 = nnx.Linear(4, 2, rngs=rngs)

    state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
    for params in (state, nnx.as_pure(state)):
        leaves = _np_leaves(params)
        flags = [x.ndim >= 2 for x in leaves]
        masks = update(params, 0.5)
        _assert_masks_equal(masks, reference_masks([np.abs(x) for x in leaves], 0.5, flags), params)


def test_integer_leaves_never_pruned_even_when_selected():
    params = {"int": jnp.arange(6, dtype=jnp.int32).reshape(2, 3), "w": _a([[1.0, 2.0]])}
    masks = update(params, 0.5, prunable=".*")
    assert np.asarray(masks["int"]).all()
    np.testing.assert_array_equal(np.asarray(masks["w"]), [[False, True]])
    assert progprune.prunable_mask(params, ".*")["int"] is False


# ------------------------------------------------------------------------ prunable

LINEN = {
    "params": {
        "BatchNorm_0": {"bias": jnp.zeros(4), "scale": jnp.ones(4)},
        "Conv_0": {"bias": jnp.zeros(2), "kernel": jnp.ones((3, 3, 1, 2))},
        "Dense_0": {"bias": jnp.zeros(4), "kernel": jnp.ones((3, 4))},
    },
    "table": jnp.ones((2, 2), jnp.int32),
}


def _selected(flags):
    paths = jax.tree_util.tree_flatten_with_path(flags)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p) for p, f in paths if f
    }


def test_prunable_default_is_float_rank_ge_2():
    flags = progprune.prunable_mask(LINEN)
    assert jax.tree.structure(flags) == jax.tree.structure(LINEN)
    assert all(isinstance(f, bool) for f in jax.tree.leaves(flags))
    assert _selected(flags) == {"params/Conv_0/kernel", "params/Dense_0/kernel"}


def test_prunable_regex_searches_slash_joined_path():
    assert _selected(progprune.prunable_mask(LINEN, "Dense_0/kernel")) == {"params/Dense_0/kernel"}
    assert _selected(progprune.prunable_mask(LINEN, r"^params/.*/bias$")) == {
        "params/BatchNorm_0/bias",
        "params/Conv_0/bias",
        "params/Dense_0/bias",
    }
    # The integer leaf matches the regex but is never prunable.
    assert _selected(progprune.prunable_mask(LINEN, "table|Dense_0/k")) == {"params/Dense_0/kernel"}


def test_prunable_regex_on_sequences():
    params = [{"w": jnp.ones((2, 2))}, ({"w": jnp.ones((2, 2))},)]
    flags = progprune.prunable_mask(params, r"^1/0/w$")
    assert flags == [{"w": False}, ({"w": True},)]


def test_prunable_predicate_gets_path_and_leaf():
    seen = {}

    def pred(path, leaf):
        seen[path] = leaf.shape
        return path.endswith("kernel") and leaf.shape[-1] == 4

    flags = progprune.prunable_mask(LINEN, pred)
    assert _selected(flags) == {"params/Dense_0/kernel"}
    assert seen["params/Conv_0/kernel"] == (3, 3, 1, 2)
    assert seen["params/BatchNorm_0/scale"] == (4,)


def test_prunable_regex_drives_masks():
    params = {"Dense_0": {"kernel": _a([[1.0, 2.0]])}, "Dense_1": {"kernel": _a([[0.1, 0.2]])}}
    masks = update(params, 0.5, prunable="Dense_0")
    np.testing.assert_array_equal(np.asarray(masks["Dense_0"]["kernel"]), [[False, True]])
    assert np.asarray(masks["Dense_1"]["kernel"]).all()


# --------------------------------------------------------- hypothesis vs numpy reference


# A few fixed layouts (shapes, dtypes, rank-1 leaves) keep the jit cache warm across examples;
# the values, ties, old masks and sparsity vary. Sizes are multiples of 4 or 8, so that dyadic
# sparsities (a / 2**e) often make s * N land exactly on .5: the reference rounds those half
# to even, in exact arithmetic (float64 holds float32(s) * N exactly at these sizes).
LAYOUTS = [
    {"a": ((3, 4), jnp.float32), "b": ((4,), jnp.float32), "c": ((2, 2, 2), jnp.bfloat16)},
    {"a": ((1, 7), jnp.float32)},
]


@st.composite
def trees(draw, layouts=LAYOUTS):
    """A tree of a fixed layout; values from a seed, coarse grids force ties."""
    layout = layouts[draw(st.integers(0, len(layouts) - 1))]
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    ties = draw(st.booleans())
    tree = {}
    for name, (shape, dtype) in layout.items():
        x = rng.integers(-3, 4, size=shape) / 2 if ties else rng.normal(size=shape)
        tree[name] = jnp.asarray(x, dtype)
    old_seed = draw(st.one_of(st.none(), st.integers(0, 2**31 - 1)))
    return tree, old_seed


# Float32 fractions of every kind, and dyadic ones that put s * N on .5 for sizes with factors 2.
sparsities = st.one_of(
    st.floats(0.0, 1.0, exclude_max=True, width=32),
    st.integers(1, 8).flatmap(lambda e: st.integers(0, 2**e - 1).map(lambda a: a / 2**e)),
)


def _old_masks(tree, seed, density=0.7):
    """Random old masks on the prunable leaves; non-prunable leaves all-true."""
    if seed is None:
        return None
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(
            rng.random(x.shape) < density if x.ndim >= 2 else np.ones(x.shape, bool)
        ),
        tree,
    )


def _all_true(tree):
    return jax.tree.map(lambda x: jnp.ones(x.shape, bool), tree)


# A schedule whose step is the bit pattern of the sparsity: any float32 sparsity reaches the
# jitted updater as a traced int32 step.
def _bits_schedule(step):
    return jax.lax.bitcast_convert_type(jnp.asarray(step, jnp.int32), jnp.float32)


def _bits(sparsity: float) -> int:
    return int(np.float32(sparsity).view(np.int32))


@functools.cache
def _jit_bits_updater(distribution="global"):
    return jax.jit(progprune.mask_updater(_bits_schedule, distribution=distribution))


def _check_against_reference(tree, old, sparsity, distribution, via_updater=True):
    leaves = _np_leaves(tree)
    flags = [x.ndim >= 2 for x in leaves]
    expected = reference_masks(
        [np.abs(x.astype(F32)) for x in leaves],
        sparsity,
        flags,
        old=None if old is None else jax.tree.leaves(old),
        distribution=distribution,
    )
    # All-true old masks stand for "no masks" (that path is covered by the exact tests above),
    # which halves the number of compilations.
    old = old if old is not None else _all_true(tree)
    if via_updater:
        got = _jit_bits_updater(distribution)(tree, _bits(sparsity), masks=old)
        _assert_masks_equal(got, expected, tree)
    scores = jax.tree.map(lambda x: jnp.abs(x.astype(jnp.float32)), tree)
    _assert_masks_equal(
        prune(scores, sparsity, masks=old, distribution=distribution), expected, tree
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), sparsities, st.sampled_from(["global", "uniform"]))
def test_matches_numpy_reference(tree_and_old, sparsity, distribution):
    tree, old_seed = tree_and_old
    _check_against_reference(tree, _old_masks(tree, old_seed), sparsity, distribution)


def test_reference_rounds_exact_halves_to_even():
    # 20 prunable entries of LAYOUTS[0] at 0.375 (global) -> 7.5 -> 8; at 0.125 -> 2.5 -> 2;
    # per layer (uniform): 12 * 0.125 = 1.5 -> 2 and 8 * 0.125 = 1 -> 1.
    tree = {
        "a": jnp.arange(1.0, 13.0).reshape(3, 4),
        "b": jnp.ones(4),
        "c": jnp.arange(20.0, 12.0, -1.0, dtype=jnp.bfloat16).reshape(2, 2, 2),
    }
    for sparsity, distribution, pruned in [
        (0.375, "global", 8),
        (0.125, "global", 2),
        (0.125, "uniform", 3),
        (0.625, "global", 12),  # 12.5 -> 12
        (0.875, "uniform", 17),  # 10.5 -> 10 and 7 -> 7
    ]:
        got = _jit_bits_updater(distribution)(tree, _bits(sparsity), masks=_all_true(tree))
        assert sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(got)) == pruned
        _check_against_reference(tree, None, sparsity, distribution)


# Layouts whose leaves span several 128-entry rows with partial last rows, one of them large
# enough (248,095 prunable entries > 2 * 256 * 128) for the sampled bracket.
MULTI_ROW_LAYOUTS = [
    {
        "a": ((130, 4), jnp.float32),
        "b": ((3, 3, 4, 6), jnp.float32),
        "bias": ((129,), jnp.float32),
        "c": ((1, 200), jnp.float32),
    },
]
BRACKET_LAYOUT = {
    k: (shape, jnp.float32)
    for k, shape in {"a": (300, 700), "b": (3, 3, 64, 65), "bias": (129,), "c": (5, 131)}.items()
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(MULTI_ROW_LAYOUTS), sparsities, st.sampled_from(["global", "uniform"]))
def test_multi_row_trees_match_numpy_reference(tree_and_old, sparsity, distribution):
    tree, old_seed = tree_and_old
    _check_against_reference(tree, _old_masks(tree, old_seed), sparsity, distribution)


@st.composite
def bracket_trees(draw):
    """Values drawn to stress the sampled bracket: ties, a misleading sample, many zeros."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["normal", "ties", "misleading_sample", "zeros"]))
    tree = {}
    for name, (shape, _) in BRACKET_LAYOUT.items():
        n = int(np.prod(shape))
        if kind == "ties":
            x = rng.integers(-20, 21, size=n) / 4
        elif kind == "misleading_sample":  # the sampled rows (every 7th) hold the small values
            x = np.where(
                np.arange(n) // 128 % 7 == 0, rng.uniform(0, 1e-3, n), rng.uniform(1, 2, n)
            )
        elif kind == "zeros":
            x = rng.normal(size=n) * (rng.random(n) < 0.5)
        else:
            x = rng.normal(size=n)
        tree[name] = jnp.asarray(x.reshape(shape), jnp.float32)
    old_seed = draw(st.one_of(st.none(), st.integers(0, 2**31 - 1)))
    density = draw(st.sampled_from([0.3, 0.9]))
    return tree, _old_masks(tree, old_seed, density)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bracket_trees(), sparsities)
def test_bracket_sized_trees_match_numpy_reference(tree_and_old, sparsity):
    tree, old = tree_and_old
    _check_against_reference(tree, old, sparsity, "global", via_updater=False)


def _moved(tree, seed):
    """The weights after some training: every entry moved by a random amount."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (x + rng.normal(size=x.shape)).astype(x.dtype), tree)


@settings(max_examples=25, deadline=None)
@given(
    trees(LAYOUTS + MULTI_ROW_LAYOUTS),
    st.lists(st.tuples(sparsities, st.integers(0, 2**31 - 1)), min_size=2, max_size=5),
)
def test_masks_only_shrink_while_weights_move(tree_and_old, updates):
    """Step by step, as in training: the weights move between updates and the sparsity is
    drawn in any order; each new mask is a subset of the previous one, and exactly
    max(round(s * N), already pruned) entries are pruned."""
    tree, old_seed = tree_and_old
    n = sum(x.size for x in jax.tree.leaves(tree) if x.ndim >= 2)
    masks = _old_masks(tree, old_seed) or _all_true(tree)
    for sparsity, seed in updates:
        tree = _moved(tree, seed)
        new = _jit_bits_updater()(tree, _bits(sparsity), masks=masks)
        for o, m in zip(jax.tree.leaves(masks), jax.tree.leaves(new), strict=True):
            assert not np.any(np.asarray(m) & ~np.asarray(o))  # nothing revived
        before = sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(masks))
        after = sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(new))
        assert after == max(round(float(F32(sparsity)) * n), before)
        masks = new


# ---------------------------------------------------------------------------- ERK


def _density_by_path(densities, params):
    """Accept either a pytree shaped like params or a dict keyed by '/'-joined path."""
    flags = progprune.prunable_mask(params)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p) for p, _ in flat]
    if (
        isinstance(densities, dict)
        and set(paths) >= set(densities)
        and all(isinstance(k, str) and "/" in k for k in densities)
    ):
        return {
            p: float(densities[p]) for p, f in zip(paths, jax.tree.leaves(flags), strict=True) if f
        }
    leaves = jax.tree.leaves(densities, is_leaf=lambda x: x is None)
    return {p: float(d) for p, d, f in zip(paths, leaves, jax.tree.leaves(flags), strict=True) if f}


def _erk_ratio(shape):
    return sum(shape) / np.prod(shape)


ERK_PARAMS = {
    "a": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)},
    "b": {"kernel": jnp.ones((72, 64))},
    "c": {"kernel": jnp.ones((64, 10))},
}


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.95])
def test_erk_properties(sparsity):
    d = _density_by_path(progprune.erk_densities(ERK_PARAMS, sparsity), ERK_PARAMS)
    sizes = {"a/kernel": 288, "b/kernel": 72 * 64, "c/kernel": 640}
    shapes = {"a/kernel": (3, 3, 4, 8), "b/kernel": (72, 64), "c/kernel": (64, 10)}
    assert set(d) == set(sizes)
    total = sum(sizes.values())
    kept = sum(d[p] * sizes[p] for p in d)
    np.testing.assert_allclose(kept, (1 - sparsity) * total, rtol=1e-5)
    assert all(0.0 < v <= 1.0 for v in d.values())
    # Layers below density 1 share one scale factor: d_l = eps * (sum(shape) / prod(shape)).
    eps = {p: d[p] / _erk_ratio(shapes[p]) for p in d if d[p] < 1.0}
    assert eps and np.ptp(list(eps.values())) <= 1e-5 * max(eps.values())
    # Bigger layers (smaller ratio) are sparser.
    by_ratio = sorted(d, key=lambda p: _erk_ratio(shapes[p]))
    assert [d[p] for p in by_ratio] == sorted(d[p] for p in by_ratio)


def test_erk_dense_layer_capped_and_rest_resolved():
    params = {"small": jnp.ones((2, 2)), "big": jnp.ones((100, 100))}
    # Raw ERK: eps * (1 * 4 + 0.02 * 10000) = 5002 -> small gets 24.5 > 1, so it is dense and
    # the big layer keeps the remaining 5002 - 4 = 4998 weights.
    d = _density_by_path(progprune.erk_densities(params, 0.5), params)
    np.testing.assert_allclose(d["small"], 1.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(d["big"], 0.4998, rtol=1e-6)


def test_erk_masks_follow_densities_and_magnitudes():
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), ERK_PARAMS)
    d = _density_by_path(progprune.erk_densities(params, 0.8), params)
    masks = update(params, 0.8, distribution="erk")
    total_pruned = 0
    for path, density in d.items():
        layer, leaf = path.split("/")
        m, w = np.asarray(masks[layer][leaf]), np.abs(np.asarray(params[layer][leaf]))
        pruned = int((~m).sum())
        total_pruned += pruned
        assert abs(pruned - (1 - density) * m.size) <= 1.0
        if pruned and pruned < m.size:
            assert w[~m].max() <= w[m].min()  # within a layer the smallest go first
    assert np.asarray(masks["a"]["bias"]).all()
    n = sum(x.size for x in jax.tree.leaves(params) if x.ndim >= 2)
    assert abs(total_pruned - round(0.8 * n)) <= len(d)


def test_regex_is_a_search_not_a_match():
    assert _selected(progprune.prunable_mask(LINEN, "Dense")) == {
        "params/Dense_0/bias",
        "params/Dense_0/kernel",
    }


# ---------------------------------------------------------------- multi-row leaves
# The trees above fit in one row (128 entries) per leaf. These are large enough for the paths
# that only big trees take: many rows per leaf with partial last rows, ties spread over rows,
# the sampled bracket (>= 2 * 256 rows), and the bracket failing and falling back.
BIG_LAYOUT = {"a": (300, 700), "b": (3, 3, 64, 65), "bias": (129,), "c": (5, 131)}


def _big_tree(kind: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tree = {}
    for name, shape in BIG_LAYOUT.items():
        if kind == "ties":  # a coarse grid: thousands of ties at any threshold
            x = rng.integers(-20, 21, size=shape) / 4
        elif kind == "misleading_sample":
            # Rows the bracket samples (every 7th row of each leaf) hold tiny values and every
            # other row large ones, so the sample's quantiles are far off and its check fails.
            x = rng.uniform(10, 20, size=shape).ravel()
            rows = np.arange(x.size) // 128
            x = np.where(rows % 7 == 0, rng.uniform(0, 1e-3, size=x.size), x).reshape(shape)
        else:
            x = rng.normal(size=shape)
        tree[name] = jnp.asarray(x, jnp.float32)
    return tree


@pytest.mark.parametrize(
    "seed,kind,distribution,sparsity,old_masks",
    [
        (0, "ties", "global", 0.9, False),
        (1, "ties", "global", 0.5, True),
        (2, "normal", "global", 0.7, True),
        (3, "misleading_sample", "global", 0.6, False),
        (4, "ties", "uniform", 0.8, True),
    ],
)
def test_multi_row_leaves_match_numpy_reference(seed, kind, distribution, sparsity, old_masks):
    tree = _big_tree(kind, seed)
    leaves = _np_leaves(tree)
    old = None
    if old_masks:
        rng = np.random.default_rng(1)
        old = {
            k: jnp.asarray(rng.random(v.shape) > 0.3) if v.ndim >= 2 else jnp.ones(v.shape, bool)
            for k, v in tree.items()
        }
    got = prune(jax.tree.map(jnp.abs, tree), sparsity, masks=old, distribution=distribution)
    expected = reference_masks(
        [np.abs(x) for x in leaves],
        sparsity,
        [x.ndim >= 2 for x in leaves],
        old=None if old is None else jax.tree.leaves(old),
        distribution=distribution,
    )
    _assert_masks_equal(got, expected, tree)


def test_multi_row_leaves_erk_prunes_each_layer_as_its_density_asks():
    # The reference ranks per layer; ERK only sets each layer's count, from erk_densities.
    tree, sparsity = _big_tree("ties", 5), 0.8
    scores = jax.tree.map(jnp.abs, tree)
    got = prune(scores, sparsity, distribution="erk")
    densities = progprune.erk_densities(tree, sparsity)
    for name, leaf in tree.items():
        mask = np.asarray(got[name])
        if leaf.ndim < 2:
            assert mask.all()
            continue
        pruned = round(float(F32(1.0 - densities[name])) * leaf.size)
        assert int(np.sum(~mask)) == pruned
        expected = reference_masks([np.asarray(scores[name])], pruned / leaf.size, [True])[0]
        np.testing.assert_array_equal(mask, expected)


def test_misleading_sample_makes_the_bracket_fail():
    """The fallback above is really taken: the sampled bounds miss the threshold."""
    from progprune.select import _bracket, _row_counts, order_keys

    tree = _big_tree("misleading_sample", 3)
    keys = [order_keys(jnp.abs(x)) for x in jax.tree.leaves(tree) if x.ndim >= 2]
    n = sum(int(x.size) for x in keys)
    k = jnp.asarray([round(0.6 * n)], jnp.int32)
    low, high = _bracket(lambda i: keys[i], len(keys), k, n)

    def below(bound):
        return sum(int(jnp.sum(_row_counts(x < bound[0]))) for x in keys)

    assert not (below(low) < int(k[0]) <= below(high))


@pytest.mark.parametrize("distribution", ["global", "uniform"])
@pytest.mark.parametrize("old_seed", [None, 3])
def test_a_sparsity_that_rounds_to_every_weight_prunes_every_weight(distribution, old_seed):
    # The largest float32 below 1 times N rounds to N here: no threshold has a key above it.
    # Found by hypothesis on the bracket-sized layout (the sampled-bracket path).
    sparsity = float(np.nextafter(np.float32(1), np.float32(0)))
    rng = np.random.default_rng(0)
    tree = {
        name: jnp.asarray(rng.normal(size=shape), jnp.float32)
        for name, (shape, _) in BRACKET_LAYOUT.items()
    }
    old = _old_masks(tree, old_seed, 0.9)
    _check_against_reference(tree, old, sparsity, distribution, via_updater=False)
    masks = progprune.prune_to_sparsity(jax.tree.map(jnp.abs, tree), sparsity, masks=old)
    assert not any(bool(jnp.any(m)) for m in jax.tree.leaves(masks) if m.ndim >= 2)
