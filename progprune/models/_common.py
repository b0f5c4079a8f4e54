"""Pieces shared by the model files: initialisers, BatchNorm settings and input checks."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Compute dtype of a module (e.g. jnp.bfloat16); parameters always stay float32.
Dtype = Any

# Kaiming/He normal, untruncated, as torch.nn.init.kaiming_normal_(nonlinearity="relu"):
# std = sqrt(2 / fan). Flax's `nn.initializers.kaiming_normal` is *truncated*, hence these.
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# tf.compat.v1.variance_scaling_initializer() with its defaults (SNIP's choice for every weight):
# scale 1, fan_in, truncated normal. Identical to Flax's default Dense/Conv kernel init.
lecun_normal = nn.initializers.lecun_normal()

BN_MOMENTUM = 0.9  # PyTorch's momentum=0.1 in Flax's convention (weight on the old average).
BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Dtype, axis_name: str | None, name: str) -> nn.BatchNorm:
    """A BatchNorm with the project's settings (scale 1, bias 0, momentum 0.9, eps 1e-5).

    Must be called inside a `@nn.compact` method; the module binds to that parent.

    Example:
      >>> bn = batch_norm(train=False, dtype=jnp.float32, axis_name=None, name="bn1")
      >>> bn.momentum, bn.epsilon, bn.use_running_average
      (0.9, 1e-05, True)
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        axis_name=axis_name,
        name=name,
    )


def check_nhwc(x: jax.Array, model: str, min_size: int = 1) -> None:
    """Raises ValueError unless `x` is [B, H, W, C] with H, W >= `min_size`.

    Example:
      >>> check_nhwc(jnp.zeros((2, 28, 28)), "LeNet5")
      Traceback (most recent call last):
      ValueError: LeNet5 expects NHWC input of rank 4 [batch, height, width, channels], got ...
    """
    if x.ndim != 4:
        raise ValueError(
            f"{model} expects NHWC input of rank 4 [batch, height, width, channels], "
            f"got shape {tuple(x.shape)}; add the missing axes, e.g. x[..., None] for "
            "grey images without a channel axis."
        )
    if x.shape[1] < min_size or x.shape[2] < min_size:
        raise ValueError(
            f"{model} needs height and width >= {min_size}, got shape {tuple(x.shape)}; "
            f"resize or zero-pad the images to at least {min_size}x{min_size}, or use a model "
            "without this limit (LeNet300100, TinyMLP, TinyCNN, ResNet18/20/32)."
        )


def flatten(x: jax.Array) -> jax.Array:
    """Flattens all but the leading (batch) axis; a rank-1 input is an error.

    Example:
      >>> flatten(jnp.zeros((2, 28, 28, 1))).shape
      (2, 784)
    """
    if x.ndim < 2:
        raise ValueError(
            f"expected a batched input of rank >= 2, got shape {tuple(x.shape)}; "
            "add a leading batch axis, e.g. x[None]."
        )
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def logits_f32(x: jax.Array) -> jax.Array:
    """Casts logits to float32 so the loss is never computed in a low-precision dtype.

    Example:
      >>> logits_f32(jnp.ones(2, jnp.bfloat16)).dtype
      dtype('float32')
    """
    return jnp.asarray(x, jnp.float32)
