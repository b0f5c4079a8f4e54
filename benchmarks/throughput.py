"""Training throughput of the progprune train step: ResNet-18 on CIFAR-10 shapes, synthetic data.

Runs the trainer's own per-device step (device-resident uint8 data, crop+flip augmentation,
BatchNorm synced over the data axis, progressive pruning with a mask update every
`--update_every` steps) under the configured launcher on every visible device, and reports
images/s in total and per device. The data are random images (not a real data set): speed
does not depend on pixel values.

    python benchmarks/throughput.py                                   # GPU/TPU: full size
    python benchmarks/throughput.py --steps 3 --batch_per_device 16   # CPU smoke run
    python benchmarks/throughput.py --dtype bfloat16 --parallel pmap
    python benchmarks/throughput.py --model vgg19        # vgg19 | vgg_like | resnet18

Prints a table and writes benchmarks/results/throughput_<device>_<dtype>.json.
Target on one H100 in bf16: >= 25k images/s for ResNet-18.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import write_result  # noqa: E402
from configs import resnet18_cifar10  # noqa: E402
from experiments.run_sweep import code_version  # noqa: E402
from progprune import data  # noqa: E402
from progprune.train import build, parallel  # noqa: E402
from progprune.train.state import to_host  # noqa: E402


def make_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """The ResNet-18 CIFAR-10 config on synthetic data, sized by the command line."""
    config = resnet18_cifar10.get_config()
    config.model = args.model
    config.data.name = "synthetic"
    config.dtype = args.dtype
    config.parallel = args.parallel
    config.batch_size = args.batch_per_device * jax.device_count()
    config.num_train_steps = 100_000  # a long run's schedule: the ramp is active throughout
    config.pruning.update_every = args.update_every
    return config


def _timed_steps(
    launcher: parallel.Launcher, state: Any, split: tuple[Any, Any], num_steps: int
) -> tuple[Any, dict[str, Any], float]:
    """Runs `num_steps` train steps; returns (state, last metrics, seconds until done).

    Steps are dispatched ahead of the host as far as the trainer lets them (no bound on
    GPU/TPU; a short queue on several CPU devices, where deep ones deadlock).
    """
    limit = parallel.steps_in_flight(jax.devices())
    start, in_flight = time.perf_counter(), []
    for _ in range(num_steps):
        state, metrics = launcher.train_step(state, *split)
        in_flight.append(metrics)
        if limit is not None and len(in_flight) > limit:
            jax.block_until_ready(in_flight.pop(0))
    jax.block_until_ready(metrics)
    return state, metrics, time.perf_counter() - start


def measure(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict[str, float]:
    """Images/s of `steps` train steps after `warmup` (compiling) ones, on every device."""
    n = jax.device_count()
    ds = build.Datasets(
        data.synthetic((32, 32, 3), 10, max(4096, config.batch_size), seed=0),
        data.synthetic((32, 32, 3), 10, 256, seed=1),
    )
    tx = build.make_plan(config, len(ds.train)).tx
    train_step, eval_step = build.make_steps(config, ds, tx, n)
    launcher = parallel.make_launcher(config.parallel, train_step, eval_step, jax.devices())
    state = launcher.put_state(to_host(build.initial_state(config, tx, ds.train)))
    split = (launcher.put_data(ds.train.images), launcher.put_data(ds.train.labels))
    state, _, compile_s = _timed_steps(launcher, state, split, warmup)
    state, metrics, seconds = _timed_steps(launcher, state, split, steps)
    ips = steps * config.batch_size / seconds
    return {
        "images_per_sec": ips,
        "images_per_sec_per_device": ips / n,
        "step_ms": 1e3 * seconds / steps,
        "warmup_s": compile_s,
        "final_loss": float(launcher.get_metrics(metrics)["train_loss"]),
    }


def main() -> None:
    """Parses the command line, measures, prints the table and writes the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch_per_device", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--parallel", default="shard_map", choices=("shard_map", "pmap"))
    parser.add_argument("--update_every", type=int, default=195, help="steps between mask updates")
    args = parser.parse_args()
    config = make_config(args)
    result = measure(config, args.steps, args.warmup)
    device = jax.devices()[0].device_kind
    result.update(
        benchmark="throughput",
        commit=code_version(),
        model=args.model,
        data="synthetic 32x32x3 (random, not a real data set)",
        device=device,
        num_devices=jax.device_count(),
        global_batch=config.batch_size,
        dtype=args.dtype,
        parallel=args.parallel,
        steps=args.steps,
        jax_version=jax.__version__,
    )
    print(
        f"{'model':<10}{'device':<22}{'n':>3}{'batch':>7}{'dtype':>10}{'img/s':>10}"
        f"{'img/s/dev':>11}{'step ms':>9}"
    )
    print(
        f"{args.model:<10}{device[:21]:<22}{result['num_devices']:>3}{config.batch_size:>7}"
        f"{args.dtype:>10}{result['images_per_sec']:>10.0f}"
        f"{result['images_per_sec_per_device']:>11.0f}{result['step_ms']:>9.1f}"
    )
    name = f"throughput_{device.replace(' ', '_').lower()}_{args.dtype}.json"
    out = Path(__file__).parent / "results" / name
    write_result(out, result)
    assert np.isfinite(result["final_loss"]), "non-finite loss"


if __name__ == "__main__":
    main()
