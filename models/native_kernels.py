"""Loading bench's optional CPU kernels (models/native/*.cc): each module models/fused_*.py
declares its kernel's `KernelSpec` (listed in `KERNELS`) and loads it with a `Loader`.

setup.py builds each kernel library for the installing machine's CPU and writes its build
record beside it (`<stem>.json`). A library must never be loaded where it cannot run (an
illegal instruction would kill the process), so before loading it its record must describe
that very file, this CPU's features and this jaxlib; then its targets are registered and a
smoke call compares it with XLA's form. Any failure leaves XLA's form running and says why.
OpenBLAS's threads are capped to the cores XLA runs on (`cap_blas_threads`).
"""

from __future__ import annotations

import ctypes
import dataclasses
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

NATIVE = Path(__file__).resolve().parent / "native"

# The kernels' activation ids (cpu_kernels.h's `with_activation`), keyed by the JAX function
# whose value and gradient each one reproduces.
ACTIVATION_IDS: dict[Callable, int] = {
    jax.nn.identity: 0, jax.nn.relu: 1, jax.nn.sigmoid: 2, jnp.tanh: 3, jax.nn.gelu: 4,
    jax.nn.silu: 5, jax.nn.elu: 6, jax.nn.leaky_relu: 7, jax.nn.softplus: 8, jax.nn.selu: 9,
    jax.nn.relu6: 10, jax.nn.mish: 11,
}
REINSTALL = ("reinstall bench to rebuild it here (pip install --force-reinstall --no-deps ., "
             "with -e for an editable install)")


class Unusable(Exception):
    """Why the built kernel must not run here; its text becomes `status()`."""


def library_path(stem: str) -> Path | None:
    """The built library `stem` (e.g. _lstm_cpu) in models/native, or None if not built."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = NATIVE / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def record_name(library: Path) -> str:
    """The build record's name: _lstm_cpu.json for _lstm_cpu.cpython-....so (as setup.py)."""
    return library.name.split(".")[0] + ".json"


# ---- what the library was built for, checked before it is loaded ---------------------------

def build_record(library: Path) -> dict:
    """setup.py's record beside `library`, once checked to describe that very file."""
    name = record_name(library)
    path = library.with_name(name)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise Unusable(f"off: {library.name} has no build record {name} (built by an "
                       f"older bench); {REINSTALL}") from None
    except (OSError, ValueError) as error:
        raise Unusable(f"off: unreadable build record {name} ({error}); "
                       f"{REINSTALL}") from None
    if not isinstance(record, dict) or not isinstance(record.get("target_features"), list):
        raise Unusable(f"off: {name} lists no target_features; {REINSTALL}")
    if record.get("library_sha256") != hashlib.sha256(library.read_bytes()).hexdigest():
        raise Unusable(f"off: {name} describes another build than {library.name}; "
                       f"{REINSTALL}")
    return record


def build_target() -> str | None:
    """The CPU target the built kernels were compiled for: 'native' (the installing CPU), or
    what BENCH_CPU_TARGET named at install (setup.py); None where no kernel is built."""
    targets = set()
    for stem in ("_lstm_cpu", "_cells_cpu", "_conv_cpu"):
        library = library_path(stem)
        try:
            record = json.loads(library.with_name(record_name(library)).read_text())
        except (AttributeError, OSError, ValueError):
            continue  # not built, or no record: its status says so
        targets.add(str(record.get("cpu_target", "native")))  # records before the option: native
    return ", ".join(sorted(targets)) or None


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
        raise Unusable(f"off: built for {', '.join(missing)}, which this CPU lacks; {REINSTALL}")


def check_jaxlib(built_against: str | None) -> None:
    """Raises Unusable unless jaxlib is the version the kernel was compiled against.

    The FFI's decoding of arguments is compiled into the kernel from that jaxlib's headers,
    so the kernel runs only with it; a reinstall rebuilds it for another.
    """
    running = importlib.metadata.version("jaxlib")
    if built_against != running:
        raise Unusable(f"off: built against jaxlib {built_against}, running {running}; "
                       f"{REINSTALL}")


# ---- loading, OpenBLAS threads --------------------------------------------------------------

@functools.cache
def openblas() -> ctypes.CDLL:
    """scipy-openblas32's library, loaded here rather than by whoever imports it first.

    The kernels need libscipy_openblas.so; once this copy is loaded, the dynamic loader uses
    it for that need whatever the kernels' run paths say.
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
def cap_blas_threads() -> int:
    """Caps OpenBLAS's threads to XLA's (more would compete with XLA's for the same cores)."""
    library = openblas()
    threads = min(xla_cpu_threads(), library.scipy_openblas_get_num_threads())
    library.scipy_openblas_set_num_threads(threads)
    return threads


@functools.cache
def _register(library: Path, targets: tuple[tuple[str, str], ...]) -> None:
    """Loads `library` and registers each (XLA target, exported symbol), once per process."""
    kernel = ctypes.CDLL(str(library))
    for target, symbol in targets:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(kernel, symbol)),
                                    platform="cpu")


def load(spec: KernelSpec, path: Path | None) -> None:
    """Checks `spec`'s library at `path` (a test's stand-in too) and registers its targets.
    Raises Unusable, whose text says why, where it must not or cannot run."""
    if path is None:
        raise Unusable(f"not built (pip install compiles models/native/"
                       f"{spec.stem.lstrip('_')}.cc where a C++ compiler is present)")
    try:
        record = build_record(path)
        check_cpu(record["target_features"])
        check_jaxlib(record.get("jaxlib"))
        cap_blas_threads()  # loads OpenBLAS, which the kernels link
        _register(path, tuple(spec.targets.items()))
    except Unusable:
        raise
    except Exception as error:  # noqa: BLE001  a broken kernel must not stop a run: say why
        raise Unusable(f"cannot load {path.name}: {error}") from None


def smoke_results(compute: Callable):
    """`compute()` (the kernel's results and XLA's), run on a fresh thread, which starts
    outside any trace (a kernel is loaded while jit traces a model); any error in it raises
    Unusable."""
    with ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(compute).result()
        except Exception as error:  # noqa: BLE001  whatever went wrong, the kernel is not used
            first_line = str(error).strip().partition("\n")[0]
            raise Unusable(f"off: smoke test failed: {type(error).__name__}: "
                           f"{first_line}") from None


def compare_smoke(names, got, want, xla_form: str, rtol=1e-4, atol=1e-5) -> None:
    """Raises Unusable unless every named result of the kernel's matches XLA's."""
    pairs = zip(names, jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    for name, a, b in pairs:
        if not np.allclose(a, b, rtol=rtol, atol=atol):
            raise Unusable(f"off: smoke test failed: the kernel's {name} differs from "
                           f"{xla_form} by up to {np.max(np.abs(a - b)):.3g}")


# ---- the kernels: a spec each, one loader --------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class KernelSpec:
    """What loading a kernel takes; its module (models/fused_*.py) declares it."""

    name: str  # its key in KERNELS
    stem: str  # models/native/<stem>*.so, built by setup.py from <stem without _>.cc
    switch: str  # the environment variable that, set to 0, leaves XLA's form running
    targets: dict[str, str]  # XLA target -> the library's exported symbol
    smoke_test: Callable[[], None]  # raises Unusable unless the kernel matches XLA's form
    kernel: str  # the kernel, in messages: "fused LSTM kernel"
    fallback: str  # what runs where it cannot, in messages: "XLA's loop"

    def library_path(self) -> Path | None:
        return library_path(self.stem)


KERNELS: dict[str, KernelSpec] = {}  # name -> spec, as each module that declares one is imported


class Loader:
    """Lists `spec` in KERNELS; `load()` (cached: `load.cache_clear()` loads afresh) loads its
    library, `path()` (which tests swap), and returns None where it runs, else why (warned)."""

    def __init__(self, spec: KernelSpec, path: Callable[[], Path | None]):
        KERNELS[spec.name] = self.spec = spec
        self.path = path
        self.load = functools.cache(self._load_or_reason)

    def _load_or_reason(self) -> str | None:
        spec = self.spec
        if os.environ.get(spec.switch, "1") == "0":
            return f"off ({spec.switch}=0)"
        try:
            load(spec, self.path())
            spec.smoke_test()
        except Unusable as unusable:
            reason = str(unusable)
        else:
            return None
        warnings.warn(f"{spec.kernel} {reason}; {spec.fallback} runs instead", RuntimeWarning,
                      stacklevel=3)  # whoever called status() or supports()
        return reason

    def status(self) -> str:
        """'on' or why XLA's form runs instead, for run.json."""
        return self.load() or "on"
