"""Fixtures shared by the run-level tests: tiny .npz data sets and an isolated environment.

Nothing here touches the network or the user's home: calibration caches under a
temporary XDG_CACHE_HOME, TFDS looks in an empty temporary folder, and run
directories are created below the test's own temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Any Ray the tests start stays on the loopback interface (Ray reads this when imported; on
# Linux it otherwise binds and dials the machine's outward address) and reports nothing.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The terminal summary's width is the terminal's, else $COLUMNS, else 160 columns for a log;
# pytest-xdist's workers run with COLUMNS=80, so the tests that read that summary would see it
# wrapped. Tests of narrow terminals set COLUMNS themselves.
os.environ.pop("COLUMNS", None)

# Folders for the whole session, made once by the process that starts pytest and inherited
# by its pytest-xdist workers (tox runs `pytest -n logical`), which start after this module
# is imported; removed when that process ends (pytest_unconfigure).
#  - Matplotlib builds its font cache on first import, under XDG_CACHE_HOME, which the
#    isolated tests point into their own folder: a folder of the session's keeps that out of
#    the folders whose contents the tests check, whichever test imports matplotlib first.
#  - One persistent compilation cache for the in-process compiles of every worker: many
#    tests train the same tiny configurations, and compiling them again is most of their
#    time (test_pruning and test_validation: 54 s -> 41 s).
_SESSION_FOLDERS = {"MPLCONFIGDIR": "bench-tests-matplotlib-",
                    "BENCH_TESTS_COMPILE_CACHE": "bench-tests-xla-cache-"}
_made_here = [name for name in _SESSION_FOLDERS if name not in os.environ]
for _name in _made_here:
    os.environ[_name] = tempfile.mkdtemp(prefix=_SESSION_FOLDERS[_name])


def pytest_sessionfinish(session, exitstatus):
    """tox runs the Ray tests in a pytest of their own (`-m ray`); when its arguments select
    none of them (`tox -e py -- tests/test_schema.py`), that run has nothing to do, not failed."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and session.config.option.markexpr == "ray":
        session.exitstatus = pytest.ExitCode.OK


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the process that made them, not a worker
        for name in _made_here:
            shutil.rmtree(os.environ[name], ignore_errors=True)


# What bench.engine.calibrate.measure_peak returns, for tests that need a calibration but not its cost.
FAKE_PEAK = {"peak_flops": 1.0e11, "matrix_size": 2048, "seconds": 0.17,
             "measured": "2025-01-01T00:00:00+0000"}


def write_npz(path: Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> Path:
    """An MNIST-shaped .npz (uint8 images, integer labels) of random digits."""
    rng = np.random.default_rng(seed)
    np.savez(path,
             x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, n_train),
             x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, n_test))
    return path


@contextlib.contextmanager
def isolated_env(root: Path):
    """cwd, XDG_CACHE_HOME and TFDS_DATA_DIR inside `root` for the duration."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.setenv("TFDS_DATA_DIR", str(root / "tfds"))
        mp.chdir(root)
        yield mp


@pytest.fixture
def isolated(tmp_path):
    """The test's tmp_path as cwd, with its own calibration cache and TFDS folder."""
    with isolated_env(tmp_path) as mp:
        yield mp


# The session's compilation cache (above) is configured once JAX is imported, so the tests
# of the reading side still run without it. A test that sets its own cache
# (--compilation-cache) takes over from there. Subprocesses (bench run) compile as users'
# runs do, except the Ray tests' cluster and runs, which share a cache of their own (test_ray.py).
_compile_cache_on = False


def pytest_runtest_setup(item):
    global _compile_cache_on
    if not _compile_cache_on and "jax" in sys.modules:
        import jax
        jax.config.update("jax_compilation_cache_dir", os.environ["BENCH_TESTS_COMPILE_CACHE"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        _compile_cache_on = True


@pytest.fixture
def blas_threads():
    """Sets OpenBLAS's thread count for the test, restored after: the CPU kernels spread their
    tasks (members, row slices, tiles) over that many threads (one: one after another). The
    test first checks that its kernel runs (its file's kernel_on())."""
    from models import native_kernels

    try:
        native_kernels.cap_blas_threads()  # as loading a kernel does: what is restored is capped
        openblas = native_kernels.openblas()
    except Exception as error:  # noqa: BLE001  no scipy-openblas32: no kernel runs either
        pytest.skip(f"OpenBLAS cannot be loaded: {error}")
    before = openblas.scipy_openblas_get_num_threads()
    yield openblas.scipy_openblas_set_num_threads
    openblas.scipy_openblas_set_num_threads(before)


def _signal_state() -> tuple:
    """How this process treats SIGINT and SIGTERM: their handlers and whether they are blocked."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return tuple((s, signal.getsignal(s), s in blocked) for s in (signal.SIGINT, signal.SIGTERM))


@pytest.fixture(autouse=True)
def signals_left_as_found(request):
    """Fails the test that leaves SIGINT or SIGTERM ignored, blocked or re-handled (and puts
    them back), rather than a later test that needs Ctrl-C to reach a child it starts:
    a child inherits an ignored or blocked signal (issue #20)."""
    before = _signal_state()
    yield
    after = _signal_state()
    if after != before:
        for sig, handler, was_blocked in before:
            signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK if not was_blocked else signal.SIG_BLOCK, [sig])
        pytest.fail(f"{request.node.nodeid} left the signal state changed: {before} -> {after}")


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    return write_npz(tmp_path / "tiny.npz")


@pytest.fixture
def fake_peak(monkeypatch) -> list:
    """Replaces the matmul calibration with FAKE_PEAK; the list records each measured device."""
    calls = []

    def measure(device, size=None, repeats=5):
        calls.append(device)
        return dict(FAKE_PEAK)

    monkeypatch.setattr("bench.engine.calibrate.measure_peak", measure)
    return calls


def quick_first(cases, ids=None) -> list:
    """Parameters for @pytest.mark.parametrize of which only the first case runs in the quick
    loop (`pytest -m "not slow"`); the others, the same check over more entries of a table,
    are marked slow and run in the full suite."""
    cases = [case if isinstance(case, tuple) else (case,) for case in cases]
    ids = list(ids) if ids is not None else [None] * len(cases)
    return [pytest.param(*case, id=id_, marks=[pytest.mark.slow] if i else [])
            for i, (case, id_) in enumerate(zip(cases, ids, strict=True))]
