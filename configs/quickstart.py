"""Quickstart: LeNet-300-100 on Fashion-MNIST, pruned progressively to 90% sparsity.

    python -m progprune.train --config=configs/quickstart.py --workdir=/tmp/quickstart

Real Fashion-MNIST (read offline from /usr/share/datasets/fashion-mnist or --config.data.data_dir).
Measured here: test accuracy 0.8957 at 0.9000 global sparsity (fc1 0.921, fc2 0.753,
fc3 0.319), 13 s of training and 17 s end to end on an idle 2-core CPU
(experiments/results/quickstart_run.json, with its commit); 89.58 ± 0.14% over 5 seeds
(experiments/results/quickstart_ramps.md).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    config = default.get_config()
    config.model = "lenet300_100"
    config.data.name = "fashion_mnist"
    config.num_epochs = 20.0
    config.batch_size = 128
    config.learning_rate = 0.05
    config.weight_decay = 1e-4
    config.pruning.method = "progressive"
    config.pruning.sparsity = 0.9
    # The ramp's defaults: to 90% by half of training, masks every 20 steps.
    config.log_every_steps = 100
    return config
