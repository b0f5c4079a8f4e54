"""Config-driven training: ``python -m progprune.train --config=configs/<name>.py --workdir=DIR``.

`train_and_evaluate` runs one config (dense, progressive pruning or a baseline) data-parallel
over the available devices, checkpointing and resuming from its workdir.
"""

from progprune.train.loop import (
    PreemptedError,
    load_final_params,
    load_rewind_params,
    train_and_evaluate,
)

__all__ = ["PreemptedError", "load_final_params", "load_rewind_params", "train_and_evaluate"]
