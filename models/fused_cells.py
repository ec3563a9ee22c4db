"""The GRU's and the simple cell's time loops as compiled CPU kernels
(models/native/cells_cpu.cc), through the XLA FFI: models/fused_lstm.py's treatment for the
two cells whose carry is h alone.

Same contract as `models.recurrence.recur` with models/recurrent.py's gru_update or
simple_update over its step kernels (gru_blocks, same_blocks); one call forward and one
backward per sequence, OpenBLAS for the products, every activation of the table.
docs/measurements.md gives the figures and commands.

Optional like the LSTM's kernel: where it is missing, on other platforms than CPU, when
FLOPs are counted (unrolled loop) or with BENCH_FUSED_CELLS=0, the XLA loop runs instead.
models/native_kernels.py checks the build record before loading, and a smoke call compares
both cells with XLA's loop; any failure leaves XLA's loop running, says why in `status()`
and warns once. Under jax.vmap the kernel takes the population axis itself
(vmap_method="broadcast_all"), as the LSTM's does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from models import native_kernels
from models.cells import CELLS
from models.recurrence import recur
from models.native_kernels import ACTIVATION_IDS

DISABLE_VARIABLE = "BENCH_FUSED_CELLS"
CELL_IDS = {"gru": 1, "simple": 2}  # cells_cpu.cc's `with_cell`
_COEFFICIENTS = {"gru": 5, "simple": 1}  # per unit, saved for the backward pass (cells_cpu.cc)
_GATES = {"gru": 4, "simple": 1}  # blocks of the step product (gru_blocks keeps xn, hn apart)
_FORWARD, _BACKWARD = "bench_cell_forward", "bench_cell_backward"
_VMAP_METHOD = "broadcast_all"


# ---- the smoke call ----------------------------------------------------------------------

_SMOKE_OUTPUTS = ("value", "d h0", "d xs", "d kernel", "d bias")


def _smoke_args(cell: str) -> tuple:
    """A tiny loop's (carry, xs, kernel, bias): 2 steps, batch 2, 3 features, 4 units."""
    steps, batch, features, units = 2, 2, 3, 4
    draw = np.random.default_rng(CELL_IDS[cell]).standard_normal
    columns = _GATES[cell] * units
    return ((draw((batch, units), np.float32),), draw((steps, batch, features), np.float32),
            draw((units + features, columns), np.float32) * 0.5, draw((columns,), np.float32))


def _value_and_grads(loop: Callable, args: tuple):
    def loss(carry, xs, kernel, bias):
        (h,) = loop(carry, xs, kernel, bias)
        return jnp.sum(jnp.sin(h) * h)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*args)


def _both_loops() -> list:
    """(kernel's, XLA loop's) loss and gradients for each cell, on the CPU."""
    def pairs(all_args):
        return [(_value_and_grads(functools.partial(_fused, cell, jnp.tanh), args),
                 _value_and_grads(functools.partial(
                     recur, functools.partial(CELLS[cell].update, jnp.tanh), 1), args))
                for cell, args in all_args.items()]

    with jax.default_device(jax.devices("cpu")[0]):
        return jax.device_get(jax.jit(pairs)({cell: _smoke_args(cell) for cell in CELL_IDS}))


def smoke_test() -> None:
    """Raises Unusable unless both cells' forward and backward pass match XLA's loop."""
    for got, want in native_kernels.smoke_results(_both_loops):
        native_kernels.compare_smoke(_SMOKE_OUTPUTS, got, want, "XLA's loop")


SPEC = native_kernels.KernelSpec(
    "cells", "_cells_cpu", DISABLE_VARIABLE,
    {_FORWARD: "BenchCellForward", _BACKWARD: "BenchCellBackward"}, smoke_test,
    kernel="fused GRU/simple-cell kernel", fallback="XLA's loop")
_library_path = SPEC.library_path
_KERNEL = native_kernels.Loader(SPEC, lambda: _library_path())  # read at load: tests swap it
_load, status = _KERNEL.load, _KERNEL.status


def used_by(trial) -> bool:
    """Whether a trial (a TrialConfig) would run this kernel on CPU (the run says so)."""
    return trial.model == "recurrent" and trial.cell != "lstm" and trial.impl == "tuned"


def supports(cell: str, activation: Callable) -> bool:
    return cell in CELL_IDS and activation in ACTIVATION_IDS and _load() is None


# ---- the loop --------------------------------------------------------------------------------

def _f32(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def loop(cell: str, activation: Callable, carry: tuple[jax.Array], xs: jax.Array,
         kernel: jax.Array, bias: jax.Array) -> tuple[jax.Array]:
    """The last (h,) of `cell` over `xs` (time, batch, features), CPU only.

    Same contract as `models.recurrence.recur` with the cell's update: `kernel` is
    (units + features, gates * units), rows for h first, as models/recurrent.py builds it.
    """
    if (reason := _load()) is not None:
        raise RuntimeError(f"the {SPEC.kernel} cannot run: {reason}")
    return _fused(cell, activation, carry, xs, kernel, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(cell, activation, carry, xs, kernel, bias):
    """`loop` without checking that the kernel loaded (the smoke call runs while it loads)."""
    return _forward(cell, activation, carry, xs, kernel, bias)[0]


def _forward(cell, activation, carry, xs, kernel, bias):
    (h0,) = carry
    steps, batch, features = xs.shape
    units = h0.shape[-1]
    call = jax.ffi.ffi_call(_FORWARD, (_f32(batch, units),
                                       _f32(steps, batch, units + features),
                                       _f32(steps, batch, _COEFFICIENTS[cell] * units)),
                            vmap_method=_VMAP_METHOD)
    h, hx, coefficients = call(xs, kernel, bias, h0, cell=np.int64(CELL_IDS[cell]),
                               activation=np.int64(ACTIVATION_IDS[activation]))
    return (h,), (hx, coefficients, kernel)


def _backward(cell, activation, residuals, d_last):
    hx, coefficients, kernel = residuals
    (d_h,) = d_last
    steps, batch, _ = hx.shape
    units = d_h.shape[-1]
    call = jax.ffi.ffi_call(_BACKWARD, (_f32(steps, batch, kernel.shape[1]), _f32(batch, units),
                                        _f32(*kernel.shape), _f32(kernel.shape[1])),
                            vmap_method=_VMAP_METHOD)
    d_z, d_h0, d_kernel, d_bias = call(kernel, coefficients, d_h, hx,
                                       cell=np.int64(CELL_IDS[cell]))
    d_xs = d_z @ kernel[units:].T  # dropped by XLA when nobody asks for it
    return (d_h0,), d_xs, d_kernel, d_bias


_fused.defvjp(_forward, _backward)
