"""LeNet-5-Caffe on Fashion-MNIST, progressive pruning to 98%.

    python -m progprune.train --config=configs/lenet5_fashion_mnist.py \
        --workdir=/tmp/lenet5_fashion_mnist

Real Fashion-MNIST, read offline (/usr/share/datasets/fashion-mnist or --config.data.data_dir).
Not run here. Nearest measured: 3 epochs, one seed, reach 85.28% at 0.98 (dense 90.65%;
experiments/results/fmnist_lenet5_cpu.csv) at 34-48 s an epoch on a shared 2-core CPU, with
the max-pool of that time; today's makes a step 2.1x faster (benchmarks/results/lenet5_step.json:
69.6 -> 32.5 ms a step, about 15 s an epoch).
"""

import ml_collections

from configs._lenet import lenet_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return lenet_config("lenet5", "fashion_mnist", sparsity=0.98)
