"""The examples in `progprune.methods`' docstrings run and print what they show."""

import doctest
import importlib

import jax
import jax.numpy as jnp
import pytest

# progprune.methods itself runs with the trainer's modules (tests/test_train.py, DOCUMENTED).
METHODS_MODULES = [
    "progprune.methods.grasp",
    "progprune.methods.imp",
    "progprune.methods.random_masks",
    "progprune.methods.snip",
]


@pytest.mark.parametrize("name", METHODS_MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, extraglobs={"jax": jax, "jnp": jnp}, optionflags=doctest.ELLIPSIS
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    assert result.attempted > 0, f"{name} has no runnable docstring example"
