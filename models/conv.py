"""conv: two convolution blocks with 2x downsampling, then a dense layer.

`Conv(32, relu, 10, rngs)` is the Flax MNIST example CNN: conv 32 3x3, avg-pool
2x, conv 64 3x3, avg-pool 2x, dense 256, dense 10.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from models.layers import PatchConv, avg_pool_2x2, dropout as apply_dropout, split_keys


class Conv(nnx.Module):
    """Filters: `units` then 2*`units`; the dense layer has 8*`units` units."""

    def __init__(self, units: int, activation: Callable, num_classes: int, rngs: nnx.Rngs,
                 *, dropout: float = 0.0, input_shape=(28, 28)):
        h, w = input_shape[0] // 4, input_shape[1] // 4
        self.conv1 = PatchConv(1, units, 3, rngs=rngs)
        self.conv2 = PatchConv(units, 2 * units, 3, rngs=rngs)
        self.dense = nnx.Linear(h * w * 2 * units, 8 * units, rngs=rngs)
        self.out = nnx.Linear(8 * units, num_classes, rngs=rngs)
        self.activation = activation
        self.dropout = dropout

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None,
                 dropout_rate: jax.Array | None = None) -> jax.Array:
        """Logits. `dropout_rate` (a population member's) replaces the built-in rate."""
        rate = self.dropout if dropout_rate is None else dropout_rate
        act = self.activation
        x = avg_pool_2x2(act(self.conv1(x[..., None])))
        x = avg_pool_2x2(act(self.conv2(x)))
        x = act(self.dense(x.reshape(x.shape[0], -1)))
        (key,) = split_keys(dropout_key, 1)
        return self.out(apply_dropout(x, rate, key))
