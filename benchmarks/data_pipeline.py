"""Images/s of the device-resident input pipeline vs a host-side numpy loop.

Data: CIFAR-shaped synthetic uint8 images (default 50k x 32x32x3; speed only, the pixel
values do not matter). Every pipeline feeds the same cheap jitted consumer, so the
differences are the cost of getting augmented batches to it:

  device        progprune.data: batch_indices + gather + preprocess(crop+flip, normalise)
                inside the jitted step; the split lives on the device.
  device_perm   the same, but the batch's indices come from a full
                jax.random.permutation(fold_in(key, epoch), N) computed in every step
                (what batch_indices avoids with its O(batch) Feistel permutation).
  host_numpy    numpy permutation, gather, crop+flip and normalisation on the host, then
                jax.device_put of the float32 batch into the jitted consumer.

Consumers: "mean" (almost free: isolates the pipeline) and "tiny_conv" (one 3x3 conv with
8 filters, stride 2, then a mean). Outputs of each step are kept until the end, so
dispatch runs ahead of compute as in a real training loop.

    python benchmarks/data_pipeline.py    # writes benchmarks/results/data_pipeline.json
    python benchmarks/data_pipeline.py --steps 50 --batch_sizes 128
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import write_result  # noqa: E402
from experiments.run_sweep import code_version  # noqa: E402
from progprune import data  # noqa: E402

MEAN, STD = data.stats("cifar10")
PAD = 4


Consumer = Callable[[jax.Array, jax.Array], jax.Array]


def consumer(kind: str) -> Consumer:
    """The stand-in train step: (float32 batch, labels) -> scalar; "mean" or "tiny_conv"."""
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 8)) * 0.1

    def mean(x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean(x) + jnp.mean(y.astype(jnp.float32))

    def tiny_conv(x: jax.Array, y: jax.Array) -> jax.Array:
        dims = ("NHWC", "HWIO", "NHWC")
        h = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=dims)
        return jnp.mean(jax.nn.relu(h)) + jnp.mean(y.astype(jnp.float32))

    return {"mean": mean, "tiny_conv": tiny_conv}[kind]


def device_step(
    consume: Consumer, n: int, batch_size: int, full_permutation: bool
) -> Callable[[jax.Array, jax.Array, int], jax.Array]:
    """The jitted step of the device-resident pipeline: (images, labels, step) -> scalar."""
    spe = data.steps_per_epoch(n, batch_size)

    def indices(step: jax.Array) -> jax.Array:
        if not full_permutation:
            return data.batch_indices(0, step, n, batch_size)
        perm = jax.random.permutation(jax.random.fold_in(jax.random.key(0), step // spe), n)
        return jax.lax.dynamic_slice_in_dim(perm, (step % spe) * batch_size, batch_size)

    @jax.jit
    def step_fn(images: jax.Array, labels: jax.Array, step: jax.Array) -> jax.Array:
        x, y = data.gather(images, labels, indices(step))
        rng = jax.random.fold_in(jax.random.key(1), step)
        x = data.preprocess(x, rng, augment=True, mean=MEAN, std=STD, pad=PAD)
        return consume(x, y)

    return step_fn


def host_batch(
    images: np.ndarray, labels: np.ndarray, idx: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy gather + random crop (4-px zero padding) + flip + normalisation."""
    b, (h, w) = len(idx), images.shape[1:3]
    padded = np.pad(images[idx], ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    dy, dx = rng.integers(0, 2 * PAD + 1, (2, b))
    flip = rng.integers(0, 2, b).astype(bool)
    rows = dy[:, None] + np.arange(h)
    cols = dx[:, None] + np.where(flip[:, None], w - 1 - np.arange(w), np.arange(w))
    x = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    x = (x.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    return x, labels[idx]


def run_device(
    step_fn: Callable[[jax.Array, jax.Array, int], jax.Array],
    images: jax.Array,
    labels: jax.Array,
    steps: int,
    warmup: int,
) -> float:
    """Seconds for `steps` device-pipeline steps after `warmup` ones."""
    for s in range(warmup):
        step_fn(images, labels, s).block_until_ready()
    start = time.perf_counter()
    outs = [step_fn(images, labels, warmup + s) for s in range(steps)]
    jax.block_until_ready(outs)
    return time.perf_counter() - start


def run_host(
    consume: Consumer,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    steps: int,
    warmup: int,
) -> float:
    """Seconds for `steps` host-pipeline steps (numpy batches fed to `consume`) after warmup."""
    rng = np.random.default_rng(0)
    spe = data.steps_per_epoch(len(images), batch_size)
    perm = rng.permutation(len(images))
    outs, start = [], None
    for s in range(warmup + steps):
        if s == warmup:
            jax.block_until_ready(outs)
            outs, start = [], time.perf_counter()
        if s % spe == 0 and s:
            perm = rng.permutation(len(images))
        idx = perm[(s % spe) * batch_size : (s % spe + 1) * batch_size]
        x, y = host_batch(images, labels, idx, rng)
        outs.append(consume(jax.device_put(x), jax.device_put(y)))
    jax.block_until_ready(outs)
    return time.perf_counter() - start


def measure(
    ds: data.ArrayDataset, batch_sizes: Sequence[int], steps: int, warmup: int, repeats: int
) -> list[dict]:
    """Best-of-`repeats` seconds for each (batch size, consumer, pipeline)."""
    n = len(ds)
    images, labels = jax.device_put(ds.images), jax.device_put(ds.labels)
    configs = []
    for batch_size in batch_sizes:
        for kind in ("mean", "tiny_conv"):
            consume = consumer(kind)
            device, perm = (device_step(consume, n, batch_size, p) for p in (False, True))
            device_args = (images, labels, steps, warmup)
            host_args = (ds.images, ds.labels, batch_size, steps, warmup)
            runs = {
                "device": functools.partial(run_device, device, *device_args),
                "device_perm": functools.partial(run_device, perm, *device_args),
                "host_numpy": functools.partial(run_host, jax.jit(consume), *host_args),
            }
            configs += [(batch_size, kind, name, run) for name, run in runs.items()]
    best = [float("inf")] * len(configs)
    # Repeats go round all configurations, so a burst of load on a shared machine
    # hits every pipeline alike; the minimum is the least disturbed run.
    for _ in range(repeats):
        for i, (*_, run) in enumerate(configs):
            best[i] = min(best[i], run())
    return [
        {
            "pipeline": pipeline,
            "consumer": kind,
            "batch_size": batch_size,
            "steps": steps,
            "ms_per_step": 1e3 * seconds / steps,
            "images_per_s": batch_size * steps / seconds,
        }
        for (batch_size, kind, pipeline, _), seconds in zip(configs, best, strict=True)
    ]


def main() -> None:
    """Parses the command line, measures, prints the table and writes the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="examples in the split")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the best counts")
    parser.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    args = parser.parse_args()

    ds = data.synthetic((32, 32, 3), num_classes=10, n=args.n, seed=0)
    rows = measure(ds, args.batch_sizes, args.steps, args.warmup, args.repeats)
    device = jax.devices()[0]
    result = {
        "benchmark": "data_pipeline",
        "commit": code_version(),
        "data": f"{ds.name}, n={args.n}",
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "repeats": args.repeats,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "rows": rows,
    }
    print(f"{result['backend']} ({result['device_kind']}), {result['data']}")
    print(f"{'pipeline':12s} {'consumer':10s} {'batch':>6s} {'ms/step':>9s} {'images/s':>11s}")
    for r in rows:
        print(
            f"{r['pipeline']:12s} {r['consumer']:10s} {r['batch_size']:6d} "
            f"{r['ms_per_step']:9.2f} {r['images_per_s']:11.0f}"
        )
    out = Path(args.out)
    write_result(out, result)


if __name__ == "__main__":
    main()
