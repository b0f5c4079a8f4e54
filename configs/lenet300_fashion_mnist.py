"""LeNet-300-100 on Fashion-MNIST, progressive pruning to 95%.

    python -m progprune.train --config=configs/lenet300_fashion_mnist.py \
        --workdir=/tmp/lenet300_fashion_mnist

Real Fashion-MNIST, read offline (/usr/share/datasets/fashion-mnist or --config.data.data_dir).
Not run here. Nearest measured: 10 epochs of a similar recipe reach 88.71% at 0.95 (dense
89.50%; experiments/results/fmnist_lenet300_cpu.csv) at 1.2-1.9 s an epoch on a shared 2-core
CPU, so these 40 epochs should take 50-80 s. configs/quickstart.py: 0.8981 at 90%
(experiments/results/quickstart_run.json).
"""

import ml_collections

from configs._lenet import lenet_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return lenet_config("lenet300_100", "fashion_mnist", sparsity=0.95)
