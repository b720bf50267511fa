"""Failures with real processes: worker crashes and retries, timeouts,
cancellation, infeasible resource requests."""

import os
import signal
import time

import pytest

import shoal
from _helpers import NUM_WORKERS, cluster, pool_pids, wait_pool_full, wait_until  # noqa: F401

T = 30


def _count(path):
    try:
        with open(path) as f:
            return len(f.read())
    except FileNotFoundError:
        return 0


def _mark(path):
    with open(path, "a") as f:
        f.write("x")


@shoal.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@shoal.remote
def crash(how, path, succeed_after=None):
    _mark(path)
    if succeed_after is not None and _count(path) > succeed_after:
        return "survived"
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    elif how == "segfault":
        import ctypes
        ctypes.string_at(0)
    time.sleep(10)


@pytest.mark.asan
@pytest.mark.parametrize("how, check", [
    ("sigkill", lambda e: e.signal == signal.SIGKILL and ("SIGKILL" in str(e) or "9" in str(e))),
    ("exit", lambda e: e.exit_code == 3 and "3" in str(e)),
    ("segfault", lambda e: e.signal == signal.SIGSEGV and ("SIGSEGV" in str(e) or "11" in str(e))),
])
def test_worker_crash_retries_then_fails(cluster, tmp_path, how, check):  # noqa: F811
    wait_pool_full()
    path = str(tmp_path / "attempts")
    bystanders = [sleep_then.remote(0.05, i) for i in range(20)]
    f = crash.options(max_retries=2).remote(how, path)
    with pytest.raises(shoal.WorkerCrashedError) as ei:
        f.result(timeout=T)
    assert check(ei.value), str(ei.value)
    assert _count(path) == 3                       # 1 run + 2 retries
    assert shoal.get(bystanders, timeout=T) == list(range(20))   # others unaffected
    wait_pool_full()                               # the pool is back to full size


def test_crash_then_success_on_retry(cluster, tmp_path):  # noqa: F811
    path = str(tmp_path / "attempts")
    assert crash.remote("sigkill", path, succeed_after=1).result(timeout=T) == "survived"
    assert _count(path) == 2


def test_no_retries(cluster, tmp_path):  # noqa: F811
    path = str(tmp_path / "attempts")
    with pytest.raises(shoal.WorkerCrashedError):
        crash.options(max_retries=0).remote("exit", path).result(timeout=T)
    assert _count(path) == 1


def test_default_max_retries_is_three(cluster, tmp_path):  # noqa: F811
    path = str(tmp_path / "attempts")
    with pytest.raises(shoal.WorkerCrashedError):
        crash.remote("exit", path).result(timeout=T)
    assert _count(path) == 4


def test_repeated_crashes_are_not_a_startup_failure(cluster, tmp_path):  # noqa: F811
    """A task that kills each fresh worker it runs on is that task's problem:
    it uses up its own retries, and queued tasks of others still run."""
    wait_pool_full()
    path = str(tmp_path / "attempts")
    f = crash.options(max_retries=5).remote("exit", path)
    others = [sleep_then.remote(0.2, i) for i in range(6)]
    with pytest.raises(shoal.WorkerCrashedError) as ei:
        f.result(timeout=T)
    assert _count(path) == 6, str(ei.value)
    assert "cannot start" not in str(ei.value)
    assert shoal.get(others, timeout=T) == list(range(6))
    wait_pool_full()


@pytest.mark.asan
def test_timeout_kills_and_replaces_worker(cluster):  # noqa: F811
    before = pool_pids(wait_pool_full())
    t0 = time.monotonic()
    f = sleep_then.options(timeout=0.5).remote(20, None)
    with pytest.raises(shoal.TaskTimeoutError) as ei:
        f.result(timeout=T)
    assert time.monotonic() - t0 < 10
    assert isinstance(ei.value, TimeoutError)
    after = pool_pids(wait_pool_full())
    assert len(after) == NUM_WORKERS and after != before   # a fresh worker replaced it
    assert sleep_then.options(timeout=5).remote(0.01, "fits").result(timeout=T) == "fits"


def _occupy():
    """Fills every pool worker with a long task; returns their futures once
    they all run (the status shows every pool worker busy)."""
    wait_pool_full()
    blockers = [sleep_then.remote(3, "blocker") for _ in range(NUM_WORKERS)]
    wait_until(lambda: all(w["state"] != "idle" for w in shoal.status()["workers"]["list"]),
               10, 0.02, "every worker busy")
    return blockers


def test_cancel_queued(cluster):  # noqa: F811
    blockers = _occupy()
    queued = sleep_then.remote(0, "never")
    assert queued.cancel() is True
    assert queued.cancelled()
    with pytest.raises(shoal.TaskCancelledError):
        queued.result(timeout=T)
    queued2 = sleep_then.remote(0, "never")
    assert shoal.cancel(queued2) is True
    with pytest.raises(shoal.TaskCancelledError) as ei:
        shoal.get(queued2, timeout=T)
    import concurrent.futures
    assert isinstance(ei.value, concurrent.futures.CancelledError)
    assert shoal.get(blockers, timeout=T) == ["blocker"] * NUM_WORKERS   # running ones were left alone
    assert shoal.cancel(blockers[0]) is False     # done: nothing to cancel
    assert blockers[0].cancel() is False


def test_cancel_running_interrupts(cluster):  # noqa: F811
    wait_pool_full()
    f = sleep_then.remote(20, None)
    wait_until(lambda: any(w["state"] == "busy" for w in shoal.status()["workers"]["list"]),
               10, 0.02, "the task to start")
    t0 = time.monotonic()
    assert shoal.cancel(f) is True
    with pytest.raises(shoal.TaskCancelledError):
        f.result(timeout=T)
    assert time.monotonic() - t0 < 10
    wait_pool_full()


def test_cancel_force_kills_worker(cluster):  # noqa: F811
    before = pool_pids(wait_pool_full())

    @shoal.remote
    def stubborn():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        time.sleep(30)
    f = stubborn.remote()
    wait_until(lambda: any(w["state"] == "busy" for w in shoal.status()["workers"]["list"]),
               10, 0.02, "the task to start")
    t0 = time.monotonic()
    assert shoal.cancel(f, force=True) is True
    with pytest.raises(shoal.TaskCancelledError):
        f.result(timeout=T)
    assert time.monotonic() - t0 < 10
    # exactly the one worker is replaced (the kill is asynchronous: wait for it)
    wait_until(lambda: len(set(before) - set(pool_pids(wait_pool_full()))) == 1, 15, 0.05,
               "the killed worker to be replaced")


def test_future_cancel_does_not_touch_running_task(cluster):  # noqa: F811
    """concurrent.futures semantics: cancel() of a running future returns
    False and the task runs to completion."""
    wait_pool_full()
    f = sleep_then.remote(1.0, "finished")
    wait_until(lambda: any(w["state"] == "busy" for w in shoal.status()["workers"]["list"]),
               10, 0.02, "the task to start")
    assert f.cancel() is False
    assert f.result(timeout=T) == "finished"


@pytest.mark.asan
def test_infeasible_cpus(cluster):  # noqa: F811
    t0 = time.monotonic()
    f = sleep_then.options(num_cpus=1000).remote(0, None)
    with pytest.raises(shoal.InfeasibleResourcesError) as ei:
        f.result(timeout=5)
    assert time.monotonic() - t0 < 3                   # fails at once
    msg = str(ei.value)
    assert "CPU" in msg and "1000" in msg
    node_cpus = cluster.client.node_info["CPU"]
    assert f"{node_cpus:g}" in msg                       # names what exists


def test_infeasible_gpu(cluster):  # noqa: F811
    if cluster.client.node_info.get("GPU"):
        pytest.skip("this machine has GPUs")
    with pytest.raises(shoal.InfeasibleResourcesError) as ei:
        sleep_then.options(num_gpus=1).remote(0, None).result(timeout=5)
    assert "GPU: 1" in str(ei.value) and "GPU: 0" in str(ei.value)   # asked, and what exists


def test_infeasible_custom_resource(cluster):  # noqa: F811
    with pytest.raises(shoal.InfeasibleResourcesError) as ei:
        sleep_then.options(resources={"foo": 1}).remote(0, None).result(timeout=5)
    assert "foo: 1" in str(ei.value)
    assert f"CPU: {cluster.client.node_info['CPU']:g}" in str(ei.value)      # what exists


def test_infeasible_memory(cluster):  # noqa: F811
    with pytest.raises(shoal.InfeasibleResourcesError) as ei:
        sleep_then.options(memory=2**60).remote(0, None).result(timeout=5)
    assert "memory" in str(ei.value)


def test_infeasible_fails_dependents_and_actors(cluster):  # noqa: F811
    @shoal.remote(num_gpus=64)
    class Greedy:
        def f(self):
            return 1
    g = Greedy.remote()
    with pytest.raises((shoal.InfeasibleResourcesError, shoal.ActorDiedError)):
        g.f.remote().result(timeout=5)
    with pytest.raises(shoal.InfeasibleResourcesError):
        g._shoal_created.result(timeout=5)
