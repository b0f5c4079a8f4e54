"""Side check: does GraSP's softmax temperature change its masks' accuracy here?

The GraSP reference code divides the logits by ``T = 200`` before the loss it scores with; the
trainer's ``grasp`` method scores with the plain training loss (``T = 1``). This trains, for each
sparsity, a GraSP mask scored at each temperature (same seed, same batches, same recipe as the
sweep) and prints the test accuracies:

    python -m experiments.grasp_temperature --sparsities 0.5 0.9 0.98 --temperatures 1 200
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp

from experiments import run_sweep, sweeps
from progprune.methods.grasp import grasp_masks
from progprune.train import build, train_and_evaluate
from progprune.train.steps import cross_entropy


def masks_at_temperature(config, temperature: float):
    """GraSP masks for the config's initialisation, scored on logits / temperature."""
    ds = build.load_data(config).train
    model = build.make_model(config, ds.num_classes, axis_name=None)
    init_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)[0]  # as build.initial_state
    params = model.init(init_rng, jnp.zeros((1, *ds.image_shape)), train=False)["params"]

    def loss_fn(p, batch):
        x, y = batch
        return cross_entropy(model.apply({"params": p}, x, train=False) / temperature, y).mean()

    batches = build.score_batches(config, ds)
    return grasp_masks(loss_fn, params, batches, config.pruning.sparsity)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", default="fmnist_lenet300_cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9, 0.98])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 200.0])
    parser.add_argument("--root", default="workdirs/grasp_temperature")
    args = parser.parse_args(argv)
    results = []
    for run in sweeps.SWEEPS[args.sweep]:
        if run["pruning.method"] != "grasp" or run["seed"] != args.seed:
            continue
        if run["pruning.sparsity"] not in args.sparsities:
            continue
        for t in args.temperatures:
            config = run_sweep.make_config({**run, "pruning.method": "dense"})
            config.pruning.sparsity = run["pruning.sparsity"]
            workdir = os.path.join(args.root, f"{sweeps.run_name(run)}-T{t:g}")
            s = train_and_evaluate(config, workdir, initial_masks=masks_at_temperature(config, t))
            results.append(
                {
                    "sparsity": run["pruning.sparsity"],
                    "temperature": t,
                    "accuracy": s["eval_accuracy"],
                    "measured_sparsity": s["sparsity"],
                }
            )
            print(json.dumps(results[-1]), flush=True)
    with open(os.path.join(args.root, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
