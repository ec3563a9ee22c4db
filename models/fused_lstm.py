"""The LSTM time loop as one compiled CPU kernel (models/native/lstm_cpu.cc), through the XLA FFI.

Why: XLA:CPU runs each LSTM time step as ~30 small kernels, and their launch and
thread hand-off costs left bench's LSTM 128 at 1.6x PyTorch's epoch time (PyTorch runs
one oneDNN kernel per sequence). The fused kernel does the forward pass in one call and
the backward pass in another, with OpenBLAS (the scipy-openblas32 wheel) for the
matrix products. README, "Measured", gives the figures and commands.

The kernel is built by `pip install` (setup.py) and is optional: where it is missing,
on other platforms than CPU, for activations it does not implement, when FLOPs are
counted (unrolled loop) or with BENCH_FUSED_LSTM=0, models/recurrence.py's XLA loop
runs instead. Both compute nnx.LSTMCell's equations; a test checks them against each
other for every activation.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

DISABLE_VARIABLE = "BENCH_FUSED_LSTM"
_FORWARD, _BACKWARD = "bench_lstm_forward", "bench_lstm_backward"
_COEFFICIENTS = 6  # per unit, saved by the forward pass for the backward (lstm_cpu.cc's Coef)

# The kernel's activation ids (lstm_cpu.cc's `forward_with`), keyed by the JAX function whose
# value and gradient each one reproduces.
ACTIVATION_IDS: dict[Callable, int] = {
    jax.nn.identity: 0, jax.nn.relu: 1, jax.nn.sigmoid: 2, jnp.tanh: 3, jax.nn.gelu: 4,
    jax.nn.silu: 5, jax.nn.elu: 6, jax.nn.leaky_relu: 7, jax.nn.softplus: 8, jax.nn.selu: 9,
    jax.nn.relu6: 10, jax.nn.mish: 11,
}


def _library_path() -> Path | None:
    folder = Path(__file__).resolve().parent / "native"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = folder / f"_lstm_cpu{suffix}"
        if candidate.exists():
            return candidate
    return None


@functools.cache
def _load() -> str | None:
    """Registers the kernel with XLA; returns why it cannot be used, or None when it can."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return f"off ({DISABLE_VARIABLE}=0)"
    path = _library_path()
    if path is None:
        return "not built (pip install compiles models/native/lstm_cpu.cc where a C++ compiler is present)"
    try:
        import scipy_openblas32  # noqa: F401  (loads OpenBLAS's symbols for the kernel)
        library = ctypes.CDLL(str(path))
        for name, symbol in ((_FORWARD, library.BenchLstmForward),
                             (_BACKWARD, library.BenchLstmBackward)):
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    except Exception as error:  # noqa: BLE001  a broken kernel must not stop a run: say why
        return f"cannot load {path.name}: {error}"
    return None


def status() -> str:
    """'on' or why the XLA loop runs instead, for run.json."""
    return _load() or "on"


def supports(activation: Callable) -> bool:
    return activation in ACTIVATION_IDS and _load() is None


def _f32(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lstm(activation: Callable, carry: tuple[jax.Array, jax.Array], xs: jax.Array,
         kernel: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The last (c, h) of the LSTM over `xs` (time, batch, features), CPU only.

    Same contract as `models.recurrence.recur` with `lstm_update`: `kernel` is
    (units + features, 4 * units), rows for h first; gate columns i, f, g, o.
    """
    return _forward(activation, carry, xs, kernel, bias)[0]


def _forward(activation, carry, xs, kernel, bias):
    if (reason := _load()) is not None:
        raise RuntimeError(f"the fused LSTM kernel cannot run: {reason}")
    c0, h0 = carry
    steps, batch, features = xs.shape
    units = h0.shape[-1]
    call = jax.ffi.ffi_call(_FORWARD, (_f32(batch, units), _f32(batch, units),
                                       _f32(steps, batch, units + features),
                                       _f32(steps, batch, _COEFFICIENTS * units),
                                       _f32(steps, batch, units)),
                            vmap_method="sequential")
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
                            vmap_method="sequential")
    d_z, d_h0, d_c0, d_kernel, d_bias = call(kernel, c0, coefficients, cells, d_h, d_c, hx)
    d_xs = d_z @ kernel[units:].T  # dropped by XLA when nobody asks for it
    return (d_c0, d_h0), d_xs, d_kernel, d_bias


lstm.defvjp(_forward, _backward)
