"""recurrent: the 28 image rows read as a 28-step sequence by an LSTM, GRU or simple cell.

The parameters are those of a fused cell (`input_proj`: x -> gates, with the bias;
`recurrent_kernel`: h -> gates). For speed, each step multiplies [h, x_t] by both at
once and the time loop has a hand-written backward pass (models/recurrence.py says
why); on CPU each cell's loop is one compiled kernel (models/fused_lstm.py for the LSTM,
models/fused_cells.py for the GRU and the simple cell). The gate
equations are those of `nnx.LSTMCell`, `nnx.GRUCell` and `nnx.SimpleCell` (a test
checks this). `activation` plays the part of Keras'
`activation` argument: it replaces tanh on the candidate and output (LSTM), the
candidate (GRU) or the state (simple cell); the gates keep the sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from models import fused_cells, fused_lstm
from models.cells import CELLS, CellKind, lstm_update  # noqa: F401 (the cells' table, re-exported)
from models.layers import dropout as apply_dropout, split_keys
from models.recurrence import recur


class Recurrent(nnx.Module):
    """Rows -> `cell` with `units` hidden units -> last hidden state -> dense num_classes."""

    def __init__(self, units: int, activation: Callable, num_classes: int, rngs: nnx.Rngs,
                 *, cell: str = "lstm", dropout: float = 0.0, input_shape=(28, 28)):
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")
        gates = CELLS[cell].gates
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
        self.fused_kernel = True  # False: always XLA's loop (tests compare the two)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None,
                 dropout_rate: jax.Array | None = None) -> jax.Array:
        """Logits. `dropout_rate` (a population member's) replaces the built-in rate."""
        rate = self.dropout if dropout_rate is None else dropout_rate
        kind = CELLS[self.cell]
        kernel, bias = kind.step_kernel(self.input_proj.kernel[...], self.input_proj.bias[...],
                                        self.recurrent_kernel[...])
        zeros = jnp.zeros((x.shape[0], self.units), x.dtype)
        args = ((zeros,) * kind.carry_size, jnp.swapaxes(x, 0, 1), kernel, bias)  # time-major
        xla_loop = partial(recur, partial(kind.update, self.activation), self.unroll)
        if self._fused(x):
            fused = (partial(fused_lstm.lstm, self.activation) if self.cell == "lstm"
                     else partial(fused_cells.loop, self.cell, self.activation))
            carry = jax.lax.platform_dependent(*args, cpu=fused, default=xla_loop)
        else:
            carry = xla_loop(*args)
        (key,) = split_keys(dropout_key, 1)
        return self.head(apply_dropout(carry[-1], rate, key))

    def _fused(self, x: jax.Array) -> bool:
        """Whether a CPU kernel can run this loop (cost analysis unrolls it instead)."""
        rolled = self.unroll == 1 and not isinstance(self.unroll, bool)  # True == 1, too
        supported = (fused_lstm.supports(self.activation) if self.cell == "lstm"
                     else fused_cells.supports(self.cell, self.activation))
        return (self.fused_kernel and rolled and supported
                and x.dtype == self.input_proj.kernel.dtype == jnp.float32)
