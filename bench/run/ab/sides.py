"""The two sides of a gate: what BASE and HEAD name, and how each is run.

A side is one of
  .                  the working tree of the checkout, run by this interpreter (HEAD's default);
  REVISION           a git revision of the checkout (a branch, tag, commit, `HEAD~1`), built
                     into a cached worktree and environment (build.py);
  python:/PATH       an interpreter that has bench installed, e.g. another venv with a newer
                     jax; it runs from a neutral folder so that no checkout shadows its bench.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.run.ab.build import Installer, build_revision, resolve_commit

WORKING_TREE = "."
PYTHON_PREFIX = "python:"


class SideError(ValueError):
    """A side named wrongly (exit status 2)."""


@dataclass(frozen=True)
class Side:
    """A side ready to run `python -m bench run` in `cwd` with `python`."""

    role: str  # "base" or "head"
    spec: str  # as given on the command line
    python: Path
    cwd: Path | None  # None: a folder of the gate's own (see run_dir_parent)
    revision: str  # what was measured: a commit, 'working tree <commit>', or the interpreter
    how: str  # how it was built, or reused


def checkout_of_bench() -> Path:
    """The checkout the running bench was imported from (its git top level, if any)."""
    here = Path(__file__).resolve().parents[3]
    done = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"],
                          capture_output=True, text=True)
    return Path(done.stdout.strip()) if done.returncode == 0 else here


def prepare_side(role: str, spec: str, repo: Path, cache: Path,
                 install: Installer | None = None) -> Side:
    """The side `spec` names, built if it is a revision (BuildError, SideError)."""
    if spec == WORKING_TREE:
        return Side(role, spec, Path(sys.executable), repo, f"working tree {_commit_label(repo)}",
                    "this checkout as it is, with this interpreter")
    if spec.startswith(PYTHON_PREFIX):
        python = _interpreter(spec[len(PYTHON_PREFIX):], spec)
        return Side(role, spec, python, None, str(python), "an installed bench")
    commit = resolve_commit(repo, spec)
    if commit is None:
        raise SideError(f"{role.upper()} {spec!r}: not a revision of {repo} (give a branch, tag or "
                        f"commit, '.' for the working tree, or python:/path/to/python)")
    built = build_revision(repo, commit, cache, install)
    how = ("cached: " if built.reused else "built: ") + built.how
    return Side(role, spec, built.python, built.src, commit, how)


def _interpreter(path_text: str, spec: str) -> Path:
    """The interpreter of a python: side, checked to exist and to import bench."""
    python = Path(path_text).expanduser().absolute()  # not resolved: a venv's python is a link
    if not path_text or not python.is_file() or not os.access(python, os.X_OK):
        raise SideError(f"{spec}: no executable interpreter at {path_text or '(empty path)'}")
    done = subprocess.run([str(python), "-c", "import bench.cli"], capture_output=True, text=True,
                          cwd=Path(python).parent)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SideError(f"{spec}: this interpreter cannot import bench: {last}")
    return python


def _commit_label(repo: Path) -> str:
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "(not a git checkout)"
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")
