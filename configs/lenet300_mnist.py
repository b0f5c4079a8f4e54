"""LeNet-300-100 on MNIST, progressive pruning to 98% (SNIP's Table 1 operating point).

    python -m progprune.train --config=configs/lenet300_mnist.py --workdir=/tmp/lenet300_mnist

MNIST is read from IDX files (--config.data.data_dir) or a prepared tfds directory
(`python -m progprune.data prepare mnist`); this machine has neither, so it was not run here.
Expected: ~97.5-98% test accuracy at 0.98 sparsity (SNIP: 97.6% at 98%, dense 98.3%), about
10 minutes on 2 CPU cores (40 epochs).
"""

import ml_collections

from configs._lenet import lenet_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return lenet_config("lenet300_100", "mnist", sparsity=0.98)
