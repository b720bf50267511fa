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


# ---- large_objects

def array_sum(x):
    """The task of large_objects: sums the array it is given (a zero-copy view
    or an unpickled copy, depending on the system)."""
    return float(x.sum())


def shm_sum(name, nelems):
    """large_objects, multiprocessing.shared_memory peer: attaches to the
    segment by name and sums it as float64 without copying."""
    import sys

    import numpy as np
    from multiprocessing import resource_tracker, shared_memory
    if sys.version_info >= (3, 13):
        shm = shared_memory.SharedMemory(name=name, track=False)
    else:
        # Python < 3.13 registers an attached segment with the resource
        # tracker as if this process owned it; the driver owns and unlinks it.
        register = resource_tracker.register
        resource_tracker.register = lambda *a, **k: None
        try:
            shm = shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = register
    try:
        x = np.ndarray((nelems,), dtype=np.float64, buffer=shm.buf)
        s = float(x.sum())
        del x
        return s
    finally:
        shm.close()


def warm_numpy(x):
    """Warm-up task of large_objects: imports numpy in the worker and takes a
    moment, so that every worker of the pool gets one."""
    import numpy as np
    time.sleep(0.05)
    return float(np.asarray(x).sum())
