"""progprune: progressive magnitude-based pruning in one training run, for JAX and optax.

Sparsity rises on a schedule while training; at each mask update the globally
smallest-magnitude active weights are pruned. Models, data and training live in the submodules
``progprune.models``, ``progprune.data`` and ``progprune.train``.
"""

from progprune.distributions import DISTRIBUTIONS, erk_densities
from progprune.masks import mask_updater, prune_to_sparsity
from progprune.optimizer import MaskedPruningState, check_pruning, get_masks, masked, set_masks
from progprune.prunable import prunable_mask
from progprune.schedules import (
    Schedule,
    constant_schedule,
    cosine_schedule,
    linear_schedule,
    one_shot_schedule,
    polynomial_schedule,
)
from progprune.stats import mask_changes, sparsity_summary

__version__ = "0.1.0"

__all__ = [
    "DISTRIBUTIONS",
    "MaskedPruningState",
    "Schedule",
    "check_pruning",
    "constant_schedule",
    "cosine_schedule",
    "erk_densities",
    "get_masks",
    "linear_schedule",
    "mask_changes",
    "mask_updater",
    "masked",
    "one_shot_schedule",
    "polynomial_schedule",
    "prunable_mask",
    "prune_to_sparsity",
    "set_masks",
    "sparsity_summary",
]
