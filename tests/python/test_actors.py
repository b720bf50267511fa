"""Actors: creation, ordered calls, kill, constructor errors, validation."""

import os
import time

import pytest

import shoal
from _helpers import NUM_WORKERS, cluster, pool_pids, wait_pool_full, wait_until  # noqa: F401

T = 30


@shoal.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()

    def fail(self):
        raise KeyError("nope")

    def slow(self, seconds):
        time.sleep(seconds)
        return seconds

    @staticmethod
    def static(x):
        return x * 2


@shoal.remote
class Broken:
    def __init__(self):
        raise RuntimeError("constructor failed")

    def f(self):
        return 1


@pytest.mark.asan
def test_actor_calls_run_in_order(cluster):  # noqa: F811
    c = Counter.remote(0)
    futs = [c.incr.remote() for _ in range(1000)]
    assert shoal.get(futs, timeout=T) == list(range(1, 1001))
    assert c.get.remote().result(timeout=T) == 1000
    shoal.kill(c)


def test_actor_state_args_and_futures(cluster):  # noqa: F811
    start = shoal.put(5)
    c = Counter.remote(start)                   # a Future as constructor argument
    assert c.incr.remote(k=shoal.put(10)).result(timeout=T) == 15
    assert c.static.remote(21).result(timeout=T) == 42
    with pytest.raises(KeyError):
        c.fail.remote().result(timeout=T)
    assert c.get.remote().result(timeout=T) == 15     # an exception does not kill the actor
    shoal.kill(c)


def test_actor_has_own_worker(cluster):  # noqa: F811
    before = pool_pids(wait_pool_full())
    c = Counter.remote()
    pid = c.pid.remote().result(timeout=T)
    assert pid not in before
    assert len(pool_pids(wait_pool_full())) == NUM_WORKERS      # the pool keeps its size
    shoal.kill(c)


def test_two_actors_are_independent(cluster):  # noqa: F811
    a, b = Counter.remote(0), Counter.remote(100)
    fa = [a.incr.remote() for _ in range(50)]
    fb = [b.incr.remote() for _ in range(50)]
    assert shoal.get(fa, timeout=T)[-1] == 50
    assert shoal.get(fb, timeout=T)[-1] == 150
    shoal.kill(a)
    shoal.kill(b)


@pytest.mark.asan
def test_kill_actor(cluster):  # noqa: F811
    c = Counter.remote()
    pid = c.pid.remote().result(timeout=T)
    pending = c.slow.remote(20)
    shoal.kill(c)
    with pytest.raises(shoal.ActorDiedError):
        pending.result(timeout=T)
    with pytest.raises(shoal.ActorDiedError):
        c.incr.remote().result(timeout=T)
    def gone():
        try:  # reaped (no /proc entry) or a zombie waiting to be
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True
    wait_until(gone, 10, 0.05, "the actor's worker to exit")


def test_actor_crash_fails_calls(cluster):  # noqa: F811
    c = Counter.remote()
    c.incr.remote().result(timeout=T)

    @shoal.remote
    def noop():
        return None
    pid = c.pid.remote().result(timeout=T)
    os.kill(pid, 9)
    with pytest.raises(shoal.ActorDiedError):
        c.incr.remote().result(timeout=T)
    assert noop.remote().result(timeout=T) is None


def test_constructor_raises(cluster):  # noqa: F811
    b = Broken.remote()
    with pytest.raises(RuntimeError, match="constructor failed"):
        b._shoal_created.result(timeout=T)
    with pytest.raises(shoal.ActorDiedError):
        b.f.remote().result(timeout=T)


def test_actor_validation(cluster):  # noqa: F811
    c = Counter.remote()
    with pytest.raises(AttributeError, match="no method 'incrr'"):
        c.incrr.remote()
    with pytest.raises(TypeError, match="Counter.remote"):
        Counter()
    with pytest.raises(TypeError):
        c.incr()
    with pytest.raises(TypeError):
        shoal.kill("not an actor")
    with pytest.raises(TypeError, match="timeout"):
        shoal.remote(timeout=3)(type("X", (), {}))
    assert Counter.options(num_cpus=0.5).remote(1).incr.remote().result(timeout=T) == 2
    shoal.kill(c)


def test_actor_with_resources_is_infeasible(cluster):  # noqa: F811
    with pytest.raises(shoal.InfeasibleResourcesError):
        Counter.options(resources={"unicorn": 1}).remote()._shoal_created.result(timeout=5)


def test_dropped_handle_stops_actor_after_its_calls(cluster):  # noqa: F811
    """Like Ray: when the last handle goes, the actor stops once the calls
    already made have run; their futures still complete."""
    import gc

    @shoal.remote
    class Slow:
        def work(self, i):
            import time
            time.sleep(0.01)
            return i

    def actors_alive():
        return shoal.status()["actors"]["alive"]

    before = actors_alive()
    h = Slow.remote()
    futs = [h.work.remote(i) for i in range(20)]
    method = h.work
    del h
    gc.collect()
    assert shoal.get(futs, timeout=30) == list(range(20))
    # A method object keeps its actor alive.
    assert method.remote(99).result(timeout=30) == 99
    del method
    gc.collect()
    deadline = time.monotonic() + 20
    while actors_alive() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert actors_alive() == before
    st = shoal.status()
    assert st["workers"]["actors"] <= before


@shoal.remote(max_restarts=2)
class Phoenix:
    def __init__(self, start):
        self.n = start

    def incr(self):
        self.n += 1
        return self.n

    def pid(self):
        return os.getpid()

    def die(self):
        os._exit(3)


def test_actor_restarts_after_its_process_dies(cluster):  # noqa: F811
    p = Phoenix.remote(10)
    assert p.incr.remote().result(timeout=30) == 11
    first = p.pid.remote().result(timeout=30)
    for attempt in (1, 2):
        # The call running when the process died fails, saying it restarts...
        with pytest.raises(shoal.ActorDiedError, match=f"restart {attempt} of 2"):
            p.die.remote().result(timeout=30)
        # ...and later calls run on a new instance built from the same arguments.
        assert p.incr.remote().result(timeout=30) == 11
        pid = p.pid.remote().result(timeout=30)
        assert pid != first
        first = pid
    # Out of restarts: dead for good, with the reason.
    with pytest.raises(shoal.ActorDiedError):
        p.die.remote().result(timeout=30)
    with pytest.raises(shoal.ActorDiedError, match="exited with status 3"):
        p.incr.remote().result(timeout=30)


def test_actor_without_restarts_and_killed_actors_stay_dead(cluster):  # noqa: F811
    q = Phoenix.options(max_restarts=0).remote(0)
    with pytest.raises(shoal.ActorDiedError):
        q.die.remote().result(timeout=30)
    with pytest.raises(shoal.ActorDiedError):
        q.incr.remote().result(timeout=30)
    r = Phoenix.remote(0)  # restarts left, but shoal.kill is final
    assert r.incr.remote().result(timeout=30) == 1
    shoal.kill(r)
    with pytest.raises(shoal.ActorDiedError, match="killed"):
        r.incr.remote().result(timeout=30)
