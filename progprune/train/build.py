"""Builds what a run needs from its config: data, model, optimizer and the initial state."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

import progprune
from progprune import data, methods, models
from progprune.train.state import TrainState, zero_pruned
from progprune.train.steps import AXIS, DataSpec, make_eval_step, make_loss_fn, make_train_step

PyTree = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Datasets(NamedTuple):
    train: data.ArrayDataset
    eval: data.ArrayDataset


def load_data(config: ml_collections.ConfigDict) -> Datasets:
    """Both splits in host memory (uint8)."""
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


def make_model(config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None):
    """The config's model in the compute dtype, BatchNorm synced over `axis_name`."""
    model = models.get_model(config.model, num_classes)
    fields = {f.name for f in dataclasses.fields(model)}
    overrides = {"dtype": DTYPES[config.dtype], "axis_name": axis_name}
    return model.clone(**{k: v for k, v in overrides.items() if k in fields})


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


def make_optimizer(
    config: ml_collections.ConfigDict, lr: optax.Schedule, setup: methods.PruningSetup
) -> optax.GradientTransformation:
    """SGD (momentum, L2 on the gradient as PyTorch does) or Adam, wrapped by ``masked``."""
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


def score_batches(config: ml_collections.ConfigDict, ds: data.ArrayDataset) -> list[tuple]:
    """Preprocessed training batches for scoring at init (SNIP, GraSP)."""
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
    """Initial TrainState: fresh (or given) params, masks from the method, pruned weights 0."""
    rng = jax.random.PRNGKey(config.seed)
    init_rng, data_rng, mask_rng = jax.random.split(rng, 3)
    model = make_model(config, ds.num_classes, axis_name=None)
    variables = model.init(init_rng, jnp.zeros((1, *ds.image_shape), jnp.float32), train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    if initial_params is not None:
        params = _like(initial_params, params)
    if initial_masks is None and config.pruning.method in methods.AT_INIT:
        loss_fn = make_loss_fn(model, batch_stats)
        batches = score_batches(config, ds)
        initial_masks = methods.initial_masks(config.pruning, params, loss_fn, batches, mask_rng)
    opt_state = tx.init(params)
    if initial_masks is not None:
        masks = _like(initial_masks, progprune.get_masks(opt_state), dtype=jnp.bool_)
        opt_state = progprune.set_masks(opt_state, masks)
        params = zero_pruned(params, masks)
    return TrainState(jnp.int32(0), params, batch_stats, opt_state, data_rng)


def _like(tree: PyTree, reference: PyTree, dtype=None) -> PyTree:
    """`tree`'s leaves in `reference`'s structure (so a plain dict can replace a FrozenDict)."""
    leaves = jax.tree.leaves(tree)
    ref_leaves, treedef = jax.tree.flatten(reference)
    if len(leaves) != len(ref_leaves):
        raise ValueError(f"expected a pytree with {len(ref_leaves)} leaves, got {len(leaves)}")
    out = []
    for a, r in zip(leaves, ref_leaves, strict=True):
        if jnp.shape(a) != r.shape:
            raise ValueError(f"leaf shape {jnp.shape(a)} does not match the model's {r.shape}")
        out.append(jnp.asarray(a, dtype or r.dtype))
    return jax.tree.unflatten(treedef, out)


def step_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The model used inside the mapped steps (BatchNorm synced over the data axis)."""
    return make_model(config, num_classes, axis_name=AXIS)


def make_steps(
    config: ml_collections.ConfigDict,
    ds: Datasets,
    tx: optax.GradientTransformation,
    num_devices: int,
):
    """The per-device ``(train_step, eval_step)`` of a config, ready for a launcher."""
    model = step_model(config, ds.train.num_classes)
    mean, std = data.stats(config.data.name)
    n = num_devices
    train_spec = DataSpec(len(ds.train), config.batch_size, n, mean, std, config.data.augment)
    eval_spec = DataSpec(len(ds.eval), config.eval_batch_size, n, mean, std)
    return make_train_step(model, tx, config.seed, train_spec), make_eval_step(model, eval_spec)
