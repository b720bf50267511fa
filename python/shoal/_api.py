"""The driver's connection and the module-level calls: init, shutdown, get,
wait, put, cancel, kill, status.

One ``_core.Client`` per process, held in ``_state``. Everything between
``submit`` and a result is the C client's; this module only starts or finds
the daemon, blocks on futures the C client completes, and maps calls to it.
"""

import atexit
import os
import threading
import time
from concurrent.futures import _base as _cf

from . import exceptions as exc
from ._future import ST_CANCELLED, Future

__all__ = ["init", "shutdown", "is_initialized", "get", "wait", "put", "cancel", "kill", "status",
           "nodes"]


class _State:
    """The process-wide connection. ``client`` is None until ``init``."""

    __slots__ = ("client", "daemon", "embedded", "atexit_registered")

    def __init__(self):
        self.client = None          # _core.Client, or None
        self.daemon = None          # _cluster.EmbeddedDaemon we own, or None
        self.embedded = False
        self.atexit_registered = False


_state = _State()
_lock = threading.RLock()
_forked_clients = []  # clients inherited across fork: kept alive, never used


def _load_core():
    try:
        from . import _core
    except ImportError as e:
        raise ImportError(
            f"the shoal C extension (shoal._core) is not importable: {e}. Build it with "
            "`make build` (or `pip install .`)") from e
    return _core


def _connect(core, address, owner, token=None, wait_for_nodes=False, tls=None,
             reconnect_timeout=0.0):
    from . import _serial
    client = core.Client(address, owner=owner, timeout=10.0, future_type=Future,
                         dep_type=_serial.DepRef, dumps=_serial.dumps_args, token=token,
                         wait_for_nodes=wait_for_nodes, reconnect_timeout=reconnect_timeout,
                         **(tls or {}))
    _serial.configure(client.node_info)
    return client


def _info():
    client = _state.client
    return {
        "address": client.address,
        "client_id": client.client_id,
        "embedded": _state.embedded,
        "daemon_pid": _state.daemon.pid if _state.daemon is not None else None,
        "node": dict(client.node_info),
    }


def init(address=None, *, num_workers=None, resources=None, ignore_reinit_error=False,
         token=None, object_store_memory=None, wait_for_nodes=False, tls_ca=None,
         tls_cert=None, tls_key=None, reconnect_timeout=60.0, _daemon=None):
    """Connects this process to a shoal cluster, starting a private one if needed.

    With no ``address`` and no ``SHOAL_ADDRESS`` in the environment, starts a
    private cluster (a head and node agent in one daemon) sized to this
    machine; it stops when this process exits, also when it is killed.

    Args:
        address: ``"auto"`` (the running local cluster: ``$SHOAL_SOCKET_DIR``
            or ``/tmp/shoal-<uid>/default``), a socket directory, a socket path,
            ``unix:PATH`` or ``HOST:PORT``. Defaults to ``$SHOAL_ADDRESS``.
        num_workers: worker processes of a private cluster (default: one per
            CPU).
        resources: resources of a private cluster, a dict of name to amount.
            ``"CPU"``, ``"GPU"`` (counts) and ``"memory"`` (bytes) override
            what the machine has; other names are custom resources that tasks
            ask for with ``@remote(resources={...})``.
        ignore_reinit_error: make a second ``init`` a no-op instead of an error.
        token: the cluster token (str) for a ``HOST:PORT`` address: the
            daemon and this driver prove to each other that they hold it
            before anything else is sent. Defaults to ``$SHOAL_TOKEN``, then
            the file named by ``$SHOAL_TOKEN_FILE``, then ``~/.shoal/token``
            (a file must be mode 0600). Unix sockets need no token.
        object_store_memory: bytes of shared memory for large objects in a
            private cluster (default: 30% of the machine's memory); beyond
            it, objects spill to disk.
        wait_for_nodes: a task or actor whose resources no node of the
            cluster has waits until a node that has them joins, instead of
            failing at once with ``InfeasibleResourcesError``.
        tls_ca: a PEM file of the CA that signed the head's certificate: the
            ``HOST:PORT`` connection speaks TLS and the head's certificate
            must be signed by it and name ``HOST`` (an IP address or DNS
            name in its subjectAltName). Defaults to ``$SHOAL_TLS_CA``.
            Giving only ``tls_cert``/``tls_key`` uses the system's trusted
            CAs. Unix sockets never use TLS.
        tls_cert: a PEM certificate (chain) presented to a head that
            requires client certificates (``--tls-ca`` on the head).
            Defaults to ``$SHOAL_TLS_CERT``.
        tls_key: the PEM private key of ``tls_cert`` (no passphrase).
            Defaults to ``$SHOAL_TLS_KEY``.
        reconnect_timeout: seconds this driver keeps trying to reconnect
            when its connection to a cluster it joined (an ``address``)
            breaks, for example because the head was killed and is
            restarted on the same address: its unfinished tasks, functions
            and live objects are sent again, with the same ids, and its
            futures complete as if nothing happened; blocking calls keep
            their own timeouts meanwhile. When the head is not back in time
            the pending futures fail with ``ConnectionLostError``. 0
            disables reconnecting. A private cluster never reconnects.
        _daemon: internal: a private daemon ``shoal.init`` already started (not
            yet waited for), used when a private cluster is what this call
            starts and killed otherwise.
    Returns:
        A dict describing the connection: ``address``, ``client_id``,
        ``embedded``, ``daemon_pid`` and ``node`` (node id, workers, CPU, GPU,
        memory).
    Raises:
        RuntimeError: already initialized (and not ``ignore_reinit_error``).
        ValueError: ``num_workers``/``resources`` given with an address, or a
            bad value for one of them.
        TypeError: an argument of the wrong type.
        ConnectionError: no cluster listens at ``address``.
        AuthenticationError: a ``HOST:PORT`` address and no token was found,
            or the daemon refused it (a wrong token), or the daemon did not
            prove it holds it; the message says where the token came from.
            Also for TLS: an unreadable or unusable TLS file, a head
            certificate that is not trusted, expired or for another host,
            a head that refused our certificate or needs one, TLS on one
            side only.
        ShoalError: the private daemon failed to start (its stderr is quoted).
        FileNotFoundError: the ``shoal`` binary is missing.
    """
    try:
        tls = _tls_files(tls_ca, tls_cert, tls_key)
        if not isinstance(reconnect_timeout, (int, float)) or not reconnect_timeout >= 0:
            raise ValueError(f"reconnect_timeout must be a number of seconds >= 0, "
                             f"not {reconnect_timeout!r}")
        return _init(address, num_workers, resources, ignore_reinit_error, token, _daemon,
                     object_store_memory, wait_for_nodes, tls, float(reconnect_timeout))
    finally:
        if _daemon is not None and _state.daemon is not _daemon:
            _daemon.kill()  # started early, but this call did not use it
            import shutil
            shutil.rmtree(_daemon.socket_dir, ignore_errors=True)


def _tls_files(ca, cert, key):
    """The TLS keyword arguments of Client: paths as str, None left out."""
    out = {}
    for name, v in (("tls_ca", ca), ("tls_cert", cert), ("tls_key", key)):
        if v is None:
            continue
        if not isinstance(v, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path (str or os.PathLike), not "
                            f"{type(v).__name__}")
        out[name] = os.fspath(v)
    return out


def _check_store_memory(v):
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"object_store_memory must be a number of bytes (an int), not {v!r}")
    if v < (1 << 20):
        raise ValueError(f"object_store_memory must be at least 1 MiB, not {v}")


def _init(address, num_workers, resources, ignore_reinit_error, token, early,
          object_store_memory=None, wait_for_nodes=False, tls=None, reconnect_timeout=0.0):
    with _lock:
        if _state.client is not None:
            if ignore_reinit_error:
                return _info()
            raise RuntimeError(
                f"shoal.init() was already called: this process is connected to the cluster "
                f"at {_state.client.address}. Call shoal.shutdown() first to connect again, "
                "or pass ignore_reinit_error=True to make a repeated init a no-op")
        if num_workers is not None:
            if isinstance(num_workers, bool) or not isinstance(num_workers, int):
                raise TypeError(f"num_workers must be an int, not {num_workers!r}")
            if num_workers < 1:
                raise ValueError(f"num_workers must be at least 1, not {num_workers}")
        _check_store_memory(object_store_memory)
        from . import _cluster
        if resources is not None:
            _cluster.resources_json(resources)  # validates before anything starts
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a str, not {type(token).__name__}")
        if address is None:
            address = os.environ.get("SHOAL_ADDRESS") or None
        if address is None and token is not None:
            raise ValueError(
                "token is for connecting to a cluster at HOST:PORT; a private cluster "
                "(shoal.init() with no address) needs none")
        if address is None and tls:
            raise ValueError(
                "tls_ca, tls_cert and tls_key are for connecting to a cluster at HOST:PORT; "
                "a private cluster (shoal.init() with no address) needs none")
        core = _load_core()
        if address is not None:
            if num_workers is not None or resources is not None or object_store_memory is not None:
                raise ValueError(
                    "num_workers, resources and object_store_memory describe a private cluster; "
                    "they cannot be used when connecting to an existing one "
                    f"(address={address!r}). Pass them to `shoal start` instead")
            client = _connect(core, _cluster.resolve_address(address), owner=False, token=token,
                              wait_for_nodes=bool(wait_for_nodes), tls=tls,
                              reconnect_timeout=reconnect_timeout)
            daemon = None
        else:
            if early is not None:
                daemon = early
                daemon.wait_ready()
            else:
                daemon = _cluster.EmbeddedDaemon(num_workers, resources,
                                                 object_store_memory=object_store_memory)
            try:
                client = _connect(core, daemon.address, owner=True,
                                  wait_for_nodes=bool(wait_for_nodes))
            except BaseException:
                daemon.kill()
                raise
        _state.client, _state.daemon, _state.embedded = client, daemon, daemon is not None
        if not _state.atexit_registered:
            atexit.register(shutdown)
            _state.atexit_registered = True
        return _info()


def _client():
    """The connected client, initializing with defaults on first use."""
    client = _state.client
    if client is None:
        with _lock:
            if _state.client is None:
                init()
            client = _state.client
    return client


def client():
    """The process's ``_core.Client`` (initializing shoal if needed); internal."""
    return _client()


def is_initialized():
    """Whether ``init`` was called (explicitly or by first use) and not shut down.

    Returns:
        True when this process holds a connection to a cluster.
    """
    return _state.client is not None


def shutdown():
    """Disconnects from the cluster; stops the private cluster if this process
    started one. Pending futures fail with ``ConnectionLostError``. ``init``
    works again afterwards; calling ``shutdown`` when not initialized does
    nothing.

    Returns:
        None.
    """
    with _lock:
        client, daemon = _state.client, _state.daemon
        _state.client, _state.daemon, _state.embedded = None, None, False
        if client is not None:
            from . import _serial
            _serial.configure({})
            _serial.forget_args()
            try:
                client.close()
            except Exception:
                pass
        if daemon is not None:
            daemon.stop()


def _after_fork_in_child():
    # The child shares the parent's socket: it must never use (or close) it.
    if _state.client is not None:
        _forked_clients.append(_state.client)
    _state.client, _state.daemon, _state.embedded = None, None, False


os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_future(f, where):
    if not isinstance(f, Future):
        raise TypeError(f"{where} is a {type(f).__name__}, not a shoal.Future "
                        "(what .remote(), shoal.put() and Executor.submit() return)")


def get(futures, timeout=None):
    """Waits for one future or a list of futures and returns their values.

    Args:
        futures: a ``shoal.Future``, or a list or tuple of them.
        timeout: seconds to wait in all (one deadline for the whole list), or
            None to wait for ever.
    Returns:
        The value, or a list of values in the order given.
    Raises:
        GetTimeoutError: not everything finished in time (tasks keep running).
        TypeError: something that is not a shoal.Future was passed.
        The exception of the first failed future in list order (the task's own
        exception type, WorkerCrashedError, TaskCancelledError, ...).
    """
    if isinstance(futures, Future):
        return futures.result(timeout)
    if not isinstance(futures, (list, tuple)):
        raise TypeError(f"shoal.get() takes a shoal.Future or a list of them, not a "
                        f"{type(futures).__name__}")
    for i, f in enumerate(futures):
        if not isinstance(f, Future):
            _check_future(f, f"element {i} of the list passed to shoal.get()")
    deadline = None if timeout is None else time.monotonic() + timeout
    out = []
    for f in futures:
        if not f.done():
            if deadline is None:
                f._wait(None)
            else:
                try:
                    f._wait(max(0.0, deadline - time.monotonic()))
                except exc.GetTimeoutError:
                    left = sum(1 for g in futures if not g.done())
                    raise exc.GetTimeoutError(
                        f"shoal.get() timed out after {timeout}s: {left} of {len(futures)} "
                        f"futures are not done (the first is {f!r}); they keep running") from None
        out.append(f._value_or_raise())
    return out


class _CountWaiter(_cf._Waiter):
    """Wakes ``wait`` when ``count`` more futures have finished."""

    def __init__(self, count):
        super().__init__()
        self.count = count
        self.lock = threading.Lock()

    def _one(self):
        with self.lock:
            self.count -= 1
            if self.count <= 0:
                self.event.set()

    def add_result(self, future):
        super().add_result(future)
        self._one()

    def add_exception(self, future):
        super().add_exception(future)
        self._one()

    def add_cancelled(self, future):
        super().add_cancelled(future)
        self._one()


def wait(futures, num_returns=1, timeout=None):
    """Waits until ``num_returns`` of the futures are done, or the timeout.

    Args:
        futures: a list (or other iterable) of ``shoal.Future``.
        num_returns: how many finished futures to wait for (1..len(futures)).
        timeout: seconds, or None to wait for ever; 0 only looks.
    Returns:
        ``(done, pending)``: two lists that keep the input order. ``done`` has
        at most ``num_returns`` futures (finished, successfully or not); every
        other future is in ``pending``.
    Raises:
        TypeError: an element is not a shoal.Future, or futures is a single
            Future.
        ValueError: num_returns is out of range.
    """
    if isinstance(futures, Future):
        raise TypeError("shoal.wait() takes a list of futures; wrap a single one as [future]")
    futures = list(futures)
    for i, f in enumerate(futures):
        _check_future(f, f"element {i} of the list passed to shoal.wait()")
    if not futures:
        return [], []
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns must be an int, not {num_returns!r}")
    if not 1 <= num_returns <= len(futures):
        raise ValueError(f"num_returns must be between 1 and len(futures) = {len(futures)}, "
                         f"not {num_returns}")
    ndone = sum(1 for f in futures if f.done())
    if ndone < num_returns and timeout != 0:
        pending = [f for f in futures if not f.done()]
        pending = list({id(f): f for f in pending}.values())
        waiter = _CountWaiter(num_returns - ndone)
        conds = [f._condition for f in sorted(pending, key=id)]
        for c in conds:
            c.acquire()
        try:
            for f in pending:
                if f.done():
                    waiter._one()
                else:
                    f._waiters.append(waiter)
        finally:
            for c in reversed(conds):
                c.release()
        try:
            waiter.event.wait(timeout)
        finally:
            for f in pending:
                with f._condition:
                    try:
                        f._waiters.remove(waiter)
                    except ValueError:
                        pass
    done, rest = [], []
    for f in futures:
        (done if f.done() and len(done) < num_returns else rest).append(f)
    return done, rest


def put(value):
    """Stores a value in the cluster and returns a finished Future for it.

    Passing the Future to remote calls passes the value.

    Args:
        value: any picklable object (cloudpickle is used when pickle fails).
    Returns:
        A ``shoal.Future`` that is already done with ``value``.
    Raises:
        TypeError: value is a Future, or cannot be pickled.
    """
    if isinstance(value, Future):
        raise TypeError("shoal.put() of a shoal.Future: pass the Future itself to remote calls")
    from . import _serial
    c = _client()
    if _serial.store_info()[0] is not None:
        stream, blob = _serial._stored(value)
        if stream is not None:
            return _put_stored_parts(stream, blob, c)
    else:
        blob = _serial.dumps(value)
    oid = c.new_id()
    c.put(oid, blob)
    f = Future(oid, c, None)
    f._set_local(value)
    return f


def _put_stored_parts(stream, buffers, c=None):
    """Writes a pickled value (stream and out-of-band buffers) into the object
    store and has the daemon seal it; returns its finished Future."""
    from . import _serial
    from ._future import CODE_STORED, ST_OK, _engine_error
    c = c or _client()
    oid = c.new_id()
    size = _serial._write_segment(oid, stream, buffers)
    status, text = c.put_stored(oid, size)
    if status != 0:
        raise _engine_error(status, 0, text)
    f = Future(oid, c, None)
    f._complete(ST_OK, CODE_STORED, b"")
    return f


def _cancel_future(fut, force=False, queued_only=False):
    """Cancels ``fut``'s task. Returns what the daemon found: 0 nothing to
    cancel, 1 it was queued (the future is now cancelled), 2 it was running
    (it is being interrupted, or killed with ``force``; left alone with
    ``queued_only``, as ``Future.cancel()`` asks)."""
    if fut.done() or fut._client is None:
        return 0
    rc = fut._client.cancel(fut._id, bool(force), queued_only=bool(queued_only))
    if rc == 1:
        fut._complete(ST_CANCELLED, 0, b"cancelled by shoal.cancel() before it started")
    return rc


def cancel(future, force=False):
    """Cancels a task.

    A queued task never runs. A running task is interrupted (``KeyboardInterrupt``
    in the task); with ``force=True`` its worker is killed and replaced. Either
    way its future then raises ``TaskCancelledError``.

    Args:
        future: the ``shoal.Future`` of the task.
        force: kill the worker running the task.
    Returns:
        True if the task was queued or running (it is being cancelled), False
        if it had already finished.
    Raises:
        TypeError: future is not a shoal.Future.
    """
    _check_future(future, "the argument of shoal.cancel()")
    return _cancel_future(future, force) != 0


def kill(actor, *, no_restart=True):
    """Stops an actor now; its queued and later calls fail with ``ActorDiedError``.

    Args:
        actor: an actor handle (what ``Cls.remote()`` returned).
        no_restart: do not restart the actor (the only mode today).
    Returns:
        None.
    Raises:
        TypeError: actor is not an actor handle.
    """
    from ._remote import ActorHandle
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"shoal.kill() takes an actor handle, not a {type(actor).__name__}")
    actor._shoal_client.kill_actor(actor._shoal_actor_id, no_restart=bool(no_restart))


def status(timeout=10.0):
    """The state of the node this process is connected to.

    Args:
        timeout: seconds to wait for the daemon's answer.
    Returns:
        A dict (nodes, workers, resources total and in use, tasks queued,
        running and done), as ``shoal status --json`` prints it.
    Raises:
        GetTimeoutError or ConnectionLostError from the client when the daemon
        does not answer.
    """
    return _client().status(timeout)


def nodes(timeout=10.0):
    """Every node of the cluster this process is connected to, as the head
    knows it (dead ones included, with the reason).

    Args:
        timeout: seconds to wait for the daemon's answer.
    Returns:
        A list of dicts, one per node, with ``node_id``, ``address``,
        ``alive``, ``resources_total`` and ``resources_free`` (dicts: ``CPU``,
        ``GPU``, ``memory`` and custom names), ``load``, and also ``host``,
        ``pid``, ``draining``, ``dead_reason``, ``tasks_running`` and
        ``workers``.
    Raises:
        GetTimeoutError or ConnectionLostError from the client when the daemon
        does not answer.
    """
    return [dict(n) for n in status(timeout)["nodes"]]
