"""VGG-like (SNIP's VGG-16 variant with BatchNorm) on CIFAR-10, progressive pruning to 97%.

    python -m progprune.data prepare cifar10            # once, needs the network
    python -m progprune.train --config=configs/vgglike_cifar10.py --workdir=/tmp/vgglike

200 epochs, cosine learning rate. Paper: 93.13% test accuracy at 0.97 sparsity (the seed
paper's abstract, arXiv 2606.12278; SNIP, Lee et al. 2019: 92.0%). Not run here. Cost: ~78k
steps.
"""

import ml_collections

from configs._cifar import cifar_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return cifar_config("vgg_like", sparsity=0.97, epochs=200.0, lr_schedule="cosine")
