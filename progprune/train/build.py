"""Builds what a run needs from its config: data, model, optimizer and the initial state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

import progprune
from progprune import data, methods, models
from progprune.train.state import TrainState, zero_pruned
from progprune.train.steps import (
    AXIS,
    DataSpec,
    Metrics,
    make_eval_step,
    make_loss_fn,
    make_train_step,
)

PyTree = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.dtype
TrainStep = Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]
EvalStep = Callable[[TrainState, jax.Array, jax.Array], Metrics]


class Datasets(NamedTuple):
    """The training and evaluation splits of a run, in host memory.

    Example:
      >>> from configs import tiny  # scikit-learn's digits
      >>> ds = load_data(tiny.get_config())
      >>> len(ds.train), len(ds.eval)
      (1437, 360)
    """

    train: data.ArrayDataset
    eval: data.ArrayDataset


class Plan(NamedTuple):
    """What a config resolves to before any device work: durations, schedules, optimizer.

    Attributes:
      steps_per_epoch: full batches in one pass over the training split.
      total_steps: optimizer steps of the whole run.
      learning_rate: step -> learning rate.
      pruning: the method's schedule and mask-update period (`methods.pruning_setup`).
      tx: the optimizer, wrapped by ``progprune.masked``.

    Example:
      >>> from configs import tiny
      >>> make_plan(tiny.get_config(), num_train_examples=1437).total_steps
      44
    """

    steps_per_epoch: int
    total_steps: int
    learning_rate: optax.Schedule
    pruning: methods.PruningSetup
    tx: optax.GradientTransformation


def make_plan(config: ml_collections.ConfigDict, num_train_examples: int) -> Plan:
    """Resolves the config's durations to steps and builds its schedules and optimizer.

    The one place that does this, so the trainer, the benchmarks and the tests build the
    same optimizer from the same config.

    Args:
      config: a full trainer config (see ``configs/default.py``).
      num_train_examples: size of the training split.

    Returns:
      The `Plan`.

    Example:
      >>> from configs import tiny
      >>> plan = make_plan(tiny.get_config(), num_train_examples=1437)
      >>> plan.steps_per_epoch, plan.total_steps, plan.pruning.update_every
      (22, 44, 4)
    """
    spe = data.steps_per_epoch(num_train_examples, config.batch_size)
    total = num_train_steps(config, spe)
    lr = learning_rate_schedule(config, total, spe)
    setup = methods.pruning_setup(config.pruning, total, spe)
    return Plan(spe, total, lr, setup, make_optimizer(config, lr, setup))


def load_data(config: ml_collections.ConfigDict) -> Datasets:
    """Both splits of ``config.data`` in host memory (uint8); see the `Datasets` example."""
    d = config.data
    kw = {"data_dir": d.data_dir, "source": d.source}
    return Datasets(data.load(d.name, d.train_split, **kw), data.load(d.name, d.eval_split, **kw))


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """``config.num_train_steps`` if positive, else ``num_epochs`` rounded to steps.

    >>> num_train_steps(ml_collections.ConfigDict({"num_train_steps": -1, "num_epochs": 1.5}), 10)
    15
    """
    if config.num_train_steps > 0:
        return config.num_train_steps
    return max(1, round(config.num_epochs * steps_per_epoch))


def make_model(
    config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None
) -> nn.Module:
    """The config's model in the compute dtype, BatchNorm synced over `axis_name`.

    >>> c = ml_collections.ConfigDict({"model": "tiny_cnn", "dtype": "bfloat16"})
    >>> model = make_model(c, 10, axis_name="data")
    >>> model.dtype == jnp.bfloat16, model.axis_name
    (True, 'data')
    """
    # Every model has both fields (tests/test_models.py checks it), so no per-model cases.
    return models.get_model(
        config.model, num_classes, dtype=DTYPES[config.dtype], axis_name=axis_name
    )


LR_SCHEDULES = ("cosine", "step", "constant")  # config.lr_schedule


def learning_rate_schedule(
    config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int
) -> optax.Schedule:
    """Linear warmup, then cosine to 0, step decay, or constant.

    >>> c = ml_collections.ConfigDict(dict(learning_rate=0.1, warmup_epochs=0.0,
    ...     lr_schedule="step", lr_decay_fractions=(0.5,), lr_decay_factor=0.1))
    >>> float(learning_rate_schedule(c, 100, 10)(60))
    0.010000000707805157
    """
    lr = config.learning_rate
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
    decay_steps = total_steps - warmup
    if config.lr_schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps)
    elif config.lr_schedule == "step":
        bounds = {
            round(f * total_steps) - warmup: config.lr_decay_factor
            for f in config.lr_decay_fractions
        }
        main = optax.piecewise_constant_schedule(lr, bounds)
    else:
        main = optax.constant_schedule(lr)
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


OPTIMIZERS = ("sgd", "adam")  # config.optimizer


def make_optimizer(
    config: ml_collections.ConfigDict, lr: optax.Schedule, setup: methods.PruningSetup
) -> optax.GradientTransformation:
    """SGD (momentum, L2 on the gradient as PyTorch does) or Adam, wrapped by ``masked``.

    >>> c = ml_collections.ConfigDict(dict(optimizer="sgd", momentum=0.9, nesterov=False,
    ...     weight_decay=5e-4))
    >>> setup = methods.PruningSetup(None, 1, "global", None)  # fixed masks
    >>> state = make_optimizer(c, 0.1, setup).init({"w": jnp.ones((2, 2))})
    >>> type(state).__name__
    'MaskedPruningState'
    """
    if config.optimizer == "sgd":
        inner = optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
    else:
        inner = optax.adam(lr)
    if config.weight_decay:
        inner = optax.chain(optax.add_decayed_weights(config.weight_decay), inner)
    return progprune.masked(
        inner,
        setup.schedule,
        update_every=setup.update_every,
        distribution=setup.distribution,
        prunable=setup.prunable,
    )


def score_batches(
    config: ml_collections.ConfigDict, ds: data.ArrayDataset
) -> list[tuple[jax.Array, jax.Array]]:
    """``config.pruning.score_batches`` preprocessed training batches for SNIP/GraSP scoring.

    >>> c = ml_collections.ConfigDict(dict(seed=0, batch_size=4, data={"name": "synthetic"},
    ...     pruning={"score_batches": 2}))
    >>> batches = score_batches(c, data.synthetic((8, 8, 3), n=16))
    >>> len(batches), batches[0][0].shape, batches[0][0].dtype
    (2, (4, 8, 8, 3), dtype('float32'))
    """
    mean, std = data.stats(config.data.name)
    n, b = len(ds), config.batch_size
    out = []
    for i in range(config.pruning.score_batches):
        # Seed + 1: a batch order of its own, so scoring does not shift the training batches.
        idx = data.batch_indices(config.seed + 1, i, n, b)
        x, y = data.gather(jnp.asarray(ds.images), jnp.asarray(ds.labels), idx)
        out.append((data.preprocess(x, None, augment=False, mean=mean, std=std), y))
    return out


def initial_state(
    config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    ds: data.ArrayDataset,
    *,
    initial_masks: PyTree | None = None,
    initial_params: PyTree | None = None,
) -> TrainState:
    """Initial TrainState: fresh (or given) params, masks from the method, pruned weights 0.

    Args:
      config: a full trainer config.
      tx: the run's optimizer (``make_plan(...).tx``).
      ds: the training split (its shape sizes the model; SNIP/GraSP score batches of it).
      initial_masks: masks to start from instead of the method's (same structure as params).
      initial_params: params replacing the fresh initialisation.

    Returns:
      A `TrainState` at step 0 on the default device.

    Example:
      >>> from configs import tiny
      >>> config = tiny.get_config()
      >>> ds = load_data(config)
      >>> state = initial_state(config, make_plan(config, len(ds.train)).tx, ds.train)
      >>> int(state.step), state.params["fc1"]["kernel"].shape
      (0, (64, 32))
    """
    rng = jax.random.PRNGKey(config.seed)
    init_rng, data_rng, mask_rng = jax.random.split(rng, 3)
    model = make_model(config, ds.num_classes, axis_name=None)
    variables = model.init(init_rng, jnp.zeros((1, *ds.image_shape), jnp.float32), train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    if initial_params is not None:
        params = _like(initial_params, params, "initial_params")
    if initial_masks is None and config.pruning.method in methods.AT_INIT:
        loss_fn = make_loss_fn(model, batch_stats)
        batches = score_batches(config, ds)
        initial_masks = methods.initial_masks(config.pruning, params, loss_fn, batches, mask_rng)
    opt_state = tx.init(params)
    if initial_masks is not None:
        masks = _like(initial_masks, progprune.get_masks(opt_state), "initial_masks", jnp.bool_)
        opt_state = progprune.set_masks(opt_state, masks)
        params = zero_pruned(params, masks)
    return TrainState(jnp.int32(0), params, batch_stats, opt_state, data_rng)


def _like(tree: PyTree, reference: PyTree, what: str, dtype: Any = None) -> PyTree:
    """`tree`'s leaves in `reference`'s structure (so a plain dict can replace a FrozenDict)."""
    leaves = jax.tree.leaves(tree)
    ref_leaves, treedef = jax.tree.flatten(reference)
    fix = f"pass {what} shaped like the model's params (model.init(...)['params'])"
    if len(leaves) != len(ref_leaves):
        raise ValueError(
            f"{what} has {len(leaves)} leaves but the model's params have {len(ref_leaves)}; {fix}."
        )
    out = []
    for a, r in zip(leaves, ref_leaves, strict=True):
        if jnp.shape(a) != r.shape:
            raise ValueError(
                f"{what}: leaf shape {jnp.shape(a)} does not match the model's {r.shape}; {fix}."
            )
        out.append(jnp.asarray(a, dtype or r.dtype))
    return jax.tree.unflatten(treedef, out)


def make_steps(
    config: ml_collections.ConfigDict,
    ds: Datasets,
    tx: optax.GradientTransformation,
    num_devices: int,
) -> tuple[TrainStep, EvalStep]:
    """The per-device ``(train_step, eval_step)`` of a config, ready for a launcher.

    Inside the steps the model syncs BatchNorm statistics over the data axis (``AXIS``).

    Example:
      >>> from configs import tiny
      >>> config = tiny.get_config()
      >>> ds = load_data(config)
      >>> train_step, eval_step = make_steps(config, ds, make_plan(config, 1437).tx, 1)
      >>> from progprune.train.parallel import shard_map_launcher
      >>> shard_map_launcher(train_step, eval_step, jax.devices()[:1]).num_devices
      1
    """
    model = make_model(config, ds.train.num_classes, axis_name=AXIS)
    mean, std = data.stats(config.data.name)
    n = num_devices
    train_spec = DataSpec(len(ds.train), config.batch_size, n, mean, std, config.data.augment)
    eval_spec = DataSpec(len(ds.eval), config.eval_batch_size, n, mean, std)
    return make_train_step(model, tx, config.seed, train_spec), make_eval_step(model, eval_spec)
