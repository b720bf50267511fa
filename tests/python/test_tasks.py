"""Remote functions: submit, results, dependencies, get/wait/put, Future
protocol (concurrent.futures and asyncio), errors, retries, options, output."""

import asyncio
import concurrent.futures
import os
import time
import traceback

import pytest

import shoal
from _helpers import cluster, fresh  # noqa: F401

T = 30  # seconds: the bound of every wait in this file


@shoal.remote
def square(x):
    return x * x


@shoal.remote
def add(a, b=0):
    return a + b


@shoal.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@shoal.remote
def divide(a, b):
    return a / b


class Odd(Exception):
    def __init__(self, code, text):
        super().__init__(code, text)
        self.code = code


@pytest.mark.asan
def test_remote_returns_future_and_result(cluster):  # noqa: F811
    f = square.remote(7)
    assert isinstance(f, shoal.Future)
    assert isinstance(f, concurrent.futures.Future)
    assert f.result(timeout=T) == 49
    assert f.done() and not f.cancelled()
    assert f.exception(timeout=T) is None


@pytest.mark.asan
def test_many_tasks_and_kwargs(cluster):  # noqa: F811
    futs = [add.remote(i, b=i) for i in range(2000)]
    assert shoal.get(futs, timeout=T) == [2 * i for i in range(2000)]
    assert shoal.get(tuple(futs[:3]), timeout=T) == [0, 2, 4]


def test_lambda_closure_and_nested_values(cluster):  # noqa: F811
    k = {"base": [1, 2, 3]}
    f = shoal.remote(lambda x: sum(k["base"]) + x)
    assert f.remote(4).result(timeout=T) == 10
    big = bytes(range(256)) * 1000
    assert shoal.remote(len).remote(big).result(timeout=T) == len(big)


@pytest.mark.asan
def test_futures_as_arguments(cluster):  # noqa: F811
    a = square.remote(3)
    b = sleep_then.remote(0.2, 16)
    total = add.remote(a, b=b)           # positional and keyword dependencies
    assert total.result(timeout=T) == 25
    chain = square.remote(2)
    for _ in range(5):
        chain = add.remote(chain, 1)
    assert chain.result(timeout=T) == 9
    done = square.remote(5)
    done.result(timeout=T)
    assert add.remote(done, done).result(timeout=T) == 50


def test_failed_dependency_fails_dependent(cluster):  # noqa: F811
    bad = divide.remote(1, 0)
    dependent = add.remote(bad, 1)
    with pytest.raises(ZeroDivisionError):
        dependent.result(timeout=T)


def test_put(cluster):  # noqa: F811
    data = list(range(1000))
    ref = shoal.put(data)
    assert isinstance(ref, shoal.Future) and ref.done()
    assert ref.result() == data
    assert shoal.remote(sum).remote(ref).result(timeout=T) == sum(data)
    with pytest.raises(TypeError):
        shoal.put(ref)


def test_get_errors_and_timeout(cluster):  # noqa: F811
    with pytest.raises(TypeError, match="element 1"):
        shoal.get([square.remote(1), 5])
    with pytest.raises(TypeError):
        shoal.get(5)
    slow = sleep_then.remote(5, None)
    t0 = time.monotonic()
    with pytest.raises(shoal.GetTimeoutError) as ei:
        shoal.get([square.remote(1), slow], timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert isinstance(ei.value, TimeoutError)
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.result(timeout=0.05)
    shoal.cancel(slow, force=True)


def test_wait(cluster):  # noqa: F811
    fast = [square.remote(i) for i in range(3)]
    slow = sleep_then.remote(5, None)
    futs = [slow] + fast
    done, pending = shoal.wait(futs, num_returns=3, timeout=T)
    assert done == fast and pending == [slow]      # input order kept
    done, pending = shoal.wait(futs, num_returns=1, timeout=T)
    assert len(done) == 1 and len(pending) == 3
    t0 = time.monotonic()
    done, pending = shoal.wait(futs, num_returns=4, timeout=0.2)
    assert time.monotonic() - t0 < 3
    assert done == fast and pending == [slow]
    done, pending = shoal.wait(futs, num_returns=4, timeout=0)
    assert pending == [slow]
    with pytest.raises(ValueError):
        shoal.wait(futs, num_returns=5)
    with pytest.raises(TypeError):
        shoal.wait([slow, "x"])
    assert shoal.wait([]) == ([], [])
    shoal.cancel(slow, force=True)


def test_concurrent_futures_protocol(cluster):  # noqa: F811
    futs = [sleep_then.remote(0.05 * (i % 3), i) for i in range(12)]
    done, not_done = concurrent.futures.wait(futs, timeout=T)
    assert not not_done and len(done) == 12
    futs = [sleep_then.remote(0.05 * (i % 3), i) for i in range(12)]
    seen = sorted(f.result() for f in concurrent.futures.as_completed(futs, timeout=T))
    assert seen == list(range(12))
    futs = [sleep_then.remote(0.1, i) for i in range(4)] + [divide.remote(1, 0)]
    done, _ = concurrent.futures.wait(futs, timeout=T, return_when=concurrent.futures.FIRST_EXCEPTION)
    assert futs[-1] in done
    results = []
    f = sleep_then.remote(0.1, "cb")
    f.add_done_callback(lambda fut: results.append(fut.result()))
    f.result(timeout=T)
    concurrent.futures.wait([f], timeout=T)
    deadline = time.monotonic() + T
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)
    assert results == ["cb"]
    late = []
    f.add_done_callback(late.append)          # already done: runs at once
    assert late == [f]


def test_asyncio_await(cluster):  # noqa: F811
    async def main():
        a = await square.remote(6)
        b, c = await asyncio.gather(sleep_then.remote(0.1, 1), square.remote(3))
        r = await asyncio.wait_for(asyncio.wrap_future(sleep_then.remote(0.05, "x")), T)
        with pytest.raises(ZeroDivisionError):
            await divide.remote(1, 0)
        return a, b, c, r
    assert asyncio.run(asyncio.wait_for(main(), T)) == (36, 1, 9, "x")


@pytest.mark.asan
def test_exception_type_and_remote_traceback(cluster):  # noqa: F811
    f = divide.remote(1, 0)
    with pytest.raises(ZeroDivisionError) as ei:
        f.result(timeout=T)
    text = "".join(traceback.format_exception(type(ei.value), ei.value, ei.value.__traceback__))
    assert "divide" in text and "a / b" in text        # the worker's traceback
    assert isinstance(f.exception(), ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        shoal.get([square.remote(1), f])

    @shoal.remote
    def raise_custom():
        raise Odd(7, "seven")
    with pytest.raises(Odd) as ei:
        raise_custom.remote().result(timeout=T)
    assert ei.value.code == 7


def test_unpicklable_exception_becomes_remote_error(cluster):  # noqa: F811
    @shoal.remote
    def raise_unpicklable():
        import threading

        class Bad(Exception):
            def __init__(self):
                super().__init__("bad")
                self.lock = threading.Lock()
        raise Bad()
    with pytest.raises(shoal.RemoteError) as ei:
        raise_unpicklable.remote().result(timeout=T)
    assert "Bad" in str(ei.value) and "bad" in str(ei.value)


def test_exception_not_retried_by_default(cluster, tmp_path):  # noqa: F811
    marker = tmp_path / "attempts"

    @shoal.remote
    def flaky(path):
        with open(path, "a") as fh:
            fh.write("x")
        raise ValueError("always")
    with pytest.raises(ValueError):
        flaky.remote(str(marker)).result(timeout=T)
    assert marker.read_text() == "x"


def test_retry_exceptions(cluster, tmp_path):  # noqa: F811
    marker = tmp_path / "attempts"

    @shoal.remote(retry_exceptions=True, max_retries=3)
    def flaky(path):
        with open(path, "a") as fh:
            fh.write("x")
        if len(open(path).read()) < 3:
            raise ValueError("not yet")
        return "ok"
    assert flaky.remote(str(marker)).result(timeout=T) == "ok"
    assert marker.read_text() == "xxx"

    marker2 = tmp_path / "attempts2"
    with pytest.raises(ValueError):
        flaky.options(max_retries=1).remote(str(marker2)).result(timeout=T)
    assert marker2.read_text() == "xx"


def test_options_and_validation(cluster):  # noqa: F811
    assert square.options(num_cpus=0.5, name="sq").remote(4).result(timeout=T) == 16
    with pytest.raises(TypeError, match="num_cpu"):
        shoal.remote(num_cpu=1)
    with pytest.raises(TypeError, match="num_cpus"):
        square.options(num_cpus="two")
    with pytest.raises(ValueError, match="num_cpus"):
        square.options(num_cpus=-1)
    with pytest.raises(ValueError, match="timeout"):
        square.options(timeout=0)
    with pytest.raises(TypeError, match="max_retries"):
        square.options(max_retries=1.5)
    with pytest.raises(TypeError, match="retry_exceptions"):
        square.options(retry_exceptions="yes")
    with pytest.raises(ValueError, match="num_cpus"):
        square.options(resources={"CPU": 1})
    with pytest.raises(TypeError, match="resources"):
        square.options(resources=["foo"])
    with pytest.raises(TypeError, match="square.remote"):
        square(3)
    with pytest.raises(TypeError):
        shoal.remote(1, 2)


def test_function_registered_once_per_client(cluster):  # noqa: F811
    @shoal.remote
    def ident(x):
        return x
    ident.remote(1).result(timeout=T)
    reg = ident._registration
    first = reg.fn_id
    ident.remote(2).result(timeout=T)
    ident.options(num_cpus=0.5).remote(3).result(timeout=T)
    assert reg.fn_id == first and reg.client is cluster.client


def test_nested_remote_calls(cluster):  # noqa: F811
    @shoal.remote(num_cpus=0)
    def outer(n):
        return sum(shoal.get([square.remote(i) for i in range(n)], timeout=20))
    assert outer.remote(10).result(timeout=T) == sum(i * i for i in range(10))


def test_print_in_task_reaches_driver(cluster, capfd):  # noqa: F811
    @shoal.remote
    def chatty(tag):
        import sys
        print(f"hello from {tag}")
        print(f"oops from {tag}", file=sys.stderr)
        return os.getpid()
    pid = chatty.remote("task-xyz").result(timeout=T)
    out = err = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        o, e = capfd.readouterr()
        out, err = out + o, err + e
        if "hello from task-xyz" in out and "oops from task-xyz" in err:
            break
        time.sleep(0.05)
    assert "hello from task-xyz" in out
    assert "oops from task-xyz" in err
    line = next(x for x in out.splitlines() if "hello from task-xyz" in x)
    assert str(pid) in line or "worker" in line      # prefixed with who printed it


def test_submit_from_many_threads(cluster):  # noqa: F811
    @shoal.remote
    def ident(x):
        return x

    def work(k):
        return shoal.get([ident.remote((k, i)) for i in range(500)], timeout=T)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8), timeout=T))
    assert results == [[(k, i) for i in range(500)] for k in range(8)]


def test_large_arguments_and_results(cluster):  # noqa: F811
    blob = os.urandom(8 << 20)
    assert shoal.remote(len).remote(blob).result(timeout=T) == len(blob)
    big = shoal.remote(lambda n: b"z" * n).remote(16 << 20).result(timeout=T)
    assert len(big) == 16 << 20 and big[:1] == b"z"


def test_runtime_context_in_tasks_actors_and_the_driver(cluster):  # noqa: F811
    driver = shoal.runtime_context()
    assert driver.worker_pid is None and driver.task_id is None
    assert driver.node_id == shoal.status()["node_id"]

    @shoal.remote
    def where():
        return shoal.runtime_context()

    fut = where.remote()
    ctx = fut.result(timeout=T)
    assert ctx.task_id == fut.id and ctx.node_id == driver.node_id
    assert ctx.worker_pid in {w["pid"] for w in shoal.status()["workers"]["list"]}

    @shoal.remote
    class Here:
        def ctx(self):
            return shoal.runtime_context()._asdict()

    h = Here.remote()
    call = h.ctx.remote()
    d = call.result(timeout=T)
    assert d["task_id"] == call.id and d["worker_pid"] != os.getpid()


@shoal.remote
def quick_unless_gated(i, gate=None):
    """Returns i at once, or once the file `gate` exists (at most 60 s)."""
    end = time.monotonic() + 60
    while gate and not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.005)
    return i


@pytest.mark.asan
def test_results_before_a_call_that_turns_long_are_not_held(fresh, tmp_path):  # noqa: F811
    # One worker, and a function known to be short: the agent sends a burst
    # of its calls ahead to the worker, which holds their results to write
    # them together. One call of it then blocks: the results held before it
    # still reach the driver while it runs (the worker's flusher writes them).
    shoal.init(num_workers=1)
    for _ in range(3):
        assert shoal.get([quick_unless_gated.remote(i) for i in range(2000)], timeout=T) == list(range(2000))
    gate = tmp_path / "go"
    for round_ in range(3):
        before = [quick_unless_gated.remote(i) for i in range(300)]
        blocked = quick_unless_gated.remote(-1, str(gate))
        after = [quick_unless_gated.remote(i) for i in range(10)]
        try:
            assert shoal.get(before, timeout=T) == list(range(300))
            assert not blocked.done()
        finally:
            gate.touch()
        assert blocked.result(timeout=T) == -1
        assert shoal.get(after, timeout=T) == list(range(10))
        gate.unlink()
