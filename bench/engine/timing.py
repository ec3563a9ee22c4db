"""Ahead-of-time compilation and synchronised wall-clock measurement.

The protocol (README, "Timing protocol"): compile ahead of time and report it on
its own; train the epochs (each timed, the first reported on its own); then a
burn-in round and `repeats` timed rounds of a fixed number of steps, each ended
by synchronisation. The clock is injectable (any zero-argument callable
returning seconds), so this module is tested without sleeping. Every timed call
ends with `jax.block_until_ready`: JAX dispatches asynchronously, and a clock
read before the device has finished measures only the dispatch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax

Clock = Callable[[], float]


class CacheHits:
    """Counts persistent-compilation-cache hits while active (a JAX monitoring listener)."""

    EVENT = "/jax/compilation_cache/cache_hits"

    def __init__(self):
        self.hits = 0

    def _listen(self, event: str, **_):
        if event == self.EVENT:
            self.hits += 1

    def __enter__(self):
        jax.monitoring.register_event_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_listener(self._listen)


def compile_ahead(fn: Callable, *args, donate_argnums=(), clock: Clock = time.perf_counter):
    """jit, lower and compile `fn` for `args`; returns (compiled, seconds)."""
    start = clock()
    compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
    return compiled, clock() - start


def timed_call(fn: Callable, *args, clock: Clock = time.perf_counter) -> tuple[Any, float]:
    """Calls fn(*args), waits for its results, and returns (results, seconds)."""
    start = clock()
    out = jax.block_until_ready(fn(*args))
    return out, clock() - start


def time_rounds(run_round: Callable[[], Any], *, repeats: int, burn_in: int,
                clock: Clock = time.perf_counter) -> list[float]:
    """Runs `burn_in` untimed rounds, then returns the seconds of `repeats` timed ones."""
    for _ in range(burn_in):
        jax.block_until_ready(run_round())
    return [timed_call(run_round, clock=clock)[1] for _ in range(repeats)]


def summarize(samples: list[float]) -> dict:
    """min, median, interquartile range, mean, standard deviation and n of `samples`."""
    values = sorted(samples)
    n = len(values)
    if n == 0:
        return {"n": 0, "min": None, "median": None, "iqr": None, "mean": None, "std": None}
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"n": n, "min": values[0], "median": _quantile(values, 0.5),
            "iqr": _quantile(values, 0.75) - _quantile(values, 0.25), "mean": mean, "std": std}


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (numpy's default method)."""
    pos = q * (len(values) - 1)
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def time_to_accuracy(history: list[dict], targets, compile_s: float) -> dict:
    """For each target: training seconds (and with compilation) when test accuracy first reached it.

    Training seconds are the cumulative epoch times up to and including that
    epoch; evaluation is excluded. Targets never reached map to None.
    """
    out = {}
    for target in targets:
        elapsed, hit = 0.0, None
        for entry in history:
            elapsed += entry["epoch_s"]
            if entry.get("test_accuracy") is not None and entry["test_accuracy"] >= target:
                hit = {"epoch": entry["epoch"], "train_s": round(elapsed, 4),
                       "with_compile_s": round(elapsed + compile_s, 4)}
                break
        out[f"{target:g}"] = hit
    return out
