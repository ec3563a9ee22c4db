"""render_run: the report files of one or more run directories, read from their files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.render import csv, html, markdown, plots
from bench.render.aggregate import group_trials
from bench.render.runs import ReportError, Run, load_runs
from bench.render.sections import build_report

FORMATS = ("md", "html", "csv")


def _markdown(runs: list[Run], out: Path) -> Path:
    return markdown.write_markdown(build_report(runs), out)


def _html(runs: list[Run], out: Path) -> Path:
    return html.write_html(build_report(runs), plots.all_plots(runs, group_trials(runs)), out)


def _csv(runs: list[Run], out: Path) -> Path:
    return csv.write_csv(runs, out)


WRITERS: dict[str, Callable[[list[Run], Path], Path]] = {
    "md": _markdown, "html": _html, "csv": _csv}


def default_out(runs: list[Run]) -> Path:
    """One run: its own directory. Several: reports/combined-<id>+<id>... ('+N-more' past three)."""
    if len(runs) == 1:
        return runs[0].path
    ids = [str(run.header.get("run_id") or run.path.name) for run in runs]
    name = "+".join(ids) if len(ids) <= 3 else f"{ids[0]}+{len(ids) - 1}-more"
    return Path("reports") / f"combined-{name}"


def render_run(run_dirs: list[Path], formats: tuple[str, ...] = FORMATS,
               out: Path | None = None) -> list[Path]:
    """Writes the report files of `run_dirs` (together) into `out`; returns their paths."""
    unknown = [f for f in formats if f not in WRITERS]
    if unknown or not formats:
        raise ReportError(f"unknown format {', '.join(unknown) or '(none)'}; "
                          f"valid: {', '.join(WRITERS)}")
    if not run_dirs:
        raise ReportError("give at least one run directory")
    runs = load_runs([Path(p) for p in run_dirs])
    out = Path(out) if out is not None else default_out(runs)
    out.mkdir(parents=True, exist_ok=True)
    return [WRITERS[f](runs, out) for f in dict.fromkeys(formats)]
