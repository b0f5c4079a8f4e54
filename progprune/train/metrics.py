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

from progprune.train.errors import StorageError


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
        try:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **row}, sort_keys=False) + "\n")
        except OSError as e:
            raise StorageError(f"cannot append to {self.path}: {e}") from e
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

    The file is rewritten to a temporary name and renamed, so a crash meanwhile leaves the old
    file whole. A torn last line (what a crash or a full disk leaves) is dropped; any other line
    that is not JSON is an error naming the file, the line and the fix.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = path.write_text('{"step": 5}\n{"step": 10}\n{"step": 1')
    >>> truncate_jsonl(path, 7)
    >>> path.read_text()
    '{"step": 5}\n'
    """
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as e:
        raise StorageError(f"cannot read {path}: {e}") from e
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if number == len(lines):
                continue  # torn by a crash mid-write; its step is logged again
            raise ValueError(
                f"{path} line {number} is not a JSON row ({e}); delete that line and rerun."
            ) from None
        if row.get("step", 0) <= max_step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    try:
        tmp.write_text("".join(r + "\n" for r in kept))
        tmp.replace(path)
    except OSError as e:
        raise StorageError(f"cannot rewrite {path}: {e}") from e


class Reporter:
    """What a person watching the run sees: a tqdm bar on a terminal, plain lines elsewhere.

    With stderr a terminal (and ``config.progress_bar``), one bar shows the latest training
    metrics and evaluations are written above it. Otherwise (nohup, ssh --command, SLURM logs)
    every log interval and every evaluation prints one line to stdout. Process 0 only.

    Example:
      >>> r = Reporter(bar=False, total=100, initial=0)
      >>> r.start("Training tiny_mlp")
      Training tiny_mlp
      >>> r.train_row(50, {"epoch": 0.5, "train_loss": 0.5, "train_accuracy": 0.9,
      ...     "sparsity": 0.25, "images_per_sec": 1e4}, seconds_left=95.0)
      step 50/100 (epoch 0.50): loss 0.5000 accuracy 0.9000 sparsity 0.2500 10,000 img/s, 1m35s left
      >>> r.eval_row(50, {"eval_accuracy": 0.875, "eval_loss": 0.4})
      eval at step 50: accuracy 0.8750 loss 0.4000
    """

    def __init__(self, bar: bool, total: int, initial: int):
        self.active = jax.process_index() == 0
        self.total, self.initial = total, initial
        self.want_bar = bar and sys.stderr.isatty() and self.active
        self.bar = None

    def _print(self, line: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def start(self, line: str) -> None:
        """Prints the run's first line, then opens the bar (so the line stays above it)."""
        self._print(line)
        if self.want_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.initial, unit="step")

    def update(self, n: int = 1) -> None:
        """Advances the bar by `n` steps."""
        if self.bar is not None:
            self.bar.update(n)

    def train_row(self, step: int, row: dict[str, Any], seconds_left: float) -> None:
        """A log interval's metrics: on the bar, or as one plain line."""
        if self.bar is not None:
            short = {
                "loss": row.get("train_loss"),
                "acc": row.get("train_accuracy"),
                "sparsity": row.get("sparsity"),
                "img/s": row.get("images_per_sec"),
            }
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in short.items() if v is not None})
            return
        self._print(
            f"step {step}/{self.total} (epoch {row['epoch']:.2f}): loss {row['train_loss']:.4f} "
            f"accuracy {row['train_accuracy']:.4f} sparsity {row['sparsity']:.4f} "
            f"{row['images_per_sec']:,.0f} img/s, {_duration(seconds_left)} left"
        )

    def eval_row(self, step: int, metrics: dict[str, float]) -> None:
        """An evaluation's metrics, as one line (above the bar, if there is one)."""
        self._print(
            f"eval at step {step}: accuracy {metrics['eval_accuracy']:.4f} "
            f"loss {metrics['eval_loss']:.4f}"
        )

    def close(self) -> None:
        """Closes the bar (leaves its final state on the terminal)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text: str) -> None:
        """Any other line for the person watching (e.g. the summary)."""
        self._print(text)


def _duration(seconds: float) -> str:
    """'1h02m', '3m05s' or '42s'.

    >>> _duration(3725), _duration(185), _duration(41.6)
    ('1h02m', '3m05s', '42s')
    """
    s = round(max(seconds, 0.0))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


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
