"""The report's plots, drawn with matplotlib (no pyplot, no global backend) as inline SVG.

Text in the SVG is user text too (trial and run labels): matplotlib escapes it as
XML, mathtext is switched off so a '$' in a name is just a dollar sign, and
fonts are left to the browser (svg.fonttype 'none') to keep files small.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from bench.read.render.aggregate import Group, families, pareto_front, ranked
from bench.read.render.runs import Run
from bench.read.render.sections import pivot_cells

CURVES_PER_FAMILY = 6
MARKERS = "os^Dv<>p*h"
LINESTYLES = ("-", "--", ":", "-.")
RC = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 8,
      "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 6, "axes.titlesize": 9}


@dataclass(frozen=True)
class Plot:
    """One figure of the report: a title, what it shows, and its inline SVG markup."""

    id: str
    title: str
    caption: str
    svg: str


Draw = Callable[[Figure, list[Run], list[Group]], "str | None"]


def render_plot(plot_id: str, title: str, draw: Draw, runs: list[Run],
                groups: list[Group]) -> Plot | None:
    """Draws one figure; None when `draw` finds nothing to show (it returns no caption)."""
    with matplotlib.rc_context({**RC, "svg.hashsalt": plot_id}):  # the salt: deterministic ids
        fig = Figure()
        caption = draw(fig, runs, groups)
        if caption is None:
            return None
        return Plot(plot_id, title, caption, scoped_ids(svg_markup(fig), plot_id))


def svg_markup(fig: Figure) -> str:
    """`fig` as an <svg> element for inline HTML: no XML prolog, DOCTYPE, metadata or comments."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    text = re.sub(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return text.strip()


def scoped_ids(svg: str, prefix: str) -> str:
    """The SVG with its ids and references to them prefixed: several figures share one page.

    Only tags are rewritten; text between them (user text, escaped) is left alone.
    """
    def scope(tag: str) -> str:
        tag = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', tag)
        tag = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', tag)
        return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", tag)
    return re.sub(r"<[^<>]*>", lambda m: scope(m.group(0)), svg)


def _family_axes(fig: Figure, count: int) -> list:
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig.set_size_inches(3.4 * cols, 2.8 * rows)
    return [fig.add_subplot(rows, cols, i + 1) for i in range(count)]


def _colors(names: list[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _mean_curve(g: Group) -> tuple[list[int], list[float]]:
    """Mean test accuracy (%) per epoch over the ok trials."""
    per_epoch: dict[int, list[float]] = {}
    for r in g.ok:
        for h in r.history:
            if h.get("test_accuracy") is not None:
                per_epoch.setdefault(h["epoch"], []).append(100 * h["test_accuracy"])
    epochs = sorted(per_epoch)
    return epochs, [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]


def _tag(g: Group, runs: list[Run]) -> str:
    return g.label if len(runs) == 1 else f"{g.label} · {g.run}"


def draw_curves(fig: Figure, runs: list[Run], groups: list[Group]) -> str | None:
    """Test accuracy per epoch of the most accurate configurations of each family."""
    order = ranked(groups)
    names = families(order)
    if not names:
        return None
    for ax, family in zip(_family_axes(fig, len(names)), names):
        best = [g for g in order if g.family == family][:CURVES_PER_FAMILY]
        for i, g in enumerate(best):
            epochs, acc = _mean_curve(g)
            ax.plot(epochs, acc, marker=".", color=f"C{i}", linestyle=LINESTYLES[g.run_index % 4],
                    label=_tag(g, runs))
        ax.set(title=family, xlabel="epoch", ylabel="test accuracy %")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="lower right")
    fig.tight_layout()
    return (f"Mean test accuracy after each epoch (over the seeds that finished ok) of the most "
            f"accurate configurations, at most {CURVES_PER_FAMILY} per family; all are in the tables.")


def draw_heatmaps(fig: Figure, runs: list[Run], groups: list[Group]) -> str | None:
    """Mean test accuracy, activation × optimizer, one panel per family (and run)."""
    panels = [(i, f) for f in families(groups) for i in sorted({g.run_index for g in groups
                                                                if g.family == f})]
    if not ranked(groups):
        return None
    for ax, (index, family) in zip(_family_axes(fig, len(panels)), panels):
        members = [g for g in groups if g.family == family and g.run_index == index]
        _heatmap(ax, members)
        ax.set_title(family if len(runs) == 1 else f"{family} · {runs[index].label}")
    fig.tight_layout()
    return ("Mean test accuracy % of the most accurate configuration with each activation and "
            "optimizer (as in the accuracy tables); blank: no trial finished ok.")


def _heatmap(ax, members: list[Group]) -> None:
    cells = pivot_cells(members)
    acts = sorted({g.config["activation"] for g in members})
    opts = sorted({g.config["optimizer"] for g in members})
    values = [[_best_accuracy(cells.get((members[0].run_index, a, o))) for o in opts] for a in acts]
    masked = [[math.nan if v is None else v for v in row] for row in values]
    mesh = ax.pcolormesh(masked, cmap="viridis", edgecolors="white", linewidth=0.5)
    for y, row in enumerate(values):
        for x, v in enumerate(row):
            if v is not None:  # dark text on the bright (high) end of viridis
                bright = mesh.norm(v) > 0.6
                ax.text(x + 0.5, y + 0.5, f"{v:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if bright else "white")
    ax.set_xticks([i + 0.5 for i in range(len(opts))], opts)
    ax.set_yticks([i + 0.5 for i in range(len(acts))], acts)
    ax.set(xlabel="optimizer", ylabel="activation")
    ax.grid(False)


def _best_accuracy(members: list[Group] | None) -> float | None:
    mean = members[0].metric("test_accuracy").mean if members else None
    return None if mean is None else 100 * mean


def _scatter_by_family(ax, runs: list[Run], groups: list[Group], x, y) -> None:
    """One point per configuration: colour by family, marker by run."""
    colors = _colors(families(groups))
    for family in families(groups):
        for index, run in enumerate(runs):
            points = [(x(g), y(g)) for g in groups if g.family == family and g.run_index == index]
            points = [(a, b) for a, b in points if a is not None and b is not None]
            if points:
                name = family if len(runs) == 1 else f"{family} · {run.label}"
                ax.scatter(*zip(*points), s=14, color=colors[family], marker=MARKERS[index % 10],
                           alpha=0.75, label=name, linewidths=0)
    ax.legend(loc="best")


def _log_axis(axis, set_scale, base: int = 10) -> None:
    """A log scale with plain tick labels (the default ones are mathtext, which is off)."""
    set_scale("log", base=base)
    if base == 10:  # 1-2-5 ticks: a range inside one decade still gets labels
        axis.set_major_locator(LogLocator(10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _mean(name: str, scale: float = 1.0) -> Callable[[Group], float | None]:
    def get(g: Group) -> float | None:
        value = g.metric(name).mean
        return None if value is None else scale * value
    return get


def draw_pareto(fig: Figure, runs: list[Run], groups: list[Group]) -> str | None:
    """Accuracy against training time, every configuration, the Pareto front as a line."""
    front = pareto_front(groups)
    if not front:
        return None
    fig.set_size_inches(6.5, 3.8)
    ax = fig.add_subplot()
    _scatter_by_family(ax, runs, groups, _mean("train_s"), _mean("test_accuracy", 100))
    xs, ys = [_mean("train_s")(g) for g in front], [_mean("test_accuracy", 100)(g) for g in front]
    ax.plot(xs, ys, color="black", drawstyle="steps-post", linewidth=1, label="Pareto front")
    ax.scatter(xs, ys, s=40, facecolors="none", edgecolors="black", linewidths=1)
    _log_axis(ax.xaxis, ax.set_xscale)
    ax.set(xlabel="train s (sum of epoch times, log scale)", ylabel="test accuracy %")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return (f"One point per configuration (mean over seeds); circled and joined: the {len(front)} "
            f"configurations no other beats on both accuracy and training time.")


def _units_figure(fig: Figure, runs, groups, metric: Callable, ylabel: str, log_y: bool) -> bool:
    if not any(metric(g) is not None for g in groups):
        return False
    fig.set_size_inches(6.5, 3.4)
    ax = fig.add_subplot()
    _scatter_by_family(ax, runs, groups, lambda g: g.config.get("units"), metric)
    _log_axis(ax.xaxis, ax.set_xscale, base=2)
    ax.set(xlabel="units (log scale)", ylabel=ylabel)
    if log_y:
        _log_axis(ax.yaxis, ax.set_yscale)
    fig.tight_layout()
    return True


def draw_units_accuracy(fig: Figure, runs: list[Run], groups: list[Group]) -> str | None:
    if not _units_figure(fig, runs, groups, _mean("test_accuracy", 100), "test accuracy %", False):
        return None
    return "Mean test accuracy of every configuration against its width (units)."


def draw_units_throughput(fig: Figure, runs: list[Run], groups: list[Group]) -> str | None:
    if not _units_figure(fig, runs, groups, _mean("samples_per_s"), "samples/s (log scale)", True):
        return None
    return ("Training throughput (median of the timed rounds) of every configuration against its "
            "width.")


PLOTS: list[tuple[str, str, Draw]] = [
    ("plot-curves", "Learning curves", draw_curves),
    ("plot-heatmaps", "Accuracy by activation and optimizer", draw_heatmaps),
    ("plot-pareto", "Accuracy vs training time", draw_pareto),
    ("plot-units-accuracy", "Units vs accuracy", draw_units_accuracy),
    ("plot-units-throughput", "Units vs throughput", draw_units_throughput),
]


def all_plots(runs: list[Run], groups: list[Group]) -> list[Plot]:
    """Every plot that has data to show, in report order."""
    plots = [render_plot(pid, title, draw, runs, groups) for pid, title, draw in PLOTS]
    return [p for p in plots if p is not None]
