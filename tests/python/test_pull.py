"""Objects between nodes: a large result stays on the node that made it;
another node pulls it from there directly (once, however many of its tasks
need it), the head only when a driver there reads it; an object lost with
its node is made again from its lineage within the task's retries, or fails
with ObjectLostError naming it; the node port refuses peers without the
cluster token. A real head and real nodes on loopback."""

import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

import shoal
from _helpers import binary, fresh, wait_until  # noqa: F401
from test_auth import TOKEN
from test_cluster_nodes import Head, Node, node_store

T = 60
MiB = 1 << 20


@shoal.remote(resources={"ra": 1})
def make_on_a(n, seed):
    import numpy as np
    return np.full(n, seed, dtype=np.uint8), os.environ["SHOAL_NODE_ID"]


@shoal.remote(resources={"ra": 1}, max_retries=0)
def make_on_a_once(n, seed):
    import numpy as np
    return np.full(n, seed, dtype=np.uint8)


@shoal.remote(resources={"ra": 1})
def make_plain(n, seed):
    import numpy as np
    return np.full(n, seed, dtype=np.uint8)


@shoal.remote(resources={"rb": 1})
def use_on_b(x):
    return int(x[0]), int(x.nbytes), os.environ["SHOAL_NODE_ID"]


def status_of(head):
    st = head.cli("memory", "--json")
    assert st.returncode == 0, st.stderr
    return json.loads(st.stdout)


def node_stats(node):
    r = subprocess.run([binary(), "status", "--json", "--socket-dir", node.dir],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def two_nodes(fresh):  # noqa: F811
    """A head without workers, node A (resource "ra", twice: a spare for
    rebuilds is started by the tests that need one) and node B ("rb")."""
    head = Head()
    nodes = []
    try:
        nodes.append(Node(head, workers=1, cpus=1, resources={"ra": 1}))
        nodes.append(Node(head, workers=2, cpus=2, resources={"rb": 1}))
        shoal.init(address=head.address, token=TOKEN)
        yield head, nodes
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        head.stop()


def head_store(head):
    st = head.cli("status", "--json")
    assert st.returncode == 0, st.stderr
    return json.loads(st.stdout)["store"]


def test_pull_node_to_node_once(two_nodes):
    head, (a, b) = two_nodes
    ref = make_plain.remote(20 * MiB, 7)
    # Five tasks on B need it: B pulls it from A once, the head never sees it.
    out = shoal.get([use_on_b.remote(ref) for _ in range(5)], timeout=T)
    assert out == [(7, 20 * MiB, str(b.node_id))] * 5
    sb, sa = node_store(b), node_store(a)
    assert sb["received_objects"] == 1, sb
    assert sb["received_bytes"] >= 20 * MiB
    assert sa["sent_objects"] == 1, sa
    hs = head_store(head)
    assert hs["received_objects"] == 0, hs
    # shoal memory on the head: the object lives on A and B.
    objs = {o["id"]: o for o in status_of(head)["object_list"]}
    o = objs[ref.id]
    assert set(o["nodes"]) == {a.node_id, b.node_id}, o
    # The driver's get pulls it to the head.
    v = ref.result(timeout=T)
    assert v.nbytes == 20 * MiB and int(v[0]) == 7 and int(v[-1]) == 7
    assert head_store(head)["received_objects"] == 1
    # Released by the driver: the nodes drop their copies.
    del ref, v
    import gc
    gc.collect()
    wait_until(lambda: node_store(a)["objects"] == 0 and node_store(b)["objects"] == 0, 15, 0.1,
               "the nodes to drop their copies")
