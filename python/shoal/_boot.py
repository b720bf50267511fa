"""``shoal.init``: starts a private daemon before the rest of shoal is imported.

Importing the API (``concurrent.futures``, cloudpickle, ...) takes tens of
milliseconds; a private daemon and its workers take about as long to boot.
So when ``init`` is going to start a private cluster, this module (which
imports nothing heavy) launches the daemon first and lets ``_api.init`` wait
for it while the imports run on the other core. Everything else, checks and
errors included, is ``_api.init``'s.
"""

import os
import sys


def _prestart(address, num_workers, resources, token, object_store_memory=None, tls=False):
    """The private daemon, started but not waited for; None when ``init`` will
    not start one, or when anything about the request is off (``_api.init``
    then reports it the usual way)."""
    if address is not None or os.environ.get("SHOAL_ADDRESS") or token is not None or tls:
        return None
    api = sys.modules.get(__package__ + "._api")
    if api is not None and api._state.client is not None:
        return None  # already initialized: _api.init answers
    if num_workers is not None and (type(num_workers) is not int or num_workers < 1):
        return None
    if object_store_memory is not None and (type(object_store_memory) is not int
                                            or object_store_memory < (1 << 20)):
        return None
    try:
        from . import _cluster
        if resources is not None:
            _cluster.resources_json(resources)
        return _cluster.EmbeddedDaemon(num_workers, resources, wait=False,
                                       object_store_memory=object_store_memory)
    except Exception:
        return None


def init(address=None, *, num_workers=None, resources=None, ignore_reinit_error=False,
         token=None, object_store_memory=None, wait_for_nodes=False, tls_ca=None,
         tls_cert=None, tls_key=None, reconnect_timeout=60.0):
    daemon = _prestart(address, num_workers, resources, token, object_store_memory,
                       tls=tls_ca is not None or tls_cert is not None or tls_key is not None)
    from . import _api
    return _api.init(address, num_workers=num_workers, resources=resources,
                     ignore_reinit_error=ignore_reinit_error, token=token,
                     object_store_memory=object_store_memory, wait_for_nodes=wait_for_nodes,
                     tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                     reconnect_timeout=reconnect_timeout, _daemon=daemon)


init.__doc__ = """Connects this process to a shoal cluster, starting a private one if needed.

    With no ``address`` and no ``SHOAL_ADDRESS`` in the environment, starts a
    private cluster (a head and node agent in one daemon) sized to this
    machine; it stops when this process exits, also when it is killed.

    Args:
        address: ``"auto"`` (the running local cluster: ``$SHOAL_SOCKET_DIR``
            or ``/tmp/shoal-<uid>/default``), a socket directory, a socket path,
            ``unix:PATH`` or ``HOST:PORT``. Defaults to ``$SHOAL_ADDRESS``.
        num_workers: worker processes of a private cluster (default: one per CPU).
        resources: resources of a private cluster, a dict of name to amount.
        ignore_reinit_error: make a second ``init`` a no-op instead of an error.
        token: the cluster token for a ``HOST:PORT`` address. Defaults to
            ``$SHOAL_TOKEN``, then the file ``$SHOAL_TOKEN_FILE``, then
            ``~/.shoal/token``. Unix sockets need none.
        object_store_memory: shared memory for large objects in a private
            cluster, in bytes (default: 30% of the machine's memory).
        wait_for_nodes: a request no node has the resources for waits for a
            node that has them to join, instead of failing at once.
        tls_ca, tls_cert, tls_key: PEM files for TLS to a ``HOST:PORT``
            head: the CA that signed its certificate, and this driver's
            certificate and key when the head requires one. Default
            ``$SHOAL_TLS_CA``, ``$SHOAL_TLS_CERT``, ``$SHOAL_TLS_KEY``.
        reconnect_timeout: seconds to keep reconnecting (and then sending
            again what is unfinished) when the connection to a cluster at
            ``address`` breaks, e.g. a head killed and restarted on the same
            port; 0 disables it (default 60).
    Returns:
        A dict describing the connection (see ``shoal._api.init``).
    Raises:
        RuntimeError, ValueError, TypeError, ConnectionError, ShoalError,
        FileNotFoundError: as ``shoal._api.init`` documents.
        AuthenticationError: a TCP connection found no token, or the daemon
            refused it (a wrong token), or did not prove it holds it; or TLS
            failed (see ``shoal._api.init``).
    """
