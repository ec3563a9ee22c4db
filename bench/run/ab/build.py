"""A git revision built into a cached worktree and environment, ready to `bench run`.

Layout, one folder per commit under the cache (default $XDG_CACHE_HOME/bench/ab):
  <commit>/src        a detached git worktree of the commit (kernels compiled in place)
  <commit>/venv       its environment
  <commit>/build.log  every build command and its output
  <commit>/side.json  written last: the build is complete, and for which environment

Where this interpreter's packages meet the revision's runtime requirements
(requirements.py), the environment is an overlay: a venv without packages of its own
whose .pth file puts this interpreter's package folders on its path (not
`--system-site-packages`: that reaches the base interpreter, not the venv bench runs in),
and the revision is installed into it with `pip install --no-deps --no-build-isolation -e`
(build requirements this environment lacks, e.g. a newer setuptools, are installed into
the side's venv first). Otherwise the side gets its own full `pip install -e`. The install
is editable because a round runs with the worktree as its working directory, so the
worktree's own `bench` and `models` are the ones imported, with their kernels beside them.

A cached build is reused while side.json matches the revision's plan (the interpreter, the
overlay's folders and the installed versions of every package the revision names); when it
does not, the worktree is made afresh, so no kernel built against another jaxlib remains.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from bench.run.ab.requirements import RequirementsError, fit, read_requirements, site_dirs

CACHE_FORMAT = 1
OVERLAY_PTH = "_bench_ab_overlay.pth"
LOG_TAIL_LINES = 25


class BuildError(Exception):
    """A side that cannot be built; `log` holds the whole story."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log is None or not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Plan:
    """How a revision is installed: overlay or full, and what the reuse check compares."""

    overlay: bool
    unmet_build: tuple[str, ...]
    unmet_runtime: tuple[str, ...]
    stamp: dict

    def describe(self) -> str:
        if not self.overlay:
            return f"full install (this environment lacks {', '.join(self.unmet_runtime)})"
        extra = f"; installed for the build: {', '.join(self.unmet_build)}" if self.unmet_build else ""
        return f"overlay on {sys.executable}'s packages{extra}"


@dataclass(frozen=True)
class Built:
    commit: str
    src: Path
    python: Path
    how: str
    reused: bool
    log: Path


Installer = Callable[[Plan, Path, Path, TextIO], None]  # (plan, src, the venv's python, log)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bench" / "ab"


def resolve_commit(repo: Path, revision: str) -> str | None:
    """The full commit id `revision` names in `repo`, None if it names none."""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                           f"{revision}^{{commit}}"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def build_revision(repo: Path, commit: str, cache: Path, install: Installer | None = None) -> Built:
    """The revision's worktree and environment, from the cache or built now (BuildError)."""
    entry = Path(cache) / commit
    entry.mkdir(parents=True, exist_ok=True)
    log_path, src, venv, marker = (entry / "build.log", entry / "src", entry / "venv",
                                   entry / "side.json")
    with _locked(entry / ".lock"), open(log_path, "a", encoding="utf-8") as log:
        fresh = _ensure_worktree(repo, commit, src, log, log_path)
        plan = _plan(src, log_path)
        record = {"format": CACHE_FORMAT, "commit": commit, **plan.stamp}
        if _read_json(marker) == record and _venv_python(venv).exists():
            return Built(commit, src, _venv_python(venv), plan.describe(), True, log_path)
        if not fresh and marker.exists():  # built for another environment: start clean
            _ensure_worktree(repo, commit, src, log, log_path, force=True)
        marker.unlink(missing_ok=True)
        _create_venv(venv, plan, log, log_path)
        (install or pip_install)(plan, src, _venv_python(venv), log)
        marker.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return Built(commit, src, _venv_python(venv), plan.describe(), False, log_path)


def pip_install(plan: Plan, src: Path, python: Path, log: TextIO) -> None:
    """The revision installed editable into its venv, kernels compiled (BuildError if not)."""
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if plan.overlay:
        if plan.unmet_build:
            run_logged([*pip, *plan.unmet_build], log)
        run_logged([*pip, "--no-deps", "--no-build-isolation", "-e", str(src)], log)
    else:
        run_logged([*pip, "-e", str(src)], log)


def run_logged(command: list[str], log: TextIO, cwd: Path | None = None) -> None:
    """Runs `command` with its output appended to `log`; BuildError when it fails."""
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    try:
        done = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    except OSError as exc:
        log.write(f"cannot run {command[0]}: {exc}\n")
        raise BuildError(f"cannot run {command[0]}: {exc}", Path(log.name)) from None
    if done.returncode != 0:
        log.write(f"(exit status {done.returncode})\n")
        log.flush()
        raise BuildError(f"`{' '.join(command[:5])} ...` exited with status {done.returncode}",
                         Path(log.name))


def _plan(src: Path, log_path: Path) -> Plan:
    try:
        needs = fit(read_requirements(src))
    except RequirementsError as exc:
        raise BuildError(str(exc), log_path) from None
    stamp = {"python": sys.executable, "python_version": sys.version.split()[0],
             "overlay": site_dirs() if needs.shareable else None, "versions": needs.versions}
    return Plan(overlay=needs.shareable, unmet_build=needs.unmet_build,
                unmet_runtime=needs.unmet_runtime, stamp=stamp)


def _ensure_worktree(repo: Path, commit: str, src: Path, log: TextIO, log_path: Path,
                     force: bool = False) -> bool:
    """Makes `src` a worktree at `commit`; True if it was (re)made now."""
    if not force and _head_of(src) == commit:
        return False
    if src.exists():
        shutil.rmtree(src)
    run_logged(["git", "-C", str(repo), "worktree", "prune"], log)
    run_logged(["git", "-C", str(repo), "worktree", "add", "--detach", "--force", str(src), commit], log)
    return True


def _head_of(src: Path) -> str | None:
    if not (src / ".git").exists():  # not a worktree (and not inside some other repository)
        return None
    done = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _create_venv(venv: Path, plan: Plan, log: TextIO, log_path: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    # An overlay's pip comes from the shared packages; a full install needs its own.
    without_pip = ["--without-pip"] if plan.overlay else []
    run_logged([sys.executable, "-m", "venv", *without_pip, str(venv)], log)
    if plan.overlay:
        site = Path(sysconfig.get_path("purelib", scheme="venv",
                                       vars={"base": str(venv), "platbase": str(venv)}))
        site.mkdir(parents=True, exist_ok=True)
        # Plain folder lines: their own .pth files (this checkout's editable bench) stay off.
        (site / OVERLAY_PTH).write_text("\n".join(plan.stamp["overlay"]) + "\n", encoding="utf-8")
        log.write(f"overlay: {site / OVERLAY_PTH} -> {plan.stamp['overlay']}\n")


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextmanager
def _locked(path: Path):
    """One builder per commit at a time (two gates sharing a cache wait for each other)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
