"""Tiny models for fast tests only (a few thousand parameters, compile in well under a second)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from progprune.models._common import Dtype, batch_norm, check_nhwc, flatten, logits_f32


class TinyMLP(nn.Module):
    """Flatten - dense 32 - ReLU - dense; 2,410 params for 8x8x1 input, 25,450 for 28x28x1.

    Attributes:
      num_classes: Output width.
      dtype: Compute dtype (parameters stay float32); logits are always float32.
      axis_name: Accepted for a uniform interface; unused, as there is no BatchNorm.

    Example:
      >>> model = TinyMLP()
      >>> x = jnp.zeros((4, 8, 8, 1))
      >>> variables = model.init(jax.random.key(0), x, train=False)
      >>> model.apply(variables, x, train=False).shape
      (4, 10)
    """

    num_classes: int = 10
    dtype: Dtype = jnp.float32
    axis_name: str | None = None  # Unused (no BatchNorm); every model takes the same fields.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits [batch, num_classes] in float32 (`train` is unused)."""
        del train  # No BatchNorm or dropout; kept for a uniform model signature.
        x = nn.relu(nn.Dense(32, dtype=self.dtype, name="fc1")(flatten(x)))
        return logits_f32(nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x))


class TinyCNN(nn.Module):
    """conv8 3x3 - BN - ReLU - conv16 3x3/2 - ReLU - global mean - dense; 1,426 params (C=1).

    The one BatchNorm exercises the `batch_stats` paths; conv2 keeps its bias so the model has a
    rank-1 leaf next to a rank-4 one. Any spatial size works (global pooling); for C input
    channels the count is 72 * C + 1,354 (1,570 for C = 3).

    Attributes:
      num_classes: Output width.
      dtype: Compute dtype (parameters stay float32); logits are always float32.
      axis_name: Axis over which BatchNorm averages batch statistics (pmap/shard_map), or None.

    Example:
      >>> model = TinyCNN()
      >>> x = jnp.zeros((4, 8, 8, 1))
      >>> variables = model.init(jax.random.key(0), x, train=False)
      >>> out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
      >>> out.shape
      (4, 10)
    """

    num_classes: int = 10
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits [batch, num_classes] in float32; `train` uses batch statistics in BN."""
        check_nhwc(x, "TinyCNN")
        x = nn.Conv(8, (3, 3), use_bias=False, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(batch_norm(train, self.dtype, self.axis_name, "bn1")(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=2, dtype=self.dtype, name="conv2")(x))
        x = jnp.mean(x, axis=(1, 2))
        return logits_f32(nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x))
