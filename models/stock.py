"""`--impl flax`: each family written with stock Flax NNX layers, as a Flax user would.

The same networks as models/dense.py, conv.py and recurrent.py (the `tuned` forms), with
the same shapes, initialisers, parameter counts and random draws, so that one seed gives
both forms the same initial parameters; tests check that the two compute the same function
(logits and gradients). What differs is only how: `nnx.Conv` and `nnx.avg_pool` or
`nnx.max_pool` instead of patch products, `nnx.OptimizedLSTMCell` / `nnx.GRUCell` /
`nnx.SimpleCell` run over the rows by `nnx.RNN` (Flax's own scan, differentiated by JAX)
instead of bench's recurrence and CPU kernel, `nnx.Dropout` instead of bench's dropout
function.

One limit of the stock form: `nnx.Dropout`'s rate is a Python number fixed in the
module, so members of a population cannot have their own rates (bench/run/groups.py groups
`flax` trials by dropout rate; the `dropout_rate` argument is accepted and not used).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

_CELLS = {"lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell, "simple": nnx.SimpleCell}
_POOLS = {"avg": lambda y: nnx.avg_pool(y, window_shape=(2, 2), strides=(2, 2)),
          "max": lambda y: nnx.max_pool(y, window_shape=(2, 2), strides=(2, 2))}


class _Dropout(nnx.Module):
    """nnx.Dropout driven by bench's per-step key (None: evaluation)."""

    def __init__(self, rate: float):
        self.drop = nnx.Dropout(rate)

    def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        return self.drop(x, deterministic=key is None, rngs=key)


def _keys(key: jax.Array | None, n: int) -> list:
    return [None] * n if key is None else list(jax.random.split(key, n))


class StockDense(nnx.Module):
    """784 -> `depth` hidden nnx.Linear layers of `units` -> num_classes."""

    def __init__(self, units: int, activation: Callable, num_classes: int, rngs: nnx.Rngs,
                 *, depth: int = 2, dropout: float = 0.0, input_shape=(28, 28)):
        sizes = [input_shape[0] * input_shape[1]] + [units] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
        self.out = nnx.Linear(sizes[-1], num_classes, rngs=rngs)
        self.drops = nnx.List([_Dropout(dropout) for _ in range(depth)])
        self.activation = activation

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None,
                 dropout_rate: jax.Array | None = None) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer, drop, key in zip(self.hidden, self.drops, _keys(dropout_key, len(self.hidden))):
            x = drop(self.activation(layer(x)), key)
        return self.out(x)


class StockConv(nnx.Module):
    """nnx.Conv 3x3 SAME, avg-pool 2x, nnx.Conv 3x3 SAME, avg-pool 2x, dense, dense; with
    `pooling` max, nnx.max_pool; with stride, each nnx.Conv at strides 2 and no pooling."""

    def __init__(self, units: int, activation: Callable, num_classes: int, rngs: nnx.Rngs,
                 *, dropout: float = 0.0, pooling: str = "avg", input_shape=(28, 28)):
        if pooling not in _POOLS and pooling != "stride":
            raise ValueError(f"unknown pooling {pooling!r}; valid: avg, max, stride")
        h, w = input_shape[0] // 4, input_shape[1] // 4
        strides = 2 if pooling == "stride" else 1
        self.conv1 = nnx.Conv(1, units, (3, 3), strides=strides, padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(units, 2 * units, (3, 3), strides=strides, padding="SAME",
                              rngs=rngs)
        self.dense = nnx.Linear(h * w * 2 * units, 8 * units, rngs=rngs)
        self.out = nnx.Linear(8 * units, num_classes, rngs=rngs)
        self.drop = _Dropout(dropout)
        self.activation = activation
        self.pooling = pooling

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None,
                 dropout_rate: jax.Array | None = None) -> jax.Array:
        act = self.activation
        pool = _POOLS.get(self.pooling, lambda y: y)  # stride: the convolutions downsample
        x = pool(act(self.conv1(x[..., None])))
        x = pool(act(self.conv2(x)))
        x = act(self.dense(x.reshape(x.shape[0], -1)))
        (key,) = _keys(dropout_key, 1)
        return self.out(self.drop(x, key))


class StockRecurrent(nnx.Module):
    """Rows -> nnx.RNN over a stock cell with `units` hidden units -> last h -> dense."""

    def __init__(self, units: int, activation: Callable, num_classes: int, rngs: nnx.Rngs,
                 *, cell: str = "lstm", dropout: float = 0.0, input_shape=(28, 28)):
        if cell not in _CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(_CELLS)}")
        made = _CELLS[cell](input_shape[1], units, activation_fn=activation, rngs=rngs)
        if cell == "lstm":  # forget-gate bias 1, as Keras' unit_forget_bias (and the tuned form)
            bias = made.dense_h.bias[...]
            made.dense_h.bias[...] = bias.at[units:2 * units].set(1.0)
        self.rnn = nnx.RNN(made, return_carry=True, rngs=False)  # the carry starts at zero
        self.head = nnx.Linear(units, num_classes, rngs=rngs)
        self.drop = _Dropout(dropout)
        self.cell, self.units = cell, units
        self.unroll: int | bool = 1  # cost analysis sets True to count every step's FLOPs

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None,
                 dropout_rate: jax.Array | None = None) -> jax.Array:
        self.rnn.unroll = self.unroll
        zeros = jnp.zeros((x.shape[0], self.units), x.dtype)
        carry, _ = self.rnn(x, initial_carry=(zeros, zeros) if self.cell == "lstm" else zeros)
        h = carry[1] if self.cell == "lstm" else carry  # the LSTM's carry is (c, h)
        (key,) = _keys(dropout_key, 1)
        return self.head(self.drop(h, key))

