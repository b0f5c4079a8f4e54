"""Which leaves of a pytree may be pruned, chosen by path regex, predicate or rank."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
Predicate = Callable[[str, Any], bool]
Prunable = str | Predicate | None

__all__ = ["Prunable", "leaves_with_paths", "path_str", "prunable_mask"]


def path_str(path: tuple) -> str:
    """'/'-joined key path, e.g. ``params/Dense_0/kernel``, as big_vision names parameters."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def leaves_with_paths(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    """Flattens ``tree`` to ``[(path, leaf)]`` and its treedef, in ``tree_flatten`` order."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(path), leaf) for path, leaf in flat], treedef


def _is_float(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def _default_rule(path: str, leaf: Any) -> bool:
    # Dense and conv kernels have rank >= 2; biases and norm scales are vectors and stay dense.
    del path
    return _is_float(leaf) and leaf.ndim >= 2


def prunable_mask(params: PyTree, prunable: Prunable = None) -> PyTree:
    """For each leaf of ``params``, whether it may be pruned.

    Only floating-point leaves are ever prunable (integer and boolean leaves never are).

    Args:
      params: any pytree of arrays (dict, FrozenDict, ``nnx.State``, lists, tuples).
      prunable: ``None`` for the default rule (float leaves of rank >= 2: dense and conv
        kernels), a regex matched with ``re.search`` against the '/'-joined path, or a
        predicate ``(path, leaf) -> bool``.

    Returns:
      A pytree of Python bools with the structure of ``params``.

    Raises:
      ValueError: if ``prunable`` has an unsupported type or selects no leaf.

    Example:
      >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
      >>> prunable_mask(params)
      {'dense': {'bias': False, 'kernel': True}}
    """
    flat, treedef = leaves_with_paths(params)
    if prunable is None:
        rule = _default_rule
    elif isinstance(prunable, str):
        try:
            pattern = re.compile(prunable)
        except re.error as e:
            raise ValueError(f"prunable is not a valid regex: {prunable!r} ({e}).") from None

        def rule(path, leaf):
            return _is_float(leaf) and pattern.search(path) is not None
    elif callable(prunable):

        def rule(path, leaf):
            return _is_float(leaf) and bool(prunable(path, leaf))
    else:
        raise ValueError(
            "prunable must be None, a path regex (str) or a predicate (path, leaf) -> bool; "
            f"got {type(prunable).__name__}."
        )
    chosen = [rule(path, leaf) for path, leaf in flat]
    if flat and not any(chosen):
        paths = ", ".join(path for path, _ in flat[:8])
        raise ValueError(
            f"prunable={prunable!r} selects no floating-point leaf of the params (paths: "
            f"{paths}{', ...' if len(flat) > 8 else ''}). Pass a regex or predicate that "
            "matches the kernels to prune."
        )
    return jax.tree_util.tree_unflatten(treedef, chosen)
