"""shoal.Executor: a concurrent.futures.Executor that runs calls as shoal tasks."""

import concurrent.futures
import itertools
import threading
import time
import types

from . import _api, _chunks, _remote

__all__ = ["Executor"]

_CACHE_MAX = 4096
_remote_cache = {}          # callable -> RemoteFunction (see remote_for)
_cache_lock = threading.Lock()
_CACHEABLE = (types.FunctionType, types.BuiltinFunctionType, type)


def remote_for(fn):
    """The RemoteFunction that runs ``fn``, registered once per callable.

    Plain functions, builtins and classes are cached by identity (like
    ``@shoal.remote``, a function is pickled when first used: later changes to
    globals it reads are not seen). Other callables (bound methods, callable
    objects, partials) are pickled afresh each time, as multiprocessing does.

    Args:
        fn: a callable, or a RemoteFunction (returned as is).
    Returns:
        A ``RemoteFunction``.
    Raises:
        TypeError: fn is not callable.
    """
    if isinstance(fn, _remote.RemoteFunction):
        return fn
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    if not isinstance(fn, _CACHEABLE):
        return _remote.RemoteFunction(fn)
    rf = _remote_cache.get(fn)
    if rf is None:
        with _cache_lock:
            rf = _remote_cache.get(fn)
            if rf is None:
                if len(_remote_cache) >= _CACHE_MAX:
                    _remote_cache.clear()
                rf = _remote_cache[fn] = _remote.RemoteFunction(fn)
    return rf


def _runner_for(fn, star):
    func = fn._function if isinstance(fn, _remote.RemoteFunction) else fn
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")
    key = ("chunks", func, star)
    if not isinstance(func, _CACHEABLE):
        return _chunks.remote_runner(func, star)
    rf = _remote_cache.get(key)
    if rf is None:
        with _cache_lock:
            rf = _remote_cache.get(key)
            if rf is None:
                if len(_remote_cache) >= _CACHE_MAX:
                    _remote_cache.clear()
                rf = _remote_cache[key] = _chunks.remote_runner(func, star)
    return rf


class _Tracked:
    """The futures an executor or pool submitted and that were not yet seen
    done; pruned as it grows, so it costs one append per submit."""

    __slots__ = ("items", "limit", "lock")  # items: anything with done()

    # Futures kept here keep their results alive in the daemon (and large
    # ones in the object store): prune often, and whenever asked.
    def __init__(self):
        self.items = []
        self.limit = 256
        self.lock = threading.Lock()

    def add(self, f):
        with self.lock:  # pending() replaces the list: no append may be lost
            items = self.items
            items.append(f)
            full = len(items) >= self.limit
        if full:
            self.pending()

    def pending(self):
        """The futures not yet done; the done ones are forgotten."""
        with self.lock:
            self.items = left = [g for g in self.items if not g.done()]
            self.limit = max(256, 2 * len(left))
        return list(left)

    def extend(self, fs):
        for f in fs:
            self.add(f)


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run as shoal tasks.

    ``submit`` returns a ``shoal.Future``; ``map`` sends items in chunks (one
    task per chunk) and yields results lazily, in order. Use it as a context
    manager, or call ``shutdown``.

    The engine decides how many tasks run at once (one per free CPU of the
    cluster). ``max_workers`` sizes the private cluster when this executor is
    what starts shoal; otherwise it only informs the chunk size of ``map``:
    it does not throttle submissions (that would be a task queue in Python).
    """

    def __init__(self, max_workers=None):
        """Creates the executor, initializing shoal if it is not yet.

        Args:
            max_workers: the number of workers of the private cluster started
                when shoal is not initialized yet; also the worker count
                ``map`` assumes when choosing a chunk size. Default: the
                cluster's own.
        Raises:
            ValueError: max_workers is not a positive int.
        """
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be an int, not {max_workers!r}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if not _api.is_initialized():
            with _api._lock:
                if not _api.is_initialized():
                    _api.init(num_workers=max_workers)
        self._max_workers = max_workers
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        self._tracked = _Tracked()

    def _workers(self):
        if self._max_workers:
            return self._max_workers
        try:
            return int(_api._client().node_info.get("num_workers") or 1)
        except Exception:
            return 1

    def submit(self, fn, /, *args, **kwargs):
        """Runs ``fn(*args, **kwargs)`` as a task.

        Args:
            fn: a picklable callable (functions, lambdas and closures work: they
                are pickled with cloudpickle), or a remote function.
            *args, **kwargs: its arguments; shoal Futures among them are
                dependencies (the task receives their values).
        Returns:
            A ``shoal.Future``.
        Raises:
            RuntimeError: the executor was shut down.
            TypeError: fn is not callable, or an argument cannot be pickled.
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        f = remote_for(fn).remote(*args, **kwargs)
        self._tracked.add(f)
        return f

    def map(self, fn, *iterables, timeout=None, chunksize=None):
        """Like ``map(fn, *iterables)``, computed by tasks.

        The iterables are read at once (as concurrent.futures does); results
        are yielded lazily, in order.

        Args:
            fn: a picklable callable.
            *iterables: argument iterables, zipped.
            timeout: seconds from this call after which a result that is not
                there yet raises ``TimeoutError`` (``shoal.GetTimeoutError``).
            chunksize: items per task. None (the default) measures the
                function on a first small chunk and picks chunks of ~10 ms,
                at least 4 per worker; 1 submits one task per item.
        Returns:
            An iterator of results.
        Raises:
            RuntimeError: the executor was shut down.
            ValueError: chunksize < 1.
            The function's exception (from the iterator), at the item that
            raised.
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        # One iterable: items travel bare, not as 1-tuples (less to pickle).
        star = len(iterables) != 1
        items = list(zip(*iterables)) if star else _chunks.as_sequence(iterables[0])
        if chunksize == 1:
            rf = remote_for(fn)
            fs = [rf.remote(*args) for args in items] if star else [rf.remote(x) for x in items]
            self._tracked.extend(fs)
            return _single_results(fs, deadline)
        rf = _runner_for(fn, star)
        fs = _chunks.submit_chunks(rf, items, chunksize, self._workers(), deadline)
        self._tracked.extend(fs)
        return _chunk_results(fs, deadline)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stops accepting work; optionally cancels queued tasks and waits.

        Args:
            wait: block until every task submitted through this executor
                finished.
            cancel_futures: cancel the tasks that have not started yet.
        Returns:
            None.
        """
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            # Newest first: those are the likeliest to be still queued.
            for f in reversed(self._tracked.pending()):
                f.cancel()
        if wait:
            concurrent.futures.wait(self._tracked.pending())


def _single_results(fs, deadline):
    # As concurrent.futures: a future that timed out is cancelled with the rest.
    try:
        fs.reverse()
        while fs:
            if deadline is None:
                yield fs[-1].result()
            else:
                yield fs[-1].result(max(0.0, deadline - time.monotonic()))
            fs.pop()
    finally:
        for f in fs:
            f.cancel()


def _chunk_results(fs, deadline):
    # chain() hands out the items in C; this generator runs once per chunk.
    return itertools.chain.from_iterable(_chunk_lists(fs, deadline))


def _chunk_lists(fs, deadline):
    try:
        yield from _chunks.iter_chunks(fs, deadline)
    finally:
        for f in fs:
            f.cancel()
