"""``shoal.runtime_context()``: where the calling code runs. Light on
purpose: a worker imports it inside tasks, and it must not pull the driver's
API in."""

import collections
import os
import sys

RuntimeContext = collections.namedtuple("RuntimeContext", "node_id worker_pid task_id")
RuntimeContext.__doc__ = """Where the calling code runs.

    node_id: the node (int) running it; in a driver, the node it is connected
        to, or None before ``shoal.init``.
    worker_pid: the worker process's pid inside a task or actor, else None.
    task_id: the id (int) of the running task, actor creation or actor call
        (the id of its Future), else None.
    """


def runtime_context():
    """Where the calling code runs: a ``RuntimeContext`` (a named tuple) of
    ``node_id``, ``worker_pid`` and ``task_id``.

    Inside a task or actor method all three are set; in a driver,
    ``worker_pid`` and ``task_id`` are None.
    """
    node = os.environ.get("SHOAL_NODE_ID")
    if os.environ.get("SHOAL_WORKER_ID") and node:
        from . import _core
        return RuntimeContext(int(node), os.getpid(), _core.current_task())
    api = sys.modules.get(__package__ + "._api")
    client = api._state.client if api is not None else None
    node_id = client.node_info.get("node_id") if client is not None else None
    return RuntimeContext(node_id, None, None)
