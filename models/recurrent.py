"""recurrent: the 28 image rows read as a 28-step sequence by an LSTM, GRU or simple cell.

The input-to-hidden product of every time step is one matrix product before the
loop; only the hidden-to-hidden product stays inside `lax.scan`. The gate
equations are those of `nnx.LSTMCell`, `nnx.GRUCell` and `nnx.SimpleCell` (a test
checks this). `activation` plays the part of Keras' `activation` argument: it
replaces tanh on the candidate and output (LSTM), the candidate (GRU) or the
state (simple cell); the gates keep the sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import dropout as apply_dropout, split_keys


def lstm_step(act, carry, xw, hw):
    c, h = carry
    i, f, g, o = jnp.split(xw + h @ hw, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * act(g)
    return c, jax.nn.sigmoid(o) * act(c)


def gru_step(act, h, xw, hw):
    xr, xz, xn = jnp.split(xw, 3, axis=-1)
    hr, hz, hn = jnp.split(h @ hw, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = act(xn + r * hn)
    return (1.0 - z) * n + z * h


def simple_step(act, h, xw, hw):
    return act(xw + h @ hw)


# name -> (gate count, step function, initial carry from a (batch, units) zero array)
CELLS = {
    "lstm": (4, lstm_step, lambda zeros: (zeros, zeros)),
    "gru": (3, gru_step, lambda zeros: zeros),
    "simple": (1, simple_step, lambda zeros: zeros),
}


def last_state(carry) -> jax.Array:
    """The hidden state h from a cell's carry ((c, h) for the LSTM)."""
    return carry[1] if isinstance(carry, tuple) else carry


class Recurrent(nnx.Module):
    """Rows -> `cell` with `units` hidden units -> last hidden state -> dense num_classes."""

    def __init__(self, units: int, activation: Callable, num_classes: int, rngs: nnx.Rngs,
                 *, cell: str = "lstm", dropout: float = 0.0, input_shape=(28, 28)):
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")
        gates = CELLS[cell][0]
        self.input_proj = nnx.Linear(input_shape[1], gates * units, rngs=rngs)
        orthogonal = nnx.initializers.orthogonal()
        self.recurrent_kernel = nnx.Param(orthogonal(rngs.params(), (units, gates * units)))
        if cell == "lstm":  # forget-gate bias 1, as Keras' unit_forget_bias
            bias = self.input_proj.bias[...]
            self.input_proj.bias[...] = bias.at[units:2 * units].set(1.0)
        self.head = nnx.Linear(units, num_classes, rngs=rngs)
        self.cell, self.units, self.activation, self.dropout = cell, units, activation, dropout
        # Unrolling the time loop is slower on CPU; cost analysis sets it to True to count
        # every time step's FLOPs (XLA counts a loop body once).
        self.unroll: int | bool = 1

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        _, step, init = CELLS[self.cell]
        hw, act = self.recurrent_kernel[...], self.activation
        xw = jnp.swapaxes(self.input_proj(x), 0, 1)  # (time, batch, gates*units)
        carry0 = init(jnp.zeros((x.shape[0], self.units), xw.dtype))
        carry, _ = jax.lax.scan(lambda c, xt: (step(act, c, xt, hw), None), carry0, xw,
                                unroll=self.unroll)
        (key,) = split_keys(dropout_key, 1)
        return self.head(apply_dropout(last_state(carry), self.dropout, key))
