"""dense: a multilayer perceptron on the flattened 28x28 image."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from models.layers import dropout as apply_dropout, split_keys


class Dense(nnx.Module):
    """784 -> `depth` hidden layers of `units` -> num_classes.

    `Dense(512, relu, 10, rngs)` is the Keras mnist_mlp network, 784-512-512-10.
    """

    def __init__(self, units: int, activation: Callable, num_classes: int, rngs: nnx.Rngs,
                 *, depth: int = 2, dropout: float = 0.0, input_shape=(28, 28)):
        sizes = [input_shape[0] * input_shape[1]] + [units] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
        self.out = nnx.Linear(sizes[-1], num_classes, rngs=rngs)
        self.activation = activation
        self.dropout = dropout

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None,
                 dropout_rate: jax.Array | None = None) -> jax.Array:
        """Logits. `dropout_rate` (a population member's) replaces the built-in rate."""
        rate = self.dropout if dropout_rate is None else dropout_rate
        x = x.reshape(x.shape[0], -1)
        keys = split_keys(dropout_key, len(self.hidden))
        for layer, key in zip(self.hidden, keys):
            x = apply_dropout(self.activation(layer(x)), rate, key)
        return self.out(x)

