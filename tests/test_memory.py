"""A trial's memory figures are its own, never the process's maximum over earlier trials."""

from __future__ import annotations

import json
import mmap
import os

import numpy as np
import pytest

from bench.engine import costs
from bench.engine.costs import TrialMemory

MB = 1 << 20
CAN_RESET = os.access("/proc/self/clear_refs", os.W_OK)


class FakeDevice:
    """A device whose memory_stats() returns the scripted dicts in turn."""

    def __init__(self, *stats):
        self.stats = list(stats)

    def memory_stats(self):
        return self.stats.pop(0)


def measure(device=None, allocate_mb: int = 0) -> dict:
    """The figures of a 'trial' that fills, then frees, `allocate_mb` of fresh memory.

    The memory is mapped from the kernel, not malloc'ed: malloc may hand back memory
    that is still resident from an earlier test, which would not raise the peak.
    """
    with TrialMemory(device) as memory:
        fill_and_free(allocate_mb)
    return memory.figures()


def fill_and_free(mb: int) -> None:
    if mb:
        block = mmap.mmap(-1, mb * MB)
        view = np.frombuffer(block, np.uint8)
        view.fill(1)
        del view
        block.close()


@pytest.mark.skipif(not CAN_RESET, reason="needs Linux's /proc/self/clear_refs")
def test_a_small_trial_after_a_big_one_reports_its_own_peak():
    big, small = measure(allocate_mb=200), measure(allocate_mb=1)
    assert big["peak_rss_bytes"] - big["rss_at_start_bytes"] > 150 * MB
    # The process-wide maximum would still be the big trial's peak.
    assert small["peak_rss_bytes"] < big["peak_rss_bytes"] - 150 * MB
    assert small["peak_rss_bytes"] >= small["rss_at_start_bytes"]


def test_figures_are_json_and_complete_on_cpu():
    figures = measure()
    assert json.loads(json.dumps(figures)) == figures
    assert set(figures) == {"peak_rss_bytes", "rss_at_start_bytes", "device_bytes_in_use_at_start",
                            "device_bytes_in_use_at_end", "device_peak_bytes"}
    if CAN_RESET:  # a Python process with numpy loaded is resident for more than 10 MB
        assert 10 * MB < figures["rss_at_start_bytes"] <= figures["peak_rss_bytes"]


def test_a_cpu_device_has_no_device_figures():
    import jax
    figures = measure(jax.devices("cpu")[0])
    assert [figures[k] for k in figures if k.startswith("device")] == [None, None, None]


def test_a_trial_that_raises_the_device_peak_owns_it():
    device = FakeDevice({"bytes_in_use": 10, "peak_bytes_in_use": 100},
                        {"bytes_in_use": 30, "peak_bytes_in_use": 250})
    figures = measure(device)
    assert figures["device_peak_bytes"] == 250
    assert (figures["device_bytes_in_use_at_start"], figures["device_bytes_in_use_at_end"]) == (10, 30)


def test_a_trial_below_an_earlier_device_peak_has_no_peak():
    device = FakeDevice({"bytes_in_use": 10, "peak_bytes_in_use": 900},
                        {"bytes_in_use": 20, "peak_bytes_in_use": 900})
    figures = measure(device)
    assert figures["device_peak_bytes"] is None  # not the earlier trial's 900
    assert figures["device_bytes_in_use_at_end"] == 20


@pytest.mark.parametrize("stats", [None, RuntimeError("no stats on this backend")])
def test_a_device_without_stats_has_no_device_figures(stats):
    class Device:
        def memory_stats(self):
            if isinstance(stats, Exception):
                raise stats
            return stats

    figures = measure(Device())
    assert figures["device_peak_bytes"] is None and figures["device_bytes_in_use_at_start"] is None


def test_without_proc_the_resident_figures_are_none(monkeypatch, tmp_path):
    monkeypatch.setattr(costs, "PROC_SELF", tmp_path / "no-proc")
    figures = measure()
    assert figures["peak_rss_bytes"] is None and figures["rss_at_start_bytes"] is None


def test_without_a_reset_the_process_peak_is_not_passed_off_as_the_trials(monkeypatch, tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "status").write_text("Name:\tpython\nVmHWM:\t  900000 kB\nVmRSS:\t  1000 kB\n")
    (proc / "clear_refs").mkdir()  # writing it fails, as it does without permission
    monkeypatch.setattr(costs, "PROC_SELF", proc)
    figures = measure()
    assert figures["peak_rss_bytes"] is None
    assert figures["rss_at_start_bytes"] == 1000 * 1024


def test_figures_before_the_trial_ends_are_an_error():
    with TrialMemory() as memory, pytest.raises(RuntimeError):
        memory.figures()


@pytest.mark.skipif(not CAN_RESET, reason="needs Linux's /proc/self/clear_refs")
def test_a_failing_trial_still_has_figures():
    with pytest.raises(ZeroDivisionError), TrialMemory() as memory:
        fill_and_free(50)
        1 / 0
    figures = memory.figures()
    assert figures["peak_rss_bytes"] - figures["rss_at_start_bytes"] > 40 * MB
