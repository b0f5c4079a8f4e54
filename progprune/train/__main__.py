"""Command line: ``python -m progprune.train --config=configs/<name>.py --workdir=DIR``.

Override any config field with ``--config.<key>=<value>`` (the config is locked, so a
misspelt key is an error). ``--config`` may be given from any directory (relative or
absolute). ``pruning.method=imp`` runs a whole IMP chain (`progprune.drivers.run`).

Multi-host (e.g. a TPU VM pod slice): run the same command on every host with
``--distributed``; JAX finds the coordinator and process ids itself:

    gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command \\
      "cd progprune && python -m progprune.train --config=configs/resnet18_cifar10.py \\
       --workdir=/shared/resnet18 --distributed"

Elsewhere pass them: ``--distributed --coordinator_address=HOST0:1234 --num_processes=2
--process_id=I`` (one process per host, or per CPU process for a local test). Every process
loads the data set and holds it on its own devices; each device computes its slice of the
global batch. Only process 0 writes metrics, TensorBoard and summary files; orbax
coordinates the checkpoint writes. The workdir must be storage every host mounts.

Exit codes (`progprune.train.errors`): 0 finished, 1 bug (traceback), 2 config/data/workdir
problem, 3 non-finite loss, 4 workdir in use by another process, 5 storage (I/O) failure,
143 preempted. Expected failures print one line, ``error: ...``, naming the fix.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/quickstart.py.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the summary.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (else auto-detected).")
flags.DEFINE_integer("num_processes", None, "Number of processes (else auto-detected).")
flags.DEFINE_integer("process_id", None, "This process's index (else auto-detected).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Runs `--config` in `--workdir`; exits with the code of `progprune.train.errors`.

    Example:
      >>> app.run(main, flags_parser=parse_flags)  # doctest: +SKIP
    """
    del argv
    import jax

    if FLAGS.distributed:
        if jax.config.jax_platforms in (None, "", "cpu") and FLAGS.coordinator_address:
            # CPU processes need a collectives backend to talk to each other.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # Unset flags are auto-detected (TPU VM, SLURM, Open MPI, ...).
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    from progprune.drivers import run
    from progprune.train.errors import StorageError, exit_code

    sys.excepthook = _quiet_closed_loop(sys.excepthook)
    # The same callbacks also fail in the storage library's threads and in finalizers.
    threading.excepthook = _quiet_closed_loop_args(threading.excepthook)
    sys.unraisablehook = _quiet_closed_loop_args(sys.unraisablehook)

    # One line per expected failure: orbax logs its own tracebacks of a failed write (absl
    # logger) before ours says what failed and what to do. --verbosity=0 shows them.
    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.FATAL)
    try:
        run(FLAGS.config, FLAGS.workdir)
    except Exception as e:
        code = exit_code(e)
        if code is None:
            raise  # a bug: keep the traceback
        prefix = "preempted" if code == 143 else "error"
        print(f"{prefix}: {e}", file=sys.stderr, flush=True)
        if isinstance(e, StorageError):
            # Orbax's threads of a failed write wait minutes for a directory that never
            # appeared; the message is out and the last good checkpoint is on disk.
            sys.stdout.flush()
            os._exit(code)
        sys.exit(code)


def _quiet_closed_loop(default):
    """``sys.excepthook`` without one kind of noise: after a failed checkpoint write, the storage
    library's pending writes call back into orbax's event loop, which is already closed, and
    each callback prints a traceback of ``RuntimeError: Event loop is closed``. Our one-line
    error says what failed; every other exception keeps its traceback."""

    def hook(kind, value, tb):
        if kind is RuntimeError and str(value) == "Event loop is closed":
            return
        default(kind, value, tb)

    return hook


def _quiet_closed_loop_args(default):
    """The filter of :func:`_quiet_closed_loop` for hooks that take one argument holding
    ``exc_type`` and ``exc_value`` (``threading.excepthook``, ``sys.unraisablehook``)."""

    def hook(args):
        if args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed":
            return
        default(args)

    return hook


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def prepare_config_import(argv: list[str]) -> str | None:
    """Checks the ``--config`` file and makes its package importable; returns an error or None.

    Config files import their shared recipes (``from configs import default``), so the
    directory above a ``configs`` package must be on ``sys.path`` wherever the command runs.

    Example:
      >>> print(prepare_config_import(["train", "--config=/no/such/file.py"]))
      config file '/no/such/file.py' not found; pass --config=PATH to a config file, e.g. ...
    """
    given = _config_path(argv)
    if given is None:
        return None
    path = Path(given.split(":", 1)[0]).expanduser()  # "file.py:arg" passes an argument
    if not path.is_file():
        return (
            f"config file {given!r} not found; pass --config=PATH to a config file, e.g. "
            "configs/quickstart.py in the progprune checkout."
        )
    package = path.resolve().parent
    if (package / "__init__.py").exists() and str(package.parent) not in sys.path:
        sys.path.insert(0, str(package.parent))
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors for a bad ``--config`` or its overrides.

    Example:
      >>> parse_flags(["train", "--config=configs/tiny.py", "--config.lr=1"])  # doctest: +SKIP
      error: unknown config key 'lr'. ...
    """
    problem = prepare_config_import(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
    except (AttributeError, KeyError) as e:  # ml_collections: a key the locked config lacks
        text = str(e.args[0] if e.args else e).replace("\\n", "\n").replace("\\", "")
        key, _, hint = text.replace("'", "").partition("\n")
        key = key.strip().strip('"')
        print(f"error: unknown config key {key!r}. {hint}".strip(), file=sys.stderr)
    except OSError as e:  # the config file failed to load (e.g. a syntax error in it)
        print(f"error: {str(e).splitlines()[0]}: {e.__cause__ or e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
