"""Activations and optimizers, looked up by name in literal tables.

The tables name their functions by dotted path ("jax.nn.relu"), so that reading
them (`bench list`, `--help`, sweep validation) never imports JAX; `activation`
and `optimizer` import what they name when a trial is built. Each optimizer
carries the learning rate used when the user gives none: the value its authors
or the Keras/optax documentation recommend as a start.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

ACTIVATIONS: dict[str, str] = {
    "linear": "jax.nn.identity",
    "relu": "jax.nn.relu",
    "sigmoid": "jax.nn.sigmoid",
    "tanh": "jax.numpy.tanh",
    "gelu": "jax.nn.gelu",
    "silu": "jax.nn.silu",
    "elu": "jax.nn.elu",
    "leaky_relu": "jax.nn.leaky_relu",
    "softplus": "jax.nn.softplus",
    "selu": "jax.nn.selu",
    "relu6": "jax.nn.relu6",
    "mish": "jax.nn.mish",
}


@dataclass(frozen=True)
class OptimizerEntry:
    """An optax factory (dotted path), its fixed keyword arguments and its default learning rate."""

    factory: str
    default_lr: float
    options: dict = field(default_factory=dict)

    def make(self, learning_rate: float):
        """The optax GradientTransformation at `learning_rate`."""
        return resolve(self.factory)(learning_rate, **self.options)


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry("optax.sgd", 0.1),
    "momentum": OptimizerEntry("optax.sgd", 0.01, {"momentum": 0.9}),
    "nesterov": OptimizerEntry("optax.sgd", 0.01, {"momentum": 0.9, "nesterov": True}),
    "adam": OptimizerEntry("optax.adam", 1e-3),
    "adamw": OptimizerEntry("optax.adamw", 1e-3),
    "nadam": OptimizerEntry("optax.nadam", 1e-3),
    "adamax": OptimizerEntry("optax.adamax", 2e-3),
    "rmsprop": OptimizerEntry("optax.rmsprop", 1e-3),
    "adagrad": OptimizerEntry("optax.adagrad", 1e-2),
    "adadelta": OptimizerEntry("optax.adadelta", 1.0),
    "lion": OptimizerEntry("optax.lion", 1e-4),
    "lamb": OptimizerEntry("optax.lamb", 1e-3),
    "yogi": OptimizerEntry("optax.yogi", 1e-2),
}


def lookup(table: dict, name: str, what: str):
    """Returns table[name], or raises ValueError listing the valid names."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(table)}") from None


def resolve(path: str):
    """The object a dotted path names ('jax.nn.relu' -> the function), imported on demand."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def activation(name: str) -> Callable:
    """The activation function called `name`."""
    return resolve(lookup(ACTIVATIONS, name, "activation"))


def optimizer(name: str, learning_rate: float | None = None):
    """The named optax optimizer at `learning_rate` (its default when None)."""
    entry = lookup(OPTIMIZERS, name, "optimizer")
    return entry.make(entry.default_lr if learning_rate is None else learning_rate)


# The data sources --data names, and the TFDS data sets --dataset names (bench/engine/data.py).
TFDS_DATASETS = ("mnist", "fashion_mnist", "kmnist")

DATA_SOURCES: dict[str, str] = {
    "auto": "a data set already prepared in the TFDS data directory, else the embedded "
            "MNIST sample (never uses the network)",
    "embedded": "a class-balanced MNIST sample shipped with bench (10,000 train / "
                "2,000 test digits; MNIST only)",
    "tfds": "TensorFlow Datasets (mnist, fashion_mnist, kmnist) from --data-dir or "
            "~/tensorflow_datasets; prepared once on first use (needs network and TensorFlow)",
    "PATH": "a folder of the four MNIST-format IDX files (raw or .gz), or an .npz with "
            "x_train, y_train, x_test, y_test",
}
NAMED_SOURCES = tuple(name for name in DATA_SOURCES if name != "PATH")  # --data other than a path
