"""Builds the optional fused LSTM kernel for CPU; everything else is in pyproject.toml.

models/native/lstm_cpu.cc is compiled against the XLA FFI headers that jaxlib ships and
OpenBLAS' headers from scipy-openblas32 (both build requirements), for the CPU of the
machine that installs it (-march=native). A failed build is only a warning: bench then
runs XLA's loop (models/fused_lstm.py).
"""

import importlib.util
import platform
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _include_dir(package: str) -> str | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))) / "include")


class BuildWithHeaders(build_ext):
    """Adds the include folders of the build requirements, found only once they exist."""

    def build_extensions(self):
        headers = {name: _include_dir(name) for name in ("jaxlib", "scipy_openblas32")}
        if missing := [name for name, folder in headers.items() if folder is None]:
            # Only with --no-build-isolation and the requirements absent: skip, as for a
            # failed compile.
            print(f"warning: fused LSTM kernel not built: {', '.join(missing)} not installed")
            return
        for extension in self.extensions:
            extension.include_dirs.extend(headers.values())
        super().build_extensions()


# Full-width AVX-512 loops where the CPU has them: 5% off the LSTM 128 step (11.8 against
# 12.5 ms, `python benchmarks/profile_step.py --model recurrent`); an x86-only flag.
_X86_ONLY = ["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else []

FUSED_LSTM = Extension(
    "models.native._lstm_cpu",
    sources=["models/native/lstm_cpu.cc"],
    language="c++",
    # -fno-trapping-math lets GCC vectorise the elementwise loops' selects; the kernel never
    # reads floating-point exception flags, and NaN still propagates (lstm_cpu.cc).
    extra_compile_args=["-std=c++17", "-O3", "-march=native", "-fno-math-errno",
                        "-fno-trapping-math", "-fopenmp-simd", *_X86_ONLY],
    # OpenBLAS' symbols come from scipy_openblas32, which models/fused_lstm.py imports first.
    optional=True,
)

setup(ext_modules=[FUSED_LSTM], cmdclass={"build_ext": BuildWithHeaders})
