"""Mask records: the masks (and chosen weights) of a run at every mask update, for analysis.

With ``config.record_masks`` the trainer writes ``workdir/records/step_<step>.npz`` after step 0,
after every ``update_every``-th step of a scheduled method (progressive, GMP, one-shot) and after
the last step. Record ``k`` holds the state after ``steps[k]`` optimizer steps:

* its masks are the ones in force during that step, bit-packed (``np.packbits``: 1 bit a weight);
* its weights (float32, only the leaves whose path matches ``config.record_weights``) are
  exactly the ones the mask update at the start of the next step ranks.

So for consecutive multiples of ``update_every``, ``masks[k + 1]`` is what the update that ranked
``weights[k]`` produced out of ``masks[k]``. Every record is written to a temporary file and
renamed; a resumed run first removes the records past its checkpoint, and replays the same steps,
so it ends with the same records as an uninterrupted run.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

import progprune
from progprune.prunable import leaves_with_paths

PyTree = Any
RECORDS_DIR = "records"

__all__ = ["MaskHistory", "MaskRecorder", "load_mask_history", "make_recorder", "write_record"]


class MaskHistory(NamedTuple):
    """A run's records, oldest first (see the module docstring for what record ``k`` holds).

    Attributes:
      steps: optimizer steps taken when each record was written.
      masks: mask trees (nested dicts of bool arrays keyed like the params).
      weights: trees of the recorded weights (float32), ``{}`` where none were recorded.
    """

    steps: list[int]
    masks: list[PyTree]
    weights: list[PyTree]


def _record_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.npz"


def _nest(flat: dict[str, np.ndarray]) -> dict:
    """{"fc1/kernel": x} -> {"fc1": {"kernel": x}}: the params' structure for dict params."""
    tree: dict = {}
    for path, leaf in flat.items():
        *parents, name = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[name] = leaf
    return tree


def write_record(directory: str | os.PathLike, step: int, masks: PyTree, weights: PyTree) -> Path:
    """Writes one record (bit-packed masks, float32 weights) atomically; returns its path.

    Args:
      directory: the records directory (created if missing).
      step: optimizer steps taken; names the file.
      masks: mask tree (bool leaves).
      weights: tree of weights to keep with the masks (any subset of the params), or ``{}``.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> write_record(d, 5, {"w": np.array([[True, False]])}, {}).name
      'step_00000005.npz'
      >>> load_mask_history(Path(d).parent, records_dir=Path(d).name).masks[0]["w"].tolist()
      [[True, False]]
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for path, mask in leaves_with_paths(masks)[0]:
        mask = np.asarray(mask, bool)
        arrays[f"mask/{path}"] = np.packbits(mask.ravel())
        arrays[f"shape/{path}"] = np.asarray(mask.shape, np.int64)
    for path, weight in leaves_with_paths(weights)[0]:
        arrays[f"weight/{path}"] = np.asarray(weight, np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    final = _record_path(directory, step)
    tmp = final.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(final)  # a reader never sees half a record
    return final


def _read_record(path: Path) -> tuple[PyTree, PyTree]:
    with np.load(path) as data:
        masks, weights = {}, {}
        for key in data.files:
            kind, leaf = key.split("/", 1)
            if kind == "mask":
                shape = tuple(data[f"shape/{leaf}"])
                size = int(np.prod(shape, dtype=np.int64))
                masks[leaf] = np.unpackbits(data[key], count=size).astype(bool).reshape(shape)
            elif kind == "weight":
                weights[leaf] = data[key]
    return _nest(masks), _nest(weights)


def _record_steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(p.stem.removeprefix("step_")) for p in directory.glob("step_*.npz"))


def load_mask_history(workdir: str | os.PathLike, *, records_dir: str = RECORDS_DIR) -> MaskHistory:
    """Reads every record a run wrote (``config.record_masks=True``), oldest first.

    Args:
      workdir: the run's workdir.
      records_dir: the records' subdirectory of ``workdir``.

    Returns:
      A `MaskHistory` of steps, mask trees and weight trees.

    Raises:
      FileNotFoundError: the run wrote no records.

    Example:
      >>> history = load_mask_history("/tmp/run")  # doctest: +SKIP
      >>> history.steps[:3], history.masks[-1]["fc1"]["kernel"].mean()  # doctest: +SKIP
      ([0, 234, 468], 0.075)
    """
    directory = Path(workdir) / records_dir
    steps = _record_steps(directory)
    if not steps:
        raise FileNotFoundError(
            f"no mask records in {str(directory)!r}; train with --config.record_masks=True."
        )
    pairs = [_read_record(_record_path(directory, s)) for s in steps]
    return MaskHistory(steps, [m for m, _ in pairs], [w for _, w in pairs])


class MaskRecorder:
    """Writes a record after each step that `due` names (the trainer's hook, process 0 writes).

    Example:
      >>> import tempfile
      >>> updates_at = lambda count: count % 4 == 0  # a PruningSetup's may_update_masks
      >>> rec = MaskRecorder(Path(tempfile.mkdtemp()), updates_at, 10, None, lambda tree: tree)
      >>> [s for s in range(11) if rec.due(s)]
      [0, 4, 8, 10]
    """

    def __init__(
        self,
        directory: Path,
        updates_at: Callable[[int], bool],
        total_steps: int,
        weights: str | None,
        fetch: Callable[[PyTree], PyTree],
    ):
        self.directory, self.updates_at, self.total_steps = directory, updates_at, total_steps
        self.weights = None if weights is None else re.compile(weights)
        self.fetch = fetch  # device tree -> host numpy tree (the launcher's get_state)

    def due(self, step: int) -> bool:
        """Whether the state after `step` steps is recorded: step 0, the last, and every state
        a mask update ranks (the update at optimizer count `step` sees it)."""
        return step in (0, self.total_steps) or self.updates_at(step)

    def forget_after(self, step: int) -> None:
        """Removes records past `step` (a resumed run writes them again, identically)."""
        if jax.process_index() == 0:
            for s in _record_steps(self.directory):
                if s > step:
                    _record_path(self.directory, s).unlink()

    def after_step(self, step: int, state: Any) -> None:
        """Records ``state`` (a TrainState after `step` steps) if `due`."""
        if not self.due(step):
            return
        masks = progprune.get_masks(state.opt_state)
        chosen = {}
        if self.weights is not None:
            flat = leaves_with_paths(state.params)[0]
            chosen = {path: w for path, w in flat if self.weights.search(path)}
        masks, chosen = self.fetch((masks, chosen))  # every process fetches (collective)
        if jax.process_index() == 0:
            write_record(self.directory, step, masks, _nest(chosen))


def make_recorder(
    config: ml_collections.ConfigDict,
    workdir: Path,
    setup: Any,
    total_steps: int,
    host_state: Any,
    fetch: Callable[[PyTree], PyTree],
) -> MaskRecorder | None:
    """The run's recorder (None without ``config.record_masks``), ready at the restored step.

    Removes the records past the restored step and, for a fresh run, writes the step-0 record.

    Args:
      config: the run's config (``record_masks``, ``record_weights``).
      workdir: the run's workdir; records go to ``workdir/records``.
      setup: the method's ``PruningSetup`` (schedule and mask-update period).
      total_steps: steps of the whole run.
      host_state: the TrainState the run starts from (host numpy).
      fetch: device tree -> host numpy tree.

    Example:
      >>> rec = make_recorder(config, workdir, setup, 4680, host_state, to_host)  # doctest: +SKIP
    """
    if config.record_weights is not None and not config.record_masks:
        raise ValueError(
            f"config.record_weights={config.record_weights!r} is recorded with the masks, "
            "which are off; set config.record_masks=True (or record_weights=None)."
        )
    if not config.record_masks:
        return None
    if config.record_weights is not None:
        try:
            re.compile(config.record_weights)
        except re.error as e:
            raise ValueError(
                f"config.record_weights={config.record_weights!r} is not a regex ({e}); "
                "use e.g. 'kernel' or '.*'."
            ) from e
    # Fixed masks change nowhere (may_update_masks is always False): first and last records.
    recorder = MaskRecorder(
        workdir / RECORDS_DIR, setup.may_update_masks, total_steps, config.record_weights, fetch
    )
    start = int(host_state.step)
    recorder.forget_after(start)
    if start == 0:
        recorder.after_step(0, host_state)
    return recorder
