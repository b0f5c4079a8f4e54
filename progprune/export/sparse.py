"""Sparse inference of fully connected stacks (LeNet-300-100) with BCSR kernels: batches only.

``benchmarks/sparse_inference.py`` measured ``jax.experimental.sparse`` against the dense
jitted forward on a (shared) 2-core CPU, kernels pruned uniformly, the fastest of 100 rounds
(``benchmarks/results/sparse_inference.json``). For the whole LeNet-300-100 forward:

=========  ====================  ==========================  ==========================
sparsity   dense, batch 128      BCSR, batch 128 (speed-up)   BCSR, batch 1 (speed-up)
=========  ====================  ==========================  ==========================
90%        425 us                280 us (1.5x)                227 us vs 23 us (0.10x)
95%        417 us                160 us (2.6x)                121 us vs 21 us (0.18x)
98%        452 us                 89 us (5.1x)                 55 us vs 22 us (0.40x)
99%        421 us                 61 us (7.0x)                 35 us vs 23 us (0.65x)
=========  ====================  ==========================  ==========================

So this path is offered for **batched** inference only: at batch 1 the dense forward is faster
at every sparsity measured (BCOO ties or wins by at most 1.4x at 98-99%, which is not offered).
Single layers behave alike: lenet5's 800x500 ``fc1`` at batch 128 gains 1.3-5.2x, vgg_like's
512x512 1.6-3.2x from 95% (0.8x at 90%); the 10-way classifier heads of the other models are
dispatch-bound and gain nothing. Flax modules cannot take sparse kernels
(``jax.experimental.sparse.sparsify`` fails on ``nn.Dense``), so only models that are nothing
but dense layers and ReLUs (``LeNet300100``, ``TinyMLP``) have a sparse forward here.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from progprune import models
  >>> model = models.get_model("tiny_mlp", 10)
  >>> x = jnp.ones((4, 8, 8, 1))
  >>> params = model.init(jax.random.key(0, impl="rbg"), x, train=False)["params"]
  >>> mlp = to_sparse_mlp(params)
  >>> logits = jax.jit(sparse_mlp_apply)(mlp, x)
  >>> bool(jnp.allclose(logits, model.apply({"params": params}, x, train=False), atol=1e-5))
  True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

__all__ = ["SparseLinear", "SparseMLP", "sparse_mlp_apply", "to_sparse_mlp"]


class SparseLinear(NamedTuple):
    """One dense layer: ``kernel`` as an ``out x in`` BCSR matrix (a row per output unit)."""

    kernel: sparse.BCSR
    bias: jax.Array


class SparseMLP(NamedTuple):
    """Dense layers in forward order, ReLU between them; a pytree, so it passes through jit."""

    layers: tuple[SparseLinear, ...]


def to_sparse_mlp(params: Mapping[str, Any], layers: Sequence[str] | None = None) -> SparseMLP:
    """The params of a fully connected stack as BCSR layers (only the kept weights stored).

    Args:
      params: ``{layer: {"kernel": (in, out), "bias": (out,)}}``, e.g. LeNet-300-100's params
        as ``progprune.export.load`` returns them.
      layers: the layer names in forward order (default: the order of ``params``).

    Returns:
      The `SparseMLP` for `sparse_mlp_apply`.

    Raises:
      ValueError: if a layer is not a dense layer or the layers do not chain.

    Example:
      >>> w = jnp.array([[0.0, 2.0], [0.0, 0.0]])
      >>> mlp = to_sparse_mlp({"fc": {"kernel": w, "bias": jnp.zeros(2)}})
      >>> int(mlp.layers[0].kernel.nse)  # one kept weight
      1
    """
    names = list(params) if layers is None else list(layers)
    out, width = [], None
    for name in names:
        layer = params[name]
        kernel = layer.get("kernel") if isinstance(layer, Mapping) else None
        if kernel is None or jnp.ndim(kernel) != 2 or "bias" not in layer:
            raise ValueError(
                f"params[{name!r}] is not a dense layer (a rank-2 'kernel' and a 'bias'); the "
                "sparse forward covers stacks of dense layers only (LeNet300100, TinyMLP)."
            )
        if width is not None and kernel.shape[0] != width:
            raise ValueError(
                f"layer {name!r} takes {kernel.shape[0]} inputs but the previous layer gives "
                f"{width}; pass layers=(...) in forward order."
            )
        width = kernel.shape[1]
        out.append(SparseLinear(_bcsr(np.asarray(kernel).T), jnp.asarray(layer["bias"])))
    return SparseMLP(tuple(out))


def _bcsr(matrix: np.ndarray) -> sparse.BCSR:
    """The non-zero entries of a 2-D host array as BCSR, built in numpy.

    ``BCSR.fromdense`` compiles a program per shape (seconds on a CPU); this costs one pass.
    """
    rows, cols = np.nonzero(matrix)  # row-major: sorted by row, then column
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=matrix.shape[0]))])
    arrays = (matrix[rows, cols], cols.astype(np.int32), indptr.astype(np.int32))
    return sparse.BCSR(tuple(jnp.asarray(a) for a in arrays), shape=matrix.shape)


def sparse_mlp_apply(mlp: SparseMLP, x: jax.Array) -> jax.Array:
    """Logits: flatten each example, then ``W x + b`` per layer with ReLU between layers.

    The computation of ``LeNet300100`` and ``TinyMLP`` in float32 (their outputs agree to
    float rounding). Jit it: ``jax.jit(sparse_mlp_apply)(mlp, x)``.

    Example:
      >>> w = jnp.array([[0.0, 2.0], [0.0, 0.0]])
      >>> mlp = to_sparse_mlp({"fc": {"kernel": w, "bias": jnp.ones(2)}})
      >>> sparse_mlp_apply(mlp, jnp.array([[3.0, 5.0]])).tolist()
      [[1.0, 7.0]]
    """
    h = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)
    for i, layer in enumerate(mlp.layers):
        # (out x in) @ (in x batch): BCSR multiplies a sparse left operand by a dense one.
        h = (layer.kernel @ h.T).T + layer.bias
        if i < len(mlp.layers) - 1:
            h = jax.nn.relu(h)
    return h
