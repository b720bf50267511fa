"""``@shoal.remote``: remote functions, actor classes and actor handles.

A remote function keeps one prebuilt ``_core.TaskSpec`` per client, so a call
is one attribute check and one ``client.submit``. The function itself is
pickled once per process and registered (``FUNC``) once per client.
"""

import functools
import math
import threading

from . import _api

_state = _api._state  # the process's connection (one object, never replaced)

__all__ = ["remote", "RemoteFunction", "ActorClass", "ActorHandle", "ActorMethod"]

KIND_TASK, KIND_ACTOR_CREATE, KIND_ACTOR_CALL = 0, 1, 2

_TASK_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources", "max_retries",
                 "retry_exceptions", "timeout", "name")
_ACTOR_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources", "max_restarts", "name")
_RESERVED = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
_MAX_CUSTOM = 16
_NAME_MAX = 63
_U32 = 2**32 - 1


def _number(name, value, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an int" if integer else "a number"
        raise TypeError(f"option {name} must be {kind}, not {value!r}")
    if integer and not isinstance(value, int):
        raise TypeError(f"option {name} must be an int, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"option {name} must be a finite number >= 0, not {value!r}")
    return value


def _milli(name, value):
    milli = round(_number(name, value) * 1000)
    if value > 0 and milli == 0:
        raise ValueError(f"option {name}={value!r} is below the smallest unit (0.001)")
    return milli


def _validate(options, allowed, what):
    """Checks option names and values; returns the normalized dict."""
    out = {}
    for key, value in options.items():
        if key not in allowed:
            import difflib
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            extra = ""
            if key in _TASK_OPTIONS:
                extra = f"; {key} does not apply to {what}"
            raise TypeError(f"unknown option {key!r} for {what}{hint}{extra}; "
                            f"valid options: {', '.join(allowed)}")
        if key in ("num_cpus", "num_gpus"):
            _milli(key, value)
        elif key == "memory":
            _number(key, value)
        elif key == "resources":
            _check_resources(value)
        elif key in ("max_retries", "max_restarts"):
            _number(key, value, integer=True)
            if value > 1_000_000:
                raise ValueError(f"option {key}={value} is too large")
        elif key == "retry_exceptions":
            if not isinstance(value, bool):
                raise TypeError(f"option retry_exceptions must be True or False, not {value!r}")
        elif key == "timeout":
            if value is not None:
                _number(key, value)
                if value == 0 or value * 1000 > _U32:
                    raise ValueError(f"option timeout must be None or between 0.001 and "
                                     f"{_U32 // 1000} seconds, not {value!r}")
        elif key == "name":
            if value is not None and not isinstance(value, str):
                raise TypeError(f"option name must be a string, not {value!r}")
        out[key] = value
    return out


def _check_resources(value):
    if value is None:
        return
    if not hasattr(value, "items"):
        raise TypeError(f"option resources must be a dict of name -> amount, not {value!r}")
    if len(value) > _MAX_CUSTOM:
        raise ValueError(f"option resources: at most {_MAX_CUSTOM} custom resources, got {len(value)}")
    for name, amount in value.items():
        if not isinstance(name, str):
            raise TypeError(f"option resources: names must be strings, not {name!r}")
        if name in _RESERVED:
            raise ValueError(f"option resources: use {_RESERVED[name]}= instead of "
                             f"resources={{{name!r}: ...}}")
        if not name or len(name.encode()) > _NAME_MAX:
            raise ValueError(f"option resources: a name must be 1 to {_NAME_MAX} bytes, not {name!r}")
        _milli(f"resources[{name!r}]", amount)


def _spec_kwargs(options, default_cpus, default_retries, name):
    """TaskSpec keyword arguments for validated ``options``."""
    timeout = options.get("timeout")
    return {
        "cpu_milli": round(options.get("num_cpus", default_cpus) * 1000),
        "gpu_milli": round(options.get("num_gpus", 0) * 1000),
        "memory": int(options.get("memory", 0)),
        "custom": tuple((k, round(v * 1000)) for k, v in (options.get("resources") or {}).items()),
        "max_retries": options.get("max_retries", default_retries),
        "retry_exceptions": options.get("retry_exceptions", False),
        "timeout_ms": 0 if timeout is None else max(1, math.ceil(timeout * 1000)),
        "name": options.get("name") or name,
    }


class _Registration:
    """One function or class: its pickle (made once) and its id per client."""

    __slots__ = ("obj", "blob", "client", "fn_id", "lock")

    def __init__(self, obj):
        self.obj = obj
        self.blob = None
        self.client = None
        self.fn_id = 0
        self.lock = threading.Lock()

    def fn_id_for(self, client):
        """Registers the object with ``client`` the first time; returns its id."""
        with self.lock:
            if self.client is not client:
                if self.blob is None:
                    from . import _serial
                    self.blob = _serial.dumps_function(self.obj)
                fn_id = client.new_id()
                client.register(fn_id, self.blob)
                self.client, self.fn_id = client, fn_id
            return self.fn_id


def _core():
    from . import _core
    return _core


class RemoteFunction:
    """A function decorated with ``@shoal.remote``; call ``.remote()`` to run it."""

    def __init__(self, function, options=None, registration=None):
        self._function = function
        self._options = options or {}
        self._registration = registration or _Registration(function)
        self._kwargs = _spec_kwargs(self._options, 1, 3, getattr(function, "__qualname__", None))
        self._bound = (None, None)  # (client, TaskSpec)
        functools.update_wrapper(self, function, updated=())

    def __call__(self, *args, **kwargs):
        name = getattr(self._function, "__name__", "f")
        raise TypeError(f"remote function {name}() cannot be called directly: use "
                        f"{name}.remote(...) to run it as a task (it returns a shoal.Future)")

    def _bind(self):
        client = _api._client()
        fn_id = self._registration.fn_id_for(client)
        self._bound = bound = (client, _core().TaskSpec(fn_id, KIND_TASK, **self._kwargs))
        return bound

    def remote(self, *args, **kwargs):
        """Runs the function as a task.

        Args:
            *args, **kwargs: the call's arguments. A ``shoal.Future`` given as
                a top-level argument makes the task wait for it and receive its
                value.
        Returns:
            A ``shoal.Future`` for the return value.
        Raises:
            TypeError: an argument cannot be pickled.
        """
        client, spec = self._bound
        if client is not _state.client or client is None:
            client, spec = self._bind()
        return client.submit(spec, args, kwargs or None)

    def options(self, **overrides):
        """A copy of this remote function with some options changed.

        Args:
            **overrides: any of num_cpus, num_gpus, memory, resources,
                max_retries, retry_exceptions, timeout, name.
        Returns:
            A ``RemoteFunction`` sharing this one's registration.
        Raises:
            TypeError, ValueError: an unknown option or a bad value.
        """
        opts = dict(self._options)
        opts.update(_validate(overrides, _TASK_OPTIONS, "remote functions"))
        return RemoteFunction(self._function, opts, self._registration)

    def __reduce__(self):
        # Inside a task, a remote function is rebuilt and connects on first use.
        return (RemoteFunction, (self._function, self._options))

    def __repr__(self):
        return f"<shoal.RemoteFunction {getattr(self._function, '__qualname__', self._function)!r}>"


def _public_methods(cls):
    import inspect
    names = set()
    for name in dir(cls):
        if name.startswith("__") and name.endswith("__"):
            continue
        try:
            attr = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        if isinstance(attr, (staticmethod, classmethod)) or callable(attr):
            names.add(name)
    return frozenset(names)


class ActorClass:
    """A class decorated with ``@shoal.remote``; ``.remote()`` creates an actor."""

    def __init__(self, cls, options=None, registration=None):
        self._cls = cls
        self._options = options or {}
        self._registration = registration or _Registration(cls)
        self._methods = _public_methods(cls)
        self._kwargs = _spec_kwargs(self._options, 0, 0, f"{cls.__qualname__}.__init__")
        # An actor's creation carries its restart budget where tasks carry
        # their retries (docs/protocol.md, SUBMIT).
        self._kwargs["max_retries"] = self._options.get("max_restarts", 0)
        self._bound = (None, None)
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            try:
                setattr(self, attr, getattr(cls, attr))
            except AttributeError:
                pass
        self.__wrapped__ = cls

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self._cls.__name__} cannot be instantiated directly: "
                        f"use {self._cls.__name__}.remote(...) to create an actor")

    def _bind(self):
        client = _api._client()
        fn_id = self._registration.fn_id_for(client)
        self._bound = bound = (client, _core().TaskSpec(fn_id, KIND_ACTOR_CREATE, **self._kwargs))
        return bound

    def remote(self, *args, **kwargs):
        """Creates an actor: an instance of the class living in its own worker.

        Args:
            *args, **kwargs: the constructor's arguments (Futures allowed).
        Returns:
            An ``ActorHandle``; its methods' ``.remote()`` return Futures. Calls
            made before the constructor finished are queued in order.
        Raises:
            TypeError: an argument cannot be pickled.
        """
        client, spec = self._bound
        if client is not _state.client or client is None:
            client, spec = self._bind()
        actor_id = client.new_id()
        created = client.submit(spec, args, kwargs or None, actor_id)
        return ActorHandle(client, actor_id, self._cls.__qualname__, self._methods, created)

    def options(self, **overrides):
        """A copy of this actor class with some options changed.

        Args:
            **overrides: any of num_cpus (default 0 for actors), num_gpus,
                memory, resources, name.
        Returns:
            An ``ActorClass``.
        Raises:
            TypeError, ValueError: an unknown option or a bad value.
        """
        opts = dict(self._options)
        opts.update(_validate(overrides, _ACTOR_OPTIONS, "actor classes"))
        return ActorClass(self._cls, opts, self._registration)

    def __reduce__(self):
        return (ActorClass, (self._cls, self._options))

    def __repr__(self):
        return f"<shoal.ActorClass {self._cls.__qualname__!r}>"


class ActorHandle:
    """A live actor. ``handle.method.remote(...)`` calls a method; one caller's
    calls run in the order they were made. ``shoal.kill(handle)`` stops it.

    An actor lives until it is killed, its driver disconnects (``shutdown``
    or exit), or its handle is garbage collected: then it stops once the calls
    already made have run (their futures still complete).
    """

    def __init__(self, client, actor_id, class_name, methods, created):
        self._shoal_client = client
        self._shoal_actor_id = actor_id
        self._shoal_class = class_name
        self._shoal_methods = methods
        self._shoal_created = created  # Future of the constructor call

    def __getattr__(self, name):
        if name.startswith("_shoal_") or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        if name not in self._shoal_methods:
            known = ", ".join(sorted(self._shoal_methods)) or "none"
            raise AttributeError(f"actor class {self._shoal_class} has no method {name!r} "
                                 f"(its methods: {known})")
        # Specs are cached on the handle; the method object is made per access
        # so that it can keep the handle alive without a reference cycle.
        specs = self.__dict__.setdefault("_shoal_specs", {})
        spec = specs.get(name)
        if spec is None:
            spec = specs[name] = _core().TaskSpec(
                0, KIND_ACTOR_CALL, actor_id=self._shoal_actor_id, method=name, cpu_milli=0,
                max_retries=0, name=f"{self._shoal_class}.{name}")
        return ActorMethod(self, spec)

    @property
    def actor_id(self):
        """The actor's id (an int)."""
        return self._shoal_actor_id

    def __repr__(self):
        return f"<shoal.ActorHandle {self._shoal_class} {self._shoal_actor_id:#x}>"

    def __reduce__(self):
        raise TypeError("an actor handle cannot be passed to a task or pickled yet; call its "
                        "methods from the driver that created it")

    def __del__(self):
        client = self.__dict__.get("_shoal_client")
        if client is None:
            return
        try:
            client.kill_actor(self._shoal_actor_id, when_idle=True)
        except Exception:
            pass  # the connection is closed: the actor went with it


class ActorMethod:
    """One method of an actor; ``.remote(...)`` calls it."""

    __slots__ = ("_client", "_spec", "_label", "_handle")

    def __init__(self, handle, spec):
        self._handle = handle  # a bound method keeps its actor alive
        self._client = handle._shoal_client
        self._spec = spec
        self._label = spec.name

    def remote(self, *args, **kwargs):
        """Calls the method on the actor.

        Args:
            *args, **kwargs: the method's arguments (Futures allowed).
        Returns:
            A ``shoal.Future`` for the method's return value; it fails with
            ``ActorDiedError`` when the actor is dead.
        Raises:
            TypeError: an argument cannot be pickled.
        """
        return self._client.submit(self._spec, args, kwargs or None)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor methods cannot be called directly: use "
                        f"{self._label.split('.')[-1]}.remote(...)")

    def __repr__(self):
        return f"<shoal.ActorMethod {self._label}>"


def _make(obj, options):
    if isinstance(obj, (RemoteFunction, ActorClass)):
        raise TypeError(f"{obj!r} is already remote: use .options(...) to change its options")
    if isinstance(obj, type):
        return ActorClass(obj, _validate(options, _ACTOR_OPTIONS, "actor classes"))
    if callable(obj):
        return RemoteFunction(obj, _validate(options, _TASK_OPTIONS, "remote functions"))
    raise TypeError(f"@shoal.remote decorates a function or a class, not {type(obj).__name__}")


def remote(*args, **options):
    """Makes a function or class remote: ``@shoal.remote`` or ``@shoal.remote(**options)``.

    Args:
        *args: the function or class, when used without parentheses.
        **options: for functions: ``num_cpus`` (default 1), ``num_gpus``,
            ``memory`` (bytes), ``resources`` (dict of custom resources),
            ``max_retries`` (default 3: reruns after the worker died),
            ``retry_exceptions`` (default False: rerun when the function
            raises), ``timeout`` (seconds; the task fails with
            ``TaskTimeoutError`` and its worker is replaced), ``name``. For
            classes: ``num_cpus`` (default 0), ``num_gpus``, ``memory``,
            ``resources``, ``max_restarts`` (default 0: when the actor's
            process or node dies, construct it again, with the same
            arguments, up to this many times; the calls running then fail
            with ``ActorDiedError``, the queued ones run on the new
            instance), ``name``.
    Returns:
        A ``RemoteFunction`` or ``ActorClass``, or a decorator that makes one.
    Raises:
        TypeError: an unknown option, a value of the wrong type, or something
            that is neither a function nor a class.
        ValueError: an option value out of range.
    """
    if args:
        if len(args) == 1 and not options and callable(args[0]):
            return _make(args[0], {})
        raise TypeError("use @shoal.remote on a function or class, or @shoal.remote(option=value, "
                        "...) with keyword options only")
    # Check now, so that a bad option fails at the decorator line.
    _validate(options, sorted(set(_TASK_OPTIONS) | set(_ACTOR_OPTIONS)), "@shoal.remote")

    def decorator(obj):
        return _make(obj, options)
    return decorator
