"""report.html: one self-contained page (inline CSS, JS, SVG; nothing fetched), sortable tables.

Every piece of text is escaped with html.escape: run names, tags, paths, command
lines, configuration strings and error messages are all data, never markup.
"""

from __future__ import annotations

import html
from pathlib import Path

from bench.read.render.document import Cell, Facts, Para, Report, Section, Table
from bench.read.render.plots import Plot

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
nav a { margin-right: 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { white-space: normal; max-width: 40em; }
th { background: #f3f3f3; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tbody tr:nth-child(even) { background: #fafafa; }
.caption, figcaption { color: #555; font-size: 13px; max-width: 70em; }
figure { margin: 1em 0 2em; }
figure svg { max-width: 100%; height: auto; }
"""

# Click a header to sort by it; again to reverse. Cells with data-v sort as numbers, an
# empty data-v (no value) always sorts last; other cells sort as text.
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
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });
})();
"""


def esc(text) -> str:
    """Any text as HTML text or attribute value (quotes escaped too)."""
    return html.escape("" if text is None else str(text), quote=True)


def _cell(cell: Cell, right: bool) -> str:
    if right:
        value = "" if cell.sort is None or isinstance(cell.sort, str) else repr(float(cell.sort))
        return f'<td class="num" data-v="{esc(value)}">{esc(cell.text)}</td>'
    return f'<td class="text">{esc(cell.text)}</td>'


def html_table(t: Table) -> str:
    heads = "".join(f'<th{" class=num" if r else ""} scope="col">{esc(c)}</th>'
                    for c, r in zip(t.columns, t.right))
    rows = "\n".join("<tr>" + "".join(_cell(c, r) for c, r in zip(row, t.right)) + "</tr>"
                     for row in t.rows)
    title = f"<h3>{esc(t.title)}</h3>\n" if t.title else ""
    caption = f'\n<p class="caption">{esc(t.caption)}</p>' if t.caption else ""
    return (f'{title}<div class="scroll"><table class="sortable">\n'
            f"<thead><tr>{heads}</tr></thead>\n<tbody>\n{rows}\n</tbody></table></div>{caption}")


def _block(block) -> str:
    if isinstance(block, Table):
        return html_table(block)
    if isinstance(block, Facts):
        items = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Para):
        return f"<p>{esc(block.text)}</p>"
    raise TypeError(f"no HTML for {type(block).__name__}")


def html_section(section: Section) -> str:
    body = "\n".join(_block(b) for b in section.blocks)
    return f'<section id="{esc(section.id)}">\n<h2>{esc(section.title)}</h2>\n{body}\n</section>'


def plots_section(plots: list[Plot]) -> str:
    """The figures; their SVG comes from matplotlib, which escapes the text inside."""
    figures = "\n".join(f'<figure id="{esc(p.id)}">\n<h3>{esc(p.title)}</h3>\n{p.svg}\n'
                        f"<figcaption>{esc(p.caption)}</figcaption>\n</figure>" for p in plots)
    return f'<section id="plots">\n<h2>Plots</h2>\n{figures}\n</section>'


def _parts(report: Report, plots: list[Plot]) -> list[tuple[str, str, str]]:
    """(id, title, markup) of each section, the plots after the tables they illustrate."""
    parts = [(s.id, s.title, html_section(s)) for s in report.sections]
    if plots:
        ids = [p[0] for p in parts]
        after = [ids.index(i) + 1 for i in ("leaderboard", "pivots") if i in ids]
        at = max(after, default=len(ids))
        parts.insert(at, ("plots", "Plots", plots_section(plots)))
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
