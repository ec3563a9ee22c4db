"""The peak calibration: measured under the host-load guard, one measurement per node at a
time, and a measurement made on a busy machine used for its run only, never cached.

measure_peak is replaced where its cost is not the point (as conftest's fake_peak does),
so that these tests stay fast and their outcome does not depend on the machine's load.
"""

from __future__ import annotations

import json
import threading

import jax
import pytest

from bench.engine import calibrate
from conftest import FAKE_PEAK

BUSY_PEAK = {**FAKE_PEAK, "peak_flops": 4.1e10, "other_cpu_cores": 1.02, "busy": True}
QUIET_PEAK = {**FAKE_PEAK, "other_cpu_cores": 0.01, "busy": False}


@pytest.fixture
def cpu():
    return jax.devices("cpu")[0]


class Figures(list):
    calls: list


def stored() -> dict:
    return json.loads(calibrate.cache_file().read_text())


# ---------------------------------------------------------------- measured under the load guard


class FakeMeter:
    """A LoadMeter that reports what it is told, and when it was entered and left."""

    def __init__(self, cores, events):
        self.cores, self.events = cores, events

    def __call__(self):
        return self

    def __enter__(self):
        self.events.append("meter on")
        return self

    def __exit__(self, *exc):
        self.events.append("meter off")

    def other_cores(self):
        return self.cores

    def busy(self):
        return self.cores is not None and self.cores > 0.25


@pytest.mark.parametrize("cores, busy", [(1.02, True), (0.05, False), (None, False)])
def test_the_timed_products_run_under_the_load_meter(monkeypatch, cpu, cores, busy):
    events = []
    real_time_rounds = calibrate.time_rounds

    def time_rounds(*args, **kwargs):
        events.append("timed")
        return real_time_rounds(*args, **kwargs)

    monkeypatch.setattr(calibrate, "LoadMeter", FakeMeter(cores, events))
    monkeypatch.setattr(calibrate, "time_rounds", time_rounds)
    result = calibrate.measure_peak(cpu, size=64, repeats=2)
    assert events == ["meter on", "timed", "meter off"]
    assert result["busy"] is busy and result["other_cpu_cores"] == cores
    assert result["peak_flops"] > 0 and result["matrix_size"] == 64


# ---------------------------------------------------------------- a busy measurement


@pytest.fixture
def figures(isolated, monkeypatch) -> Figures:
    """measure_peak replaced: the n-th call returns the n-th figure (the last one when they
    run out); `figures.calls` lists the devices measured."""
    figures = Figures()
    figures.calls = []

    def measure(device, size=None, repeats=5):
        figures.calls.append(device)
        return dict(figures[min(len(figures.calls), len(figures)) - 1])

    monkeypatch.setattr(calibrate, "measure_peak", measure)
    return figures


def test_a_busy_measurement_is_used_but_never_cached(figures, cpu):
    figures += [BUSY_PEAK, QUIET_PEAK]
    first = calibrate.calibration(cpu)
    assert first["peak_flops"] == BUSY_PEAK["peak_flops"] and first["cached"] is False
    assert first["busy"] is True and first["other_cpu_cores"] == 1.02
    warning = first["warning"]
    assert "\n" not in warning
    assert warning.startswith("peak measured while the machine was busy (other processes used "
                              "1.02 cores): 41.0 GFLOP/s is likely too low")
    assert warning.endswith("not cached (the next run measures again)")
    assert not calibrate.cache_file().exists() or calibrate.machine_key(cpu) not in stored()

    second = calibrate.calibration(cpu)  # measured again, quiet this time: cached
    assert len(figures.calls) == 2 and second["cached"] is False and "warning" not in second
    assert stored()[calibrate.machine_key(cpu)]["peak_flops"] == QUIET_PEAK["peak_flops"]
    assert calibrate.calibration(cpu)["cached"] is True and len(figures.calls) == 2


def test_a_busy_recalibration_keeps_the_cached_figure(figures, cpu):
    figures += [QUIET_PEAK, BUSY_PEAK]
    calibrate.calibration(cpu)
    fresh = calibrate.calibration(cpu, use_cache=False)
    assert fresh["busy"] and fresh["peak_flops"] == BUSY_PEAK["peak_flops"]
    assert fresh["warning"].endswith("not cached (the cache keeps its earlier figure)")
    assert stored()[calibrate.machine_key(cpu)]["peak_flops"] == QUIET_PEAK["peak_flops"]


def test_a_busy_warning_without_a_load_figure(cpu):
    warning = calibrate.busy_warning({**BUSY_PEAK, "other_cpu_cores": None})
    assert "other processes used CPU time" in warning


@pytest.mark.slow  # a real (tiny) run through the command line
def test_the_run_says_its_peak_was_measured_busy_and_not_cached(figures, tmp_path, tiny_npz,
                                                                 capsys, monkeypatch):
    from bench.cli import main
    from bench.contract import results
    from bench.read.render.report import render_reports
    monkeypatch.setattr("bench.run.runner.render_reports", lambda dirs: render_reports(dirs, ("md",)))
    figures.append(BUSY_PEAK)
    status = main(["run", "--models", "dense", "--units", "4", "--activations", "relu",
                   "--optimizers", "sgd", "--epochs", "1", "--repeats", "1", "--round-steps",
                   "2", "--data", str(tiny_npz), "--out", "out"])
    assert status == 0
    out = " ".join(capsys.readouterr().out.split())  # the console may wrap the line
    assert "peak measured while the machine was busy" in out and "not cached" in out
    header = results.read_header(tmp_path / "out")
    assert header["calibration"]["busy"] is True and header["calibration"]["cached"] is False
    assert "not cached" in header["calibration"]["warning"]
    (record,) = results.read_results(tmp_path / "out")
    assert record["machine"]["calibration"]["busy"] is True  # each record says so as well
    assert not calibrate.cache_file().exists()


# ---------------------------------------------------------------- one measurement per node


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "recalibrate"])
def test_a_node_measures_once_and_the_others_wait_for_its_figure(figures, cpu, monkeypatch,
                                                                   use_cache):
    """Two processes of one node calibrate at once (threads here: flock keeps them apart the
    same way). The second waits for the first's measurement, then uses what it cached, even
    when it was asked to recalibrate: it is as fresh. Never do two measurements overlap."""
    figures.append(QUIET_PEAK)
    measuring, second_waits = threading.Event(), threading.Event()
    overlap, results = [], {}
    real_measure = calibrate.measure_peak

    def measure(device, size=None, repeats=5):
        if measuring.is_set():  # the old way: no lock, both measure at once
            overlap.append(threading.current_thread().name)
            second_waits.set()
        measuring.set()
        second_waits.wait(timeout=30)  # until the second process stands at the lock (or measures)
        try:
            return real_measure(device)
        finally:
            measuring.clear()

    real_flock = calibrate.fcntl.flock

    def flock(fd, operation):
        if threading.current_thread().name == "second":
            second_waits.set()
        return real_flock(fd, operation)

    monkeypatch.setattr(calibrate, "measure_peak", measure)
    monkeypatch.setattr(calibrate.fcntl, "flock", flock)

    def run(name):
        results[name] = calibrate.calibration(cpu, use_cache=use_cache)

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert measuring.wait(timeout=30)
    second = threading.Thread(target=run, args=("second",), name="second")
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)
    assert overlap == [], "two measurements ran at once"
    assert len(figures.calls) == 1
    assert results["first"]["cached"] is False and results["second"]["cached"] is True
    assert results["second"]["peak_flops"] == results["first"]["peak_flops"]


def test_measuring_goes_ahead_where_the_node_lock_cannot_be_made(figures, cpu, tmp_path,
                                                                 isolated):
    (tmp_path / "not-a-dir").write_text("x")
    isolated.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))
    figures.append(QUIET_PEAK)
    result = calibrate.calibration(cpu)
    assert result["peak_flops"] == QUIET_PEAK["peak_flops"]
    assert "could not be written" in result["warning"]
