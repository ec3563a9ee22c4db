"""report.md for a pull request: the answer open (verdict, what mattered, top configurations),
everything else folded in <details>, plots written beside it and linked, and under 60,000
characters for any sweep size (GitHub takes 65,536 in a comment)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import report_data
from bench.read.render import markdown
from bench.read.render.document import Cell, Para, Report, Section, table
from bench.read.render.report import Rendered, render_reports

GOLDEN_RUN = Path(__file__).parent / "golden" / "run"
PLOT_LINK = re.compile(r"^!\[[^\]]*\]\((plots/[^)]+\.svg)\)$", re.M)
LIMIT = 60_000


def check_layout(rendered: Rendered) -> str:
    """report.md opens on the OPEN sections, in order, with every other one folded, and
    links each plot, once, to a standalone SVG file beside it."""
    [md] = [p for p in rendered.paths if p.name == "report.md"]
    text = md.read_text(encoding="utf-8")
    sections = rendered.sources.report.sections
    assert sections[0].id == "verdict"
    opened = [s for s in sections if s.id in markdown.OPEN]
    head = text.split("<details>", 1)[0]
    assert re.findall(r"^## (.*)$", head, re.M) == [markdown.md_escape(s.title) for s in opened]
    assert [s.id for s in opened] == ["verdict", "mattered", "leaderboard"]
    for s in sections:
        if s.id not in markdown.OPEN:
            assert f"<details>\n<summary><b>{markdown.md_escape(s.title)}</b></summary>\n\n" in text
    assert text.count("<details>") == text.count("</details>") == len(sections) - len(opened)
    links = PLOT_LINK.findall(text)
    assert sorted(links) == sorted(markdown.plot_path(p) for p in rendered.sources.plots)
    for link in links:
        svg = ET.parse(md.parent / link).getroot()  # a file of its own: well-formed XML
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    return text


def test_golden_report_md_opens_on_the_answer_and_links_its_plots(tmp_path):
    rendered = render_reports([GOLDEN_RUN], ("md",), tmp_path)
    text = check_layout(rendered)
    assert len(rendered.sources.plots) >= 3 and "more rows left out" not in text
    # A plot is linked from its own section: the main effects from "what mattered".
    mattered = re.split(r"^## ", text, flags=re.M)[2]
    assert mattered.startswith(markdown.md_escape(rendered.sources.report.sections[1].title))
    assert any(p.section == "mattered" and markdown.plot_path(p) in mattered
               for p in rendered.sources.plots)


@pytest.mark.slow  # renders 252 configurations' plots (about 10 s on two cores)
def test_report_md_of_a_756_trial_grid_fits_a_pull_request_comment(tmp_path):
    records = report_data.grid_records(seeds=(0, 1, 2))
    run = report_data.write_run(tmp_path / "grid", report_data.header(name="grid"), records)
    rendered = render_reports([run], ("md",), tmp_path / "out")
    text = check_layout(rendered)
    assert len(text) < LIMIT
    cuts = re.findall(r"^\*([\d,]+) more rows left out: see \[results\.csv\]\(results\.csv\) "
                      r"or \[report\.html\]\(report\.html\)\.\*$", text, re.M)
    assert cuts  # 252 configurations do not fit whole


def _rows(count: int, width: int = 8) -> list[list[Cell]]:
    return [[Cell(f"configuration {i}"), Cell(f"{i * 1.5:.2f}" + "0" * width, i)] for i in range(count)]


def test_a_long_table_is_cut_with_a_line_saying_how_many_rows_went():
    top = table("", [("configuration", False), ("acc %", True)], _rows(10))
    everything = table("", [("configuration", False), ("acc %", True)], _rows(5000))
    report = Report("big", (Section("verdict", "Verdict", (Para("the answer"),)),
                            Section("leaderboard", "Leaderboard", (top,)),
                            Section("trials", "All configurations", (everything,))))
    text = markdown.render_markdown(report)
    assert len(text) < LIMIT
    [left_out] = re.findall(r"\*([\d,]+) more rows left out", text)
    shown = text.count("| configuration ") - 10 - 2  # less the top table and both header rows
    assert int(left_out.replace(",", "")) == 5000 - shown and shown >= 5
    assert all(f"| configuration {i} |" in text for i in range(10))  # the open table whole
    assert text.index("## Leaderboard") < text.index("<summary><b>All configurations</b></summary>")


def test_when_cutting_tables_is_not_enough_folded_sections_point_to_the_full_files():
    many = tuple(Section(f"s{i}", f"section {i}", (Para("x" * 2000),)) for i in range(60))
    report = Report("big", (Section("verdict", "Verdict", (Para("the answer"),)), *many))
    text = markdown.render_markdown(report)
    assert len(text) < LIMIT and "the answer" in text and "x" * 2000 not in text
    assert text.count(markdown.ELSEWHERE) == 60 and text.count("<details>") == 60


def test_plots_of_a_section_the_report_lacks_are_linked_at_its_end():
    from bench.read.render.plots import Plot
    report = Report("r", (Section("verdict", "Verdict", (Para("the answer"),)),))
    text = markdown.render_markdown(report, [Plot("odd/id", "Odd", "what it shows", "<svg/>", "gone")])
    assert text.endswith("<summary><b>Plots</b></summary>\n\n![Odd](plots/odd-id.svg)\n\n"
                         "what it shows\n\n</details>\n")
