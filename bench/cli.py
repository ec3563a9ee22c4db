"""Command line: `python -m bench run | list`. The only module that reads flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import data as data_sources
from bench.devices import PLATFORMS, DeviceError
from bench.spec import SpecError, SweepSpec

DEFAULTS = SweepSpec()


def _csv(kind):
    """An argparse type for comma-separated values of `kind` ('auto' for units means reference)."""
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        try:
            return tuple(kind(t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected comma-separated {kind.__name__} values") from None
    return parse


def _units(text: str):
    return None if text in ("ref", "reference", "auto") else int(text)


_units.__name__ = "int"


def _add_run_args(p: argparse.ArgumentParser) -> None:
    axis = p.add_argument_group("sweep axes (comma-separated lists; every combination is a trial)")
    axis.add_argument("--models", type=_csv(str), default=DEFAULTS.models)
    axis.add_argument("--activations", type=_csv(str), default=DEFAULTS.activations)
    axis.add_argument("--optimizers", type=_csv(str), default=DEFAULTS.optimizers)
    axis.add_argument("--units", type=_csv(_units), default=DEFAULTS.units,
                      help="default: each family's reference width (dense 512, conv 32, recurrent 128)")
    axis.add_argument("--depth", type=_csv(int), default=DEFAULTS.depths, help="dense hidden layers")
    axis.add_argument("--cell", type=_csv(str), default=DEFAULTS.cells, help="recurrent cell")
    axis.add_argument("--learning-rate", type=_csv(float), default=DEFAULTS.learning_rates,
                      help="default: each optimizer's own default (see `bench list`)")
    axis.add_argument("--batch-size", type=_csv(int), default=DEFAULTS.batch_sizes)
    axis.add_argument("--epochs", type=_csv(int), default=DEFAULTS.epochs)
    axis.add_argument("--seeds", type=_csv(int), default=DEFAULTS.seeds)
    where = p.add_argument_group("where")
    where.add_argument("--device", default="auto", help=f"one of {', '.join(PLATFORMS)}")
    where.add_argument("--data", default="auto",
                       help="auto, embedded, tfds, or a folder of IDX files / an .npz file")
    where.add_argument("--dataset", default="mnist",
                       help=f"for --data tfds: {', '.join(data_sources.TFDS_DATASETS)}")
    where.add_argument("--data-dir", default=None, help="TFDS data directory")
    where.add_argument("--out", type=Path, default=None, help="run directory (default reports/<run-id>/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_args(sub.add_parser("run", help="train, time and evaluate a sweep of trials"))
    sub.add_parser("list", help="models, activations, optimizers and data sources")
    return parser


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    return SweepSpec(models=args.models, activations=args.activations, optimizers=args.optimizers,
                     units=args.units, learning_rates=args.learning_rate,
                     batch_sizes=args.batch_size, epochs=args.epochs, depths=args.depth,
                     cells=args.cell, seeds=args.seeds)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        from bench.listing import show_list
        return show_list()
    from bench.runner import RunOptions, run_sweep
    options = RunOptions(device=args.device, data=args.data, dataset=args.dataset,
                         data_dir=args.data_dir, out=args.out)
    try:
        return run_sweep(spec_from_args(args), options, argv if argv is not None else sys.argv[1:])
    except (SpecError, DeviceError, data_sources.DataError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
