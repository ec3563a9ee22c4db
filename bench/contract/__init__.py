"""The contract: what a trial is (the axes, TrialConfig, Record, statuses, schema version),
the registries of names, sweep files and the run directory's format. Imports no JAX."""
