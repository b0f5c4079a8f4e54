"""Config-driven training: ``python -m progprune.train --config=configs/<name>.py --workdir=DIR``.

`train_and_evaluate` runs one config (dense, progressive pruning or a baseline) data-parallel
over the available devices, checkpointing and resuming from its workdir. What can stop a run,
and with which exit code, is in `progprune.train.errors`.
"""

from progprune.train.errors import (
    NonFiniteError,
    PreemptedError,
    StorageError,
    WorkdirBusyError,
)
from progprune.train.loop import load_final_params, load_rewind_params, train_and_evaluate

__all__ = [
    "NonFiniteError",
    "PreemptedError",
    "StorageError",
    "WorkdirBusyError",
    "load_final_params",
    "load_rewind_params",
    "train_and_evaluate",
]
