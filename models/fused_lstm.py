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
cannot run (an illegal instruction would kill the process): before loading it, its build
record (setup.py's _lstm_cpu.json) must match this CPU's features and this jaxlib, and
after registering it a smoke call compares it with XLA's loop. Any failure leaves XLA's
loop running, says why in `status()` and warns once. OpenBLAS's threads are capped to the
cores XLA runs on (`blas_threads()`).

Under `jax.vmap` (a population of trials trained together) the kernel takes the population
axis itself: both calls use vmap_method="broadcast_all", so each pass stays one call that
receives every operand with the vmapped axes in front (an unbatched one broadcast to them;
nested vmaps add one axis each) and runs the members inside, spread over up to
`blas_threads()` threads, each member's matrix products on its own thread. With
vmap_method="sequential", XLA looped over the members around one call each, and a
population trained slower than its members one at a time; with the population axis in the
kernel it trains faster (docs/measurements.md, "Populations").
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.machinery
import importlib.metadata
import json
import os
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

DISABLE_VARIABLE = "BENCH_FUSED_LSTM"
RECORD_NAME = "_lstm_cpu.json"  # setup.py's build record, beside the library
_FORWARD, _BACKWARD = "bench_lstm_forward", "bench_lstm_backward"
_COEFFICIENTS = 6  # per unit, saved by the forward pass for the backward (lstm_cpu.cc's Coef)
# Under vmap the kernel gets every operand with the population axes in front (lstm_cpu.cc).
_VMAP_METHOD = "broadcast_all"
_REINSTALL = ("reinstall bench to rebuild it here (pip install --force-reinstall --no-deps ., "
              "with -e for an editable install)")

# The kernel's activation ids (lstm_cpu.cc's `forward_with`), keyed by the JAX function whose
# value and gradient each one reproduces.
ACTIVATION_IDS: dict[Callable, int] = {
    jax.nn.identity: 0, jax.nn.relu: 1, jax.nn.sigmoid: 2, jnp.tanh: 3, jax.nn.gelu: 4,
    jax.nn.silu: 5, jax.nn.elu: 6, jax.nn.leaky_relu: 7, jax.nn.softplus: 8, jax.nn.selu: 9,
    jax.nn.relu6: 10, jax.nn.mish: 11,
}


class Unusable(Exception):
    """Why the built kernel must not run here; its text becomes `status()`."""


def _library_path() -> Path | None:
    folder = Path(__file__).resolve().parent / "native"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = folder / f"_lstm_cpu{suffix}"
        if candidate.exists():
            return candidate
    return None


# ---- what the library was built for, checked before it is loaded ---------------------------

def build_record(library: Path) -> dict:
    """setup.py's record beside `library`, once checked to describe that very file."""
    path = library.with_name(RECORD_NAME)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise Unusable(f"off: {library.name} has no build record {RECORD_NAME} (built by an "
                       f"older bench); {_REINSTALL}") from None
    except (OSError, ValueError) as error:
        raise Unusable(f"off: unreadable build record {RECORD_NAME} ({error}); "
                       f"{_REINSTALL}") from None
    if not isinstance(record, dict) or not isinstance(record.get("target_features"), list):
        raise Unusable(f"off: {RECORD_NAME} lists no target_features; {_REINSTALL}")
    if record.get("library_sha256") != hashlib.sha256(library.read_bytes()).hexdigest():
        raise Unusable(f"off: {RECORD_NAME} describes another build than {library.name}; "
                       f"{_REINSTALL}")
    return record


def cpu_features() -> frozenset[str] | None:
    """The features every core of this CPU has, as /proc/cpuinfo names them; None where unknown.

    Only Linux's /proc/cpuinfo is read ("flags" on x86, "Features" on Arm).
    """
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    fields = (line.partition(":") for line in lines)
    per_core = [frozenset(value.split()) for key, _, value in fields
                if key.strip() in ("flags", "Features")]
    return frozenset.intersection(*per_core) if per_core else None


def check_cpu(targeted: list[str]) -> None:
    """Raises Unusable unless this CPU has every feature the kernel was compiled to use."""
    present = cpu_features() if targeted else frozenset()
    if present is None:  # cannot tell: an unknown CPU might lack them, so do not load
        raise Unusable(f"off: cannot read this CPU's features to check the kernel's "
                       f"({', '.join(targeted)}); only Linux's /proc/cpuinfo is read")
    if missing := [feature for feature in targeted if feature not in present]:
        raise Unusable(f"off: built for {', '.join(missing)}, which this CPU lacks; {_REINSTALL}")


def check_jaxlib(built_against: str | None) -> None:
    """Raises Unusable unless jaxlib is the version the kernel was compiled against.

    The FFI's decoding of arguments is compiled into the kernel from that jaxlib's headers,
    so the kernel runs only with it; a reinstall rebuilds it for another.
    """
    running = importlib.metadata.version("jaxlib")
    if built_against != running:
        raise Unusable(f"off: built against jaxlib {built_against}, running {running}; "
                       f"{_REINSTALL}")


# ---- loading, OpenBLAS threads --------------------------------------------------------------

@functools.cache
def _openblas() -> ctypes.CDLL:
    """scipy-openblas32's library, loaded here rather than by whoever imports it first.

    The kernel needs libscipy_openblas.so; once this copy is loaded, the dynamic loader uses
    it for that need whatever the kernel's run paths say.
    """
    import scipy_openblas32

    return ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(),
                                    scipy_openblas32.get_library(fullname=True)))


def xla_cpu_threads(flags: str | None = None) -> int:
    """The threads XLA:CPU runs operations on: the usable cores, unless `flags` (XLA_FLAGS
    by default) restrict them."""
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    if re.search(r"--xla_cpu_multi_thread_eigen=(false|0)\b", flags):
        return 1
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    if limit := re.search(r"intra_op_parallelism_threads=(\d+)", flags):
        cores = min(cores, max(1, int(limit.group(1))))
    return cores


@functools.cache
def _cap_blas_threads() -> int:
    """Caps OpenBLAS's threads to XLA's (more would compete with XLA's for the same cores)."""
    openblas = _openblas()
    threads = min(xla_cpu_threads(), openblas.scipy_openblas_get_num_threads())
    openblas.scipy_openblas_set_num_threads(threads)
    return threads


@functools.cache
def _register(library: Path) -> ctypes.CDLL:
    """Loads the kernel and registers its two targets with XLA, once per process."""
    kernel = ctypes.CDLL(str(library))
    symbols = {_FORWARD: kernel.BenchLstmForward, _BACKWARD: kernel.BenchLstmBackward}
    for name, symbol in symbols.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    return kernel


# ---- the smoke call ----------------------------------------------------------------------

_SMOKE_OUTPUTS = ("value", "d c0", "d h0", "d xs", "d kernel", "d bias")
_SMOKE_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


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
    from models.recurrence import recur  # models.recurrent imports this module
    from models.recurrent import lstm_update

    fused = functools.partial(_fused, jnp.tanh)
    xla = functools.partial(recur, functools.partial(lstm_update, jnp.tanh), 1)
    both = jax.jit(lambda args: (_value_and_grads(fused, args), _value_and_grads(xla, args)))
    with jax.default_device(jax.devices("cpu")[0]):
        return jax.device_get(both(args))


def smoke_test() -> None:
    """Raises Unusable unless the kernel's forward and backward pass match XLA's loop."""
    # A fresh thread starts outside any trace: supports() runs while jit traces a model.
    with ThreadPoolExecutor(1) as pool:
        try:
            got, want = pool.submit(_both_loops, _smoke_args()).result()
        except Exception as error:  # noqa: BLE001  whatever went wrong, the kernel is not used
            first_line = str(error).strip().partition("\n")[0]
            raise Unusable(f"off: smoke test failed: {type(error).__name__}: "
                           f"{first_line}") from None
    pairs = zip(_SMOKE_OUTPUTS, jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    for name, a, b in pairs:
        if not np.allclose(a, b, **_SMOKE_TOLERANCE):
            raise Unusable(f"off: smoke test failed: the kernel's {name} differs from XLA's loop "
                           f"by up to {np.max(np.abs(a - b)):.3g}")


@functools.cache
def _load() -> str | None:
    """Registers the kernel with XLA; returns why it cannot be used, or None when it can."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return f"off ({DISABLE_VARIABLE}=0)"
    path = _library_path()
    if path is None:
        return ("not built (pip install compiles models/native/lstm_cpu.cc where a C++ "
                "compiler is present)")
    try:
        record = build_record(path)
        check_cpu(record["target_features"])
        check_jaxlib(record.get("jaxlib"))
        _cap_blas_threads()  # loads OpenBLAS, which the kernel links
        _register(path)
        smoke_test()
    except Unusable as unusable:
        reason = str(unusable)
    except Exception as error:  # noqa: BLE001  a broken kernel must not stop a run: say why
        reason = f"cannot load {path.name}: {error}"
    else:
        return None
    warnings.warn(f"fused LSTM kernel {reason}; XLA's loop runs instead", RuntimeWarning,
                  stacklevel=3)
    return reason


def status() -> str:
    """'on' or why the XLA loop runs instead, for run.json."""
    return _load() or "on"


def blas_threads() -> int | None:
    """The threads OpenBLAS runs the kernel's matrix products on, and the most threads a
    population's members are spread over (lstm_cpu.cc); None when the kernel is off."""
    return _cap_blas_threads() if _load() is None else None


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
        raise RuntimeError(f"the fused LSTM kernel cannot run: {reason}")
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
