"""CIFAR VGGs: SNIP's VGG-like (VGG-16 + one fc-512) and GraSP's VGG-19 (global pool + linear).

Both stack 3x3 SAME convolutions, each followed by BatchNorm and ReLU, with 2x2 max-pools ("M").
They differ in the head, the conv biases and the initialisers, each following its paper's code:

| model   | conv bias | head                                  | conv init         | dense init    |
|---------|-----------|---------------------------------------|-------------------|---------------|
| VGGLike | yes       | flatten - fc512 - BN - ReLU - fc      | LeCun (fan_in, 1) | LeCun         |
| VGG19   | no        | global average pool - fc              | He normal fan_out | N(0, 0.01)    |

VGGLike follows `namhoonlee/snip-public` (TF `variance_scaling_initializer()` for every weight,
zero biases; convs and fc512 keep their biases even before BN). VGG19 follows GraSP's
`models/base/init_utils.py` (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`, Linear
N(0, 0.01), bias 0) and its VGG (`bias=False` convs, `AvgPool2d(2)` on the 2x2 map, i.e. a global
average pool for 32x32 input). Neither uses dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from progprune.models._common import (
    Dtype,
    batch_norm,
    check_nhwc,
    flatten,
    he_normal_fan_out,
    lecun_normal,
    logits_f32,
)

POOL = 0  # Marks a 2x2 max-pool in a plan; every other entry is a conv width.
VGG16_PLAN: tuple[int, ...] = (
    *(64, 64, POOL, 128, 128, POOL),
    *(256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
)
VGG19_PLAN: tuple[int, ...] = (
    *(64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL),
    *(512, 512, 512, 512, POOL, 512, 512, 512, 512),
)


def _conv_stack(
    x: jax.Array,
    plan: Sequence[int],
    *,
    train: bool,
    dtype: Dtype,
    axis_name: str | None,
    use_bias: bool,
    kernel_init: nn.initializers.Initializer,
) -> jax.Array:
    """conv3x3 - BN - ReLU per width in `plan`, max-pool per POOL; layers named conv{i}/bn{i}."""
    i = 0
    for width in plan:
        if width == POOL:
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            continue
        i += 1
        x = nn.Conv(
            width, (3, 3), use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, name=f"conv{i}"
        )(x)
        x = batch_norm(train, dtype, axis_name, name=f"bn{i}")(x)
        x = nn.relu(x)
    return x


class VGGLike(nn.Module):
    """SNIP's VGG-like: VGG-16 convs with BN, fc512-BN-ReLU, fc; 14,991,946 params (CIFAR-10).

    After Zagoruyko's cifar.torch, without its dropout (as in SNIP). The fc-512 layer keeps its
    BatchNorm + ReLU, as in cifar.torch and SNIP's code. For 32x32 input the conv stack ends at
    1x1x512; larger inputs flatten to more features (the first dense layer grows accordingly).

    Attributes:
      num_classes: Output width.
      dtype: Compute dtype (parameters stay float32); logits are always float32.
      axis_name: Axis over which BatchNorm averages batch statistics (pmap/shard_map), or None.

    Example:
      >>> model = VGGLike(num_classes=10)
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
      >>> shapes["params"]["fc"]["kernel"].shape
      (512, 10)
    """

    num_classes: int = 10
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits [batch, num_classes] in float32; `train` uses batch statistics in BN."""
        check_nhwc(x, "VGGLike", min_size=32)
        x = _conv_stack(
            x,
            VGG16_PLAN,
            train=train,
            dtype=self.dtype,
            axis_name=self.axis_name,
            use_bias=True,
            kernel_init=lecun_normal,
        )
        x = flatten(x)
        x = nn.Dense(512, dtype=self.dtype, kernel_init=lecun_normal, name="fc1")(x)
        x = batch_norm(train, self.dtype, self.axis_name, name="bn_fc1")(x)
        x = nn.relu(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=lecun_normal, name="fc")(x)
        return logits_f32(x)


class VGG19(nn.Module):
    """GraSP's VGG-19: 16 conv-BN-ReLU layers, global average pool, one linear layer.

    20,035,018 parameters for CIFAR-10 (conv kernels without bias, BN scale/bias, fc).

    Attributes:
      num_classes: Output width.
      dtype: Compute dtype (parameters stay float32); logits are always float32.
      axis_name: Axis over which BatchNorm averages batch statistics (pmap/shard_map), or None.

    Example:
      >>> model = VGG19(num_classes=100)
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> out = jax.eval_shape(lambda: model.init_with_output(
      ...     jax.random.key(0), x, train=False)[0])
      >>> out.shape
      (2, 100)
    """

    num_classes: int = 10
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits [batch, num_classes] in float32; `train` uses batch statistics in BN."""
        check_nhwc(x, "VGG19", min_size=16)
        x = _conv_stack(
            x,
            VGG19_PLAN,
            train=train,
            dtype=self.dtype,
            axis_name=self.axis_name,
            use_bias=False,
            kernel_init=he_normal_fan_out,
        )
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            name="fc",
        )(x)
        return logits_f32(x)
