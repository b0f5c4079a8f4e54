"""Config and workdir checks that run before any work: one clear error naming key and fix."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ml_collections

# Every key the trainer reads, with the types it accepts. A key outside this table is a typo.
_NUM = (int, float)
_STR_OR_NONE = (str, type(None))
SCHEMA: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "data.name": (str,),
    "data.data_dir": _STR_OR_NONE,
    "data.source": (str,),
    "data.augment": (bool,),
    "data.train_split": (str,),
    "data.eval_split": (str,),
    "num_epochs": _NUM,
    "num_train_steps": (int,),
    "batch_size": (int,),
    "eval_batch_size": (int,),
    "optimizer": (str,),
    "learning_rate": _NUM,
    "momentum": _NUM,
    "nesterov": (bool,),
    "weight_decay": _NUM,
    "lr_schedule": (str,),
    "warmup_epochs": _NUM,
    "lr_decay_fractions": (tuple, list),
    "lr_decay_factor": _NUM,
    "pruning.method": (str,),
    "pruning.sparsity": _NUM,
    "pruning.begin_fraction": _NUM,
    "pruning.end_fraction": _NUM,
    "pruning.update_every": (int,),
    "pruning.distribution": (str,),
    "pruning.prunable": _STR_OR_NONE,
    "pruning.oneshot_fraction": _NUM,
    "pruning.imp_rounds": (int,),
    "pruning.imp_rate": _NUM,
    "pruning.imp_sparsities": (tuple, list),
    "pruning.rewind_step": (int,),
    "pruning.score_batches": (int,),
    "pruning.random_distribution": (str,),
    "seed": (int,),
    "dtype": (str,),
    "parallel": (str,),
    "num_devices": (int,),
    "log_every_steps": (int,),
    "eval_every_epochs": _NUM,
    "checkpoint_every_steps": (int,),
    "max_to_keep": (int,),
    "async_checkpointing": (bool,),
    "progress_bar": (bool,),
    "overwrite": (bool,),
    "record_masks": (bool,),
    "record_weights": _STR_OR_NONE,
}

CHOICES = {
    "optimizer": ("sgd", "adam"),
    "lr_schedule": ("cosine", "step", "constant"),
    "dtype": ("float32", "bfloat16"),
    "parallel": ("shard_map", "pmap"),
    "pruning.distribution": ("global", "uniform", "erk"),
    "pruning.random_distribution": ("erk", "uniform"),
}


def _flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _fail(key: str, value: Any, why: str, fix: str) -> ValueError:
    return ValueError(f"config.{key}={value!r} is invalid: {why}. Fix: {fix}")


def check_schema(flat: dict) -> None:
    """Unknown keys, missing keys and wrong types, given the flattened (dotted-key) config.

    >>> check_schema({"modle": "lenet5"})
    Traceback (most recent call last):
    ValueError: unknown config key(s) config.modle; start from configs/default.py and check ...
    """
    unknown = sorted(set(flat) - set(SCHEMA))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join('config.' + k for k in unknown)}; "
            "start from configs/default.py and check the spelling."
        )
    missing = sorted(set(SCHEMA) - set(flat))
    if missing:
        raise ValueError(f"missing config key(s) {missing}; start from configs/default.py.")
    for key, types in SCHEMA.items():
        value = flat[key]
        # bool is an int subclass; a flag is never a number here.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = "/".join(t.__name__ for t in types)
            raise _fail(key, value, f"expected {names}", f"set a {names} value")


def check_values(flat: dict, num_devices: int) -> None:
    """Ranges, choices and divisibility, given a flattened config that passed `check_schema`.

    Example:
      >>> from configs import tiny
      >>> flat = _flatten(tiny.get_config().to_dict())
      >>> check_values(flat, num_devices=3)
      Traceback (most recent call last):
      ValueError: config.batch_size=64 is invalid: not divisible by the 3 devices in use. Fix: ...
    """
    from progprune import data, models
    from progprune.methods import METHODS

    choices = dict(CHOICES, **{"pruning.method": METHODS, "model": models.MODEL_NAMES})
    choices["data.name"] = data.DATASET_NAMES
    for key, allowed in choices.items():
        if flat[key] not in allowed:
            raise _fail(key, flat[key], "unknown choice", f"use one of {tuple(allowed)}")
    s = flat["pruning.sparsity"]
    if not 0.0 <= s < 1.0:
        raise _fail("pruning.sparsity", s, "must be in [0, 1)", "e.g. 0.9 for 90% sparsity")
    b, e = flat["pruning.begin_fraction"], flat["pruning.end_fraction"]
    if not 0.0 <= b <= e <= 1.0:
        raise _fail("pruning.end_fraction", e, f"need 0 <= begin ({b}) <= end <= 1", "reorder")
    positive = ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps")
    for key in (*positive, "max_to_keep", "learning_rate", "eval_every_epochs"):
        if flat[key] <= 0:
            raise _fail(key, flat[key], "must be > 0", "use a positive value")
    if flat["num_train_steps"] <= 0 and flat["num_epochs"] <= 0:
        raise _fail("num_epochs", flat["num_epochs"], "no training steps", "set num_epochs > 0")
    for key in ("batch_size", "eval_batch_size"):
        if flat[key] % num_devices:
            raise _fail(
                key,
                flat[key],
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
    flat = _flatten(config.to_dict())
    check_schema(flat)
    check_values(flat, num_devices)
    return check_workdir(workdir)
