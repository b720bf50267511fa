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
    "nodes",
    "runtime_context",
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
    "ObjectStoreFullError",
    "ConnectionLostError",
    "AuthenticationError",
    "RemoteError",
    "__version__",
]


# Every public name is loaded on first use (PEP 562): `import shoal` stays
# cheap, and a worker process (`python -m shoal.worker`), which needs none of
# the driver's API, does not pay for it at start-up.
_LAZY = {
    "init": "_boot", "shutdown": "_api", "is_initialized": "_api", "get": "_api",
    "wait": "_api", "put": "_api", "cancel": "_api", "kill": "_api", "status": "_api",
    "nodes": "_api", "runtime_context": "_context", "Future": "_future", "remote": "_remote",
    "Executor": "executor", "Pool": "pool",
}
_LAZY.update({name: "exceptions" for name in (
    "ShoalError", "WorkerCrashedError", "TaskTimeoutError", "TaskCancelledError",
    "GetTimeoutError", "InfeasibleResourcesError", "ActorDiedError", "ObjectLostError",
    "ObjectStoreFullError", "ConnectionLostError", "AuthenticationError", "RemoteError")})


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
