"""The measurement loop: pairs of rounds, in alternating order, until the verdict is sure.

After each pair every trial is judged (decide.py). The loop stops when the verdict can no
longer change the exit status (a regression, or nothing undecided) once `min_pairs` pairs
are in, or when another pair, at the average cost of those so far, would not fit in the
budget: then what is still undecided is reported as undecided, with its interval. The
clock and the round runner are arguments, so the rule is tested on planted rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from bench.run.ab.decide import Pair, Rule, Verdict, judge, settled
from bench.run.ab.rounds import Round
from bench.run.ab.schedule import pair_order

SETTLED, BUDGET = "settled", "budget"


@dataclass(frozen=True)
class Outcome:
    rounds: tuple[Round, ...]  # in the order they ran
    verdicts: tuple[Verdict, ...]
    pairs: int
    seconds: float
    stopped: str  # SETTLED or BUDGET


def paired(rounds: tuple[Round, ...] | list[Round]) -> list[Pair]:
    """(BASE's samples, HEAD's samples) of each complete pair, by pair number."""
    by_number: dict[int, dict[str, Round]] = {}
    for r in rounds:
        by_number.setdefault(r.number, {})[r.role] = r
    return [(sides["base"].samples, sides["head"].samples)
            for _, sides in sorted(by_number.items()) if len(sides) == 2]


def measure(run: Callable[[str, int], Round], rule: Rule, budget_s: float, min_pairs: int = 2,
            clock: Callable[[], float] = time.monotonic,
            on_pair: Callable[[list[Round], list[Verdict]], None] | None = None) -> Outcome:
    """Runs pairs of rounds (`run(role, pair_number)`) until settled or out of budget."""
    start, rounds, verdicts = clock(), [], []
    while True:
        number = len(rounds) // 2 + 1
        rounds += [run(role, number) for role in pair_order(number - 1)]
        verdicts = judge(paired(rounds), labels_of(rounds), rule)
        if on_pair is not None:
            on_pair(rounds, verdicts)
        elapsed = clock() - start
        if number >= min_pairs and settled(verdicts):
            return Outcome(tuple(rounds), tuple(verdicts), number, elapsed, SETTLED)
        if elapsed + elapsed / number > budget_s:
            return Outcome(tuple(rounds), tuple(verdicts), number, elapsed, BUDGET)


def labels_of(rounds: list[Round]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for r in rounds:
        labels.update(r.labels)
    return labels
