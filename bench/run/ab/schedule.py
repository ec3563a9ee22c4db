"""When each side runs: alternating pairs (ABBA...) and a pause while the machine is busy.

A fixed order (A then B, every pair) would give one side the machine's warm or cold half
each time (turbo, caches, a neighbour's cron job); flipping the order each pair puts both
sides in both positions equally often (as asv `continuous` and RMIT do).
"""

from __future__ import annotations

import time
from typing import Callable

from bench.engine.hostload import BUSY_THRESHOLD_CORES, machine_busy_s  # plain /proc/stat: no JAX

SIDES = ("base", "head")


def pair_order(index: int) -> tuple[str, str]:
    """The order of the sides in pair `index` (0-based): base first in even pairs."""
    return SIDES if index % 2 == 0 else SIDES[::-1]


def round_order(pairs: int) -> list[str]:
    """Every round of `pairs` pairs, in the order they run: base, head, head, base, ..."""
    return [side for i in range(pairs) for side in pair_order(i)]


def others_cores(sample_s: float = 1.0, read: Callable[[], float | None] = machine_busy_s,
                 sleep: Callable[[float], None] = time.sleep) -> float | None:
    """Cores other processes use, sampled over `sample_s` while this process sleeps
    (so the machine's busy time is all theirs); None where /proc/stat cannot be read."""
    before = read()
    sleep(sample_s)
    after = read()
    if before is None or after is None:
        return None
    return max(0.0, after - before) / sample_s


def wait_until_quiet(max_wait_s: float, measure: Callable[[], float | None] = others_cores,
                     sleep: Callable[[float], None] = time.sleep, step_s: float = 5.0,
                     threshold: float = BUSY_THRESHOLD_CORES) -> float:
    """Waits while other processes use more than `threshold` cores, at most `max_wait_s`
    (then the round runs anyway, and bench marks its records busy). Returns the time waited."""
    waited = 0.0
    while waited < max_wait_s:
        cores = measure()
        if cores is None or cores <= threshold:
            break
        pause = min(step_s, max_wait_s - waited)
        sleep(pause)
        waited += pause
    return waited
