"""tasks_async: submit N no-op tasks, then wait for all of them."""

import time

from harness import System, digest, repeat_timed
import peers

NAME = "tasks_async"
TITLE = "tasks_async: N no-op tasks submitted, then all awaited"
DESCRIPTION = (
    "Submit N no-op tasks (`noop(i)` returns `i`) one call each, then wait for "
    "all results; tasks/s over the whole batch (submit + wait). The cluster or "
    "pool is started and warmed up before timing; 2 workers everywhere. Inside "
    "a repetition the batch is repeated while under 1 s of work was timed (at "
    "most 3 times) and the median batch counts."
)
PRIMARY = "shoal"
FLOOR = None
WARMUP_ROUND = False

SLOW = "smaller n (slow); tasks/s is per-task time scaled"
SYSTEMS = [
    System("shoal", "shoal f.remote() + shoal.get", n=100_000, role="shoal"),
    System("mp_apply_async", "multiprocessing Pool.apply_async", n=100_000),
    System("ppe_submit", "ProcessPoolExecutor.submit", n=100_000),
    System("joblib", "joblib Parallel(n_jobs=2) delayed", n=100_000,
           note="joblib batches calls itself (auto batch size)"),
    System("ray", "Ray f.remote() + ray.get", n=20_000, note=SLOW),
    System("dask", "Dask client.submit + gather", n=10_000, note=SLOW),
]


def expected(system, params):
    return digest(list(range(params["n"])))


def _batch(submit, collect, n):
    """A timed run: submit n tasks, then collect all results."""
    def run():
        t0 = time.perf_counter()
        handles = submit(n)
        t1 = time.perf_counter()
        res = collect(handles)
        t2 = time.perf_counter()
        return res, t2 - t0, {"submit_s": t1 - t0}
    return run


def _go(submit, collect, n):
    w = max(100, min(2000, n // 20))
    collect(submit(w))  # warm-up: workers started, function registered
    return repeat_timed(_batch(submit, collect, n))


def measure(system, params):
    from workloads import noop
    n = params["n"]
    if system == "shoal":
        with peers.shoal_cluster() as shoal:
            f = shoal.remote(noop)
            secs, check, extra = _go(lambda k: [f.remote(i) for i in range(k)], shoal.get, n)
    elif system == "mp_apply_async":
        with peers.mp_pool() as pool:
            secs, check, extra = _go(lambda k: [pool.apply_async(noop, (i,)) for i in range(k)],
                                     lambda rs: [r.get() for r in rs], n)
    elif system == "ppe_submit":
        with peers.process_pool() as ex:
            secs, check, extra = _go(lambda k: [ex.submit(noop, i) for i in range(k)],
                                     lambda fs: [f.result() for f in fs], n)
    elif system == "joblib":
        from joblib import delayed
        with peers.joblib_parallel() as par:
            # Parallel consumes the generator and returns the results: all in "collect".
            secs, check, extra = _go(lambda k: k, lambda k: par(delayed(noop)(i) for i in range(k)), n)
    elif system == "ray":
        with peers.ray_cluster() as ray:
            f = ray.remote(noop)
            secs, check, extra = _go(lambda k: [f.remote(i) for i in range(k)], ray.get, n)
    elif system == "dask":
        with peers.dask_client() as client:
            secs, check, extra = _go(lambda k: [client.submit(noop, i, pure=False) for i in range(k)],
                                     client.gather, n)
    else:
        raise ValueError(system)
    extra.update(seconds=secs, us_per_task=secs / n * 1e6)
    return {"value": n / secs, "check": check, "extra": extra}
