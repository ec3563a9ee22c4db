"""Report renderers: golden Markdown and CSV, a self-contained HTML page checked in a real
headless browser, escaping of hostile text, seed aggregation, and a 500-trial size budget.

Regenerate the expected files after an intended change of the output:
    BENCH_UPDATE_GOLDEN=1 pytest tests/test_report.py
(the golden input run itself comes from `python tests/report_data.py`).
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import report_data
from bench.contract import results
from bench.cli import main
from bench.read.render.aggregate import Group, stat
from bench.read.render.runs import Run
from bench.read.render.verdict import verdict
from bench.contract.facts import RunHeader
from bench.read.render.cells import stat_cell
from bench.read.render import terminal
from bench.read.render.report import render_run
from bench.run.runner import _finish
from bench.contract.schema import Record

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_RUN = GOLDEN / "run"
UPDATE = os.environ.get("BENCH_UPDATE_GOLDEN") == "1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_TAG = "<img src=x onerror=alert(2)>"
HOSTILE_ERROR = "ValueError: <img src=x onerror=alert(3)> & </td></table>"
HOSTILE_ACTIVATION = "relu$x$<img src=x onerror=alert(4)>"
# The golden run's figures: two families, each with main effects and parallel coordinates.
GOLDEN_PLOTS = ["effects-conv", "effects-dense", "parallel-conv", "parallel-dense", "curves",
                "pareto-front", "units-accuracy", "units-throughput", "heatmaps"]


def check_golden(produced: Path, expected: Path) -> None:
    text = produced.read_text(encoding="utf-8")
    if UPDATE:
        expected.write_text(text, encoding="utf-8")
    assert text == expected.read_text(encoding="utf-8"), (
        f"{produced.name} differs from {expected}; if intended, rerun with BENCH_UPDATE_GOLDEN=1")


# ---------------------------------------------------------------- golden text


def test_markdown_matches_golden(tmp_path):
    [path] = render_run([GOLDEN_RUN], ("md",), tmp_path)
    check_golden(path, GOLDEN / "report.md")


def test_csv_matches_golden(tmp_path):
    trials, epochs = render_run([GOLDEN_RUN], ("csv",), tmp_path)
    check_golden(trials, GOLDEN / "results.csv")
    check_golden(epochs, GOLDEN / "history.csv")


def test_every_format_renders_identically_twice(tmp_path):
    first = render_run([GOLDEN_RUN], out=tmp_path / "a")
    second = render_run([GOLDEN_RUN], out=tmp_path / "b")
    assert [p.name for p in first] == ["report.md", "report.html", "results.csv", "history.csv"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


# ---------------------------------------------------------------- seeds and the Pareto front


@pytest.mark.parametrize("values, seeds, text", [
    ([0.98, 0.99], 2, "98.50 ± 0.71"),
    ([0.981], 1, "98.10"),  # one seed run, one seed counted: nothing to mark
    ([0.981, None], 2, "98.10 (n=1)"),
    ([0.97, 0.98, None], 3, "97.50 ± 0.71 (n=2)"),
    ([None, None], 2, ""),
])
def test_seed_statistic_cells(values, seeds, text):
    assert stat_cell(stat(values), "pct", seeds).text == text


def _group(acc: float, seconds: float, units: int) -> Group:
    cfg = report_data.config("dense", units, "relu", "sgd", 0)
    rec = Record.from_json({"config": cfg, "status": "ok", "test_accuracy": acc,
                            "history": [{"epoch_s": seconds}]})
    return Group("run", 0, cfg, (rec,))


def test_pareto_front_keeps_only_undominated_configurations():
    groups = [_group(0.90, 1.0, 8), _group(0.95, 2.0, 16), _group(0.93, 3.0, 32), _group(0.97, 5.0, 64)]
    run = Run(Path("run"), RunHeader(), tuple(r for g in groups for r in g.records), "run")
    [dense] = verdict([run], groups).families
    assert [s.group.config["units"] for s in dense.pareto] == [8, 16, 64]


def test_markdown_aggregates_seeds_and_marks_single_values():
    text = (GOLDEN / "report.md").read_text(encoding="utf-8")
    assert "| conv-16 relu adam lr=0.001 | 1 | 2 | 2 ok | 97.97 ± 0.03 |" in text
    assert "| conv-16 relu sgd lr=0.1 | 4 | 2 | 1 ok, 1 failed | 97.11 (n=1) |" in text
    assert "| conv-16 relu sgd lr=0.1 | 4 | 1/2 ok | 97.11 (n=1) |" in text  # the leaderboard
    assert "test acc % (mnist, 2,000 test)" in text
    assert "<summary><b>Published vs measured</b></summary>" in text and "| 99.20 | 97.97 ± 0.03 | -1.23 |" in text


# ---------------------------------------------------------------- HTML: static checks


def _hostile_run(root: Path) -> Path:
    """The golden run renamed, tagged, and with one configuration and error that carry markup."""
    records = report_data.golden_records()
    records[0] = {**records[0], "config": {**records[0]["config"], "activation": HOSTILE_ACTIVATION}}
    records[1] = {**records[1], "status": "failed", "error": HOSTILE_ERROR}
    head = report_data.header(name=HOSTILE_NAME) | {"tags": [HOSTILE_TAG]}
    return report_data.write_run(root / "hostile", head, records)


def _external_references(text: str) -> list[str]:
    """src/href/xlink:href attributes, CSS url() and @import that point off the file."""
    attrs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]*)""", text, re.I)
    css = re.findall(r"""(?:url\(|@import)\s*["']?\s*((?:https?:)?//[^"')\s]*)""", text, re.I)
    return attrs + css


def test_html_is_one_self_contained_file(tmp_path):
    [path] = render_run([GOLDEN_RUN], ("html",), tmp_path)
    text = path.read_text(encoding="utf-8")
    assert _external_references(text) == []
    assert "<link" not in text and not re.search(r"<script[^>]*\bsrc", text)
    assert "<!DOCTYPE svg" not in text and "<?xml" not in text
    assert text.count("<svg") == text.count("<figure") == len(GOLDEN_PLOTS)
    # no side files (images, fonts); summary.json is written whatever the formats
    assert sorted(os.listdir(tmp_path)) == ["report.html", "summary.json"]
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))  # several inline figures, no clashing ids
    assert set(re.findall(r'href="#([^"]+)"', text)) <= set(ids)


def test_hostile_text_is_escaped_in_html_and_markdown(tmp_path):
    paths = render_run([_hostile_run(tmp_path)], ("md", "html"), tmp_path / "out")
    md, page = (p.read_text(encoding="utf-8") for p in paths)
    for raw in (HOSTILE_NAME, HOSTILE_TAG, HOSTILE_ERROR, "<img src=x onerror=alert(4)>"):
        assert raw not in page and raw not in md
    assert "<img" not in page and "<script>alert" not in page
    assert html.escape(HOSTILE_NAME) in page and html.escape(HOSTILE_TAG) in page
    assert html.escape(HOSTILE_ERROR) in page
    assert "relu$x$&lt;img src=x onerror=alert(4)&gt;" in page  # in tables and in the SVG plots
    assert r"\<script\>alert(1)\</script\>" in md


# ---------------------------------------------------------------- HTML in a headless browser

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")

# Injected into a copy of the page, never into the report: records any alert() call, then
# (after the page's own script) clicks a header twice and records the resulting row orders.
ALERT_PROBE = ("<script>window.alert = function (m) { document.documentElement"
               ".setAttribute('data-alerted', String(m)); };</script>")
SORT_PROBE = """<script>
(function () {
  var table = document.querySelector('#trials table');
  var th = Array.prototype.find.call(table.tHead.rows[0].cells,
                                     function (h) { return h.textContent.indexOf('test acc') === 0; });
  function order() {
    return Array.prototype.map.call(table.tBodies[0].rows,
                                    function (r) { return r.cells[th.cellIndex].getAttribute('data-v'); });
  }
  th.click(); document.body.setAttribute('data-asc', JSON.stringify(order()));
  th.click(); document.body.setAttribute('data-desc', JSON.stringify(order()));
})();
</script>"""


def browse(page: Path, tmp_path: Path, head: str = "", tail: str = "",
           window: tuple[int, int] = (1400, 900)) -> tuple[str, list[str]]:
    """The DOM after scripts ran in a `window` (width, height) of CSS pixels, and the URLs the
    page itself requested (from a net log)."""
    probe = tmp_path / f"probe-{page.name}"
    text = page.read_text(encoding="utf-8")
    probe.write_text(text.replace("<head>", "<head>" + head, 1).replace("</body>", tail + "</body>", 1),
                     encoding="utf-8")
    net_log = tmp_path / "net-log.json"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--log-net-log={net_log}", "--virtual-time-budget=5000", "--dump-dom",
               f"--window-size={window[0]},{window[1]}", "--force-device-scale-factor=1",
               probe.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, page_requests(net_log)


def page_requests(net_log: Path) -> list[str]:
    """URLs requested on behalf of a file:// page (the browser's own service traffic excluded)."""
    log = json.loads(net_log.read_text(encoding="utf-8"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"] if e["type"] == start
            and "file://" in e["params"].get("network_isolation_key", "")]


def _rendered_rows(dom: str, section: str) -> int:
    """Body rows of the section's tables (the leaderboard has one table per family)."""
    part = dom.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
    return part.count("<tr>") - part.count("<thead>")  # minus each table's header row


@pytest.mark.slow
@needs_chromium
def test_browser_renders_tables_and_plots_offline_and_sorts(tmp_path):
    [page] = render_run([GOLDEN_RUN], ("html",), tmp_path)
    dom, requests = browse(page, tmp_path, tail=SORT_PROBE)
    assert requests == []
    assert _rendered_rows(dom, "trials") == 8 and _rendered_rows(dom, "leaderboard") == 8
    figures = re.findall(r"<figure id=\"([a-z-]+)\">\s*<h3>[^<]+</h3>\s*<svg", dom)
    assert sorted(figures) == sorted(GOLDEN_PLOTS)
    asc = json.loads(html.unescape(re.search(r'data-asc="([^"]*)"', dom).group(1)))
    desc = json.loads(html.unescape(re.search(r'data-desc="([^"]*)"', dom).group(1)))
    values = [float(v) for v in asc if v]
    assert values == sorted(values) and len(values) == 8
    assert [float(v) for v in desc if v] == sorted(values, reverse=True)


@pytest.mark.slow
@needs_chromium
def test_browser_probes_catch_a_request_and_an_alert(tmp_path):
    """The checks of the other browser tests are live: a fetch and an alert() are both seen."""
    [page] = render_run([GOLDEN_RUN], ("html",), tmp_path)
    dom, requests = browse(page, tmp_path, head=ALERT_PROBE,
                           tail='<img src="http://example.invalid/probe.png"><script>alert(7)</script>')
    assert requests == ["http://example.invalid/probe.png"]
    assert re.search(r'<html[^>]*data-alerted="7"', dom)


@pytest.mark.slow
@needs_chromium
def test_browser_shows_hostile_text_as_text_and_runs_none_of_it(tmp_path):
    [page] = render_run([_hostile_run(tmp_path)], ("html",), tmp_path / "out")
    dom, requests = browse(page, tmp_path, head=ALERT_PROBE)
    assert not re.search(r"<html[^>]*data-alerted", dom)
    assert "<img" not in dom and requests == []
    for raw in (HOSTILE_NAME, HOSTILE_TAG, HOSTILE_ERROR):
        assert html.escape(raw, quote=False) in dom
    assert _rendered_rows(dom, "trials") == 9  # the hostile activation is a configuration of its own


# ---------------------------------------------------------------- size, several runs, CLI


@pytest.mark.slow  # renders 500 trials' plots
def test_500_trials_render_to_html_under_5_mb(tmp_path):
    run = report_data.write_run(tmp_path / "big", report_data.header(name="big"), report_data.grid_records())
    [page] = render_run([run], ("html",), tmp_path / "out")
    assert page.stat().st_size < 5_000_000
    text = page.read_text(encoding="utf-8")
    assert "at most 6 per family" in text
    assert text.count("<svg") == text.count("<figure") == len(GOLDEN_PLOTS) + 2  # a third family


def test_several_runs_share_tables_labelled_by_run(tmp_path, monkeypatch):
    gpu = report_data.write_run(tmp_path / "gpu", report_data.header(name="golden", platform="gpu",
                                                                       run_id="20250102-080000"),
                                report_data.golden_records())
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(GOLDEN_RUN), str(gpu), "--format", "md,csv"]) == 0
    out = tmp_path / "reports" / "combined-20250101-120000+20250102-080000"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| run | configuration | n |" in md
    assert "| golden (cpu) | conv-16 relu adam lr=0.001 | 2 |" in md
    assert "| golden (gpu) | conv-16 relu adam lr=0.001 | 2 |" in md
    assert "| activation | adam · golden (cpu) | adam · golden (gpu) |" in md
    rows = (out / "results.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 32 and rows[-1].startswith("golden (gpu),20250102-080000,")
    assert ",dense-64 tanh sgd lr=0.1,gpu,gpu," in rows[-1]


def test_cli_report_writes_into_the_run_directory(tmp_path, capsys):
    """Given a results.jsonl, into its run directory, then prints the summary a run ends with
    and the paths written; bad input is in test_errors.py (the summary: test_terminal_report.py)."""
    run = report_data.write_run(tmp_path / "run", report_data.header(), report_data.golden_records())
    assert main(["report", str(run / "results.jsonl")]) == 0
    lines = capsys.readouterr().out.splitlines()
    written = [Path(line) for line in lines if line.startswith(str(run))]
    assert written and lines[-len(written):] == [str(p) for p in written]
    assert [p.name for p in written][:3] == ["report.md", "report.html", "results.csv"]
    assert sorted(os.listdir(run)) == sorted([*(p.name for p in written), "plots", "results.jsonl",
                                              "run.json"])
    # The same summary as the end of `bench run`, up to where the reports are.
    assert _finish(run, results.load_header(run), 16, interrupted=False) == 0
    at_run_end = capsys.readouterr().out.splitlines()
    assert at_run_end[-2:] == [f"results: {run / 'results.jsonl'}",
                               f"reports in {run}: " + ", ".join(p.name for p in written)]
    assert at_run_end[:-2] == lines[:-len(written)]
    assert "conv: best conv-16 relu adam lr=0.001" in lines[1]


def test_a_run_where_every_trial_failed_still_renders(tmp_path):
    cfg = report_data.config("dense", 8, "relu", "sgd", 0)
    run = report_data.write_run(tmp_path / "run", report_data.header(),
                                [report_data.record(cfg, status="failed", error="OSError: disk full")])
    md, page, table, history = render_run([run], out=tmp_path / "out")
    assert "No trial finished ok." in md.read_text(encoding="utf-8")
    assert "OSError: disk full" in md.read_text(encoding="utf-8")
    assert "<svg" not in page.read_text(encoding="utf-8")
    assert len(table.read_text(encoding="utf-8").splitlines()) == 2
    assert len(history.read_text(encoding="utf-8").splitlines()) == 1  # the header: no epoch ran


def test_runs_on_different_data_are_flagged_as_not_comparable(tmp_path):
    other = report_data.header(run_id="20250103-000000")
    other["data"] = {**other["data"], "source": "tfds", "test_examples": 10000}
    run = report_data.write_run(tmp_path / "tfds", other, report_data.golden_records())
    [md] = render_run([GOLDEN_RUN, run], ("md",), tmp_path / "out")
    text = md.read_text(encoding="utf-8")
    assert "test acc % (each run's own data)" in text
    assert "not comparable" in text and "10,000 test examples" in text and "2,000 test examples" in text


def test_csv_keeps_formula_like_text_from_running_in_a_spreadsheet(tmp_path):
    cfg = report_data.config("dense", 8, "relu", "sgd", 0)
    error = '=HYPERLINK("http://example.invalid","click")'
    run = report_data.write_run(tmp_path / "run", report_data.header(),
                                [report_data.record(cfg, status="failed", error=error)])
    path, _ = render_run([run], ("csv",), tmp_path / "out")
    with open(path, encoding="utf-8", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["error"] == "'" + error
    assert row["units"] == "8" and row["status"] == "failed"


def test_run_end_shows_the_verdict_and_each_configuration_with_its_seeds(tmp_path, capsys):
    run = report_data.write_run(tmp_path / "run", report_data.header(), report_data.golden_records())
    records = results.read_results(run)
    assert _finish(run, results.load_header(run), len(records), interrupted=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= terminal.MAX_LINES and lines[0].startswith("16 trials in")
    rows = {line.split("   ")[1].strip(): line for line in lines if re.match(r"\s*\d+=?   ", line)}
    assert len(rows) == 8  # every configuration of the golden run: fewer than ten
    assert "2/2 ok   97.97   97.72–98.22" in rows["conv-16 relu adam lr=0.001"]
    # A configuration whose one seed failed shows its status, and no interval from one seed.
    assert "1/2 ok   97.11             —" in rows["conv-16 relu sgd lr=0.1"]


def test_run_end_interrupted_says_how_to_resume(tmp_path, capsys):
    cfg = report_data.config("dense", 8, "relu", "sgd", 0)
    run = report_data.write_run(tmp_path / "run", report_data.header(), [report_data.record(cfg)])
    assert _finish(run, results.load_header(run), 4, interrupted=True) == 130
    out = capsys.readouterr().out
    assert re.search(r"dense-8 relu sgd lr=0\.1\s+1/1 ok", out)
    assert "interrupted: 1 of 4 trials finished" in out and f"--resume {run}" in out


def test_a_narrow_terminal_never_breaks_the_resume_command_or_a_path(tmp_path, monkeypatch):
    """Copied from the terminal, the command must work: rich would break it at the width."""
    import io
    from rich.console import Console
    run = report_data.write_run(tmp_path / ("a-long-run-directory-name-" * 3),
                                report_data.header(), [report_data.record(
                                    report_data.config("dense", 8, "relu", "sgd", 0))])
    screen = io.StringIO()
    monkeypatch.setattr(terminal, "console", Console(file=screen, width=40))
    assert _finish(run, results.load_header(run), 4, interrupted=True) == 130
    lines = screen.getvalue().splitlines()
    assert f"python -m bench run --resume {run}" in lines
    assert f"results: {run / results.RESULTS}" in lines
