"""A work unit: trials trained together (a population), or one trial alone.

bench/run/groups.py decides which trials form a unit; the engine trains a unit of any
size; both meet here, in plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.contract.schema import TrialConfig


@dataclass(frozen=True)
class Unit:
    """Trials trained together (a population), or one trial trained alone (`alone`)."""

    group: str
    members: tuple[TrialConfig, ...]
    alone: bool = False

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
