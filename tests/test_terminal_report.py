"""The terminal summary (end of `bench run`, `bench report`): the verdict, the top 10 and where
the reports are, in at most 30 printed lines, at 80 and 100 columns as at 160; the label and
status of every listed configuration are never lost, and numbers are never cut."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

import report_data
from bench.read.render import terminal
from bench.read.render.aggregate import group_trials
from bench.read.render.runs import load_runs
from bench.read.render.verdict import Verdict, verdict, verdict_lines

GOLDEN_RUN = Path(__file__).parent / "golden" / "run"
FOOTER = ["results: reports/20250101-120000/results.jsonl",
          "reports in reports/20250101-120000: report.md, report.html, results.csv"]
WIDTHS = (80, 100, 160)


def _verdict(run_dir: Path) -> Verdict:
    runs = load_runs([run_dir])
    return verdict(runs, group_trials(runs))


def grid_with_failures() -> list[dict]:
    """756 trials (3 seeds), every 7th diverged and every 11th failed: statuses like '2/3 ok'."""
    out = []
    for i, rec in enumerate(report_data.grid_records(seeds=(0, 1, 2))):
        status = "diverged" if i % 7 == 3 else "failed" if i % 11 == 5 else "ok"
        out.append(rec if status == "ok" else
                   report_data.record(rec["config"], status=status, error="RuntimeError: boom"))
    return out


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[str, Verdict]:
    grid = report_data.write_run(tmp_path_factory.mktemp("grid") / "run",
                                 report_data.header(name="grid"), grid_with_failures())
    return {"golden": _verdict(GOLDEN_RUN), "grid": _verdict(grid)}


def printed(v: Verdict, width: int, footer=FOOTER) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    terminal.print_summary(v, footer, console)
    return console.export_text().splitlines()


def _flat(lines: list[str]) -> str:
    """Lines as one string, however they were wrapped."""
    return " ".join(" ".join(lines).split())


def _cells(line: str) -> list[str]:
    """A table line's cells: columns are at least two spaces apart, labels have single ones."""
    return re.split(r"\s{2,}", line.strip())


def _table(lines: list[str]) -> tuple[list[str], int]:
    """The top table's column titles and the index of its first row."""
    header = next(i for i, line in enumerate(lines) if _cells(line)[:2] in (["#", "configuration"],
                                                                             ["configuration", "status"]))
    return _cells(lines[header]), header + 2  # the titles, a rule, then the rows


def _parses(cell: str) -> bool:
    """A number cell as the summary writes it: '97.52', '1,234', '1=', '97.1–97.6' or '—'."""
    if cell == terminal.MISSING:
        return True
    try:
        [float(part.replace(",", "")) for part in cell.rstrip("=").split("–")]
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("which", ["golden", "grid"])
def test_summary_fits_30_lines_and_shows_every_listed_row_whole(verdicts, which, width):
    v = verdicts[which]
    lines = printed(v, width)
    assert len(lines) <= terminal.MAX_LINES
    assert all(len(line) <= width for line in lines)
    assert _flat(lines).startswith(_flat(verdict_lines(v)[:1]))  # the verdict first
    assert lines[-len(FOOTER):] == FOOTER
    titles, first = _table(lines)
    shown = [c for c in terminal.COLUMNS if c.title in titles]
    assert [c.title for c in shown] == titles  # every title whole, in COLUMNS order
    standings = terminal.top_standings(v)
    assert len(standings) == min(terminal.TOP, sum(len(f.standings) for f in v.families))
    for s, line in zip(standings, lines[first:first + len(standings)], strict=True):
        cells = _cells(line)
        assert cells == [c.cell(s) for c in shown], line  # the label, status and numbers whole
        numbers = [cell for c, cell in zip(shown, cells) if c.title not in terminal.KEPT]
        assert all(_parses(cell) for cell in numbers), line


@pytest.mark.parametrize("width", WIDTHS)
def test_columns_are_dropped_in_the_stated_order(verdicts, width):
    titles, _ = _table(printed(verdicts["grid"], width))
    dropped = sorted((c.title for c in terminal.COLUMNS if c.title not in titles),
                     key=terminal.DROP_ORDER.index)
    assert dropped == list(terminal.DROP_ORDER[:len(dropped)])
    assert set(terminal.KEPT) <= set(titles)
    if width == 80:
        assert dropped and "acc %" in titles  # narrow: something goes, but not the accuracy
    if width == 160:
        assert dropped == []


def test_the_grid_lists_the_best_of_every_family_with_its_seed_status(verdicts):
    v = verdicts["grid"]
    standings = terminal.top_standings(v)
    for family in v.families:
        assert family.standings[0] in standings  # each family's best is listed
    assert any(s.ok < s.seeds for s in v.families[0].standings)  # statuses like '2/3 ok' exist
    text = "\n".join(printed(v, 100))
    assert "/3 ok" in text


def test_a_label_too_long_for_the_terminal_is_shortened_but_keeps_its_status(tmp_path):
    long = "relu" + "x" * 120
    records = [report_data.record(report_data.config("dense", 8, "relu", "sgd", seed))
               for seed in (0, 1)]
    for rec in records:
        rec["config"] = {**rec["config"], "activation": long}
    v = _verdict(report_data.write_run(tmp_path / "run", report_data.header(), records))
    lines = printed(v, 80)
    titles, first = _table(lines)
    assert titles[:2] == ["configuration", "status"]  # every other column dropped first
    row = lines[first]
    assert "…" in row and row.rstrip().endswith("2/2 ok") and len(row) <= 80


def test_verdict_lines_that_do_not_fit_are_left_to_the_report(verdicts):
    v = verdicts["grid"]
    footer = [f"report file {i}" for i in range(14)]  # leaves the verdict a few lines
    lines = printed(v, 80, footer)
    assert len(lines) <= terminal.MAX_LINES
    if len(verdict_lines(v)) + 14 + 14 > terminal.MAX_LINES:
        assert any(re.match(r"… \d+ more verdict lines in the report", line) for line in lines)


def test_a_console_that_is_not_a_terminal_takes_its_width_from_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert terminal.make_console().width == 80
    monkeypatch.delenv("COLUMNS")
    assert terminal.make_console().width == 160
