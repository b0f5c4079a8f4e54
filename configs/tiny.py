"""Tiny test config: a small MLP on scikit-learn's digits (real 8x8 images), seconds on a CPU.

    python -m progprune.train --config=configs/tiny.py --workdir=/tmp/tiny

For tests only. Measured here: 0.8639 test accuracy at 50% sparsity after 2 epochs, pinned
by tests/test_train.py (test_summary_and_metrics), which runs it at every commit.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    config = default.get_config()
    config.model = "tiny_mlp"
    config.data.name = "digits"
    config.num_epochs = 2.0
    config.batch_size = 64
    config.eval_batch_size = 128
    config.learning_rate = 0.05
    config.pruning.sparsity = 0.5
    config.pruning.end_fraction = 0.5
    config.pruning.update_every = 4
    config.log_every_steps = 5
    config.eval_every_epochs = 1.0
    config.checkpoint_every_steps = 10
    config.async_checkpointing = False
    return config
