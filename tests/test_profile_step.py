"""The developer's profiling tool (benchmarks/profile_step.py) runs and names real operations."""

from __future__ import annotations

import collections
import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_step.py"


@pytest.mark.slow  # a fresh interpreter that compiles and profiles a step
def test_profile_step_lists_the_step_operations_with_their_times():
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", "dense", "--units", "4",
                          "--batch-size", "8", "--steps", "2", "--rounds", "1", "--top", "5"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert re.match(r"dense: [\d.]+ ms per step .*operations [\d.]+ ms per step", lines[0])
    assert re.match(r"CPU seconds over the [\d.]+ s unprofiled: the process [\d.]+ ", lines[1])
    ops = [line for line in lines[1:] if re.match(r"\s*[\d.]+ ms  \S+", line)]
    assert ops, run.stdout
    # The dense network's forward pass is matrix products: one must appear with its shape.
    assert any("f32[8," in line for line in ops), run.stdout


def test_nested_operations_count_only_their_own_time(monkeypatch):
    """A loop's event encloses its body's events (the fused LSTM's calls): no double count."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # the import appends to it
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
    profile_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_step)
    Event = namedtuple("Event", "name start_ns duration_ns")
    events = [Event("fusion", 120, 5), Event("while.1", 0, 100), Event("ffi_call.1", 10, 30),
              Event("ffi_call.2", 50, 40), Event("ThunkExecutor::Execute", 0, 200)]
    totals = collections.Counter()
    profile_step._add_own_times(events, totals)
    assert totals == {"while.1": 30, "ffi_call.1": 30, "ffi_call.2": 40, "fusion": 5}


def load_script(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # the import appends to it
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
    profile_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_step)
    return profile_step


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux's /proc")
def test_a_thread_that_spins_is_listed_with_its_cpu_time(monkeypatch):
    profile_step = load_script(monkeypatch)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, name="spinner")
    before = profile_step.thread_cpu_seconds()
    spinner.start()
    start = time.perf_counter()
    time.sleep(0.3)
    after = profile_step.thread_cpu_seconds()
    wall = time.perf_counter() - start
    stop.set()
    spinner.join()
    busy = profile_step.busy_threads(before, after, wall)
    # The busiest thread is the spinner (this one sleeps): it holds the GIL, so about the
    # whole wall time. (Python 3.11 does not give the OS thread its name.)
    assert busy, "no thread listed"
    assert float(busy.split(",")[0].split()[-1]) > 0.1, busy
