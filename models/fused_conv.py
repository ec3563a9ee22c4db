"""The CNN's convolution blocks as one compiled CPU kernel (models/native/conv_cpu.cc), through
the XLA FFI.

A block is `avg_pool_2x2(act(conv(x) + bias))`, SAME padding, stride 1, as models/conv.py
builds it twice. Why a kernel: in XLA (models/layers.py's PatchConv) the second block's
29 MB patch matrix and its gradient are each written and read back, and the first block's
12.8 MB output takes a pass for each of bias, activation, pooling and their gradients; the
kernel cuts the batch into tiles that stay in cache and takes each tile through every
stage at once, its products on OpenBLAS. docs/measurements.md gives the figures and commands.

The kernel is built by `pip install` (setup.py) and is optional: where it is missing, on
other platforms than CPU, for activations it does not implement, when FLOPs are counted
(XLA cannot count inside a custom call) or with BENCH_FUSED_CONV=0, models/layers.py's
patch form runs instead. models/native_kernels.py checks the build record before loading,
and a smoke call compares the kernel with the patch form; any failure leaves the patch
form running, says why in `status()` and warns once. Tests compare it with nnx.Conv for
every activation, gradients included.

Under jax.vmap XLA calls the kernel once per member (vmap_method="sequential"): on CPU
`--population auto` trains conv trials alone anyway (bench/run/runner.py, ALONE_BY_DEFAULT).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from models import native_kernels
from models.layers import avg_pool_2x2, patch_conv
from models.native_kernels import ACTIVATION_IDS

DISABLE_VARIABLE = "BENCH_FUSED_CONV"
_FORWARD, _BACKWARD = "bench_conv_block_forward", "bench_conv_block_backward"
_VMAP_METHOD = "sequential"
_ABSENT = (0,)  # the kernel's shape for a result or operand left out (conv_cpu.cc)


# ---- the XLA form and the smoke call --------------------------------------------------------

def reference_block(activation: Callable, x: jax.Array, kernel: jax.Array,
                    bias: jax.Array) -> jax.Array:
    """The block in XLA, as models/layers.py computes it: what the kernel must equal."""
    return avg_pool_2x2(activation(patch_conv(x, kernel, bias)))


def _smoke_args(channels: int) -> tuple:
    """A tiny block's (x, kernel, bias): batch 3, 4x6 images, 3x3 kernel, 5 filters."""
    draw = np.random.default_rng(channels).standard_normal
    return (draw((3, 4, 6, channels), np.float32), draw((3, 3, channels, 5), np.float32) * 0.5,
            draw((5,), np.float32))


def _value_and_grads(block: Callable, args: tuple):
    def loss(x, kernel, bias):
        y = block(jnp.tanh, x, kernel, bias)
        return jnp.sum(jnp.sin(y) * y)  # cotangents differ per element

    return jax.value_and_grad(loss, argnums=(0, 1, 2))(*args)


def _both_forms() -> list:
    """(kernel's, XLA's) loss and gradients for one and for several input channels (the
    kernel's two patch layouts), on the CPU."""
    def pairs(args_one, args_many):
        return [(_value_and_grads(_fused, args),
                 _value_and_grads(reference_block, args)) for args in (args_one, args_many)]

    with jax.default_device(jax.devices("cpu")[0]):
        return jax.device_get(jax.jit(pairs)(_smoke_args(1), _smoke_args(2)))


def smoke_test() -> None:
    """Raises Unusable unless the kernel's forward and backward pass match the XLA form."""
    for got, want in native_kernels.smoke_results(_both_forms):
        native_kernels.compare_smoke(("value", "d x", "d kernel", "d bias"), got, want,
                                     "the patch form")


SPEC = native_kernels.KernelSpec(
    "conv", "_conv_cpu", DISABLE_VARIABLE,  # models/native/_conv_cpu*.so, from conv_cpu.cc
    {_FORWARD: "BenchConvBlockForward", _BACKWARD: "BenchConvBlockBackward"}, smoke_test,
    kernel="fused conv kernel", fallback="the XLA patch form")
_library_path = SPEC.library_path
_KERNEL = native_kernels.Loader(SPEC, lambda: _library_path())  # read at load: tests swap it
_load, status = _KERNEL.load, _KERNEL.status


def supports(activation: Callable) -> bool:
    return activation in ACTIVATION_IDS and _load() is None


# The poolings (the `pooling` axis, models/conv.py) the kernel computes: 2x2 average pooling
# only. A block with another (max pooling, a stride-2 convolution) runs the XLA form on
# every platform.
POOLINGS: tuple[str, ...] = ("avg",)


def runs_kernel(pooling: str | None) -> bool:
    """Whether a conv trial with this `pooling` (its config's value) runs this kernel on CPU,
    where the kernel is on (`status()`) and implements its activation; else the XLA form."""
    return pooling in POOLINGS


def used_by(trial) -> bool:
    """Whether a trial (a TrialConfig) would run this kernel on CPU (the run says so)."""
    return trial.model == "conv" and trial.impl == "tuned" and runs_kernel(trial.pooling)


# ---- the block -------------------------------------------------------------------------------

def _f32(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def conv_block(activation: Callable, x: jax.Array, kernel: jax.Array,
               bias: jax.Array) -> jax.Array:
    """avg_pool_2x2(activation(conv(x, kernel) + bias)), CPU only: x (B, H, W, C) with H and W
    even, kernel (k, k, C, O) as nnx.Conv's; (B, H/2, W/2, O).

    The backward pass computes x's gradient only where x is differentiated (not for the
    first block, whose input is the data): JAX says so through symbolic zeros.
    """
    if (reason := _load()) is not None:
        raise RuntimeError(f"the {SPEC.kernel} cannot run: {reason}")
    return _fused(activation, x, kernel, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(activation, x, kernel, bias):
    """conv_block without checking that the kernel loaded (the smoke call runs while it loads)."""
    return _call_forward(activation, x, kernel, bias)[0]


def _saves_slope(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether the forward pass saves the activation's derivative for the backward pass.

    Where a patch is shorter than the output's channels (the first layer: 9 entries against
    32 channels), computing the pre-activations again costs less than writing the
    derivatives out and reading them back; otherwise (the second layer: 288 against 64) the
    product is the dearer part.
    """
    return kernel.shape[0] * kernel.shape[1] * x.shape[-1] > kernel.shape[-1]


def _call_forward(activation, x, kernel, bias):
    batch, height, width, _ = x.shape
    out = kernel.shape[-1]
    slope_shape = (batch, height, width, out) if _saves_slope(x, kernel) else _ABSENT
    call = jax.ffi.ffi_call(_FORWARD, (_f32(batch, height // 2, width // 2, out),
                                       _f32(*slope_shape)), vmap_method=_VMAP_METHOD)
    return call(x, kernel, bias, activation=np.int64(ACTIVATION_IDS[activation]))


def _forward(activation, x, kernel, bias):
    """With symbolic zeros: each operand comes with whether it is differentiated."""
    y, slope = _call_forward(activation, x.value, kernel.value, bias.value)
    wants_d_x = jnp.zeros((), jnp.float32) if x.perturbed else None  # a marker, or none
    return y, (x.value, kernel.value, bias.value, slope, wants_d_x)


def _backward(activation, residuals, d_y):
    x, kernel, bias, slope, wants_d_x = residuals
    if isinstance(d_y, SymbolicZero):  # the block's output is not used
        d_y = jnp.zeros(d_y.aval.shape, d_y.aval.dtype)
    d_x_shape = x.shape if wants_d_x is not None else _ABSENT
    call = jax.ffi.ffi_call(_BACKWARD, (_f32(*d_x_shape), _f32(*kernel.shape),
                                        _f32(*bias.shape)), vmap_method=_VMAP_METHOD)
    d_x, d_kernel, d_bias = call(x, kernel, bias, slope, d_y,
                                 activation=np.int64(ACTIVATION_IDS[activation]))
    return (d_x if wants_d_x is not None else jnp.zeros_like(x)), d_kernel, d_bias


_fused.defvjp(_forward, _backward, symbolic_zeros=True)
