"""Where a LeNet-5 training step spends its time on a CPU core, and the max-pool fix.

Measures, in one process:

* this core's float32 peak as jitted square matmuls reach it (GFLOP/s);
* the FLOPs of LeNet-5's forward pass and of a whole train step at batch 128, from XLA's cost
  analysis of the compiled programs;
* the trainer's own train step (Fashion-MNIST on the device, batch gather + preprocess,
  progressive pruning under `progprune.masked`, shard_map over one device) with LeNet-5's
  max-pool written two ways: flax's `nn.max_pool` (gradient = XLA select-and-scatter) and
  `progprune.models.pooling.max_pool` (the model's default; same values and gradients);
* the share of each compiled op in both steps, from a `jax.profiler` trace.

Variants are interleaved round by round. Times are reported as process CPU time per step and
as wall time per step (best round each): on a shared machine the wall time grows with other
processes' load, the CPU time much less, so the ratios and FLOP rates use CPU time.

    taskset -c 0 python benchmarks/lenet5_step.py        # ~2-4 minutes

Prints a table and writes benchmarks/results/lenet5_step.json (with the git commit).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import sys
import time
from pathlib import Path

# Thunk-level trace events for the op profile; they cost nothing while no trace is active.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax._src.lib import _profiler  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import write_result  # noqa: E402
from configs import default  # noqa: E402
from experiments.run_sweep import code_version  # noqa: E402
from progprune import data, models  # noqa: E402
from progprune.train import build, parallel, steps  # noqa: E402
from progprune.train.state import to_host  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def flax_max_pool(x: jax.Array, window_shape: tuple[int, int]) -> jax.Array:
    """The formulation LeNet-5 used before: flax's max-pool."""
    return nn.max_pool(x, window_shape, strides=window_shape)


POOLS = {"flax nn.max_pool": flax_max_pool, "pooling.max_pool": models.pooling.max_pool}


def timed(fn, *args, rounds: int = 5, calls: int = 8) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of a jitted `fn`, best of `rounds` rounds of `calls` calls."""
    jax.block_until_ready(fn(*args))
    cpu, wall = [], []
    for _ in range(rounds):
        c, w = time.process_time(), time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(fn(*args))
        cpu.append((time.process_time() - c) / calls * 1e3)
        wall.append((time.perf_counter() - w) / calls * 1e3)
    return min(cpu), min(wall)


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048)) -> dict[str, float]:
    """Float32 GFLOP/s of jitted n x n matmuls (CPU-time and wall-time based)."""
    out = {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n))
        b = jax.random.normal(jax.random.key(1), (n, n))
        cpu, wall = timed(jax.jit(jnp.matmul), a, b)
        out[f"matmul{n}_gflops_cpu_time"] = 2 * n**3 / cpu / 1e6
        out[f"matmul{n}_gflops_wall"] = 2 * n**3 / wall / 1e6
    return out


def flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"])


def model_flops(batch: int) -> dict[str, float]:
    """XLA's FLOP count of LeNet-5's forward pass and of loss + gradient at `batch`."""
    model = models.LeNet5()
    x = jnp.zeros((batch, 28, 28, 1))
    y = jnp.zeros((batch,), jnp.int32)
    params = model.init(jax.random.key(0), x, train=False)["params"]

    def loss(p):
        logits = model.apply({"params": p}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return {"forward_flops": flops(loss, params), "grad_flops": flops(jax.grad(loss), params)}


def model_times(batch: int, rounds: int) -> dict[str, dict[str, float]]:
    """CPU ms of the forward loss and of loss + gradient alone (no data, no optimizer)."""
    x = jax.random.uniform(jax.random.key(1), (batch, 28, 28, 1))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    params = models.LeNet5().init(jax.random.key(0), x, train=False)["params"]
    fns = {}
    for name, pool in POOLS.items():
        model = models.LeNet5(pool=pool)

        def loss(p, model=model):
            logits = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        fns[name] = {"forward": jax.jit(loss), "forward+backward": jax.jit(jax.grad(loss))}
    out = {name: {} for name in POOLS}
    for _ in range(rounds):  # interleaved; keep each variant's best
        for name, parts in fns.items():
            for part, fn in parts.items():
                cpu = timed(fn, params, rounds=1)[0]
                out[name][f"{part}_cpu_ms"] = min(cpu, out[name].get(f"{part}_cpu_ms", cpu))
    return out


def trainer_steps(batch: int) -> tuple[dict, object, tuple]:
    """The trainer's compiled LeNet-5 step for each pool, on one device, from one state."""
    config = default.get_config()
    config.model, config.data.name, config.batch_size = "lenet5", "fashion_mnist", batch
    config.learning_rate, config.num_epochs = 0.05, 10.0
    ds = build.load_data(config)
    tx = build.make_plan(config, len(ds.train)).tx
    mean, std = data.stats("fashion_mnist")
    spec = steps.DataSpec(len(ds.train), batch, 1, mean, std)
    launched = {}
    for name, pool in POOLS.items():
        model = models.LeNet5(axis_name=steps.AXIS, pool=pool)
        train_step = steps.make_train_step(model, tx, config.seed, spec)
        eval_step = steps.make_eval_step(model, spec)
        launched[name] = parallel.shard_map_launcher(train_step, eval_step, jax.devices()[:1])
    launcher = next(iter(launched.values()))
    host_state = to_host(build.initial_state(config, tx, ds.train))
    split = (launcher.put_data(ds.train.images), launcher.put_data(ds.train.labels))
    return launched, host_state, split


def step_times(launched, host_state, split, rounds: int) -> dict[str, dict[str, float]]:
    """Per-step CPU and wall ms of each variant (8 steps a round), interleaved round by round."""
    for launcher in launched.values():  # compile
        jax.block_until_ready(launcher.train_step(launcher.put_state(host_state), *split))
    samples = {name: [] for name in launched}
    for _ in range(rounds):
        for name, launcher in launched.items():
            state = launcher.put_state(host_state)
            jax.block_until_ready(state)
            c, w = time.process_time(), time.perf_counter()
            for _ in range(8):
                state, _ = launcher.train_step(state, *split)
            jax.block_until_ready(state)
            cpu, wall = time.process_time() - c, time.perf_counter() - w
            samples[name].append((cpu / 8 * 1e3, wall / 8 * 1e3))
    return {
        name: {"cpu_ms": min(c for c, _ in v), "wall_ms": min(w for _, w in v)}
        for name, v in samples.items()
    }


def describe_ops(launcher, host_state, split) -> dict[str, str]:
    """HLO op name -> its result shape and the JAX operation it came from (when recorded)."""
    state = launcher.put_state(host_state)
    text = launcher.train_step.lower(state, *split).compile().as_text()
    out = {}
    for line in text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
        if match:
            origin = re.search(r'op_name="([^"]+)"', line)
            where = origin.group(1).split("/", 1)[-1] if origin else ""
            out[match.group(1)] = f"{match.group(2)} {where}".strip()
    return out


def op_shares(launcher, host_state, split, calls: int = 10) -> dict[str, float]:
    """Share of traced thunk time per compiled op (by HLO name), largest first."""
    state = launcher.put_state(host_state)
    state, _ = launcher.train_step(state, *split)
    jax.block_until_ready(state)
    session = _profiler.ProfilerSession(_profiler.ProfileOptions())
    for _ in range(calls):
        state, _ = launcher.train_step(state, *split)
    jax.block_until_ready(state)
    trace = jax.profiler.ProfileData.from_serialized_xspace(session.stop())
    total = collections.Counter()
    for plane in trace.planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLA"):  # the threads that run compiled code
                for event in line.events:
                    # Skip the executor's own spans: they contain the ops, or wait for them.
                    if not event.name.startswith("ThunkExecutor"):
                        total[event.name] += event.duration_ns
    whole = sum(total.values())
    return {op: ns / whole for op, ns in total.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/lenet5_step.json"))
    args = parser.parse_args()
    result = {
        "benchmark": "lenet5_step",
        "commit": code_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "load_average_at_start": os.getloadavg(),
        "batch": args.batch,
        "jax_version": jax.__version__,
    }
    result.update(matmul_peak())
    result.update(model_flops(args.batch))
    result["model_only"] = model_times(args.batch, args.rounds)
    launched, host_state, split = trainer_steps(args.batch)
    result["steps"] = step_times(launched, host_state, split, args.rounds)
    result["op_shares"] = {}
    for name, launcher in launched.items():
        shares = list(op_shares(launcher, host_state, split).items())[:12]
        ops = describe_ops(launcher, host_state, split)
        result["op_shares"][name] = [
            {"op": op, "share": share, "what": ops.get(op, "")} for op, share in shares
        ]
    result["load_average_at_end"] = os.getloadavg()
    old, new = (result["steps"][name] for name in POOLS)
    result["speedup_cpu_time"] = old["cpu_ms"] / new["cpu_ms"]
    result["speedup_wall"] = old["wall_ms"] / new["wall_ms"]
    peak = result["matmul1024_gflops_cpu_time"]
    print(
        f"peak (1024^2 matmul): {peak:.0f} GFLOP/s CPU time, "
        f"{result['matmul1024_gflops_wall']:.0f} wall; step: {result['grad_flops'] / 1e9:.2f}"
        f" GFLOP (grad), forward {result['forward_flops'] / 1e9:.3f} GFLOP"
    )
    print(f"{'max-pool':<20}{'CPU ms':>9}{'wall ms':>9}{'GFLOP/s':>9}{'% peak':>8}")
    for name, t in result["steps"].items():
        rate = result["grad_flops"] / t["cpu_ms"] / 1e6
        t["gflops_cpu_time"], t["fraction_of_peak"] = rate, rate / peak
        print(
            f"{name:<20}{t['cpu_ms']:>9.1f}{t['wall_ms']:>9.1f}{rate:>9.1f}"
            f"{100 * rate / peak:>7.1f}%"
        )
    for name, t in result["model_only"].items():
        print(f"{name}, model alone: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    print(
        f"speedup: {result['speedup_cpu_time']:.2f}x CPU time, {result['speedup_wall']:.2f}x wall"
    )
    for name, shares in result["op_shares"].items():
        print(f"largest ops, {name}:")
        for row in shares[:8]:
            print(f"  {100 * row['share']:5.1f}%  {row['op']:<28} {row['what'][:90]}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
