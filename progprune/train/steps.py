"""Pure per-device train and eval steps.

Each step runs on one device inside a named mapped axis (``AXIS``), under either launcher of
`progprune.train.parallel`. The data set lives on the device as uint8; the step draws its
batch indices from ``(seed, step)``, takes this device's slice of the global batch, and
preprocesses it there, so no data crosses the host per step. Gradients and metrics are
averaged over the axis with ``lax.pmean``; BatchNorm statistics are synced by the models'
``axis_name`` (set to ``AXIS`` by the trainer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from progprune import data
from progprune.train.state import TrainState

AXIS = "data"
PyTree = Any
Metrics = dict[str, jax.Array]


class DataSpec(NamedTuple):
    """Static facts about the device-resident data set that the steps close over.

    Example:
      >>> mean, std = data.stats("digits")
      >>> spec = DataSpec(1437, batch_size=64, num_devices=8, mean=mean, std=std)
      >>> spec.batch_size // spec.num_devices, spec.mean, spec.augment  # per-device batch
      (8, (77.886,), False)
    """

    num_examples: int
    batch_size: int  # global (train) or global eval batch
    num_devices: int
    mean: Any
    std: Any
    augment: bool = False


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy in float32.

    >>> float(cross_entropy(jnp.zeros((1, 2)), jnp.array([0]))[0])  # log 2
    0.6931471824645996
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def local_batch(
    images: jax.Array, labels: jax.Array, step: jax.Array, rng: jax.Array, seed: int, spec: DataSpec
) -> tuple[jax.Array, jax.Array]:
    """This device's preprocessed slice of the global batch of `step`.

    Must run inside a mapped axis named ``AXIS`` (it reads the device's index).

    Example:
      >>> spec = DataSpec(10, 4, 2, (0.0,), (1.0,))
      >>> images, labels = jnp.zeros((10, 2, 2, 1), jnp.uint8), jnp.arange(10)
      >>> f = lambda step: local_batch(images, labels, step, jax.random.key(0), 0, spec)[1]
      >>> jax.vmap(f, axis_name=AXIS, axis_size=2)(jnp.zeros(2, jnp.int32)).shape
      (2, 2)
    """
    per_device = spec.batch_size // spec.num_devices
    idx = data.batch_indices(seed, step, spec.num_examples, spec.batch_size)
    start = lax.axis_index(AXIS) * per_device
    idx = lax.dynamic_slice_in_dim(idx, start, per_device)
    x, y = data.gather(images, labels, idx)
    # Keys from the example's global position, not the device: augmentation is then the same
    # whatever the device count, so 8 devices reproduce 1 device exactly.
    x = data.preprocess(
        x,
        jax.random.fold_in(rng, step),
        augment=spec.augment,
        mean=spec.mean,
        std=spec.std,
        example_ids=start + jnp.arange(per_device),
    )
    return x, y


def make_loss_fn(model: nn.Module, batch_stats: PyTree, train: bool = True) -> Callable:
    """``loss_fn(params, (x, y)) -> scalar``, the mean cross-entropy (for SNIP/GraSP scoring).

    BatchNorm runs in train mode on the batch; its updated statistics are discarded.

    Example:
      >>> from progprune import models
      >>> model = models.TinyMLP()
      >>> x, y = jnp.zeros((2, 8, 8, 1)), jnp.array([0, 1])
      >>> params = model.init(jax.random.key(0), x, train=False)["params"]
      >>> round(float(make_loss_fn(model, {})(params, (x, y))), 4)  # zero input: uniform logits
      2.3026
    """

    def loss_fn(params: PyTree, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        variables = {"params": params, "batch_stats": batch_stats}
        if train and batch_stats:
            logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        else:
            logits = model.apply(variables, x, train=train)
        return cross_entropy(logits, y).mean()

    return loss_fn


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, seed: int, spec: DataSpec
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """Builds ``train_step(state, images, labels) -> (state, metrics)`` for one device.

    ``images``/``labels`` are the whole uint8 training split on this device. Metrics (loss,
    accuracy, gradient norm) are already averaged over all devices.

    Example (the launcher maps the step over ``AXIS`` and compiles it):
      >>> train_step = make_train_step(model, tx, seed=0, spec=spec)  # doctest: +SKIP
      >>> launcher = shard_map_launcher(train_step, eval_step, jax.devices())  # doctest: +SKIP
      >>> state, metrics = launcher.train_step(state, images, labels)  # doctest: +SKIP
    """

    def train_step(
        state: TrainState, images: jax.Array, labels: jax.Array
    ) -> tuple[TrainState, Metrics]:
        x, y = local_batch(images, labels, state.step, state.rng, seed, spec)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            if state.batch_stats:
                logits, new_vars = model.apply(variables, x, train=True, mutable=["batch_stats"])
            else:
                logits, new_vars = model.apply(variables, x, train=True), {}
            loss = cross_entropy(logits, y).mean()
            return loss, (logits, new_vars.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        # Equal per-device batches: the mean of per-device mean gradients is the global one.
        grads = lax.pmean(grads, AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        metrics = {
            "train_loss": lax.pmean(loss, AXIS),
            "train_accuracy": lax.pmean(accuracy, AXIS),
            "grad_norm": optax.tree.norm(grads),
        }
        new_state = TrainState(state.step + 1, params, batch_stats, opt_state, state.rng)
        return new_state, metrics

    return train_step


def make_eval_step(
    model: nn.Module, spec: DataSpec
) -> Callable[[TrainState, jax.Array, jax.Array], Metrics]:
    """Builds ``eval_step(state, images, labels) -> metrics`` over the whole split.

    The split is walked in fixed global batches inside one compiled loop; the last batch is
    padded and the padding weighted 0, so every example counts exactly once.

    Example (mapped and compiled by a launcher, like the train step):
      >>> eval_step = make_eval_step(model, DataSpec(10_000, 1000, 8, mean, std))  # doctest: +SKIP
      >>> launcher.get_metrics(launcher.eval_step(state, images, labels))  # doctest: +SKIP
      {'eval_loss': ..., 'eval_accuracy': ...}
    """
    per_device = spec.batch_size // spec.num_devices
    num_batches = math.ceil(spec.num_examples / spec.batch_size)

    def eval_step(state: TrainState, images: jax.Array, labels: jax.Array) -> Metrics:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        offset = lax.axis_index(AXIS) * per_device

        def batch_sums(b):
            pos = b * spec.batch_size + offset + jnp.arange(per_device)
            weight = (pos < spec.num_examples).astype(jnp.float32)
            x, y = data.gather(images, labels, jnp.minimum(pos, spec.num_examples - 1))
            x = data.preprocess(x, None, augment=False, mean=spec.mean, std=spec.std)
            logits = model.apply(variables, x, train=False)
            correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
            loss = cross_entropy(logits, y)
            return jnp.stack([(loss * weight).sum(), (correct * weight).sum(), weight.sum()])

        # lax.map (a scan without carry) keeps memory at one batch and needs no carry whose
        # device-variance would have to be declared under shard_map.
        sums = lax.psum(lax.map(batch_sums, jnp.arange(num_batches)).sum(0), AXIS)
        return {"eval_loss": sums[0] / sums[2], "eval_accuracy": sums[1] / sums[2]}

    return eval_step
