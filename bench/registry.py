"""Activations and optimizers, looked up by name in literal tables.

Each optimizer entry carries the learning rate used when the user gives none:
the value its authors or the Keras/optax documentation recommend as a start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": jax.nn.identity,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "softplus": jax.nn.softplus,
    "selu": jax.nn.selu,
    "relu6": jax.nn.relu6,
    "mish": jax.nn.mish,
}


@dataclass(frozen=True)
class OptimizerEntry:
    """An optax optimizer factory and the learning rate used when none is given."""

    make: Callable[[float], optax.GradientTransformation]
    default_lr: float


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(optax.sgd, 0.1),
    "momentum": OptimizerEntry(lambda lr: optax.sgd(lr, momentum=0.9), 0.01),
    "nesterov": OptimizerEntry(lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True), 0.01),
    "adam": OptimizerEntry(optax.adam, 1e-3),
    "adamw": OptimizerEntry(optax.adamw, 1e-3),
    "nadam": OptimizerEntry(optax.nadam, 1e-3),
    "adamax": OptimizerEntry(optax.adamax, 2e-3),
    "rmsprop": OptimizerEntry(optax.rmsprop, 1e-3),
    "adagrad": OptimizerEntry(optax.adagrad, 1e-2),
    "adadelta": OptimizerEntry(optax.adadelta, 1.0),
    "lion": OptimizerEntry(optax.lion, 1e-4),
    "lamb": OptimizerEntry(optax.lamb, 1e-3),
    "yogi": OptimizerEntry(optax.yogi, 1e-2),
}


def lookup(table: dict, name: str, what: str):
    """Returns table[name], or raises ValueError listing the valid names."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(table)}") from None


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    return lookup(ACTIVATIONS, name, "activation")


def optimizer(name: str, learning_rate: float | None = None) -> optax.GradientTransformation:
    """The named optax optimizer at `learning_rate` (its default when None)."""
    entry = lookup(OPTIMIZERS, name, "optimizer")
    return entry.make(entry.default_lr if learning_rate is None else learning_rate)
