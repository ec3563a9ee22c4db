"""`bench ab BASE HEAD`: build both sides, measure them in interleaved pairs, give the verdict.

Exit status: 0 no regression, 1 a regression, 2 unusable input (a side that does not build
or run, nothing in common), 3 undecided within the budget.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.run.ab import outputs
from bench.run.ab.build import BuildError, Installer, default_cache
from bench.run.ab.decide import EXIT_UNUSABLE, Rule, Verdict, common_keys
from bench.run.ab.gate import Outcome, measure, paired
from bench.run.ab.rounds import Round, RoundError, environment, run_round
from bench.run.ab.sides import Side, SideError, checkout_of_bench, prepare_side
from bench.run.ab.schedule import wait_until_quiet


@dataclass(frozen=True)
class Request:
    """What `bench ab` was asked: the sides, the `bench run` flags of every round, the rule."""

    base: str
    head: str = "."
    run_flags: tuple[str, ...] = ("--preset", "ci")
    rule: Rule = Rule()
    budget_s: float = 600.0
    out: Path | None = None
    markdown: Path | None = None
    json: Path | None = None
    repo: Path | None = None
    cache: Path | None = None
    max_wait_s: float = 60.0


class GateError(ValueError):
    """Unusable input (exit status 2)."""


def run_ab(request: Request, install: Installer | None = None,
           clock: Callable[[], float] = time.monotonic,
           quiet: Callable[[float], float] = wait_until_quiet) -> int:
    """The whole gate; prints progress on stderr and the table on stdout; the exit status."""
    try:
        out = _fresh_out(request.out)
        for path in (request.markdown, request.json):
            _check_writable(path)
        sides = _prepare(request, install)
        outcome = measure(_runner(sides, request, out, quiet), request.rule, request.budget_s,
                          clock, on_pair=_progress)
        report = _report(sides, outcome, request, out)
    except (GateError, SideError, RoundError) as exc:
        print(f"bench ab: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except BuildError as exc:
        print(f"bench ab: error: {exc}; the end of {exc.log}:\n{exc.tail()}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        _write_outputs(report, request, out)
    except OSError as exc:
        print(f"bench ab: error: cannot write the verdict ({exc}); the rounds are under {out}",
              file=sys.stderr)
        return EXIT_UNUSABLE
    return report.status


def _prepare(request: Request, install: Installer | None) -> tuple[Side, Side]:
    repo = Path(request.repo) if request.repo else checkout_of_bench()
    cache = Path(request.cache) if request.cache else default_cache()
    sides = []
    for role, spec in (("base", request.base), ("head", request.head)):
        try:
            side = prepare_side(role, spec, repo, cache, install)
        except BuildError as exc:
            raise BuildError(f"{role.upper()} {spec!r} does not build: {exc}", exc.log) from None
        print(f"bench ab: {role.upper()} {spec}: {side.revision} ({side.how})", file=sys.stderr)
        sides.append(side)
    return sides[0], sides[1]


def _runner(sides: tuple[Side, Side], request: Request, out: Path,
            quiet: Callable[[float], float]) -> Callable[[str, int], Round]:
    by_role = {s.role: s for s in sides}

    def run(role: str, number: int) -> Round:
        waited = quiet(request.max_wait_s)
        if waited:
            print(f"bench ab: waited {waited:.0f} s for other processes to leave the machine",
                  file=sys.stderr)
        return run_round(by_role[role], list(request.run_flags), out, number)
    return run


def _progress(rounds: list[Round], verdicts: list[Verdict]) -> None:
    """One line a pair: what its rounds took, and where each step-time verdict stands."""
    last = rounds[-2:]
    took = ", ".join(f"{r.role.upper()} {r.seconds:.0f} s" for r in last)
    calls = [f"{v.label}: {v.verdict}" + ("" if v.estimate is None else f" {v.estimate:.3f}")
             + ("" if v.low is None else f" ({v.low:.3f}-{v.high:.3f})")
             for v in verdicts if v.metric == "step_time"]
    print(f"bench ab: pair {last[-1].number} ({took}): {'; '.join(calls)}", file=sys.stderr)


def _report(sides: tuple[Side, Side], outcome: Outcome, request: Request, out: Path) -> outputs.Report:
    keys, only_base, only_head = common_keys(paired(outcome.rounds))
    if not keys:
        raise GateError("BASE and HEAD ran no trial in common (trials are matched by the key of "
                        "their configuration); see their run directories under " + str(out))
    broke = any(v.metric == "status" for v in outcome.verdicts)
    if not broke and not any(v.pairs for v in outcome.verdicts):
        raise GateError("no trial ran ok on both sides, so nothing could be compared; see the "
                        f"rounds' logs under {out}")
    labels = {k: v for r in outcome.rounds for k, v in r.labels.items()}
    warnings = [f"only BASE ran {labels.get(k, k)}" for k in only_base]
    warnings += [f"only HEAD ran {labels.get(k, k)}" for k in only_head]
    busy = sum(1 for r in outcome.rounds if any(s.busy for s in r.samples.values()))
    if busy:
        warnings.append(f"{busy} of {len(outcome.rounds)} rounds ran while other processes kept the "
                        "machine busy (their records are marked busy)")
    firsts = {r.role: environment(r.run_dir) for r in reversed(outcome.rounds)}
    kernels = {role: env.get("kernels") for role, env in firsts.items()}
    if kernels.get("base") != kernels.get("head"):
        warnings.append(f"the sides ran different CPU kernels (BASE {kernels.get('base')}, HEAD "
                        f"{kernels.get('head')}): a '.' side needs its kernels built in place "
                        "(pip install -e .)")
    return outputs.Report(sides, firsts, outcome, request.rule, request.budget_s, out, tuple(warnings))


def _write_outputs(report: outputs.Report, request: Request, out: Path) -> None:
    markdown, text = outputs.render_markdown(report), outputs.json_text(report)
    outputs.write(out / "ab.md", markdown)
    outputs.write(out / "ab.json", text)
    for path, content in ((request.markdown, markdown), (request.json, text)):
        if path is not None:
            outputs.write(path, content)
    print(markdown)


def _fresh_out(out: Path | None) -> Path:
    """The gate's folder: a new one (rounds are new runs, never resumed ones)."""
    out = Path(out) if out else Path("reports") / time.strftime("ab-%Y%m%d-%H%M%S")
    if (out / "base").exists() or (out / "head").exists():
        raise GateError(f"--out {out} already holds a gate's rounds; give a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GateError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    return out


def _check_writable(path: Path | None) -> None:
    if path is None:
        return
    if Path(path).is_dir():
        raise GateError(f"{path}: is a directory; give a file name")
    if not Path(path).absolute().parent.is_dir():
        raise GateError(f"{path}: {Path(path).absolute().parent} is not a directory")
