"""A gated recurrence over time, with a hand-written backward pass that XLA:CPU runs fast.

Each step computes `z = [h, x_t] @ kernel + bias`, splits it into equal column blocks
(the gates) and lets a cell's elementwise update make the next carry:
`carry = cell(blocks, carry)`, where a carry is a tuple whose last entry is h.

Why not let JAX differentiate a plain `lax.scan`: on XLA:CPU an LSTM epoch is markedly
slower that way (docs/measurements.md gives the figures and the command), because:
- XLA:CPU emits scalar (unvectorised) code for an elementwise fusion that reads two
  slices of one dynamically sliced array. Autodiff saves each step's z as one array and
  reads its gate slices back that way, and a hoisted `x @ W_x` is read that way in the
  forward loop, so every gate nonlinearity ran scalar. Here each gate's pre-activation
  is saved as its own stacked array, and the input product is part of the step's matrix
  product, so every loop fusion reads whole arrays.
- The kernel's gradient is one large matrix product after the backward loop instead of
  a small one accumulated inside it at every step.
The backward loop re-runs the cell's elementwise update under `jax.vjp` (cheap,
vectorised), so any cell and activation gets its exact gradient; a test compares it
with autodiff of nnx's LSTM, GRU and simple cells.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

Carry = tuple[jax.Array, ...]
Cell = Callable[[tuple[jax.Array, ...], Carry], Carry]


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def recur(cell: Cell, unroll: int | bool, carry: Carry, xs: jax.Array,
          kernel: jax.Array, bias: jax.Array) -> Carry:
    """The last carry after running `cell` over `xs` (time, batch, features).

    `kernel` is (units + features, gates * units): rows for h first, then for x_t.
    `unroll` is passed to both loops (True unrolls them fully, e.g. for FLOP counting).
    """
    return _forward(cell, unroll, carry, xs, kernel, bias)[0]


def _forward(cell, unroll, carry, xs, kernel, bias):
    gates = kernel.shape[1] // carry[-1].shape[-1]

    def step(carry, x_t):
        hx = jnp.concatenate([carry[-1], x_t], axis=-1)
        blocks = tuple(jnp.split(hx @ kernel + bias, gates, axis=-1))
        return cell(blocks, carry), (blocks, carry, hx)

    last, saved = jax.lax.scan(step, carry, xs, unroll=unroll)
    return last, (saved, kernel)


def _backward(cell, unroll, residuals, d_last):
    (blocks, carries, hx), kernel = residuals
    units = carries[-1].shape[-1]
    kernel_h_t = kernel[:units].T

    def step(d_carry, saved):
        _, pullback = jax.vjp(cell, *saved)
        d_blocks, d_prev = pullback(d_carry)
        d_z = jnp.concatenate(d_blocks, axis=-1)
        return (*d_prev[:-1], d_prev[-1] + d_z @ kernel_h_t), d_z

    d_carry, d_z = jax.lax.scan(step, d_last, (blocks, carries), reverse=True, unroll=unroll)
    d_kernel = jnp.einsum("tbk,tbg->kg", hx, d_z)
    d_xs = d_z @ kernel[units:].T  # dropped by XLA when nobody asks for it
    return d_carry, d_xs, d_kernel, d_z.sum(axis=(0, 1))


recur.defvjp(_forward, _backward)
