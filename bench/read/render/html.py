"""report.html: one self-contained page (inline CSS, JS, SVG; nothing fetched), sortable tables.

Every piece of text is escaped with html.escape: run names, tags, paths, command
lines, configuration strings and error messages are all data, never markup.
"""

from __future__ import annotations

import html
from pathlib import Path

from bench.read.render.document import Cell, Facts, Para, Report, Section, Table
from bench.read.render.plots import Plot

FILTER_ROWS = 20  # a table with more rows than this gets a filter box

# Each table scrolls inside its own box (both ways, at most most of a screen tall), so its
# header row sticks to the box's top and its first column to the box's left: a sticky cell
# sticks within its nearest scrolling ancestor, which must be the box, not the page.
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0.5em auto 2em;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin: 0.3em 0; }
h2 { font-size: 1.25em; margin: 0.8em 0 0.3em; }
h3 { font-size: 1.05em; margin: 0.6em 0 0.2em; }
nav { font-size: 13px; }
nav a { margin-right: 1em; }
p, ul { margin: 0.4em 0; }
.scroll { overflow: auto; max-height: 85vh; max-width: 100%; width: max-content; }
table { border-collapse: separate; border-spacing: 0; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; min-width: 16em; max-width: 40em; }
th { background: #f3f3f3; cursor: pointer; user-select: none; position: sticky; top: 0;
     z-index: 2; }
tbody tr { background: #fff; }
tbody tr:nth-child(even) { background: #fafafa; }
td:first-child { position: sticky; left: 0; z-index: 1; background: inherit;
                 box-shadow: inset -1px 0 #ddd; }
th:first-child { left: 0; z-index: 3; box-shadow: inset -1px 0 #ddd; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
.table { margin: 0.4em 0; }
input.filter { font-size: 13px; margin: 0.3em 0; padding: 2px 6px; width: 22em; }
.caption, figcaption { color: #555; font-size: 13px; max-width: 70em; }
figure { margin: 0.5em 0 1.5em; }
figure svg { max-width: 100%; height: auto; }
"""

# Click a header to sort by it; again to reverse. Cells with data-v sort as numbers, an
# empty data-v (no value) always sorts last; other cells sort as text. Typing in a filter
# box hides the rows of its table that lack any of the typed words (case ignored).
SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    return v === null ? cell.textContent : (v === "" ? null : parseFloat(v));
  }
  function compare(a, b, sign) {
    if (a === null || b === null) { return a === b ? 0 : (a === null ? 1 : -1); }
    if (typeof a === "number" && typeof b === "number") { return sign * (a - b); }
    return sign * String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var sign = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", sign === 1 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) { return compare(key(a.cells[col]), key(b.cells[col]), sign); });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  function filter(input) {
    var words = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var table = input.parentNode.querySelector("table");
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var text = row.textContent.toLowerCase();
      row.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
    });
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });
  document.querySelectorAll("input.filter").forEach(function (input) {
    input.addEventListener("input", function () { filter(input); });
  });
})();
"""


def esc(text) -> str:
    """Any text as HTML text or attribute value (quotes escaped too)."""
    return html.escape("" if text is None else str(text), quote=True)


def _cell(cell: Cell, right: bool, wrap: bool) -> str:
    if right:
        value = "" if cell.sort is None or isinstance(cell.sort, str) else repr(float(cell.sort))
        return f'<td class="num" data-v="{esc(value)}">{esc(cell.text)}</td>'
    return f'<td class="{"wrap" if wrap else "text"}">{esc(cell.text)}</td>'


def _filter_box(t: Table) -> str:
    if len(t.rows) <= FILTER_ROWS:
        return ""
    return (f'<input type="search" class="filter" placeholder="filter the {len(t.rows)} rows" '
            f'aria-label="show only the rows containing these words">\n')


def html_table(t: Table) -> str:
    heads = "".join(f'<th{" class=num" if r else ""} scope="col">{esc(c)}</th>'
                    for c, r in zip(t.columns, t.right))
    wraps = [c in t.wrap for c in t.columns]
    rows = "\n".join("<tr>" + "".join(_cell(c, r, w) for c, r, w in zip(row, t.right, wraps))
                     + "</tr>" for row in t.rows)
    title = f"<h3>{esc(t.title)}</h3>\n" if t.title else ""
    caption = f'\n<p class="caption">{esc(t.caption)}</p>' if t.caption else ""
    return (f'{title}<div class="table">\n{_filter_box(t)}<div class="scroll">'
            f'<table class="sortable">\n<thead><tr>{heads}</tr></thead>\n<tbody>\n{rows}\n'
            f"</tbody></table></div></div>{caption}")


def _block(block) -> str:
    if isinstance(block, Table):
        return html_table(block)
    if isinstance(block, Facts):
        items = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Para):
        return f"<p>{esc(block.text)}</p>"
    raise TypeError(f"no HTML for {type(block).__name__}")


def _figure(plot: Plot) -> str:
    """One figure; its SVG comes from matplotlib, which escapes the text inside."""
    return (f'<figure id="{esc(plot.id)}">\n<h3>{esc(plot.title)}</h3>\n{plot.svg}\n'
            f"<figcaption>{esc(plot.caption)}</figcaption>\n</figure>")


def html_section(section: Section, plots: list[Plot] = ()) -> str:
    """A section: its blocks, then the plots that belong to it."""
    body = "\n".join([*(_block(b) for b in section.blocks), *(_figure(p) for p in plots)])
    return f'<section id="{esc(section.id)}">\n<h2>{esc(section.title)}</h2>\n{body}\n</section>'


def _parts(report: Report, plots: list[Plot]) -> list[tuple[str, str, str]]:
    """(id, title, markup) of each section, each drawing its own plots; a plot naming no
    section of the report goes to a last section of its own."""
    ids = {s.id for s in report.sections}
    parts = [(s.id, s.title, html_section(s, [p for p in plots if p.section == s.id]))
             for s in report.sections]
    homeless = [p for p in plots if p.section not in ids]
    if homeless:
        parts.append(("plots", "Plots", html_section(Section("plots", "Plots", ()), homeless)))
    return parts


def render_html(report: Report, plots: list[Plot]) -> str:
    """The report as one self-contained HTML page."""
    parts = _parts(report, plots)
    nav = " ".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t, _ in parts)
    body = "\n".join(markup for _, _, markup in parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(report.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{esc(report.title)}</h1>\n<nav>{nav}</nav>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


def write_html(report: Report, plots: list[Plot], out_dir: Path) -> Path:
    path = Path(out_dir) / "report.html"
    path.write_text(render_html(report, plots), encoding="utf-8")
    return path
