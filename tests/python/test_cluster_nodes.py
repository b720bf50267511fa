"""A real cluster on loopback: a head (with no workers of its own, so work must
go to the nodes) and node agents started with `shoal start --address`, each
with its own socket directory and resources. Placement by resource and by
load, a node joining mid-run, drain, a node killed with 2,000 tasks in flight
(every result right, nothing run more often than its retries allow), a
silent node declared dead by heartbeats and coming back, actors on nodes,
waiting for nodes, and the command line's errors.

Tasks report where they ran through SHOAL_NODE_ID, which workers get."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

import shoal
from _helpers import (ExternalDaemon, binary, env_with_shoal, fresh, short_tmpdir,  # noqa: F401
                      wait_until)
from test_auth import TOKEN, free_port, write_token

T = 60


@shoal.remote
def where(x):
    return x, os.environ["SHOAL_NODE_ID"], os.getpid()


@shoal.remote
def slow_where(x):
    time.sleep(0.4)
    return x, os.environ["SHOAL_NODE_ID"]


@shoal.remote(resources={"special": 1})
def special(x):
    return x, os.environ["SHOAL_NODE_ID"]


@shoal.remote
def length(b):
    return len(b)


@shoal.remote
def big(n):
    return b"z" * n


@shoal.remote(resources={"special": 1})
class Counter1:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n, os.environ["SHOAL_NODE_ID"]


# ---- daemons ----

class Head(ExternalDaemon):
    """`shoal start --head` on a free loopback port with a token file and no
    workers: every task runs on a node."""

    def __init__(self, *args, cpus=1, heartbeat_timeout=3):
        self.tokdir = short_tmpdir("shtok-")
        self.token_file = write_token(self.tokdir)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        super().__init__("--port", str(self.port), "--token-file", self.token_file,
                         "--num-cpus", str(cpus), "--heartbeat-timeout", str(heartbeat_timeout),
                         *args, workers=0)
        deadline = time.monotonic() + 20
        while self.cli("status").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out, err = self.stop()
                pytest.fail(f"the head did not start: {err}")
            time.sleep(0.05)

    def cli(self, *args):
        return subprocess.run([binary(), *args, "--address", self.address, "--token-file",
                               self.token_file, "--timeout", "5"], capture_output=True, text=True,
                              timeout=30)

    def nodes(self):
        st = self.cli("status", "--json")
        assert st.returncode == 0, st.stderr
        return {n["node_id"]: n for n in json.loads(st.stdout)["nodes"]}

    def stop(self):
        out, err = super().stop()
        import shutil
        shutil.rmtree(self.tokdir, ignore_errors=True)
        return out, err


class Node:
    """`shoal start --address HEAD --block` with its own socket directory;
    waits until the head lists it alive."""

    def __init__(self, head, *args, workers=1, cpus=1, resources=None, token_file=None,
                 wait=True):
        self.dir = short_tmpdir("shn-")
        argv = [binary(), "start", "--address", head.address, "--block", "--socket-dir", self.dir,
                "--token-file", token_file or head.token_file, "--workers", str(workers),
                "--num-cpus", str(cpus), "--python", sys.executable, "--heartbeat-timeout", "3",
                *args]
        if resources:
            argv += ["--resources", json.dumps(resources)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env_with_shoal(), text=True)
        self.pid = self.proc.pid
        self.node_id = None
        if wait:
            def joined():
                for n in head.nodes().values():
                    if n["pid"] == self.pid and n["alive"]:
                        return n["node_id"]
                assert self.proc.poll() is None, self.proc.communicate()[1]
                return None
            self.node_id = wait_until(joined, 30, 0.1, "the node to join the head")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
        import glob
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)
        # A node the test SIGKILLed could not remove its object store (the
        # next agent to start would): remove it here.
        for d in glob.glob(f"/dev/shm/shoal-{self.pid}-*"):
            shutil.rmtree(d, ignore_errors=True)
        return out, err


@pytest.fixture
def cluster3(fresh):  # noqa: F811
    """A head and two nodes: A (2 CPUs, 2 workers) and B (1 CPU, 1 worker, the
    custom resource "special"); the driver connected to the head."""
    head = Head()
    nodes = []
    try:
        nodes.append(Node(head, workers=2, cpus=2))
        nodes.append(Node(head, workers=1, cpus=1, resources={"special": 1}))
        shoal.init(address=head.address, token=TOKEN)
        yield head, nodes[0], nodes[1]
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        head.stop()


def by_id():
    return {n["node_id"]: n for n in shoal.nodes()}


def node_of(results):
    return {str(r[1]) for r in results}


# ---- tests ----

@pytest.mark.asan
def test_cluster_placement_by_resource_and_load(cluster3):
    head, a, b = cluster3
    ids = {str(a.node_id), str(b.node_id)}
    # The custom resource exists only on B: every such task runs there.
    assert node_of(shoal.get([special.remote(i) for i in range(6)], timeout=T)) == {str(b.node_id)}
    # Three long tasks at once fill A's 2 CPUs and B's 1: both nodes work.
    out = shoal.get([slow_where.remote(i) for i in range(3)], timeout=T)
    assert [r[0] for r in out] == [0, 1, 2]
    assert node_of(out) == ids
    # Many short ones: right results, in order, on the nodes' worker processes.
    res = shoal.get([where.remote(i) for i in range(300)], timeout=T)
    assert [r[0] for r in res] == list(range(300))
    assert node_of(res) <= ids and len({r[2] for r in res}) >= 2
    # Values too big to travel inline, both ways: an argument in the head's
    # object store and a result a node's worker wrote to its own store.
    blob = shoal.put(b"y" * 300_000)
    assert length.remote(blob).result(timeout=T) == 300_000
    assert big.remote(400_000).result(timeout=T) == b"z" * 400_000
    # shoal.nodes(): every node with its resources; the head's own first.
    nodes = {n["node_id"]: n for n in shoal.nodes()}
    assert set(nodes) == {1, a.node_id, b.node_id}
    for n in nodes.values():
        assert n["alive"] and n["address"] and n["load"] >= 0
        assert {"node_id", "address", "alive", "resources_total", "resources_free", "load",
                "draining", "dead_reason", "tasks_running"} <= set(n)
    assert nodes[b.node_id]["resources_total"]["special"] == 1.0
    assert nodes[a.node_id]["resources_total"]["CPU"] == 2.0
    assert "special" not in nodes[a.node_id]["resources_total"]
    wait_until(lambda: all(n["tasks_running"] == 0 for n in shoal.nodes()), 10, 0.05,
               "the nodes to be idle")
    assert shoal.nodes()[1]["resources_free"]["CPU"] in (1.0, 2.0)
    # The human-readable status lists them too.
    st = head.cli("status")
    assert st.returncode == 0 and f"node {a.node_id} " in st.stdout and "special" in st.stdout


@shoal.remote(resources={"special": 1})
def special_sum(x):
    return float(x.sum()), os.environ["SHOAL_NODE_ID"]


@shoal.remote(resources={"special": 1})
def special_ones(n):
    import numpy as np
    return np.ones(n)


def node_store(node):
    r = subprocess.run([binary(), "status", "--json", "--socket-dir", node.dir],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["store"]


@pytest.mark.asan
def test_cluster_objects_move_in_chunks_once_per_node(fresh):  # noqa: F811
    """Objects bigger than one message move between head and node in chunks;
    a node gets each object once however many of its tasks need it, and
    drops its copy when the head frees the object."""
    np = pytest.importorskip("numpy")
    head = Head("--max-frame", "1M")  # chunks of 512 KiB; the objects are 24 MiB
    node = None
    try:
        node = Node(head, "--max-frame", "1M", workers=1, cpus=1, resources={"special": 1})
        shoal.init(address=head.address, token=TOKEN)
        a = np.arange(3 << 20, dtype=np.float64)  # 24 MiB
        ref = shoal.put(a)
        out = shoal.get([special_sum.remote(ref) for _ in range(5)], timeout=T)
        assert out == [(float(a.sum()), str(node.node_id))] * 5
        st = node_store(node)
        assert st["received_objects"] == 1, st  # once, for five tasks
        assert st["received_bytes"] >= a.nbytes
        # A big result comes back in chunks too.
        r = special_ones.remote(3 << 20)
        v = r.result(timeout=T)
        assert v.shape == (3 << 20,) and float(v.sum()) == 3 << 20
        assert node_store(node)["sent_objects"] >= 1
        # The head frees the object: the node drops its copy.
        del ref, r, v
        import gc
        gc.collect()
        wait_until(lambda: node_store(node)["objects"] == 0, 15, 0.1,
                   "the node dropping the copies the head freed")
    finally:
        shoal.shutdown()
        if node is not None:
            node.stop()
        head.stop()


@shoal.remote
def plain_sum(x):
    return float(x.sum()), os.environ["SHOAL_NODE_ID"]


@shoal.remote
def pinned_sum(x):
    return float(x.sum()), os.environ["SHOAL_NODE_ID"]


def test_cluster_placement_prefers_the_node_holding_the_arguments(fresh):  # noqa: F811
    """Locality first: a task goes to the node that already holds its big
    argument. Everything else being equal the lowest node id wins, so the
    copy is put on the node with the higher id: only locality sends the
    task there (measured load, the same machine's load average reported at
    different moments, can favour either node; any locality beats it)."""
    np = pytest.importorskip("numpy")
    head = Head()
    nodes = []
    try:
        nodes.append(Node(head, workers=1, cpus=1, resources={"r0": 1}))
        nodes.append(Node(head, workers=1, cpus=1, resources={"r1": 1}))
        high = max(range(2), key=lambda i: nodes[i].node_id)
        shoal.init(address=head.address, token=TOKEN)
        arr = np.arange(2 << 20, dtype=np.float64)  # 16 MiB
        ref = shoal.put(arr)
        first = pinned_sum.options(resources={f"r{high}": 1}).remote(ref).result(timeout=T)
        assert first[1] == str(nodes[high].node_id)  # the copy is on the higher id now
        for _ in range(3):
            got = plain_sum.remote(ref).result(timeout=T)
            assert got == (float(arr.sum()), str(nodes[high].node_id)), \
                "not placed where its argument is"
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        head.stop()


@shoal.remote(max_restarts=1, resources={"roam": 1})
class Roaming:
    def __init__(self, start):
        self.n = start

    def inc(self):
        self.n += 1
        return self.n, os.getpid(), os.environ["SHOAL_NODE_ID"]


def test_cluster_actor_restarts_on_another_node(fresh):  # noqa: F811
    head = Head()
    nodes = []
    try:
        nodes.append(Node(head, workers=1, cpus=1, resources={"roam": 1}))
        nodes.append(Node(head, workers=1, cpus=1, resources={"roam": 1}))
        shoal.init(address=head.address, token=TOKEN)
        r = Roaming.remote(100)  # only the nodes have "roam"
        n1, _, where1 = r.inc.remote().result(timeout=T)
        assert n1 == 101
        victim = next(x for x in nodes if str(x.node_id) == where1)
        os.kill(victim.pid, signal.SIGKILL)
        # Constructed again, from the same arguments, on the node that is left.
        def restarted():
            try:
                return r.inc.remote().result(timeout=T)
            except shoal.ActorDiedError:
                return None  # a call that was in flight when the node died
        n2, _, where2 = wait_until(restarted, 30, 0.1, "the actor restarted elsewhere")
        assert n2 == 101 and where2 != where1
        n3, _, where3 = r.inc.remote().result(timeout=T)
        assert (n3, where3) == (102, where2)
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        head.stop()


@pytest.mark.asan
def test_cluster_actor_restarts_after_its_worker_dies_on_a_live_node(fresh):  # noqa: F811
    """The actor's worker is killed, its node lives on: the node tells the
    head, which constructs the actor again (max_restarts=1); killed a second
    time, it dies for good, and the node is still alive and serving."""
    head = Head()
    node = None
    try:
        node = Node(head, workers=1, cpus=1, resources={"roam": 1})
        shoal.init(address=head.address, token=TOKEN)
        r = Roaming.remote(10)
        n1, pid1, where = r.inc.remote().result(timeout=T)
        assert (n1, where) == (11, str(node.node_id))
        os.kill(pid1, signal.SIGKILL)

        def restarted():
            try:
                return r.inc.remote().result(timeout=T)
            except shoal.ActorDiedError:
                return None  # a call that was on its way when the worker died
        n2, pid2, where2 = wait_until(restarted, 30, 0.1, "the actor constructed again")
        assert n2 == 11 and pid2 != pid1 and where2 == where   # fresh state, same node
        os.kill(pid2, signal.SIGKILL)

        def dead():
            try:
                r.inc.remote().result(timeout=T)
                return None
            except shoal.ActorDiedError as e:
                # Calls on their way when it died say so; then the head's own answer.
                return e if "while this call was on its way" not in str(e) else None
        err = wait_until(dead, 30, 0.1, "the actor to die after its last restart")
        assert "died" in str(err), err
        assert head.nodes()[node.node_id]["alive"]
        @shoal.remote(resources={"roam": 1})
        def here():
            return os.environ["SHOAL_NODE_ID"]
        assert here.remote().result(timeout=T) == where     # its resources were given back
    finally:
        shoal.shutdown()
        if node:
            node.stop()
        head.stop()


def test_cluster_infeasible_and_actors(cluster3):
    head, a, b = cluster3

    @shoal.remote(resources={"nowhere": 1})
    def nowhere():
        return 1

    with pytest.raises(shoal.InfeasibleResourcesError, match="nowhere") as ei:
        nowhere.remote().result(timeout=T)
    assert "largest node" in str(ei.value) or "node" in str(ei.value)
    # An actor is placed like a task and stays on its node.
    c = Counter1.remote()
    calls = [c.inc.remote().result(timeout=T) for _ in range(4)]
    assert [x[0] for x in calls] == [1, 2, 3, 4]
    assert {x[1] for x in calls} == {str(b.node_id)}
    # Its node dies: its calls fail with ActorDiedError naming the node.
    os.kill(b.pid, signal.SIGKILL)
    with pytest.raises(shoal.ActorDiedError, match=str(b.node_id)):
        c.inc.remote().result(timeout=T)
    d = wait_until(lambda: by_id()[b.node_id]["dead_reason"] and by_id()[b.node_id], 10, 0.05,
                   "the node declared dead")
    assert not d["alive"] and "lost its connection" in d["dead_reason"]
    # Nobody has "special" any more: such a task fails at once.
    with pytest.raises(shoal.InfeasibleResourcesError):
        special.remote(1).result(timeout=T)


def test_cluster_node_joins_mid_run_and_drain(fresh):  # noqa: F811
    head = Head()
    nodes = []
    try:
        nodes.append(Node(head, workers=1, cpus=1))
        shoal.init(address=head.address, token=TOKEN)
        futs = [slow_where.remote(i) for i in range(8)]
        # Queued behind one CPU; a second node joins and takes work at once.
        nodes.append(Node(head, workers=1, cpus=1))
        out = shoal.get(futs, timeout=T)
        assert [r[0] for r in out] == list(range(8))
        assert node_of(out) == {str(nodes[0].node_id), str(nodes[1].node_id)}
        # Drain the first: new work goes to the second only, while a task
        # already running on the first finishes there.
        running = slow_where.remote(100)
        wait_until(lambda: sum(n["tasks_running"] for n in shoal.nodes()) == 1, 10, 0.02,
                   "the task to start")
        first = next(n for n in nodes if any(
            x["node_id"] == n.node_id and x["tasks_running"] for x in shoal.nodes()))
        other = nodes[1] if first is nodes[0] else nodes[0]
        d = head.cli("drain", str(first.node_id))
        assert d.returncode == 0 and "draining" in d.stdout, d.stderr
        assert running.result(timeout=T) == (100, str(first.node_id))
        out = shoal.get([where.remote(i) for i in range(20)], timeout=T)
        assert node_of(out) == {str(other.node_id)}
        assert {n["node_id"]: n for n in shoal.nodes()}[first.node_id]["draining"]
        bad = head.cli("drain", "12345")
        assert bad.returncode == 1 and "no node 12345" in bad.stderr
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        head.stop()


@pytest.mark.asan
def test_cluster_node_killed_with_tasks_in_flight(fresh, tmp_path):  # noqa: F811
    head = Head()
    nodes = []
    log = str(tmp_path / "runs")
    open(log, "w").close()

    @shoal.remote(max_retries=2)
    def counted(i):
        with open(log, "a") as f:
            f.write(f"{i}\n")
        time.sleep(0.001)
        return i * 3

    try:
        nodes.append(Node(head, workers=2, cpus=2))
        nodes.append(Node(head, workers=1, cpus=1))
        shoal.init(address=head.address, token=TOKEN)
        futs = [counted.remote(i) for i in range(2000)]
        wait_until(lambda: sum(f.done() for f in futs[:400]) >= 100, T, 0.01,
                   "the first results")
        os.kill(nodes[0].pid, signal.SIGKILL)
        assert [f.result(timeout=T) for f in futs] == [i * 3 for i in range(2000)]
        runs = Counter(open(log).read().split())
        assert len(runs) == 2000
        assert max(runs.values()) <= 1 + 2
        dead = {n["node_id"]: n for n in shoal.nodes()}[nodes[0].node_id]
        assert not dead["alive"] and dead["dead_reason"]
        # A task that can not be retried fails naming the node when it dies.
        @shoal.remote(max_retries=0)
        def hang():
            time.sleep(60)

        f = hang.remote()
        wait_until(lambda: sum(n["tasks_running"] for n in shoal.nodes()) == 1, 10, 0.02,
                   "the task to start")
        os.kill(nodes[1].pid, signal.SIGKILL)
        with pytest.raises(shoal.WorkerCrashedError, match=f"node {nodes[1].node_id}"):
            f.result(timeout=T)
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        out, err = head.stop()
    assert "is dead" in err


def test_cluster_silent_node_declared_dead_and_back(fresh):  # noqa: F811
    head = Head(heartbeat_timeout=1)
    node = None
    try:
        node = Node(head)
        shoal.init(address=head.address, token=TOKEN)
        assert where.remote(1).result(timeout=T)[1] == str(node.node_id)
        os.kill(node.pid, signal.SIGSTOP)  # alive, connected, silent
        gone = wait_until(lambda: not shoal.nodes()[1]["alive"] and shoal.nodes(), 15, 0.05,
                          "the silent node to be declared dead")
        assert "no heartbeat" in gone[1]["dead_reason"]
        f = where.remote(2)  # waits: the node is dead, but could come back
        os.kill(node.pid, signal.SIGCONT)
        # It notices it lost the head, reconnects and registers with its id.
        wait_until(lambda: shoal.nodes()[1]["alive"], 20, 0.05, "the node to rejoin")
        assert shoal.nodes()[1]["node_id"] == node.node_id
        assert f.result(timeout=T)[:2] == (2, str(node.node_id))
    finally:
        shoal.shutdown()
        if node:
            node.stop()
        head.stop()


def test_cluster_wait_for_nodes(fresh):  # noqa: F811
    head = Head()
    nodes = []
    try:
        shoal.init(address=head.address, token=TOKEN, wait_for_nodes=True)
        f = special.remote(7)
        with pytest.raises(shoal.GetTimeoutError):
            f.result(timeout=0.3)
        nodes.append(Node(head, resources={"special": 1}))
        assert f.result(timeout=T) == (7, str(nodes[0].node_id))
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        head.stop()


def test_cluster_command_line_and_tokens(fresh):  # noqa: F811
    def start(*args):
        return subprocess.run([binary(), "start", *args], capture_output=True, text=True,
                              timeout=30, env=env_with_shoal())

    h = start("--help")
    assert h.returncode == 0 and "--address HOST:PORT" in h.stdout
    assert "--heartbeat-timeout" in h.stdout
    for bad in (["--address", "nohostport"], ["--address", "h:0"],
                ["--address", "127.0.0.1:1", "--port", "5"], ["--head", "--address", "a:1"],
                ["--address", "127.0.0.1:1", "--heartbeat-timeout", "x"]):
        r = start(*bad)
        assert r.returncode == 2 and "usage" in r.stderr, (bad, r.stderr)
    d = subprocess.run([binary(), "drain"], capture_output=True, text=True, timeout=30)
    assert d.returncode == 2 and "NODE_ID" in d.stderr
    head = Head()
    node = None
    try:
        # A node without the head's token is refused, says so, keeps trying.
        tokdir = short_tmpdir("shtok-")
        wrong = write_token(tokdir, "f" * 64)
        node = Node(head, token_file=wrong, wait=False)
        logf = os.path.join(node.dir, "agent.log")

        def refused():
            ps = head.cli("status", "--json")
            assert ps.returncode == 0
            return len(json.loads(ps.stdout)["nodes"]) == 1 and node.proc.poll() is None
        time.sleep(0.5)
        assert refused()
        out, err = node.stop()
        assert "cannot join the head" in err and "token" in err, err
        assert not os.path.exists(logf)
        # A node agent is no head: nodes and drain go to the head.
        node = Node(head)
        nd = subprocess.run([binary(), "drain", "5", "--socket-dir", node.dir],
                            capture_output=True, text=True, timeout=30)
        assert nd.returncode == 1 and "node agent" in nd.stderr
        st = subprocess.run([binary(), "status", "--socket-dir", node.dir, "--json"],
                            capture_output=True, text=True, timeout=30)
        assert json.loads(st.stdout)["head"]["connected"] is True
    finally:
        if node:
            node.stop()
        head.stop()
