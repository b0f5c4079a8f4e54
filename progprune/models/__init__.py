"""Flax linen models (NHWC) for the pruning experiments, and a plain name lookup.

Every model has the fields `num_classes` (default 10), `dtype` (compute dtype; parameters stay
float32, logits are float32) and `axis_name` (the axis over which BatchNorm averages statistics
under pmap/shard_map; accepted and unused by the models without BatchNorm). BN models keep their
statistics in the "batch_stats" collection. Parameter paths use readable layer names
("params/stage2_block1/shortcut_conv/kernel", "params/conv3/kernel", "params/fc/bias"). Call them as
`model.apply(variables, x, train=...)`, with `mutable=["batch_stats"]` when training a BN model.

| name           | class        | params (CIFAR-10 / 28x28x1 for the LeNets) |
|----------------|--------------|--------------------------------------------|
| lenet300_100   | LeNet300100  | 266,610                                    |
| lenet5         | LeNet5       | 431,080                                    |
| vgg_like       | VGGLike      | 14,991,946                                 |
| vgg19          | VGG19        | 20,035,018                                 |
| resnet18       | ResNet18     | 11,173,962                                 |
| resnet20       | ResNet20     | 272,474 (option B shortcuts)               |
| resnet32       | ResNet32     | 466,906 (option B shortcuts)               |
| tiny_mlp       | TinyMLP      | tests only                                 |
| tiny_cnn       | TinyCNN      | tests only                                 |
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax

from progprune.models.lenet import LeNet5, LeNet300100
from progprune.models.resnet import BasicBlock, ResNet18, ResNet20, ResNet32
from progprune.models.tiny import TinyCNN, TinyMLP
from progprune.models.vgg import VGG19, VGGLike

__all__ = [
    "MODEL_NAMES",
    "BasicBlock",
    "LeNet300100",
    "LeNet5",
    "ResNet18",
    "ResNet20",
    "ResNet32",
    "TinyCNN",
    "TinyMLP",
    "VGG19",
    "VGGLike",
    "get_model",
    "param_count",
]

_MODELS: dict[str, type[nn.Module]] = {
    "lenet300_100": LeNet300100,
    "lenet5": LeNet5,
    "vgg_like": VGGLike,
    "vgg19": VGG19,
    "resnet18": ResNet18,
    "resnet20": ResNet20,
    "resnet32": ResNet32,
    "tiny_mlp": TinyMLP,
    "tiny_cnn": TinyCNN,
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds a model from its snake_case name (see `MODEL_NAMES`) or its class name.

    Args:
      name: e.g. "resnet18" or "ResNet18".
      num_classes: Output width.
      **kwargs: Other fields of the model, e.g. `dtype=jnp.bfloat16`, `axis_name="batch"`.

    Returns:
      The (unbound) Flax module.

    Raises:
      ValueError: if `name` is unknown; the message lists the valid names.

    Example:
      >>> model = get_model("resnet20", num_classes=100)
      >>> model.num_classes
      100
    """
    cls = _MODELS.get(name) or {c.__name__: c for c in _MODELS.values()}.get(name)
    if cls is None:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return cls(num_classes=num_classes, **kwargs)


def param_count(params: Any) -> int:
    """Total number of entries over all leaves; works on arrays and `jax.ShapeDtypeStruct`s.

    Pass `variables["params"]` to leave BatchNorm statistics out of the count.

    Example:
      >>> import jax.numpy as jnp
      >>> param_count({"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)})
      16
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
