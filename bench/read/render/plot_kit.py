"""What every figure of the report shares: matplotlib settings, tooltips, axes, and the SVG.

Figures are drawn with matplotlib (no pyplot, no global backend) as inline SVG. Text
in the SVG is user text too (trial and run labels): matplotlib escapes it as XML,
mathtext is switched off so a '$' in a name is just a dollar sign, and fonts are left
to the browser (svg.fonttype 'none') to keep files small.

Tooltips: `tooltip(artist, text)` tags an artist; `svg_markup` gives its SVG group a
<title> child, which browsers show on hover. The text travels in the artist's gid,
hex-encoded, so no state is kept beside the figure and nothing needs escaping on the way.
"""

from __future__ import annotations

import html
import io
import math
import re

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

RC = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 8,
      "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 6, "axes.titlesize": 9}
_TIP = "tip-"


def new_figure() -> Figure:
    """An empty figure, laid out by matplotlib's constrained layout (which makes room for
    colour bars and for legends placed outside the axes); draw it inside rc_context(RC)."""
    return Figure(layout="constrained")


def tooltip(artist, text: str):
    """Tags `artist` so that its SVG group carries `text` as a hover <title>; returns it."""
    artist.set_gid(_TIP + text.encode("utf-8").hex())
    return artist


def tooltip_of(artist) -> str | None:
    """The tooltip text `tooltip` gave `artist` (None if none)."""
    gid = artist.get_gid() or ""
    return bytes.fromhex(gid[len(_TIP):]).decode("utf-8") if gid.startswith(_TIP) else None


def svg_markup(fig: Figure) -> str:
    """`fig` as an <svg> element for inline HTML: no XML prolog, DOCTYPE, metadata or
    comments; every tooltip as a <title> (XML-escaped) in its artist's group."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    text = re.sub(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return _titles(text).strip()


def _titles(svg: str) -> str:
    def title(match: re.Match) -> str:
        tip = bytes.fromhex(match.group(1)).decode("utf-8")
        return f"<g><title>{html.escape(tip, quote=False)}</title>"
    return re.sub(rf'<g id="{_TIP}([0-9a-f]*)">', title, svg)


def scoped_ids(svg: str, prefix: str) -> str:
    """The SVG with its ids and references to them prefixed: several figures share one page.

    Only tags are rewritten; text between them (user text, escaped) is left alone.
    """
    def scope(tag: str) -> str:
        tag = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', tag)
        tag = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', tag)
        return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", tag)
    return re.sub(r"<[^<>]*>", lambda m: scope(m.group(0)), svg)


def panel_grid(fig: Figure, count: int, cols: int, width: float, height: float,
               **subplot_kw) -> list:
    """`count` axes in rows of `cols`, each panel `width` × `height` inches."""
    cols = max(1, min(cols, count))
    rows = math.ceil(count / cols)
    fig.set_size_inches(width * cols, height * rows)
    grid = fig.subplots(rows, cols, squeeze=False, **subplot_kw).ravel()
    for ax in grid[count:]:
        ax.remove()
    return list(grid[:count])


def log_axis(axis, set_scale, base: int = 10) -> None:
    """A log scale with plain tick labels (the default ones are mathtext, which is off)."""
    set_scale("log", base=base)
    if base == 10:  # 1-2-5 ticks: a range inside one decade still gets labels
        axis.set_major_locator(LogLocator(10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


PERCENT = (0.0, 100.0)  # where an accuracy in percent can be


def percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def ci_text(ci95: tuple[float, float] | None) -> str:
    """' (95% CI 97.10–97.52%)' of an accuracy interval in fractions; '' without one."""
    if ci95 is None:
        return ""
    return f" (95% CI {100 * ci95[0]:.2f}–{100 * ci95[1]:.2f}%)"


def error_bars(centres: list[float], intervals: list, scale: float = 1.0,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> list[list[float]]:
    """matplotlib's [below, above] bar lengths of intervals around `centres`, each interval
    times `scale` (fractions to percent) and cut to `bounds` (a t-interval of two seeds can
    reach past 100%); an interval of None gets no bar."""
    lo, hi = bounds
    return [[c - max(lo, scale * ci[0]) if ci else 0.0 for c, ci in zip(centres, intervals)],
            [min(hi, scale * ci[1]) - c if ci else 0.0 for c, ci in zip(centres, intervals)]]


def family_colors(names: list[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}
