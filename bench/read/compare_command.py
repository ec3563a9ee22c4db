"""`bench compare`: two runs compared, the table printed and written, the exit status.

The verdicts are bench/read/compare.py's; their tables bench/read/compare_tables.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.read.compare import CompareError, Thresholds, compare_runs, load_run
from bench.read.compare_tables import render_markdown, render_rich
from bench.read.render.terminal import console


def run_compare(baseline: str, candidate: str, thresholds: Thresholds, *, normalize: bool = False,
                fmt: str = "rich", markdown: Path | None = None) -> int:
    """`bench compare`: 0 no regression, 1 regression, 2 unusable input (message on stderr)."""
    try:
        if markdown is not None:
            check_writable(Path(markdown))
        comparison = compare_runs(load_run(baseline), load_run(candidate), thresholds, normalize)
        text = render_markdown(comparison)
        if markdown is not None:
            _write(Path(markdown), text)
    except CompareError as exc:
        print(f"bench compare: error: {exc}", file=sys.stderr)
        return 2
    if fmt == "md":
        print(text)
    else:
        render_rich(comparison, console)
    return 1 if comparison.regressions else 0


def check_writable(path: Path) -> None:
    """CompareError unless `path` can be written as a file (checked before comparing)."""
    if path.is_dir():
        raise CompareError(f"--markdown {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise CompareError(f"--markdown {path}: {path.parent} is not a directory")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CompareError(f"--markdown {path}: cannot write ({exc.strerror or exc})") from None
