"""Cost of ``progprune.masked`` inside a whole training step (forward, backward, update).

``benchmarks/mask_update.py`` times the optimizer step alone, which on a CPU is bound by memory
bandwidth and so shows the extra reads of the masks at their largest. Here the same optimizer
runs inside a LeNet-5 training step on a batch of 128, as a user's loop would run it; plain and
masked steps are interleaved over several rounds and the medians compared. Buffers are donated.

Usage: ``python benchmarks/masked_training_step.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import progprune  # noqa: E402
from benchmarks._report import write_result  # noqa: E402
from experiments.run_sweep import code_version  # noqa: E402
from progprune import models  # noqa: E402


def make_step(model, tx, x, y):
    """A jitted ``(params, opt_state) -> (params, opt_state)`` training step."""

    def loss(params):
        logits = model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state):
        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1))


def measure(rounds: int = 5, steps: int = 10, batch: int = 128) -> dict:
    model = models.LeNet5(num_classes=10)
    x = jax.random.uniform(jax.random.key(1), (batch, 28, 28, 1))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    params = model.init(jax.random.key(0), x, train=False)["params"]
    inner = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    variants = {
        "plain": inner,
        "masked": progprune.masked(inner, progprune.one_shot_schedule(0.9, 0)),
    }
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, tx in variants.items():
            step = make_step(model, tx, x, y)
            p, s = step(jax.tree.map(jnp.copy, params), tx.init(params))  # compile; prune
            jax.block_until_ready(p)
            samples = []
            for _ in range(steps):
                start = time.perf_counter()
                p, s = step(p, s)
                jax.block_until_ready(p)
                samples.append(time.perf_counter() - start)
            times[name].append(min(samples) * 1e3)
    out = {f"{n}_step_ms": sorted(v)[len(v) // 2] for n, v in times.items()}
    out["masked_over_plain"] = out["masked_step_ms"] / out["plain_step_ms"]
    out.update(model="lenet5", batch=batch, device=str(jax.devices()[0].device_kind))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/masked_training_step.json")
    args = parser.parse_args()
    results = {**measure(), "commit": code_version()}
    for key, value in results.items():
        print(f"{key:<20} {value:.3f}" if isinstance(value, float) else f"{key:<20} {value}")
    write_result(args.out, results)


if __name__ == "__main__":
    main()
