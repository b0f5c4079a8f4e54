"""Sparse inference on the CPU: jax.experimental.sparse (BCOO, BCSR) against the dense forward.

Cases, each at 90/95/98/99% sparsity and batch 1 and 128:
  * LeNet-300-100, the whole forward of an exported model: initialised (seed 0), every kernel
    pruned to the target (``prune_to_sparsity(..., distribution="uniform")``: no layer emptied),
    saved with ``progprune.export.save`` and reloaded with ``load``. Dense: the jitted
    ``model.apply``. Sparse: each kernel as
    a BCOO or BCSR matrix (``out x in``, a row per output unit), ``y = (W @ x.T).T + b``; the
    BCSR variant is the library's ``progprune.export.sparse_mlp_apply``.
  * the fully connected layers of the other models (every rank-2 kernel of lenet5, vgg_like,
    vgg19, resnet18/20/32, one row per distinct shape): ``x @ W + b`` alone (dense: jitted
    ``x @ W + b``), same variants.

Every sparse output is checked against the dense one (``allclose``, rtol = atol = 1e-5).
Time: the variants run interleaved (round-robin, 100 rounds of ~1 ms each); the minimum
per-call time over rounds is reported (the undisturbed time on a shared core) with the median
beside it. Memory: XLA's buffer assignment of the compiled forward
(``compiled.memory_analysis()``: argument, output and temporary bytes; the CPU runtime keeps
no allocator statistics); ``weight bytes`` are the kernels as the variant stores them.

    python benchmarks/sparse_inference.py [--out benchmarks/results/sparse_inference.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import progprune  # noqa: E402
import progprune.export as ppx  # noqa: E402
from benchmarks._report import write_result  # noqa: E402
from experiments.run_sweep import code_version, machine  # noqa: E402
from progprune import models  # noqa: E402

SPARSITIES = (0.9, 0.95, 0.98, 0.99)
BATCHES = (1, 128)
VARIANTS = ("dense", "bcoo", "bcsr")
OTHER_MODELS = ("lenet5", "vgg_like", "vgg19", "resnet18", "resnet20", "resnet32")
ROUNDS = 100


def prune_uniform(params: Any, sparsity: float) -> tuple[Any, Any]:
    """(params with pruned weights at 0.0, masks): every kernel at `sparsity`."""
    masks = progprune.prune_to_sparsity(
        jax.tree.map(jnp.abs, params), sparsity, distribution="uniform"
    )
    masks = jax.tree.map(np.asarray, masks)
    return jax.tree.map(lambda p, m: np.where(m, p, np.float32(0)), params, masks), masks


def exported(params: Any, masks: Any, directory: Path) -> Any:
    """The params after a trip through an export file (what a deployment would load)."""
    path = directory / "model.ppx"
    ppx.save(path, params, masks)
    return ppx.load(path)[0]


def forward(kind: str) -> Callable:
    """``f(layers, x)`` over ``[(kernel, bias)]``, ReLU between layers (dense or BCOO kernels)."""

    def apply(layers, x):
        h = x.reshape(x.shape[0], -1)
        for i, (w, b) in enumerate(layers):
            h = (h @ w if kind == "dense" else (w @ h.T).T) + b
            if i < len(layers) - 1:
                h = jax.nn.relu(h)
        return h

    return jax.jit(apply)


def variants(params: dict) -> dict[str, tuple[Any, Callable]]:
    """(stored layers, jitted forward) per variant; BCSR is the library's own path."""
    layers = [(np.asarray(p["kernel"]), np.asarray(p["bias"])) for p in params.values()]
    bcoo = [(sparse.BCOO.fromdense(jnp.asarray(w.T)), jnp.asarray(b)) for w, b in layers]
    return {
        "dense": ([(jnp.asarray(w), jnp.asarray(b)) for w, b in layers], forward("dense")),
        "bcoo": (bcoo, forward("bcoo")),  # out x in, like BCSR: a row per output unit
        "bcsr": (ppx.to_sparse_mlp(params), jax.jit(ppx.sparse_mlp_apply)),
    }


def kernel_bytes(stored: Any) -> int:
    """Bytes of the kernels as the variant stores them (values plus indices)."""
    if isinstance(stored, ppx.SparseMLP):
        kernels = [layer.kernel for layer in stored.layers]
    elif isinstance(stored, dict):  # a model's params
        kernels = [layer["kernel"] for layer in stored.values()]
    else:
        kernels = [w for w, _ in stored]
    return sum(x.nbytes for x in jax.tree.leaves(kernels))


def memory(fn: Callable, *args: Any) -> dict[str, int]:
    """XLA's buffer sizes for the compiled call."""
    stats = fn.lower(*args).compile().memory_analysis()
    out = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
    }
    out["peak_bytes"] = sum(out.values()) - int(stats.alias_size_in_bytes)
    return out


def time_interleaved(calls: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
    """Per-call seconds of each variant: ROUNDS short rounds, variants round-robin in each.

    Rounds are kept near 1 ms: on a shared core a long round is almost always interrupted,
    while the fastest of many short rounds is the undisturbed time (it repeats to within a few
    percent from run to run; the median does not).
    """
    reps = {}
    for name, call in calls.items():
        jax.block_until_ready(call())
        start = time.perf_counter()
        jax.block_until_ready(call())
        reps[name] = max(1, int(1e-3 / max(time.perf_counter() - start, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(reps[name]):
                out = call()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / reps[name])
    return times


def measure_case(case: str, params: dict, batch: int, model_apply=None) -> list:
    """Rows for one stack of dense layers (``{name: {"kernel", "bias"}}``) at one batch size.

    With `model_apply` (``(params, x) -> logits``) the dense variant is that jitted function.
    """
    rng = np.random.default_rng(batch)
    first = next(iter(params.values()))["kernel"]
    x = jnp.asarray(rng.standard_normal((batch, first.shape[0]), np.float32))
    runs = variants(params)
    if model_apply is not None:
        runs["dense"] = (jax.tree.map(jnp.asarray, params), jax.jit(model_apply))
    want = np.asarray(runs["dense"][1](runs["dense"][0], x))
    outputs = {kind: np.asarray(fn(stored, x)) for kind, (stored, fn) in runs.items()}
    times = time_interleaved(
        {kind: (lambda s=stored, fn=fn: fn(s, x)) for kind, (stored, fn) in runs.items()}
    )
    dense_best = min(times["dense"])
    rows = []
    for kind, (stored, fn) in runs.items():
        rows.append(
            {
                "case": case,
                "shapes": [list(p["kernel"].shape) for p in params.values()],
                "batch": batch,
                "variant": kind,
                "time_min_us": min(times[kind]) * 1e6,
                "time_median_us": statistics.median(times[kind]) * 1e6,
                "speedup_vs_dense": dense_best / min(times[kind]),
                "weight_bytes": kernel_bytes(stored),
                **memory(fn, stored, x),
                "max_abs_diff": float(np.abs(outputs[kind] - want).max()),
                "allclose": bool(np.allclose(outputs[kind], want, rtol=1e-5, atol=1e-5)),
            }
        )
    return rows


def lenet_rows(directory: Path) -> list[dict[str, Any]]:
    model = models.get_model("lenet300_100", 10)
    init = jax.jit(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1)), train=False))
    params = jax.tree.map(np.asarray, init(jax.random.key(0))["params"])

    def apply(p, x):
        return model.apply({"params": p}, x, train=False)

    rows = []
    for sparsity in SPARSITIES:
        loaded = exported(*prune_uniform(params, sparsity), directory)
        for batch in BATCHES:
            for row in measure_case("lenet300_100", loaded, batch, apply):
                rows.append({"sparsity": sparsity, **row})
                report(rows[-1])
    return rows


def fc_shapes() -> dict[tuple[int, int], list[str]]:
    """Distinct rank-2 kernel shapes of the other models -> the models that have them."""
    shapes: dict[tuple[int, int], list[str]] = {}
    for name in OTHER_MODELS:
        x = jnp.zeros((1, 28, 28, 1) if name == "lenet5" else (1, 32, 32, 3))
        model = models.get_model(name, 10)
        variables = jax.eval_shape(lambda m=model, x=x: m.init(jax.random.key(0), x, train=False))
        for leaf in jax.tree.leaves(variables["params"]):
            if leaf.ndim == 2:
                shapes.setdefault(tuple(leaf.shape), []).append(name)
    return shapes


def fc_rows(directory: Path) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for shape, owners in fc_shapes().items():
        kernel = rng.standard_normal(shape, np.float32) / np.sqrt(shape[0])
        params = {"fc": {"kernel": kernel, "bias": np.zeros(shape[1], np.float32)}}
        for sparsity in SPARSITIES:
            loaded = exported(*prune_uniform(params, sparsity), directory)
            case = f"fc {shape[0]}x{shape[1]} ({', '.join(owners)})"
            for batch in BATCHES:
                for row in measure_case(case, loaded, batch):
                    rows.append({"sparsity": sparsity, **row})
                    report(rows[-1])
    return rows


def report(row: dict[str, Any]) -> None:
    print(
        f"{row['case'][:44]:44s} {row['sparsity']:.2f} b={row['batch']:<3d} {row['variant']:5s} "
        f"{row['time_min_us']:9.1f} us (median {row['time_median_us']:9.1f})  "
        f"x{row['speedup_vs_dense']:5.2f}  weights {row['weight_bytes']:>9,} B  "
        f"peak {row['peak_bytes']:>10,} B  {'ok' if row['allclose'] else 'MISMATCH'}",
        flush=True,
    )


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Speed-up over dense (min times) per case, sparsity and batch: BCOO / BCSR."""
    lines = [f"{'case':44s} {'batch':>5s} " + " ".join(f"{s:>13.0%}" for s in SPARSITIES)]
    keys = dict.fromkeys((r["case"], r["batch"]) for r in rows)
    for case, batch in keys:
        cells = []
        for s in SPARSITIES:
            mine = {
                r["variant"]: r["speedup_vs_dense"]
                for r in rows
                if (r["case"], r["batch"], r["sparsity"]) == (case, batch, s)
            }
            cells.append(f"{mine['bcoo']:5.2f} / {mine['bcsr']:5.2f}")
        lines.append(f"{case[:44]:44s} {batch:>5d} " + " ".join(f"{c:>13s}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/sparse_inference.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = lenet_rows(Path(tmp)) + fc_rows(Path(tmp))
    print("\nspeed-up over the dense jitted forward (BCOO / BCSR; > 1 = sparse faster):")
    print(summary_table(rows))
    result = {
        "benchmark": "sparse_inference",
        "commit": code_version(),
        "machine": machine(),
        "note": "CPU shared with other processes; variants interleaved, minimum over rounds",
        "rows": rows,
    }
    write_result(args.out, result, indent=1)


if __name__ == "__main__":
    main()
