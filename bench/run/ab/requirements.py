"""Whether a revision can share this environment's installed packages.

A revision's pyproject.toml names what it needs to run (`[project] dependencies`) and to
build (`[build-system] requires`). Where this interpreter's packages satisfy every runtime
requirement, the side's environment reuses them (an overlay: no download, no resolve, and the
kernels compile against the very jaxlib they will run with); otherwise the side gets a full
install of its own. Checked with `packaging`, as pip does.
"""

from __future__ import annotations

import importlib.metadata
import sys
import sysconfig
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Requirements:
    """What a revision's pyproject.toml asks for."""

    runtime: tuple[str, ...] = ()
    build: tuple[str, ...] = ()
    python: str | None = None  # requires-python


@dataclass(frozen=True)
class Fit:
    """How far this environment meets a revision's requirements."""

    unmet_runtime: tuple[str, ...]
    unmet_build: tuple[str, ...]
    versions: dict = field(default_factory=dict)  # each named package -> the installed version

    @property
    def shareable(self) -> bool:
        return not self.unmet_runtime


class RequirementsError(ValueError):
    """The revision's pyproject.toml cannot be read."""


def read_requirements(src: Path) -> Requirements:
    """The requirements of the source tree `src` (none when it has no pyproject.toml)."""
    path = Path(src) / "pyproject.toml"
    if not path.is_file():
        return Requirements()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RequirementsError(f"{path}: {exc}") from None
    project, build = data.get("project", {}), data.get("build-system", {})
    return Requirements(runtime=tuple(project.get("dependencies", ())),
                        build=tuple(build.get("requires", ())),
                        python=project.get("requires-python"))


def fit(requirements: Requirements, version_of=importlib.metadata.version) -> Fit:
    """Which requirements this interpreter's installed packages leave unmet."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.specifiers import SpecifierSet
    except ImportError:  # cannot check: nothing is assumed to fit
        return Fit(unmet_runtime=requirements.runtime or ("packaging",), unmet_build=requirements.build)
    versions: dict[str, str | None] = {}

    def unmet(texts: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for text in texts:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                out.append(text)
                continue
            if req.marker is not None and not req.marker.evaluate():
                continue
            versions[req.name] = installed = _version(version_of, req.name)
            if installed is None or not req.specifier.contains(installed, prereleases=True):
                out.append(text)
        return tuple(out)

    runtime = unmet(requirements.runtime)
    python = sys.version.split()[0]
    if requirements.python and not SpecifierSet(requirements.python).contains(python, prereleases=True):
        runtime += (f"python{requirements.python}",)
    return Fit(unmet_runtime=runtime, unmet_build=unmet(requirements.build), versions=versions)


def _version(version_of, name: str) -> str | None:
    try:
        return version_of(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def site_dirs() -> list[str]:
    """This interpreter's package folders, in import order: what an overlay makes visible."""
    paths = sysconfig.get_paths()
    found = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    return list(dict.fromkeys([*found, paths["purelib"], paths["platlib"]]))
