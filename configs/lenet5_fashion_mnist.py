"""LeNet-5-Caffe on Fashion-MNIST, progressive pruning to 98%.

    python -m progprune.train --config=configs/lenet5_fashion_mnist.py \
        --workdir=/tmp/lenet5_fashion_mnist

Real Fashion-MNIST, read offline (/usr/share/datasets/fashion-mnist or --config.data.data_dir).
Not run here. Nearest measured: the same ramp with the same SGD 0.05 for 18 epochs (not 40)
reaches 90.50 +- 0.16% at 0.98 over 3 seeds, in 321 s of training on a shared 2-core CPU
(experiments/results/fmnist_equal_cost.csv, progressive-end0.5-every20), so these 40 epochs
should take about 12 minutes there.
"""

import ml_collections

from configs._lenet import lenet_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return lenet_config("lenet5", "fashion_mnist", sparsity=0.98)
