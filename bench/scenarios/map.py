"""map: a cheap function over 1M items."""

import time

from harness import System, digest, repeat_timed
import peers

NAME = "map"
TITLE = "map: double(x) = 2*x over 1M items, no chunksize given"
DESCRIPTION = (
    "`map(double, range(n))` with each system's default chunking (no chunksize "
    "argument); items/s over the whole map, results collected into a list. "
    "Pools are started and warmed up before timing; 2 workers everywhere; the "
    "map is repeated while under 1 s was timed (at most 3 times), median counts. "
    "ProcessPoolExecutor.map defaults to chunksize=1, so it gets fewer items."
)
PRIMARY = "shoal_executor"
FLOOR = None
WARMUP_ROUND = False
REPS = 9  # one map takes well under a second: more repetitions, steadier median

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


def _go(fn, n):
    """Warm-up on min(n/5, 10k) items, then timed maps."""
    items = list(range(n))
    fn(list(range(min(n // 5, 10_000))))

    def run():
        t0 = time.perf_counter()
        res = fn(items)
        return res, time.perf_counter() - t0, {}
    return repeat_timed(run)


def measure(system, params):
    from workloads import double
    n = params["n"]
    if system == "shoal_executor":
        with peers.shoal_cluster() as shoal:
            with shoal.Executor() as ex:
                secs, check, extra = _go(lambda xs: list(ex.map(double, xs)), n)
    elif system == "shoal_pool":
        with peers.shoal_cluster() as shoal:
            with shoal.Pool() as pool:
                secs, check, extra = _go(lambda xs: pool.map(double, xs), n)
    elif system == "mp_map":
        with peers.mp_pool() as pool:
            secs, check, extra = _go(lambda xs: pool.map(double, xs), n)
    elif system == "ppe_map":
        with peers.process_pool() as ex:
            secs, check, extra = _go(lambda xs: list(ex.map(double, xs)), n)
    elif system == "joblib":
        from joblib import delayed
        with peers.joblib_parallel() as par:
            secs, check, extra = _go(lambda xs: par(delayed(double)(x) for x in xs), n)
    else:
        raise ValueError(system)
    extra["seconds"] = secs
    return {"value": n / secs, "check": check, "extra": extra}
