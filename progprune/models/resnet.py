"""CIFAR ResNets: ResNet-18 (CIFAR stem) and He et al. (2016) ResNet-20/32.

All use BasicBlocks (two 3x3 conv-BN layers, ReLU after the sum), convolutions without bias,
PyTorch-style explicit padding of 1 (so a stride-2 3x3 conv and a stride-2 1x1 shortcut sample
the same pixels), global average pooling and one dense layer. The dense layer keeps Flax's
default initialiser (LeCun normal, zero bias); BN starts at scale 1, bias 0.

- ResNet18: stem 3x3 conv 64 with no max-pool, stages [2, 2, 2, 2] of widths 64..512, 1x1
  conv + BN projection shortcuts where the shape changes (kuangliu/pytorch-cifar layout).
  Convs: Kaiming normal, fan_out, as torchvision's ResNet.
- ResNet20 / ResNet32: widths 16/32/64, 3 stages of 3 / 5 blocks. Convs: Kaiming normal,
  fan_in (He et al. 2015, the init He et al. 2016 cite; open_lth's default). Shortcuts: option B
  (1x1 conv + BN projection where the shape changes) by default, as in open_lth, whose ResNet-20
  LTH used; `projection_shortcut=False` gives the paper's option A (parameter-free: subsample
  and zero-pad channels).
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
    he_normal_fan_in,
    he_normal_fan_out,
    logits_f32,
)


def _pad_shortcut(x: jax.Array, features: int, strides: int) -> jax.Array:
    """He et al.'s option A: subsample spatially and zero-pad channels evenly on both sides."""
    x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    Attributes:
      features: Output channels.
      strides: Stride of the first conv (and of the shortcut).
      projection: Where the shape changes, use a 1x1 conv + BN shortcut (True) or option A
        zero-padding (False). Same-shape shortcuts are always the identity.
      conv_init: Kernel initialiser of all convolutions.
      dtype: Compute dtype.
      axis_name: BatchNorm cross-device axis, or None.

    Example:
      >>> block = BasicBlock(32, strides=2)
      >>> x = jnp.zeros((1, 8, 8, 16))
      >>> y, _ = block.init_with_output(jax.random.key(0), x, train=False)
      >>> y.shape
      (1, 4, 4, 32)
    """

    features: int
    strides: int = 1
    projection: bool = True
    conv_init: nn.initializers.Initializer = he_normal_fan_out
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """[batch, H / strides, W / strides, features]; `train` uses batch statistics in BN."""

        def conv(features: int, size: int, strides: int, name: str) -> nn.Conv:
            return nn.Conv(
                features,
                (size, size),
                strides=strides,
                padding=size // 2,
                use_bias=False,
                dtype=self.dtype,
                kernel_init=self.conv_init,
                name=name,
            )

        y = conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(batch_norm(train, self.dtype, self.axis_name, "bn1")(y))
        y = conv(self.features, 3, 1, "conv2")(y)
        y = batch_norm(train, self.dtype, self.axis_name, "bn2")(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            if self.projection:
                shortcut = conv(self.features, 1, self.strides, "shortcut_conv")(x)
                shortcut = batch_norm(train, self.dtype, self.axis_name, "shortcut_bn")(shortcut)
            else:
                shortcut = _pad_shortcut(x, self.features, self.strides)
        return nn.relu(y + shortcut)


def _resnet(
    x: jax.Array,
    *,
    train: bool,
    stage_sizes: Sequence[int],
    widths: Sequence[int],
    projection: bool,
    conv_init: nn.initializers.Initializer,
    num_classes: int,
    dtype: Dtype,
    axis_name: str | None,
) -> jax.Array:
    """CIFAR ResNet body; call inside a `@nn.compact` method (submodules bind to its module)."""
    x = nn.Conv(
        widths[0],
        (3, 3),
        padding=1,
        use_bias=False,
        dtype=dtype,
        kernel_init=conv_init,
        name="stem_conv",
    )(x)
    x = nn.relu(batch_norm(train, dtype, axis_name, "stem_bn")(x))
    for i, (num_blocks, width) in enumerate(zip(stage_sizes, widths, strict=True)):
        for j in range(num_blocks):
            x = BasicBlock(
                width,
                strides=2 if i > 0 and j == 0 else 1,
                projection=projection,
                conv_init=conv_init,
                dtype=dtype,
                axis_name=axis_name,
                name=f"stage{i + 1}_block{j + 1}",
            )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(num_classes, dtype=dtype, name="fc")(x)
    return logits_f32(x)


class ResNet18(nn.Module):
    """ResNet-18 with a CIFAR stem; 11,173,962 parameters for 10 classes.

    Attributes:
      num_classes: Output width.
      dtype: Compute dtype (parameters stay float32); logits are always float32.
      axis_name: Axis over which BatchNorm averages batch statistics (pmap/shard_map), or None.

    Example:
      >>> model = ResNet18(num_classes=10)
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
      >>> sorted(shapes)
      ['batch_stats', 'params']
    """

    num_classes: int = 10
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits [batch, num_classes] in float32; `train` uses batch statistics in BN."""
        check_nhwc(x, "ResNet18")
        return _resnet(
            x,
            train=train,
            stage_sizes=(2, 2, 2, 2),
            widths=(64, 128, 256, 512),
            projection=True,
            conv_init=he_normal_fan_out,
            num_classes=self.num_classes,
            dtype=self.dtype,
            axis_name=self.axis_name,
        )


class ResNet20(nn.Module):
    """He et al.'s ResNet-20 for CIFAR: 272,474 params (option B), 269,722 (option A).

    Attributes:
      num_classes: Output width.
      dtype: Compute dtype (parameters stay float32); logits are always float32.
      axis_name: Axis over which BatchNorm averages batch statistics (pmap/shard_map), or None.
      projection_shortcut: 1x1 conv + BN shortcuts where the shape changes (option B, default)
        or parameter-free zero-padding (option A).

    Example:
      >>> model = ResNet20(projection_shortcut=False)
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> variables = model.init(jax.random.key(0), x, train=False)
      >>> model.apply(variables, x, train=False).shape
      (2, 10)
    """

    num_classes: int = 10
    dtype: Dtype = jnp.float32
    axis_name: str | None = None
    projection_shortcut: bool = True
    blocks_per_stage = 3  # Not a field: depth = 6 * blocks_per_stage + 2.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits [batch, num_classes] in float32; `train` uses batch statistics in BN."""
        check_nhwc(x, type(self).__name__)
        return _resnet(
            x,
            train=train,
            stage_sizes=(self.blocks_per_stage,) * 3,
            widths=(16, 32, 64),
            projection=self.projection_shortcut,
            conv_init=he_normal_fan_in,
            num_classes=self.num_classes,
            dtype=self.dtype,
            axis_name=self.axis_name,
        )


class ResNet32(ResNet20):
    """He et al.'s ResNet-32 for CIFAR: 466,906 params (option B), 464,154 (option A).

    Same fields as `ResNet20`; five blocks per stage.

    Example:
      >>> model = ResNet32()
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> variables = model.init(jax.random.key(0), x, train=False)
      >>> model.apply(variables, x, train=False).shape
      (2, 10)
    """

    blocks_per_stage = 5
