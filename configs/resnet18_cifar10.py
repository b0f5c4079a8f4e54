"""ResNet-18 (CIFAR stem) on CIFAR-10, progressive pruning to 72.9% (the paper's headline).

    python -m progprune.data prepare cifar10            # once, needs the network
    python -m progprune.train --config=configs/resnet18_cifar10.py --workdir=/tmp/resnet18

200 epochs, cosine learning rate. Paper: 95.12% test accuracy at 0.729 sparsity, within
0.1 pp of dense (the seed paper's abstract, arXiv 2606.12278). Not run here. Cost: ~78k
steps (bf16 on an accelerator: add --config.dtype=bfloat16).
"""

import ml_collections

from configs._cifar import cifar_config


def get_config() -> ml_collections.ConfigDict:
    """Returns this file's config (see the module docstring for the command)."""
    return cifar_config("resnet18", sparsity=0.729, epochs=200.0, lr_schedule="cosine")
