"""Which trials can train together, and the work units a sweep becomes.

Trials whose configs differ only in per-member values (the `per_member` rows of
schema.AXES: seed, learning rate, L1, L2, dropout rate) compile to the same
program, so they can train as one population: one compiled program, the members
on a vmapped axis. Dropout must be on for all members or off for all, since it
changes the program (a dropout rate of 0 is no dropout at all). Everything here
is a pure function of the configs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable

from bench.contract.schema import AXES, PER_MEMBER, SHARED, SpecError, TrialConfig  # noqa: F401 (PER_MEMBER, SHARED re-exported)
from bench.contract.units import Unit, split_evenly

OFF, AUTO = "off", "auto"


def group_of(config: TrialConfig) -> tuple:
    """What members of one population share: every value but the per-member ones, and
    whether dropout is on. A stock-Flax model (impl flax) fixes its dropout rate in the
    module (nnx.Dropout), so its members share the rate itself.

    An axis added later leaves the group out while at its default (as it does the key),
    so group ids stay those of earlier runs."""
    shared = tuple(getattr(config, a.name) for a in AXES if not a.per_member
                   and a.keyed(getattr(config, a.name)))
    if config.impl == "flax":
        return (*shared, config.dropout or 0.0)
    return (*shared, (config.dropout or 0.0) > 0)


def halving_group_of(config: TrialConfig) -> tuple:
    """What the configurations of one halving group share (--prune): every value but the
    per-member tuning axes. Unlike `group_of`, dropout on and off are one halving group
    (they differ only in the dropout rate): they compete, in two programs of one unit."""
    return tuple(getattr(config, a.name) for a in AXES if not a.per_member
                 and a.keyed(getattr(config, a.name)))


def group_id(config: TrialConfig) -> str:
    """A short, stable name of the config's group (the same in every run)."""
    text = json.dumps(group_of(config))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def parse_population(value) -> str | int:
    """'auto', 'off' or a positive integer (a cap on population size); SpecError otherwise."""
    if isinstance(value, str) and value in (AUTO, OFF):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise SpecError(f"population: {value!r} is not auto, off or a positive integer")


def plan_units(configs: Iterable[TrialConfig], population: str | int,
               cap: int | Callable[[TrialConfig], int], prune: bool = False) -> list[Unit]:
    """The work units of `configs`, in order of each group's first trial.

    `population` 'off' gives one unit per trial, trained alone; 'auto' groups up to
    `cap` members (the platform's limit, or a function of the group's first config); an
    integer N up to N. A group larger than that is split into near-equal populations; a
    group of one trains alone. With `prune`, one unit per halving group (`halving_units`).
    """
    configs = list(configs)
    if prune:
        return halving_units(configs, population, cap)
    if population == OFF:
        return [Unit(group_id(c), (c,), alone=True) for c in configs]
    cap_of = cap if callable(cap) else (lambda _: cap)
    groups: dict[tuple, list[TrialConfig]] = {}
    for config in configs:
        groups.setdefault(group_of(config), []).append(config)
    units = []
    for members in groups.values():
        size = cap_of(members[0]) if population == AUTO else int(population)
        for chunk in split_evenly(members, size):
            units.append(Unit(group_id(chunk[0]), tuple(chunk), alone=len(chunk) == 1))
    return units




def halving_units(configs: list[TrialConfig], population: str | int,
                  cap: int | Callable[[TrialConfig], int]) -> list[Unit]:
    """One unit per halving group (`halving_group_of`), so that a rung's decision is made
    inside one unit, on one worker, and waits for nothing else. Its parts are what the
    population setting would make of its trials: populations of whole configurations (a
    configuration's seeds stay in one part) up to the cap, or, where the setting trains
    trials alone ('off', or a cap of 1), every trial alone, the unit training them in turn."""
    halving: dict[tuple, list[TrialConfig]] = {}
    for config in configs:
        halving.setdefault(halving_group_of(config), []).append(config)
    cap_of = cap if callable(cap) else (lambda _: cap)
    units = []
    for members in halving.values():
        parts = []
        for group in _by(members, group_of).values():
            size = 1 if population == OFF else cap_of(group[0]) if population == AUTO else int(population)
            parts += _parts(group, size)
        if len(parts) == 1:
            units.append(parts[0])
            continue
        ordered = tuple(c for part in parts for c in part.members)
        units.append(Unit(group_id(ordered[0]), ordered, alone=all(p.alone for p in parts),
                          parts=tuple(parts)))
    return units


def _parts(group: list[TrialConfig], size: int) -> list[Unit]:
    """A population group's parts: every trial alone for a size of 1, else populations of
    at most `size` trials made of whole configurations (one larger where a configuration
    has more seeds than that)."""
    if size <= 1:
        return [Unit(group_id(c), (c,), alone=True) for c in group]
    configurations = list(_by(group, lambda c: c.config_id).values())
    most = max(1, size // max(len(seeds) for seeds in configurations))
    parts = []
    for chunk in split_evenly(configurations, most):
        trials = tuple(c for seeds in chunk for c in seeds)
        parts.append(Unit(group_id(trials[0]), trials, alone=len(trials) == 1))
    return parts


def _by(configs: list[TrialConfig], key: Callable[[TrialConfig], object]) -> dict:
    out: dict = {}
    for config in configs:
        out.setdefault(key(config), []).append(config)
    return out
