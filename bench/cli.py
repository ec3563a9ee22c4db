"""Command line: `python -m bench run | list | compare | report`. The only module that reads flags."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bench.engine import data as data_sources
from bench.contract.pruning import METHODS as PRUNING_METHODS, OFF as PRUNING_OFF, parse_pruning
from bench.read.compare import METRICS, Thresholds, parse_threshold
from bench.read.compare_command import run_compare
from bench.run.ab.decide import Rule as GateRule
from bench.run.executors import EXECUTORS
from bench.run.groups import AUTO, parse_population
from bench.contract.schema import AXES, PLATFORMS, Axis, SchemaError, SpecError, TimingProtocol


def _csv(axis: Axis):
    """An argparse type for comma-separated values of `axis` ('auto': its per-trial default)."""
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        try:
            return tuple(_parse_value(axis, t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected comma-separated {axis.kind.__name__} values") from None
    return parse


def _fractions(text: str) -> tuple[float, ...]:
    """--targets: comma-separated accuracies in (0, 1]."""
    try:
        values = tuple(_fraction(t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated fractions in (0, 1]")
    return values


def _parse_value(axis: Axis, text: str):
    """One command-line value; checked against the axis later, with the sweep file's values."""
    if axis.resolve is not None and text in ("auto", "ref", "reference", "default"):
        return None
    if axis.kind is int:
        number = float(text)  # "64" and "64.0" alike; 64.5 is refused by the axis
        return int(number) if number.is_integer() else number
    return axis.kind(text)


def _axis_help(axis: Axis) -> str:
    shown = [v for v in axis.default if v is not None]
    default = f" (default {','.join(map(str, shown))})" if shown else ""
    where = f"; {', '.join(axis.families)} only" if axis.families else ""
    return f"{axis.help}{default}{where}"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


def _validation(text: str) -> float:
    """--validation: a fraction strictly between 0 and 1."""
    try:
        return data_sources.check_validation_fraction(float(text))
    except (ValueError, data_sources.DataError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction strictly between 0 "
                                         "and 1, e.g. 0.1667") from None


def _units(text: str):
    return None if text in ("ref", "reference", "auto") else int(text)


_units.__name__ = "int"


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """Flags left unset are None, so that a sweep file's value (or the default) applies."""
    what = p.add_argument_group("what to run (default: the quick preset, 12 trials)")
    what.add_argument("--sweep", type=Path, metavar="FILE.toml", help="a sweep file (see README)")
    what.add_argument("--preset", help="a sweep file shipped with bench (see `bench list`)")
    what.add_argument("--resume", type=Path, metavar="RUN_DIR",
                      help="continue a run: skip its finished trials, run the rest (with the "
                           "run's own settings: other timing/device/data flags are refused)")
    what.add_argument("--retry-failed", action="store_true",
                      help="when resuming, run the run's failed trials again (only those)")
    axes = p.add_argument_group("sweep axes (comma-separated lists; every combination is a trial; "
                                "they replace the same axis of a sweep file)")
    for axis in AXES:
        axes.add_argument(axis.flag, dest=axis.key, type=_csv(axis), help=_axis_help(axis))
    where = p.add_argument_group("where")
    where.add_argument("--device", help=f"one of {', '.join(PLATFORMS)} (default auto)")
    where.add_argument("--data", help="auto (default), embedded, tfds, or a folder of IDX files / an .npz")
    where.add_argument("--dataset", help=f"mnist (default); with --data tfds: {', '.join(data_sources.TFDS_DATASETS)}")
    where.add_argument("--data-dir", default=None, help="TFDS data directory")
    where.add_argument("--validation", type=_validation, metavar="FRACTION",
                       help="hold out this fraction of the training split (stratified, the same "
                            "for every trial) for validation: choices are made on it, test "
                            "accuracy is reported (default none)")
    where.add_argument("--population", metavar="auto|off|N",
                       help="train trials that differ only in seed, learning rate, L1, L2 and "
                            "dropout rate together, vmapped: auto (default) as many as fit, "
                            "off one at a time, N at most N together")
    where.add_argument("--devices", type=_positive, metavar="N",
                       help="devices of the platform a population is sharded over (default all)")
    where.add_argument("--executor", choices=tuple(EXECUTORS), default=None,
                       help="serial (default): units one after another in this process; ray: "
                            "units on Ray workers, one per node (see README, Running on a cluster)")
    where.add_argument("--ray-address", metavar="ADDRESS", default=None,
                       help="with --executor ray: the cluster to join (default $RAY_ADDRESS, "
                            "else a private local Ray for this run)")
    where.add_argument("--tasks-per-node", type=_positive, metavar="N", default=None,
                       help="with --executor ray on CPU: N units at once per node, sharing its "
                            "cores (default 1; more packs work but spoils timing)")
    where.add_argument("--out", type=Path, default=None,
                       help="run directory (default reports/<run-id>/); an existing one is resumed")
    pruning = p.add_argument_group("pruning (see docs/pruning.md)")
    pruning.add_argument("--prune", choices=(PRUNING_OFF, *PRUNING_METHODS), default=None,
                         help="halving: successive halving within each group of configurations "
                              "that differ only in learning rate, L1, L2 and dropout rate; needs "
                              "--validation (default off)")
    pruning.add_argument("--eta", type=int, metavar="N",
                         help="with --prune halving: each rung keeps the best 1/N (default 3)")
    pruning.add_argument("--min-epochs", type=int, metavar="N",
                         help="with --prune halving: the first rung's epoch; then N x eta, "
                              "N x eta^2, ... below the trials' epochs (default 1)")
    timing = p.add_argument_group("timing protocol (see README)")
    timing.add_argument("--repeats", type=_positive, help=f"timed rounds per trial (default {TimingProtocol.repeats})")
    timing.add_argument("--burn-in", type=_non_negative, help=f"untimed rounds first (default {TimingProtocol.burn_in})")
    timing.add_argument("--round-steps", type=_positive,
                        help=f"training steps per timed round (default {TimingProtocol.round_steps})")
    timing.add_argument("--targets", type=_fractions,
                        help="test accuracies for time-to-accuracy (default 0.97,0.98,0.99)")
    timing.add_argument("--recalibrate", action="store_true",
                        help="measure the device's peak FLOP/s again instead of using the cache")
    timing.add_argument("--compilation-cache", metavar="DIR", default=None,
                        help="use JAX's persistent compilation cache in DIR (hits are recorded)")


COMPARE_RULES = f"""\
verdicts, per trial matched by key:
  step_time  regression if a one-sided Mann-Whitney U test on the timed rounds
             says the candidate is slower (p <= --alpha) AND its median step
             time is slower by more than --max-slowdown; improvement likewise
             when faster. With too few rounds for the test to ever reach
             --alpha, the test is replaced by non-overlapping [min, max] ranges.
  accuracy   regression if test accuracy drops by more than
             --max-accuracy-drop percentage points (improvement if it rises so).
  compile    compile time, one sample: beyond {Thresholds().compile:.0%} slower is reported
             but does not gate unless --gate-compile (noisy; a cache hit is ~0).
  status     ok -> diverged/failed is a regression. A trial pruned (--prune) on
             one side only is finished, not failed: its status and accuracy are
             reported n/a ("censored"), never a regression.
  A trial measured on a busy machine is marked 'busy' in the notes.
  Missing and extra trials are listed; they are not regressions.
threshold metrics (--threshold METRIC=VALUE, VALUE may end in %):
""" + "\n".join(f"  {name:10} {meaning}" for name, meaning in METRICS.items()) + """
exit status: 0 no regression, 1 regression, 2 unusable input."""


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0")
    return value


def _threshold(text: str) -> tuple[str, float]:
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("baseline", help="run directory, or results.jsonl (run.json beside it is optional)")
    p.add_argument("candidate", help="run directory, or results.jsonl")
    p.add_argument("--max-slowdown", type=_non_negative_float, default=Thresholds().step_time,
                   metavar="FRACTION", help="step time threshold (default %(default)s = 10%%)")
    p.add_argument("--max-accuracy-drop", type=_non_negative_float, default=Thresholds().accuracy,
                   metavar="PP", help="test accuracy threshold, percentage points (default %(default)s)")
    p.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="METRIC=VALUE",
                   help=f"per-metric threshold, repeatable; overrides the two above "
                        f"(metrics: {', '.join(METRICS)})")
    p.add_argument("--alpha", type=_non_negative_float, default=Thresholds().alpha,
                   help="significance level of the step-time test (default %(default)s)")
    p.add_argument("--gate-compile", action="store_true",
                   help="a compile-time regression fails the comparison too")
    p.add_argument("--normalize", action="store_true",
                   help="compare time x calibrated peak FLOP/s of each run (different machines); "
                        "both run.json files need calibration.peak_flops")
    p.add_argument("--format", choices=("rich", "md"), default="rich",
                   help="terminal table (default) or Markdown on stdout")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the Markdown table to FILE")


def thresholds_from_args(args: argparse.Namespace) -> Thresholds:
    base = Thresholds(step_time=args.max_slowdown, accuracy=args.max_accuracy_drop,
                      alpha=args.alpha, gate_compile=args.gate_compile)
    return dataclasses.replace(base, **dict(args.threshold))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_args(sub.add_parser("run", help="train, time and evaluate a sweep of trials"))
    sub.add_parser("list", help="models, activations, optimizers and data sources")
    _add_compare_args(sub.add_parser(
        "compare", help="regression check: baseline run vs candidate run",
        description="Compare a candidate run with a baseline run, trial by trial.",
        epilog=COMPARE_RULES, formatter_class=argparse.RawDescriptionHelpFormatter))
    _add_report_args(sub.add_parser(
        "report", help="render report.md, report.html and results.csv from run directories",
        description=REPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter))
    _add_ab_args(sub.add_parser(
        "ab", help="regression gate: measure BASE and HEAD here, interleaved, until sure",
        description=AB_HELP, epilog=AB_RULES, conflict_handler="resolve",
        formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def sweep_from_args(args: argparse.Namespace):
    """The trials to run: a sweep file or preset with flag overrides, else a grid of the flags."""
    from bench.contract.sweepfile import Sweep, check_overrides, expand, load_sweep, preset_path
    overrides = {a.key: getattr(args, a.key) for a in AXES if getattr(args, a.key) is not None}
    if args.sweep and args.preset:
        raise SpecError("give --sweep or --preset, not both")
    if args.sweep or args.preset:
        return load_sweep(args.sweep or preset_path(args.preset), overrides)
    if args.resume and not overrides:
        return None  # continue the run's own plan
    check_overrides(overrides)
    return Sweep(name="cli" if overrides else "quick", trials=tuple(expand(overrides)))


# Settings a run records and a resumed run must keep: name -> default.
PROTOCOL_DEFAULTS = dataclasses.asdict(TimingProtocol())
OPTION_DEFAULTS = {"device": "auto", "data": "auto", "dataset": None, "data_dir": None,
                   "validation": None}
PRUNING_DEFAULTS = {"prune": None, "eta": None, "min_epochs": None}  # Pruning's own defaults
NEEDS_VALIDATION = ("--prune needs --validation FRACTION: pruning chooses on a validation "
                    "split, never on the test figures it reports")


def options_from_args(args: argparse.Namespace, run: dict):
    """Run settings: a flag, else the sweep file's [run], else the default. A resumed run
    keeps the settings it recorded; asking for others is a SpecError naming each."""
    from bench.run.runner import RunOptions
    asked = {name: _asked(args, run, name)
             for name in (*PROTOCOL_DEFAULTS, *OPTION_DEFAULTS, *PRUNING_DEFAULTS)}
    asked = {name: value for name, value in asked.items() if value is not None}
    recorded = _recorded_settings(args.resume or args.out)
    if recorded:
        _refuse_changes(asked, recorded, args.resume or args.out)
    settings = {**PROTOCOL_DEFAULTS, **OPTION_DEFAULTS, **PRUNING_DEFAULTS, **asked, **recorded}
    settings["dataset"] = settings["dataset"] or _dataset_label(settings["data"])
    protocol = TimingProtocol(**{k: settings[k] for k in PROTOCOL_DEFAULTS})
    pruning = parse_pruning(*(settings[k] for k in PRUNING_DEFAULTS))
    if pruning is not None and settings["validation"] is None:
        raise SpecError(NEEDS_VALIDATION)
    return RunOptions(device=settings["device"], data=settings["data"], dataset=settings["dataset"],
                      data_dir=settings["data_dir"] or None, validation=settings["validation"],
                      out=args.resume or args.out,
                      resume_only=args.resume is not None, retry_failed=args.retry_failed,
                      population=parse_population(_asked(args, run, "population") or AUTO),
                      devices=_device_count(_asked(args, run, "devices")),
                      protocol=protocol, recalibrate=args.recalibrate,
                      compilation_cache=args.compilation_cache, pruning=pruning,
                      **_executor_settings(args, run))


def _executor_settings(args: argparse.Namespace, run: dict) -> dict:
    """--executor, --ray-address and --tasks-per-node (or [run] executor, ray_address,
    tasks_per_node); the Ray-only ones are refused for the serial executor."""
    executor = _asked(args, run, "executor") or "serial"
    if executor not in EXECUTORS:
        raise SpecError(f"executor: unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    address, per_node = _asked(args, run, "ray_address"), _asked(args, run, "tasks_per_node")
    if per_node is not None and (isinstance(per_node, bool) or not isinstance(per_node, int) or per_node < 1):
        raise SpecError(f"tasks_per_node: {per_node!r} is not a positive integer")
    if executor != "ray" and (address is not None or per_node is not None):
        flag, key = (("--ray-address", "ray_address") if address is not None
                     else ("--tasks-per-node", "tasks_per_node"))
        raise SpecError(f"{flag} ([run] {key} in a sweep file) needs --executor ray")
    if address is not None and not isinstance(address, str):
        raise SpecError(f"ray_address: {address!r} is not an address (HOST:PORT)")
    return {"executor": executor, "ray_address": address, "tasks_per_node": per_node}


def _device_count(value) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise SpecError(f"devices: {value!r} is not a positive integer")


def _asked(args: argparse.Namespace, run: dict, name: str):
    """What the user asked for `name`: its flag, else the sweep file's [run] value (or None)."""
    value = getattr(args, name, None)
    value = run.get(name) if value is None else value
    if name == "targets" and value is not None:
        value = tuple(value)
    if name == "data" and value is not None:
        value = absolute_data(str(value))
    if name == "validation" and value is not None:
        value = data_sources.check_validation_fraction(value)
    return value


def absolute_data(data: str) -> str:
    """`--data` as recorded: a named source, or an absolute path (a resume may run elsewhere)."""
    return data if data in data_sources.NAMED_SOURCES else str(Path(data).expanduser().resolve())


def _dataset_label(data: str) -> str:
    """A folder or .npz is labelled by its name, so Fashion-MNIST files never pass as 'mnist'."""
    return "mnist" if data in data_sources.NAMED_SOURCES else Path(data).stem


def _refuse_changes(asked: dict, recorded: dict, run_dir: Path) -> None:
    """SpecError listing every asked setting that differs from what the run recorded."""
    differing = [f"{name}: this run used {recorded[name]!r}, you asked for {value!r}"
                 for name, value in asked.items() if name in recorded and recorded[name] != value]
    if differing:
        raise SpecError(f"{run_dir} was run with other settings, and a run keeps its settings "
                        f"so that its trials are measured alike: " + "; ".join(differing)
                        + ". Resume without these flags, or give a new --out.")


def _recorded_settings(run_dir: Path | None) -> dict:
    """The options and timing protocol a run directory was made with ({} for a new run)."""
    from bench.contract.results import HEADER, load_header
    if run_dir is None or not (Path(run_dir) / HEADER).is_file():
        return {}
    header = load_header(run_dir)
    recorded = {**header.protocol, **header.options}
    if header.options:  # recorded before --validation existed: it held nothing out
        recorded.setdefault("validation", None)
    if "targets" in recorded:
        recorded["targets"] = tuple(recorded["targets"])
    # A run keeps its pruning: one that did not prune (or was made before --prune) resumes
    # without it, so its trials are never judged by two rules.
    pruning = header.pruning or {"method": PRUNING_OFF}
    recorded["prune"] = pruning["method"]
    recorded |= {name: pruning[name] for name in ("eta", "min_epochs") if name in pruning}
    return recorded


REPORT_HELP = """\
Render the report of one run directory, or of several together (e.g. a CPU run and a
GPU run side by side: rows are labelled by run, 'name-or-id (platform)').
Output: with one run and no --out, into the run directory itself; with several runs
and no --out, into reports/combined-<run-id>+<run-id>... (relative to the current
directory). Files: report.md, report.html (self-contained, works offline), results.csv,
and always summary.json (the verdict, for scripts and CI; see the README)."""


def _formats(text: str) -> tuple[str, ...]:
    from bench.read.render.report import FORMATS
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in items if t not in FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{text!r}: formats are {', '.join(FORMATS)}")
    return items


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run directory (run.json + results.jsonl), or its results.jsonl")
    p.add_argument("--format", type=_formats, default=("md", "html", "csv"),
                   help="comma-separated: md, html, csv (default: all three)")
    p.add_argument("--out", type=Path, default=None, help="output directory (see above)")


def run_report(args: argparse.Namespace) -> int:
    """Writes the reports, then prints the summary a run ends with and the files' paths."""
    from bench.read.render import terminal
    from bench.read.render.report import render_reports
    from bench.read.render.runs import ReportError
    try:
        rendered = render_reports(args.run_dirs, args.format, args.out)
    except (ReportError, OSError, ValueError) as exc:
        print(f"bench report: error: {exc}", file=sys.stderr)
        return 2
    terminal.print_summary(rendered.verdict, [str(p) for p in rendered.paths])
    return 0


AB_HELP = """\
Measure two versions on this machine and say whether HEAD is slower or less accurate
than BASE. Each side is a git revision of this checkout (built once into a cached
worktree and environment), python:/path/to/python (an interpreter with bench installed,
e.g. another jax), or '.' (the working tree with this interpreter; HEAD's default).
Rounds are `bench run` invocations with the flags below (default --preset ci), one side
after the other, the order flipping each pair (ABBA...); pairs are added until every
verdict is sure or --budget runs out. Details: docs/regression-gate.md."""

AB_RULES = """\
verdicts, per trial matched by key, on the pairs of rounds:
  step_time  ratio HEAD/BASE of each pair's median step times; on the log ratios a
             t-interval at 1 - --alpha (95%) and a one-sided paired t-test.
             regression: p < --alpha/2 divided by the number of trials timed
             (Bonferroni) and the ratio exceeds 1 + --max-slowdown; no regression:
             the interval ends below 1 + --max-slowdown; otherwise, or before
             --min-pairs pairs, undecided (more pairs, within --budget).
  accuracy   same seeds on both sides: regression if HEAD's test accuracy drops by
             more than --max-accuracy-drop points (mean over pairs).
  status     ok in BASE, diverged/failed in HEAD is a regression.
exit status: 0 no regression, 1 regression, 2 unusable input (a side that does not
build or run), 3 undecided within the budget."""

# `bench run` flags a gate cannot pass on: each of its rounds is a new, serial run here.
AB_REFUSED = ("resume", "retry_failed", "executor", "ray_address", "tasks_per_node")


def _add_ab_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="a git revision, or python:/path/to/python")
    p.add_argument("head", metavar="HEAD", nargs="?", default=".",
                   help="the same, or '.' (default): the working tree with this interpreter")
    _add_run_args(p)
    gate = p.add_argument_group("the gate")
    gate.add_argument("--max-slowdown", type=_non_negative_float, default=0.05, metavar="FRACTION",
                      help="step-time threshold (default %(default)s = 5%%)")
    gate.add_argument("--max-accuracy-drop", type=_non_negative_float, default=1.0, metavar="PP",
                      help="test accuracy threshold, percentage points (default %(default)s)")
    gate.add_argument("--alpha", type=_non_negative_float, default=0.05,
                      help="1 - the intervals' level (default %(default)s: 95%% intervals)")
    gate.add_argument("--budget", type=_non_negative_float, default=10.0, metavar="MINUTES",
                      help="measuring time after which an unsure verdict is reported as "
                           "undecided (default %(default)s; building is not counted)")
    gate.add_argument("--min-pairs", type=_positive, default=GateRule().min_pairs, metavar="N",
                      help="pairs of rounds before a step-time verdict (default %(default)s; "
                           "the gate looks after every two pairs)")
    gate.add_argument("--max-wait", type=_non_negative_float, default=60.0, metavar="SECONDS",
                      help="before each round, wait at most this long for other processes to "
                           "leave the machine (default %(default)s)")
    gate.add_argument("--out", type=Path, default=None,
                      help="the gate's folder: base/round-NN and head/round-NN run directories, "
                           "ab.md and ab.json (default reports/ab-<time>)")
    gate.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table to FILE")
    gate.add_argument("--json", type=Path, metavar="FILE", help="also write the verdict as JSON to FILE")
    gate.add_argument("--repo", type=Path, default=None,
                      help="the git checkout BASE and HEAD belong to (default: bench's own)")
    gate.add_argument("--cache-dir", type=Path, default=None,
                      help="built revisions (default $XDG_CACHE_HOME/bench/ab)")


def ab_round_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The `bench run` flags of each round of `bench ab`: the run flags it was given, with
    paths made absolute (a side runs in its own folder) and --out left to the gate."""
    probe = argparse.ArgumentParser(add_help=False)
    _add_run_args(probe)
    flags = []
    for action in probe._actions:
        value = getattr(args, action.dest, None)
        if action.dest == "out" or value is None or value is False:
            continue
        if action.dest in AB_REFUSED:
            raise SpecError(f"{action.option_strings[0]} cannot be used with `bench ab`: each "
                            "round is a new `bench run` in one process on this machine")
        flags += [action.option_strings[0]] + ([] if action.nargs == 0 else [_flag_text(action.dest, value)])
    return tuple(flags)


def _flag_text(dest: str, value) -> str:
    if isinstance(value, tuple):
        return ",".join("auto" if v is None else str(v) for v in value)
    if dest == "data":
        return absolute_data(value)
    if isinstance(value, Path) or dest in ("data_dir", "compilation_cache"):
        return str(Path(value).expanduser().resolve())
    return str(value)


def _ab(args: argparse.Namespace) -> int:
    from bench.run.ab.command import Request, run_ab
    if not (args.sweep or args.preset):
        args.preset = "ci"
    if not 0 < args.alpha < 1:
        raise SpecError(f"--alpha {args.alpha}: expected a fraction between 0 and 1")
    flags = ab_round_flags(args)
    sweep_from_args(args)  # a misspelt preset or axis value fails here, before any build
    rule = GateRule(max_slowdown=args.max_slowdown, max_accuracy_drop=args.max_accuracy_drop,
                    alpha=args.alpha, min_pairs=args.min_pairs)
    return run_ab(Request(base=args.base, head=args.head, run_flags=flags, rule=rule,
                          budget_s=60 * args.budget, out=args.out,
                          markdown=args.markdown, json=args.json, repo=args.repo,
                          cache=args.cache_dir, max_wait_s=args.max_wait))


def _enable_compilation_cache(path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"--compilation-cache {path}: cannot use it as a directory "
                        f"({exc.strerror or exc})") from None
    from bench.run.work import enable_compilation_cache
    enable_compilation_cache(path)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from bench.run.runner import run_sweep
    if args.compilation_cache:
        _enable_compilation_cache(args.compilation_cache)
    sweep = sweep_from_args(args)
    options = options_from_args(args, sweep.run if sweep else {})
    return run_sweep(sweep, options, argv)


def _user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input or environment: shown as one line, exit status 2."""
    from bench.contract.results import RunDirError
    errors = [SpecError, SchemaError, RunDirError, data_sources.DataError]
    if "bench.engine.devices" in sys.modules:  # imported by `run` only: it loads JAX
        errors.append(sys.modules["bench.engine.devices"].DeviceError)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            from bench.read.listing import show_list
            return show_list()
        if args.command == "compare":
            return run_compare(args.baseline, args.candidate, thresholds_from_args(args),
                               normalize=args.normalize, fmt=args.format, markdown=args.markdown)
        if args.command == "report":
            return run_report(args)
        if args.command == "ab":
            return _ab(args)
        return _run(args, argv if argv is not None else sys.argv[1:])
    except KeyboardInterrupt:
        print(f"bench {args.command}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        print(f"bench {args.command}: error: {exc}", file=sys.stderr)
        return 2
