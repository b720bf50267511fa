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

pytestmark = pytest.mark.asan  # real daemons; the whole file runs in ~15 s under ASan


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


@shoal.remote(resources={"ra": 1})
def make_slowly(n, seed):
    import numpy as np
    time.sleep(1.0)
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


@shoal.remote(resources={"rb": 1})
def make_on_b(n, seed):
    import numpy as np
    return np.full(n, seed, dtype=np.uint8)


@shoal.remote(resources={"rb": 1})
def check_on_b(x, seed):
    import numpy as np
    return bool((x == seed).all()), int(x.nbytes)


def test_pull_into_a_recycled_file(two_nodes):
    """A node receives a pulled object into a freed segment's file (its pages
    written over, not allocated again); the reader sees only the new bytes,
    also when the file was bigger and is cut to the new size."""
    head, (a, b) = two_nodes
    # A result made on B and released unread: its file is kept for reuse (a
    # segment a worker was sent is not: the worker may still view it).
    first = make_on_b.remote(48 * MiB, 3)
    shoal.wait([first], timeout=T)
    del first
    import gc
    gc.collect()
    sdir = node_store(b)["dir"]
    wait_until(lambda: node_store(b)["objects"] == 0, 15, 0.05, "B to free its copy")
    pool = lambda: [f for f in os.listdir(sdir) if f.startswith("free.")]  # noqa: E731
    assert len(pool()) == 1, os.listdir(sdir)       # kept for reuse
    second = make_plain.remote(40 * MiB, 9)
    assert shoal.get(check_on_b.remote(second, 9), timeout=T) == (True, 40 * MiB)
    assert pool() == []                              # B received into it
    sizes = [os.path.getsize(os.path.join(sdir, f)) for f in os.listdir(sdir)
             if not f.startswith(".")]
    # One segment, cut from 48 MiB to the new one's size (40 MiB and its header).
    assert len(sizes) == 1 and 40 * MiB <= sizes[0] < 41 * MiB, sizes


def holder_of(head, oid):
    objs = {o["id"]: o for o in status_of(head)["object_list"]}
    return objs[oid]["nodes"]


@pytest.fixture
def three_nodes(fresh):  # noqa: F811
    """A head without workers, two nodes with "ra" and node B with "rb"."""
    head = Head()
    nodes = []
    try:
        nodes.append(Node(head, workers=1, cpus=1, resources={"ra": 1}))
        nodes.append(Node(head, workers=1, cpus=1, resources={"ra": 1}))
        nodes.append(Node(head, workers=1, cpus=1, resources={"rb": 1}))
        shoal.init(address=head.address, token=TOKEN)
        yield head, nodes
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        head.stop()


def test_pull_lost_object_rebuilt_from_lineage(three_nodes):
    head, nodes = three_nodes
    b = nodes[2]
    ref = make_plain.remote(20 * MiB, 9)
    shoal.wait([ref], timeout=T)
    holders = holder_of(head, ref.id)
    assert len(holders) == 1
    victim = next(n for n in nodes if n.node_id == holders[0])
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: not {n["node_id"]: n for n in shoal.nodes()}[victim.node_id]["alive"], 15,
               0.05, "the node declared dead")
    # Consumed on B: made again on the other "ra" node, then pulled from there.
    assert use_on_b.remote(ref).result(timeout=T) == (9, 20 * MiB, str(b.node_id))
    other = next(n for n in nodes[:2] if n is not victim)
    assert other.node_id in holder_of(head, ref.id)
    assert head_store(head)["rebuilds"] == 1
    # The driver reads it too.
    assert int(ref.result(timeout=T)[0]) == 9


def test_pull_lost_object_without_retries_is_object_lost(three_nodes):
    head, nodes = three_nodes
    ref = make_on_a_once.remote(20 * MiB, 3)
    shoal.wait([ref], timeout=T)
    victim = next(n for n in nodes if n.node_id == holder_of(head, ref.id)[0])
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: not {n["node_id"]: n for n in shoal.nodes()}[victim.node_id]["alive"], 15,
               0.05, "the node declared dead")
    with pytest.raises(shoal.ObjectLostError, match=f"{ref.id:#x}") as ei:
        use_on_b.remote(ref).result(timeout=T)
    assert "max_retries=0" in str(ei.value) and str(victim.node_id) in str(ei.value)
    with pytest.raises(shoal.ObjectLostError, match=f"{ref.id:#x}"):
        ref.result(timeout=T)


def partial_xfer(store_dir, oid, size):
    """Bytes of oid received so far into store_dir, when under way (0 < n < size)."""
    prefix = f"{oid:016x}."
    for name in os.listdir(store_dir):
        if name.startswith(prefix) and name.endswith(".xfer"):
            try:
                n = os.stat(os.path.join(store_dir, name)).st_size
            except FileNotFoundError:
                continue
            if 0 < n < size:
                return n
    return 0


def test_pull_source_dies_mid_transfer(three_nodes):
    head, nodes = three_nodes
    b = nodes[2]
    size = 256 * MiB
    ref = make_plain.remote(size, 5)
    shoal.wait([ref], timeout=T)
    victim = next(n for n in nodes if n.node_id == holder_of(head, ref.id)[0])
    bdir = node_store(b)["dir"]
    fut = use_on_b.remote(ref)
    # Freeze the source once B has part of the object, check that B still has
    # only part of it, then kill the source: the pull fails mid-transfer.
    wait_until(lambda: partial_xfer(bdir, ref.id, size), T, 0.001,
               "node B to have received part of the object")
    os.kill(victim.pid, signal.SIGSTOP)
    time.sleep(0.3)
    assert partial_xfer(bdir, ref.id, size), "the transfer finished before the source stopped"
    os.kill(victim.pid, signal.SIGKILL)
    t0 = time.monotonic()
    # B gives the task back (PULL_FAILED); the object is made again elsewhere.
    assert fut.result(timeout=T) == (5, size, str(b.node_id))
    assert time.monotonic() - t0 < 30
    assert head_store(head)["rebuilds"] == 1
    assert not [n for n in os.listdir(bdir) if n.endswith(".xfer")], os.listdir(bdir)


def test_pull_released_while_made_again(three_nodes):
    # The driver drops the object while its task runs again: the node that made
    # it again drops its copy (the head has nobody to give it to).
    head, nodes = three_nodes
    ref = make_slowly.remote(20 * MiB, 4)
    shoal.wait([ref], timeout=T)
    victim = next(n for n in nodes if n.node_id == holder_of(head, ref.id)[0])
    other = next(n for n in nodes[:2] if n is not victim)
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: not {n["node_id"]: n for n in shoal.nodes()}[victim.node_id]["alive"], 15,
               0.05, "the node declared dead")
    with pytest.raises(Exception):  # the MAP starts the rebuild; 1 s is longer than 0.1 s
        ref._client.map(ref.id, timeout=0.1)
    assert head_store(head)["rebuilds"] == 1
    del ref
    import gc
    gc.collect()
    wait_until(lambda: node_stats(other)["tasks"]["done"] == 1, T, 0.05, "the rebuild to end")
    wait_until(lambda: node_store(other)["objects"] == 0, 15, 0.05,
               "the node that made it again to drop its copy")


def test_pull_released_while_pulled_to_the_head(two_nodes):
    # The driver drops the object while the head pulls it: the bytes that
    # arrive after are not kept in the head's store.
    head, (a, b) = two_nodes
    size = 256 * MiB
    ref = make_plain.remote(size, 6)
    shoal.wait([ref], timeout=T)
    hdir = head_store(head)["dir"]
    oid = ref.id
    client = ref._client
    with pytest.raises(Exception):
        client.map(oid, timeout=0.001)
    wait_until(lambda: partial_xfer(hdir, oid, size), T, 0.001,
               "the head to have received part of the object")
    os.kill(a.pid, signal.SIGSTOP)  # the rest comes after the release
    try:
        del ref
        import gc
        gc.collect()
        wait_until(lambda: oid not in {o["id"] for o in status_of(head)["object_list"]}, 15,
                   0.05, "the head to free the object")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    wait_until(lambda: head_store(head)["received_objects"] == 1, T, 0.05, "the pull to end")
    time.sleep(0.2)
    assert not [n for n in os.listdir(hdir) if n.startswith(f"{oid:016x}")], os.listdir(hdir)
    wait_until(lambda: node_store(a)["objects"] == 0, 15, 0.05, "node A to drop its copy")


def _hdr(typ, length, ident=0):
    return struct.pack("<IBBHQII", 0x4C4F4853, 1, typ, 0, ident, length, 0)


def _read_frame(s):
    buf = b""
    while len(buf) < 24:
        k = s.recv(24 - len(buf))
        if not k:
            return None, None
        buf += k
    _, _, typ, _, _, ln, _ = struct.unpack("<IBBHQII", buf)
    body = b""
    while len(body) < ln:
        k = s.recv(ln - len(body))
        if not k:
            break
        body += k
    return typ, body


def test_pull_node_port_refuses_peers_without_the_token(two_nodes):
    import hashlib
    import hmac
    head, (a, b) = two_nodes
    addr = node_stats(a)["head"]["node_port"]
    host, port = addr.rsplit(":", 1)
    # No token: HELLO instead of the answer to the challenge.
    with socket.create_connection((host, int(port)), timeout=10) as s:
        typ, body = _read_frame(s)
        assert typ == 20 and len(body) == 40
        s.sendall(_hdr(1, 16) + struct.pack("<IIII", 5, os.getpid(), 0, 0))
        typ, body = _read_frame(s)
        assert typ == 16 and b"token" in body
        assert s.recv(10) == b""
    # A wrong token.
    with socket.create_connection((host, int(port)), timeout=10) as s:
        typ, body = _read_frame(s)
        ns, nc = body[8:40], os.urandom(32)
        proof = hmac.new(b"w" * 32, ns + nc + b"shoal-auth-v1 client", hashlib.sha256).digest()
        s.sendall(_hdr(21, 64) + nc + proof)
        typ, body = _read_frame(s)
        assert typ == 16 and b"wrong cluster token" in body
    # The right one: a PULL of an object it does not hold is answered, not fatal.
    with open(head.token_file, "rb") as f:
        tok = f.read().strip()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        typ, body = _read_frame(s)
        ns, nc = body[8:40], os.urandom(32)
        proof = hmac.new(tok, ns + nc + b"shoal-auth-v1 client", hashlib.sha256).digest()
        s.sendall(_hdr(21, 64) + nc + proof)
        typ, _ = _read_frame(s)
        assert typ == 22
        s.sendall(_hdr(1, 16) + struct.pack("<IIII", 5, os.getpid(), 0, 0) + _hdr(32, 0, 12345))
        typ, body = _read_frame(s)
        assert typ == 33 and struct.unpack("<I", body[:4])[0] == 7  # LOST
        # A malformed frame closes only this connection.
        s.sendall(_hdr(32, 3, 1) + b"abc")
        typ, body = _read_frame(s)
        assert typ == 16 and b"malformed PULL" in body
    # The node keeps serving.
    ref = make_plain.remote(2 * MiB, 1)
    assert use_on_b.remote(ref).result(timeout=T) == (1, 2 * MiB, str(b.node_id))
