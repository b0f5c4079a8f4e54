"""VGG-19 (GraSP's, BatchNorm) on CIFAR-10, progressive pruning to 97.97%.

    python -m progprune.data prepare cifar10            # once, needs the network
    python -m progprune.train --config=configs/vgg19_cifar10.py --workdir=/tmp/vgg19

GraSP's recipe: 160 epochs, step decay x0.1 at epochs 80 and 120. Paper: 93.44% test
accuracy at 0.9797 sparsity (the seed paper's abstract, arXiv 2606.12278; GraSP, Wang et al.
2020: 92.19% at 98%). Not run here. Cost: ~62k steps.
"""

import ml_collections

from configs._cifar import cifar_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return cifar_config("vgg19", sparsity=0.9797, epochs=160.0, lr_schedule="step")
