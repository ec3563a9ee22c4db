"""The report's opening sections and report.html's page: the verdict first, ties and seed
status in the leaderboard, plots inside their sections, and tables that read well, checked
in a real headless browser at 1400 px wide (sticky header, frozen first column, filter box).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

import report_data
from bench.read.render.aggregate import Group, seedless
from bench.read.render.document import Cell, Para, Report, Section, table
from bench.read.render.html import FILTER_ROWS, render_html
from bench.read.render.plots import Plot
from bench.read.render.report import render_run
from bench.read.render.sections import build_report
from bench.read.render.runs import load_runs
from bench.read.render.verdict import FamilyVerdict, Importance, Standing, Verdict
from bench.read.render.verdict_sections import leaderboard, mattered, pareto, verdict_section
from bench.contract.schema import Record
from test_report import GOLDEN_RUN, browse, needs_chromium

FIRST_SCREEN = 900  # px: the first screen of a 1400 × 900 window
TIE_TEST = "Welch's t-test, p >= 0.05"


# ---------------------------------------------------------------- a hand-made verdict


def _group(activation: str, accuracies: list[float | None]) -> Group:
    """A dense configuration whose seeds ended with `accuracies` (None: the seed failed)."""
    records = []
    for seed, acc in enumerate(accuracies):
        cfg = report_data.config("dense", 64, activation, "adam", seed)
        raw = report_data.record(cfg) if acc is not None else report_data.record(
            cfg, status="failed", error="RuntimeError: out of memory")
        records.append(Record.from_json(raw | ({"test_accuracy": acc} if acc is not None else {})))
    return Group("run", 0, seedless(records[0].config), tuple(records))


def _standing(g: Group, rank: int, tied: bool, ci=None) -> Standing:
    ok = [r.test_accuracy for r in g.ok]
    return Standing(g, g.records[0].config.config_id, g.label, len(g.records), len(ok),
                    sum(ok) / len(ok) if ok else None, ci, 1.0, rank, tied,
                    len(ok) == len(g.records))


def _verdict() -> Verdict:
    """Best relu (3/3 ok), gelu tied with it, tanh worse, sigmoid with 1 of 3 seeds ok."""
    best = _standing(_group("relu", [0.97, 0.971, 0.969]), 1, False, (0.9675, 0.9725))
    tied = _standing(_group("gelu", [0.968, 0.971, 0.970]), 1, True)
    worse = _standing(_group("tanh", [0.95, 0.951, 0.949]), 3, False)
    partial = _standing(_group("sigmoid", [0.99, None, None]), 4, False)
    family = FamilyVerdict("dense", best, (tied,), (best, tied, worse, partial), 12, 0, 2,
                           ("activation",), (), Importance("main-effect variance share",
                                                           (("activation", 0.93),)), (best,))
    return Verdict((family,), 12, 95.0, "run.json start to the last record", TIE_TEST, ())


def _cells(section: Section, column: str) -> list[str]:
    [found] = [b for b in section.blocks if hasattr(b, "columns") and column in b.columns]
    return [row[found.columns.index(column)].text for row in found.rows]


def test_verdict_names_the_best_its_interval_its_ties_and_the_test():
    runs = load_runs([GOLDEN_RUN])
    section = verdict_section(_verdict(), runs)
    assert section.id == "verdict"
    assert _cells(section, "best configuration") == ["dense-64 relu adam lr=0.001"]
    assert _cells(section, "95% CI") == ["96.75–97.25"]
    assert _cells(section, "seeds") == ["3/3 ok"] and _cells(section, "failed seeds") == ["2"]
    assert _cells(section, "tied with the best") == ["dense-64 gelu adam lr=0.001"]
    text = " ".join(b.caption if hasattr(b, "caption") else b.text for b in section.blocks
                    if hasattr(b, "caption") or isinstance(b, Para))
    assert TIE_TEST in text and "12 trials" in text and "1 min 35 s" in text


def test_leaderboard_marks_ties_and_counts_every_seed():
    runs = load_runs([GOLDEN_RUN])
    board = leaderboard(_verdict(), runs)
    assert _cells(board, "rank") == ["=1", "=1", "3", "4"]
    assert _cells(board, "status") == ["3/3 ok", "3/3 ok", "3/3 ok", "1/3 ok"]
    accuracy = next(c for c in board.blocks[0].columns if c.startswith("test acc %"))
    # (n=k) only where fewer than the configuration's seeds count
    assert [("(n=" in t) for t in _cells(board, accuracy)] == [False, False, False, True]


def test_pareto_front_is_the_verdicts_with_its_noise():
    section = pareto(_verdict(), load_runs([GOLDEN_RUN]))
    assert _cells(section, "configuration") == ["dense-64 relu adam lr=0.001"]
    assert _cells(section, "status") == ["3/3 ok"] and _cells(section, "95% CI") == ["96.75–97.25"]
    assert "by more than the seed noise" in section.blocks[-1].text


def test_what_mattered_names_the_method_and_the_best_value():
    section = mattered(_verdict())
    [imp] = section.blocks
    assert imp.columns == ("axis", "dense") and imp.rows[0][0].text == "activation"
    assert imp.rows[0][1].text == "0.93" and "main-effect variance share" in imp.caption


def test_the_report_opens_on_the_verdict():
    ids = [s.id for s in build_report(load_runs([GOLDEN_RUN])).sections]
    assert ids[:4] == ["verdict", "mattered", "leaderboard", "pareto"]
    assert ids[-1] == "environment" and len(ids) == len(set(ids))


# ---------------------------------------------------------------- HTML without a browser


def _plot(plot_id: str, section: str) -> Plot:
    return Plot(plot_id, plot_id, "a caption", f'<svg id="{plot_id}-svg"></svg>', section)


def test_plots_are_drawn_inside_their_section_after_its_blocks():
    report = Report("t", (Section("verdict", "Verdict", (Para("best: relu"),)),
                          Section("mattered", "What mattered", (Para("axes"),))))
    page = render_html(report, [_plot("effects-dense", "mattered"), _plot("stray", "nowhere")])
    mattered_part = page.split('<section id="mattered">', 1)[1].split("</section>", 1)[0]
    assert mattered_part.index("<p>axes</p>") < mattered_part.index('<figure id="effects-dense">')
    assert 'id="stray"' not in page.split('<section id="plots">')[0]  # homeless: a last section
    assert page.index('<section id="plots">') > page.index('<section id="mattered">')
    assert page.count("<figure") == 2


@pytest.mark.parametrize("rows, boxes", [(FILTER_ROWS, 0), (FILTER_ROWS + 1, 1)])
def test_only_long_tables_get_a_filter_box(rows, boxes):
    t = table("", [("configuration", False), ("error", False)],
              [[Cell(f"dense-{i} relu"), Cell("a long message")] for i in range(rows)],
              wrap=("error",))
    page = render_html(Report("t", (Section("trials", "All", (t,)),)), [])
    assert page.count('<input type="search" class="filter"') == boxes
    # labels stay on one line; only the prose column may wrap
    assert page.count('<td class="text">dense-') == rows and page.count('<td class="wrap">') == rows


# ---------------------------------------------------------------- in a headless browser


@pytest.fixture(scope="module")
def sweep_page(tmp_path_factory) -> Path:
    """report.html of a 504-trial sweep: three families, seven widths, four activations, ..."""
    root = tmp_path_factory.mktemp("sweep")
    run = report_data.write_run(root / "run", report_data.header(name="sweep"),
                                report_data.grid_records())
    [page] = render_run([run], ("html",), root / "out")
    return page


def _probe(script: str) -> str:
    """A script run after the page's own: it stores its JSON-able result on <body>."""
    return ("<script>(function () { var out = (function () {" + script + "})();"
            "document.body.setAttribute('data-probe', JSON.stringify(out)); })();</script>")


def _result(dom: str):
    return json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))


FIRST_SCREEN_PROBE = """
  function top(el) { return el.getBoundingClientRect().top + window.scrollY; }
  var verdict = document.getElementById('verdict').getBoundingClientRect();
  var svgs = Array.prototype.map.call(document.querySelectorAll('figure svg'), top);
  return {width: window.innerWidth, verdictTop: verdict.top + window.scrollY,
          verdictBottom: verdict.bottom + window.scrollY, firstPlot: Math.min.apply(null, svgs)};
"""


@pytest.mark.slow
@needs_chromium
def test_first_screen_holds_the_verdict_and_a_plot(sweep_page, tmp_path):
    dom, _ = browse(sweep_page, tmp_path, tail=_probe(FIRST_SCREEN_PROBE), window=(1400, 900))
    found = _result(dom)
    assert found["width"] == 1400
    assert found["verdictBottom"] <= FIRST_SCREEN, found  # the whole verdict, not its heading
    assert found["firstPlot"] <= FIRST_SCREEN - 100, found  # a plot shows at least 100 px of itself


# Scrolls the page to the all-configurations table, then the table's box down and right.
SCROLL_PROBE = """
  var box = document.querySelector('#trials .scroll');
  box.scrollIntoView();
  // the header's cells stick, not its row element: measure a cell
  var head = box.querySelector('thead th:nth-child(2)'), first = box.querySelector('tbody tr');
  var before = first.getBoundingClientRect().top;
  box.scrollTop = 3000; box.scrollLeft = 400;
  var cells = first.cells;
  return {boxTop: box.getBoundingClientRect().top, boxLeft: box.getBoundingClientRect().left,
          headTop: head.getBoundingClientRect().top, rowMoved: before - first.getBoundingClientRect().top,
          wide: box.scrollWidth > box.clientWidth, scrolledLeft: box.scrollLeft,
          firstLeft: cells[0].getBoundingClientRect().left,
          secondLeft: cells[1].getBoundingClientRect().left,
          labelHeight: cells[0].getBoundingClientRect().height,
          fontSize: parseFloat(getComputedStyle(cells[0]).fontSize)};
"""


@pytest.mark.slow
@needs_chromium
def test_long_table_keeps_its_header_and_first_column_in_view(sweep_page, tmp_path):
    dom, _ = browse(sweep_page, tmp_path, tail=_probe(SCROLL_PROBE))
    found = _result(dom)
    assert abs(found["boxTop"]) < 1, found  # the table's box sits at the top of the viewport
    assert found["rowMoved"] > 2000, found  # its rows scrolled up by thousands of pixels ...
    assert abs(found["headTop"] - found["boxTop"]) < 1, found  # ... its header row did not
    assert found["wide"] and found["scrolledLeft"] == 400, found  # wider than the page
    assert abs(found["firstLeft"] - found["boxLeft"]) < 1, found  # the label column stays
    assert found["secondLeft"] < found["boxLeft"], found  # while the others scroll away
    assert found["labelHeight"] < 2.2 * found["fontSize"], found  # labels on one line


FILTER_PROBE = """
  var input = document.querySelector('#trials input.filter');
  var rows = document.querySelector('#trials table').tBodies[0].rows;
  function shown() {
    return Array.prototype.filter.call(rows, function (r) { return !r.hidden && r.offsetHeight > 0; })
      .map(function (r) { return r.cells[0].textContent; });
  }
  input.value = 'DENSE-64 relu'; input.dispatchEvent(new Event('input'));
  var filtered = shown();
  input.value = ''; input.dispatchEvent(new Event('input'));
  return {filtered: filtered, cleared: shown().length, total: rows.length,
          boxes: document.querySelectorAll('input.filter').length,
          leaderboardBoxes: document.querySelectorAll('#leaderboard input.filter').length};
"""


@pytest.mark.slow
@needs_chromium
def test_filter_box_hides_rows_without_the_typed_words(sweep_page, tmp_path):
    dom, requests = browse(sweep_page, tmp_path, tail=_probe(FILTER_PROBE))
    found = _result(dom)
    assert requests == []
    assert sorted(found["filtered"]) == [f"dense-64 relu {o} lr={lr} epochs=10" for o, lr in
                                         (("adam", 0.001), ("rmsprop", 0.001), ("sgd", 0.1))]
    assert found["cleared"] == found["total"] == 252
    assert found["boxes"] >= 1 and found["leaderboardBoxes"] == 0  # 10-row tables need none
