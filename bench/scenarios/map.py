"""map: a cheap function over 1M items."""

import time

from harness import System, digest
import peers

NAME = "map"
TITLE = "map: double(x) = 2*x over 1M items, no chunksize given"
DESCRIPTION = (
    "`map(double, range(n))` with each system's default chunking (no chunksize "
    "argument); items/s over the whole map, results collected into a list. "
    "Pools are started and warmed up before timing; 2 workers everywhere. "
    "ProcessPoolExecutor.map defaults to chunksize=1, so it gets fewer items."
)
PRIMARY = "shoal_executor"
FLOOR = None
WARMUP_ROUND = False

N = 1_000_000
SYSTEMS = [
    System("shoal_executor", "shoal Executor.map", n=N, unit="items/s", role="shoal"),
    System("shoal_pool", "shoal Pool.map", n=N, unit="items/s", role="shoal"),
    System("mp_map", "multiprocessing Pool.map", n=N, unit="items/s"),
    System("ppe_map", "ProcessPoolExecutor.map", n=50_000, unit="items/s",
           note="default chunksize=1: n capped, items/s scaled"),
    System("joblib", "joblib Parallel(n_jobs=2) delayed", n=N, unit="items/s"),
]


def expected(system, params):
    return digest([2 * x for x in range(params["n"])])


def measure(system, params):
    from workloads import double
    n = params["n"]
    items = list(range(n))
    warm = list(range(min(n, 10_000)))
    if system == "shoal_executor":
        with peers.shoal_cluster() as shoal:
            with shoal.Executor() as ex:
                list(ex.map(double, warm))
                t0 = time.perf_counter()
                res = list(ex.map(double, items))
                t1 = time.perf_counter()
    elif system == "shoal_pool":
        with peers.shoal_cluster() as shoal:
            with shoal.Pool() as pool:
                pool.map(double, warm)
                t0 = time.perf_counter()
                res = pool.map(double, items)
                t1 = time.perf_counter()
    elif system == "mp_map":
        with peers.mp_pool() as pool:
            pool.map(double, warm)
            t0 = time.perf_counter()
            res = pool.map(double, items)
            t1 = time.perf_counter()
    elif system == "ppe_map":
        with peers.process_pool() as ex:
            list(ex.map(double, warm[:1000]))
            t0 = time.perf_counter()
            res = list(ex.map(double, items))
            t1 = time.perf_counter()
    elif system == "joblib":
        from joblib import delayed
        with peers.joblib_parallel() as par:
            par(delayed(double)(x) for x in warm)
            t0 = time.perf_counter()
            res = par(delayed(double)(x) for x in items)
            t1 = time.perf_counter()
    else:
        raise ValueError(system)
    return {"value": n / (t1 - t0), "check": digest(list(res)), "extra": {"seconds": t1 - t0}}
