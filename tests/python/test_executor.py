"""shoal.Executor: the concurrent.futures.Executor interface."""

import concurrent.futures
import functools
import gc
import time

import pytest

import shoal
from _helpers import NUM_WORKERS, cluster, wait_pool_full, wait_until  # noqa: F401
from shoal import _chunks

T = 30


def double(x):
    return 2 * x


def power(x, y):
    return x ** y


def slow(seconds, value):
    time.sleep(seconds)
    return value


def fails_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


@pytest.mark.asan
def test_submit_and_results(cluster):  # noqa: F811
    with shoal.Executor() as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        f = ex.submit(power, 2, y=10)
        assert isinstance(f, shoal.Future)
        assert f.result(timeout=T) == 1024
        fs = [ex.submit(double, i) for i in range(100)]
        assert [g.result(timeout=T) for g in fs] == [2 * i for i in range(100)]
        assert ex.submit(lambda: "lambda").result(timeout=T) == "lambda"
        assert ex.submit(functools.partial(power, 3), 2).result(timeout=T) == 9
        with pytest.raises(ZeroDivisionError):
            ex.submit(divmod, 1, 0).result(timeout=T)


def test_submit_registers_callable_once(cluster):  # noqa: F811
    from shoal import executor
    with shoal.Executor() as ex:
        ex.submit(double, 1).result(timeout=T)
        rf = executor.remote_for(double)
        fn_id = rf._registration.fn_id
        ex.submit(double, 2).result(timeout=T)
        assert executor.remote_for(double) is rf and rf._registration.fn_id == fn_id


@pytest.mark.parametrize("chunksize", [None, 1, 3, 1000])
def test_map(cluster, chunksize):  # noqa: F811
    with shoal.Executor() as ex:
        got = list(ex.map(power, range(50), [2] * 50, chunksize=chunksize, timeout=T))
        assert got == [i ** 2 for i in range(50)]
        assert list(ex.map(double, [], chunksize=chunksize, timeout=T)) == []


def test_map_measured_chunksize_uses_few_tasks(cluster):  # noqa: F811
    n = 20_000
    with shoal.Executor() as ex:
        before = shoal.status()["tasks"]["submitted"]
        assert list(ex.map(double, range(n), timeout=T)) == [2 * i for i in range(n)]
        tasks = shoal.status()["tasks"]["submitted"] - before
    # Fast items: one probe plus at least CHUNKS_PER_WORKER chunks per worker,
    # and far fewer tasks than items.
    assert _chunks.CHUNKS_PER_WORKER * NUM_WORKERS <= tasks <= 200


def test_choose_chunksize():
    assert _chunks.choose_chunksize(1e-7, 1_000_000, 2) == 100_000
    assert _chunks.choose_chunksize(1e-7, 1000, 2) == 125          # >= 4 chunks per worker
    assert _chunks.choose_chunksize(1.0, 1000, 2) == 1             # slow items: one per task
    assert _chunks.choose_chunksize(0.001, 10_000, 2) == 10        # ~10 ms per chunk


def test_map_is_lazy_and_ordered(cluster):  # noqa: F811
    with shoal.Executor() as ex:
        it = ex.map(slow, [0.3, 0.0, 0.0], ["a", "b", "c"], chunksize=1, timeout=T)
        assert next(it) == "a"
        assert list(it) == ["b", "c"]


def test_map_error_and_timeout(cluster):  # noqa: F811
    with shoal.Executor() as ex:
        it = ex.map(fails_on, range(10), [5] * 10, chunksize=2, timeout=T)
        got = []
        with pytest.raises(ValueError, match="bad item 5"):
            for x in it:
                got.append(x)
        assert got == [0, 1, 2, 3]
        it = ex.map(slow, [5], [None], timeout=0.2, chunksize=1)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            list(it)
        assert time.monotonic() - t0 < 4


def test_shutdown_wait(cluster):  # noqa: F811
    ex = shoal.Executor()
    fs = [ex.submit(slow, 0.2, i) for i in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in fs)
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(double, 1)
    with pytest.raises(RuntimeError):
        ex.map(double, [1])


def test_shutdown_cancel_futures(cluster):  # noqa: F811
    wait_pool_full()
    ex = shoal.Executor()
    running = [ex.submit(slow, 1.0, "ran") for _ in range(NUM_WORKERS)]
    wait_until(lambda: all(w["state"] != "idle" for w in shoal.status()["workers"]["list"]),
               10, 0.02, "every worker busy")
    queued = [ex.submit(slow, 0, "queued") for _ in range(6)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    for f in queued:
        with pytest.raises(concurrent.futures.CancelledError):
            f.result(timeout=T)
    # Tasks that had started are left to finish (concurrent.futures semantics).
    assert [f.result(timeout=T) for f in running] == ["ran"] * NUM_WORKERS


def test_executor_starts_cluster_with_max_workers(fresh_cluster):
    with shoal.Executor(max_workers=1) as ex:
        assert ex.submit(double, 4).result(timeout=T) == 8
        assert shoal.status()["workers"]["pool_size"] == 1
    with pytest.raises(ValueError):
        shoal.Executor(max_workers=0)


@pytest.fixture
def fresh_cluster():
    shoal.shutdown()
    yield
    shoal.shutdown()


def test_finished_results_are_not_kept_alive(cluster):  # noqa: F811
    """A pool or executor still referenced does not pin the results of its
    finished tasks in the daemon (or, for large ones, in the object store)."""
    def objects():
        return shoal.status()["objects"]["count"]

    before = objects()
    with shoal.Executor() as ex:
        out = list(ex.map(abs, range(-50_000, 50_000)))
    with shoal.Pool() as pool:
        out2 = pool.map(abs, range(-50_000, 50_000))
    assert out == out2
    gc.collect()
    assert objects() <= before, (ex, pool)  # both still referenced here
