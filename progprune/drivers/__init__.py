"""Drivers: what runs a config from start to finish, above the trainer.

Most methods are one training run (`progprune.train.train_and_evaluate`). IMP repeats training:
`run_imp` trains its rounds one after the other, each with the masks the previous round's
weights give. `run` is the one entry point that tells the two apart; the command line and the
sweep runner call it, and the trainer knows nothing of IMP.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from progprune.drivers.imp import run_imp
from progprune.train import train_and_evaluate

__all__ = ["run", "run_imp"]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) a config: an IMP chain for ``method="imp"``, else one training run.

    Args:
      config: a config from ``configs/`` (see ``configs/default.py``).
      workdir: the run's directory (an IMP chain's rounds go into subdirectories).

    Returns:
      The summary, as `train_and_evaluate` or `run_imp` return it.

    Example:
      >>> import tempfile
      >>> from configs import tiny
      >>> config = tiny.get_config()
      >>> config.num_train_steps, config.progress_bar = 8, False
      >>> run(config, tempfile.mkdtemp())["steps"]  # doctest: +ELLIPSIS
      Training tiny_mlp on digits/train ...
      8
    """
    if config.pruning.method == "imp":
        return run_imp(config, workdir)
    return train_and_evaluate(config, workdir)
