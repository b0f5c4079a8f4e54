"""Sweep definitions: for each sweep, a plain list of runs, each a dict of config overrides.

A run is a dict of dotted ``configs/default.py`` keys to values (``"pruning.sparsity": 0.9``),
plus keys read by ``experiments/run_sweep.py`` and ``aggregate.py``, not by the trainer:

* ``"config"``: the base config file the overrides apply to;
* ``"label"`` (optional): the name a variant of a method gets in the result tables;
* ``"tag"`` (optional): appended to the run's directory name, for sweeps that vary a setting
  (e.g. the training length) that the name would not otherwise show.

IMP runs carry ``"pruning.imp_sparsities"`` (the sparsities of the chain's rounds) and
``"pruning.imp_rate": 1.0`` (one round per target): one IMP chain per seed passes through every
sparsity of the sweep (``progprune.drivers.run_imp``), so IMP is run once per seed, not once per
target; its round ``k`` is the IMP result at the ``k``-th sparsity and cost ``k + 1`` trainings.

``SWEEPS`` maps a sweep name to its runs. ``python -m experiments.run_sweep --sweep=NAME`` runs one.
"""

from __future__ import annotations

from typing import Any

Run = dict[str, Any]

FMNIST_SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
FMNIST_METHODS = ("dense", "progressive", "gmp", "oneshot", "imp", "snip", "grasp", "random")
RESNET18_SPARSITIES = (0.70, 0.729, 0.75, 0.80, 0.85)
CIFAR_METHODS = ("dense", "progressive", "gmp", "snip", "grasp", "imp")

# Fashion-MNIST recipe: SGD 0.1 with momentum, cosine decay, batch 128, no augmentation.
# The ramp is pinned to the trainer's defaults of the time the Fashion-MNIST results were measured
# (ramp end at 75% of training, masks every half epoch); the defaults have since become the
# equal-cost sweeps' `progressive-end0.5-every20`.
FMNIST_BASE: Run = {
    "config": "configs/default.py",
    "data.name": "fashion_mnist",
    "batch_size": 128,
    "pruning.end_fraction": 0.75,
    "pruning.update_every": 0,
}
FMNIST_STEPS_PER_EPOCH = 60_000 // 128  # the trainer drops the last partial batch
# LeNet-5 at lr 0.1 diverges here (NaN at step 10, dense, no warmup); 0.05 trains (86.7% after
# half an epoch).
FMNIST_MODEL_OVERRIDES: dict[str, Run] = {"lenet5": {"learning_rate": 0.05}}
# CIFAR-10 recipe of GraSP's paper (ANCHORS.md): 160 epochs, batch 128, SGD 0.1 momentum 0.9,
# wd 5e-4, lr x0.1 at 50% and 75% of training, random crop + flip.
CIFAR_BASE: Run = {
    "config": "configs/default.py",
    "data.name": "cifar10",
    "data.augment": True,
    "num_epochs": 160.0,
    "batch_size": 128,
    "learning_rate": 0.1,
    "weight_decay": 5e-4,
    "lr_schedule": "step",
    "lr_decay_fractions": (0.5, 0.75),
    "eval_every_epochs": 5.0,
    # configs/_cifar.py's ramp: the trainer's defaults were chosen on LeNets, not measured here.
    "pruning.end_fraction": 0.6,
    "pruning.update_every": 0,
}


def method_runs(
    base: Run,
    methods: tuple[str, ...],
    sparsities: tuple[float, ...],
    seeds: tuple[int, ...],
    imp: Run | None = None,
) -> list[Run]:
    """Every method at every sparsity for every seed; dense once and IMP one chain per seed.

    ``imp`` holds overrides for the IMP runs only (e.g. its rewind step). Runs are ordered seed by
    seed, so a sweep stopped early has whole seeds.

    >>> [r["pruning.method"] for r in method_runs({}, ("dense", "imp", "snip"), (0.5, 0.9), (0,))]
    ['dense', 'imp', 'snip', 'snip']
    """
    runs = []
    for seed in seeds:
        for method in methods:
            run = {**base, "seed": seed, "pruning.method": method}
            if method == "dense":
                runs.append({**run, "pruning.sparsity": 0.0})
            elif method == "imp":
                chain = {
                    "pruning.sparsity": max(sparsities),
                    "pruning.imp_sparsities": tuple(sparsities),
                    "pruning.imp_rate": 1.0,
                }
                runs.append({**run, **chain, **(imp or {})})
            else:
                runs += [{**run, "pruning.sparsity": s} for s in sparsities]
    return runs


def fmnist_lenet(
    models: tuple[str, ...] = ("lenet300_100", "lenet5"),
    seeds: tuple[int, ...] = (0, 1, 2),
    num_epochs: float = 20.0,
    methods: tuple[str, ...] = FMNIST_METHODS,
    sparsities: tuple[float, ...] = FMNIST_SPARSITIES,
) -> list[Run]:
    """Sweep 1: Fashion-MNIST LeNet-300-100 and LeNet-5, every method x sparsity x seed.

    IMP rewinds to 5% of training (Frankle et al. 2020 rewind early, not to step 0).
    """
    rewind = {"pruning.rewind_step": round(0.05 * num_epochs * FMNIST_STEPS_PER_EPOCH)}
    runs = []
    for model in models:
        base = {**FMNIST_BASE, "model": model, "num_epochs": num_epochs}
        base.update(FMNIST_MODEL_OVERRIDES.get(model, {}))
        runs += method_runs(base, methods, sparsities, seeds, imp=rewind)
    return runs


def cifar10(seeds: tuple[int, ...] = (0, 1, 2)) -> list[Run]:
    """Sweep 2: the seed paper's CIFAR-10 settings, against dense, GMP, SNIP, GraSP and IMP.

    IMP rewinds to 5% of training (8 of 160 epochs), where rewinding works for deep CIFAR nets.
    """
    imp = {"pruning.rewind_step": round(0.05 * 160 * (50_000 // 128))}
    runs = []
    for model, sparsities in (
        ("resnet18", RESNET18_SPARSITIES),
        ("vgg_like", (0.97,)),
        ("vgg19", (0.9797, 0.98)),
    ):
        base = {**CIFAR_BASE, "model": model}
        runs += method_runs(base, CIFAR_METHODS, sparsities, seeds, imp=imp)
    return runs


def progressive_schedules(seeds: tuple[int, ...] = (0, 1, 2)) -> list[Run]:
    """Where progressive loses at high sparsity on the CPU sweep, is it the schedule's settings?

    The sweep's progressive ramps linearly until 75% of training, updating masks every half
    epoch; near the end of a linear ramp one update removes most of the remaining weights
    (0.924 -> 0.99 keeps 1 of every 7.6). Variants: updates every 20 steps, a ramp ending at
    half of training, and both.
    """
    base = {**FMNIST_BASE, "model": "lenet300_100", "num_epochs": 10.0}
    variants = {
        "progressive-every20": {"pruning.update_every": 20},
        "progressive-end0.5": {"pruning.end_fraction": 0.5},
        "progressive-end0.5-every20": {"pruning.end_fraction": 0.5, "pruning.update_every": 20},
    }
    return [
        {**run, **overrides, "label": label}
        for label, overrides in variants.items()
        for run in method_runs(base, ("progressive",), (0.9, 0.95, 0.98, 0.99), seeds)
    ]


EQUAL_COST_LENGTHS = (10.0, 20.0, 40.0, 70.0)  # 70 epochs = IMP's chain to 99% at 10 per round
EQUAL_COST_SPARSITIES = (0.9, 0.95, 0.98, 0.99)
# The best progressive settings of the schedule ablation (fmnist_lenet300_cpu_schedules.md).
ABLATION_BEST: Run = {
    "label": "progressive-end0.5-every20",
    "pruning.end_fraction": 0.5,
    "pruning.update_every": 20,
}


def _tagged(runs: list[Run], tag: str) -> list[Run]:
    return [{**r, "tag": tag} for r in runs]


def _imp_chain(base: Run, sparsities: tuple[float, ...], epochs: float, seeds) -> list[Run]:
    """One IMP chain per seed, ``epochs`` per round, rewinding to 5% of a round."""
    rewind = {"pruning.rewind_step": round(0.05 * epochs * FMNIST_STEPS_PER_EPOCH)}
    base = {**base, "num_epochs": epochs}
    return _tagged(method_runs(base, ("imp",), sparsities, seeds, imp=rewind), f"e{epochs:g}")


def fmnist_equal_cost_lenet300(seeds: tuple[int, ...] = (0, 1, 2)) -> list[Run]:
    """Issue 15: one training cycle given IMP's budget, LeNet-300-100 on Fashion-MNIST.

    Dense, progressive (the sweep-1 recipe and the ablation's best settings) and GMP trained
    for 10, 20, 40 and 70 epochs; IMP chains of 10 epochs per round (to 99%, 70 epochs in all)
    and of 20 epochs per round (to 98%). Everything else is sweep 1's recipe. Seed-major
    order, so a sweep stopped early has whole seeds.
    """
    model = {**FMNIST_BASE, "model": "lenet300_100"}
    runs = []
    for seed in seeds:
        for epochs in EQUAL_COST_LENGTHS:
            base = {**model, "num_epochs": epochs}
            levels = EQUAL_COST_SPARSITIES
            cells = method_runs(base, ("dense", "progressive", "gmp"), levels, (seed,))
            best = method_runs(base, ("progressive",), levels, (seed,))
            runs += _tagged(cells + [{**r, **ABLATION_BEST} for r in best], f"e{epochs:g}")
        runs += _imp_chain(model, FMNIST_SPARSITIES, 10.0, (seed,))
        runs += _imp_chain(model, FMNIST_SPARSITIES[:-1], 20.0, (seed,))
    return runs


LENET5_EQUAL_COST_SPARSITIES = (0.9, 0.98)


def fmnist_equal_cost_lenet5(
    seeds: tuple[int, ...] = (0, 1, 2), epochs: float = 6.0, long_factor: int = 3
) -> list[Run]:
    """Issue 15, LeNet-5 on Fashion-MNIST: one cycle given IMP's budget, at 90% and 98%.

    Dense, progressive (sweep 1's recipe and the ablation's best settings), GMP and SNIP trained
    for `epochs`; one IMP chain per seed through 0.9 and 0.98 at `epochs` per round, so 98%
    costs 3 trainings; progressive (both settings) and GMP again for `long_factor` x `epochs`,
    IMP's whole budget. Sweep 1's recipe otherwise (lr 0.05 for LeNet-5). Seed-major order.

    Sized for ~2.5 h of one CPU core: 30 x `epochs` per seed, 540 epochs at ~16 s each
    (LeNet-5 at ~3,800 images/s on one core, measured before the sweep). Cut to fit: 95% and
    99%, lengths other than 6 and 18 epochs, dense and SNIP at 18, IMP at longer rounds.
    """
    model = {**FMNIST_BASE, "model": "lenet5", **FMNIST_MODEL_OVERRIDES["lenet5"]}
    levels = LENET5_EQUAL_COST_SPARSITIES
    long = long_factor * epochs
    runs = []
    for seed in seeds:
        base = {**model, "num_epochs": epochs}
        cells = method_runs(base, ("dense", "progressive", "gmp", "snip"), levels, (seed,))
        best = method_runs(base, ("progressive",), levels, (seed,))
        runs += _tagged(cells + [{**r, **ABLATION_BEST} for r in best], f"e{epochs:g}")
        runs += _imp_chain(model, levels, epochs, (seed,))
        base = {**model, "num_epochs": long}
        cells = method_runs(base, ("progressive", "gmp"), levels, (seed,))
        best = method_runs(base, ("progressive",), levels, (seed,))
        runs += _tagged(cells + [{**r, **ABLATION_BEST} for r in best], f"e{long:g}")
    return runs


def quickstart_ramps(seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> list[Run]:
    """The quickstart (configs/quickstart.py) with the trainer's ramp and with its former one.

    ``progressive``: the defaults (ramp ending at half of training, masks every 20 steps);
    ``progressive-end0.6-every-half-epoch``: what the quickstart used before they changed.
    """
    base = {
        "config": "configs/quickstart.py",
        "model": "lenet300_100",
        "pruning.method": "progressive",
        "pruning.sparsity": 0.9,
    }
    former = {
        "label": "progressive-end0.6-every-half-epoch",
        "pruning.end_fraction": 0.6,
        "pruning.update_every": 0,
    }
    return [{**base, **variant, "seed": seed} for seed in seeds for variant in ({}, former)]


SWEEPS: dict[str, list[Run]] = {
    "fmnist_lenet": fmnist_lenet(),
    # What this repository ran on a 2-core CPU (experiments/results/fmnist_lenet300_cpu.md):
    # LeNet-300-100 only (LeNet-5 is ~10x slower per epoch on CPU), a shorter schedule.
    "fmnist_lenet300_cpu": fmnist_lenet(models=("lenet300_100",), seeds=(0, 1, 2), num_epochs=10.0),
    "fmnist_lenet300_cpu_schedules": progressive_schedules(),
    # LeNet-5 cut further to fit what was left of a 2-core session: one seed, two sparsities,
    # 3 epochs (experiments/results/fmnist_lenet5_cpu.md).
    "fmnist_lenet5_cpu": fmnist_lenet(
        models=("lenet5",), seeds=(0,), num_epochs=3.0, sparsities=(0.9, 0.98)
    ),
    "cifar10": cifar10(),
    "fmnist_equal_cost_lenet300": fmnist_equal_cost_lenet300(),
    "fmnist_equal_cost_lenet5": fmnist_equal_cost_lenet5(),
    "quickstart_ramps": quickstart_ramps(),
}


def run_name(run: Run) -> str:
    """A readable, unique directory name for a run.

    >>> run_name({"model": "lenet5", "pruning.method": "snip", "pruning.sparsity": 0.9, "seed": 1})
    'lenet5-snip-s0.9-seed1'
    >>> run_name({"model": "lenet5", "pruning.method": "imp", "seed": 0})
    'lenet5-imp-chain-seed0'
    >>> run_name({"model": "m", "pruning.method": "gmp", "pruning.sparsity": 0.9, "seed": 0,
    ...           "tag": "e20"})
    'm-gmp-s0.9-seed0-e20'
    """
    method = run.get("label", run["pruning.method"])
    level = "chain" if method == "imp" else f"s{run['pruning.sparsity']:g}"
    tag = f"-{run['tag']}" if run.get("tag") else ""
    return f"{run['model']}-{method}-{level}-seed{run['seed']}{tag}"
