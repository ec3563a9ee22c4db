"""The report's opening sections, all drawn from the one verdict (bench.read.render.verdict):
the verdict per family, what mattered, the leaderboard, and the noise-aware Pareto front.

Nothing here ranks or tests anything itself; it only shows what the verdict found.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.read.render import cells
from bench.read.render.aggregate import Group
from bench.read.render.cells import Cell, number_cell, percent_interval, plural, stat_cell, text_cell
from bench.read.render.columns import acc_title, accuracy_caption, same_data, seeds
from bench.read.render.document import Block, Facts, Para, Section, Table, table
from bench.read.render.runs import Run
from bench.read.render.verdict import FamilyVerdict, Importance, Standing, Verdict, Warning

LEADERBOARD_SIZE = 10
TIED_NAMED = 2  # tied configurations named in the verdict table; more are only counted there
NO_OK = "No trial finished ok."


def _mean_cell(s: Standing) -> Cell:
    return number_cell(s.mean, "pct")


def _tied_text(fv: FamilyVerdict) -> str:
    """The tied configurations by name when they are few; else how many (the leaderboard and
    the all-configurations table rank each one '=1')."""
    if not fv.tied:
        return "none"
    if len(fv.tied) <= TIED_NAMED:
        return ", ".join(s.label for s in fv.tied)
    return f"{len(fv.tied)} configurations, ranked =1 in the tables below"


# ---------------------------------------------------------------- the verdict


def _verdict_row(fv: FamilyVerdict) -> list[Cell]:
    best = fv.best
    seeds_failed = [Cell(str(fv.diverged), fv.diverged), Cell(str(fv.failed), fv.failed)]
    if best is None:
        return [text_cell(fv.family), text_cell("no configuration had every seed ok"),
                Cell("", None), Cell("", None), Cell("", None), text_cell(""), *seeds_failed]
    return [text_cell(fv.family), text_cell(best.label), _mean_cell(best),
            Cell(percent_interval(best.ci95), None), Cell(best.ok_text, best.ok),
            text_cell(_tied_text(fv)), *seeds_failed]


def verdict_table(v: Verdict, runs: list[Run]) -> Table:
    columns = [("family", False), ("best configuration", False), (acc_title(runs), True),
               ("95% CI", True), ("seeds", True), ("tied with the best", False),
               ("diverged seeds", True), ("failed seeds", True)]
    caption = (f"Best: the most accurate configuration whose every seed finished ok (mean test "
               f"accuracy over seeds, with a 95% confidence interval of that mean). Tied: "
               f"statistically indistinguishable from the best ({v.tie_test}). "
               + _chosen_caption(v) + accuracy_caption(runs))
    return table("", columns, [_verdict_row(fv) for fv in v.families], caption,
                 wrap=("tied with the best",))


def _chosen_caption(v: Verdict) -> str:
    """Which families were chosen on a validation split ('' if none)."""
    chosen = [fv.family for fv in v.families if fv.chosen_on == "validation"]
    if not chosen:
        return ""
    return (f"Chosen on validation ({', '.join(chosen)}): best and ties by mean validation "
            "accuracy over seeds, held out of the training split; the accuracy shown is test. ")


def _sweep_line(v: Verdict, runs: list[Run]) -> str:
    configurations = sum(len(fv.standings) for fv in v.families)
    wall = cells.duration(v.wall_s) + (f" ({v.wall_note})" if v.wall_note else "")
    families = "1 family" if len(v.families) == 1 else f"{len(v.families)} families"
    return (f"{plural(v.trials, 'trial')} in {plural(configurations, 'configuration')} of "
            f"{families}"
            f"{'' if len(runs) == 1 else f' from {len(runs)} runs'}; wall time {wall}.")


def verdict_section(v: Verdict, runs: list[Run]) -> Section:
    """The answer first: per family the best configuration, how sure, what ties, what failed."""
    if not any(s.ok for fv in v.families for s in fv.standings):
        return Section("verdict", "Verdict", (Para(NO_OK), Para(_sweep_line(v, runs))))
    blocks: list[Block] = [verdict_table(v, runs), Para(_sweep_line(v, runs))]
    if not same_data(runs):
        blocks.append(Para("Warning: the runs used different data sets; accuracies are not "
                           "comparable across runs."))
    if v.warnings:
        blocks.append(Facts(tuple((_warning_name(w), w.message) for w in v.warnings)))
    return Section("verdict", "Verdict", tuple(blocks))


def _warning_name(w: Warning) -> str:
    """E.g. 'warning lr_at_edge (dense)': the code is what summary.json and scripts use."""
    named = not w.family or w.message.startswith(f"{w.family}:")
    return f"warning {w.code}" + ("" if named else f" ({w.family})")


# ---------------------------------------------------------------- what mattered


def _best_level(fv: FamilyVerdict, axis: str) -> str:
    effect = next((e for e in fv.effects if e.axis == axis), None)
    levels = [lv for lv in (effect.levels if effect else ()) if lv.mean is not None]
    if not levels:
        return ""
    best = max(levels, key=lambda lv: lv.mean)
    return f"best {best.value}: {cells.number(best.mean, 'pct')}%"


def _importance_cell(fv: FamilyVerdict, axis: str) -> Cell:
    scores = dict(fv.importance.axes) if fv.importance else {}
    if axis not in scores:
        return Cell("", None)
    score = scores[axis]
    return Cell(f"{score:.2f} ({_best_level(fv, axis)})" if _best_level(fv, axis)
                else f"{score:.2f}", score)


def _methods(v: Verdict) -> str:
    named: dict[str, list[str]] = {}
    for fv in v.families:
        if fv.importance:
            named.setdefault(fv.importance.method, []).append(fv.family)
    if len(named) == 1:
        return f"Score: {next(iter(named))}."
    return "Score: " + "; ".join(f"{', '.join(fams)}: {method}" for method, fams in named.items()) + "."


def importance_table(v: Verdict) -> Table | None:
    """Axes down, families across: how much each swept axis moved the accuracy."""
    ranked = [fv for fv in v.families if fv.importance and fv.importance.axes]
    if not ranked:
        return None
    axes = _axis_order([fv.importance for fv in ranked])
    rows = [[text_cell(_axis_name(ranked, axis)), *(_importance_cell(fv, axis) for fv in ranked)]
            for axis in axes]
    caption = (f"How much of the spread in mean test accuracy each swept axis explains, per "
               f"family, highest first; in brackets the value with the best main effect (the "
               f"mean accuracy over every configuration with that value). {_methods(v)}")
    columns = [("axis", False), *((fv.family, True) for fv in ranked)]
    return table("Importance of each axis", columns, rows, caption)


def _axis_name(families: list[FamilyVerdict], axis: str) -> str:
    """The axis, and the one it follows where it follows the same one in every family."""
    names = {fv.importance.name(axis) for fv in families if axis in dict(fv.importance.axes)}
    return names.pop() if len(names) == 1 else axis


def _axis_order(importances: list[Importance]) -> list[str]:
    """Axes by their highest score in any family."""
    top: dict[str, float] = {}
    for imp in importances:
        for axis, score in imp.axes:
            top[axis] = max(score, top.get(axis, score))
    return sorted(top, key=lambda a: -top[a])


def mattered(v: Verdict) -> Section | None:
    """Which axes moved the accuracy; its plots (main effects, parallel coordinates) follow."""
    found = importance_table(v)
    if found is None:
        if not any(fv.swept for fv in v.families):
            return None
        return Section("mattered", "What mattered",
                       (Para("Too few configurations finished to rank the axes."),))
    return Section("mattered", "What mattered", (found,))


# ---------------------------------------------------------------- the leaderboard


def rank_text(s: Standing, best_is_tied: bool) -> str:
    """'=1' for the best and every configuration tied with it, else the plain rank."""
    return f"={s.rank}" if s.tied or (best_is_tied and s.rank == 1) else str(s.rank)


def rank_column(v: Verdict) -> tuple[str, bool, Callable[[Group], Cell]]:
    """A 'rank' column for any table of seed groups: each one's rank in its family."""
    found = {(s.group.run_index, s.config_id): (s, bool(fv.tied))
             for fv in v.families for s in fv.standings}

    def cell(g: Group) -> Cell:
        hit = found.get((g.run_index, g.records[0].config.config_id))
        return Cell(rank_text(*hit), hit[0].rank) if hit else Cell("", None)
    return ("rank", True, cell)


def _status_cell(s: Standing) -> Cell:
    """'2/3 ok', sorting by the share of seeds ok."""
    return Cell(s.ok_text, s.ok / max(s.seeds, 1))


def _standing_row(s: Standing, best_is_tied: bool) -> list[Cell]:
    g = s.group
    return [text_cell(s.label), Cell(rank_text(s, best_is_tied), s.rank), _status_cell(s),
            stat_cell(g.metric("test_accuracy"), "pct", seeds(g)),
            Cell(percent_interval(s.ci95), None),
            stat_cell(g.metric("train_s"), "s", seeds(g)),
            stat_cell(g.metric("steady_epoch_s"), "s", seeds(g)),
            stat_cell(g.metric("step_ms"), "ms", seeds(g))]


def family_leaderboard(fv: FamilyVerdict, runs: list[Run], tie_test: str) -> Table:
    top = fv.standings[:LEADERBOARD_SIZE]
    columns = [("configuration", False), ("rank", True), ("status", True), (acc_title(runs), True),
               ("95% CI", True), ("train s", True), ("steady epoch s", True), ("ms/step", True)]
    rows = [_standing_row(s, bool(fv.tied)) for s in top]
    caption = (f"Top {len(top)} of {plural(len(fv.standings), 'configuration')}. A configuration "
               f"ranks on every seed: status counts the seeds that finished ok, and only one "
               f"whose every seed did can be best. =1: tied with the best ({tie_test}).")
    if fv.chosen_on == "validation":  # the ranking's own figure beside the test accuracy
        columns.insert(5, ("validation acc %", True))
        for s, row in zip(top, rows):
            row.insert(5, stat_cell(s.group.metric("validation_accuracy"), "pct", seeds(s.group)))
        caption += " Ranked, and ties tested, on validation accuracy; test accuracy is reported."
    return table(fv.family, columns, rows, caption)


def leaderboard(v: Verdict, runs: list[Run]) -> Section:
    tables = [family_leaderboard(fv, runs, v.tie_test) for fv in v.families
              if any(s.ok for s in fv.standings)]
    if not tables:
        return Section("leaderboard", "Leaderboard", (Para(NO_OK),))
    return Section("leaderboard", "Leaderboard", (*tables, Para(accuracy_caption(runs))))


# ---------------------------------------------------------------- the Pareto front


def _seconds_interval(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"{cells.number(ci[0], 's')}–{cells.number(ci[1], 's')}"


def _front_row(s: Standing) -> list[Cell]:
    g = s.group
    return [text_cell(s.label), _status_cell(s),
            stat_cell(g.metric("test_accuracy"), "pct", seeds(g)),
            Cell(percent_interval(s.ci95), None),
            stat_cell(g.metric("train_s"), "s", seeds(g)),
            Cell(_seconds_interval(s.train_ci95), None)]


def pareto(v: Verdict, runs: list[Run]) -> Section | None:
    fronts = [fv for fv in v.families if fv.pareto]
    if not fronts:
        return None
    columns = [("configuration", False), ("status", True), (acc_title(runs), True),
               ("95% CI", True), ("train s", True), ("train s 95% CI", True)]
    tables = [table(fv.family, columns, [_front_row(s) for s in fv.pareto])
              for fv in fronts]
    caption = ("Per family, fastest first: the configurations with every seed ok that no other "
               "beats, on mean test accuracy or mean training time (train s), by more than the "
               "seed noise (their 95% intervals combined) without being worse beyond the noise "
               "on the other. A difference smaller than the noise keeps a configuration on the "
               "front. " + accuracy_caption(runs))
    return Section("pareto", "Accuracy vs training time: Pareto front",
                   (*tables, Para(caption)))
