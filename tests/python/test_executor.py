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
    per_chunk = round(_chunks.TARGET / 1e-7)
    assert _chunks.choose_chunksize(1e-7, 1_000_000, 2) == per_chunk   # TARGET s per chunk
    assert _chunks.choose_chunksize(1e-7, 1000, 2) == 125          # >= 4 chunks per worker
    assert _chunks.choose_chunksize(1.0, 1000, 2) == 1             # slow items: one per task
    assert _chunks.choose_chunksize(_chunks.TARGET / 10, 10_000, 2) == 10


def test_probe_reports_the_fastest_rate():
    calls = []

    def f(x):
        calls.append(x)
        if x == 0:
            time.sleep(0.05)  # a first call (or a preemption) that takes long
        return x

    out, secs = _chunks.ChunkRunner(f)(list(range(100)), 1.0)
    assert out == list(range(100)) and calls == out
    assert secs < 0.05  # 100 items at the rate of the fast batches, not the slow one
    out, secs = _chunks.ChunkRunner(f)(list(range(100)), 0.01)
    assert out == [0] and secs >= 0.05  # the budget ends the probe after a batch


def ident(x):
    return x


def type_and_value(x):
    return (type(x).__name__, x)


def test_seq_pack_round_trip():
    from shoal import _core
    cases = [
        [1, 2, 3], [0], [-(2 ** 31), 2 ** 31 - 1],             # int32
        [5, 2 ** 31, -7], [2 ** 63 - 1, -(2 ** 63)],            # int64 (widened midway)
        [1.5, -0.0, float("inf"), 1e308],                        # doubles
    ]
    for xs in cases:
        data = _core.seq_pack(xs)
        assert data is not None, xs
        got = _core.seq_unpack(data)
        assert got == xs and [type(v) for v in got] == [type(v) for v in xs]
    nan = _core.seq_unpack(_core.seq_pack([float("nan")]))[0]
    assert nan != nan
    assert _core.seq_unpack(_core.seq_pack((4, 5))) == [4, 5]
    assert _core.seq_unpack(_core.seq_pack(list(range(10)), 3, 6)) == [3, 4, 5]
    # Anything that would not come back as equal objects of the same type.
    for xs in ([True, 1], [1, True], [1, 2.0], [2.0, 1], [2 ** 64], [1, "a"], [], [None]):
        assert _core.seq_pack(xs) is None, xs
    assert _core.seq_pack(range(5)) is None
    assert _core.seq_pack([1, 2], 2, 9) is None
    for bad in (b"", b"x" * 8, b"i" + b"\0" * 7 + b"abc", b"d" + b"\0" * 7 + b"abcd"):
        with pytest.raises(ValueError):
            _core.seq_unpack(bad)


@pytest.mark.parametrize("items", [
    list(range(-3000, 3000)),                           # packed as int32
    [i * (2 ** 40) for i in range(3000)],               # int64
    [i / 7 for i in range(3000)],                       # doubles
    [True, False] * 1500,                               # bools stay bools
    [1, 2.5] * 1500,                                    # mixed: pickled
    list(range(2999)) + [2 ** 70],                      # one big int: pickled
])
def test_map_keeps_types_and_values(cluster, items):  # noqa: F811
    want = [type_and_value(x) for x in items]
    with shoal.Executor() as ex:
        assert list(ex.map(type_and_value, items, timeout=T)) == want
        assert list(ex.map(ident, items, timeout=T)) == items
    with shoal.Pool() as pool:
        got = pool.map(ident, items)
        assert got == items and [type(v) for v in got] == [type(v) for v in items]
        assert list(pool.imap(ident, items, chunksize=500)) == items


def test_map_chunk_futures_do_not_keep_results(cluster):  # noqa: F811
    # The chunks' futures stay tracked by the executor after the map; they
    # must not hold a second copy of every result.
    with shoal.Executor() as ex:
        assert list(ex.map(double, list(range(10_000)), timeout=T))[-1] == 19_998
        assert all(f._value is shoal._future._UNSET for f in ex._tracked.items)


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
