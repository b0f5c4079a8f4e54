"""VGG-like (SNIP's VGG-16 variant with BatchNorm) on CIFAR-10, progressive pruning to 97%.

    python -m progprune.data prepare cifar10            # once, needs the network
    python -m progprune.train --config=configs/vgglike_cifar10.py --workdir=/tmp/vgglike

200 epochs, cosine learning rate. Expected (paper, not yet reproduced here): 93.13% test
accuracy at 0.97 sparsity (SNIP: ~92.0%). Cost: ~78k steps; tens of minutes on one GPU.
"""

import ml_collections

from configs._cifar import cifar_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return cifar_config("vgg_like", sparsity=0.97, epochs=200.0, lr_schedule="cosine")
