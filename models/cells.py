"""The recurrent cells' step equations and their table: what one step of an LSTM, GRU or
simple cell computes from its gate blocks. models/recurrent.py builds the model around them;
XLA's loop (models/recurrence.py) and the CPU kernels' references (fused_lstm.py,
fused_cells.py) use the same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp


def lstm_update(act, blocks, carry):
    i, f, g, o = blocks
    c = jax.nn.sigmoid(f) * carry[0] + jax.nn.sigmoid(i) * act(g)
    return c, jax.nn.sigmoid(o) * act(c)


def gru_update(act, blocks, carry):
    r, z, xn, hn = blocks  # the candidate's x and h products stay apart: r scales only h's
    n = act(xn + jax.nn.sigmoid(r) * hn)
    z = jax.nn.sigmoid(z)
    return ((1.0 - z) * n + z * carry[0],)


def simple_update(act, blocks, carry):
    return (act(blocks[0]),)


def same_blocks(input_kernel, input_bias, recurrent_kernel):
    """Step kernel and bias when the x and h products of each gate are simply summed."""
    return jnp.concatenate([recurrent_kernel, input_kernel]), input_bias


def gru_blocks(input_kernel, input_bias, recurrent_kernel):
    """Step kernel [[h_r h_z 0 h_n], [x_r x_z x_n 0]]: the candidate's two products apart.

    With the x rows and the zero blocks the loop's product is larger (for 128 units,
    156x512 instead of 128x384), and still the whole epoch is faster than with the input
    product hoisted out of the loop (docs/measurements.md gives the figures).
    """
    hr, hz, hn = jnp.split(recurrent_kernel, 3, axis=-1)
    xr, xz, xn = jnp.split(input_kernel, 3, axis=-1)
    top = jnp.concatenate([hr, hz, jnp.zeros_like(hn), hn], axis=-1)
    bottom = jnp.concatenate([xr, xz, xn, jnp.zeros_like(xn)], axis=-1)
    br, bz, bn = jnp.split(input_bias, 3)
    return jnp.concatenate([top, bottom]), jnp.concatenate([br, bz, bn, jnp.zeros_like(bn)])


@dataclass(frozen=True)
class CellKind:
    gates: int          # blocks of `units` columns in input_proj and recurrent_kernel
    update: Callable    # (activation, blocks, carry) -> carry; carry is a tuple ending in h
    step_kernel: Callable  # (input kernel, input bias, recurrent kernel) -> (kernel, bias)
    carry_size: int


CELLS: dict[str, CellKind] = {
    "lstm": CellKind(4, lstm_update, same_blocks, 2),
    "gru": CellKind(3, gru_update, gru_blocks, 1),
    "simple": CellKind(1, simple_update, same_blocks, 1),
}
