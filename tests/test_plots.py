"""The report's plots: which exist and where they go, the learning rate on a log axis, one
colour scale for the heatmaps, a tooltip on every point, and legends off the data."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import Normalize

import report_data
from bench.read.render import plots
from bench.read.render.aggregate import group_trials
from bench.read.render.plot_kit import RC, new_figure, svg_markup, tooltip, tooltip_of
from bench.read.render.runs import load_runs
from bench.read.render.sweep_plots import CMAP, draw_effects, draw_parallel
from bench.read.render.verdict import (EffectLevel, FamilyVerdict, Importance, MainEffect,
                                       verdict)

SVG = "{http://www.w3.org/2000/svg}"
LEARNING_RATES = (0.0001, 0.001, 0.01, 0.1)


def _sweep(root, records):
    run = report_data.write_run(root, report_data.header(), records)
    runs = load_runs([run])
    groups = group_trials(runs)
    return runs, groups, verdict(runs, groups)


def _lr_records() -> list[dict]:
    """Two families × two activations × four learning rates × two seeds (adam only)."""
    return [report_data.record(report_data.config(m, 16, a, "adam", s) | {"learning_rate": lr})
            for m in ("dense", "conv") for a in ("relu", "tanh") for lr in LEARNING_RATES
            for s in (0, 1)]


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("golden") / "run", report_data.golden_records())


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("lr") / "run", _lr_records())


@pytest.fixture(scope="module")
def golden_plots(golden):
    return plots.all_plots(*golden)


def _drawn(draw, *args):
    """A figure as render_plot draws it (the report's settings), and the caption."""
    with matplotlib.rc_context(RC):
        fig = new_figure()
        caption = draw(fig, *args)
        fig.draw_without_rendering()  # lays out: legends and colour bars find their places
    return fig, caption


def _titles(svg: str) -> list[str]:
    return [t.text for t in ET.fromstring(svg).iter(f"{SVG}title")]


# ---------------------------------------------------------------- which plots, where


def test_plot_ids_and_sections(golden_plots):
    assert [(p.id, p.section) for p in golden_plots] == [
        ("effects-conv", "mattered"), ("effects-dense", "mattered"),
        ("parallel-conv", "mattered"), ("parallel-dense", "mattered"),
        ("curves", "leaderboard"), ("pareto-front", "pareto"), ("units-accuracy", "pareto"),
        ("units-throughput", "pareto"), ("heatmaps", "pivots")]
    for p in golden_plots:
        assert ET.fromstring(p.svg).tag == f"{SVG}svg"  # well-formed XML, tooltips included
        assert p.caption and p.title


def test_plots_are_deterministic(golden, golden_plots):
    assert [p.svg for p in plots.all_plots(*golden)] == [p.svg for p in golden_plots]


def test_family_names_become_safe_distinct_plot_ids():
    assert plots.family_slug("dense") == "dense"
    hostile = [plots.family_slug(name) for name in ("../x y", "x-y", "<X Y>", "")]
    assert all(re.fullmatch(r"[a-z0-9_-]+", s) for s in hostile)
    assert len(set(hostile)) == len(hostile)


# ---------------------------------------------------------------- main effects


def test_effects_put_the_learning_rate_on_a_log_axis_ordered_by_importance(lr_sweep):
    runs, groups, v = lr_sweep
    for fv in v.families:
        fig, caption = _drawn(draw_effects, fv)
        panels = {ax.get_xlabel(): ax for ax in fig.axes}
        assert set(panels) == {"learning_rate", "activation"} == set(fv.swept)
        assert panels["learning_rate"].get_xscale() == "log"
        assert panels["activation"].get_xscale() == "linear"
        assert [t.get_text() for t in panels["activation"].get_xticklabels()] == ["relu", "tanh"]
        assert [ax.get_title() for ax in fig.axes] == [f"{a} · {s:.2f}"
                                                       for a, s in fv.importance.axes]
        assert fv.importance.method in caption


def test_effects_show_every_mean_however_far_off():
    """A value whose one configuration diverged sits far below the others, without an
    interval: it stays on the panel (wide intervals may run off it, a mean never does)."""
    levels = (EffectLevel(0.001, 0.97, (0.96, 0.98), 4), EffectLevel(0.01, 0.96, (0.95, 0.97), 4),
              EffectLevel(0.1, 0.5, None, 1))
    fv = FamilyVerdict("dense", None, (), (), 9, 1, 0, ("learning_rate",),
                       (MainEffect("learning_rate", levels, True),),
                       Importance("main-effect variance share", (("learning_rate", 1.0),)), ())
    fig, caption = _drawn(draw_effects, fv)
    [ax] = fig.axes
    low, high = ax.get_ylim()
    means = [line.get_ydata()[0] for line in ax.get_lines() if tooltip_of(line)]
    assert means == pytest.approx([97, 96, 50]) and low < 50 and high > 97


def test_effects_plot_is_compact_and_every_level_has_a_tooltip(lr_sweep):
    runs, groups, v = lr_sweep
    by_id = {p.id: p for p in plots.all_plots(runs, groups, v)}
    for fv in v.families:
        svg = by_id[f"effects-{fv.family}"].svg
        height_pt = float(re.search(r'<svg[^>]*\bheight="([\d.]+)pt"', svg).group(1))
        assert 150 <= height_pt * 4 / 3 <= 300  # px: one row beside the verdict
        expected = [f"{e.axis}={lv.value:g}" if e.axis == "learning_rate" else f"{e.axis}={lv.value}"
                    for e in fv.effects for lv in e.levels if lv.mean is not None]
        titles = _titles(svg)
        assert sorted(t.split(":")[0] for t in titles) == sorted(expected)
        assert all("95% CI" in t for t in titles)


# ---------------------------------------------------------------- parallel coordinates


def test_parallel_plot_draws_every_configuration_coloured_by_accuracy(lr_sweep):
    runs, groups, v = lr_sweep
    fv = v.families[0]
    fig, caption = _drawn(draw_parallel, fv)
    ax, colour_bar = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == [*fv.swept, "test acc %"]
    lines = [line for line in ax.get_lines() if tooltip_of(line)]
    assert sorted(tooltip_of(line).split(":")[0] for line in lines) == \
        sorted(s.label for s in fv.standings if s.mean is not None)
    top = max(lines, key=lambda line: line.get_linewidth())
    assert tooltip_of(top).startswith(fv.best.label + ":")
    assert colour_bar.get_ylabel() == "mean test acc %"
    assert np.allclose(top.get_color(), matplotlib.colormaps[CMAP](1.0))


# ---------------------------------------------------------------- heatmaps


def test_heatmaps_share_one_colour_scale_and_have_a_colour_bar(golden):
    runs, groups, v = golden
    fig, caption = _drawn(plots.draw_heatmaps, v, runs)
    panels = [ax for ax in fig.axes if ax.get_xlabel() == "optimizer"]
    [colour_bar] = [ax for ax in fig.axes if ax not in panels]
    by_label = {s.label: 100 * s.mean for fv in v.families for s in fv.standings if s.mean}
    cells = [[(by_label[tooltip_of(p).split(":")[0]], p) for p in ax.patches if tooltip_of(p)]
             for ax in panels]
    values = [value for panel in cells for value, _ in panel]
    assert len(panels) == 2 and len(values) == 8
    # the panels' ranges differ, so a scale of their own would colour them differently
    assert {(min(vs), max(vs)) for vs in ([value for value, _ in c] for c in cells)} != \
        {(min(values), max(values))}
    assert colour_bar.get_ylim() == pytest.approx((min(values), max(values)))
    norm, cmap = Normalize(min(values), max(values)), matplotlib.colormaps[CMAP]
    for value, patch in (cell for panel in cells for cell in panel):
        assert np.allclose(patch.get_facecolor(), cmap(norm(value)))
    assert "best" in caption and "One colour scale" in caption


# ---------------------------------------------------------------- Pareto front, tooltips


def test_every_pareto_point_has_a_tooltip_naming_its_configuration(golden, golden_plots):
    runs, groups, v = golden
    [pareto] = [p for p in golden_plots if p.id == "pareto-front"]
    timed = [s for fv in v.families for s in fv.standings
             if s.mean is not None and s.train_s is not None]
    titles = _titles(pareto.svg)
    assert sorted(t.split(":")[0] for t in titles) == sorted(s.label for s in timed)
    front = {s.label for fv in v.families for s in fv.pareto}
    assert {t.split(":")[0] for t in titles if t.endswith("on the Pareto front")} == front
    groups_with_title = [g for g in ET.fromstring(pareto.svg).iter(f"{SVG}g")
                         if g.find(f"{SVG}title") is not None]
    assert all(len(list(g.iter(f"{SVG}use"))) == 1 for g in groups_with_title)  # one marker each


def test_tooltips_are_escaped_xml():
    hostile = 'relu$x$<img src=x onerror=alert(4)> & "q"'
    with matplotlib.rc_context(RC):
        fig = new_figure()
        line, = fig.add_subplot().plot([1], [2], "o")
        tooltip(line, hostile)
        svg = svg_markup(fig)
    assert "<img" not in svg
    assert _titles(svg) == [hostile]


# ---------------------------------------------------------------- legends


@pytest.mark.parametrize("draw", [plots.draw_curves, plots.draw_pareto,
                                  plots.draw_units_accuracy, plots.draw_units_throughput])
def test_legends_sit_outside_the_axes(golden, draw):
    runs, groups, v = golden
    fig, caption = _drawn(draw, v)
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends and caption
    for legend in legends:
        box = legend.get_window_extent()
        assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
