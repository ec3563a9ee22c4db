"""How often `bench ab`'s rule is wrong, by simulation: its real loop and decision on planted rounds.

Each simulated gate runs `bench.run.ab.gate.measure` with `bench.run.ab.decide.Rule` on rounds
whose per-pair log step-time ratios are drawn from a normal (or Student t) distribution with the
spreads measured on the 2-vCPU VM (docs/measurements.md: the `ci` preset's per-pair log ratios
spread by about 0.047 for the dense trial, 0.03 for conv and the LSTM), a round costing
`--round-s` seconds of a fake clock within the `--budget`. For each case it prints how many
gates ended in a regression, no regression or undecided, and the mean pairs used.

    python benchmarks/ab_rule_sim.py                      # A/A, a planted 8% and 3% dense slowdown
    python benchmarks/ab_rule_sim.py --min-pairs 2 --legacy   # the first rule, for comparison
    python benchmarks/ab_rule_sim.py --slowdowns 0.04          # another planted slowdown

--legacy replays the rule as first built (a look after every pair, no Bonferroni over trials).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run.ab import decide, gate  # noqa: E402
from bench.run.ab.decide import Rule, Sample  # noqa: E402
from bench.run.ab.rounds import Round  # noqa: E402

SPREADS = {"dense": 0.047, "conv": 0.030, "lstm": 0.030}  # sd of one pair's log ratio


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def one_gate(slowdown: float, rule: Rule, budget_s: float, round_s: float, rng: random.Random,
             tail_df: float | None) -> tuple[int, int]:
    """(exit status, pairs) of one simulated gate; `slowdown` applies to the dense trial."""
    clock, ratios = Clock(), {}

    def draw(trial: str) -> float:
        z = rng.gauss(0, 1) if tail_df is None else _student(rng, tail_df)
        return math.exp(SPREADS[trial] * z + (math.log1p(slowdown) if trial == "dense" else 0))

    def run(role: str, number: int) -> Round:
        clock.now += round_s
        if number not in ratios:
            ratios[number] = {t: draw(t) for t in SPREADS}
        step = {t: 0.001 * (ratios[number][t] if role == "head" else 1) for t in SPREADS}
        return Round(role, number, Path(f"{role}-{number}"),
                     {t: Sample("ok", step[t], 0.9) for t in SPREADS})
    outcome = gate.measure(run, rule, budget_s, clock=clock)
    return decide.exit_status(list(outcome.verdicts)), outcome.pairs


def _student(rng: random.Random, df: float) -> float:
    """A Student t draw scaled to variance 1 (heavier tails than the normal)."""
    chi2 = rng.gammavariate(df / 2, 2)
    return rng.gauss(0, 1) / math.sqrt(chi2 / df) / math.sqrt(df / (df - 2))


def legacy() -> None:
    """The first rule: every pair a look, the t-test at alpha/2 whatever the number of trials."""
    decide.Rule.test_level = lambda self, trials: self.alpha / 2
    gate.BLOCK = 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gates", type=int, default=2000, help="simulated gates per case (default 2000)")
    p.add_argument("--budget", type=float, default=10, help="minutes (default 10)")
    p.add_argument("--round-s", type=float, default=24, help="seconds a round costs (default 24)")
    p.add_argument("--min-pairs", type=int, default=Rule().min_pairs)
    p.add_argument("--tail-df", type=float, default=None, help="Student t noise with these degrees of freedom")
    p.add_argument("--legacy", action="store_true", help="the first rule (see the docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slowdowns", default="0,0.08,0.065,0.03",
                   help="the dense trial's planted slowdowns, one case each (default 0,0.08,0.065,0.03)")
    args = p.parse_args()
    if args.legacy:
        legacy()
    rule, rng = Rule(min_pairs=args.min_pairs), random.Random(args.seed)
    print(f"rule: min pairs {rule.min_pairs}, {gate.BLOCK} pair(s) per look, "
          f"{'legacy' if args.legacy else 'Bonferroni over trials'}; budget {args.budget:g} min, "
          f"round {args.round_s:g} s; spreads {SPREADS}; noise "
          f"{'normal' if args.tail_df is None else f't({args.tail_df:g})'}; {args.gates} gates a case")
    print("| case | regression (exit 1) | no regression (0) | undecided (3) | mean pairs |")
    print("|---|--:|--:|--:|--:|")
    for slowdown in (float(text) for text in args.slowdowns.split(",")):
        name = "A/A" if slowdown == 0 else f"dense +{100 * slowdown:g}%"
        ends = [one_gate(slowdown, rule, 60 * args.budget, args.round_s, rng, args.tail_df)
                for _ in range(args.gates)]
        codes = Counter(code for code, _ in ends)
        share = {c: f"{100 * codes[c] / args.gates:.1f}%" for c in (0, 1, 3)}
        print(f"| {name} | {share[1]} | {share[0]} | {share[3]} | "
              f"{sum(n for _, n in ends) / args.gates:.1f} |", flush=True)


if __name__ == "__main__":
    main()
