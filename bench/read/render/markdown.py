"""report.md: the report as GitHub-flavoured Markdown, sized for a pull-request comment.

The answer stays open (OPEN: the verdict, what mattered, the top configurations); every other
section is folded into a `<details>` block. Each plot is written beside the report as
`plots/<plot id>.svg` and linked from its section. Long tables are cut, with a line saying
how many rows were left out, until the whole stays under MAX_CHARS (GitHub takes 65,536).
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.read.render.document import Facts, Para, Report, Section, Table
from bench.read.render.plots import Plot

MAX_CHARS = 60_000
OPEN = ("verdict", "mattered", "leaderboard")
PLOT_DIR = "plots"
# Tried in turn until the report fits: the most rows any one table keeps (None: all); at 0,
# the folded sections keep only their plots and a pointer to the full files.
ROW_LIMITS = (None, 400, 200, 100, 50, 25, 10, 5, 0)
ELSEWHERE = "Left out to keep this file short: see [report.html](report.html) and [results.csv](results.csv)."
OTHER_PLOTS = Section("plots", "Plots", ())

# Markdown punctuation that could start markup, an HTML tag or an entity: text stays text.
_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~])")


def md_escape(text: str) -> str:
    """Plain text made safe for a Markdown paragraph or table cell (one line)."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def md_table(t: Table, max_rows: int | None = None) -> list[str]:
    """`t` in Markdown; past `max_rows` rows, a line saying how many more the full files hold."""
    rows = t.rows if max_rows is None else t.rows[:max_rows]
    lines = ["| " + " | ".join(md_escape(c) for c in t.columns) + " |",
             "|" + "|".join("---:" if r else "---" for r in t.right) + "|"]
    lines += ["| " + " | ".join(md_escape(c.text) for c in row) + " |" for row in rows]
    if len(rows) < len(t.rows):
        lines += ["", f"*{len(t.rows) - len(rows):,} more rows left out: see "
                      f"[results.csv](results.csv) or [report.html](report.html).*"]
    return lines


def _block(block, max_rows: int | None) -> list[str]:
    if isinstance(block, Table):
        head = [f"### {md_escape(block.title)}", ""] if block.title else []
        tail = ["", md_escape(block.caption)] if block.caption else []
        return head + md_table(block, max_rows) + tail
    if isinstance(block, Facts):
        return [f"- **{md_escape(k)}**: {md_escape(v)}" for k, v in block.items]
    if isinstance(block, Para):
        return [md_escape(block.text)]
    raise TypeError(f"no Markdown for {type(block).__name__}")


def plot_path(plot: Plot) -> str:
    """Where `plot`'s SVG file goes, relative to report.md."""
    return f"{PLOT_DIR}/{re.sub(r'[^A-Za-z0-9_.-]', '-', plot.id)}.svg"


def _plot(plot: Plot) -> list[str]:
    return [f"![{md_escape(plot.title)}]({plot_path(plot)})", "", md_escape(plot.caption)]


def md_section(section: Section, plots: list[Plot] = (), max_rows: int | None = None) -> list[str]:
    """One section, its plots linked after its blocks; folded unless its id is in OPEN."""
    folded = section.id not in OPEN
    if folded and max_rows == 0:
        body = [ELSEWHERE, ""] if section.blocks else []
    else:
        body = []
        rows = ROW_LIMITS[-2] if max_rows == 0 else max_rows  # an open section keeps a few
        for block in section.blocks:
            body += _block(block, rows) + [""]
    for plot in plots:
        body += _plot(plot) + [""]
    if not folded:
        return [f"## {md_escape(section.title)}", "", *body]
    # GitHub renders Markdown inside <details> only after a blank line.
    return ["<details>", f"<summary><b>{md_escape(section.title)}</b></summary>", "",
            *body, "</details>", ""]


def render_markdown(report: Report, plots: list[Plot] = ()) -> str:
    """The report as one Markdown document, under MAX_CHARS where cutting tables allows."""
    for max_rows in ROW_LIMITS:
        text = _document(report, plots, max_rows)
        if len(text) < MAX_CHARS:
            break
    return text


def _document(report: Report, plots: list[Plot], max_rows: int | None) -> str:
    ids = {s.id for s in report.sections}
    strays = [p for p in plots if p.section not in ids]  # a plot whose section is not shown
    lines = [f"# {md_escape(report.title)}", ""]
    for section in [*report.sections, *([OTHER_PLOTS] if strays else [])]:
        mine = [p for p in plots if p.section == section.id] if section is not OTHER_PLOTS else strays
        lines += md_section(section, mine, max_rows)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_markdown(report: Report, plots: list[Plot], out_dir: Path) -> Path:
    """report.md and its plots' SVG files (plots/) in `out_dir`; returns report.md's path."""
    out_dir = Path(out_dir)
    if plots:
        (out_dir / PLOT_DIR).mkdir(exist_ok=True)
    for plot in plots:
        (out_dir / plot_path(plot)).write_text(_svg_file(plot.svg), encoding="utf-8")
    path = out_dir / "report.md"
    path.write_text(render_markdown(report, plots), encoding="utf-8")
    return path


def _svg_file(markup: str) -> str:
    """Inline SVG markup (plots.svg_markup) as a file of its own."""
    return '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' + markup + "\n"
