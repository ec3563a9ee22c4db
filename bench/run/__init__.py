"""Orchestration: the plan of work units, the executors that run them, and `bench run`."""
