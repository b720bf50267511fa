"""The functions every system runs. They live in an importable module (bench/
is put on PYTHONPATH for every benchmark process and the workers they start),
so every system pickles them the same way: by reference."""

import os
import time


def noop(x):
    """The no-op task: returns its argument, so results can be checked."""
    return x


def noop0():
    """A no-op without arguments (memory scenario: no argument bytes)."""
    return None


def double(x):
    """The cheap function of the map scenario."""
    return x * 2


def block_until(path, started=None, limit_s=600.0):
    """Occupies a worker until `path` exists (or `limit_s` passed); creates
    `started` first, so the caller knows the worker is busy."""
    if started:
        open(started, "w").close()
    end = time.monotonic() + limit_s
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)
    return os.getpid()
