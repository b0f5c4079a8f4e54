"""Command line: ``python -m progprune.train --config=configs/<name>.py --workdir=DIR``.

Override any config field with ``--config.<key>=<value>`` (the config is locked, so a
misspelt key is an error). Multi-host (e.g. a TPU VM pod slice): run the same command on
every host with ``--distributed``; JAX finds the coordinator and process ids itself:

    gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command \\
      "cd progprune && python -m progprune.train --config=configs/resnet18_cifar10.py \\
       --workdir=gs://BUCKET/resnet18 --distributed"

Elsewhere pass them: ``--distributed --coordinator_address=HOST0:1234 --num_processes=2
--process_id=I`` (one process per host, or per CPU process for a local test). Every process
loads the data set and holds it on its own devices; each device computes its slice of the
global batch. Only process 0 writes metrics, TensorBoard and summary files; orbax
coordinates the checkpoint writes. The workdir must be shared storage (e.g. a GCS bucket).
"""

from __future__ import annotations

import logging
import sys

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
    """Trains `--config` in `--workdir`; exits 2 on a config error, 3 on NaN, 143 if preempted.

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
    from progprune.train.loop import PreemptedError, train_and_evaluate

    # Our progress at INFO; orbax's per-save chatter (absl logger) only from WARNING up.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("progprune").setLevel(logging.INFO)
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, FloatingPointError) as e:
        # Config/workdir errors and NaN stops: the message says what to do; no traceback.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ValueError) else 3)
    except PreemptedError as e:
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(143)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors for bad ``--config.*`` overrides.

    Example:
      >>> parse_flags(["train", "--config=configs/tiny.py", "--config.lr=1"])  # doctest: +SKIP
      error: unknown config key 'lr'. ...
    """
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
    except (AttributeError, KeyError) as e:  # ml_collections: a key the locked config lacks
        text = str(e.args[0] if e.args else e).replace("\\n", "\n").replace("\\", "")
        key, _, hint = text.replace("'", "").partition("\n")
        key = key.strip().strip('"')
        print(f"error: unknown config key {key!r}. {hint}".strip(), file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
