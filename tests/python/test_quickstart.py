"""The issue's quick-start example, verbatim, against a private cluster."""

import pytest

from _helpers import fresh  # noqa: F401


@pytest.mark.asan
def test_quickstart_example(fresh):  # noqa: F811
    import shoal

    shoal.init()        # no cluster running: starts a private one sized to this machine

    @shoal.remote
    def square(x):
        return x * x

    futs = [square.remote(i) for i in range(10_000)]
    assert shoal.get(futs) == [i * i for i in range(10_000)]

    @shoal.remote(num_cpus=1, max_retries=2)
    def add(a, b):
        return a + b

    total = add.remote(square.remote(3), square.remote(4))   # futures as arguments are dependencies
    assert total.result() == 25

    @shoal.remote
    class Counter:
        def __init__(self, start=0):
            self.n = start
        def incr(self, k=1):
            self.n += k
            return self.n

    c = Counter.remote(10)
    assert shoal.get([c.incr.remote() for _ in range(100)])[-1] == 110   # one caller's calls run in order

    with shoal.Executor() as ex:            # a concurrent.futures.Executor
        assert list(ex.map(abs, range(-5, 5))) == [abs(i) for i in range(-5, 5)]

    with shoal.Pool() as pool:              # a multiprocessing.Pool
        assert sorted(pool.imap_unordered(abs, range(-5, 5))) == sorted(map(abs, range(-5, 5)))

    shoal.shutdown()
    assert not shoal.is_initialized()
