"""A work unit: trials trained together (a population), or one trial alone; with pruning,
a halving group made of such parts.

bench/run/groups.py decides which trials form a unit; the engine trains a unit of any
size; both meet here, in plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.contract.schema import TrialConfig


@dataclass(frozen=True)
class Unit:
    """Trials trained together (a population), or one trial trained alone (`alone`).

    With pruning (--prune), a unit is a whole halving group, so that a rung's decision
    needs nothing from outside the unit: `parts` are then the populations or trials alone
    that its members train in, epoch by epoch in turn (`members`: theirs, in order), and
    `alone` says that every part is a trial alone."""

    group: str
    members: tuple[TrialConfig, ...]
    alone: bool = False
    parts: tuple[Unit, ...] = ()

    @property
    def programs(self) -> tuple[Unit, ...]:
        """The units that each compile one program: the parts, or the unit itself."""
        return self.parts or (self,)

    @property
    def size(self) -> int:
        return len(self.members)


def split_evenly(items: list, most: int) -> list[list]:
    """`items` in consecutive chunks of at most `most`, sizes differing by at most one."""
    if not items:
        return []
    count = -(-len(items) // max(1, most))
    base, extra = divmod(len(items), count)
    chunks, start = [], 0
    for index in range(count):
        end = start + base + (index < extra)
        chunks.append(items[start:end])
        start = end
    return chunks
