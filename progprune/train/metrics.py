"""What a user sees: metrics.jsonl, TensorBoard events, a progress bar and the summary.

Only process 0 writes files. TensorBoard events are written with tensorboardX, which does
not need TensorFlow.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import jax


class MetricWriter:
    """Appends rows to ``workdir/metrics.jsonl`` and scalars to TensorBoard.

    On resume, rows past the restored step are dropped first, so a killed-and-resumed run
    ends with the same file as an uninterrupted one.

    Example:
      >>> w = MetricWriter("/tmp/mw_doc", resume_step=0)  # doctest: +SKIP
      >>> w.write(10, {"train_loss": 0.5})                 # doctest: +SKIP
    """

    def __init__(self, workdir: str | Path, resume_step: int, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not self.active:
            return
        truncate_jsonl(self.path, resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, row: dict[str, Any]) -> None:
        """Appends ``{"step": step, **row}``; a dict value becomes TensorBoard scalars key/sub."""
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **row}, sort_keys=False) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, dict):
                    for sub, v in value.items():
                        self._tb.add_scalar(f"{key}/{sub}", v, step)
                elif isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()


def truncate_jsonl(path: Path, max_step: int) -> None:
    r"""Keeps only rows with ``step <= max_step`` (all rows are dropped when max_step < 0).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = path.write_text('{"step": 5}\n{"step": 10}\n')
    >>> truncate_jsonl(path, 7)
    >>> path.read_text()
    '{"step": 5}\n'
    """
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if json.loads(r).get("step", 0) <= max_step]
    path.write_text("".join(r + "\n" for r in kept))


class Progress:
    """A tqdm bar over steps; a no-op unless enabled and stderr is a TTY.

    Example:
      >>> bar = Progress(enabled=False, total=100, initial=0)  # config.progress_bar=False
      >>> bar.update(); bar.show({"train_loss": 0.5}); bar.close()  # all no-ops
      >>> bar.bar is None
      True
    """

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled and sys.stderr.isatty() and jax.process_index() == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step")

    def update(self, n: int = 1) -> None:
        """Advances the bar by `n` steps."""
        if self.bar is not None:
            self.bar.update(n)

    def show(self, metrics: dict[str, float]) -> None:
        """Shows loss, accuracy, sparsity and images/s of a metrics row next to the bar."""
        if self.bar is None:
            return
        short = {
            "loss": metrics.get("train_loss"),
            "acc": metrics.get("train_accuracy"),
            "sparsity": metrics.get("sparsity"),
            "img/s": metrics.get("images_per_sec"),
        }
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in short.items() if v is not None})

    def close(self) -> None:
        """Closes the bar (leaves the final line on the terminal)."""
        if self.bar is not None:
            self.bar.close()


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each key over a window of per-step metric dicts.

    >>> mean_rows([{"a": 1.0}, {"a": 3.0}])
    {'a': 2.0}
    """
    return {k: math.fsum(r[k] for r in rows) / len(rows) for k in rows[0]}


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable end-of-run summary (the JSON file holds the full dict).

    >>> print(format_summary({"eval_accuracy": 0.9, "eval_loss": 0.3, "sparsity": 0.5,
    ...     "steps": 44, "epochs": 2.0, "wall_clock_s": 3.0, "per_layer_sparsity": {"fc1": 0.5}}))
    eval_accuracy 0.9000   eval_loss 0.3000
    global sparsity 0.5000   steps 44   epochs 2.00   wall-clock 3.0 s
    per-layer sparsity:
      fc1                                              0.5000
    """
    lines = [
        f"eval_accuracy {summary['eval_accuracy']:.4f}   eval_loss {summary['eval_loss']:.4f}",
        f"global sparsity {summary['sparsity']:.4f}   steps {summary['steps']}   "
        f"epochs {summary['epochs']:.2f}   wall-clock {summary['wall_clock_s']:.1f} s",
        "per-layer sparsity:",
    ]
    lines += [f"  {k:<48s} {v:.4f}" for k, v in summary["per_layer_sparsity"].items()]
    return "\n".join(lines)


LOGGER = logging.getLogger("progprune.train")


def log(message: str, *args: Any) -> None:
    """Logs (INFO, logger "progprune.train") from process 0 only.

    >>> log("Training %s on %s", "lenet5", "fashion_mnist")
    """
    if jax.process_index() == 0:
        LOGGER.info(message, *args)
