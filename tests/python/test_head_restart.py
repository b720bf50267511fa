"""The head killed (SIGKILL) and started again on the same port, socket
directory and token, mid-run: node agents and the driver reconnect on their
own, tasks running on nodes finish and their results reach the driver,
nothing the driver submitted is lost, nothing runs more often than its
retries allow, a stored object and an actor on a surviving node outlive the
restart. And a head that never comes back: the driver's calls fail within
reconnect_timeout saying so, the nodes drop the head's work after
--head-timeout.

Tasks log every run (task, node) to a file, so runs are counted for real."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

import shoal
from _helpers import binary, env_with_shoal, fresh, short_tmpdir, wait_until  # noqa: F401
from test_auth import TOKEN, free_port, write_token
from test_cluster_nodes import Node

T = 90


class RestartableHead:
    """`shoal start --head --block` with a fixed socket directory, port and
    token file, that the test can SIGKILL and start again the same way."""

    def __init__(self, *args, workers=1, cpus=1):
        self.dir = short_tmpdir("shh-")
        self.tokdir = short_tmpdir("shtok-")
        self.token_file = write_token(self.tokdir)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # A store base of its own: agents of other shoal versions starting on
        # this machine meanwhile would take the killed head's store in
        # /dev/shm for a dead agent's and remove it (this version leaves a
        # store whose head journal exists alone).
        import tempfile
        self.store_base = tempfile.mkdtemp(prefix="shrs-", dir="/dev/shm")
        self.argv = [binary(), "start", "--head", "--block", "--socket-dir", self.dir,
                     "--workers", str(workers), "--num-cpus", str(cpus), "--python",
                     sys.executable, "--port", str(self.port), "--token-file", self.token_file,
                     "--heartbeat-timeout", "3", "--object-store-dir", self.store_base, *args]
        self.pids = []
        self.errs = []
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env_with_shoal(), text=True)
        self.pid = self.proc.pid
        self.pids.append(self.pid)
        deadline = time.monotonic() + 30
        while self.cli("status").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("the head did not start: " + "\n".join(self.errs))
            time.sleep(0.05)

    def cli(self, *args):
        return subprocess.run([binary(), *args, "--address", self.address, "--token-file",
                               self.token_file, "--timeout", "5"], capture_output=True,
                              text=True, timeout=30)

    def nodes(self):
        import json
        st = self.cli("status", "--json")
        assert st.returncode == 0, st.stderr
        return {n["node_id"]: n for n in json.loads(st.stdout)["nodes"]}

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.errs.append(self.proc.communicate(timeout=10)[1])

    def restart(self):
        """SIGKILL, then the same command line again."""
        self.kill9()
        time.sleep(0.3)
        self.start()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.errs.append(self.proc.communicate(timeout=15)[1])
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.errs.append(self.proc.communicate(timeout=5)[1])
        # A SIGKILLed head leaves its object store (a restarted one takes it
        # over; the last one removes it when it stops cleanly).
        for pid in self.pids:
            for d in glob.glob(f"/dev/shm/shoal-{pid}-*"):
                shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.store_base, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.tokdir, ignore_errors=True)
        return "\n".join(self.errs)


def shut_down(head, *nodes):
    """The driver, then the nodes, then the head; returns the head's log."""
    shoal.shutdown()
    for n in nodes:
        if n:
            n.stop()
    return head.stop()


def make_tasks(log):
    @shoal.remote(max_retries=2)
    def counted(i):
        with open(log, "a") as f:
            f.write(f"c{i} {os.environ['SHOAL_NODE_ID']}\n")
        time.sleep(0.002)
        return i * 3

    @shoal.remote(max_retries=0)
    def slow_once(i):
        with open(log, "a") as f:
            f.write(f"s{i} {os.environ['SHOAL_NODE_ID']}\n")
        time.sleep(1.0)
        return -i

    return counted, slow_once


@shoal.remote
def total(a):
    return int(a.sum())


@shoal.remote(resources={"special": 1})
class Tally:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n, os.environ["SHOAL_NODE_ID"]


def runs_of(log):
    runs, where = Counter(), {}
    for line in open(log).read().split("\n"):
        if line:
            key, node = line.split()
            runs[key] += 1
            where.setdefault(key, set()).add(node)
    return runs, where


@pytest.mark.asan
def test_head_killed_and_restarted_mid_run(fresh, tmp_path):  # noqa: F811
    log = str(tmp_path / "runs")
    open(log, "w").close()
    counted, slow_once = make_tasks(log)
    head = RestartableHead(workers=1, cpus=1)
    nodes = []
    try:
        nodes.append(Node(head, workers=2, cpus=2, resources={"special": 1}))
        nodes.append(Node(head, workers=2, cpus=2))
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        arr = np.arange(100_000, dtype=np.int64)  # 800 KB: a stored object
        ref = shoal.put(arr)
        tally = Tally.remote()
        assert shoal.get(tally.inc.remote(), timeout=T)[0] == 1
        slow = [slow_once.remote(i) for i in range(12)]
        short = [counted.remote(i) for i in range(2000)]
        wait_until(lambda: sum(f.done() for f in short[:600]) >= 200, T, 0.01,
                   "the first results")
        head.kill9()
        time.sleep(0.3)
        head.start()
        assert [f.result(timeout=T) for f in short] == [i * 3 for i in range(2000)]
        runs, where = runs_of(log)
        assert all(runs[f"c{i}"] >= 1 for i in range(2000))
        assert max(runs[f"c{i}"] for i in range(2000)) <= 1 + 2
        head_node = "1"
        for i, f in enumerate(slow):
            try:
                assert f.result(timeout=T) == -i
            except shoal.WorkerCrashedError as e:
                assert "head restarted" in str(e)
            key = f"s{i}"
            assert runs[key] <= 1  # max_retries=0: never more than once
            if runs[key] and where[key] != {head_node}:
                # It ran on a node that survived: adopted, so it finished there.
                assert f.result(timeout=1) == -i
        # The stored object outlived the head, and still works as an argument.
        assert shoal.get(total.remote(ref), timeout=T) == int(arr.sum())
        assert np.array_equal(shoal.get(ref, timeout=T), arr)
        # The actor on a surviving node kept its state.
        n, where_actor = shoal.get(tally.inc.remote(), timeout=T)
        assert n == 2 and where_actor == str(nodes[0].node_id)
        # New work runs after the restart too.
        assert shoal.get([counted.remote(10_000 + i) for i in range(50)], timeout=T) == \
            [(10_000 + i) * 3 for i in range(50)]
        alive = {n["node_id"] for n in head.nodes().values() if n["alive"]}
        assert {nodes[0].node_id, nodes[1].node_id} <= alive
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        err = head.stop()
        if os.environ.get("SH_DEBUG_HEAD"):
            print("HEADLOG", err)
    assert "this head restarted" in err


@shoal.remote(resources={"maker": 1})
def make_array(n, seed, wait_for=None):
    if wait_for:
        deadline = time.monotonic() + 60
        while not os.path.exists(wait_for) and time.monotonic() < deadline:
            time.sleep(0.02)
    return np.arange(n, dtype=np.int64) * seed


@pytest.mark.asan
def test_results_kept_on_nodes_outlive_a_restart(fresh, tmp_path):  # noqa: F811
    """Large results stay on the node that made them (ON_NODE); across a head
    restart the node reports them (HAVE) and the driver still holding them
    claims them (its PUT of the id, sent again, may come first: it waits for
    the node): one made before the kill, one finished while the head was
    down. Released afterwards, the node drops both."""
    go = str(tmp_path / "go")
    head = RestartableHead(workers=1, cpus=1)
    node = None
    try:
        node = Node(head, workers=2, cpus=2, resources={"maker": 2})
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        n = 300_000                                  # 2.4 MB: kept on the node
        before = make_array.remote(n, 3)
        shoal.wait([before], timeout=T)
        during = make_array.remote(n, 5, go)         # finishes while the head is down
        head.kill9()
        open(go, "w").close()
        time.sleep(0.5)
        head.start()
        assert np.array_equal(before.result(timeout=T), np.arange(n) * 3)
        assert np.array_equal(during.result(timeout=T), np.arange(n) * 5)
        assert shoal.get(total.remote(before), timeout=T) == int((np.arange(n) * 3).sum())
        # The node keeps what the driver holds, and drops it once released.
        from test_pull import node_store
        assert node_store(node)["objects"] == 2
        del before, during
        import gc
        gc.collect()
        wait_until(lambda: node_store(node)["objects"] == 0, T, 0.1,
                   "the node to drop the released results")
    finally:
        shut_down(head, node)


@pytest.mark.asan
def test_head_that_never_comes_back(fresh, tmp_path):  # noqa: F811
    log = str(tmp_path / "runs")
    open(log, "w").close()
    head = RestartableHead(workers=0, cpus=1)
    node = None

    @shoal.remote(max_retries=0)
    def nap():
        with open(log, "a") as f:
            f.write("nap\n")
        time.sleep(30)

    try:
        node = Node(head, "--head-timeout", "2", workers=1, cpus=1)
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=3)
        f = nap.remote()
        wait_until(lambda: open(log).read(), T, 0.02, "the task to start")
        head.kill9()
        t0 = time.monotonic()
        with pytest.raises(shoal.ConnectionLostError, match="did not come back within 3 s"):
            f.result()
        assert time.monotonic() - t0 < 3 + 5
        # The node drops the head's work after --head-timeout: its worker is
        # replaced, so the task does not run for its 30 s.
        time.sleep(0.5)
        out, err = node.stop()
        node = None
        assert "did not come back within 2 s" in err, err
    finally:
        shut_down(head, node)


@shoal.remote
class Counter1:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n, os.getpid()


@pytest.mark.asan
def test_actors_on_the_head_node_are_rebuilt(fresh):  # noqa: F811
    """An actor that lived on the head's own node dies with the head; the
    driver sends its creation again and the restarted head constructs it
    again (charging one restart) while it has restarts left: its calls run on
    the new instance. With none left, its calls fail naming the restart."""
    head = RestartableHead(workers=1, cpus=1)
    try:
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        again = Counter1.options(max_restarts=1).remote()
        once = Counter1.remote()
        n, pid = shoal.get(again.inc.remote(), timeout=T)
        assert n == 1
        assert shoal.get(once.inc.remote(), timeout=T)[0] == 1
        head.restart()
        n2, pid2 = shoal.get(again.inc.remote(), timeout=T)
        assert (n2, pid2 != pid) == (1, True)  # a new instance
        assert shoal.get(again.inc.remote(), timeout=T)[0] == 2
        with pytest.raises(shoal.ActorDiedError, match="head restarted.*max_restarts=0"):
            shoal.get(once.inc.remote(), timeout=T)
        # Its one restart is spent: a second head restart takes it.
        head.restart()
        with pytest.raises(shoal.ActorDiedError, match="no restarts left.*max_restarts=1"):
            shoal.get(again.inc.remote(), timeout=T)
    finally:
        shut_down(head)


@pytest.mark.asan
def test_attempts_charged_survive_a_second_restart(fresh, tmp_path):  # noqa: F811
    """Each head restart charges a resent task that no node kept one attempt,
    on top of what the heads before it charged (SOCKET_DIR/head.charges): a
    task with max_retries=1 running on the head's own node when the head is
    killed twice runs twice, not three times."""
    log = str(tmp_path / "runs")
    open(log, "w").close()

    @shoal.remote(max_retries=1)
    def long_nap():
        with open(log, "a") as f:
            f.write("run\n")
        time.sleep(60)

    head = RestartableHead(workers=1, cpus=1)
    try:
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        f = long_nap.remote()
        for runs in (1, 2):
            wait_until(lambda: open(log).read().count("run") == runs, T, 0.02,
                       f"run {runs} to start")
            head.restart()
        with pytest.raises(shoal.WorkerCrashedError, match="head restarted.*max_retries=1"):
            f.result(timeout=T)
        time.sleep(0.5)
        assert open(log).read().count("run") == 2
        assert shoal.get(shoal.remote(lambda: 7).remote(), timeout=T) == 7
    finally:
        shut_down(head)


@shoal.remote(num_cpus=2)
class Hog:
    def where(self):
        return os.environ["SHOAL_NODE_ID"]


@shoal.remote(num_cpus=2)
def needs_two():
    return os.environ["SHOAL_NODE_ID"]


@pytest.mark.asan
def test_adopted_actors_hold_their_resources(fresh):  # noqa: F811
    """An actor a node kept across a head restart holds its resources in the
    restarted head's registry: a task wanting them waits until it is gone."""
    head = RestartableHead(workers=1, cpus=1)
    node = None

    def cpu_free():
        return head.nodes()[node.node_id]["resources_free"]["CPU"]

    try:
        node = Node(head, workers=1, cpus=2)
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        hog = Hog.remote()
        assert shoal.get(hog.where.remote(), timeout=T) == str(node.node_id)
        assert cpu_free() == 0
        head.restart()
        assert shoal.get(hog.where.remote(), timeout=T) == str(node.node_id)
        wait_until(lambda: cpu_free() == 0, T, 0.1, "the actor's CPUs to be counted")
        f = needs_two.remote()
        time.sleep(1.5)
        assert not f.done()
        shoal.kill(hog)
        assert f.result(timeout=T) == str(node.node_id)
    finally:
        shut_down(head, node)


@pytest.mark.asan
def test_spilled_objects_outlive_a_restart(fresh):  # noqa: F811
    """Objects the head had spilled to disk are taken back with its spill
    directory: the driver's PUTs sent again find them, and they read back."""
    head = RestartableHead("--object-store-memory", "12M", workers=1, cpus=1)
    try:
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        arrs = [np.full(1_000_000, i, dtype=np.int64) for i in range(3)]  # 8 MB each
        refs = [shoal.put(x) for x in arrs]
        spill = glob.glob(os.path.join(head.dir, "shoal-spill-*", "[0-9a-f]" * 16))
        assert len(spill) >= 2, spill  # only one fits in memory
        head.restart()
        for ref, x in zip(refs, arrs):
            assert np.array_equal(shoal.get(ref, timeout=T), x)
        assert shoal.get(total.remote(refs[0]), timeout=T) == int(arrs[0].sum())
    finally:
        shut_down(head)


DRIVER_WITH_HOG = """
import sys, time, shoal
shoal.init(address=sys.argv[1], token=sys.argv[2], reconnect_timeout=60)

@shoal.remote(num_cpus=2)
class Hog:
    def ping(self):
        return 1

h = Hog.remote()
assert shoal.get(h.ping.remote(), timeout=60) == 1
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.asan
def test_adopted_actors_hold_their_resources_before_their_driver_is_back(fresh):  # noqa: F811
    """The node says what each actor it kept holds (NODE_HOLDS): the
    restarted head counts it at once, not only once the actor's driver sent
    its creation again (here the driver is stopped meanwhile)."""
    head = RestartableHead(workers=1, cpus=1)
    node = driver = None
    try:
        node = Node(head, workers=1, cpus=2)
        driver = subprocess.Popen([sys.executable, "-c", DRIVER_WITH_HOG, head.address, TOKEN],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  env=env_with_shoal(), text=True)
        assert driver.stdout.readline().strip() == "ready"
        assert head.nodes()[node.node_id]["resources_free"]["CPU"] == 0
        driver.send_signal(signal.SIGSTOP)
        head.restart()
        wait_until(lambda: head.nodes().get(node.node_id, {}).get("alive"), T, 0.1,
                   "the node to come back")
        time.sleep(0.3)
        assert head.nodes()[node.node_id]["resources_free"]["CPU"] == 0
    finally:
        if driver:
            driver.kill()
            driver.wait(timeout=10)
        shut_down(head, node)


@shoal.remote(resources={"maker": 1}, max_retries=0)
def held(i, go, log):
    with open(log, "a") as f:
        f.write(f"h{i} {os.environ['SHOAL_NODE_ID']}\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    return i


@pytest.mark.asan
def test_releases_and_kills_while_the_head_is_down(fresh, tmp_path):  # noqa: F811
    """What the driver drops while the head is down reaches the restarted
    head: a stored put released meanwhile is not registered again and its
    segment goes, a large result kept on a node and released meanwhile is
    dropped there, an actor killed meanwhile is dead (its calls raise
    ActorDiedError), a queued task cancelled meanwhile never runs; a put
    still held, a running task and another actor are unaffected."""
    import gc
    import json
    import threading
    go, log = str(tmp_path / "go"), str(tmp_path / "runs")
    open(log, "w").close()
    head = RestartableHead(workers=1, cpus=1)
    node = None
    try:
        node = Node(head, workers=2, cpus=2, resources={"special": 2, "maker": 1})
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        on_node = make_array.remote(300_000, 3)          # 2.4 MB: kept on the node
        shoal.wait([on_node], timeout=T)
        from test_pull import node_store
        assert node_store(node)["objects"] == 1
        kept = np.arange(200_000, dtype=np.int64)        # 1.6 MB: stored objects
        kept_ref = shoal.put(kept)
        dropped_ref = shoal.put(np.arange(1_000_000, dtype=np.int64))
        dropped_name = f"{dropped_ref._id:016x}"
        segments = glob.glob(f"{head.store_base}/*/{dropped_name}")
        assert len(segments) == 1, os.listdir(head.store_base)
        doomed, other = Tally.remote(), Tally.remote()
        assert shoal.get([doomed.inc.remote(), other.inc.remote()], timeout=T)[0][0] == 1
        # The queued task may be charged an attempt by the restarted head (no
        # node reports it): it has retries, so the cancel is what ends it.
        running, queued = held.remote(1, go, log), held.options(max_retries=2).remote(2, go, log)
        wait_until(lambda: open(log).read(), T, 0.02, "the first task to start")
        head.kill9()
        shoal.kill(doomed)  # before or after the driver notices: either way
        time.sleep(0.3)  # the driver notices: it is reconnecting
        del dropped_ref, on_node
        gc.collect()
        cancelled = []  # cancel() waits for its answer: from the restarted head
        th = threading.Thread(target=lambda: cancelled.append(shoal.cancel(queued)))
        th.start()
        time.sleep(0.2)
        head.start()
        th.join(T)
        assert cancelled == [True]
        open(go, "w").close()
        assert running.result(timeout=T) == 1
        with pytest.raises(shoal.TaskCancelledError):
            queued.result(timeout=T)
        assert "h2" not in open(log).read()
        # Other work is unaffected (an actor call that comes before the
        # actor's node is back waits for it).
        assert np.array_equal(shoal.get(kept_ref, timeout=T), kept)
        assert shoal.get(total.remote(kept_ref), timeout=T) == int(kept.sum())
        assert shoal.get(other.inc.remote(), timeout=T)[0] == 2
        # The killed actor is dead, the released object gone (well within
        # the grace period of --head-timeout, 60 s).
        with pytest.raises(shoal.ActorDiedError):
            shoal.get(doomed.inc.remote(), timeout=T)
        wait_until(lambda: not os.path.exists(segments[0]), 20, 0.1,
                   "the released segment to be removed")
        store = json.loads(head.cli("status", "--json").stdout)["store"]
        assert store["objects"] == 1, store
        wait_until(lambda: node_store(node)["objects"] == 0, 20, 0.1,
                   "the node to drop the released result")
    finally:
        shut_down(head, node)


@shoal.remote(max_retries=3)
def gated(i, go):
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    return i * 7


@pytest.mark.asan
def test_explicit_task_ids_are_sent_again(fresh, tmp_path):  # noqa: F811
    """Tasks with explicit ids far ahead of the driver's own sequence (their
    copies are kept apart from the ordinary ones: see io.c) and ordinary
    tasks before and after them, all unfinished when the head is killed,
    all finish after it restarts, each with its own result."""
    go = str(tmp_path / "go")
    head = RestartableHead(workers=1, cpus=1)
    node = None
    try:
        node = Node(head, workers=2, cpus=2)
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        client, spec = gated._bind()
        ahead = client.new_id() + 1_000_000
        futs = [gated.remote(i, go) for i in range(5)]
        futs += [client.submit(spec, (100 + i, go), None, ahead + i) for i in range(5)]
        futs += [gated.remote(200 + i, go) for i in range(5)]
        assert [f._id for f in futs[5:10]] == [ahead + i for i in range(5)]
        head.kill9()
        time.sleep(0.3)
        head.start()
        open(go, "w").close()
        want = [i * 7 for i in [*range(5), *range(100, 105), *range(200, 205)]]
        assert [f.result(timeout=T) for f in futs] == want
    finally:
        shut_down(head, node)


@shoal.remote
def echo(i):
    return i


def test_a_long_task_outlives_many_short_ones_and_a_restart(fresh, tmp_path):  # noqa: F811
    """One task runs while 80k short ones come and go: the driver's copy of
    its SUBMIT moves out of the record log (which would otherwise keep an
    index entry for every later task behind it); after the head is killed
    and restarted, it is sent again and its result arrives."""
    go = str(tmp_path / "go")
    head = RestartableHead(workers=1, cpus=1)
    node = None
    try:
        node = Node(head, workers=2, cpus=2)
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        slow = gated.remote(3, go)
        for k in range(8):
            assert shoal.get([echo.remote(i) for i in range(10_000)], timeout=T)[-1] == 9_999
        head.kill9()
        time.sleep(0.3)
        head.start()
        open(go, "w").close()
        assert slow.result(timeout=T) == 21
        assert shoal.get([echo.remote(i) for i in range(100)], timeout=T) == list(range(100))
    finally:
        shut_down(head, node)


@pytest.mark.asan
def test_actor_calls_while_the_head_is_down_or_its_node_not_back(fresh):  # noqa: F811
    """An actor on a node outlives head restarts: a call made while the head
    is down, and one made after it restarted but before the actor's node is
    back, both run on it, in order, and the actor keeps its state."""
    head = RestartableHead(workers=1, cpus=1)
    node = None
    try:
        node = Node(head, workers=2, cpus=2, resources={"special": 2})
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        a = Tally.remote()
        first = shoal.get(a.inc.remote(), timeout=T)
        assert first[0] == 1
        head.kill9()
        time.sleep(0.3)
        while_down = a.inc.remote()
        head.start()
        before_node = a.inc.remote()  # the node rejoins on its own schedule
        assert shoal.get([while_down, before_node], timeout=T) == [(2, first[1]), (3, first[1])]
        for i in range(2):  # and again, quickly
            head.restart()
            assert shoal.get(a.inc.remote(), timeout=T) == (4 + i, first[1])
    finally:
        shut_down(head, node)


@pytest.mark.asan
def test_a_release_the_dying_head_never_read_is_sent_again(fresh):  # noqa: F811
    """A RELEASE the driver wrote just before the head died, which the head
    never read, reaches the restarted head: the released object's segment,
    taken over with the store, goes within seconds, not at the end of the
    grace period (60 s)."""
    import gc
    head = RestartableHead(workers=1, cpus=1)
    try:
        shoal.init(address=head.address, token=TOKEN, reconnect_timeout=60)
        kept = np.arange(200_000, dtype=np.int64)
        kept_ref = shoal.put(kept)
        dropped_ref = shoal.put(np.arange(1_000_000, dtype=np.int64))
        segments = glob.glob(f"{head.store_base}/*/{dropped_ref._id:016x}")
        assert len(segments) == 1, os.listdir(head.store_base)
        head.proc.send_signal(signal.SIGSTOP)  # it reads nothing more
        del dropped_ref
        gc.collect()
        time.sleep(0.5)  # the RELEASE is written: it waits in the head's socket
        head.kill9()
        time.sleep(0.3)
        head.start()
        assert np.array_equal(shoal.get(kept_ref, timeout=T), kept)
        wait_until(lambda: not os.path.exists(segments[0]), 20, 0.1,
                   "the released segment to be removed")
        assert np.array_equal(shoal.get(kept_ref, timeout=T), kept)
    finally:
        shut_down(head)
