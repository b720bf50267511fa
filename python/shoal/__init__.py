"""shoal: parallel and distributed computing for Python, with an engine in C.

Quick start::

    import shoal

    @shoal.remote
    def square(x):
        return x * x

    print(shoal.get([square.remote(i) for i in range(10)]))

``shoal.init()`` connects to a cluster (or starts a private one); it is called
for you on first use. ``Executor`` and ``Pool`` follow ``concurrent.futures``
and ``multiprocessing``.
"""

from ._api import cancel, get, init, is_initialized, kill, put, shutdown, status, wait
from ._future import Future
from ._remote import remote
from .exceptions import (
    ActorDiedError,
    ConnectionLostError,
    GetTimeoutError,
    InfeasibleResourcesError,
    ObjectLostError,
    RemoteError,
    ShoalError,
    TaskCancelledError,
    TaskTimeoutError,
    WorkerCrashedError,
)

__version__ = "0.1.0"

__all__ = [
    "init",
    "shutdown",
    "is_initialized",
    "remote",
    "get",
    "wait",
    "put",
    "cancel",
    "kill",
    "status",
    "Future",
    "Executor",
    "Pool",
    "ShoalError",
    "WorkerCrashedError",
    "TaskTimeoutError",
    "TaskCancelledError",
    "GetTimeoutError",
    "InfeasibleResourcesError",
    "ActorDiedError",
    "ObjectLostError",
    "ConnectionLostError",
    "RemoteError",
    "__version__",
]


def __getattr__(name):
    # Executor and Pool import concurrent.futures/multiprocessing machinery:
    # loaded on first use.
    if name == "Executor":
        from .executor import Executor
        return Executor
    if name == "Pool":
        from .pool import Pool
        return Pool
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"Executor", "Pool"})
