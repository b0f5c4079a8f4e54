"""The export of a finished training run: its size, and its accuracy against the run's.

Exports the latest checkpoint of `--workdir` (``progprune.export.runs.export_run``), evaluates
the file on the run's test split (``evaluate_export``) and compares with the run's
``summary.json``. For the quickstart:

    python -m progprune.train --config=configs/quickstart.py --workdir=/tmp/progprune_quickstart
    python benchmarks/export_run.py --workdir=/tmp/progprune_quickstart \\
        --out=benchmarks/results/export_quickstart.json

Prints the size table and writes JSON (sizes per layer, both accuracies, the git commit).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import write_result  # noqa: E402
from experiments.run_sweep import code_version, machine  # noqa: E402
from progprune.export.runs import evaluate_export, export_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a finished progprune.train run")
    parser.add_argument("--out", default="benchmarks/results/export_run.json")
    args = parser.parse_args()
    summary = json.loads((Path(args.workdir) / "summary.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.ppx"
        report = export_run(args.workdir, path)
        metrics = evaluate_export(path)
    print(report)
    equal = metrics["eval_accuracy"] == summary["eval_accuracy"]
    print(
        f"export: {report.file_bytes:,} bytes ({report.ratio:.2%} of dense); test accuracy "
        f"{metrics['eval_accuracy']!r}, the run's {summary['eval_accuracy']!r}: "
        f"{'equal' if equal else 'DIFFERENT'}"
    )
    result = {
        "benchmark": "export_run",
        "commit": code_version(),
        "machine": machine(),
        "run": {k: summary[k] for k in ("model", "data", "method", "sparsity", "epochs", "steps")},
        "run_eval_accuracy": summary["eval_accuracy"],
        "export_eval_accuracy": metrics["eval_accuracy"],
        "accuracy_equal": equal,
        **report.to_dict(),
    }
    write_result(args.out, result, indent=1)


if __name__ == "__main__":
    main()
