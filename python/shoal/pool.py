"""shoal.Pool: ``multiprocessing.pool.Pool`` semantics on shoal tasks.

Chunk sizes: when ``chunksize`` is None (the default for every map method,
also ``imap`` and ``imap_unordered``), the first chunk is a probe that runs
items for about 5 ms and reports its own run time; the other chunks are then
sized to take ~10 ms each, but never fewer than 4 chunks per worker. A map
therefore waits for the probe (one item at least) before it returns, also
``map_async``. Inputs are read into a list first, as ``Pool.map`` does.
"""

import multiprocessing
import os
import queue
import threading
import time

from . import _api, _chunks, _remote
from .exceptions import GetTimeoutError
from .executor import _CACHEABLE, _Tracked, remote_for

__all__ = ["Pool", "AsyncResult", "MapResult", "IMapIterator"]

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"


class PoolTimeoutError(GetTimeoutError, multiprocessing.TimeoutError):
    """``multiprocessing.TimeoutError`` raised by ``AsyncResult.get`` and the
    imap iterators, also a ``shoal.GetTimeoutError``."""


def _timeout_error(timeout):
    return PoolTimeoutError(f"the result was not ready within {timeout}s (the tasks keep running)")


class AsyncResult:
    """The result of ``apply_async`` (and, as ``MapResult``, of the map_async
    methods): ``get``, ``wait``, ``ready``, ``successful``.

    With a callback, the result becomes ready after the callback ran (as in
    multiprocessing); without one, as soon as its tasks finished.
    """

    def __init__(self, futures, callback=None, error_callback=None, single=True):
        self._futures = futures
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._event = None
        if callback is not None or error_callback is not None:
            self._event = threading.Event()
            self._left = len(futures)
            self._lock = threading.Lock()
            if not futures:
                self._finish()
            for f in futures:
                f.add_done_callback(self._one_done)

    def _one_done(self, _f):
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._finish()

    def _finish(self):
        try:
            err = self._first_error()
            if err is None:
                if self._callback is not None:
                    self._callback(self._value())
            elif self._error_callback is not None:
                self._error_callback(err)
        finally:
            self._event.set()

    def _first_error(self):
        for f in self._futures:
            err = f.exception(0)
            if err is not None:
                return err
        return None

    def _value(self):
        if self._single:
            return self._futures[0].result(0)
        out = []
        for f in self._futures:
            out.extend(f._take(0)[0])
        return out

    def ready(self):
        """Returns: whether the call has finished (successfully or not)."""
        if self._event is not None:
            return self._event.is_set()
        return all(f.done() for f in self._futures)

    done = ready  # so that a pool can track results like futures

    def successful(self):
        """Returns: whether the call finished without raising.

        Raises:
            ValueError: the result is not ready yet.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._first_error() is None

    def wait(self, timeout=None):
        """Waits until the result is ready or ``timeout`` seconds passed.

        Args:
            timeout: seconds, or None for ever.
        Returns:
            None.
        """
        if self._event is not None:
            self._event.wait(timeout)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        for f in self._futures:
            if not f.done():
                try:
                    f._wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except GetTimeoutError:
                    return
            # Unpickle each chunk as it arrives, while later ones still run,
            # instead of all of them once the last is done.
            if f._error() is None:
                f._value_or_raise()

    def get(self, timeout=None):
        """The result, or the exception the function raised.

        Args:
            timeout: seconds to wait, or None for ever.
        Returns:
            The function's return value (a list for the map methods).
        Raises:
            multiprocessing.TimeoutError: not ready within ``timeout``
                (``PoolTimeoutError``, also a ``shoal.GetTimeoutError``).
            The function's own exception, or a shoal engine error.
        """
        self.wait(timeout)
        if not self.ready():
            raise _timeout_error(timeout)
        err = self._first_error()
        if err is not None:
            raise err
        return self._value()

    def __repr__(self):
        return f"<shoal.pool.{type(self).__name__} {'ready' if self.ready() else 'pending'}>"


class MapResult(AsyncResult):
    """The result of ``map_async``/``starmap_async``: ``get`` returns a list."""

    def __init__(self, futures, callback=None, error_callback=None):
        super().__init__(futures, callback, error_callback, single=False)


class IMapIterator:
    """The iterator ``imap`` and ``imap_unordered`` return; ``next(timeout)``
    waits at most ``timeout`` seconds for the next result."""

    def __init__(self, futures, ordered):
        self._ordered = ordered
        self._buffer = []
        if ordered:
            futures.reverse()
            self._futures = futures
        else:
            self._left = len(futures)
            self._done = queue.SimpleQueue()
            for f in futures:
                f.add_done_callback(self._done.put)

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self, timeout=None):
        """The next result.

        Args:
            timeout: seconds to wait, or None for ever.
        Returns:
            The next result (in input order for ``imap``, in completion order
            for ``imap_unordered``).
        Raises:
            StopIteration: no results left.
            multiprocessing.TimeoutError: nothing arrived within ``timeout``.
            The function's exception, when the chunk holding this item failed.
        """
        while not self._buffer:
            self._buffer = self._next_chunk(timeout)
            self._buffer.reverse()
        return self._buffer.pop()

    def _next_chunk(self, timeout):
        if self._ordered:
            if not self._futures:
                raise StopIteration
            f = self._futures[-1]
            try:
                results, _ = f._take(timeout)
            except GetTimeoutError:
                raise _timeout_error(timeout) from None
            self._futures.pop()
            return list(results)
        if self._left == 0:
            raise StopIteration
        try:
            f = self._done.get(timeout=timeout)
        except queue.Empty:
            raise _timeout_error(timeout) from None
        self._left -= 1
        return list(f._take(0)[0])


class _Apply:
    """``fn(*args, **kwargs)`` after the pool's initializer (in the worker)."""

    __slots__ = ("fn", "init")

    def __init__(self, fn, init):
        self.fn = fn
        self.init = init

    def __call__(self, *args, **kwargs):
        _chunks.run_initializer(self.init)
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        return (_Apply, (self.fn, self.init))


class Pool:
    """A ``multiprocessing.pool.Pool`` whose work runs as shoal tasks.

    Exiting the context manager calls ``terminate()``, as multiprocessing does:
    use ``close()`` and ``join()`` (or get every result) to let work finish.
    """

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None,
                 context=None):
        """Creates the pool, initializing shoal if it is not yet.

        Args:
            processes: the number of workers of the private cluster started when
                shoal is not initialized yet; also the worker count the map
                methods assume when choosing chunk sizes. Default: the
                cluster's.
            initializer: called as ``initializer(*initargs)`` once in each
                worker process, before the first task of this pool runs there.
            initargs: arguments of ``initializer``.
            maxtasksperchild: accepted for compatibility; the engine recycles
                its workers by itself.
            context: accepted for compatibility and ignored.
        Raises:
            ValueError: processes < 1.
            TypeError: initializer is not callable.
        """
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not _api.is_initialized():
            with _api._lock:
                if not _api.is_initialized():
                    _api.init(num_workers=processes)
        self._processes = processes
        self._init = None
        if initializer is not None:
            self._init = (os.urandom(8).hex(), initializer, tuple(initargs))
        self._state = RUN
        self._tracked = _Tracked()      # futures of every task submitted
        self._with_callbacks = _Tracked()  # results whose callbacks join waits for
        self._runners = {}

    def _workers(self):
        if self._processes:
            return self._processes
        try:
            return int(_api._client().node_info.get("num_workers") or 1)
        except Exception:
            return 1

    def _check_running(self):
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _cached(self, key, func, make):
        # Like remote_for: only functions, builtins and classes are cached.
        if not isinstance(func, _CACHEABLE):
            return make()
        rf = self._runners.get(key)
        if rf is None:
            rf = self._runners[key] = make()
        return rf

    def _remote(self, func):
        if self._init is None:
            return remote_for(func)
        return self._cached(("apply", func), func,
                            lambda: _remote.RemoteFunction(_Apply(func, self._init)))

    def _map_futures(self, func, iterable, chunksize, star):
        self._check_running()
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        rf = self._cached(("map", func, star), func,
                          lambda: _chunks.remote_runner(func, star, self._init))
        fs = _chunks.submit_chunks(rf, _chunks.as_sequence(iterable), chunksize, self._workers())
        self._tracked.extend(fs)
        return fs

    def apply(self, func, args=(), kwds={}):
        """Calls ``func(*args, **kwds)`` in a worker and waits for the result.

        Args:
            func: a picklable callable.
            args: positional arguments.
            kwds: keyword arguments.
        Returns:
            What ``func`` returned.
        Raises:
            ValueError: the pool is closed.
            The function's own exception.
        """
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        """Calls ``func(*args, **kwds)`` in a worker.

        Args:
            func: a picklable callable.
            args: positional arguments.
            kwds: keyword arguments.
            callback: called with the result when it succeeds (in shoal's I/O
                thread: keep it short).
            error_callback: called with the exception when it fails.
        Returns:
            An ``AsyncResult``.
        Raises:
            ValueError: the pool is closed.
        """
        self._check_running()
        f = self._remote(func).remote(*args, **kwds)
        self._tracked.add(f)
        return self._result(AsyncResult([f], callback, error_callback))

    def _result(self, r):
        if r._event is not None:
            self._with_callbacks.add(r)
        return r

    def map(self, func, iterable, chunksize=None):
        """``list(map(func, iterable))``, in chunks of tasks.

        Args:
            func: a picklable callable of one argument.
            iterable: the inputs (read into a list first).
            chunksize: items per task; None measures (see the module doc).
        Returns:
            The list of results, in input order.
        Raises:
            ValueError: the pool is closed, or chunksize < 1.
            The function's exception for the first failed chunk.
        """
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """Like ``map``, without waiting.

        Args:
            func, iterable, chunksize: as for ``map``.
            callback: called with the list of results when all succeeded.
            error_callback: called with the first exception otherwise.
        Returns:
            A ``MapResult``.
        Raises:
            ValueError: the pool is closed, or chunksize < 1.
        """
        return self._result(MapResult(self._map_futures(func, iterable, chunksize, False),
                                      callback, error_callback))

    def starmap(self, func, iterable, chunksize=None):
        """Like ``map``, calling ``func(*item)`` for each item.

        Args:
            func: a picklable callable.
            iterable: argument tuples.
            chunksize: items per task; None measures.
        Returns:
            The list of results, in input order.
        Raises:
            ValueError: the pool is closed, or chunksize < 1.
            The function's exception for the first failed chunk.
        """
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """Like ``starmap``, without waiting.

        Args:
            func, iterable, chunksize: as for ``starmap``.
            callback, error_callback: as for ``map_async``.
        Returns:
            A ``MapResult``.
        Raises:
            ValueError: the pool is closed, or chunksize < 1.
        """
        return self._result(MapResult(self._map_futures(func, iterable, chunksize, True),
                                      callback, error_callback))

    def imap(self, func, iterable, chunksize=None):
        """Like ``map``, returning an iterator over results in input order.

        Args:
            func, iterable: as for ``map``.
            chunksize: items per task; None measures (multiprocessing's default
                is 1).
        Returns:
            An ``IMapIterator``.
        Raises:
            ValueError: the pool is closed, or chunksize < 1.
        """
        return IMapIterator(self._map_futures(func, iterable, chunksize, False), ordered=True)

    def imap_unordered(self, func, iterable, chunksize=None):
        """Like ``imap``, yielding results as they finish.

        Args:
            func, iterable, chunksize: as for ``imap``.
        Returns:
            An ``IMapIterator`` in completion order.
        Raises:
            ValueError: the pool is closed, or chunksize < 1.
        """
        return IMapIterator(self._map_futures(func, iterable, chunksize, False), ordered=False)

    def close(self):
        """No more work may be submitted; queued and running work finishes.

        Returns:
            None.
        """
        if self._state == RUN:
            self._state = CLOSE

    def terminate(self):
        """Stops the pool's work now: queued tasks are cancelled and workers
        running them are killed (and replaced). Their results raise
        ``TaskCancelledError``.

        Returns:
            None.
        """
        self._state = TERMINATE
        for f in self._tracked.pending():
            _api._cancel_future(f, force=True)

    def join(self, timeout=None):
        """Waits for the pool's work to finish (after ``close`` or
        ``terminate``).

        Args:
            timeout: seconds (a shoal extension), or None for ever.
        Returns:
            None.
        Raises:
            ValueError: the pool is still running (call ``close`` first).
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        import concurrent.futures
        deadline = None if timeout is None else time.monotonic() + timeout
        concurrent.futures.wait(self._tracked.pending(), timeout)
        for r in self._with_callbacks.pending():   # their callbacks have run
            r.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc_info):
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self):
        return f"<shoal.Pool state={self._state} processes={self._processes}>"
