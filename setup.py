"""Builds the optional CPU kernels; everything else is in pyproject.toml.

models/native/lstm_cpu.cc (the fused LSTM loop), cells_cpu.cc (the GRU's and the simple
cell's loops) and conv_cpu.cc (the fused convolution block) are each compiled into a library against the XLA FFI headers that
jaxlib ships and linked against OpenBLAS from scipy-openblas32 (both build requirements),
for the CPU of the machine that installs it (-march=native), or for the target that
BENCH_CPU_TARGET names (e.g. x86-64-v3 for AVX2, x86-64-v4 for AVX-512). Beside each library the build
writes its build record, e.g. _lstm_cpu.json: the instruction-set features the compiler
targeted (named as Linux's /proc/cpuinfo names them), the compiler, the flags, the jaxlib
and OpenBLAS built against and the library's SHA-256. models/native_kernels.py loads a
kernel only where its record matches the running machine. A failed build is only a
warning: bench then runs XLA's form of that computation.
"""

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

# The compiler's feature macros and the /proc/cpuinfo flag of each (x86-64, then aarch64).
# Only features a compiler may use for plain C++ are listed (the kernels have no intrinsics):
# a CPU then needs all of them, and none that could only come from an intrinsic.
CPU_FEATURE_MACROS = {
    "__SSE__": "sse", "__SSE2__": "sse2", "__SSE3__": "pni", "__SSSE3__": "ssse3",
    "__SSE4_1__": "sse4_1", "__SSE4_2__": "sse4_2", "__SSE4A__": "sse4a",
    "__POPCNT__": "popcnt", "__LZCNT__": "abm", "__BMI__": "bmi1", "__BMI2__": "bmi2",
    "__MOVBE__": "movbe", "__FMA__": "fma", "__FMA4__": "fma4", "__XOP__": "xop",
    "__F16C__": "f16c", "__AVX__": "avx", "__AVX2__": "avx2", "__AVXVNNI__": "avx_vnni",
    "__AVX512F__": "avx512f", "__AVX512CD__": "avx512cd", "__AVX512DQ__": "avx512dq",
    "__AVX512BW__": "avx512bw", "__AVX512VL__": "avx512vl", "__AVX512IFMA__": "avx512ifma",
    "__AVX512VBMI__": "avx512vbmi", "__AVX512VBMI2__": "avx512_vbmi2",
    "__AVX512VNNI__": "avx512_vnni", "__AVX512BITALG__": "avx512_bitalg",
    "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq", "__AVX512BF16__": "avx512_bf16",
    "__AVX512FP16__": "avx512_fp16", "__GFNI__": "gfni",
    "__ARM_FEATURE_SVE": "sve", "__ARM_FEATURE_SVE2": "sve2",
    "__ARM_FEATURE_SVE_BF16": "svebf16", "__ARM_FEATURE_SVE_MATMUL_INT8": "svei8mm",
    "__ARM_FEATURE_FP16_SCALAR_ARITHMETIC": "fphp",
    "__ARM_FEATURE_FP16_VECTOR_ARITHMETIC": "asimdhp", "__ARM_FEATURE_DOTPROD": "asimddp",
    "__ARM_FEATURE_BF16_VECTOR_ARITHMETIC": "bf16", "__ARM_FEATURE_MATMUL_INT8": "i8mm",
    "__ARM_FEATURE_QRDMX": "asimdrdm", "__ARM_FEATURE_FRINT": "frint",
    "__ARM_FEATURE_COMPLEX": "fcma", "__ARM_FEATURE_JCVT": "jscvt",
    "__ARM_FEATURE_ATOMICS": "atomics", "__ARM_FEATURE_RCPC": "lrcpc",
    "__ARM_FEATURE_CRC32": "crc32",
}


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _include_dir(package: str) -> str | None:
    folder = _package_dir(package)
    return None if folder is None else str(folder / "include")


def _run(command: list[str]) -> str:
    """The command's output; a CompileError (a skipped kernel) when it cannot run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        raise CompileError(f"cannot run {command[0]}: {error}") from error
    if done.returncode != 0:
        raise CompileError(f"{' '.join(command)} exited with status {done.returncode}: "
                           f"{done.stderr.strip()}")
    return done.stdout


def target_features(compiler: list[str], flags: list[str]) -> list[str]:
    """The CPU features (as /proc/cpuinfo names them) that `flags` let `compiler` use."""
    macros = _run([*compiler, *flags, "-dM", "-E", "-x", "c++", os.devnull])
    defined = {line.split()[1] for line in macros.splitlines() if line.startswith("#define ")}
    return sorted({flag for macro, flag in CPU_FEATURE_MACROS.items() if macro in defined})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record_path(library: Path) -> Path:
    """The build record beside `library`: _lstm_cpu.json for _lstm_cpu.cpython-....so."""
    return library.with_name(library.name.split(".")[0] + ".json")


def _openblas_runtime_dirs() -> list[str]:
    """Where the installed kernel finds scipy-openblas32's library at run time.

    The build requirement may sit in a temporary build environment, so the paths point at
    the installed package: beside an installed bench, or in the environment installed to
    (an editable install keeps the kernel in the source tree).
    """
    origin = "@loader_path" if sys.platform == "darwin" else "$ORIGIN"
    installed = Path(sysconfig.get_path("purelib")) / "scipy_openblas32" / "lib"
    return [f"{origin}/../../scipy_openblas32/lib", str(installed)]


class BuildWithHeaders(build_ext):
    """Adds the build requirements' headers and OpenBLAS, found only once they exist,
    and writes each extension's build record."""

    def finalize_options(self):
        super().finalize_options()
        # -march=native: a library built earlier may be for another CPU (or target) though its sources
        # are unchanged, so it is always rebuilt (and its record rewritten with it).
        self.force = True

    def build_extensions(self):
        headers = {name: _include_dir(name) for name in ("jaxlib", "scipy_openblas32")}
        if missing := [name for name, folder in headers.items() if folder is None]:
            # Only with --no-build-isolation and the requirements absent: skip, as for a
            # failed compile.
            print(f"warning: CPU kernels not built: {', '.join(missing)} not installed")
            return
        openblas = _package_dir("scipy_openblas32") / "lib"
        for extension in self.extensions:
            extension.include_dirs.extend(headers.values())
            # Linked by name, not left to whoever loaded OpenBLAS first: the library needs
            # libscipy_openblas and finds it by its run paths.
            extension.library_dirs.append(str(openblas))
            extension.libraries.append("scipy_openblas")
            extension.extra_link_args.extend(f"-Wl,-rpath,{d}" for d in _openblas_runtime_dirs())
            if sys.platform.startswith("linux"):
                extension.extra_link_args.append("-Wl,--no-undefined")  # every symbol linked
        super().build_extensions()

    def build_extension(self, ext):
        # Asked first, so that a compiler that cannot say leaves no library without a record.
        features = target_features(self._cxx(), ext.extra_compile_args)
        super().build_extension(ext)
        library = self._built_library(ext)
        record = self._record(ext, library, features)
        _record_path(library).write_text(json.dumps(record, indent=1) + "\n")

    def copy_extensions_to_source(self):
        """Editable installs: the build record goes to the source tree with the library."""
        super().copy_extensions_to_source()
        for ext in self.extensions:
            built = _record_path(self._built_library(ext))
            if built.exists():
                in_source = _record_path(Path(self.get_ext_fullpath(ext.name)))
                self.copy_file(str(built), str(in_source))

    def copy_file(self, infile, outfile, *args, **kwargs):
        """Replaces `outfile` instead of rewriting it: a running bench may have it mapped."""
        temporary = f"{outfile}.{os.getpid()}.tmp"
        copied = super().copy_file(infile, temporary, *args, **kwargs)[1]
        os.replace(temporary, outfile)
        return outfile, copied

    def get_outputs(self):
        if self.inplace:
            return super().get_outputs()
        records = [str(_record_path(self._built_library(ext))) for ext in self.extensions]
        return [*super().get_outputs(), *records]

    def _built_library(self, ext) -> Path:
        """Where `ext` is built: the build folder (setuptools copies it on for --inplace)."""
        return Path(self.build_lib, self.get_ext_filename(self.get_ext_fullname(ext.name)))

    def _cxx(self) -> list[str]:
        """The command that compiles C++ (setuptools' compiler_so_cxx, else compiler_so)."""
        return list(getattr(self.compiler, "compiler_so_cxx", None) or self.compiler.compiler_so)

    def _record(self, ext, library: Path, features: list[str]) -> dict:
        """What the library was built for, read by models/native_kernels.py before loading it."""
        compiler = self._cxx()
        return {
            "library": library.name,
            "library_sha256": _sha256(library),
            "machine": platform.machine(),
            "target_features": features,
            "compiler": compiler[0],
            "compiler_version": _run([compiler[0], "--version"]).partition("\n")[0],
            "cpu_target": CPU_TARGET,
            "flags": ext.extra_compile_args,
            "jaxlib": importlib.metadata.version("jaxlib"),
            "scipy_openblas32": importlib.metadata.version("scipy-openblas32"),
        }


# Full-width AVX-512 loops where the CPU has them: they shorten the LSTM step
# (docs/measurements.md, "Design measurements cited from the code"); an x86-only flag.
_X86_ONLY = ["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else []
# -fno-trapping-math lets GCC vectorise the elementwise loops' selects; the kernels never read
# floating-point exception flags, and NaN still propagates (cpu_kernels.h).
# The CPU the kernels are compiled for: this one by default; BENCH_CPU_TARGET=x86-64-v3 builds
# for any AVX2 machine (and lets an AVX-512 machine test that build), x86-64-v4 for AVX-512.
CPU_TARGET = os.environ.get("BENCH_CPU_TARGET", "").strip() or "native"
_FLAGS = ["-std=c++17", "-O3", f"-march={CPU_TARGET}", "-fno-math-errno", "-fno-trapping-math",
          "-fopenmp-simd", *_X86_ONLY]


def cpu_kernel(name: str) -> Extension:
    """models/native/<name>.cc as the optional library models.native._<name>."""
    return Extension(f"models.native._{name}", sources=[f"models/native/{name}.cc"],
                     depends=["models/native/cpu_kernels.h"], language="c++",
                     extra_compile_args=list(_FLAGS), optional=True)


setup(ext_modules=[cpu_kernel("lstm_cpu"), cpu_kernel("cells_cpu"), cpu_kernel("conv_cpu")],
      cmdclass={"build_ext": BuildWithHeaders})
