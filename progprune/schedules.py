"""Sparsity schedules: plain jittable functions ``step -> sparsity``.

Every schedule returns a float32 scalar in ``[0, 1)`` and accepts a traced integer step, so a
training loop can call it inside ``jit`` without recompiling as the step advances.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Schedule = Callable[[ArrayLike], jax.Array]

__all__ = [
    "Schedule",
    "check_schedule",
    "constant_schedule",
    "cosine_schedule",
    "linear_schedule",
    "one_shot_schedule",
    "polynomial_schedule",
]


def check_sparsity(value: float, name: str) -> float:
    """Raises a ValueError unless ``value`` is a sparsity in [0, 1)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1) (the fraction of prunable weights removed), got {value}. "
            "A sparsity of 1 would remove every weight."
        )
    return value


# A schedule is tried at step 0 only when an optimizer or updater is built: a later step may lie
# beyond the run it was written for (a ramp that passes 1 after the run ends is no bug), and the
# values at the steps a run reaches are guarded where they are used.
_PROBE_STEPS = (0,)
_FACTORY_HINT = (
    "A schedule factory must be called first: progprune.linear_schedule(0.9, begin_step=0, "
    "end_step=1000), not progprune.linear_schedule."
)


def check_schedule(schedule: Any, name: str = "schedule") -> Schedule:
    """Raises a ValueError unless ``schedule`` maps steps to sparsities in [0, 1).

    The schedule is called at step 0. A value outside [0, 1) (NaN included), a result that is
    not a scalar number, or a call that fails is reported. Later steps are not tried (they may
    lie beyond the run the schedule was written for):
    A schedule that cannot be evaluated outside ``jit`` (it closes over traced values) passes
    unchecked; :func:`progprune.masked` and :func:`progprune.mask_updater` then guard each value
    where it is used.

    Args:
      schedule: the candidate ``step -> sparsity`` function.
      name: how to call it in error messages.

    Returns:
      ``schedule`` unchanged.

    Example:
      >>> check_schedule(lambda step: 1.0 - 0.001 * step)
      Traceback (most recent call last):
      ...
      ValueError: schedule(0) returned 1, outside [0, 1) ...
    """
    if not callable(schedule):
        hint = ""
        if isinstance(schedule, (int, float)):
            hint = f" For a fixed sparsity use progprune.constant_schedule({schedule!r})."
        raise ValueError(f"{name} must be a function step -> sparsity, got {schedule!r}.{hint}")
    for step in _PROBE_STEPS:
        try:
            value = schedule(jnp.int32(step))
            if jnp.shape(value) != ():
                raise ValueError(f"it returned an array of shape {jnp.shape(value)}")
            value = float(value)
        except jax.errors.JAXTypeError:
            return schedule  # traced inside: checked where it is used
        except Exception as e:  # noqa: BLE001 - any failure is reported as a bad schedule
            hint = f" {_FACTORY_HINT}" if isinstance(e, TypeError) else ""
            raise ValueError(
                f"{name} must be a function step -> sparsity (a float scalar in [0, 1)); "
                f"{name}({step}) failed: {type(e).__name__}: {e}.{hint}"
            ) from e
        if not 0.0 <= value < 1.0:
            raise ValueError(bad_sparsity_message(value, step, name))
    return schedule


def bad_sparsity_message(value: float, step: Any, name: str = "schedule") -> str:
    """The error for a sparsity outside [0, 1) (a schedule's value at ``step``), with the fix."""
    what = f"{name}({step}) returned {value:.7g}" if step is not None else f"{name} is {value:.7g}"
    return (
        f"{what}, outside [0, 1) (a sparsity is the fraction of "
        "prunable weights removed; 1 would remove every weight). Masks are not updated at such "
        f"a step. Fix the {name}: clip it, e.g. jnp.clip(value, 0.0, 0.99), or use one of "
        "progprune's schedules."
    )


def _check_steps(begin_step: int, end_step: int) -> tuple[int, int]:
    if int(begin_step) != begin_step or int(end_step) != end_step:
        raise ValueError(f"begin_step and end_step must be integers, got {begin_step}, {end_step}.")
    if begin_step < 0:
        raise ValueError(f"begin_step must be >= 0, got {begin_step}.")
    if end_step <= begin_step:
        raise ValueError(
            f"end_step must be greater than begin_step, got begin_step={begin_step}, "
            f"end_step={end_step}. Use one_shot_schedule for an instant jump."
        )
    return int(begin_step), int(end_step)


def _progress(step: ArrayLike, begin_step: int, end_step: int) -> jax.Array:
    """Fraction of the ramp done at ``step``: 0 before ``begin_step``, 1 from ``end_step``."""
    t = (jnp.asarray(step, jnp.float32) - begin_step) / (end_step - begin_step)
    return jnp.clip(t, 0.0, 1.0)


def _ramp(
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    initial_sparsity: float,
    shape: Callable[[jax.Array], jax.Array],
) -> Schedule:
    """``initial + (final - initial) * shape(progress)``, after validating every argument."""
    final = check_sparsity(final_sparsity, "final_sparsity")
    initial = check_sparsity(initial_sparsity, "initial_sparsity")
    begin_step, end_step = _check_steps(begin_step, end_step)

    def schedule(step: ArrayLike) -> jax.Array:
        done = shape(_progress(step, begin_step, end_step))
        value = jnp.float32(initial) + jnp.float32(final - initial) * done
        # Exactly `final` once the ramp is over: initial + (final - initial) can be off an ulp,
        # and round(sparsity * N) must hit the target count.
        return jnp.where(done >= 1.0, jnp.float32(final), value)

    return schedule


def linear_schedule(
    final_sparsity: float, begin_step: int, end_step: int, *, initial_sparsity: float = 0.0
) -> Schedule:
    """Sparsity rising linearly from ``initial_sparsity`` to ``final_sparsity`` (the paper's).

    Args:
      final_sparsity: sparsity reached at ``end_step``, in [0, 1).
      begin_step: step at which the ramp starts.
      end_step: step at which ``final_sparsity`` is reached; must exceed ``begin_step``.
      initial_sparsity: sparsity before ``begin_step``, in [0, 1).

    Returns:
      A jittable function of the step returning a float32 scalar.

    Example:
      >>> schedule = linear_schedule(0.9, begin_step=0, end_step=100)
      >>> round(float(schedule(50)), 4)
      0.45
    """
    return _ramp(final_sparsity, begin_step, end_step, initial_sparsity, lambda t: t)


def polynomial_schedule(
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    *,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
) -> Schedule:
    """Polynomial ramp ``s_f + (s_i - s_f)(1 - t)^power``; ``power=3`` is Zhu & Gupta's GMP.

    Args:
      final_sparsity: sparsity reached at ``end_step``, in [0, 1).
      begin_step: step at which the ramp starts.
      end_step: step at which ``final_sparsity`` is reached; must exceed ``begin_step``.
      initial_sparsity: sparsity before ``begin_step``, in [0, 1).
      power: exponent of the ramp; must be positive.

    Returns:
      A jittable function of the step returning a float32 scalar.

    Example:
      >>> schedule = polynomial_schedule(0.8, begin_step=0, end_step=100)
      >>> round(float(schedule(50)), 4)
      0.7
    """
    if not power > 0:
        raise ValueError(f"power must be positive, got {power}.")
    # f + (i - f)(1 - t)^p  ==  i + (f - i)(1 - (1 - t)^p)
    return _ramp(
        final_sparsity, begin_step, end_step, initial_sparsity, lambda t: 1.0 - (1.0 - t) ** power
    )


def cosine_schedule(
    final_sparsity: float, begin_step: int, end_step: int, *, initial_sparsity: float = 0.0
) -> Schedule:
    """Half-cosine ramp from ``initial_sparsity`` to ``final_sparsity``.

    Args:
      final_sparsity: sparsity reached at ``end_step``, in [0, 1).
      begin_step: step at which the ramp starts.
      end_step: step at which ``final_sparsity`` is reached; must exceed ``begin_step``.
      initial_sparsity: sparsity before ``begin_step``, in [0, 1).

    Returns:
      A jittable function of the step returning a float32 scalar.

    Example:
      >>> schedule = cosine_schedule(0.5, begin_step=0, end_step=10)
      >>> round(float(schedule(5)), 4)
      0.25
    """
    return _ramp(
        final_sparsity,
        begin_step,
        end_step,
        initial_sparsity,
        lambda t: 0.5 * (1.0 - jnp.cos(jnp.pi * t)),
    )


def one_shot_schedule(sparsity: float, step: int) -> Schedule:
    """Zero sparsity before ``step``, ``sparsity`` from ``step`` on (prune once, then fine-tune).

    Args:
      sparsity: sparsity applied at ``step``, in [0, 1).
      step: the step at which all pruning happens; >= 0.

    Returns:
      A jittable function of the step returning a float32 scalar.

    Example:
      >>> schedule = one_shot_schedule(0.9, step=10)
      >>> float(schedule(9)), round(float(schedule(10)), 4)
      (0.0, 0.9)
    """
    value = check_sparsity(sparsity, "sparsity")
    if int(step) != step or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step}.")
    at = int(step)

    def schedule(t: ArrayLike) -> jax.Array:
        return jnp.where(jnp.asarray(t) >= at, jnp.float32(value), jnp.float32(0.0))

    return schedule


def constant_schedule(sparsity: float) -> Schedule:
    """The same sparsity at every step (prune at the first update and keep it).

    Args:
      sparsity: the sparsity, in [0, 1).

    Returns:
      A jittable function of the step returning a float32 scalar.

    Example:
      >>> round(float(constant_schedule(0.5)(123)), 4)
      0.5
    """
    value = check_sparsity(sparsity, "sparsity")

    def schedule(t: ArrayLike) -> jax.Array:
        del t
        return jnp.float32(value)

    return schedule
