"""tasks_async: submit N no-op tasks, then wait for all of them."""

import time

from harness import System, digest
import peers

NAME = "tasks_async"
TITLE = "tasks_async: N no-op tasks submitted, then all awaited"
DESCRIPTION = (
    "Submit N no-op tasks (`noop(i)` returns `i`) one call each, then wait for "
    "all results; tasks/s over the whole batch (submit + wait). The cluster or "
    "pool is started and warmed up before timing; 2 workers everywhere."
)
PRIMARY = "shoal"
FLOOR = None
WARMUP_ROUND = False

SLOW = "smaller n (slow); tasks/s is per-task time scaled"
SYSTEMS = [
    System("shoal", "shoal f.remote() + shoal.get", n=100_000, role="shoal"),
    System("mp_apply_async", "multiprocessing Pool.apply_async", n=100_000),
    System("ppe_submit", "ProcessPoolExecutor.submit", n=100_000),
    System("joblib", "joblib Parallel(n_jobs=2) delayed", n=100_000),
    System("ray", "Ray f.remote() + ray.get", n=20_000, note=SLOW),
    System("dask", "Dask client.submit + gather", n=10_000, note=SLOW),
]


def expected(system, params):
    return digest(list(range(params["n"])))


def _warm(n):
    return max(100, min(2000, n // 20))


def measure(system, params):
    from workloads import noop
    n = params["n"]
    w = _warm(n)
    if system == "shoal":
        with peers.shoal_cluster() as shoal:
            f = shoal.remote(noop)
            shoal.get([f.remote(i) for i in range(w)])
            t0 = time.perf_counter()
            futs = [f.remote(i) for i in range(n)]
            t1 = time.perf_counter()
            res = shoal.get(futs)
            t2 = time.perf_counter()
    elif system == "mp_apply_async":
        with peers.mp_pool() as pool:
            [r.get() for r in [pool.apply_async(noop, (i,)) for i in range(w)]]
            t0 = time.perf_counter()
            rs = [pool.apply_async(noop, (i,)) for i in range(n)]
            t1 = time.perf_counter()
            res = [r.get() for r in rs]
            t2 = time.perf_counter()
    elif system == "ppe_submit":
        with peers.process_pool() as ex:
            [f.result() for f in [ex.submit(noop, i) for i in range(w)]]
            t0 = time.perf_counter()
            fs = [ex.submit(noop, i) for i in range(n)]
            t1 = time.perf_counter()
            res = [f.result() for f in fs]
            t2 = time.perf_counter()
    elif system == "joblib":
        from joblib import delayed
        with peers.joblib_parallel() as par:
            par(delayed(noop)(i) for i in range(w))
            t0 = time.perf_counter()
            t1 = t0
            res = par(delayed(noop)(i) for i in range(n))
            t2 = time.perf_counter()
    elif system == "ray":
        with peers.ray_cluster() as ray:
            f = ray.remote(noop)
            ray.get([f.remote(i) for i in range(w)])
            t0 = time.perf_counter()
            refs = [f.remote(i) for i in range(n)]
            t1 = time.perf_counter()
            res = ray.get(refs)
            t2 = time.perf_counter()
    elif system == "dask":
        with peers.dask_client() as client:
            client.gather([client.submit(noop, i, pure=False) for i in range(w)])
            t0 = time.perf_counter()
            fs = [client.submit(noop, i, pure=False) for i in range(n)]
            t1 = time.perf_counter()
            res = client.gather(fs)
            t2 = time.perf_counter()
    else:
        raise ValueError(system)
    return {"value": n / (t2 - t0), "check": digest(list(res)),
            "extra": {"seconds": t2 - t0, "submit_s": t1 - t0, "us_per_task": (t2 - t0) / n * 1e6}}
