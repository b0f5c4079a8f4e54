"""What can stop a run, and the exit code the command line gives each.

Every expected failure is one of these exceptions (or a `ValueError` for a bad config, or a
`FileNotFoundError` for missing data) with a message that names the problem and the fix;
``python -m progprune.train`` prints that message on one line and exits with its code. Anything
else is a bug and keeps its traceback (exit 1).

| code | meaning |
|---|---|
| 0 | finished (or was already finished) |
| 1 | a bug: an unexpected exception, with its traceback |
| 2 | a config, data or workdir problem found before training (`ValueError`, `FileNotFoundError`) |
| 3 | training stopped on a non-finite loss (`NonFiniteError`); the last good checkpoint is kept |
| 4 | the workdir is in use by another process (`WorkdirBusyError`) |
| 5 | reading or writing the workdir failed (`StorageError`): permissions, a full disk, I/O |
| 143 | preempted (SIGTERM): the state was checkpointed; rerunning resumes (`PreemptedError`) |
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "NonFiniteError",
    "PreemptedError",
    "StorageError",
    "WorkdirBusyError",
    "exit_code",
]


class NonFiniteError(FloatingPointError):
    """The loss or the gradients became NaN or inf; the run stopped without saving that state.

    Example:
      >>> exit_code(NonFiniteError("loss became NaN at step 7"))
      3
    """


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir's lock (two runs would corrupt each other).

    Example:
      >>> exit_code(WorkdirBusyError("workdir /w is in use by pid 12"))
      4
    """


class StorageError(OSError):
    """Reading or writing a file of the workdir failed (permissions, full disk, I/O error).

    Nothing already written is removed: the previous checkpoints stay as they were.

    Example:
      >>> exit_code(StorageError("cannot write /w/checkpoints: [Errno 28] No space left"))
      5
    """


class PreemptedError(RuntimeError):
    """Raised after a SIGTERM/preemption notice: the state was checkpointed; rerun to resume.

    Example:
      >>> try:  # doctest: +SKIP
      ...     train_and_evaluate(config, workdir)
      ... except PreemptedError:
      ...     sys.exit(143)  # the scheduler reruns the same command, which resumes
    """


# Most specific first: StorageError is an OSError, and FileNotFoundError (missing data) too.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (NonFiniteError, 3),
    (WorkdirBusyError, 4),
    (StorageError, 5),
    (PreemptedError, 143),
    (FileNotFoundError, 2),
    (ValueError, 2),
)


def exit_code(error: BaseException) -> int | None:
    """The command line's exit code for an expected failure, or None for a bug.

    Example:
      >>> exit_code(ValueError("config.batch_size=0 is invalid")), exit_code(KeyError("x"))
      (2, None)
    """
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return None
