"""Launchers: run the same per-device step under ``jax.shard_map`` or ``jax.pmap``.

Both launch the functions of `progprune.train.steps` over a named axis (``steps.AXIS``) with
the train state and data replicated on every device; each device computes its slice of the
global batch. A single device is the same code with an axis of size 1.

``shard_map`` over a ``jax.make_mesh`` axis is JAX's recommended path; ``pmap`` is kept for
users of older TPU VM recipes. In a multi-process run (``jax.distributed.initialize()``) the
mesh spans every process's devices and each process feeds its own local devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from progprune.train.state import TrainState, to_host
from progprune.train.steps import AXIS

PyTree = Any
# Train steps that may be queued ahead of the host when several CPU devices share one process.
# XLA:CPU runs every device's part of a program on one fixed-size thread pool and gang-schedules
# collectives: a participant that reaches an all-reduce blocks its thread until the other
# devices' participants arrive. With a deep queue of dispatched steps (a step with one all-reduce
# deadlocks from 40 queued on 2 devices and from 43 on 8: benchmarks/results/multidevice.json)
# one device's next participant never gets a thread and XLA aborts after its 40 s rendezvous
# timeout. Two steps in flight keep the host one step ahead, which is all the overlap a CPU step
# can use.
CPU_STEPS_IN_FLIGHT = 2


class Launcher(NamedTuple):
    """Device-placement and step functions for one parallel strategy.

    Attributes:
      num_devices: devices along the data axis (all processes).
      put_state: host TrainState -> device state (replicated).
      get_state: device state -> host numpy TrainState.
      put_data: host array -> device array replicated on every device.
      train_step: compiled ``(state, images, labels) -> (state, metrics)``; donates `state`.
      eval_step: compiled ``(state, images, labels) -> metrics``.
      get_metrics: device metrics -> host floats.

    Example:
      >>> launcher = make_launcher("shard_map", train_step, eval_step, devices)  # doctest: +SKIP
      >>> state = launcher.put_state(host_state)  # doctest: +SKIP
      >>> state, m = launcher.train_step(state, images, labels)  # doctest: +SKIP
      >>> launcher.get_metrics(m)["train_loss"]  # doctest: +SKIP
    """

    num_devices: int
    put_state: Callable[[TrainState], Any]
    get_state: Callable[[Any], TrainState]
    put_data: Callable[[np.ndarray], Any]
    train_step: Callable
    eval_step: Callable
    get_metrics: Callable[[Any], dict[str, float]]


def select_devices(num_devices: int) -> list:
    """The first `num_devices` global devices (0 => all), or a clear error.

    >>> len(select_devices(1))
    1
    """
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(
            f"config.num_devices={num_devices} but {len(devices)} devices are visible; "
            f"use 0 (all) or a number in 1..{len(devices)}."
        )
    return devices[: num_devices or len(devices)]


def steps_in_flight(devices: Sequence, requested: int = 0) -> int | None:
    """How many train steps the host may dispatch before waiting for the oldest one.

    ``requested > 0`` (``config.max_steps_in_flight``) is taken as it is. Otherwise several CPU
    devices get `CPU_STEPS_IN_FLIGHT` (deeper queues deadlock XLA:CPU's collectives); one
    device and GPU/TPU devices are not bounded (``None``): there every device executes its
    programs in dispatch order on its own stream, and every step runs the same sequence of
    collectives on every device (none inside a branch or a data-dependent loop;
    tests/test_train_multidevice.py checks the compiled step), so a deep queue cannot stall.

    >>> steps_in_flight(jax.devices()[:1]) is None
    True
    >>> steps_in_flight(jax.devices()[:1], requested=4)
    4
    """
    if requested > 0:
        return requested
    if len(devices) > 1 and devices[0].platform == "cpu":
        return CPU_STEPS_IN_FLIGHT
    return None


def _floats(tree: PyTree) -> dict[str, float]:
    return {k: float(v) for k, v in to_host(tree).items()}


def shard_map_launcher(train_step: Callable, eval_step: Callable, devices: Sequence) -> Launcher:
    """Runs the steps under ``jax.shard_map`` over a 1-D ``"data"`` mesh of `devices`.

    >>> step = lambda s, x, y: (s, {})
    >>> launcher = shard_map_launcher(step, lambda s, x, y: {}, jax.devices()[:1])
    >>> launcher.num_devices
    1
    """
    mesh = jax.make_mesh((len(devices),), (AXIS,), devices=devices)
    replicated = NamedSharding(mesh, P())

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        # make_array_from_callback works whether or not all devices belong to this process.
        return jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])

    # check_vma=False: with it on, shard_map would psum the gradient of the replicated params
    # by itself (the transpose of their implicit broadcast); the step's explicit lax.pmean
    # must see per-device gradients, exactly as under pmap.
    specs = {"mesh": mesh, "in_specs": (P(), P(), P()), "check_vma": False}
    train = jax.shard_map(train_step, out_specs=(P(), P()), **specs)
    evaluate = jax.shard_map(eval_step, out_specs=P(), **specs)
    return Launcher(
        num_devices=len(devices),
        put_state=lambda state: jax.tree.map(put, state),
        get_state=to_host,
        put_data=put,
        train_step=jax.jit(train, donate_argnums=0),
        eval_step=jax.jit(evaluate),
        get_metrics=_floats,
    )


def pmap_launcher(train_step: Callable, eval_step: Callable, devices: Sequence) -> Launcher:
    """Runs the steps under ``jax.pmap`` with the state replicated along a leading axis.

    >>> step = lambda s, x, y: (s, {})
    >>> launcher = pmap_launcher(step, lambda s, x, y: {}, jax.devices()[:1])
    >>> launcher.num_devices
    1
    """
    devices = list(devices)
    # In a multi-process run pmap must see the global device list; each process then feeds
    # (and gets back) a leading axis of its local devices only.
    local = [d for d in devices if d.process_index == jax.process_index()]
    # The sharding pmap gives its own outputs: inputs that match it avoid a recompile at step 2.
    sharding = NamedSharding(jax.sharding.Mesh(np.array(local), (AXIS,)), P(AXIS))

    def put(x: np.ndarray) -> jax.Array:
        # One copy per local device along a new leading axis (what pmap maps over).
        x = np.asarray(x)
        shape = (len(local), *x.shape)
        return jax.make_array_from_callback(shape, sharding, lambda index: x[None])

    def first(tree: PyTree) -> PyTree:
        return jax.tree.map(lambda x: np.asarray(x[0]), tree)

    return Launcher(
        num_devices=len(devices),
        put_state=lambda state: jax.tree.map(put, state),
        get_state=first,
        put_data=put,
        train_step=jax.pmap(train_step, AXIS, devices=devices, donate_argnums=0),
        eval_step=jax.pmap(eval_step, AXIS, devices=devices),
        get_metrics=lambda m: {k: float(v) for k, v in first(m).items()},
    )


def make_launcher(
    kind: str, train_step: Callable, eval_step: Callable, devices: Sequence
) -> Launcher:
    """Plain lookup of the launcher named by ``config.parallel``: "shard_map" or "pmap".

    >>> step = lambda s, x, y: (s, {})
    >>> make_launcher("pmap", step, lambda s, x, y: {}, jax.devices()[:1]).num_devices
    1
    """
    if kind not in LAUNCHERS:
        raise ValueError(f"config.parallel={kind!r}; use one of {sorted(LAUNCHERS)}.")
    return LAUNCHERS[kind](train_step, eval_step, devices)


LAUNCHERS = {"shard_map": shard_map_launcher, "pmap": pmap_launcher}  # config.parallel
