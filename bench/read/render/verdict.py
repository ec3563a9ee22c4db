"""The verdict of a sweep: per family, which configuration wins, how sure that is, which
configurations tie with it, which axes mattered, and what to watch out for.

Every renderer (HTML, Markdown, terminal, summary.json) shows this one analysis; none
computes its own ranking. Accuracies are fractions of 1 here; renderers choose the units.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import statistics
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from bench.contract.facts import RunHeader
from bench.read.render.aggregate import FIELD_ORDER, Group, value_order, families
from bench.read.render.cells import data_short, duration, percent_interval, plural
from bench.read.render.runs import Run


@dataclass(frozen=True)
class Standing:
    """One configuration (its seeds together) in its family's ranking."""

    group: Group
    config_id: str
    label: str
    seeds: int                       # trials of the configuration
    ok: int                          # of which ended ok
    mean: float | None               # test accuracy (fraction) over the ok seeds
    ci95: tuple[float, float] | None  # 95% interval of that mean (None below 2 ok seeds)
    train_s: float | None            # mean training seconds over the ok seeds
    rank: int                        # 1 = best; tied configurations share the best's rank 1
    tied: bool                       # statistically indistinguishable from the family's best
    complete: bool                   # every seed ok: only complete configurations may win
    train_ci95: tuple[float, float] | None = None  # 95% interval of train_s (Pareto error bars)
    validation_mean: float | None = None  # validation accuracy over the ok seeds, where held out

    @property
    def ok_text(self) -> str:
        """'2/3 ok', or 'pruned at epoch 1' for a configuration stopped by --prune."""
        pruned = {r.pruned_at_epoch for r in self.group.records if r.status == "pruned"}
        if len(pruned) == 1 and all(r.status == "pruned" for r in self.group.records):
            return f"pruned at epoch {pruned.pop()}"
        return f"{self.ok}/{self.seeds} ok"


@dataclass(frozen=True)
class EffectLevel:
    """One value of an axis: the mean accuracy over every configuration with that value."""

    value: object
    mean: float | None
    ci95: tuple[float, float] | None
    n: int                           # configurations averaged


@dataclass(frozen=True)
class MainEffect:
    axis: str                        # the TrialConfig field name ('learning_rate')
    levels: tuple[EffectLevel, ...]  # in the axis's value order
    log_scale: bool                  # numeric and spread over decades (the learning rate)


@dataclass(frozen=True)
class Importance:
    method: str                      # named in every report, e.g. 'main-effect variance share'
    axes: tuple[tuple[str, float], ...]  # (axis, score), highest first
    follows: tuple[tuple[str, str], ...] = ()  # (axis, the axis it follows): one effect, two names

    def name(self, axis: str) -> str:
        """'learning_rate (follows optimizer)' for an axis that is not a free choice."""
        leader = dict(self.follows).get(axis)
        return f"{axis} (follows {leader})" if leader else axis


@dataclass(frozen=True)
class Warning:
    code: str                        # documented in the README: lr_at_edge, unstable, busy, ...
    message: str
    family: str | None = None


@dataclass(frozen=True)
class FamilyVerdict:
    family: str
    best: Standing | None
    tied: tuple[Standing, ...]       # the others tied with the best
    standings: tuple[Standing, ...]  # every configuration, best first
    trials: int
    diverged: int                    # seeds
    failed: int                      # seeds
    swept: tuple[str, ...]           # axes with more than one value in this family
    effects: tuple[MainEffect, ...]
    importance: Importance | None
    pareto: tuple[Standing, ...]     # accuracy against training time, noise-aware
    chosen_on: str = "test"          # the split ranking and ties use: CHOSEN_ON's keys
    pruned: tuple[tuple[int, int], ...] = ()  # (rung epoch, seeds pruned there), by epoch


@dataclass(frozen=True)
class Verdict:
    families: tuple[FamilyVerdict, ...]
    trials: int
    wall_s: float | None             # the sweep's wall time
    wall_note: str                   # how wall_s was found (e.g. 'run.json start to finish')
    tie_test: str                    # the test naming ties, e.g. "Welch's t-test, p >= 0.05"
    warnings: tuple[Warning, ...]
    accuracy_on: str = ""            # the data every accuracy is measured on ('mnist, 2,000 test')


# ---------------------------------------------------------------- the rules, in one place

TIE_ALPHA = 0.05
TIE_TEST = f"Welch's t-test, p >= {TIE_ALPHA:g}"
WIDE_CI = 0.02            # `unstable`: the best's 95% CI is wider than 2 points
MIN_SURROGATE = 10        # configurations needed to fit a random-forest surrogate
SURROGATE_FOLDS = 5       # its importance is measured on held-out configurations
SURROGATE_REPEATS = 5     # shuffles of each axis per fold
LR_EDGE_MIN = 3           # `lr_at_edge` needs at least this many swept learning rates
DEFAULT_CLASSES = 10      # chance accuracy 1/10 where run.json does not name the classes
SURROGATE_METHOD = "random-forest surrogate, held-out permutation importance (drop in R²)"
GRID_METHOD = "main-effect variance share (full grid)"
# The split a family's ranking and tie test use -> the record field read. Validation where
# every ok trial of the family has it (a run with --validation): choosing on the test split
# would bias the reported test accuracy upward. The figure shown is test accuracy either way.
CHOSEN_ON = {"test": "test_accuracy", "validation": "validation_accuracy"}


def verdict(runs: list[Run], groups: list[Group]) -> Verdict:
    """The verdict of `runs` (their seed groups as from aggregate.group_trials)."""
    labels = _labeller(runs)
    out = [_family(name, [g for g in groups if g.family == name], runs, labels)
           for name in families(groups)]
    wall_s, wall_note = sweep_wall(runs)
    found = tuple(w for f in out for w in _warnings(f))
    return Verdict(tuple(out), sum(f.trials for f in out), wall_s, wall_note, TIE_TEST, found,
                   _accuracy_on(runs))


def _accuracy_on(runs: list[Run]) -> str:
    """'test split of mnist, 2,000 test': what every accuracy of the verdict was measured on
    (runs on different data name each)."""
    names = list(dict.fromkeys(data_short(run.header.data) for run in runs))
    return "test split of " + " / ".join(names)


def _labeller(runs: list[Run]) -> Callable[[Group], str]:
    """A configuration's label; with several runs, the run's label too (one config, two runs)."""
    if len(runs) < 2:
        return lambda g: g.label
    return lambda g: f"{g.label} [{g.run}]"


def chosen_on(groups: list[Group]) -> str:
    """'validation' where every ok trial of `groups` has a validation accuracy, else 'test'."""
    ok = [r for g in groups for r in g.ok]
    held_out = ok and all(r.validation_accuracy is not None for r in ok)
    return "validation" if held_out else "test"


def _family(name: str, groups: list[Group], runs: list[Run], labels) -> FamilyVerdict:
    on = chosen_on(groups)
    standings = rank_standings([_standing(g, labels(g)) for g in groups], on)
    best = standings[0] if standings and standings[0].rank == 1 and standings[0].complete else None
    tied = tuple(s for s in standings if s.tied)
    records = [r for g in groups for r in g.records]
    swept = swept_axes(groups)
    at_epoch = min((r.pruned_at_epoch for r in records if r.status == "pruned"
                    and r.pruned_at_epoch), default=None)
    points = _effect_points(groups, runs, at_epoch)
    found = importance(points, swept)
    if found is not None and at_epoch is not None:
        found = dataclasses.replace(found, method=f"{found.method}, on the test accuracy at "
                                    f"epoch {at_epoch} (the last every configuration reached: "
                                    f"the run pruned)")
    return FamilyVerdict(
        family=name, best=best, tied=tied, standings=standings, trials=len(records),
        diverged=sum(r.status == "diverged" for r in records),
        failed=sum(r.status == "failed" for r in records), swept=swept,
        pruned=pruned_at_rungs(records),
        effects=tuple(main_effect(points, axis) for axis in swept),
        importance=found, pareto=pareto(standings), chosen_on=on)


def pruned_at_rungs(records) -> tuple[tuple[int, int], ...]:
    """(rung epoch, trials pruned there) of `records`, by epoch (--prune: censored trials,
    never best, never in a mean: they stopped before the epochs the others reached)."""
    rungs = Counter(r.pruned_at_epoch for r in records if r.status == "pruned")
    return tuple(sorted(rungs.items(), key=lambda item: item[0] or 0))


# ---------------------------------------------------------------- standings and ties


def _accuracies(group: Group, on: str = "test") -> list[float]:
    """The ok seeds' accuracies on the split `on` (CHOSEN_ON)."""
    values = (getattr(r, CHOSEN_ON[on]) for r in group.ok)
    return [v for v in values if v is not None]


def _train_times(group: Group) -> list[float]:
    return [r.train_s for r in group.ok if r.train_s is not None]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def ci95(values: list[float]) -> tuple[float, float] | None:
    """The 95% Student-t interval of the mean of `values`; None below two values."""
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    if sd == 0:  # identical values: an exact, zero-width interval
        return (mean, mean)
    from scipy.stats import t  # slow to import: paid only when a report is made
    half = float(t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return (mean - half, mean + half)


def _standing(group: Group, label: str) -> Standing:
    accuracies, times = _accuracies(group), _train_times(group)
    mean = _mean(accuracies)
    return Standing(
        group=group, config_id=group.records[0].config.config_id, label=label,
        seeds=len(group.records), ok=len(group.ok), mean=mean, ci95=ci95(accuracies),
        train_s=_mean(times), rank=0, tied=False,
        complete=len(group.ok) == len(group.records) and mean is not None,
        train_ci95=ci95(times), validation_mean=_mean(_accuracies(group, "validation")))


def _chosen_mean(s: Standing, on: str) -> float | None:
    """The mean a ranking on split `on` compares."""
    return s.validation_mean if on == "validation" else s.mean


def rank_standings(standings: list[Standing], on: str = "test") -> tuple[Standing, ...]:
    """Best first: the complete configurations by mean, those tied with the best (the run of
    them, from the top, that TIE_TEST cannot tell from it) sharing its rank 1; then the
    incomplete ones (by fraction of seeds ok, then mean). Only a complete
    configuration (every seed ok) may be best or tied: one that lost seeds to divergence or
    failure is less reliable than its surviving seeds suggest. Means and ties are those of
    the split `on` (CHOSEN_ON)."""
    def mean(s: Standing) -> float:
        chosen = _chosen_mean(s, on)
        return chosen if chosen is not None else -1.0

    def by_mean(s: Standing) -> tuple:
        time = s.train_s if s.train_s is not None else math.inf
        return (-mean(s), time, s.group.sort_key())

    complete = sorted((s for s in standings if s.complete), key=by_mean)
    partial = sorted((s for s in standings if not s.complete),
                     key=lambda s: (-s.ok / s.seeds, -mean(s), *_how_far(s, on), s.group.sort_key()))
    if not complete:
        return tuple(dataclasses.replace(s, rank=i) for i, s in enumerate(partial, 1))
    best, others = complete[0], complete[1:]
    ties = 0  # the tie stops at the first configuration, in order of mean, that is not tied:
    while ties < len(others) and is_tied(best, others[ties], on):  # one lower but noisier than
        ties += 1  # a significantly worse one is not called a tie with the best
    tied = [dataclasses.replace(s, rank=1, tied=True) for s in others[:ties]]
    rest = others[ties:] + partial
    first = [dataclasses.replace(best, rank=1), *tied]
    return (*first, *(dataclasses.replace(s, rank=i) for i, s in enumerate(rest, len(first) + 1)))


def _how_far(s: Standing, on: str) -> tuple[float, float]:
    """A configuration --prune stopped, as successive halving judged it: (minus) the last
    epoch its seeds reached, and (minus) their mean accuracy then on the split `on`; so among
    the pruned, the later and then the better go first. (0, 0) where none was pruned."""
    pruned = [r for r in s.group.records if r.status == "pruned" and r.pruned_at_epoch]
    if not pruned:
        return (0.0, 0.0)
    last = max(r.pruned_at_epoch for r in pruned)
    there = [r.history[-1].get(CHOSEN_ON[on]) for r in pruned
             if r.pruned_at_epoch == last and r.history]
    there = [a for a in there if isinstance(a, (int, float))]
    return (-float(last), -statistics.fmean(there) if there else 0.0)


def ranked(v: Verdict) -> list[Group]:
    """The groups with an accuracy, family by family, each family's best first: the one
    ranking every table that picks "the best" of several configurations uses."""
    return [s.group for f in v.families for s in f.standings if s.mean is not None]


def is_tied(best: Standing, other: Standing, on: str = "test") -> bool:
    """Whether `other`'s seed accuracies (on the split `on`) are not significantly different
    from `best`'s (TIE_TEST). Below two seeds on either side no test is possible: not tied."""
    a, b = _accuracies(best.group, on), _accuracies(other.group, on)
    if len(a) < 2 or len(b) < 2:
        return False
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return math.isclose(statistics.fmean(a), statistics.fmean(b), rel_tol=0, abs_tol=1e-12)
    from scipy.stats import ttest_ind
    with warnings.catch_warnings():  # nearly identical seeds: the p-value is still usable
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return p >= TIE_ALPHA if math.isfinite(p) else statistics.fmean(a) == statistics.fmean(b)


# ---------------------------------------------------------------- what mattered


def swept_axes(groups: list[Group]) -> tuple[str, ...]:
    """The axes (TrialConfig fields, seed aside) with more than one value among `groups`."""
    return tuple(name for name in FIELD_ORDER if name != "seed"
                 and len({g.config.get(name) for g in groups}) > 1)


def _effect_points(groups: list[Group], runs: list[Run],
                   at_epoch: int | None = None) -> list[tuple[dict, float]]:
    """(config, value) of every configuration with a value: its mean accuracy over seeds,
    a diverged seed counting at chance accuracy (1/classes) and a failed seed left out.

    Divergence is an outcome of the configuration (a too-large learning rate diverges), so
    leaving it out would flatter exactly the values that fail; a crash says nothing about
    the configuration's accuracy, so it is left out.

    `at_epoch` (a pruned run): each seed's test accuracy after that epoch, the last that
    every configuration reached; the survivors' final figures alone would be a sample the
    pruning chose, not the grid."""
    points = []
    for g in groups:
        chance = 1 / ((runs[g.run_index].header.data or {}).get("num_classes") or DEFAULT_CLASSES)
        values = [v for v in (_point_value(r, at_epoch, chance) for r in g.records) if v is not None]
        if values:
            points.append((g.config, statistics.fmean(values)))
    return points


def _point_value(record, at_epoch: int | None, chance: float) -> float | None:
    """One seed's value for _effect_points; None leaves it out."""
    if record.status == "diverged":
        return chance
    if at_epoch is None:
        return record.test_accuracy if record.ok else None
    if record.status not in ("ok", "pruned") or len(record.history) < at_epoch:
        return None
    value = record.history[at_epoch - 1].get("test_accuracy")
    return value if value is not None and math.isfinite(value) else chance


def _values(points, axis: str) -> list:
    return sorted({config.get(axis) for config, _ in points}, key=value_order)


def main_effect(points: list[tuple[dict, float]], axis: str) -> MainEffect:
    """Per value of `axis`: the mean (and 95% CI) over the configurations with that value of
    their accuracy (as _effect_points counts it). A value whose every trial failed has no
    level: nothing was learnt about it."""
    levels = []
    for value in _values(points, axis):
        ys = [y for config, y in points if config.get(axis) == value]
        levels.append(EffectLevel(value, _mean(ys), ci95(ys), len(ys)))
    return MainEffect(axis, tuple(levels), _log_scale([lv.value for lv in levels]))


def _log_scale(values: list) -> bool:
    """Numeric, positive values spread over at least a decade (learning rates)."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != len(values) or len(numbers) < 2 or min(numbers) <= 0:
        return False
    return max(numbers) / min(numbers) >= 10


def importance(points: list[tuple[dict, float]], swept: tuple[str, ...]) -> Importance | None:
    """The swept axes ranked by how much they moved accuracy, highest first.

    A full grid (the configurations are every combination of the swept values, each as
    often) gets the exact share of variance each axis's main effect explains. Any other
    set (random search, a partial grid) gets a random-forest surrogate's permutation
    importance. Too few configurations for a surrogate: no axes, and the method says why.
    Nothing swept: None."""
    if not swept:
        return None
    if _full_grid(points, swept):
        return Importance(GRID_METHOD, _highest_first(swept, _variance_shares(points, swept)),
                          _followers(points, swept))
    if len(points) < MIN_SURROGATE:
        return Importance(f"none: {len(points)} configurations are too few for a surrogate "
                          f"(at least {MIN_SURROGATE}) and they are not a full grid", ())
    return Importance(SURROGATE_METHOD, _highest_first(swept, _surrogate_scores(points, swept)))


def _full_grid(points, swept) -> bool:
    """Every combination of the free axes' values (see _free_axes), each as often."""
    free = _free_axes(points, swept)
    cells = Counter(tuple(config.get(a) for a in free) for config, _ in points)
    size = math.prod(len(_values(points, a)) for a in free)
    return bool(cells) and len(cells) == size and len(set(cells.values())) == 1


def _free_axes(points, swept) -> list[str]:
    """The swept axes less those that follow another (each optimizer at its own default
    learning rate): those add no combinations to a grid, and their share tells the same
    story as the axis they follow. Of two that follow each other, the first stays."""
    free = []
    for axis in swept:
        leaders = [b for b in swept if b != axis and _follows(points, axis, b)]
        if not any(not _follows(points, b, axis) or swept.index(b) < swept.index(axis)
                   for b in leaders):
            free.append(axis)
    return free


def _followers(points, swept) -> tuple[tuple[str, str], ...]:
    """(axis, the free axis it follows) for each swept axis that is not free."""
    free = _free_axes(points, swept)
    return tuple((axis, next(b for b in free if _follows(points, axis, b)))
                 for axis in swept if axis not in free
                 and any(_follows(points, axis, b) for b in free))


def _follows(points, axis: str, other: str) -> bool:
    """Whether each value of `other` comes with one value of `axis` only, every value of
    `other` seen at least twice (else any axis would follow one whose values never repeat,
    as a random search's learning rates)."""
    seen: dict = {}
    for config, _ in points:
        seen.setdefault(config.get(other), []).append(config.get(axis))
    return all(len(vs) > 1 and len(set(vs)) == 1 for vs in seen.values())


def _variance_shares(points, swept) -> list[float]:
    """SS_between(axis) / SS_total over the configurations' values."""
    ys = [y for _, y in points]
    grand = statistics.fmean(ys)
    total = sum((y - grand) ** 2 for y in ys)
    shares = []
    for axis in swept:
        levels = [[y for config, y in points if config.get(axis) == v]
                  for v in _values(points, axis)]
        between = sum(len(ls) * (statistics.fmean(ls) - grand) ** 2 for ls in levels)
        shares.append(between / total if total > 0 else 0.0)
    return shares


def _surrogate_scores(points, swept) -> list[float]:
    """Each axis's permutation importance in a random forest fitted to the values: the
    drop in R² on held-out configurations (5-fold) when the axis's values are shuffled.

    Held out, because a forest scored on what it was fitted to finds importance in noise.
    Axes enter as the rank of their value (trees care only about order; a name gets one)."""
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor  # slow to import: only random search
    from sklearn.model_selection import KFold
    ys = np.array([y for _, y in points])
    if ys.var() == 0:
        return [0.0] * len(swept)
    codes = {a: {v: i for i, v in enumerate(_values(points, a))} for a in swept}
    xs = np.array([[codes[a][config.get(a)] for a in swept] for config, _ in points], float)
    rng, drops = np.random.default_rng(0), np.zeros(len(swept))
    for train, test in KFold(n_splits=SURROGATE_FOLDS, shuffle=True, random_state=0).split(xs):
        forest = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=0)
        forest.fit(xs[train], ys[train])
        blocks = [xs[test]] + [_shuffled(xs[test], j, rng) for j in range(len(swept))
                               for _ in range(SURROGATE_REPEATS)]
        errors = ((forest.predict(np.vstack(blocks)).reshape(len(blocks), -1) - ys[test]) ** 2)
        errors = errors.mean(axis=1)  # one prediction call: a forest's call costs per tree
        drops += (errors[1:].reshape(len(swept), -1).mean(axis=1) - errors[0]) * len(test)
    return [max(float(d), 0.0) for d in drops / len(ys) / ys.var()]


def _shuffled(xs, column: int, rng):
    out = xs.copy()
    out[:, column] = rng.permutation(out[:, column])
    return out


def _highest_first(swept, scores) -> tuple[tuple[str, float], ...]:
    order = sorted(range(len(swept)), key=lambda i: -scores[i])  # stable: axis order on ties
    return tuple((swept[i], scores[i]) for i in order)


# ---------------------------------------------------------------- the Pareto front


def _half(ci: tuple[float, float] | None) -> float:
    return (ci[1] - ci[0]) / 2 if ci else 0.0


def dominates(h: Standing, g: Standing) -> bool:
    """`h` is no worse than `g` on accuracy (higher) and training time (lower) beyond noise,
    and better beyond noise on at least one. Noise is the two 95% half-widths combined
    (root of the sum of squares: the half-width of the difference); with a single seed
    there is no interval, so noise is zero and only a strict difference counts."""
    acc_noise = math.hypot(_half(h.ci95), _half(g.ci95))
    time_noise = math.hypot(_half(h.train_ci95), _half(g.train_ci95))
    no_worse = h.mean >= g.mean - acc_noise and h.train_s <= g.train_s + time_noise
    better = h.mean > g.mean + acc_noise or h.train_s < g.train_s - time_noise
    return no_worse and better


def pareto(standings) -> tuple[Standing, ...]:
    """The complete configurations no other dominates (see `dominates`), fastest first."""
    points = [s for s in standings if s.complete and s.train_s is not None]
    front = [g for g in points if not any(dominates(h, g) for h in points if h is not g)]
    if not front and points:  # noise-aware dominance can cycle; fall back to the plain front
        front = [g for g in points if not any(h.mean >= g.mean and h.train_s <= g.train_s
                                              and (h.mean, h.train_s) != (g.mean, g.train_s)
                                              for h in points)]
    return tuple(sorted(front, key=lambda s: (s.train_s, -s.mean)))


# ---------------------------------------------------------------- wall time


def sweep_wall(runs: list[Run]) -> tuple[float | None, str]:
    """The sweep's wall time and how it was found: run.json's start to finish of every
    invocation where each recorded its finish, else the sum of the trials' wall times
    (an overestimate where trials ran in parallel)."""
    spans = [_invocation_spans(run.header) for run in runs]
    if all(s is not None for s in spans):
        note = "run.json: start to finish"
        if any(len(s) > 1 for s in spans):
            note += ", each invocation of a resumed run"
        if len(runs) > 1:
            note += f", summed over {len(runs)} runs"
        return sum(sum(s) for s in spans), note
    trial_times = [t for run in runs for t in _trial_walls(run.records)]
    if not trial_times:
        return None, "run.json has no finish time and no trial a wall time"
    return sum(trial_times), "sum of the trials' wall times; run.json has no finish time"


def _invocation_spans(header: RunHeader) -> list[float] | None:
    """Seconds of each invocation (the first, then each resume); None if one is unknown."""
    pairs = [(header.started, header.finished)]
    pairs += [(r.get("at"), r.get("finished")) for r in header.resumed if isinstance(r, dict)]
    try:
        return [(dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()
                for start, end in pairs]
    except (TypeError, ValueError):  # a missing or unreadable time
        return None


def _trial_walls(records) -> list[float]:
    """Each trial's wall time; a population's members share one, counted once."""
    seen, out = set(), []
    for r in records:
        pop = r.population
        if pop is not None and pop.together:
            if pop.group not in seen and pop.wall_s is not None:
                seen.add(pop.group)
                out.append(pop.wall_s)
        elif r.wall_s is not None:
            out.append(r.wall_s)
    return out


# ---------------------------------------------------------------- warnings


def _warnings(f: FamilyVerdict) -> list[Warning]:
    """The family's warnings, each code documented in the README ("summary.json")."""
    found = [_no_complete(f), _single_seed(f), _lr_at_edge(f), *_unstable(f), _busy(f)]
    return [w for w in found if w is not None]


def _no_complete(f: FamilyVerdict) -> Warning | None:
    if f.best is not None or not f.standings:
        return None
    return Warning("no_complete", f"{f.family}: no configuration finished every seed ok, so "
                   "none is named best", f.family)


def _single_seed(f: FamilyVerdict) -> Warning | None:
    seeds = f.best.seeds if f.best else max((s.seeds for s in f.standings), default=0)
    if seeds != 1:
        return None
    return Warning("single_seed", f"{f.family}: one seed per configuration: no confidence "
                   "intervals, no test of ties; --seeds 0,1,2 tells real differences from "
                   "noise", f.family)


def _lr_at_edge(f: FamilyVerdict) -> Warning | None:
    """The best's learning rate is the smallest or largest of those swept with its optimizer
    (at least LR_EDGE_MIN of them): the optimum may lie outside the grid."""
    if f.best is None:
        return None
    config = f.best.group.config
    rate, optimizer = config.get("learning_rate"), config.get("optimizer")
    rates = sorted({s.group.config.get("learning_rate") for s in f.standings
                    if s.group.config.get("optimizer") == optimizer} - {None})
    if len(rates) < LR_EDGE_MIN or rate not in (rates[0], rates[-1]):
        return None
    edge, way = ("smallest", "lower") if rate == rates[0] else ("largest", "higher")
    return Warning("lr_at_edge", f"{f.family}: the best learning rate, {rate:g}, is the {edge} "
                   f"swept for {optimizer} ({rates[0]:g} to {rates[-1]:g}); the optimum may lie "
                   f"beyond it: sweep {way} rates", f.family)


def _unstable(f: FamilyVerdict) -> list[Warning]:
    """Configurations ok on some seeds only, and a best whose 95% CI is wider than WIDE_CI."""
    out = []
    partial = [s for s in f.standings if 0 < s.ok < s.seeds]
    if partial:
        examples = ", ".join(f"{s.label} ({s.ok_text})" for s in partial[:2])
        more = f" and {len(partial) - 2} more" if len(partial) > 2 else ""
        out.append(Warning("unstable", f"{f.family}: {plural(len(partial), 'configuration')} "
                           f"diverged or failed on some seeds only: {examples}{more}", f.family))
    best = f.best
    if best is not None and best.ci95 and best.ci95[1] - best.ci95[0] > WIDE_CI:
        width = 100 * (best.ci95[1] - best.ci95[0])
        out.append(Warning("unstable", f"{f.family}: the best's 95% CI is {width:.1f} points "
                           f"wide (over {100 * WIDE_CI:g}): its seeds disagree; more seeds "
                           "would narrow it", f.family))
    return out


def _busy(f: FamilyVerdict) -> Warning | None:
    busy = sum(r.busy for s in f.standings for r in s.group.records)
    if not busy:
        return None
    return Warning("busy", f"{f.family}: {busy} of {plural(f.trials, 'trial')} were timed while "
                   "other processes loaded the host: their times are less reliable", f.family)


# ---------------------------------------------------------------- summary.json

SUMMARY_VERSION = 1


def summary_json(v: Verdict) -> dict:
    """summary.json's content (documented in the README)."""
    return _json_safe({
        "summary_version": SUMMARY_VERSION, "trials": v.trials, "wall_s": v.wall_s,
        "wall_note": v.wall_note, "tie_test": v.tie_test, "accuracy_on": v.accuracy_on,
        "families": {f.family: _family_json(f) for f in v.families},
        "warnings": [{"code": w.code, "message": w.message, "family": w.family}
                     for w in v.warnings]})


def _family_json(f: FamilyVerdict) -> dict:
    return {
        "best": _standing_json(f.best) if f.best else None, "chosen_on": f.chosen_on,
        "tied": [s.config_id for s in f.tied],
        "trials": f.trials, "diverged": f.diverged, "failed": f.failed, "swept": list(f.swept),
        **({"pruned": {str(epoch): n for epoch, n in f.pruned}} if f.pruned else {}),
        "importance": None if f.importance is None else {
            "method": f.importance.method,
            "axes": [{"axis": axis, "score": score} for axis, score in f.importance.axes],
            "follows": dict(f.importance.follows)},
        "main_effects": [{"axis": e.axis, "log_scale": e.log_scale,
                          "levels": [{"value": lv.value, "mean": lv.mean, "ci95": lv.ci95,
                                      "n": lv.n} for lv in e.levels]} for e in f.effects],
        "pareto": [s.config_id for s in f.pareto],
        "standings": [_standing_json(s) for s in f.standings]}


def _standing_json(s: Standing) -> dict:
    return {"config_id": s.config_id, "label": s.label, "rank": s.rank, "mean": s.mean,
            "ci95": s.ci95, "seeds": s.seeds, "ok": s.ok, "complete": s.complete,
            "tied": s.tied, "train_s": s.train_s, "train_ci95": s.train_ci95,
            **({"validation_mean": s.validation_mean} if s.validation_mean is not None else {}),
            "config": {k: v for k, v in s.group.config.items() if v is not None}}


def _json_safe(value):
    """Tuples as lists, floats to 10 significant digits (no float noise), non-finite ones null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.10g}") if math.isfinite(value) else None
    return value


# ---------------------------------------------------------------- plain-text lines


def verdict_lines(v: Verdict, percent: bool = True) -> list[str]:
    """The verdict as short plain-text lines, shared by the terminal and Markdown."""
    lines = [f"{plural(v.trials, 'trial')} in {_duration(v.wall_s)} ({v.wall_note}); "
             f"accuracy on the {v.accuracy_on}"]
    for f in v.families:
        lines += _family_lines(f, v.tie_test, percent)
    lines += [f"warning ({code}): {message}" for code, message in merged_warnings(v.warnings)]
    return lines


def merged_warnings(found) -> list[tuple[str, str]]:
    """(code, message) of each warning, those that say the same of several families in one
    ('conv, dense: one seed per configuration ...'), in order of first appearance."""
    merged: dict[tuple[str, str], list[str]] = {}
    for w in found:
        prefix = f"{w.family}: "
        rest = w.message[len(prefix):] if w.family and w.message.startswith(prefix) else w.message
        families_said = merged.setdefault((w.code, rest), [])
        if w.family:
            families_said.append(w.family)
    return [(code, f"{', '.join(fams)}: {rest}" if fams else rest)
            for (code, rest), fams in merged.items()]


def _family_lines(f: FamilyVerdict, tie_test: str, percent: bool) -> list[str]:
    counts = f"  {plural(f.trials, 'trial')}: {f.diverged} diverged, {f.failed} failed"
    if f.pruned:
        counts += f", {pruned_text(f.pruned)}"
    if f.best is None:
        return [f"{f.family}: no best: no configuration finished every seed ok", counts]
    best = f.best
    time = f", {best.train_s:.3g} s training" if best.train_s is not None else ""
    interval = (f"95% CI {_interval(best.ci95, percent)}, " if best.ci95 else "")
    lines = [f"{f.family}: best {best.label} — {_acc(best.mean, percent)} "
             f"({interval}{best.ok_text.replace(' ok', ' seeds ok')}{time})",
             "  " + _tie_text(f, tie_test)]
    if f.chosen_on == "validation":
        lines.insert(1, f"  chosen on validation ({_acc(best.validation_mean, percent)}); "
                        "the figure above is test accuracy")
    if f.importance is not None and f.importance.axes:
        top = ", ".join(f"{f.importance.name(axis)} {score:.2f}"
                        for axis, score in f.importance.axes[:4])
        lines.append(f"  mattered — {f.importance.method}: {top}")
    return lines + [counts]


def pruned_text(pruned: tuple[tuple[int, int], ...]) -> str:
    """'18 pruned (at epoch 1: 15, at epoch 3: 3)'."""
    rungs = ", ".join(f"at epoch {epoch}: {n}" for epoch, n in pruned)
    return f"{sum(n for _, n in pruned)} pruned ({rungs})"


def _tie_text(f: FamilyVerdict, tie_test: str) -> str:
    if f.best.seeds < 2:
        return "ties: not tested (one seed per configuration)"
    if not f.tied:
        return f"tied: none ({tie_test.replace('>=', '≥')})"
    names = ", ".join(s.label for s in f.tied[:3])
    more = f" and {len(f.tied) - 3} more" if len(f.tied) > 3 else ""
    return f"tied: {len(f.tied)} ({tie_test.replace('>=', '≥')}): {names}{more}"


def _acc(x: float | None, percent: bool) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.2f}%" if percent else f"{x:.4f}"


def _interval(ci: tuple[float, float], percent: bool) -> str:
    if percent:
        return percent_interval(ci)
    return f"{ci[0]:.4f}–{ci[1]:.4f}"


def _duration(seconds: float | None) -> str:
    return "an unknown time" if seconds is None else duration(seconds)
