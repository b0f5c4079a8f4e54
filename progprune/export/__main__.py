"""Command line: export a training run, check an export's accuracy, or print its size table.

    python -m progprune.export --workdir=W --out=F   # latest checkpoint of run W -> file F
    python -m progprune.export --check=F             # F's accuracy on the run's test split
    python -m progprune.export --report=F            # F's per-layer size table

``--data_dir`` points at the data set if it is not where the run's config says; ``--num_devices``
evaluates on another number of devices than the run used (the accuracy may then differ in
the last digit). Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 bad input).

    >>> main(["--report=/nonexistent/model.ppx"])
    2
    """
    parser = argparse.ArgumentParser(
        prog="python -m progprune.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--workdir", help="a progprune.train workdir to export (needs --out)")
    what.add_argument("--check", metavar="FILE", help="an export to evaluate on the test split")
    what.add_argument("--report", metavar="FILE", help="an export whose size table to print")
    parser.add_argument("--out", help="the export file to write (with --workdir)")
    parser.add_argument("--data_dir", default=None, help="data set directory (default: config's)")
    parser.add_argument("--num_devices", type=int, default=None, help="(--check) default: run's")
    args = parser.parse_args(argv)
    if args.workdir and not args.out:
        parser.error("--workdir needs --out=FILE, the export to write")
    try:
        return _run(args)
    except (ValueError, OSError) as e:  # bad input: the message names the problem and the fix
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from absl import logging as absl_logging

    from progprune.export.report import size_report

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's per-restore chatter
    if args.report:
        print(size_report(args.report))
        return 0
    from progprune.export import runs  # imports the trainer: only when needed

    if args.workdir:
        report = runs.export_run(args.workdir, args.out, data_dir=args.data_dir)
        print(report)
        print(f"wrote {args.out}: {report.file_bytes:,} bytes, {report.ratio:.2%} of dense")
        return 0
    from progprune.export.format import load_export

    result = runs.evaluate_export(args.check, data_dir=args.data_dir, num_devices=args.num_devices)
    summary = load_export(args.check).metadata.get("summary") or {}
    # Full precision (repr): "equal" means the same float, not the same rounded digits.
    line = f"eval_accuracy {result['eval_accuracy']!r} on {result['num_examples']} examples"
    if "eval_accuracy" in summary:
        same = "equal" if summary["eval_accuracy"] == result["eval_accuracy"] else "DIFFERENT"
        line += f" (the run's summary.json: {summary['eval_accuracy']!r}, {same})"
    print(line)
    print(f"eval_loss {result['eval_loss']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
