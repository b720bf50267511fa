"""shoal.Pool: multiprocessing.pool.Pool semantics."""

import multiprocessing
import os
import threading
import time

import pytest

import shoal
from _helpers import NUM_WORKERS, cluster, wait_pool_full, wait_until  # noqa: F401

T = 30


def square(x):
    return x * x


def mul(a, b):
    return a * b


def slow(x, seconds=0.2):
    time.sleep(seconds)
    return x


def boom(x):
    if x == 3:
        raise KeyError(f"item {x}")
    return x


_state = {}


def init_worker(value):
    _state["init"] = value
    _state["count"] = _state.get("count", 0) + 1


def read_init(_=None):
    return _state.get("init"), _state.get("count"), os.getpid()


@pytest.mark.asan
def test_apply_and_apply_async(cluster):  # noqa: F811
    with shoal.Pool() as pool:
        assert pool.apply(mul, (6, 7)) == 42
        assert pool.apply(slow, (1,), {"seconds": 0}) == 1
        r = pool.apply_async(square, (9,))
        assert r.get(timeout=T) == 81
        assert r.ready() and r.successful()
        r.wait(timeout=T)
        with pytest.raises(ZeroDivisionError):
            pool.apply(divmod, (1, 0))


def test_async_result_callbacks(cluster):  # noqa: F811
    got, errs, ev = [], [], threading.Event()
    with shoal.Pool() as pool:
        r = pool.apply_async(square, (5,), callback=lambda v: (got.append(v), ev.set()))
        assert r.get(timeout=T) == 25
        assert ev.wait(T) and got == [25]
        ev.clear()
        r = pool.apply_async(boom, (3,), error_callback=lambda e: (errs.append(e), ev.set()))
        with pytest.raises(KeyError):
            r.get(timeout=T)
        assert ev.wait(T) and isinstance(errs[0], KeyError)
        assert r.ready() and not r.successful()
        r = pool.apply_async(slow, (1, 2.0))
        with pytest.raises(ValueError):
            r.successful()                                  # not ready yet
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.05)
        r.wait(timeout=0.05)
        assert not r.ready()
        m = pool.map_async(square, range(10), callback=lambda v: got.append(v))
        assert m.get(timeout=T) == [i * i for i in range(10)]
        wait_until(lambda: len(got) == 2, 10, 0.01, "the map callback")
        assert got[1] == [i * i for i in range(10)]


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_map_variants(cluster, chunksize):  # noqa: F811
    data = list(range(100))
    with shoal.Pool() as pool:
        assert pool.map(square, data, chunksize) == [x * x for x in data]
        assert pool.map(square, iter(data), chunksize=chunksize) == [x * x for x in data]
        assert pool.map_async(square, data, chunksize).get(timeout=T) == [x * x for x in data]
        pairs = [(i, i + 1) for i in range(50)]
        assert pool.starmap(mul, pairs, chunksize) == [a * b for a, b in pairs]
        assert pool.starmap_async(mul, pairs, chunksize).get(timeout=T) == [a * b for a, b in pairs]
        assert list(pool.imap(square, data, chunksize)) == [x * x for x in data]
        assert sorted(pool.imap_unordered(square, data, chunksize)) == [x * x for x in data]
        assert pool.map(square, []) == []
        assert list(pool.imap(square, [])) == []


def test_map_errors_reraise_original_type(cluster):  # noqa: F811
    with shoal.Pool() as pool:
        with pytest.raises(KeyError, match="item 3"):
            pool.map(boom, range(10))
        with pytest.raises(KeyError):
            pool.map(boom, range(10), chunksize=1)
        with pytest.raises(KeyError):
            list(pool.imap(boom, range(10)))
        with pytest.raises(KeyError):
            list(pool.imap_unordered(boom, range(10), 2))
        with pytest.raises(KeyError):
            pool.map_async(boom, range(200)).get(timeout=T)
        with pytest.raises(ValueError):
            pool.map(square, range(3), chunksize=0)


def test_imap_next_timeout(cluster):  # noqa: F811
    with shoal.Pool() as pool:
        it = pool.imap(slow, [0, 1], chunksize=1)
        assert it.next(timeout=T) == 0
        it2 = pool.imap(slow, [5], chunksize=1)
        with pytest.raises(multiprocessing.TimeoutError):
            it2.next(timeout=0.05)
        assert it.next(timeout=T) == 1
        with pytest.raises(StopIteration):
            it.next(timeout=T)
        u = pool.imap_unordered(slow, [7], chunksize=1)
        assert u.next(timeout=T) == 7


def test_imap_unordered_yields_in_completion_order(cluster):  # noqa: F811
    wait_pool_full()

    def delay(x):
        time.sleep(x)
        return x
    with shoal.Pool() as pool:
        got = list(pool.imap_unordered(delay, [1.0, 0.0, 0.0], chunksize=1))
    assert got[-1] == 1.0 and sorted(got) == [0.0, 0.0, 1.0]


def test_measured_chunksize(cluster):  # noqa: F811
    with shoal.Pool() as pool:
        before = shoal.status()["tasks"]["submitted"]
        assert pool.map(square, range(50_000)) == [x * x for x in range(50_000)]
        tasks = shoal.status()["tasks"]["submitted"] - before
        assert 4 * NUM_WORKERS <= tasks <= 200
        before = shoal.status()["tasks"]["submitted"]
        assert pool.map(slow, range(12), None) == list(range(12))   # 0.2 s items: one per task
        assert shoal.status()["tasks"]["submitted"] - before == 12


def test_initializer_runs_once_per_worker(cluster):  # noqa: F811
    with shoal.Pool(initializer=init_worker, initargs=("ready",)) as pool:
        results = pool.map(read_init, range(40), chunksize=1)
        assert {r[0] for r in results} == {"ready"}
        assert {r[1] for r in results} == {1}            # never twice in one process
        assert pool.apply(read_init)[0] == "ready"


def test_join_waits_for_callbacks(cluster):  # noqa: F811
    results = []

    def slow_append(v):
        time.sleep(0.05)
        results.append(v)
    pool = shoal.Pool()
    for i in range(6):
        pool.apply_async(square, (i,), callback=slow_append)
    pool.map_async(square, range(3), callback=slow_append)
    pool.close()
    pool.join(timeout=T)
    # every callback ran before join returned
    assert sorted(r for r in results if not isinstance(r, list)) == [i * i for i in range(6)]
    assert [0, 1, 4] in results and len(results) == 7


def test_close_join_terminate(cluster):  # noqa: F811
    pool = shoal.Pool()
    r = pool.map_async(slow, range(4), chunksize=1)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.apply(square, (1,))
    pool.join(timeout=T)
    assert r.ready() and r.get(timeout=0) == list(range(4))

    wait_pool_full()
    pool = shoal.Pool()
    long = pool.starmap_async(slow, [(i, 30) for i in range(6)], chunksize=1)
    t0 = time.monotonic()
    pool.terminate()
    pool.join(timeout=T)
    assert time.monotonic() - t0 < 15
    with pytest.raises(shoal.TaskCancelledError):
        long.get(timeout=T)
    wait_pool_full()                                  # killed workers were replaced


def test_context_manager_terminates(cluster):  # noqa: F811
    with shoal.Pool() as pool:
        r = pool.apply_async(slow, (1, 30))
    with pytest.raises(shoal.TaskCancelledError):
        r.get(timeout=T)
    with pytest.raises(ValueError):
        pool.apply(square, (1,))
    wait_pool_full()


def test_pool_processes(fresh_pool):
    with pytest.raises(ValueError):
        shoal.Pool(processes=0)
    with shoal.Pool(processes=1) as pool:
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
        assert shoal.status()["workers"]["pool_size"] == 1


@pytest.fixture
def fresh_pool():
    shoal.shutdown()
    yield
    shoal.shutdown()
