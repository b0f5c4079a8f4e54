"""LeNet-300-100 and LeNet-5-Caffe, as used by SNIP (Lee et al. 2019) and LTH.

Both follow SNIP's TensorFlow code (`snip/network.py`): every weight is initialised with
`tf.variance_scaling_initializer()` defaults (LeCun truncated normal, fan_in, scale 1), biases 0.

Inputs: any NHWC float batch. The quoted parameter counts are for 28x28x1 (MNIST-like) input;
other shapes work and change the first dense layer's size (LeNet-300-100 on CIFAR flattens 3072
inputs), which is intended: no silent resizing, no error for a sensible input.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from progprune.models._common import Dtype, check_nhwc, flatten, lecun_normal, logits_f32
from progprune.models.pooling import max_pool

# (x, window_shape) -> pooled x, for non-overlapping windows.
PoolFn = Callable[[jax.Array, tuple[int, int]], jax.Array]


class LeNet300100(nn.Module):
    """784-300-100-10 MLP with ReLU; 266,610 parameters for 28x28x1 input.

    Any input of rank >= 2 is flattened per example, so [B, 28, 28, 1] and [B, 784] both work.

    Attributes:
      num_classes: Output width.
      dtype: Compute dtype (parameters stay float32); logits are always float32.
      axis_name: Accepted for a uniform interface; unused, as there is no BatchNorm.

    Example:
      >>> model = LeNet300100()
      >>> x = jnp.zeros((2, 28, 28, 1))
      >>> variables = model.init(jax.random.key(0), x, train=False)
      >>> model.apply(variables, x, train=False).shape
      (2, 10)
    """

    num_classes: int = 10
    dtype: Dtype = jnp.float32
    axis_name: str | None = None  # Unused (no BatchNorm); every model takes the same fields.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits [batch, num_classes] in float32 (`train` is unused)."""
        del train  # No BatchNorm or dropout; kept for a uniform model signature.
        x = flatten(x)
        for name, width in (("fc1", 300), ("fc2", 100)):
            x = nn.Dense(width, dtype=self.dtype, kernel_init=lecun_normal, name=name)(x)
            x = nn.relu(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=lecun_normal, name="fc3")(x)
        return logits_f32(x)


class LeNet5(nn.Module):
    """LeNet-5-Caffe: conv20 5x5 - pool - conv50 5x5 - pool - fc500 - fc10; 431,080 params.

    Convolutions are VALID with bias and, as in SNIP and Caffe's LeNet, no activation (the only
    ReLU is after fc500). Max-pools are 2x2, stride 2; by default `pooling.max_pool`, which
    equals flax's `nn.max_pool` in value and gradient and makes a trainer step 2.1x faster on a
    CPU core (69.6 -> 32.5 ms at batch 128, benchmarks/results/lenet5_step.json).

    Raises:
      ValueError: if the input is not NHWC or is smaller than 16x16 (the smallest size for which
        both VALID convolutions and pools leave at least one pixel).

    Attributes:
      num_classes: Output width.
      dtype: Compute dtype (parameters stay float32); logits are always float32.
      axis_name: Accepted for a uniform interface; unused, as there is no BatchNorm.
      pool: The max-pool, `(x, window_shape) -> pooled`; `lambda x, w: nn.max_pool(x, w, w)`
        gives flax's formulation (the tests' and the benchmark's reference).

    Example:
      >>> model = LeNet5()
      >>> x = jnp.zeros((2, 28, 28, 1))
      >>> variables = model.init(jax.random.key(0), x, train=False)
      >>> model.apply(variables, x, train=False).shape
      (2, 10)
    """

    num_classes: int = 10
    dtype: Dtype = jnp.float32
    axis_name: str | None = None  # Unused (no BatchNorm); every model takes the same fields.
    pool: PoolFn = max_pool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits [batch, num_classes] in float32 (`train` is unused)."""
        del train  # No BatchNorm or dropout; kept for a uniform model signature.
        check_nhwc(x, "LeNet5", min_size=16)
        for name, features in (("conv1", 20), ("conv2", 50)):
            x = nn.Conv(
                features,
                (5, 5),
                padding="VALID",
                dtype=self.dtype,
                kernel_init=lecun_normal,
                name=name,
            )(x)
            x = self.pool(x, (2, 2))
        x = flatten(x)
        x = nn.Dense(500, dtype=self.dtype, kernel_init=lecun_normal, name="fc1")(x)
        x = nn.relu(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=lecun_normal, name="fc2")(x)
        return logits_f32(x)
