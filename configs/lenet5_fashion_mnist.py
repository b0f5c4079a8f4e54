"""LeNet-5-Caffe on Fashion-MNIST, progressive pruning to 98%.

    python -m progprune.train --config=configs/lenet5_fashion_mnist.py \
        --workdir=/tmp/lenet5_fashion_mnist

Real Fashion-MNIST, read offline (/usr/share/datasets/fashion-mnist or --config.data.data_dir).
Expected: ~90-91% test accuracy at 0.98 sparsity (dense LeNet-5 reaches ~91%); about
30-40 minutes on 2 CPU cores (40 epochs), a minute or two on a GPU.
"""

import ml_collections

from configs._lenet import lenet_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return lenet_config("lenet5", "fashion_mnist", sparsity=0.98)
