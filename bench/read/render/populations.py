"""Populations as the reports show them: one row per population, its shared figures.

A population's compile time, epoch times and throughput belong to all its members
together; they are shown here, once per population, never as a member's own. The
speed-up is the members' own epoch times (steps per epoch x their median step time
from the timed rounds each ran alone) for the steady epochs each trained in, summed,
over those epochs' wall time (bench.engine.training, `_speedup`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.read.render.cells import Cell, number_cell, text_cell
from bench.read.render.document import Section, Table, table
from bench.read.render.runs import Run
from bench.contract.facts import PopulationFacts
from bench.contract.schema import PER_MEMBER, Record


@dataclass(frozen=True)
class Population:
    """The members of one population of one run, and what they share."""

    run: str
    members: tuple[Record, ...]

    @property
    def shared(self) -> PopulationFacts:
        return self.members[0].population

    @property
    def label(self) -> str:
        config = self.members[0].config
        return config.label(without=PER_MEMBER) + (" dropout on" if config.dropout else "")


def trained_together(record: Record) -> bool:
    return record.population is not None and record.population.together


def populations(runs: list[Run]) -> list[Population]:
    """Every population of the runs, in run order then order of first member."""
    found: dict[tuple, list[Record]] = {}
    for index, run in enumerate(runs):
        for record in filter(trained_together, run.records):
            shared = record.population
            key = (index, shared.group, shared.compile_s, tuple(shared.epoch_s))
            found.setdefault(key, []).append(record)
    return [Population(runs[key[0]].label, tuple(members)) for key, members in found.items()]


CAPTION = ("Trials that differ only in seed, learning rate, L1, L2 and dropout rate were trained "
           "together as one population (one compiled program, the members vmapped, the data "
           "set shared). Compile s, epoch s, member-samples/s and % of peak (the population's "
           "FLOP/s, counting the members that trained, over the calibrated peak of every device "
           "it ran on) are the population's, shared by its members; each member's own ms/step, "
           "in the other tables, comes from timed rounds it ran alone. Members: how many "
           "started, and how many were left where diverged members were dropped from the "
           "population (recompiled for fewer rows; until then it computes them, masked). "
           "Speed-up: over the steady epochs, each member's own epoch time (steps per epoch x "
           "its median step time) for every epoch it trained in (a diverged member, which has "
           "no timed rounds, at the others' mean, and only up to the epoch it diverged in, "
           "where it would have stopped alone), summed, over those epochs' wall time: an "
           "estimate of how much faster training together was than one trial at a time. Time "
           "to accuracy of these trials is on their population's clock.")


def _members_cell(shared: PopulationFacts) -> Cell:
    """E.g. '27' or '27, 20 from epoch 2' when diverged members were dropped."""
    text = str(shared.size) + "".join(f", {r['members']} from epoch {r['after_epoch'] + 1}"
                                      for r in shared.retired)
    return Cell(text, float(shared.size))


def _row(p: Population, several_runs: bool) -> list[Cell]:
    shared = p.shared
    cells = [text_cell(p.label), _members_cell(shared),
             number_cell(shared.devices, "count"), number_cell(shared.compile_s, "s"),
             number_cell(shared.first_epoch_s, "s"),
             number_cell(shared.steady_epoch_s, "s"),
             number_cell(shared.member_samples_per_s, "rate"),
             number_cell(shared.peak_fraction, "pct"),
             Cell(f"{shared.speedup:.2f}×" if shared.speedup else "", shared.speedup)]
    return [text_cell(p.run), *cells] if several_runs else cells


COLUMNS = [("population (shared configuration)", False), ("members", True), ("devices", True),
           ("compile s", True), ("epoch 1 s", True), ("steady epoch s", True),
           ("member-samples/s", True), ("% of peak", True), ("speed-up", True)]


def populations_table(runs: list[Run]) -> Table | None:
    """One row per population of the runs (None when every trial trained alone)."""
    found = populations(runs)
    if not found:
        return None
    columns = [("run", False), *COLUMNS] if len(runs) > 1 else COLUMNS
    return table("", columns, [_row(p, len(runs) > 1) for p in found], CAPTION)


def populations_section(runs: list[Run]) -> Section | None:
    found = populations_table(runs)
    return None if found is None else Section("populations", "Populations", (found,))
