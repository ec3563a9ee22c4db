"""Successive halving (`--prune halving`): at which epochs a sweep's configurations are
compared (its rungs), and which of them train on. Pure functions of plain data, no JAX: the
engine asks them at each rung (bench/engine/training.py), the CLI checks the settings.

A rung's decision is made within a halving group: the configurations that differ only in
the per-member tuning axes (learning rate, L1, L2, dropout rate), trained as one work unit
(bench/run/groups.py: `halving_units`). A configuration's seeds are one entry: kept or
stopped together. Scores are validation accuracies, never test ones: pruning chooses, and
whatever chooses must not see the figures the report gives.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

from bench.contract.schema import SpecError

METHODS = ("halving",)  # --prune; "off" (the default) prunes nothing
OFF = "off"


@dataclass(frozen=True)
class Pruning:
    """How a run prunes: run.json's `pruning`, and each of its records' (so that a record
    says its run pruned)."""

    method: str = "halving"
    eta: int = 3          # each rung keeps the best 1/eta of the configurations
    min_epochs: int = 1   # the first rung; then min_epochs x eta, x eta^2, ...

    def rungs(self, epochs: int) -> tuple[int, ...]:
        return rungs(self.min_epochs, self.eta, epochs)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> Pruning | None:
        return None if not data else cls(**data)

    def describe(self, epochs: int | None = None) -> str:
        """'successive halving (eta 3; rungs at epochs 1, 3)'."""
        if epochs is None:
            return f"successive halving (eta {self.eta}, first rung at epoch {self.min_epochs})"
        at = self.rungs(epochs)
        where = (f"rungs at epoch{'s' if len(at) > 1 else ''} {', '.join(map(str, at))}" if at
                 else f"no rung below {epochs} epochs: nothing is pruned")
        return f"successive halving (eta {self.eta}; {where})"


def parse_pruning(method, eta=None, min_epochs=None) -> Pruning | None:
    """The run's pruning (None for 'off'), from --prune/--eta/--min-epochs or [run] keys;
    SpecError naming what is wrong. --eta and --min-epochs need --prune halving."""
    method = OFF if method is None else method
    if method not in (OFF, *METHODS):
        valid = ", ".join((OFF, *METHODS))
        raise SpecError(f"prune: unknown method {method!r}; valid: {valid}")
    if method == OFF:
        given = [name for name, value in (("eta", eta), ("min_epochs", min_epochs))
                 if value is not None]
        if given:
            raise SpecError(f"{' and '.join(given)}: only with --prune halving (they set "
                            "its rungs)")
        return None
    default = Pruning()
    eta = _whole("eta", default.eta if eta is None else eta, 2)
    first = default.min_epochs if min_epochs is None else min_epochs
    return Pruning(method, eta, _whole("min_epochs", first, 1))


def _whole(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SpecError(f"{name}: {value!r} is not an integer >= {least}")
    return value


def rungs(min_epochs: int, eta: int, epochs: int) -> tuple[int, ...]:
    """The epochs after which configurations are compared: min_epochs x eta^k below `epochs`
    (a rung at the last epoch would stop nothing)."""
    out, rung = [], min_epochs
    while rung < epochs:
        out.append(rung)
        rung *= eta
    return tuple(out)


def rank_key(scores: Sequence[float | None]) -> tuple:
    """A configuration's place at a rung (lower is better): its mean score over its seeds, a
    lost seed (diverged or failed: None, or not finite) counting as the worst score, 0.

    A configuration that lost a seed ranks below every one that lost none: only a
    configuration whose every seed finished can be a report's best, so it cannot win."""
    kept = [s if s is not None and math.isfinite(s) else None for s in scores]
    lost = sum(s is None for s in kept)
    return (lost > 0, -statistics.fmean([0.0 if s is None else s for s in kept]))


def survivors(scores: dict[Hashable, Sequence[float | None]], eta: int) -> set:
    """The configurations that train on: the best ceil(n / eta) of the n in `scores`
    (configuration -> its seeds' scores) by `rank_key`; ties go to the one listed first."""
    keep = math.ceil(len(scores) / eta)
    order = sorted(scores, key=lambda c: rank_key(scores[c]))  # stable: listed order on ties
    return set(order[:keep])


@dataclass(frozen=True)
class Entry:
    """One member at a rung: its configuration, whether it still trains, and its score at
    the rung (None if it diverged or failed)."""

    config: Hashable
    training: bool
    score: float | None


def to_stop(entries: Sequence[Entry], eta: int) -> list[int]:
    """The indices of the members to stop at this rung: the training members of every
    configuration outside `survivors`. A configuration takes part if any of its seeds still
    trains; a seed that no longer does scores as lost."""
    scores: dict[Hashable, list[float | None]] = {}
    for entry in entries:
        scores.setdefault(entry.config, []).append(entry.score if entry.training else None)
    racing = {c: s for c, s in scores.items()
              if any(e.training for e in entries if e.config == c)}
    kept = survivors(racing, eta)
    return [i for i, e in enumerate(entries) if e.training and e.config not in kept]
