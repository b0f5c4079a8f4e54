"""Command line: `python -m progprune.data {prepare NAME, info} [--data_dir D]`.

prepare NAME   download NAME with tfds and write array_record files under the data
               directory (needs internet and TensorFlow once; reading later needs neither)
info           list each data set and where `load` finds it, or the command to get it
"""

from __future__ import annotations

import argparse
import sys

from progprune.data import sources, tfds_source


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 1 failed, 2 bad arguments).

    >>> main(["prepare", "digits"])  # digits ships with scikit-learn: nothing to prepare
    2
    """
    parser = argparse.ArgumentParser(
        prog="python -m progprune.data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="download and prepare a tfds data set")
    prep.add_argument("name", help=f"one of {', '.join(tfds_source.TFDS_NAMES)}")
    info = commands.add_parser("info", help="list the data sets found locally")
    for sub in (prep, info):
        sub.add_argument(
            "--data_dir",
            default=None,
            help="data directory (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
        )
    args = parser.parse_args(argv)
    if args.command == "info":
        for name in sources.DATASET_NAMES:
            print(f"{name:14s} {sources.describe(name, args.data_dir)}")
        return 0
    if args.name not in tfds_source.TFDS_NAMES:
        hint = " (bundled with scikit-learn)" if args.name == "digits" else ""
        print(
            f"nothing to prepare for {args.name!r}{hint}; tfds data sets: "
            f"{', '.join(tfds_source.TFDS_NAMES)}",
            file=sys.stderr,
        )
        return 2
    try:
        path = tfds_source.prepare(args.name, args.data_dir)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"prepared {args.name} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
