"""shoal.Future: a concurrent.futures.Future completed by the C client.

The C I/O thread calls ``_complete(status, code, payload)`` with the GIL held,
once per result. Payloads are unpickled lazily by whoever asks for the result.
The Condition that concurrent.futures uses is created only when some thread
actually waits, so a future nobody blocks on costs two small lists.
"""

import concurrent.futures
import pickle
import threading
from concurrent.futures._base import FINISHED, PENDING

from . import exceptions as exc

__all__ = ["Future"]

# Status codes of RESULT frames (src/common/proto.h, SH_STATUS_TYPES).
ST_OK = 0
ST_ERROR = 1
ST_CRASHED = 2
ST_TIMEOUT = 3
ST_CANCELLED = 4
ST_INFEASIBLE = 5
ST_ACTOR_DIED = 6
ST_LOST = 7
ST_BAD_REQUEST = 8
ST_STORE_FULL = 9
ST_DISCONNECTED = 100  # client-side only: the daemon connection was lost

CODE_STORED = 1  # RESULT code of a value that lives in the object store

_UNSET = object()


class _RemoteTraceback(Exception):
    """Carries the worker's traceback text as the __cause__ of a re-raised error."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def _engine_error(status, code, message):
    if status == ST_CRASHED:
        if code > 0:
            return exc.WorkerCrashedError(message, signal=code)
        return exc.WorkerCrashedError(message, exit_code=-code)
    if status == ST_TIMEOUT:
        return exc.TaskTimeoutError(message)
    if status == ST_CANCELLED:
        return exc.TaskCancelledError(message)
    if status == ST_INFEASIBLE:
        return exc.InfeasibleResourcesError(message)
    if status == ST_ACTOR_DIED:
        return exc.ActorDiedError(message)
    if status == ST_LOST:
        return exc.ObjectLostError(message)
    if status == ST_STORE_FULL:
        return exc.ObjectStoreFullError(message)
    if status == ST_DISCONNECTED:
        return exc.ConnectionLostError(message)
    return exc.ShoalError(message)


class Future(concurrent.futures.Future):
    """The result of a remote call, ``put`` or actor method.

    A real ``concurrent.futures.Future``: ``concurrent.futures.wait``,
    ``as_completed`` and ``add_done_callback`` work, and it can be awaited in
    asyncio. Passing it as a top-level argument to another remote call makes
    that call wait for it and receive its value.
    """

    # Defaults live on the class so that creating a Future sets three
    # attributes; the lists concurrent.futures keeps per future are made on
    # first use, like the Condition.
    _state = PENDING
    _result = None
    _exception = None
    _raw = None
    _value = _UNSET

    def __init__(self, task_id=0, client=None, name=None):
        # concurrent.futures.Future.__init__ is deliberately not called: it
        # builds a Condition per future, which we create only on demand.
        self._id = task_id
        self._client = client
        self._name = name

    @property
    def _condition(self):
        cond = self.__dict__.get("_cond")
        if cond is None:
            cond = self.__dict__.setdefault("_cond", threading.Condition())
        return cond

    @property
    def _waiters(self):
        w = self.__dict__.get("_waiters_")
        if w is None:
            w = self.__dict__.setdefault("_waiters_", [])
        return w

    @property
    def _done_callbacks(self):
        cbs = self.__dict__.get("_callbacks_")
        if cbs is None:
            cbs = self.__dict__.setdefault("_callbacks_", [])
        return cbs

    @property
    def id(self):
        """The task or object id (an int)."""
        return self._id

    def __repr__(self):
        state = "pending" if self._state != FINISHED else "done"
        name = f" {self._name}" if self._name else ""
        return f"<shoal.Future{name} {self._id:#x} {state}>"

    # Called by the C client (I/O thread, GIL held) and by local completions.
    def _complete(self, status, code, payload):
        if self._state == FINISHED:
            return
        self._raw = (status, code, payload)
        # Order matters: publish the state, then look for waiters. A waiter
        # creates the Condition before it reads the state (see the module doc).
        self._state = FINISHED
        d = self.__dict__
        if "_cond" not in d and not d.get("_callbacks_"):
            return
        with self._condition:
            for w in self._waiters:
                if status == ST_OK:
                    w.add_result(self)
                else:
                    w.add_exception(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def _set_local(self, value):
        """Completes with a value that is already in this process (put)."""
        self._value = value
        self._complete(ST_OK, 0, None)

    def _error(self):
        """The exception this future failed with, or None; decodes once."""
        status, code, payload = self._raw
        if status == ST_OK:
            return None
        if self._exception is None:
            if status == ST_ERROR:
                self._exception = _load_exception(payload)
            else:
                self._exception = _engine_error(status, code, bytes(payload).decode("utf-8", "replace"))
        return self._exception

    def _value_or_raise(self):
        err = self._error()
        if err is not None:
            raise err
        if self._value is _UNSET:
            if self._raw[1] == CODE_STORED:
                # In the object store. A value that views the mapping (it
                # has buffers) is mapped afresh on each call, so the mapping
                # lives as long as the value the caller keeps, not as long
                # as this Future (an unused object can be spilled); one that
                # does not is kept like any other.
                from . import _serial
                value, views = _serial.load_mapped(self._client, self._id, True)
                if not views:
                    self._value = value
                return value
            self._value = pickle.loads(self._raw[2])
        return self._value

    def _wait(self, timeout):
        if self._state == FINISHED:
            return
        client = self._client
        # First read the answer on this thread for a moment (C, no thread
        # switch): a short task's result usually comes within that.
        if client is not None and client.wait_io(self._id, timeout) and self._state == FINISHED:
            return
        with self._condition:
            if self._state != FINISHED:
                self._condition.wait(timeout)
            if self._state != FINISHED:
                what = self._name or "task"
                raise exc.GetTimeoutError(
                    f"timed out after {timeout}s waiting for {what} ({self._id:#x}); "
                    "it is still queued or running: raise the timeout, or check "
                    "`shoal status` for free workers")

    def result(self, timeout=None):
        """The task's return value; re-raises the task's exception.

        Args:
            timeout: seconds to wait, or None to wait for ever.
        Returns:
            The value the remote function returned.
        Raises:
            GetTimeoutError: the result did not arrive in time.
            The task's own exception, WorkerCrashedError, TaskTimeoutError,
            TaskCancelledError, ... when the task failed.
        """
        self._wait(timeout)
        return self._value_or_raise()

    def _used_by(self, task):
        """Called by the client after submitting ``task`` with this Future,
        a stored copy of the task's arguments, as the argument object."""
        if "_arg_copy" in self.__dict__:
            from . import _serial
            _serial.args_used(self, task)

    def _take(self, timeout=None):
        """``result()``, without keeping the value in this Future: for the
        chunks of a map, whose results are read once and copied into the
        map's output (the Future may live on, tracked by its executor or
        pool, and would hold a second copy of every result). Calling it
        again decodes the result again."""
        self._wait(timeout)
        value = self._value_or_raise()
        if self._raw[2] is not None:  # not a local value (put): it can be decoded again
            self._value = _UNSET
        return value

    def exception(self, timeout=None):
        """The exception the task failed with.

        Args:
            timeout: seconds to wait, or None to wait for ever.
        Returns:
            The exception (the task's own, or a shoal error such as
            ``TaskCancelledError``), or None if the task succeeded.
        Raises:
            GetTimeoutError: the task did not finish in time.
        """
        self._wait(timeout)
        return self._error()

    def done(self):
        """Returns: whether the task finished (succeeded, failed or was cancelled)."""
        return self._state == FINISHED

    def running(self):
        """Returns: False; the driver does not track when a task starts."""
        return False

    def cancelled(self):
        """Returns: whether the task finished by being cancelled."""
        return self._state == FINISHED and self._raw[0] == ST_CANCELLED

    def cancel(self):
        """Cancels the task if it has not started yet.

        Returns:
            True if the task was still queued (it will never run) or was
            already cancelled; False otherwise.
        """
        if self._state == FINISHED:
            return self.cancelled()
        if self._client is None:
            return False
        from . import _api
        return _api._cancel_future(self, force=False, queued_only=True) == 1

    def set_running_or_notify_cancel(self):
        """For executors (concurrent.futures protocol).

        Returns:
            False if the future already finished (e.g. was cancelled), else True.
        """
        return self._state != FINISHED

    def set_result(self, result):
        """Completes the future locally with ``result`` (concurrent.futures protocol).

        Args:
            result: the value.
        Returns:
            None.
        """
        self._set_local(result)

    def set_exception(self, exception):
        """Fails the future locally with ``exception`` (concurrent.futures protocol).

        Args:
            exception: the exception ``result()`` raises.
        Returns:
            None.
        """
        self._exception = exception
        self._complete(ST_ERROR, 0, None)

    def __await__(self):
        import asyncio
        return asyncio.wrap_future(self).__await__()

    def __del__(self):
        client = self._client
        if client is not None:
            try:
                client.release(self._id)
            except Exception:
                pass

    def __reduce__(self):
        raise TypeError(
            "a shoal.Future cannot be pickled: pass it as a top-level argument "
            "of a remote call (it becomes the value), or call .result() first")


def _load_exception(payload):
    if payload is None:
        return exc.RemoteError("unknown", "a dependency failed with an exception set locally")
    try:
        err, tb = pickle.loads(payload)
    except Exception as e:  # the exception's class cannot be rebuilt here
        return exc.RemoteError("unknown", f"could not unpickle the remote exception: {e!r}")
    if tb:
        err.__cause__ = _RemoteTraceback(tb)
    return err
