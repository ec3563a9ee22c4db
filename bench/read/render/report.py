"""render_run: the report files of one or more run directories, read from their files."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from bench.read.render import csv, html, markdown, plots
from bench.read.render.aggregate import group_trials
from bench.read.render.runs import ReportError, Run, load_runs
from bench.read.render.sections import build_report
from bench.read.render.verdict import Verdict, summary_json, verdict

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
        return build_report(self.runs, self.groups, self.verdict)

    @cached_property
    def plots(self):
        return plots.all_plots(self.runs, self.groups, self.verdict)  # the one analysis

    @cached_property
    def verdict(self) -> Verdict:
        return verdict(self.runs, self.groups)


def _markdown(sources: _Sources, out: Path) -> Path:
    return markdown.write_markdown(sources.report, sources.plots, out)  # and plots/*.svg


def _html(sources: _Sources, out: Path) -> Path:
    return html.write_html(sources.report, sources.plots, out)


def _csv(sources: _Sources, out: Path) -> list[Path]:
    return csv.write_csv(sources.runs, out)  # results.csv and history.csv


def _summary(sources: _Sources, out: Path) -> Path:
    """summary.json: the verdict for scripts and CI (README, "summary.json")."""
    path = out / SUMMARY
    text = json.dumps(summary_json(sources.verdict), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


SUMMARY = "summary.json"
# format -> its writer, which returns the path of the file it wrote, or a list of them
WRITERS: dict[str, Callable[[_Sources, Path], Path | list[Path]]] = {
    "md": _markdown, "html": _html, "csv": _csv}


def default_out(runs: list[Run]) -> Path:
    """One run: its own directory. Several: reports/combined-<id>+<id>... ('+N-more' past three)."""
    if len(runs) == 1:
        return runs[0].path
    ids = [str(run.header.run_id or run.path.name) for run in runs]
    name = "+".join(ids) if len(ids) <= 3 else f"{ids[0]}+{len(ids) - 1}-more"
    return Path("reports") / f"combined-{name}"


class Rendered(NamedTuple):
    """The files written, and what they were rendered from."""

    paths: list[Path]
    sources: _Sources

    @property
    def verdict(self) -> Verdict:
        """The verdict the reports show (computed here only if no writer needed it)."""
        return self.sources.verdict


def render_reports(run_dirs: list[Path], formats: tuple[str, ...] = FORMATS,
                   out: Path | None = None) -> Rendered:
    """Writes the report files of `run_dirs` (together) into `out`; returns their paths and
    the verdict they show (the terminal prints it)."""
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
    paths = [path for f in dict.fromkeys(formats) for path in _paths(WRITERS[f](sources, out))]
    return Rendered([*paths, _summary(sources, out)], sources)  # summary.json: whatever the formats


def render_run(run_dirs: list[Path], formats: tuple[str, ...] = FORMATS,
               out: Path | None = None) -> list[Path]:
    """Writes the report files of `run_dirs` (together) into `out`; returns the paths of the
    formats asked for (summary.json, written always, left out)."""
    return [p for p in render_reports(run_dirs, formats, out).paths if p.name != SUMMARY]


def _paths(written: Path | list[Path]) -> list[Path]:
    return [written] if isinstance(written, Path) else list(written)
