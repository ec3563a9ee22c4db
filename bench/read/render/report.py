"""render_run: the report files of one or more run directories, read from their files."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from bench.read.render import csv, html, markdown, plots
from bench.read.render.aggregate import group_trials
from bench.read.render.runs import ReportError, Run, load_runs
from bench.read.render.sections import build_report

FORMATS = ("md", "html", "csv")


class _Sources:
    """What the writers of one render share, each built at most once."""

    def __init__(self, runs: list[Run]):
        self.runs = runs

    @cached_property
    def groups(self):
        return group_trials(self.runs)

    @cached_property
    def report(self):
        return build_report(self.runs, self.groups)


def _markdown(sources: _Sources, out: Path) -> Path:
    return markdown.write_markdown(sources.report, out)


def _html(sources: _Sources, out: Path) -> Path:
    return html.write_html(sources.report, plots.all_plots(sources.runs, sources.groups), out)


def _csv(sources: _Sources, out: Path) -> Path:
    return csv.write_csv(sources.runs, out)


WRITERS: dict[str, Callable[[_Sources, Path], Path]] = {
    "md": _markdown, "html": _html, "csv": _csv}


def default_out(runs: list[Run]) -> Path:
    """One run: its own directory. Several: reports/combined-<id>+<id>... ('+N-more' past three)."""
    if len(runs) == 1:
        return runs[0].path
    ids = [str(run.header.run_id or run.path.name) for run in runs]
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
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out}: is a file; give a directory for the report files")
    out.mkdir(parents=True, exist_ok=True)
    sources = _Sources(runs)
    return [WRITERS[f](sources, out) for f in dict.fromkeys(formats)]
