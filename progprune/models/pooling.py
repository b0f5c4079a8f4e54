"""Max-pooling over non-overlapping windows, with a gradient that is cheap on XLA:CPU.

`flax.linen.max_pool`'s gradient is XLA's select-and-scatter. XLA:CPU lowers it to a
reduce-window that carries one int32 index array per window dimension plus a scatter, which
took ~30% of a LeNet-5 training step on one CPU core (`benchmarks/lenet5_step.py`). Here the
forward pass is the same reduce-window, and the derivative picks the same element of each
window with element-wise compares and selects, which XLA fuses into a few loops.

The selection rule is select-and-scatter's: scanning a window in row-major order, the first
element is kept unless a later one is not `<=` it, so a tie goes to the earliest position
and a NaN hands the choice on. Values, gradients, JVPs and JVPs of gradients (GraSP's
Hessian-vector products) are therefore bit-identical to flax's `max_pool` with
`strides=window_shape` and VALID padding (`tests/test_models.py` checks ties, odd sizes and
both differentiation modes).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["max_pool"]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window_shape: tuple[int, int]) -> jax.Array:
    """Max over non-overlapping `window_shape` windows of an NHWC batch (VALID, stride = window).

    Equals `nn.max_pool(x, window_shape, strides=window_shape)` in value and in every
    derivative; only the derivative's formulation differs (see the module docstring).

    Example:
      >>> x = jnp.array([1.0, 3.0, 3.0, 2.0]).reshape(1, 2, 2, 1)
      >>> max_pool(x, (2, 2)).ravel()
      Array([3.], dtype=float32)
      >>> jax.grad(lambda x: max_pool(x, (2, 2)).sum())(x).ravel()  # the tie goes to the first
      Array([0., 1., 0., 0.], dtype=float32)
    """
    return nn.max_pool(x, window_shape, strides=window_shape)


def _blocks(x: jax.Array, window_shape: tuple[int, int]) -> jax.Array:
    """[B, H, W, C] -> [B, H // kh, kh, W // kw, kw, C]; rows and columns past the last whole
    window are dropped, as VALID pooling drops them."""
    kh, kw = window_shape
    b, h, w, c = x.shape
    x = x[:, : h // kh * kh, : w // kw * kw, :]
    return x.reshape(b, h // kh, kh, w // kw, kw, c)


def _chosen(blocks: jax.Array, window_shape: tuple[int, int]) -> jax.Array:
    """Bool, `blocks`' shape: true at the element select-and-scatter picks in each window."""
    kh, kw = window_shape
    best = blocks[:, :, 0, :, 0, :]
    index = jnp.zeros(best.shape, jnp.int32)
    for position in range(1, kh * kw):
        candidate = blocks[:, :, position // kw, :, position % kw, :]
        # select-and-scatter keeps the current choice while `current >= candidate`; written
        # the same way (not `candidate > current`) so that NaNs are passed over alike.
        take = ~(best >= candidate)
        best = jnp.where(take, candidate, best)
        index = jnp.where(take, position, index)
    positions = (jnp.arange(kh)[:, None] * kw + jnp.arange(kw)).reshape(1, 1, kh, 1, kw, 1)
    return index[:, :, None, :, None, :] == positions


@max_pool.defjvp
def _max_pool_jvp(window_shape, primals, tangents):
    (x,), (tangent,) = primals, tangents
    chosen = _chosen(_blocks(x, window_shape), window_shape)
    # One nonzero term per window: the sum is exact. Its transpose (the gradient) is a
    # broadcast and a select, with no scatter.
    tangent_out = jnp.where(chosen, _blocks(tangent, window_shape), 0).sum((2, 4))
    return max_pool(x, window_shape), tangent_out
