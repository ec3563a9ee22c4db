"""The LSTM time loop as one compiled CPU kernel (models/native/lstm_cpu.cc), through the XLA FFI.

Why: XLA:CPU runs each LSTM time step as ~30 small kernels, and their launch and
thread hand-off costs left bench's LSTM well behind PyTorch's, which runs one oneDNN
kernel per sequence. The fused kernel does the forward pass in one call and the
backward pass in another, with OpenBLAS (the scipy-openblas32 wheel) for the matrix
products. docs/measurements.md gives the figures and commands.

The kernel is built by `pip install` (setup.py) and is optional: where it is missing,
on other platforms than CPU, for activations it does not implement, when FLOPs are
counted (unrolled loop) or with BENCH_FUSED_LSTM=0, models/recurrence.py's XLA loop
runs instead. Both compute nnx.LSTMCell's equations; a test checks them against each
other for every activation.

The kernel is built for the installing machine's CPU, so it must never be loaded where it
cannot run: models/native_kernels.py checks its build record (setup.py's _lstm_cpu.json)
against this CPU's features and this jaxlib before loading it, and after registering it a
smoke call compares it with XLA's loop. Any failure leaves XLA's loop running, says why in
`status()` and warns once. OpenBLAS's threads are capped to the cores XLA runs on
(`blas_threads()`).

Under `jax.vmap` (a population of trials trained together) the kernel takes the population
axis itself: both calls use vmap_method="broadcast_all", so each pass stays one call that
receives every operand with the vmapped axes in front (an unbatched one broadcast to them;
nested vmaps add one axis each) and runs the members inside, spread over up to
`blas_threads()` threads, each member's matrix products on its own thread. With
vmap_method="sequential", XLA looped over the members around one call each, and a
population trained slower than its members one at a time; with the population axis in the
kernel it trains faster (docs/measurements.md, "Design measurements cited from the code").
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from models import native_kernels
from models.cells import lstm_update
from models.recurrence import recur

DISABLE_VARIABLE = "BENCH_FUSED_LSTM"
RECORD_NAME = "_lstm_cpu.json"  # setup.py's build record, beside the library
_FORWARD, _BACKWARD = "bench_lstm_forward", "bench_lstm_backward"
_COEFFICIENTS = 6  # per unit, saved by the forward pass for the backward (lstm_cpu.cc's Coef)
# Under vmap the kernel gets every operand with the population axes in front (lstm_cpu.cc).
_VMAP_METHOD = "broadcast_all"

ACTIVATION_IDS = native_kernels.ACTIVATION_IDS  # the activations the kernel implements


# ---- the smoke call ----------------------------------------------------------------------

_SMOKE_OUTPUTS = ("value", "d c0", "d h0", "d xs", "d kernel", "d bias")


def _smoke_args() -> tuple:
    """A tiny LSTM's (carry, xs, kernel, bias): 2 steps, batch 2, 3 features, 4 units."""
    steps, batch, features, units = 2, 2, 3, 4
    draw = np.random.default_rng(0).standard_normal
    carry = (draw((batch, units), np.float32), draw((batch, units), np.float32))
    return (carry, draw((steps, batch, features), np.float32),
            draw((units + features, 4 * units), np.float32) * 0.5, draw((4 * units,), np.float32))


def _value_and_grads(loop: Callable, args: tuple):
    """A loss of the loop's last carry and its gradient for every argument."""
    def loss(carry, xs, kernel, bias):
        c, h = loop(carry, xs, kernel, bias)
        return jnp.sum(c * c) + jnp.sum(jnp.sin(h))  # cotangents differ per element

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*args)


def _both_loops(args: tuple) -> tuple:
    """The kernel's and XLA's loop's loss and gradients, computed on the CPU."""
    fused = functools.partial(_fused, jnp.tanh)
    xla = functools.partial(recur, functools.partial(lstm_update, jnp.tanh), 1)
    both = jax.jit(lambda args: (_value_and_grads(fused, args), _value_and_grads(xla, args)))
    with jax.default_device(jax.devices("cpu")[0]):
        return jax.device_get(both(args))


def smoke_test() -> None:
    """Raises Unusable unless the kernel's forward and backward pass match XLA's loop."""
    got, want = native_kernels.smoke_results(lambda: _both_loops(_smoke_args()))
    native_kernels.compare_smoke(_SMOKE_OUTPUTS, got, want, "XLA's loop")


SPEC = native_kernels.KernelSpec(
    "lstm", "_lstm_cpu", DISABLE_VARIABLE,  # models/native/_lstm_cpu*.so, from lstm_cpu.cc
    {_FORWARD: "BenchLstmForward", _BACKWARD: "BenchLstmBackward"}, smoke_test,
    kernel="fused LSTM kernel", fallback="XLA's loop")
_library_path = SPEC.library_path
_KERNEL = native_kernels.Loader(SPEC, lambda: _library_path())  # read at load: tests swap it
_load, status = _KERNEL.load, _KERNEL.status


def used_by(trial) -> bool:
    """Whether a trial (a TrialConfig) would run this kernel on CPU (the run says so)."""
    return trial.model == "recurrent" and trial.cell == "lstm"


def blas_threads() -> int | None:
    """The threads OpenBLAS runs the kernel's matrix products on, and the most threads a
    population's members are spread over (lstm_cpu.cc); None when the kernel is off."""
    return native_kernels.cap_blas_threads() if _load() is None else None


def supports(activation: Callable) -> bool:
    return activation in ACTIVATION_IDS and _load() is None


def _f32(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def lstm(activation: Callable, carry: tuple[jax.Array, jax.Array], xs: jax.Array,
         kernel: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The last (c, h) of the LSTM over `xs` (time, batch, features), CPU only.

    Same contract as `models.recurrence.recur` with `lstm_update`: `kernel` is
    (units + features, 4 * units), rows for h first; gate columns i, f, g, o.
    """
    if (reason := _load()) is not None:
        raise RuntimeError(f"the {SPEC.kernel} cannot run: {reason}")
    return _fused(activation, carry, xs, kernel, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(activation, carry, xs, kernel, bias):
    """`lstm` without checking that the kernel loaded (the smoke call runs while it loads)."""
    return _forward(activation, carry, xs, kernel, bias)[0]


def _forward(activation, carry, xs, kernel, bias):
    c0, h0 = carry
    steps, batch, features = xs.shape
    units = h0.shape[-1]
    call = jax.ffi.ffi_call(_FORWARD, (_f32(batch, units), _f32(batch, units),
                                       _f32(steps, batch, units + features),
                                       _f32(steps, batch, _COEFFICIENTS * units),
                                       _f32(steps, batch, units)),
                            vmap_method=_VMAP_METHOD)
    h, c, hx, coefficients, cells = call(xs, kernel, bias, h0, c0,
                                         activation=np.int64(ACTIVATION_IDS[activation]))
    return (c, h), (hx, coefficients, cells, c0, kernel)


def _backward(activation, residuals, d_last):
    hx, coefficients, cells, c0, kernel = residuals
    d_c, d_h = d_last
    steps, batch, units = cells.shape
    call = jax.ffi.ffi_call(_BACKWARD, (_f32(steps, batch, 4 * units), _f32(batch, units),
                                        _f32(batch, units), _f32(*kernel.shape),
                                        _f32(kernel.shape[1])),
                            vmap_method=_VMAP_METHOD)
    d_z, d_h0, d_c0, d_kernel, d_bias = call(kernel, c0, coefficients, cells, d_h, d_c, hx)
    d_xs = d_z @ kernel[units:].T  # dropped by XLA when nobody asks for it
    return (d_c0, d_h0), d_xs, d_kernel, d_bias


_fused.defvjp(_forward, _backward)
