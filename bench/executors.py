"""How trials are dispatched. Serial, in this process, is the one executor today.

An executor takes trial configs and a `run_one(config) -> Record` function and
yields each record as its trial ends, so the caller can store it at once. A
distributed engine fits behind the same shape as long as `run_one` is built
from a top-level function of picklable inputs (`bench.trial.run_trial`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from bench.schema import Record, TrialConfig


class SerialExecutor:
    """Runs trials one after another in this process (the honest way to time them)."""

    name = "serial"

    def map(self, run_one: Callable[[TrialConfig], Record],
            configs: Iterable[TrialConfig]) -> Iterator[Record]:
        for config in configs:
            yield run_one(config)


EXECUTORS = {"serial": SerialExecutor}
