"""Specifications of progprune.models: exact sizes, shapes, dtypes, BN behaviour, lookup.

Big models are only traced (`jax.eval_shape`), never run, except in tests marked slow.
"""

from __future__ import annotations

import doctest
import functools
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from progprune import data, models
from progprune.data import idx
from progprune.models import (
    BasicBlock,
    LeNet5,
    LeNet300100,
    ResNet18,
    ResNet20,
    TinyCNN,
    TinyMLP,
    VGGLike,
    get_model,
    param_count,
)
from progprune.models.pooling import max_pool

MNIST = (2, 28, 28, 1)
CIFAR = (2, 32, 32, 3)

# (name, input shape, extra fields, exact parameter count, number of kernels).
# Kernels: ResNet18 = stem + 16 block convs + 3 shortcuts + fc; ResNet20/32 (option B) = stem +
# 6n block convs + 2 shortcuts + fc; option A drops the 2 shortcuts.
SPECS = [
    ("lenet300_100", MNIST, {}, 266_610, 3),
    ("lenet5", MNIST, {}, 431_080, 4),
    ("vgg_like", CIFAR, {}, 14_991_946, 15),
    ("vgg19", CIFAR, {}, 20_035_018, 17),
    ("resnet18", CIFAR, {}, 11_173_962, 21),
    ("resnet20", CIFAR, {}, 272_474, 22),
    ("resnet20", CIFAR, {"projection_shortcut": False}, 269_722, 20),
    ("resnet32", CIFAR, {}, 466_906, 34),
    ("resnet32", CIFAR, {"projection_shortcut": False}, 464_154, 32),
    ("tiny_mlp", (2, 8, 8, 1), {}, 2_410, 2),
    ("tiny_cnn", (2, 8, 8, 1), {}, 1_426, 3),
    ("tiny_cnn", (2, 8, 8, 3), {}, 1_570, 3),
]
BN_MODELS = {"vgg_like", "vgg19", "resnet18", "resnet20", "resnet32", "tiny_cnn"}


def _key(seed: int = 0) -> jax.Array:
    # "rbg" keys because threefry with jax_threefry_partitionable=True (the default) takes ~3 s
    # to compile per distinct shape on a CPU; the models do not care which PRNG they get.
    return jax.random.key(seed, impl="rbg")


def _normal(shape) -> jax.Array:
    return jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)


def _init(model, x):
    return jax.jit(lambda k, x: model.init(k, x, train=False))(_key(), x)


def _abstract_init(model, shape, train=False):
    """(variables, logits) as ShapeDtypeStructs: traces the model without running it."""

    def init():
        return model.init_with_output(_key(), jnp.zeros(shape), train=train)[::-1]

    return jax.eval_shape(init)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.mark.parametrize(("name", "shape", "kw", "count", "num_kernels"), SPECS)
def test_param_count_output_and_kernels(name, shape, kw, count, num_kernels):
    variables, logits = _abstract_init(get_model(name, 10, **kw), shape)
    assert param_count(variables["params"]) == count
    assert logits.shape == (shape[0], 10) and logits.dtype == jnp.float32
    # The core's default prunable rule (float leaves of rank >= 2) must pick exactly the
    # conv/dense kernels: never a bias, BN scale/bias or BN statistic.
    leaves = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    rank2 = {_path_str(p) for p, leaf in leaves if leaf.ndim >= 2}
    kernels = {_path_str(p) for p, _ in leaves if _path_str(p).endswith("kernel")}
    assert rank2 == kernels and len(kernels) == num_kernels
    assert all(leaf.dtype == jnp.float32 for _, leaf in leaves)


@pytest.mark.parametrize(("name", "shape", "kw"), [spec[:3] for spec in SPECS])
def test_batch_stats_match_batchnorm_params(name, shape, kw):
    variables, _ = _abstract_init(get_model(name, 10, **kw), shape)
    if name not in BN_MODELS:
        assert set(variables) == {"params"}
        return
    stats = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
    stat_paths = {_path_str(p) for p, _ in stats}
    params = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    bn_scales = {_path_str(p)[: -len("scale")] for p, _ in params if _path_str(p).endswith("scale")}
    assert stat_paths == {s + "mean" for s in bn_scales} | {s + "var" for s in bn_scales}
    assert bn_scales


def test_num_classes_changes_only_the_head():
    variables, logits = _abstract_init(ResNet18(num_classes=100), CIFAR)
    assert logits.shape == (2, 100)
    assert param_count(variables["params"]) == 11_173_962 + 90 * 512 + 90


def test_resnet18_train_mode_traces_with_mutable_batch_stats():
    model = ResNet18()
    x = jnp.zeros(CIFAR)
    variables, _ = _abstract_init(model, CIFAR)
    logits, updates = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables
    )
    assert logits.shape == (2, 10)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"]
    )


@pytest.mark.parametrize("name", ["resnet18", "vgg19", "vgg_like", "lenet5"])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
    variables, logits = _abstract_init(get_model(name, 10, dtype=jnp.bfloat16), CIFAR)
    assert logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def _eqns(jaxpr):
    """Every equation of a jaxpr, nested ones (jit, custom_jvp, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


@pytest.mark.parametrize(("name", "shape", "kw", "num_kernels"), [s[:3] + s[4:] for s in SPECS])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_every_matmul_and_conv_computes_in_the_models_dtype(name, shape, kw, num_kernels, dtype):
    # Traced, not run: the jaxpr shows the dtype each layer really computes in, in both modes.
    model = get_model(name, 10, dtype=dtype, **kw)
    variables, _ = _abstract_init(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    for train in (False, True):
        mutable = ["batch_stats"] if train and "batch_stats" in variables else False
        apply = functools.partial(model.apply, train=train, mutable=mutable)
        ops = [
            e
            for e in _eqns(jax.make_jaxpr(apply)(variables, x).jaxpr)
            if e.primitive.name in ("dot_general", "conv_general_dilated")
        ]
        assert len(ops) == num_kernels  # one per kernel: every layer is checked
        assert {v.aval.dtype for e in ops for v in e.invars} == {jnp.dtype(dtype)}


@pytest.mark.parametrize("model", [TinyCNN(dtype=jnp.bfloat16), LeNet5(dtype=jnp.bfloat16)])
def test_bfloat16_forward_is_close_to_float32(model):
    x = _normal(MNIST)
    variables = _init(model, x)
    low = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    f32 = model.clone(dtype=jnp.float32)
    high = jax.jit(lambda v, x: f32.apply(v, x, train=False))(variables, x)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, high, atol=0.05, rtol=0.05)
    assert not np.array_equal(low, high)  # bf16 really was used


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (TinyMLP(), (8, 8, 8, 1)),
        (TinyCNN(), (8, 8, 8, 1)),
        (LeNet300100(), (8, 28, 28, 1)),
        (LeNet5(), (8, 28, 28, 1)),
    ],
)
def test_one_sgd_step_reduces_the_loss(model, shape):
    x = _normal(shape)
    y = jnp.arange(shape[0]) % 10
    variables = _init(model, x)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(p):
        logits, _ = model.apply({"params": p, **state}, x, train=True, mutable=list(state))
        return _xent(logits, y)

    loss_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    loss, grads = loss_and_grad(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    grads = jax.device_get(grads)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    # Every kernel gets a gradient (no dead branch); biases may start at exactly zero gradient.
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads) if g.ndim >= 2)
    stepped = jax.tree.map(lambda p, g: p - 0.01 * g, jax.device_get(params), grads)
    assert float(loss_and_grad(stepped)[0]) < float(loss)


def test_batchnorm_momentum_epsilon_and_running_average():
    model = TinyCNN()
    x = _normal((16, 8, 8, 1)) * 3.0 + 1.0
    variables = _init(model, x)
    mutable = ["batch_stats", "intermediates"]
    _, state = model.apply(variables, x, train=True, mutable=mutable, capture_intermediates=True)
    state = jax.device_get(state)
    conv1 = state["intermediates"]["conv1"]["__call__"][0]
    stats = state["batch_stats"]["bn1"]
    # Flax momentum 0.9 == PyTorch momentum 0.1; initial mean 0, var 1; biased batch variance.
    np.testing.assert_allclose(stats["mean"], 0.1 * conv1.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * conv1.var((0, 1, 2)), rtol=1e-5)
    # Eval mode uses the running averages: with the initial (0, 1) stats BN is x / sqrt(1 + eps).
    _, inter = model.apply(variables, x, train=False, capture_intermediates=True)
    bn1 = np.asarray(inter["intermediates"]["bn1"]["__call__"][0])
    np.testing.assert_allclose(bn1, conv1 / np.sqrt(1.0 + 1e-5), rtol=1e-6, atol=1e-7)
    # ... so in eval mode an example's output does not depend on the rest of the batch.
    full = model.apply(variables, x, train=False)
    np.testing.assert_allclose(model.apply(variables, x[:3], train=False), full[:3], atol=1e-6)
    train_out, _ = model.apply(variables, x[:3], train=True, mutable=["batch_stats"])
    assert not np.allclose(train_out, full[:3], atol=1e-4)


def test_axis_name_syncs_batch_statistics_across_shards():
    x = _normal((8, 6, 6, 3)) + 2.0
    variables = _init(TinyCNN(), x)

    def stats(model, xs):
        return model.apply(variables, xs, train=True, mutable=["batch_stats"])[1]["batch_stats"]

    shards = x.reshape(4, 2, 6, 6, 3)
    whole = jax.jit(lambda x: stats(TinyCNN(), x))(x)
    synced = jax.jit(jax.vmap(lambda xs: stats(TinyCNN(axis_name="shard"), xs), axis_name="shard"))(
        shards
    )
    unsynced = jax.jit(jax.vmap(lambda xs: stats(TinyCNN(), xs)))(shards)
    for shard in range(4):
        np.testing.assert_allclose(synced["bn1"]["mean"][shard], whole["bn1"]["mean"], rtol=1e-5)
        np.testing.assert_allclose(synced["bn1"]["var"][shard], whole["bn1"]["var"], rtol=1e-5)
    assert not np.allclose(unsynced["bn1"]["mean"][0], whole["bn1"]["mean"], rtol=1e-3)


def test_option_a_shortcut_is_subsampled_zero_padded_input():
    block = BasicBlock(8, strides=2, projection=False)
    x = _normal((2, 6, 6, 4))
    variables = _init(block, x)
    assert set(variables["params"]) == {"conv1", "bn1", "conv2", "bn2"}  # no shortcut weights
    # With zero conv kernels the residual branch is BN(0) = 0, leaving relu(shortcut(x)).
    zeroed = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if _path_str(p).endswith("kernel") else v, variables
    )
    out = jax.jit(lambda v, x: block.apply(v, x, train=False))(zeroed, x)
    expected = np.zeros((2, 3, 3, 8), np.float32)
    expected[..., 2:6] = np.maximum(x[:, ::2, ::2, :], 0)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_projection_shortcut_and_identity():
    x = jnp.zeros((1, 8, 8, 16))
    down = _init(BasicBlock(32, strides=2), x)["params"]
    same = _init(BasicBlock(16), x)["params"]
    assert down["shortcut_conv"]["kernel"].shape == (1, 1, 16, 32) and "shortcut_bn" in down
    assert "shortcut_conv" not in same


def test_initialisers_follow_the_references():
    # BasicBlock default (ResNet-18, torchvision): Kaiming normal, fan_out (9 * 64, not 9 * 32).
    x = jnp.zeros((1, 4, 4, 32))
    kernel = _init(BasicBlock(64), x)["params"]["conv1"]["kernel"]
    np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / (9 * 64)), rtol=0.03)
    # LeNets (SNIP): LeCun normal, fan_in, std sqrt(1 / fan_in); zero biases.
    params = _init(LeNet300100(), jnp.zeros(MNIST))["params"]
    np.testing.assert_allclose(np.std(params["fc1"]["kernel"]), np.sqrt(1 / 784), rtol=0.02)
    assert not np.any(params["fc1"]["bias"])


def test_mlp_flattens_any_rank_and_lenets_accept_other_sizes():
    model = LeNet300100()
    x = _normal(MNIST)
    variables = _init(model, x)
    flat = model.apply(variables, x.reshape(2, 784), train=False)
    np.testing.assert_array_equal(model.apply(variables, x, train=False), flat)
    # On CIFAR-shaped input the first layer simply takes 3072 inputs (documented, not an error).
    cifar_vars, _ = _abstract_init(LeNet300100(), CIFAR)
    assert param_count(cifar_vars["params"]) == 3072 * 300 + 300 + 30_100 + 1_010
    lenet5_vars, _ = _abstract_init(LeNet5(), CIFAR)  # 32x32x3 -> 5x5x50 before fc500
    assert param_count(lenet5_vars["params"]) == 1_520 + 25_050 + 1_250 * 500 + 500 + 5_010


@pytest.mark.parametrize(
    ("model", "shape", "match"),
    [
        (LeNet5(), (2, 784), "rank 4"),
        (LeNet5(), (2, 8, 8, 1), ">= 16"),
        (VGGLike(), (2, 16, 16, 3), ">= 32"),
        (ResNet20(), (2, 32, 32), "rank 4"),
        (LeNet300100(), (784,), "rank >= 2"),
    ],
)
def test_bad_input_shapes_raise_clear_errors(model, shape, match):
    with pytest.raises(ValueError, match=match):
        _abstract_init(model, shape)


def test_get_model_lookup_and_errors():
    assert models.MODEL_NAMES == (
        "lenet300_100",
        "lenet5",
        "vgg_like",
        "vgg19",
        "resnet18",
        "resnet20",
        "resnet32",
        "tiny_mlp",
        "tiny_cnn",
    )
    for name in models.MODEL_NAMES:
        model = get_model(name, num_classes=7)
        assert get_model(type(model).__name__, num_classes=7) == model
        assert model.num_classes == 7
    assert get_model("resnet20", 10, projection_shortcut=False).projection_shortcut is False
    assert get_model("tiny_cnn", 10, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="valid names: lenet300_100, lenet5, vgg_like"):
        get_model("resnet50", 10)
    # Every model takes the same fields, so a trainer can pass them without knowing the model.
    for name in models.MODEL_NAMES:
        assert get_model(name, 10, dtype=jnp.bfloat16, axis_name="batch").axis_name == "batch"
    with pytest.raises(TypeError):
        get_model("lenet5", 10, width=3)


def test_param_count_of_arrays_and_shapes():
    tree = {"a": jnp.zeros((3, 4)), "b": [jnp.zeros(5), jax.ShapeDtypeStruct((2, 2), jnp.int8)]}
    assert param_count(tree) == 21
    assert param_count({}) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet32", "vgg19", "vgg_like"])
def test_big_models_run_forward_and_update_batch_stats(name):
    model = get_model(name, 10)
    x = _normal(CIFAR)
    variables = _init(model, x)
    logits, updates = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables
    )
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    new, old = jax.device_get((updates["batch_stats"], variables["batch_stats"]))
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), new, old)
    assert all(jax.tree.leaves(changed))


@pytest.mark.slow
def test_big_model_initialisers():
    x = jnp.zeros(CIFAR)
    # VGG-19 (GraSP): Kaiming normal fan_out (conv3: fan_in 9 * 64, fan_out 9 * 128), fc N(0, 0.01).
    vgg19 = _init(models.VGG19(), x)["params"]
    np.testing.assert_allclose(jnp.std(vgg19["fc"]["kernel"]), 0.01, rtol=0.05)
    np.testing.assert_allclose(jnp.std(vgg19["conv3"]["kernel"]), np.sqrt(2 / (9 * 128)), rtol=0.02)
    # VGG-like (SNIP): LeCun normal, fan_in, everywhere.
    vgg_like = _init(VGGLike(), x)["params"]
    kernel = vgg_like["conv3"]["kernel"]
    np.testing.assert_allclose(jnp.std(kernel), np.sqrt(1 / (9 * 64)), rtol=0.02)
    # ResNet-18 (torchvision): Kaiming normal fan_out (64 -> 128: fan_out 9 * 128).
    r18 = _init(ResNet18(), x)["params"]
    kernel = r18["stage2_block1"]["conv1"]["kernel"]
    np.testing.assert_allclose(jnp.std(kernel), np.sqrt(2 / (9 * 128)), rtol=0.02)
    # ResNet-20 (He et al. 2015 init): Kaiming normal fan_in.
    r20 = _init(ResNet20(), x)["params"]
    kernel = r20["stage3_block2"]["conv1"]["kernel"]  # fan_in = 9 * 64
    np.testing.assert_allclose(jnp.std(kernel), np.sqrt(2 / (9 * 64)), rtol=0.02)
    kernel = r20["stage2_block1"]["conv1"]["kernel"]  # fan_in 9 * 16 != fan_out 9 * 32
    np.testing.assert_allclose(jnp.std(kernel), np.sqrt(2 / (9 * 16)), rtol=0.05)


@pytest.mark.slow  # the examples initialise real models with threefry keys: ~1 min on a CPU
@pytest.mark.parametrize(
    "name",
    [
        "progprune.models",
        "progprune.models._common",
        "progprune.models.lenet",
        "progprune.models.pooling",
        "progprune.models.resnet",
        "progprune.models.tiny",
        "progprune.models.vgg",
    ],
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    assert result.attempted > 0, f"{name} has no docstring example"


def flax_max_pool(x, window_shape):
    """The reference: flax's max-pool, whose gradient is XLA's select-and-scatter."""
    return nn.max_pool(x, window_shape, strides=window_shape)


def _pool_inputs():
    rng = np.random.default_rng(0)
    ties = rng.integers(0, 3, (3, 7, 9, 4)).astype(np.float32)  # many tied windows
    ties[0, 0, :4, 0] = [-np.inf, np.inf, np.inf, 0.0]
    ties[1, :2, :2, 1] = 0.0  # an all-tied window
    ties[2, :2, :2, 2] = [[1.0, np.nan], [3.0, np.nan]]  # NaNs: the choice passes them over
    return [rng.standard_normal((2, 6, 6, 3)).astype(np.float32), ties]


@pytest.mark.parametrize("window", [(2, 2), (3, 3), (2, 3)])
@pytest.mark.parametrize("which", [0, 1], ids=["normal", "ties"])
def test_max_pool_equals_flax_in_value_and_every_derivative(window, which):
    x = jnp.asarray(_pool_inputs()[which])
    rng = np.random.default_rng(1)
    out_shape = flax_max_pool(x, window).shape
    cotangent = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
    tangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def derivatives(pool):
        value, vjp = jax.vjp(lambda x: pool(x, window), x)
        jvp = jax.jvp(lambda x: pool(x, window), (x,), (tangent,))[1]
        grad = lambda x: jax.grad(lambda x: (pool(x, window) ** 2 * cotangent).sum())(x)
        hvp = jax.jvp(grad, (x,), (tangent,))[1]  # forward-over-reverse, as GraSP computes
        return value, vjp(cotangent)[0], jvp, hvp

    jax.tree.map(np.testing.assert_array_equal, derivatives(max_pool), derivatives(flax_max_pool))


def test_max_pool_tie_goes_to_the_first_element_in_row_major_order():
    x = jnp.array([[0.0, 5.0, 1.0], [5.0, 5.0, 2.0]]).reshape(1, 2, 3, 1)
    grad = jax.grad(lambda x: max_pool(x, (2, 2)).sum())(x)
    # One 2x2 window (the third column is dropped, VALID): its first 5.0 takes the gradient.
    np.testing.assert_array_equal(grad.reshape(2, 3), [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.skipif(not idx.DEBIAN_FASHION_MNIST.is_dir(), reason="real Fashion-MNIST absent")
def test_lenet5_equals_the_flax_max_pool_formulation_on_real_data():
    # Real images: the black background makes conv1's outputs tie inside many pool windows.
    train = data.load("fashion_mnist", "train")
    mean, std = data.stats("fashion_mnist")
    x = data.preprocess(jnp.asarray(train.images[:32]), None, augment=False, mean=mean, std=std)
    y = jnp.asarray(train.labels[:32])
    ours, reference = LeNet5(), LeNet5(pool=flax_max_pool)
    params = _init(ours, x)["params"]
    # Same parameters, same initialisation.
    jax.tree.map(np.testing.assert_array_equal, params, _init(reference, x)["params"])

    def loss_and_grad(model):
        loss = lambda p: _xent(model.apply({"params": p}, x, train=True), y)
        return jax.jit(jax.value_and_grad(loss))(params)

    jax.tree.map(np.testing.assert_array_equal, loss_and_grad(ours), loss_and_grad(reference))
