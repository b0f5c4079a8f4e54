"""Export file sizes of every model in progprune.models at 90/95/98/99% sparsity.

Each model is initialised (seed 0), pruned with ``progprune.prune_to_sparsity`` on the
magnitudes of its initial params (pruned weights set to 0.0, as training leaves them), saved
with ``progprune.export.save`` (params, masks and, for BatchNorm models, batch statistics) and
reloaded; the reload must be bit-identical. Two distributions: ``global`` (one ranking over all
kernels, the trainer's default; on initial weights it empties the layers with the smallest init
scale first) and ``uniform`` (every kernel at the target: no layer is emptied, so every index is
paid for; the harder case for the file size).

Targets: file <= 20% of the dense float32 bytes at 90%, <= 5% at 98%.

    python benchmarks/export_size.py [--out benchmarks/results/export_size.json]

Prints the ratio table and LeNet-300-100's per-layer table; writes JSON with the totals of
every row, the LeNets' per-layer rows, the save/load seconds, the machine and the git commit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import progprune  # noqa: E402
import progprune.export as ppx  # noqa: E402
from benchmarks._report import write_result  # noqa: E402
from experiments.run_sweep import code_version, machine  # noqa: E402
from progprune import models  # noqa: E402

SPARSITIES = (0.9, 0.95, 0.98, 0.99)
DISTRIBUTIONS = ("global", "uniform")
TARGETS = {0.9: 0.20, 0.98: 0.05}
MNIST_MODELS = {"lenet300_100": (1, 28, 28, 1), "lenet5": (1, 28, 28, 1)}
TINY_MODELS = {"tiny_mlp": (1, 8, 8, 1), "tiny_cnn": (1, 8, 8, 1)}


def init_variables(name: str) -> dict:
    """The model's initial variables (host numpy), seed 0."""
    shape = {**MNIST_MODELS, **TINY_MODELS}.get(name, (1, 32, 32, 3))
    model = models.get_model(name, 10)
    # rbg keys: threefry takes seconds to compile per shape on a CPU; any PRNG will do here.
    init = jax.jit(lambda key: model.init(key, jnp.zeros(shape), train=False))
    return jax.tree.map(np.asarray, init(jax.random.key(0, impl="rbg")))


def identical(a: Any, b: Any) -> bool:
    """Same structure, dtypes and bytes."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        x.dtype == y.dtype and x.tobytes() == y.tobytes()
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def measure(name: str, directory: Path) -> list[dict[str, Any]]:
    """One row per (distribution, sparsity) for model `name`."""
    variables = init_variables(name)
    params, batch_stats = variables["params"], variables.get("batch_stats")
    scores = jax.tree.map(np.abs, params)
    rows = []
    for distribution in DISTRIBUTIONS:
        prune = jax.jit(progprune.prune_to_sparsity, static_argnames="distribution")
        for sparsity in SPARSITIES:
            masks = jax.tree.map(np.asarray, prune(scores, sparsity, distribution=distribution))
            pruned = jax.tree.map(lambda p, m: np.where(m, p, np.zeros((), p.dtype)), params, masks)
            path = directory / f"{name}_{distribution}_{sparsity}.ppx"
            start = time.perf_counter()
            ppx.save(path, pruned, masks, batch_stats=batch_stats)
            saved = time.perf_counter()
            export = ppx.load_export(path)
            loaded = time.perf_counter()
            report = ppx.size_report(path)
            exact = identical(export.params, pruned) and identical(export.masks, masks)
            exact = exact and identical(export.batch_stats, batch_stats)
            rows.append(
                {
                    "model": name,
                    "distribution": distribution,
                    "sparsity": sparsity,
                    **{k: v for k, v in report.to_dict().items() if k != "layers"},
                    "bit_identical": exact,
                    "save_s": saved - start,
                    "load_s": loaded - saved,
                    "encodings": Counter(layer.encoding for layer in report.layers),
                    # Per-layer rows for the LeNets only: the big models' would fill megabytes.
                    "layers": report.to_dict()["layers"] if name.startswith("lenet") else None,
                    "table": str(report),
                }
            )
            print(f"{name:14s} {distribution:8s} {sparsity:.2f}  {report.ratio:.4f}", flush=True)
    return rows


def ratio_table(rows: list[dict[str, Any]], distribution: str) -> str:
    """Models x sparsities: file bytes / dense bytes (a * marks a missed target)."""
    by_key = {(r["model"], r["distribution"], r["sparsity"]): r for r in rows}
    lines = [f"{'model':14s} " + " ".join(f"{s:>8.0%}" for s in SPARSITIES) + "   dense bytes"]
    for name in dict.fromkeys(r["model"] for r in rows):
        cells = []
        for s in SPARSITIES:
            ratio = by_key[name, distribution, s]["ratio"]
            missed = s in TARGETS and ratio > TARGETS[s]
            cells.append(f"{ratio:>7.2%}{'*' if missed else ' '}")
        dense = by_key[name, distribution, SPARSITIES[0]]["dense_bytes"]
        lines.append(f"{name:14s} " + " ".join(cells) + f"   {dense:,}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/export_size.json")
    parser.add_argument("--models", default=",".join(models.MODEL_NAMES))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += measure(name, Path(tmp))
    for distribution in DISTRIBUTIONS:
        print(f"\nfile bytes / dense float32 bytes, {distribution} masks (targets: <= 20% at 90%,")
        print("<= 5% at 98%; * = missed)")
        print(ratio_table(rows, distribution))
    first = rows[0]
    print(f"\n{first['model']} at {first['sparsity']:.0%} ({first['distribution']} masks):")
    print(first["table"])
    for row in rows:
        del row["table"]
    assert all(r["bit_identical"] for r in rows), "a reload differed from what was saved"
    result = {
        "benchmark": "export_size",
        "commit": code_version(),
        "machine": machine(),
        "targets": {str(k): v for k, v in TARGETS.items()},
        "rows": rows,
    }
    write_result(args.out, result, indent=1)


if __name__ == "__main__":
    main()
