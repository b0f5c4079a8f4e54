"""ERK against an independent float64 reference, on the real models' layouts and on cascades.

The reference is written here from the definition (Evci et al. 2020): a layer's density is
``eps * sum(shape) / prod(shape)`` (the kernel's spatial size included), with ``eps`` chosen so
that the layers keep ``(1 - sparsity) * N`` weights in all; a layer that would be denser than 1
is made dense and ``eps`` solved again for the others, repeated until no layer exceeds 1 (a cap
can push another layer over 1: a *cascade*).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import progprune
from progprune.distributions import layer_counts, layer_densities


def erk_reference(shapes, sparsity):
    """(float64 densities, rounds of capping needed) by iterating to a fixed point."""
    sizes = np.array([np.prod(s, dtype=np.float64) for s in shapes])
    raw = np.array([sum(s) for s in shapes], np.float64) / sizes
    kept = (1.0 - float(np.float32(sparsity))) * sizes.sum()
    dense = np.zeros(len(shapes), bool)
    rounds = 0
    while True:
        eps = (kept - sizes[dense].sum()) / (raw * sizes)[~dense].sum()
        density = np.where(dense, 1.0, eps * raw)
        over = ~dense & (density > 1.0)
        if not over.any():
            return density, rounds
        dense |= over
        rounds += 1


def reference_counts(shapes, sparsity):
    density, _ = erk_reference(shapes, sparsity)
    return [round((1.0 - d) * int(np.prod(s))) for d, s in zip(density, shapes, strict=True)]


def _conv(k, c_in, c_out):
    return (k, k, c_in, c_out)


# Kernel shapes of the models (tests/test_models.py checks the models have them).
VGG19 = [
    _conv(3, 3, 64),
    _conv(3, 64, 64),
    _conv(3, 64, 128),
    _conv(3, 128, 128),
    _conv(3, 128, 256),
    *[_conv(3, 256, 256)] * 3,
    _conv(3, 256, 512),
    *[_conv(3, 512, 512)] * 7,
    (512, 10),
]


def _resnet(stem: int, widths: tuple[int, ...], blocks: int) -> list[tuple[int, ...]]:
    shapes, c_in = [_conv(3, 3, stem)], stem
    for c in widths:
        for _ in range(blocks):
            shapes += [_conv(3, c_in, c), _conv(3, c, c)]
            if c_in != c:
                shapes.append(_conv(1, c_in, c))  # projection shortcut
            c_in = c
    return [*shapes, (c_in, 10)]


RESNET18 = _resnet(64, (64, 128, 256, 512), 2)
RESNET20 = _resnet(16, (16, 32, 64), 3)
LENET5 = [_conv(5, 1, 20), _conv(5, 20, 50), (800, 500), (500, 10)]


def test_layouts_are_the_models():
    sizes = {
        name: sum(int(np.prod(s)) for s in shapes)
        for name, shapes in [("vgg19", VGG19), ("resnet18", RESNET18), ("resnet20", RESNET20)]
    }
    # Kernel weights only (param counts minus biases and BatchNorm, from test_models.py).
    assert sizes == {"vgg19": 20_024_000, "resnet18": 11_164_352, "resnet20": 270_896}


# (layout, sparsity, weights ERK keeps, dense layers, rounds of capping): every case needs at
# least two rounds, i.e. a layer goes over 1 only after another one was capped.
CASCADES = [
    ("vgg19", VGG19, 0.8, 4_004_798, 4, 2),
    ("resnet18", RESNET18, 0.8, 2_232_869, 9, 2),
    ("resnet18", RESNET18, 0.5, 5_582_176, 14, 2),
    ("resnet20", RESNET20, 0.5, 135_447, 11, 2),
]


@pytest.mark.parametrize(
    "layout,sparsity,kept,num_dense,rounds",
    [c[1:] for c in CASCADES],
    ids=[f"{c[0]}-{c[2]}" for c in CASCADES],
)
def test_erk_matches_float64_reference_on_model_layouts(layout, sparsity, kept, num_dense, rounds):
    expected, needed = erk_reference(layout, sparsity)
    assert needed == rounds  # the case really cascades
    got = np.asarray(layer_densities(layout, jnp.float32(sparsity), "erk"), np.float64)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=0)
    assert int(np.sum(got >= 1.0)) == int(np.sum(expected >= 1.0)) == num_dense
    sizes = [int(np.prod(s)) for s in layout]
    counts = np.asarray(layer_counts(sizes, layout, jnp.float32(sparsity), "erk"))
    # float32 densities may move a count by one where (1 - d) * n lands near .5.
    assert np.abs(counts - reference_counts(layout, sparsity)).max() <= 1
    assert sum(sizes) - int(counts.sum()) == kept


def test_erk_uses_the_kernels_spatial_size():
    # sum(shape) / prod(shape): 18/288 = 1/16 for the 3x3 conv, 14/32 = 7/16 for the 1x1 conv;
    # at 87.5% the 320 weights keep 40 = eps * (18 + 14), so eps = 1.25: every number is exact.
    shapes = [(3, 3, 4, 8), (1, 1, 4, 8)]
    got = np.asarray(layer_densities(shapes, jnp.float32(0.875), "erk"))
    np.testing.assert_array_equal(got, [0.078125, 0.546875])
    # Pruned: 0.921875 * 288 = 265.5 and 0.453125 * 32 = 14.5, rounded half to even.
    counts = np.asarray(layer_counts([288, 32], shapes, jnp.float32(0.875), "erk"))
    np.testing.assert_array_equal(counts, [266, 14])
    params = {"a": jnp.ones((3, 3, 4, 8)), "b": jnp.ones((1, 1, 4, 8))}
    assert progprune.erk_densities(params, 0.875) == {"a": 0.078125, "b": 0.546875}


def test_erk_dense_kernel_uses_fan_in_plus_fan_out():
    # (n_in + n_out) / (n_in * n_out): 30/200 = 3/20 and 110/1000 = 11/100; eps * (30 + 110) = 28.
    got = np.asarray(layer_densities([(10, 20), (100, 10)], jnp.float32(1 - 28 / 1200), "erk"))
    np.testing.assert_allclose(got, [0.03, 0.022], rtol=1e-6)


# A 2,574-weight layout whose cap cascades at 80%: the 8x3 layer is capped first, which pushes
# the first conv over 1. Leaves span several 128-entry rows with partial last rows.
SMALL_CASCADE = {"a": (5, 5, 1, 6), "b": (5, 5, 6, 16), "c": (8, 3)}


def test_erk_masks_on_a_cascade_match_a_per_layer_reference():
    shapes = list(SMALL_CASCADE.values())
    density, rounds = erk_reference(shapes, 0.8)
    assert rounds == 2 and density[0] == 1.0 and density[2] == 1.0
    rng = np.random.default_rng(0)
    scores = {
        k: jnp.asarray(rng.integers(0, 50, s) / 4, jnp.float32) for k, s in SMALL_CASCADE.items()
    }
    masks = jax.jit(lambda s: progprune.prune_to_sparsity(s, 0.8, distribution="erk"))(scores)
    for name, count in zip(SMALL_CASCADE, reference_counts(shapes, 0.8), strict=True):
        flat = np.asarray(scores[name]).ravel()
        expected = np.ones(flat.size, bool)
        expected[np.argsort(flat, kind="stable")[:count]] = False  # ties: earlier first
        np.testing.assert_array_equal(np.asarray(masks[name]).ravel(), expected, err_msg=name)
    assert [int((~np.asarray(masks[k])).sum()) for k in SMALL_CASCADE] == [0, 2059, 0]


@st.composite
def layouts(draw):
    """2-6 layers, dense or conv kernels of a few sizes (tiny layers get capped)."""
    shapes = []
    for _ in range(draw(st.integers(2, 6))):
        c_in, c_out = draw(st.integers(1, 300)), draw(st.integers(1, 300))
        k = draw(st.sampled_from([0, 1, 3, 5]))
        shapes.append((c_in, c_out) if k == 0 else (k, k, c_in, c_out))
    return shapes


@settings(max_examples=60, deadline=None)
@given(layouts(), st.floats(0.0625, 0.9921875, width=32))
def test_erk_matches_float64_reference_on_random_layouts(shapes, sparsity):
    expected, _ = erk_reference(shapes, sparsity)
    got = np.asarray(layer_densities(shapes, jnp.float32(sparsity), "erk"), np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.all(got <= 1.0)
    sizes = np.array([np.prod(s) for s in shapes], np.float64)
    np.testing.assert_allclose(
        got @ sizes, (1 - float(np.float32(sparsity))) * sizes.sum(), rtol=1e-5
    )


def test_uniform_densities_are_one_minus_sparsity_everywhere():
    got = np.asarray(layer_densities([(2, 3), (3, 3, 4, 5)], jnp.float32(0.25), "uniform"))
    np.testing.assert_array_equal(got, [0.75, 0.75])
    assert layer_densities([], jnp.float32(0.5), "erk").shape == (0,)


def test_layer_densities_refuses_an_unknown_distribution():
    # Called directly too (not only through prune_to_sparsity, which checks first).
    with pytest.raises(ValueError, match="distribution"):
        layer_densities([(2, 3)], jnp.float32(0.5), "erdos")


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_layer_counts_give_one_count_per_layer_and_none_for_no_layer(distribution):
    shapes = [(4, 5), (3, 3, 2, 6)]
    counts = layer_counts([20, 108], shapes, jnp.float32(0.5), distribution)
    assert counts.shape == (2,) and counts.dtype == jnp.int32
    empty = layer_counts([], [], jnp.float32(0.5), distribution)
    assert empty.shape == (0,) and empty.dtype == jnp.int32


@pytest.mark.parametrize("distribution", ["global", "uniform", "erk"])
def test_a_tree_without_prunable_leaves_is_refused_naming_its_paths(distribution):
    tree = {"b": jnp.ones(4), "scale": jnp.ones(3)}  # no leaf of rank >= 2
    with pytest.raises(ValueError, match=r"selects no floating-point leaf .*paths: b, scale"):
        progprune.prune_to_sparsity(tree, 0.5, distribution=distribution)
