"""`bench ab BASE HEAD`: two versions measured on this machine, interleaved, until the verdict is sure.

spec.py reads a side's name, build.py (with requirements.py) builds a revision into a cached
worktree and environment, rounds.py runs one `bench run` of one side and reads its run
directory back, schedule.py orders the rounds (ABBA...) and waits out a busy machine,
decide.py is the decision rule (pure), gate.py the loop that adds rounds until the verdict is
sure or the budget is spent, outputs.py the Markdown and JSON, command.py the command.
Imports no JAX: each side runs in its own process (docs/regression-gate.md).
"""
