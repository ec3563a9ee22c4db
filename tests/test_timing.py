"""Timing, host load and calibration with injected clocks and counters: no sleeping.

A fake clock is an iterator of times; a function that reads it more often than
expected raises StopIteration, so the number of clock reads is checked too.
"""

from __future__ import annotations

import io
import json
import os
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.engine import calibrate, costs, hostload
from bench.engine.timing import compile_ahead, summarize, time_rounds, time_to_accuracy, timed_call


def fake_clock(*times: float):
    """A clock returning `times` in order; one more read raises StopIteration."""
    return iter(times).__next__


class Counter:
    """A round that counts its calls and notes how many clock reads preceded each."""

    def __init__(self, reads):
        self.calls, self.reads_before, self._reads = 0, [], reads

    def __call__(self):
        self.calls += 1
        self.reads_before.append(len(self._reads))
        return jnp.zeros(())


def test_compile_ahead_times_the_compilation():
    compiled, seconds = compile_ahead(lambda x: x * 2, jnp.arange(3.0), clock=fake_clock(10.0, 12.5))
    assert seconds == 2.5
    np.testing.assert_array_equal(compiled(jnp.arange(3.0)), [0.0, 2.0, 4.0])


def test_timed_call_returns_results_and_seconds():
    out, seconds = timed_call(lambda a, b: a + b, 2, 3, clock=fake_clock(1.0, 1.25))
    assert (out, seconds) == (5, 0.25)


@pytest.mark.parametrize("repeats, burn_in", [(3, 2), (1, 0), (2, 1)])
def test_time_rounds_times_only_the_rounds_after_burn_in(repeats, burn_in):
    starts = [10.0 * i for i in range(repeats)]
    durations = [0.5 + i for i in range(repeats)]
    times = [t for start, d in zip(starts, durations) for t in (start, start + d)]
    reads = []
    clock = iter(times).__next__

    def counting_clock():
        reads.append(None)
        return clock()

    run_round = Counter(reads)
    seconds = time_rounds(run_round, repeats=repeats, burn_in=burn_in, clock=counting_clock)
    assert seconds == pytest.approx(durations)
    assert run_round.calls == burn_in + repeats
    assert run_round.reads_before[:burn_in] == [0] * burn_in  # burn-in: before any clock read
    assert run_round.reads_before[burn_in:] == [2 * i + 1 for i in range(repeats)]
    assert len(reads) == 2 * repeats


@pytest.mark.parametrize("samples", [
    [1.0],
    [2.0, 1.0],
    [3.0, 1.0, 2.0],
    [5.0, 1.0, 4.0, 2.0, 3.0, 10.0],
    list(np.random.default_rng(0).lognormal(size=17)),
])
def test_summarize_agrees_with_numpy(samples):
    stats = summarize(samples)
    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
    assert stats["n"] == len(samples)
    assert stats["min"] == min(samples)
    assert stats["median"] == pytest.approx(q50)
    assert stats["iqr"] == pytest.approx(q75 - q25)
    assert stats["mean"] == pytest.approx(np.mean(samples))
    assert stats["std"] == pytest.approx(np.std(samples, ddof=1) if len(samples) > 1 else 0.0)


def test_summarize_of_nothing():
    assert summarize([]) == {"n": 0, "min": None, "median": None, "iqr": None, "mean": None,
                             "std": None}


HISTORY = [
    {"epoch": 1, "epoch_s": 1.0, "test_accuracy": 0.5},
    {"epoch": 2, "epoch_s": 2.0, "test_accuracy": None},  # e.g. a non-finite evaluation
    {"epoch": 3, "epoch_s": 3.0, "test_accuracy": 0.8},
    {"epoch": 4, "epoch_s": 4.0, "test_accuracy": 0.95},
]


@pytest.mark.parametrize("target, expected", [
    (0.3, {"epoch": 1, "train_s": 1.0, "with_compile_s": 11.0}),
    (0.5, {"epoch": 1, "train_s": 1.0, "with_compile_s": 11.0}),  # reaching it counts
    (0.6, {"epoch": 3, "train_s": 6.0, "with_compile_s": 16.0}),
    (0.9, {"epoch": 4, "train_s": 10.0, "with_compile_s": 20.0}),
    (0.99, None),
])
def test_time_to_accuracy_is_cumulative_training_time_to_the_first_hit(target, expected):
    assert time_to_accuracy(HISTORY, [target], compile_s=10.0) == {f"{target:g}": expected}


def test_time_to_accuracy_keys_every_target():
    out = time_to_accuracy(HISTORY, (0.97, 0.98, 0.5), compile_s=0.0)
    assert list(out) == ["0.97", "0.98", "0.5"]
    assert out["0.97"] is None and out["0.5"]["with_compile_s"] == 1.0
    assert time_to_accuracy([], (0.5,), 1.0) == {"0.5": None}


@pytest.mark.parametrize("machine, own, wall, other_cores, busy", [
    ((100.0, 101.0), (5.0, 5.2), (0.0, 2.0), 0.4, True),      # others used 0.8 s in 2 s
    ((100.0, 100.6), (5.0, 5.2), (0.0, 2.0), 0.2, False),     # 0.4 s in 2 s: below 0.25
    ((100.0, 100.7), (5.0, 5.2), (0.0, 2.0), 0.25, False),    # at the threshold: not busy
    ((100.0, 100.1), (5.0, 5.9), (0.0, 1.0), 0.0, False),     # never negative
    ((None, 101.0), (5.0, 5.2), (0.0, 2.0), None, False),     # /proc/stat unreadable
])
def test_load_meter_flags_other_processes_cpu_use(monkeypatch, machine, own, wall, other_cores, busy):
    monkeypatch.setattr(hostload, "machine_busy_s", fake_clock(*machine))
    monkeypatch.setattr(hostload, "own_cpu_s", fake_clock(*own))
    monkeypatch.setattr(hostload, "time", types.SimpleNamespace(perf_counter=fake_clock(*wall)))
    with hostload.LoadMeter() as meter:
        pass
    assert meter.wall_s == wall[1] - wall[0]
    assert meter.other_cores() == other_cores
    assert meter.busy() is busy


def test_load_meter_accumulates_regions(monkeypatch):
    monkeypatch.setattr(hostload, "machine_busy_s", fake_clock(0.0, 0.1, 10.0, 11.0))
    monkeypatch.setattr(hostload, "own_cpu_s", fake_clock(0.0, 0.1, 1.0, 1.0))
    monkeypatch.setattr(hostload, "time", types.SimpleNamespace(
        perf_counter=fake_clock(0.0, 1.0, 5.0, 6.0)))
    meter = hostload.LoadMeter()
    with meter:
        pass
    assert not meter.busy()  # first region: only our own CPU time
    with meter:
        pass
    assert (meter.wall_s, meter.other_s) == (2.0, 1.0)
    assert meter.other_cores() == 0.5 and meter.busy()


@pytest.mark.parametrize("line, busy_ticks", [
    # user nice system idle iowait irq softirq steal guest guest_nice: idle and iowait are
    # not busy; guest time is already inside user and nice
    ("cpu  100 20 30 400 50 6 7 8 9 10", 100 + 20 + 30 + 6 + 7 + 8),
    ("cpu  100 20 30 400", 100 + 20 + 30),  # an old kernel's four fields
])
def test_machine_busy_is_the_non_idle_time_of_proc_stat(monkeypatch, line, busy_ticks):
    read = []
    monkeypatch.setattr(hostload, "open", lambda path: read.append(path) or io.StringIO(
        line + "\ncpu0 1 1 1 1\n"), raising=False)
    assert hostload.machine_busy_s() == pytest.approx(busy_ticks / os.sysconf("SC_CLK_TCK"))
    assert read == ["/proc/stat"]


def _missing(path):
    raise FileNotFoundError(2, "No such file or directory", path)


@pytest.mark.parametrize("opener", [_missing, lambda path: io.StringIO("cpu  one two\n")],
                         ids=["missing", "garbled"])
def test_machine_busy_is_none_without_a_readable_proc_stat(monkeypatch, opener):
    monkeypatch.setattr(hostload, "open", opener, raising=False)
    assert hostload.machine_busy_s() is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_machine_busy_reads_this_machine():
    def busy_s():  # the same sum, written out independently
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(v) for v in open("/proc/stat").readline().split()[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    before = busy_s()
    busy = hostload.machine_busy_s()
    assert before <= busy <= busy_s() and busy > 0


def test_own_cpu_time_counts_this_process():
    start, own = time.process_time(), hostload.own_cpu_s()
    time.sleep(0.2)  # no CPU time
    while time.process_time() - start < 0.2:  # 0.2 s of CPU time
        pass
    used, own_used = time.process_time() - start, hostload.own_cpu_s() - own
    assert own_used == pytest.approx(used, abs=0.05)


@pytest.fixture
def counted_peak(monkeypatch, tmp_path):
    """measure_peak replaced by a counter; the cache under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calls = []

    def measure(device, size=None, repeats=5):
        calls.append(device)
        return {"peak_flops": 1e11 * len(calls), "matrix_size": 2048, "seconds": 0.1, "measured": "t"}

    monkeypatch.setattr(calibrate, "measure_peak", measure)
    return calls


def test_calibration_is_cached_per_machine(counted_peak, tmp_path):
    device = jax.devices()[0]
    first = calibrate.calibration(device)
    assert counted_peak == [device]
    assert first["cached"] is False and first["peak_flops"] == 1e11
    assert first["machine_key"] == calibrate.machine_key(device)

    path = tmp_path / "xdg" / "bench" / "calibration.json"
    assert calibrate.cache_file() == path
    assert json.loads(path.read_text())[first["machine_key"]]["peak_flops"] == 1e11

    second = calibrate.calibration(device)
    assert len(counted_peak) == 1  # not measured again
    assert second == {**first, "cached": True}


def test_recalibration_and_another_machine_measure_again(counted_peak, monkeypatch):
    device = jax.devices()[0]
    here = calibrate.machine_key(device)
    calibrate.calibration(device)
    fresh = calibrate.calibration(device, use_cache=False)
    assert len(counted_peak) == 2 and fresh["cached"] is False and fresh["peak_flops"] == 2e11
    assert calibrate.calibration(device)["peak_flops"] == 2e11  # the new figure was cached

    monkeypatch.setattr(calibrate, "machine_key", lambda d: "another|machine")
    other = calibrate.calibration(device)
    assert len(counted_peak) == 3 and other["machine_key"] == "another|machine"
    assert set(json.loads(calibrate.cache_file().read_text())) == {here, "another|machine"}


def test_machine_key_names_what_changes_the_peak():
    device = jax.devices()[0]
    facts = calibrate.device_facts(device)
    parts = calibrate.machine_key(device).split("|")
    assert parts[0] == device.platform
    assert str(facts["usable_cpu_count"]) in parts and facts["host_cpu"] in parts
    assert parts[-1] == calibrate.package_versions()["jaxlib"]


def test_an_unreadable_cache_is_measured_again(counted_peak, tmp_path):
    path = tmp_path / "xdg" / "bench" / "calibration.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert calibrate.calibration(jax.devices()[0])["cached"] is False
    assert len(counted_peak) == 1


def test_flops_counts_a_matrix_product():
    a = jnp.ones((4, 8), jnp.float32)
    b = jnp.ones((8, 3), jnp.float32)
    assert costs.flops(jax.jit(lambda x, y: x @ y).lower(a, b)) == 2 * 4 * 8 * 3


def test_flops_is_none_without_a_cost_model():
    class NoCostModel:
        def cost_analysis(self):
            raise NotImplementedError

    assert costs.flops(NoCostModel()) is None
    assert costs.flops(types.SimpleNamespace(cost_analysis=lambda: [{}])) is None


def test_program_memory_reports_buffer_sizes():
    compiled = jax.jit(lambda x: x + 1).lower(jnp.ones((16,), jnp.float32)).compile()
    memory = costs.program_memory(compiled)
    assert memory["argument_size_in_bytes"] == 64 and memory["output_size_in_bytes"] == 64
