"""Exception types raised by shoal.

Errors raised inside a task are re-raised in the driver as instances of their
own type; the classes here describe failures of the engine around the task.
"""

import concurrent.futures

__all__ = [
    "ShoalError",
    "WorkerCrashedError",
    "TaskTimeoutError",
    "TaskCancelledError",
    "GetTimeoutError",
    "InfeasibleResourcesError",
    "ActorDiedError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "ConnectionLostError",
    "AuthenticationError",
    "RemoteError",
]


class ShoalError(Exception):
    """Base class of the errors shoal itself raises."""


class WorkerCrashedError(ShoalError):
    """The worker running the task died (signal or exit) and retries are spent.

    Attributes:
        signal: the signal that killed the worker, or None.
        exit_code: the worker's exit status when it exited, or None.
    """

    def __init__(self, message, signal=None, exit_code=None):
        super().__init__(message)
        self.signal = signal
        self.exit_code = exit_code


class TaskTimeoutError(ShoalError, TimeoutError):
    """The task ran longer than its ``timeout=`` and its worker was replaced."""


class TaskCancelledError(ShoalError, concurrent.futures.CancelledError):
    """The task was cancelled (by ``shoal.cancel``, or its driver went away)."""


# concurrent.futures.TimeoutError is the builtin TimeoutError from Python 3.11
# on; before, it is its own class, and `except` clauses name either.
_TIMEOUT_BASES = (TimeoutError,) if concurrent.futures.TimeoutError is TimeoutError else (
    TimeoutError, concurrent.futures.TimeoutError)


class GetTimeoutError(ShoalError, *_TIMEOUT_BASES):
    """``get``/``result`` gave up waiting; the task itself keeps running."""


class InfeasibleResourcesError(ShoalError):
    """No node can ever satisfy the task's resource request."""


class ActorDiedError(ShoalError):
    """The actor a call was addressed to is dead (killed, crashed, or its
    constructor raised)."""


class ObjectLostError(ShoalError):
    """An object a task needs is unknown to the cluster or was released."""


class ObjectStoreFullError(ShoalError, MemoryError):
    """The object store cannot take a value: memory is full of objects in use
    and spilling to disk cannot make room (the disk is full, or the value is
    bigger than the whole store). Nothing was stored; nothing was corrupted."""


class ConnectionLostError(ShoalError):
    """The connection to the shoal daemon was lost; pending work is unknown."""


class AuthenticationError(ShoalError, ConnectionError):
    """Connecting over TCP failed on the cluster token: none was found, the
    daemon refused it (a wrong token), or the daemon did not prove that it
    holds it. The message says where the token was looked for."""


class RemoteError(ShoalError):
    """Stands in for an exception that could not be pickled in the worker.

    Attributes:
        type_name: the qualified name of the original exception type.
        remote_traceback: the traceback text from the worker.
    """

    def __init__(self, type_name, message, remote_traceback=""):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return (type(self), (self.type_name, str(self).split(": ", 1)[-1], self.remote_traceback))
