"""Chunked maps for Executor.map and Pool.map: many items per task.

A chunk is one task that applies the function to a list of items in the
worker and returns ``(results, seconds)``, its own run time. When the caller
gives no chunksize, the first chunk is a probe: it runs items in doubling
batches until about ``PROBE_BUDGET`` has passed (or ``PROBE_ITEMS`` are
done) and so measures the time per item (at the fastest batch's rate); the
rest of the items go in chunks sized to take about ``TARGET`` seconds
each, but never fewer than ``CHUNKS_PER_WORKER`` chunks per worker, so
that the load stays balanced.

This is splitting input, not scheduling: every chunk is submitted at once
and the engine places them.

Items and results that are all plain ints or all plain floats travel packed
(``_core.seq_pack``: one array of numbers, not a pickle of each), which
takes most of the (un)pickling out of a map over numbers, in the driver and
in the workers; anything else is pickled as usual.
"""

import itertools
import math
import time

from . import _remote

__all__ = ["ChunkRunner", "submit_chunks", "iter_chunks", "choose_chunksize"]

# Seconds of work per chunk. Measured with cheap items (2*x over 1M items, 2
# workers, 2 cores): chunks of ~1 ms of work (8k-15k items) finished the map
# in 116-134 ms, chunks of ~10 ms (125k) in 147-181 ms: small chunks let the
# driver's packing and unpacking overlap the workers' compute. A chunk's own
# cost (a submit, a result, a Future) is a few microseconds of the driver's.
TARGET = 0.001
PROBE_ITEMS = 512         # items sent with the probe chunk
PROBE_BUDGET = 0.005      # the probe stops after this many seconds (>= 1 item)
CHUNKS_PER_WORKER = 4     # at least this many chunks per worker

_initialized = set()      # in a worker: the initializer tokens already run here


class ChunkRunner:
    """Applies ``fn`` to each item of a chunk (in the worker).

    Attributes:
        fn: the user's callable.
        star: call ``fn(*item)`` instead of ``fn(item)``.
        init: ``(token, initializer, initargs)`` to run once per worker
            process before the first item, or None.
    """

    __slots__ = ("fn", "star", "init")

    def __init__(self, fn, star=False, init=None):
        self.fn = fn
        self.star = star
        self.init = init

    def __call__(self, items, budget=0.0):
        """Runs the chunk.

        Args:
            items: the items (argument tuples when ``star``).
            budget: if nonzero, stop after this many seconds (at least one
                item); the caller submits the rest again.
        Returns:
            ``(results, seconds)`` for the items that ran, in order.
        Raises:
            Whatever ``fn`` raises, unchanged.
        """
        if self.init is not None:
            run_initializer(self.init)
        fn = self.fn
        t0 = time.perf_counter()
        if budget:
            return self._probe(items, budget, t0)
        if self.star:
            out = list(itertools.starmap(fn, items))
        else:
            out = list(map(fn, items))
        t = time.perf_counter() - t0
        return packed(out, 0, len(out)) or out, t

    def _probe(self, items, budget, t0):
        """Runs items in batches of 1, 2, 4, ... until ``budget`` seconds
        passed or the items ran out; reports the time the items that ran
        take at the fastest per-item rate seen: a batch that was preempted
        (the machine is shared) or paid for a first call does not inflate
        the estimate, and the clock is read once per batch, not per item."""
        fn, out = self.fn, []
        best, start, size, t = None, 0, 1, t0
        while start < len(items):
            batch = items[start:start + size]
            t1 = time.perf_counter()
            out.extend(itertools.starmap(fn, batch) if self.star else map(fn, batch))
            t = time.perf_counter()
            per = (t - t1) / len(batch)
            best = per if best is None or per < best else best
            start += len(batch)
            if t - t0 >= budget:
                break
            size *= 2
        return out, (best or 0.0) * len(out)

    def __reduce__(self):
        return (ChunkRunner, (self.fn, self.star, self.init))


class Packed:
    """Items packed by ``_core.seq_pack``; unpickles as the list itself."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        from . import _core
        return (_core.seq_unpack, (self.data,))


def packed(items, start, stop):
    """``items[start:stop]`` as a ``Packed`` when they are all plain ints or
    all plain floats (a list or tuple of them), else None."""
    from . import _core
    data = _core.seq_pack(items, start, stop)
    return None if data is None else Packed(data)


def chunk_of(items, start, stop):
    """The chunk ``items[start:stop]`` as it is sent: packed when it can be,
    else the slice (a range stays a range)."""
    if type(items) is list or type(items) is tuple:
        p = packed(items, start, stop)
        if p is not None:
            return p
    return items[start:stop]


def run_initializer(init):
    """Runs a Pool initializer once in this worker process (by its token)."""
    token, initializer, initargs = init
    if token not in _initialized:
        initializer(*initargs)
        _initialized.add(token)


def as_sequence(iterable):
    """The items of a map as something ``len()`` and slicing work on.

    A range, list or tuple (and a numpy array) is kept as it is: slicing a
    range gives a range, which travels as three numbers instead of a list of
    items. Anything else (generators, sets, ...) is read into a list.
    """
    if isinstance(iterable, (range, list, tuple)):
        return iterable
    t = type(iterable)
    if t.__name__ == "ndarray" and t.__module__ == "numpy":
        return iterable
    return list(iterable)


def choose_chunksize(per_item, nitems, workers):
    """The chunksize for ``nitems`` items that take ``per_item`` seconds each.

    Args:
        per_item: measured seconds per item.
        nitems: items still to submit.
        workers: workers that share them.
    Returns:
        ``TARGET / per_item``, capped so that there are at least
        ``CHUNKS_PER_WORKER`` chunks per worker; at least 1.
    """
    size = int(TARGET / max(per_item, 1e-9))
    cap = math.ceil(nitems / (CHUNKS_PER_WORKER * max(1, workers)))
    return max(1, min(size, cap))


def submit_chunks(remote_fn, items, chunksize, workers, deadline=None):
    """Submits ``items`` in chunks through ``remote_fn`` (a remote ChunkRunner).

    Args:
        remote_fn: a ``RemoteFunction`` wrapping a ``ChunkRunner``.
        items: a list of items.
        chunksize: items per chunk, or None to measure (see the module doc).
        workers: the number of workers, for the measured chunksize.
        deadline: ``time.monotonic()`` value after which the probe stops
            waiting (its future is kept either way).
    Returns:
        A list of Futures, each resolving to ``(results, seconds)``; their
        results concatenated in order are the results of all items. If the
        probe failed, the list holds only the probe (the map fails with its
        error).
    """
    n = len(items)
    futures = []
    start = 0
    if chunksize is None:
        if n <= CHUNKS_PER_WORKER * max(1, workers):
            chunksize = 1
        else:
            probe = remote_fn.remote(chunk_of(items, 0, PROBE_ITEMS), PROBE_BUDGET)
            futures.append(probe)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if probe.exception(timeout) is not None:
                    return futures
            except TimeoutError:
                # The map's deadline passed before its first result: reading
                # the results raises the timeout; nothing more is submitted.
                return futures
            results, seconds = probe.result()
            start = len(results)
            chunksize = choose_chunksize(seconds / max(1, start), n - start, workers)
    for i in range(start, n, chunksize):
        futures.append(remote_fn.remote(chunk_of(items, i, i + chunksize)))
    return futures


def iter_chunks(futures, deadline=None):
    """Yields the chunks' result lists in order, dropping each chunk's future
    once its results were handed out.

    Args:
        futures: the list ``submit_chunks`` returned (consumed from the front).
        deadline: ``time.monotonic()`` deadline, or None.
    Yields:
        Lists of results, in item order.
    Raises:
        GetTimeoutError: the deadline passed.
        The function's exception, or an engine error, of the first failed chunk.
    """
    futures.reverse()
    while futures:
        f = futures[-1]
        if deadline is None:
            results, _ = f._take()
        else:
            results, _ = f._take(max(0.0, deadline - time.monotonic()))
        futures.pop()
        del f
        yield results


def remote_runner(fn, star=False, init=None):
    """A RemoteFunction that runs chunks of ``fn``.

    Args:
        fn: the user's callable.
        star: pass each item as ``*args``.
        init: a Pool initializer triple, or None.
    Returns:
        A ``RemoteFunction``.
    """
    label = getattr(fn, "__qualname__", None) or type(fn).__name__
    return _remote.RemoteFunction(ChunkRunner(fn, star, init), {"name": f"map({label})"})
