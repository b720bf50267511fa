"""Scenario modules, in the order `run.py` runs them. Each module defines
NAME, TITLE, DESCRIPTION, SYSTEMS (harness.System), PRIMARY (the shoal system
ratios are computed against), FLOOR (a system name or None), WARMUP_ROUND
(run one discarded round first), optionally REPS (repetitions when not 5),
expected(system, params) -> check string, and measure(system, params) ->
{"value", "check", "extra"}, which runs in a fresh child process."""

ORDER = ["floor", "tasks_async", "tasks_sync", "map", "startup", "memory", "large_objects",
         "transfer", "placement", "cluster_tasks_async"]
