"""Serialization helpers the C client and the C worker loop call.

Functions and classes are pickled once with cloudpickle. Arguments and results
use the standard pickle (protocol 5), falling back to cloudpickle for values
plain pickle cannot handle (lambdas, closures, classes defined in __main__).
"""

import pickle

PROTOCOL = 5

# cloudpickle is imported on first need (it costs tens of milliseconds, and
# plain pickle handles most values): see preload().
_cloudpickle = None


def _cp():
    global _cloudpickle
    if _cloudpickle is None:
        import cloudpickle
        _cloudpickle = cloudpickle
    return _cloudpickle


def preload():
    """Imports cloudpickle now: called while something else (the daemon, the
    agent's first request) is being waited for, so that start-up overlaps."""
    _cp()


class DepRef:
    """Placeholder for a Future passed as a top-level argument; the worker
    replaces it with the dependency's value (dependency number ``i``)."""

    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i

    def __reduce__(self):
        return (DepRef, (self.i,))


def dumps(value):
    """Pickles a value (arguments or a result)."""
    try:
        return pickle.dumps(value, PROTOCOL)
    except Exception:
        return _cp().dumps(value, PROTOCOL)


loads = pickle.loads


def dumps_function(fn):
    """Pickles a function or class definition once, by value when needed."""
    return _cp().dumps(fn, PROTOCOL)


def dumps_exception(err):
    """Pickles (exception, traceback text) for the driver; an exception that
    cannot be pickled (or unpickled) travels as a RemoteError with the same text."""
    import traceback

    from .exceptions import RemoteError

    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        data = _cp().dumps((err, tb), PROTOCOL)
        pickle.loads(data)  # must round-trip, or the driver would fail later
        return data
    except Exception:
        name = f"{type(err).__module__}.{type(err).__qualname__}"
        return _cp().dumps((RemoteError(name, str(err), tb), tb), PROTOCOL)
