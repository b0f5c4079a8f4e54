"""LeNet-300-100 on Fashion-MNIST, progressive pruning to 95%.

    python -m progprune.train --config=configs/lenet300_fashion_mnist.py \
        --workdir=/tmp/lenet300_fashion_mnist

Real Fashion-MNIST, read offline (/usr/share/datasets/fashion-mnist or --config.data.data_dir).
Expected: ~89% test accuracy at 0.95 sparsity (dense LeNet-300-100 reaches ~89-90%); about
5-10 minutes on 2 CPU cores (40 epochs). The shorter configs/quickstart.py gives ~89% at 90%.
"""

import ml_collections

from configs._lenet import lenet_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return lenet_config("lenet300_100", "fashion_mnist", sparsity=0.95)
