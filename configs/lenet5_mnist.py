"""LeNet-5-Caffe on MNIST, progressive pruning to 99% (SNIP's Table 1 operating point).

    python -m progprune.train --config=configs/lenet5_mnist.py --workdir=/tmp/lenet5_mnist

MNIST is read from IDX files (--config.data.data_dir) or a prepared tfds directory
(`python -m progprune.data prepare mnist`); this machine has neither, so it was not run here.
Paper: SNIP 98.9% test accuracy at 0.99 sparsity, dense 99.1% (Lee et al. 2019, Table 1).
Not run here.
"""

import ml_collections

from configs._lenet import lenet_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return lenet_config("lenet5", "mnist", sparsity=0.99)
