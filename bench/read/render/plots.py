"""The report's plots, each an inline SVG placed in a report section (Plot.section).

Every figure shows the one analysis of the sweep (bench.read.render.verdict): its
standings, effects, importance and Pareto front; no plot ranks configurations itself.
How figures become SVG, tooltips included, is in plot_kit.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from bench.read.render.aggregate import Group
from bench.read.render.plot_kit import (PERCENT, RC, ci_text, error_bars, family_colors,
                                        log_axis, new_figure, panel_grid, percent, scoped_ids,
                                        svg_markup, tooltip)
from bench.read.render.runs import Run
from bench.read.render.sweep_plots import CMAP, draw_effects, draw_parallel
from bench.read.render.verdict import FamilyVerdict, Standing, Verdict, verdict

CURVES_PER_FAMILY = 6
MARKERS = "os^Dv<>p*h"
LINESTYLES = ("-", "--", ":", "-.")
POINT = {"color": "C0", "markersize": 3.5, "markeredgewidth": 0, "alpha": 0.8}
FRONT = {"color": "C1", "markersize": 6, "markeredgecolor": "black", "markeredgewidth": 0.8}


@dataclass(frozen=True)
class Plot:
    """One figure of the report: a title, what it shows, and its inline SVG markup."""

    id: str
    title: str
    caption: str
    svg: str
    section: str = "plots"  # the report section (document.Section.id) the plot is shown in


Draw = Callable[[Figure], "str | None"]  # draws into the figure; returns the caption, None: no plot


def render_plot(plot_id: str, title: str, section: str, draw: Draw) -> Plot | None:
    """Draws one figure; None when `draw` finds nothing to show (it returns no caption)."""
    with matplotlib.rc_context({**RC, "svg.hashsalt": plot_id}):  # the salt: deterministic ids
        fig = new_figure()
        caption = draw(fig)
        if caption is None:
            return None
        return Plot(plot_id, title, caption, scoped_ids(svg_markup(fig), plot_id), section)


def family_slug(family: str) -> str:
    """The family as a plot id part (ids name files and HTML anchors): [a-z0-9_-] only, and
    a short hash where anything had to be replaced, so that different names stay apart."""
    slug = re.sub(r"[^a-z0-9_]+", "-", family.lower()).strip("-")
    if slug and slug == family:
        return slug
    return f"{slug or 'family'}-{hashlib.sha256(family.encode('utf-8')).hexdigest()[:6]}"


# ---------------------------------------------------------------- learning curves


def _mean_curve(g: Group) -> tuple[list[int], list[float]]:
    """Mean test accuracy (%) per epoch over the ok trials."""
    per_epoch: dict[int, list[float]] = {}
    for r in g.ok:
        for h in r.history:
            if h.get("test_accuracy") is not None:
                per_epoch.setdefault(h["epoch"], []).append(100 * h["test_accuracy"])
    epochs = sorted(per_epoch)
    return epochs, [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]


def _top(fv: FamilyVerdict) -> list[Standing]:
    return [s for s in fv.standings if s.mean is not None][:CURVES_PER_FAMILY]


def draw_curves(fig: Figure, v: Verdict) -> str | None:
    """Test accuracy per epoch of the best configurations of each family (the verdict's order)."""
    shown = [fv for fv in v.families if _top(fv)]
    if not shown:
        return None
    for ax, fv in zip(panel_grid(fig, len(shown), 3, 3.4, 3.0), shown):
        for i, s in enumerate(_top(fv)):
            epochs, acc = _mean_curve(s.group)
            if epochs:
                line, = ax.plot(epochs, acc, marker=".", color=f"C{i}", label=s.label,
                                linestyle=LINESTYLES[s.group.run_index % 4])
                tooltip(line, f"{s.label}: {acc[-1]:.2f}% after epoch {epochs[-1]}")
        ax.set(title=fv.family, xlabel="epoch", ylabel="test accuracy %")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:  # a family whose every seed failed has no curve
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3))  # below: never on the data
    return (f"Mean test accuracy after each epoch (over the seeds that finished ok) of the best "
            f"configurations of the ranking, at most {CURVES_PER_FAMILY} per family; all are in "
            f"the tables.")


# ---------------------------------------------------------------- heatmaps


def _heat_cells(fv: FamilyVerdict, run_index: int) -> dict[tuple[str, str], Standing]:
    """(activation, optimizer) -> the best configuration there (the verdict's order) with an
    accuracy."""
    cells: dict[tuple[str, str], Standing] = {}
    for s in fv.standings:
        key = (s.group.config["activation"], s.group.config["optimizer"])
        if s.group.run_index == run_index and s.mean is not None:
            cells.setdefault(key, s)
    return cells


def _heat_panels(v: Verdict) -> list[tuple[FamilyVerdict, int]]:
    return [(fv, i) for fv in v.families for i in sorted({s.group.run_index for s in fv.standings})]


def draw_heatmaps(fig: Figure, v: Verdict, runs: list[Run]) -> str | None:
    """Test accuracy, activation × optimizer, one panel per family (and run), one colour scale."""
    panels = _heat_panels(v)
    values = [percent(s.mean) for fv, i in panels for s in _heat_cells(fv, i).values()]
    if not values:
        return None
    mappable = ScalarMappable(Normalize(min(values), max(values)), CMAP)
    axes = panel_grid(fig, len(panels), 3, 3.0, 2.4)
    for ax, (fv, index) in zip(axes, panels):
        _heatmap(ax, fv, index, mappable)
        ax.set_title(fv.family if len(runs) == 1 else f"{fv.family} · {runs[index].label}")
    fig.colorbar(mappable, ax=axes, label="mean test acc %", shrink=0.9)
    return ("Each cell: the mean test accuracy % (over its ok seeds) of the best configuration "
            "with that activation and optimizer in the ranking — the best over the other axes, "
            "not their mean. One colour scale for every panel; blank: no trial finished ok.")


def _heatmap(ax, fv: FamilyVerdict, run_index: int, mappable: ScalarMappable) -> None:
    members = [s for s in fv.standings if s.group.run_index == run_index]
    acts = sorted({s.group.config["activation"] for s in members})
    opts = sorted({s.group.config["optimizer"] for s in members})
    cells = _heat_cells(fv, run_index)
    for y, act in enumerate(acts):
        for x, opt in enumerate(opts):
            if (s := cells.get((act, opt))) is not None:
                _heat_cell(ax, x, y, s, mappable)
    ax.set_xticks([i + 0.5 for i in range(len(opts))], opts)
    ax.set_yticks([i + 0.5 for i in range(len(acts))], acts)
    ax.set(xlim=(0, len(opts)), ylim=(0, len(acts)), xlabel="optimizer", ylabel="activation")
    ax.grid(False)


def _heat_cell(ax, x: int, y: int, s: Standing, mappable: ScalarMappable) -> None:
    value = percent(s.mean)
    tip = f"{s.label}: {value:.2f}%{ci_text(s.ci95)}, {s.ok_text}"
    tooltip(ax.add_patch(Rectangle((x, y), 1, 1, facecolor=mappable.to_rgba(value),
                                   edgecolor="white", linewidth=0.5)), tip)
    bright = mappable.norm(value) > 0.6  # dark text on the bright (high) end of viridis
    tooltip(ax.text(x + 0.5, y + 0.5, f"{value:.1f}", ha="center", va="center", fontsize=7,
                    color="black" if bright else "white"), tip)


# ---------------------------------------------------------------- Pareto front


def _timed(fv: FamilyVerdict) -> list[Standing]:
    return [s for s in fv.standings if s.mean is not None and s.train_s is not None]


def draw_pareto(fig: Figure, v: Verdict) -> str | None:
    """Accuracy against training time per family, means with error bars, the verdict's front."""
    shown = [fv for fv in v.families if fv.pareto and _timed(fv)]
    if not shown:
        return None
    axes = panel_grid(fig, len(shown), 3, 3.4, 2.8)
    for ax, fv in zip(axes, shown):
        _pareto_panel(ax, fv)
    handles = [Line2D([], [], marker="o", linestyle="none", label="configuration", **POINT),
               Line2D([], [], marker="o", linestyle="none", label="on the Pareto front", **FRONT)]
    fig.legend(handles=handles, loc="outside lower center", ncols=2)
    return ("One point per configuration: mean test accuracy against mean training time (log "
            "scale) over its ok seeds; both bars are 95% confidence intervals over the seeds. "
            "Ringed: the Pareto front, the configurations with every seed ok that no other beats "
            "on accuracy or training time by more than the seed noise without losing on the other.")


def _pareto_panel(ax, fv: FamilyVerdict) -> None:
    points = _timed(fv)
    xs, ys = [s.train_s for s in points], [percent(s.mean) for s in points]
    ax.errorbar(xs, ys, xerr=error_bars(xs, [s.train_ci95 for s in points], bounds=(0, math.inf)),
                yerr=error_bars(ys, [s.ci95 for s in points], 100, PERCENT), fmt="none",
                ecolor="0.8", elinewidth=0.5)
    on_front = {id(s.group) for s in fv.pareto}
    for s, x, y in sorted(zip(points, xs, ys), key=lambda p: id(p[0].group) in on_front):
        front = id(s.group) in on_front  # drawn last: on top
        line, = ax.plot([x], [y], "o", **(FRONT if front else POINT))
        tooltip(line, f"{s.label}: {y:.2f}%{ci_text(s.ci95)}, {x:.3g} s training, {s.ok_text}"
                      + (", on the Pareto front" if front else ""))
    log_axis(ax.xaxis, ax.set_xscale)
    ax.set(title=fv.family, xlabel="train s (sum of epoch times)", ylabel="test accuracy %")


# ---------------------------------------------------------------- width


def _scatter_units(ax, v: Verdict, metric: Callable[[Standing], float | None],
                   unit: str) -> None:
    """One point per configuration: colour by family, marker by run; the legend on the right."""
    colors = family_colors([fv.family for fv in v.families])
    for fv in v.families:
        for s in fv.standings:
            x, y = s.group.config.get("units"), metric(s)
            if x is not None and y is not None:
                line, = ax.plot([x], [y], MARKERS[s.group.run_index % 10], color=colors[fv.family],
                                markersize=4, alpha=0.75, markeredgewidth=0)
                tooltip(line, f"{s.label}: {y:,.4g}{unit}, {s.ok_text}")
    runs = sorted({(s.group.run_index, s.group.run) for fv in v.families for s in fv.standings})
    handles = [Line2D([], [], color=colors[fv.family], marker="o", linestyle="none",
                      label=fv.family) for fv in v.families]
    if len(runs) > 1:
        handles += [Line2D([], [], color="0.4", marker=MARKERS[i % 10], linestyle="none",
                           label=run) for i, run in runs]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5))


def _units_figure(fig: Figure, v: Verdict, metric: Callable[[Standing], float | None],
                  ylabel: str, unit: str, log_y: bool) -> bool:
    if not any(metric(s) is not None and s.group.config.get("units") is not None
               for fv in v.families for s in fv.standings):
        return False
    fig.set_size_inches(6.5, 3.2)
    ax = fig.add_subplot()
    _scatter_units(ax, v, metric, unit)
    log_axis(ax.xaxis, ax.set_xscale, base=2)
    ax.set(xlabel="units (log scale)", ylabel=ylabel)
    if log_y:
        log_axis(ax.yaxis, ax.set_yscale)
    return True


def draw_units_accuracy(fig: Figure, v: Verdict) -> str | None:
    if not _units_figure(fig, v, lambda s: percent(s.mean), "test accuracy %", "%", False):
        return None
    return ("Mean test accuracy (over the ok seeds) of every configuration against its width "
            "(units).")


def _throughput(s: Standing) -> float | None:
    return s.group.metric("samples_per_s").mean


def draw_units_throughput(fig: Figure, v: Verdict) -> str | None:
    if not _units_figure(fig, v, _throughput, "samples/s (log scale)", " samples/s", True):
        return None
    return ("Training throughput (median of the timed rounds, mean over the ok seeds) of every "
            "configuration against its width.")


# ---------------------------------------------------------------- the list


def plot_specs(runs: list[Run], v: Verdict) -> list[tuple[str, str, str, Draw]]:
    """(id, title, section, draw) of every plot, in report order: what mattered first.

    Ids share the HTML page's id space with the sections: hence 'pareto-front' in 'pareto'."""
    specs: list[tuple[str, str, str, Draw]] = []
    for fv in v.families:
        specs.append((f"effects-{family_slug(fv.family)}", f"{fv.family}: main effects",
                      "mattered", lambda fig, fv=fv: draw_effects(fig, fv)))
    for fv in v.families:
        specs.append((f"parallel-{family_slug(fv.family)}", f"{fv.family}: every configuration",
                      "mattered", lambda fig, fv=fv: draw_parallel(fig, fv)))
    return specs + [
        ("curves", "Learning curves", "leaderboard", lambda fig: draw_curves(fig, v)),
        ("pareto-front", "Accuracy vs training time", "pareto", lambda fig: draw_pareto(fig, v)),
        ("units-accuracy", "Units vs accuracy", "pareto",
         lambda fig: draw_units_accuracy(fig, v)),
        ("units-throughput", "Units vs throughput", "pareto",
         lambda fig: draw_units_throughput(fig, v)),
        ("heatmaps", "Accuracy by activation and optimizer", "pivots",
         lambda fig: draw_heatmaps(fig, v, runs)),
    ]


def all_plots(runs: list[Run], groups: list[Group], v: Verdict | None = None) -> list[Plot]:
    """Every plot that has data to show, in report order (`v`: the runs' verdict, if already
    computed)."""
    v = verdict(runs, groups) if v is None else v
    plots = [render_plot(pid, title, section, draw) for pid, title, section, draw
             in plot_specs(runs, v)]
    return [p for p in plots if p is not None]
