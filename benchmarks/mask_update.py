"""Speed and memory of the pruning core on a ResNet-18-sized pytree (11,173,962 parameters).

Measures, on whatever device JAX uses:
  * the jitted global ``update_masks`` at 90% sparsity vs a full-sort global top-k and vs one
    read of every weight (sum of |w|, the floor);
  * a ``masked`` optimizer step vs the plain inner optimizer step (SGD with momentum and
    weight decay, and AdamW), on steps without a mask update, next to a hand-written floor
    (masking the gradients and returning -w, nothing else), and the cost of a step that updates
    masks;
  * optimizer-state bytes of ``masked`` vs the inner optimizer alone.

Prints a table and writes JSON. Usage: ``python benchmarks/mask_update.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import progprune  # noqa: E402
from benchmarks._report import write_result  # noqa: E402
from experiments.run_sweep import code_version  # noqa: E402

# CIFAR ResNet-18: stem, 4 stages of 2 BasicBlocks, 1x1 projection shortcuts, 10-way head.
_CHANNELS = (64, 128, 256, 512)


def resnet18_like_params(seed: int = 0) -> dict:
    """A dict pytree with the leaf shapes of a CIFAR-10 ResNet-18 (11,173,962 entries)."""
    shapes = {"stem/conv": (3, 3, 3, 64), "stem/bn_scale": (64,), "stem/bn_bias": (64,)}
    c_in = 64
    for stage, c in enumerate(_CHANNELS):
        for block in range(2):
            name = f"stage{stage}/block{block}"
            shapes[f"{name}/conv1"] = (3, 3, c_in, c)
            shapes[f"{name}/conv2"] = (3, 3, c, c)
            for bn in ("bn1", "bn2"):
                shapes[f"{name}/{bn}_scale"] = (c,)
                shapes[f"{name}/{bn}_bias"] = (c,)
            if c_in != c:
                shapes[f"{name}/proj"] = (1, 1, c_in, c)
                shapes[f"{name}/proj_bn_scale"] = (c,)
                shapes[f"{name}/proj_bn_bias"] = (c,)
            c_in = c
    shapes["head/kernel"] = (512, 10)
    shapes["head/bias"] = (10,)
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {
        name: jax.random.normal(key, shape, jnp.float32) * 0.05
        for key, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def best_ms(fn, *args, repeats: int = 7) -> float:
    """Minimum wall-clock over ``repeats`` calls after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def full_sort_masks(params: dict, sparsity: float) -> dict:
    """Reference global top-k by a full sort of all prunable magnitudes (what we avoid)."""
    names = [n for n, p in params.items() if p.ndim >= 2]
    flat = jnp.concatenate([jnp.abs(params[n]).ravel() for n in names])
    k = round(sparsity * flat.size)
    order = jnp.argsort(flat, stable=True)
    keep = jnp.ones(flat.size, bool).at[order[:k]].set(False)
    out, offset = dict(params), 0
    for n in names:
        size = params[n].size
        out[n] = keep[offset : offset + size].reshape(params[n].shape)
        offset += size
    for n in params:
        if n not in names:
            out[n] = jnp.ones(params[n].shape, bool)
    return out


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def measure(sparsity: float = 0.9, sort_repeats: int = 2) -> dict:
    params = resnet18_like_params()
    n_params = sum(p.size for p in params.values())
    update_masks = jax.jit(progprune.mask_updater(progprune.constant_schedule(sparsity)))
    read_all = jax.jit(lambda t: sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(t)))
    sort_masks = jax.jit(full_sort_masks, static_argnums=1)
    step = jnp.int32(1)

    fast = update_masks(params, step)
    ref = sort_masks(params, sparsity)
    exact = all(bool(jnp.array_equal(fast[n], ref[n])) for n in params)
    results = {
        "n_params": int(n_params),
        "sparsity": sparsity,
        "masks_equal_full_sort": exact,
        "update_masks_ms": best_ms(update_masks, params, step),
        "read_all_weights_ms": best_ms(read_all, params),
        "full_sort_ms": best_ms(sort_masks, params, sparsity, repeats=sort_repeats),
    }
    results["speedup_vs_full_sort"] = results["full_sort_ms"] / results["update_masks_ms"]
    results["ratio_to_one_read"] = results["update_masks_ms"] / results["read_all_weights_ms"]
    results.update(measure_steps(params))
    return results


def exact_masking_floor(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """The least an exact mask wrapper must do per step, written by hand: no count, no schedule.

    Masks the gradients before ``inner`` and returns -w for pruned entries, like ``masked`` on
    a step without a mask update. The ratio of this to the plain step is the floor that any
    implementation with bool masks in the optimizer state meets on this machine.
    """

    def init(params):
        return jax.tree.map(lambda p: jnp.ones(p.shape, bool), params), inner.init(params)

    def update(grads, state, params):
        masks, inner_state = state
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, 0), grads, masks)
        updates, inner_state = inner.update(grads, inner_state, params)
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
        return updates, (masks, inner_state)

    return optax.GradientTransformation(init, update)


INNER = {
    "sgd": lambda: optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9)),
    "adamw": lambda: optax.adamw(1e-3, weight_decay=5e-4),
}


def measure_steps(params: dict, rounds: int = 9, steps: int = 5) -> dict:
    """Step times of the plain and the wrapped optimizers, interleaved, buffers donated.

    Donation is what a training loop does (the trainer donates its state). Every round runs
    each variant for ``steps`` steps and keeps the fastest; ratios are taken within a round and
    their median over ``rounds`` is reported, so a machine whose speed drifts (this one does, by
    tens of percent between processes) does not favour one variant.
    """
    grads = jax.tree.map(lambda p: p * 0.01, params)
    out = {}
    for inner_name, make_inner in INNER.items():
        inner = make_inner()
        variants = {
            "plain": inner,
            "floor": exact_masking_floor(inner),
            # Fixed masks (schedule=None): the same per-step work without the lax.cond.
            "masked_fixed": progprune.masked(inner, None),
            # A schedule that only moves at step 0: later steps take the no-update branch.
            "masked": progprune.masked(inner, progprune.one_shot_schedule(0.9, 0)),
            # A schedule that rises at every step: every step recomputes the masks.
            "masked_updating": progprune.masked(inner, progprune.linear_schedule(0.9, 0, 10**9)),
        }
        runs = {}
        for name, tx in variants.items():
            step = jax.jit(lambda p, s, g, tx=tx: _apply(tx, p, s, g), donate_argnums=(0, 1))
            p, state = step(jax.tree.map(jnp.copy, params), tx.init(params), grads)  # step 0
            jax.block_until_ready(p)
            runs[name] = [step, p, state]
            out[f"{inner_name}_{name}_opt_state_bytes"] = tree_bytes(state)
        times = {name: [] for name in variants}
        for _ in range(rounds):
            for name, run in runs.items():
                step, p, state = run
                samples = []
                for _ in range(steps):
                    start = time.perf_counter()
                    p, state = step(p, state, grads)
                    jax.block_until_ready(p)
                    samples.append(time.perf_counter() - start)
                run[1:] = [p, state]
                times[name].append(min(samples) * 1e3)
        for name, values in times.items():
            out[f"{inner_name}_{name}_step_ms"] = float(np.median(values))
            if name != "plain":
                ratios = np.asarray(values) / np.asarray(times["plain"])
                out[f"{inner_name}_{name}_over_plain"] = float(np.median(ratios))
        out[f"{inner_name}_opt_state_bytes_ratio"] = (
            out[f"{inner_name}_masked_opt_state_bytes"] / out[f"{inner_name}_plain_opt_state_bytes"]
        )
    return out


def _apply(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/mask_update.json")
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    results = measure(args.sparsity)
    results["device"] = str(jax.devices()[0].device_kind)
    results["platform"] = platform.platform()
    results["jax"] = jax.__version__
    results["commit"] = code_version()
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    write_result(args.out, results)


if __name__ == "__main__":
    main()
