"""The measurement loop: pairs of rounds, in alternating order, until the verdict is sure.

Pairs come in blocks of two (BASE HEAD, HEAD BASE: one ABBA block), so that at each look
both sides have gone first equally often and a machine that drifts favours neither. After
each block every trial is judged (decide.py); the loop stops when the verdict can no longer
change the exit status (a regression, or nothing undecided), or when another block, at the
average cost of the pairs so far, would not fit in the budget: then what is still undecided
is reported as undecided, with its interval. The clock and the round runner are arguments,
so the rule is tested on planted rounds.
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


BLOCK = 2  # pairs per look: one ABBA block


def measure(run: Callable[[str, int], Round], rule: Rule, budget_s: float,
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
        if number % BLOCK:
            continue  # the block's second pair first
        elapsed = clock() - start
        if settled(verdicts):
            return Outcome(tuple(rounds), tuple(verdicts), number, elapsed, SETTLED)
        if elapsed + BLOCK * elapsed / number > budget_s:
            return Outcome(tuple(rounds), tuple(verdicts), number, elapsed, BUDGET)


def labels_of(rounds: list[Round]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for r in rounds:
        labels.update(r.labels)
    return labels
