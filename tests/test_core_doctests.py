"""The examples in the core's docstrings are executed and must print what they show."""

import doctest
import importlib

import jax
import jax.numpy as jnp
import pytest

import progprune

CORE_MODULES = [
    "progprune.schedules",
    "progprune.prunable",
    "progprune.distributions",
    "progprune.masks",
    "progprune.optimizer",
    "progprune.stats",
]


@pytest.mark.parametrize("name", CORE_MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    globs = {"jax": jax, "jnp": jnp, **{n: getattr(progprune, n) for n in progprune.__all__}}
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    assert result.attempted > 0, f"{name} has no docstring example"


def test_public_api_is_documented_and_typed():
    for name in progprune.__all__:
        obj = getattr(progprune, name)
        if callable(obj) and not isinstance(obj, type) and hasattr(obj, "__code__"):
            assert obj.__doc__ and "Example" in obj.__doc__, f"{name} lacks a docstring example"
            assert "return" in obj.__annotations__, f"{name} lacks a return annotation"
