"""Config and workdir checks that run before any work: one clear error naming key and fix.

A locked ``ConfigDict`` (as ``configs/*.py`` and the command line build them) already rejects
unknown keys and values of the wrong type. What is left are choices and ranges. Each list of
choices lives next to what it chooses (models, data sets, methods, distributions, optimizers,
launchers) and is only looked up here; the sparsity rule is the core's own.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ml_collections

from progprune.schedules import check_sparsity


def _fail(key: str, value: Any, why: str, fix: str) -> ValueError:
    return ValueError(f"config.{key}={value!r} is invalid: {why}. Fix: {fix}")


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def choices() -> dict[str, tuple[str, ...]]:
    """Each config field that names a choice, and the choices, from the module that owns them.

    >>> choices()["pruning.method"][:3]
    ('dense', 'progressive', 'gmp')
    """
    from progprune import DISTRIBUTIONS, data, methods, models
    from progprune.data.sources import SOURCES
    from progprune.distributions import PER_LAYER_DISTRIBUTIONS
    from progprune.train import build, parallel

    return {
        "model": models.MODEL_NAMES,
        "data.name": data.DATASET_NAMES,
        "data.source": SOURCES,
        "optimizer": build.OPTIMIZERS,
        "lr_schedule": build.LR_SCHEDULES,
        "dtype": tuple(build.DTYPES),
        "parallel": tuple(parallel.LAUNCHERS),
        "pruning.method": methods.METHODS,
        "pruning.distribution": DISTRIBUTIONS,
        "pruning.random_distribution": PER_LAYER_DISTRIBUTIONS,
    }


def _number(config: ml_collections.ConfigDict, key: str) -> float:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, value, "expected a number", "pass a number")
    return value


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Choices, ranges and divisibility of a full trainer config; raises ValueError.

    Example:
      >>> from configs import tiny
      >>> check_config(tiny.get_config(), num_devices=3)
      Traceback (most recent call last):
      ValueError: config.batch_size=64 is invalid: not divisible by the 3 devices in use. Fix: ...
    """
    for key, allowed in choices().items():
        if _get(config, key) not in allowed:
            raise _fail(key, _get(config, key), "unknown choice", f"use one of {tuple(allowed)}")
    check_sparsity(config.pruning.sparsity, "config.pruning.sparsity")
    for i, target in enumerate(config.pruning.imp_sparsities):
        check_sparsity(target, f"config.pruning.imp_sparsities[{i}]")
    if not 0.0 < config.pruning.imp_rate <= 1.0:
        raise _fail(
            "pruning.imp_rate",
            config.pruning.imp_rate,
            "must be in (0, 1]",
            "e.g. 0.2 (each IMP round prunes 20% of the remaining weights)",
        )
    b, e = config.pruning.begin_fraction, config.pruning.end_fraction
    if not 0.0 <= b <= e <= 1.0:
        raise _fail("pruning.end_fraction", e, f"need 0 <= begin ({b}) <= end <= 1", "reorder")
    if not 0.0 <= config.pruning.oneshot_fraction <= 1.0:
        raise _fail(
            "pruning.oneshot_fraction",
            config.pruning.oneshot_fraction,
            "must be in [0, 1]",
            "e.g. 0.5 to prune at half of training",
        )
    positive = ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps")
    for key in (*positive, "max_to_keep", "learning_rate", "eval_every_epochs"):
        if _number(config, key) <= 0:
            raise _fail(key, _get(config, key), "must be > 0", "use a positive value")
    for key in ("max_steps_in_flight", "pruning.update_every", "num_devices"):
        if _number(config, key) < 0:
            raise _fail(key, _get(config, key), "must be >= 0", "0 = automatic")
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise _fail("num_epochs", config.num_epochs, "no training steps", "set num_epochs > 0")
    for key in ("batch_size", "eval_batch_size"):
        if _get(config, key) % num_devices:
            raise _fail(
                key,
                _get(config, key),
                f"not divisible by the {num_devices} devices in use",
                f"use a multiple of {num_devices} or set config.num_devices",
            )


def check_workdir(workdir: str | os.PathLike) -> Path:
    """Creates `workdir` if needed and proves it writable, or raises ValueError.

    >>> check_workdir("/proc/no_such_dir")
    Traceback (most recent call last):
    ValueError: workdir '/proc/no_such_dir' is not writable (...); pass a --workdir you can ...
    """
    path = Path(workdir).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(
            f"workdir {str(path)!r} is not writable ({e.strerror}); pass a --workdir you can "
            "write to."
        ) from e
    return path


def validate(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, num_devices: int
) -> Path:
    """All pre-flight checks; raises ValueError naming the key and a fix.

    Returns:
      The absolute workdir, created and shown to be writable.

    Example:
      >>> import tempfile
      >>> from configs import tiny
      >>> validate(tiny.get_config(), tempfile.mkdtemp(), num_devices=1).is_absolute()
      True
    """
    check_config(config, num_devices)
    return check_workdir(workdir)
