"""Lanes: a synchronous caller's lone tasks go straight to a pool worker the
agent leased to the driver (src/node/lane.c, python/shoal/_core/lane.c).
Everything a task promises holds on a lane too: retries and crash errors,
cancels, dependencies, large results, giving the worker back."""

import os
import signal
import subprocess
import sys
import time

import pytest

import shoal
from _helpers import cluster, env_with_shoal, pool_pids, wait_pool_full, wait_until  # noqa: F401

T = 30


@shoal.remote
def ident(x):
    return x


@shoal.remote
def pid_of(_):
    return os.getpid()


@shoal.remote
def nap(s, x):
    time.sleep(s)
    return x


def _workers():
    return shoal.status()["workers"]


def _lease(n=50):
    """Lone calls until the agent leased a worker to this driver (the first
    call asks for a lane; the next ones use it). Returns that worker's pid."""
    for i in range(n):
        assert ident.remote(i).result(timeout=T) == i
        leased = [w for w in _workers()["list"] if w.get("leased_to")]
        if leased:
            return leased[0]["pid"]
        time.sleep(0.001)
    pytest.fail("no worker was leased to this driver after %d lone calls" % n)


@pytest.mark.asan
def test_lone_calls_go_down_a_lane(cluster):  # noqa: F811
    wait_pool_full()
    pid = _lease()
    before = _workers()["lane_tasks"]
    pids = {pid_of.remote(i).result(timeout=T) for i in range(200)}
    assert pids == {pid}                       # the leased worker ran them all
    # the lease ends once the driver is quiet; its tasks are then counted
    wait_until(lambda: _workers()["leased"] == 0, 10, 0.02, "the idle lease to end")
    assert _workers()["lane_tasks"] >= before + 200


@pytest.mark.asan
@pytest.mark.parametrize("retries", [0, 1])
def test_a_worker_killed_on_a_lane_is_a_crash_like_any_other(cluster, tmp_path, retries):  # noqa: F811
    wait_pool_full()
    marks = tmp_path / "attempts"

    @shoal.remote
    def die_once(path):
        with open(path, "a") as f:
            f.write("x")
        if os.path.getsize(path) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return "second"

    pid = _lease()
    f = die_once.options(max_retries=retries).remote(str(marks))
    if retries:
        assert f.result(timeout=T) == "second"
        assert marks.read_text() == "xx"
    else:
        with pytest.raises(shoal.WorkerCrashedError) as e:
            f.result(timeout=T)
        assert e.value.signal == signal.SIGKILL
        assert marks.read_text() == "x"
    wait_until(lambda: pid not in pool_pids(wait_pool_full()), 15, 0.05, "the worker replaced")
    assert ident.remote(7).result(timeout=T) == 7


@pytest.mark.asan
def test_a_pending_lane_task_as_a_dependency(cluster):  # noqa: F811
    @shoal.remote
    def slow(x):
        time.sleep(0.3)
        return x

    @shoal.remote
    def boom():
        time.sleep(0.3)
        raise KeyError("lane")

    @shoal.remote
    def add(a, b):
        return a + b

    wait_pool_full()
    _lease()
    first = slow.remote(20)                    # alone: on the lane
    total = add.remote(first, 22)              # waits in the driver for the lane's outcome
    assert total.result(timeout=T) == 42
    assert first.result() == 20
    _lease()
    bad = boom.remote()
    after = add.remote(bad, 1)
    with pytest.raises(KeyError):
        after.result(timeout=T)


@pytest.mark.asan
def test_force_cancel_of_a_lane_task(cluster):  # noqa: F811
    @shoal.remote
    def stubborn():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        time.sleep(30)

    wait_pool_full()
    pid = _lease()
    f = stubborn.remote()
    time.sleep(0.3)
    assert shoal.cancel(f, force=True) is True
    with pytest.raises(shoal.TaskCancelledError):
        f.result(timeout=T)
    wait_until(lambda: pid not in pool_pids(wait_pool_full()), 15, 0.05, "the worker replaced")


@pytest.mark.asan
def test_the_lease_comes_back_when_other_work_waits(cluster):  # noqa: F811
    wait_pool_full()
    _lease()
    # with one worker leased, a burst still uses the whole pool: the agent
    # asks for the leased worker back
    pids = set(shoal.get([pid_of.remote(i) for i in range(2000)], timeout=T))
    assert len(pids) == len(pool_pids()), pids


def test_a_large_result_on_a_lane_is_stored(cluster):  # noqa: F811
    np = pytest.importorskip("numpy")

    @shoal.remote
    def big(n):
        return np.arange(n, dtype=np.float64)

    wait_pool_full()
    _lease()
    a = big.remote(1 << 20).result(timeout=T)   # 8 MiB: written to the store
    assert a.shape == (1 << 20,) and a[-1] == (1 << 20) - 1


def test_a_driver_that_exits_mid_lane_task_gives_the_worker_back(cluster, tmp_path):  # noqa: F811
    wait_pool_full()
    sock = cluster.daemon.socket_dir
    code = (
        "import os, time, shoal\n"
        f"shoal.init(address={os.path.join(sock, 'agent.sock')!r})\n"
        "f = shoal.remote(lambda i: i)\n"
        "for i in range(50): f.remote(i).result(timeout=30)\n"
        "s = shoal.remote(lambda: time.sleep(60))\n"
        "s.remote()\n"
        "print('running', flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], env=env_with_shoal(),
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "running"
        time.sleep(0.3)
        p.kill()
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    # the lane task is interrupted and the lease ends: the pool is whole and idle
    wait_until(lambda: _workers()["leased"] == 0 and _workers()["busy"] == 0, 15, 0.05,
               "the departed driver's lease to end")
    assert ident.remote(3).result(timeout=T) == 3


@pytest.mark.asan
def test_a_lane_result_nobody_waits_on_still_arrives(cluster):  # noqa: F811
    import concurrent.futures as cf

    wait_pool_full()
    _lease()
    for s in (0, 0.05):                         # picked up by the I/O thread, early or late
        f = nap.remote(s, "x")
        seen = []
        f.add_done_callback(lambda fut: seen.append(fut.result()))
        done, _ = cf.wait([f], timeout=T)
        assert done == {f}
        wait_until(lambda: seen == ["x"], 5, 0.01, "the done callback")


@pytest.mark.asan
def test_cancelling_another_task_leaves_the_lane_task_alone(cluster):  # noqa: F811
    wait_pool_full()
    _lease()
    on_lane = nap.remote(1.0, "kept")           # the lane is idle: it goes there
    others = [ident.remote(i) for i in range(3)]   # the lane is busy: through the agent
    assert shoal.get(others, timeout=T) == [0, 1, 2]
    assert shoal.cancel(others[0]) is False     # done already; the lane's worker is not touched
    assert on_lane.result(timeout=T) == "kept"


def test_maps_with_chunks_near_the_inline_threshold_are_exact(cluster):  # noqa: F811
    # The first chunk of each map goes down the lane while the rest queue in
    # the driver's output buffer; the driver once computed a lane frame's
    # place in that buffer wrongly after the buffer reclaimed its consumed
    # front, and one item in ~40 maps came back from another chunk.
    from shoal import _chunks

    @shoal.remote
    def run(chunk):
        return [2 * x for x in chunk]

    wait_pool_full()
    items = list(range(400_000))
    for rep in range(6):
        _lease()
        cs = 13_000 + 500 * rep                  # ~52-64 KB of packed ints per chunk
        fs = [run.remote(_chunks.chunk_of(items, i, i + cs)) for i in range(0, len(items), cs)]
        got = [x for f in fs for x in f.result(timeout=T)]
        assert got == [2 * x for x in items], f"map {rep} came back wrong"


@pytest.mark.asan
def test_a_function_too_big_for_the_lane_goes_to_the_agent(cluster):  # noqa: F811
    blob = os.urandom(300_000)                  # the pickled function is over 128 KiB

    @shoal.remote
    def size_plus(i):
        return len(blob) + i

    wait_pool_full()
    _lease()
    assert [size_plus.remote(i).result(timeout=T) for i in range(3)] == [300_000, 300_001, 300_002]
    assert ident.remote(5).result(timeout=T) == 5   # the lane still works
