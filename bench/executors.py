"""How work units are dispatched. Serial, in this process, is the one executor today.

An executor takes work units (bench.groups.Unit: a population, or one trial) and a
`run_one(unit) -> list[Record]` function, and yields each unit's records as it ends,
so the caller can store them at once. A distributed engine fits behind the same
shape as long as `run_one` is built from a top-level function of picklable inputs
(`bench.population.run_population`, `bench.trial.run_trial`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from bench.groups import Unit
from bench.schema import Record


class SerialExecutor:
    """Runs units one after another in this process (the honest way to time them)."""

    name = "serial"

    def map(self, run_one: Callable[[Unit], list[Record]],
            units: Iterable[Unit]) -> Iterator[list[Record]]:
        for unit in units:
            yield run_one(unit)


EXECUTORS = {"serial": SerialExecutor}
