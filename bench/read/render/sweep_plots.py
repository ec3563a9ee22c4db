"""What mattered in a family, drawn: main-effect slices and parallel coordinates.

Both come from the verdict (bench.read.render.verdict): the effects, their importance
and the standings are its numbers; nothing is recomputed here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator

from bench.read.render.aggregate import value_order
from bench.read.render.plot_kit import (PERCENT, ci_text, error_bars, log_axis, panel_grid,
                                        percent, tooltip)
from bench.read.render.verdict import EffectLevel, FamilyVerdict, MainEffect

EFFECTS_PER_ROW = 5
TICKED_LEVELS = 8  # an axis with at most this many values shows each one, evenly spaced
CMAP = "viridis"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def value_text(value) -> str:
    return f"{value:g}" if _is_number(value) else str(value)


# ---------------------------------------------------------------- main effects


def effects_by_importance(fv: FamilyVerdict) -> list[tuple[MainEffect, float | None]]:
    """The family's main effects with their importance scores, most important first
    (effects the importance does not score last, in their own order)."""
    scores = dict(fv.importance.axes) if fv.importance else {}
    rank = {axis: i for i, (axis, _) in enumerate(fv.importance.axes)} if fv.importance else {}
    order = sorted(fv.effects, key=lambda e: rank.get(e.axis, len(rank)))
    return [(e, scores.get(e.axis)) for e in order]


def draw_effects(fig: Figure, fv: FamilyVerdict) -> str | None:
    """One slice per swept axis: mean test accuracy at each value, with its 95% CI."""
    shown = [(e, s) for e, s in effects_by_importance(fv)
             if any(level.mean is not None for level in e.levels)]
    if not shown:
        return None
    axes = panel_grid(fig, len(shown), EFFECTS_PER_ROW, 2.1, 2.2, sharey=True)
    for ax, (effect, score) in zip(axes, shown):
        _effect_panel(ax, effect)
        ax.set_title(effect.axis if score is None else f"{effect.axis} · {score:.2f}")
    axes[0].set_ylabel("mean test acc %")
    axes[0].set_ylim(*_effects_ylim([lv for e, _ in shown for lv in e.levels]))
    method = fv.importance.method if fv.importance else "not ranked"
    return (f"{fv.family}: the mean test accuracy (%) of every configuration with each value of a "
            f"swept axis (averaged over the other axes), with its 95% confidence interval. Panels "
            f"are ordered by importance, the score in each title; method: {method}. Numeric axes "
            f"spread over decades, such as the learning rate, are on a log scale.")


def _effects_ylim(levels: list[EffectLevel]) -> tuple[float, float]:
    """The means with room for their intervals, but not so much that wide intervals (few
    configurations per value) flatten the differences between the means: bars may run off."""
    means = [percent(lv.mean) for lv in levels if lv.mean is not None]
    ends = means + [percent(end) for lv in levels if lv.ci95 for end in lv.ci95]
    room = 1.5 * max(max(means) - min(means), 0.5)
    return (max(min(ends), min(means) - room, 0.0) - 0.1 * room,
            min(max(ends), max(means) + room, 100.0) + 0.1 * room)


def _effect_panel(ax, effect: MainEffect) -> None:
    values = [level.value for level in effect.levels]
    numeric = all(_is_number(v) for v in values)
    x_of = (lambda i, v: v) if numeric else (lambda i, v: i)
    shown = [(x_of(i, lv.value), lv) for i, lv in enumerate(effect.levels) if lv.mean is not None]
    xs, ys = [x for x, _ in shown], [percent(lv.mean) for _, lv in shown]
    ax.errorbar(xs, ys, yerr=error_bars(ys, [lv.ci95 for _, lv in shown], 100, PERCENT), fmt="none",
                ecolor="0.45", elinewidth=1, capsize=2)
    if numeric:  # the trend between values; categories have no order to join
        ax.plot(xs, ys, color="C0", linewidth=0.8, alpha=0.6)
    for x, y, (_, level) in zip(xs, ys, shown):
        line, = ax.plot([x], [y], "o", color="C0", markersize=4)
        tooltip(line, f"{effect.axis}={value_text(level.value)}: {y:.2f}%{ci_text(level.ci95)}, "
                      f"mean of {level.n} configurations")
    _value_axis(ax, effect, values, numeric)


def _value_axis(ax, effect: MainEffect, values: list, numeric: bool) -> None:
    """Categories evenly spaced; numbers where they are (log: over decades), each value
    ticked where there are few (a grid), the scale's own ticks where many (random search)."""
    if numeric and effect.log_scale and min(values) > 0:
        log_axis(ax.xaxis, ax.set_xscale)
        if max(values) / min(values) >= 100:  # 1-2-5 ticks would crowd a small panel
            ax.xaxis.set_major_locator(LogLocator(10))
    if not numeric:
        ax.set_xticks(range(len(values)), [value_text(v) for v in values])
        ax.set_xlim(-0.5, len(values) - 0.5)
    elif len(values) <= TICKED_LEVELS:
        ax.set_xticks(values, [value_text(v) for v in values])
        ax.xaxis.set_minor_formatter("")
    names = 0 if numeric else sum(len(value_text(v)) for v in values)
    if (len(values) > 4 or names > 16) and (not numeric or len(values) <= TICKED_LEVELS):
        ax.tick_params(axis="x", labelrotation=45)  # a label per value: tilted to fit
    ax.set_xlabel(effect.axis, fontsize=7)


# ---------------------------------------------------------------- parallel coordinates


@dataclass(frozen=True)
class _Scale:
    """Where a value sits on one vertical axis (0 bottom, 1 top), and the labelled ticks."""

    position: Callable[[object], float]
    ticks: tuple[tuple[float, str], ...]


def _levels_scale(values: list) -> _Scale:
    """Each distinct value evenly spaced, in order: grids have few values per axis."""
    distinct = sorted(set(values), key=value_order)
    span = max(len(distinct) - 1, 1)
    spot = {v: (i / span if len(distinct) > 1 else 0.5) for i, v in enumerate(distinct)}
    return _Scale(spot.__getitem__, tuple((spot[v], value_text(v)) for v in distinct))


def _numeric_scale(values: list[float], log: bool) -> _Scale:
    """Values placed by their size (log10 where `log`), five labelled ticks."""
    f = math.log10 if log else (lambda v: v)
    lo, hi = f(min(values)), f(max(values))
    span = (hi - lo) or 1.0
    ticks = [lo + span * i / 4 for i in range(5)]
    back = (lambda t: 10 ** t) if log else (lambda t: t)
    return _Scale(lambda v: (f(v) - lo) / span,
                  tuple(((t - lo) / span, f"{back(t):.3g}") for t in ticks))


def _scale(values: list, log: bool) -> _Scale:
    distinct = set(values)
    if len(distinct) <= TICKED_LEVELS or not all(_is_number(v) for v in distinct):
        return _levels_scale(values)
    return _numeric_scale(values, log and min(distinct) > 0)


def draw_parallel(fig: Figure, fv: FamilyVerdict) -> str | None:
    """Every configuration of the family as a line through its swept values and accuracy."""
    rows = sorted((s for s in fv.standings if s.mean is not None), key=lambda s: s.mean)
    names = list(fv.swept)
    if not rows or not names:
        return None
    logs = {e.axis for e in fv.effects if e.log_scale}
    scales = [_scale([s.group.config.get(a) for s in rows], a in logs) for a in names]
    accuracy = [percent(s.mean) for s in rows]
    scales.append(_numeric_scale(accuracy, log=False))
    fig.set_size_inches(max(4.5, 1.4 * len(scales) + 1.2), 3.0)
    ax = fig.add_subplot()
    norm = Normalize(min(accuracy), max(accuracy))
    mappable = ScalarMappable(norm, CMAP)
    for s, acc in zip(rows, accuracy):  # the most accurate last: drawn on top
        ys = [sc.position(s.group.config.get(a)) for sc, a in zip(scales, names)]
        ys.append(scales[-1].position(acc))
        best = fv.best is not None and s.group is fv.best.group
        line, = ax.plot(range(len(scales)), ys, color=mappable.to_rgba(acc),
                        linewidth=2.2 if best else 0.8, alpha=1.0 if best else 0.7)
        tooltip(line, f"{s.label}: {acc:.2f}%{ci_text(s.ci95)}, {s.ok_text}")
    _parallel_axes(ax, scales, [*names, "test acc %"])
    fig.colorbar(mappable, ax=ax, label="mean test acc %", fraction=0.04, pad=0.02)
    left_out = len(fv.standings) - len(rows)
    return (f"{fv.family}: every configuration as one line through its value on each swept axis "
            f"and its mean test accuracy over the ok seeds (the colour too); the verdict's best is "
            f"drawn thick. An axis with at most {TICKED_LEVELS} values spaces them evenly."
            + (f" {left_out} configurations with no ok seed are left out." if left_out else ""))


def _parallel_axes(ax, scales: list[_Scale], titles: list[str]) -> None:
    for i, scale in enumerate(scales):
        ax.axvline(i, color="0.2", linewidth=0.8)
        for y, text in scale.ticks:
            ax.text(i - 0.04, y, text, ha="right", va="center", fontsize=6,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})
    ax.set_xticks(range(len(scales)), titles)
    ax.set_yticks([])
    ax.set_xlim(-0.45, len(scales) - 0.92)
    ax.set_ylim(-0.06, 1.06)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
