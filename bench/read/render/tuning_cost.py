"""What a sweep's training cost, as DeepOBS and AlgoPerf count tuning cost: the training
time of every trial, and for a run that pruned (--prune), about what it would have cost
without pruning.

Training time is epoch time only (no compilation, no evaluation, no timed rounds). A
population's members share their epochs, so a population counts once, not once per member.
"""

from __future__ import annotations

import statistics

from bench.contract.schema import Record


def training_seconds(records) -> float | None:
    """The sum of the trials' training time: a trial alone's epoch times, and each
    population's epoch times once (its members share them)."""
    total, seen, any_time = 0.0, set(), False
    for r in records:
        pop = r.population
        if pop is not None and pop.together:
            key = (pop.group, pop.size, tuple(pop.epoch_s))
            if key in seen or not pop.epoch_s:
                continue
            seen.add(key)
            total += sum(pop.epoch_s)
            any_time = True
        elif r.train_s is not None:
            total += r.train_s
            any_time = True
    return total if any_time else None


def unpruned_seconds(records) -> float | None:
    """An estimate of `training_seconds` had nothing been pruned: what was spent, plus each
    pruned trial's epochs not run at its program's measured time per member and epoch (a
    trial alone: its own steady epoch time; a population member: the population's epoch
    time per row, counted only for the epochs after its row left the population, since
    until then it was carried, masked, at full cost). None without a measured time."""
    spent = training_seconds(records)
    if spent is None:
        return None
    extra = [_not_run(r) for r in records if r.status == "pruned"]
    if any(e is None for e in extra):
        return None
    return spent + sum(extra)


def _not_run(record: Record) -> float | None:
    epochs_left = range(record.pruned_at_epoch + 1, record.config.epochs + 1)
    pop = record.population
    if pop is None or not pop.together:
        own = record.steady_epoch_s or (record.train_s / record.epochs_run
                                        if record.train_s and record.epochs_run else None)
        return None if own is None else own * len(epochs_left)
    rows = _rows_per_epoch(pop)
    if not rows:
        return None
    per_row = statistics.median(s / n for s, n in list(zip(pop.epoch_s, rows))[1:] or
                                zip(pop.epoch_s, rows))
    dropped = [r["after_epoch"] for r in pop.retired if r["after_epoch"] >= record.pruned_at_epoch]
    left_at = min(dropped, default=None)  # the epoch after which its row left the program
    return per_row * sum(1 for epoch in epochs_left if left_at is not None and epoch > left_at)


def _rows_per_epoch(pop) -> list[int]:
    """The rows the population's program had in each epoch it trained (its size, then the
    rows left after each retirement)."""
    rows = []
    for epoch in range(1, len(pop.epoch_s) + 1):
        before = [r["padded"] for r in pop.retired if r["after_epoch"] < epoch]
        rows.append(before[-1] if before else pop.size)
    return rows
