"""Sparse inference of fully connected stacks (LeNet-300-100) with BCSR kernels: batches only.

``benchmarks/sparse_inference.py`` measured ``jax.experimental.sparse`` against the jitted dense
``model.apply`` on a shared 2-core CPU (kernels pruned uniformly; fastest of 100 interleaved
rounds; ``benchmarks/results/sparse_inference.json``). The whole LeNet-300-100 forward:

========  ==========  ======================  ========  ======================
sparsity  dense b128  BCSR b128 (speed-up)    dense b1  BCSR b1 (speed-up)
========  ==========  ======================  ========  ======================
90%       528 us      331 us (1.6x)           20 us     225 us (0.09x)
95%       435 us      189 us (2.3x)           22 us     119 us (0.18x)
98%       455 us       92 us (5.0x)           23 us      56 us (0.41x)
99%       397 us       86 us (4.6x)           24 us      36 us (0.67x)
========  ==========  ======================  ========  ======================

BCSR also needs less memory (XLA's buffers at batch 128: 1.18-0.99 MB against 1.68 MB; the
kernels 215-23 KB against 1.06 MB). So this path is offered for **batched** inference: at
batch 1 the dense forward is faster at every sparsity measured (BCOO wins only at 99%, 16 us
against 24 us, and is not offered; at batch 128 it loses below 99% and needs 1.1-8x the dense
memory). Single layers at batch 128 agree: lenet5's 800x500 ``fc1`` 0.97x at 90%, then
2.3-5.0x; vgg_like's 512x512 0.84x at 90%, then 1.5-3.5x; the 10-way classifier heads of the
other models take 7-25 us either way (dispatch-bound; BCSR 0.7-0.9x at batch 128). Flax
modules cannot take sparse kernels (``jax.experimental.sparse.sparsify`` fails on
``nn.Dense``), so only models made of dense layers and ReLUs (``LeNet300100``, ``TinyMLP``)
have a sparse forward here.

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
