"""Shared CIFAR-10 recipe (not a config itself).

SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, crop (pad 4) + flip on the device; the
linear sparsity ramp runs from the start to 60% of training, masks updated every half epoch.
"""

import ml_collections

from configs import default


def cifar_config(
    model: str, sparsity: float, epochs: float, lr_schedule: str
) -> ml_collections.ConfigDict:
    """The shared CIFAR-10 recipe (module docstring) for `model`, `sparsity` and duration.

    >>> cifar_config("vgg19", 0.98, epochs=160.0, lr_schedule="step").data.augment
    True
    """
    config = default.get_config()
    config.model = model  # resnet18 | vgg_like | vgg19
    config.data.name = "cifar10"
    config.data.augment = True  # random crop with 4-px padding + horizontal flip
    config.num_epochs = epochs
    config.batch_size = 128
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.weight_decay = 5e-4
    config.lr_schedule = lr_schedule  # cosine | step (x0.1 at 50% and 75%)
    config.lr_decay_fractions = (0.5, 0.75)
    config.pruning.method = "progressive"
    config.pruning.sparsity = sparsity
    # Not the trainer's defaults (end 0.5, every 20 steps): those were chosen on LeNets with 468
    # steps an epoch and are unmeasured on CIFAR-10 (390 steps an epoch, 11-20M weights).
    config.pruning.begin_fraction = 0.0
    config.pruning.end_fraction = 0.6
    config.pruning.update_every = 0  # half an epoch (195 steps)
    config.eval_every_epochs = 5.0
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    return config
