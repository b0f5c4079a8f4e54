"""Shared recipe of the four LeNet configs (not a config itself)."""

import ml_collections

from configs import default


def lenet_config(model: str, data: str, sparsity: float) -> ml_collections.ConfigDict:
    """40 epochs of SGD 0.05 (cosine), weight decay 5e-4, the default ramp (configs/default.py).

    The ramp ends at half of training, masks every 20 steps: the settings the equal-cost runs
    found best for both LeNets on Fashion-MNIST (experiments/results/fmnist_equal_cost.md).

    >>> lenet_config("lenet5", "mnist", sparsity=0.99).pruning.end_fraction
    0.5
    """
    config = default.get_config()
    config.model = model  # lenet300_100 | lenet5
    config.data.name = data  # mnist | fashion_mnist
    config.num_epochs = 40.0
    config.batch_size = 128
    config.learning_rate = 0.05
    config.weight_decay = 5e-4
    config.lr_schedule = "cosine"
    config.pruning.method = "progressive"
    config.pruning.sparsity = sparsity
    config.log_every_steps = 200
    config.checkpoint_every_steps = 2000
    return config
