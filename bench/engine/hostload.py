"""How busy the rest of the machine was while we measured (Linux /proc/stat).

Other processes' CPU use during a timed region, in cores: the machine's busy
CPU-seconds minus this process's own, divided by the wall time. A trial timed
while others used a noticeable share of the cores is flagged `busy`, because
its numbers are not comparable with a quiet run's.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

BUSY_THRESHOLD_CORES = 0.25


def machine_busy_s() -> float | None:
    """Busy CPU-seconds of the whole machine since boot (all cores), None if unknown."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class LoadMeter:
    """Accumulates other processes' CPU use over one or more measured regions."""

    other_s: float = 0.0
    wall_s: float = 0.0
    known: bool = True

    def __enter__(self):
        self._machine, self._own, self._wall = machine_busy_s(), own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        machine = machine_busy_s()
        self.wall_s += time.perf_counter() - self._wall
        if machine is None or self._machine is None:
            self.known = False
            return
        self.other_s += max(0.0, machine - self._machine - (own_cpu_s() - self._own))

    def other_cores(self) -> float | None:
        if not self.known or self.wall_s == 0:
            return None
        return round(self.other_s / self.wall_s, 3)

    def busy(self) -> bool:
        cores = self.other_cores()
        return cores is not None and cores > BUSY_THRESHOLD_CORES
