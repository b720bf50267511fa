"""tasks_sync: submit one no-op task and wait for it, N times in a row."""

import statistics
import time

from harness import System, digest
import peers

NAME = "tasks_sync"
TITLE = "tasks_sync: one no-op task submitted and awaited, N times (round-trip latency)"
DESCRIPTION = (
    "Submit one no-op task and wait for its result, N times in a row; the value "
    "is the median of the per-round-trip times of a repetition (µs). The floor is "
    "the Unix-socket ping-pong between two processes (64-byte messages), measured "
    "in the same run. 2 workers everywhere; warmed up before timing."
)
PRIMARY = "shoal"
FLOOR = "floor"
WARMUP_ROUND = False

N = 2000
SYSTEMS = [
    System("shoal", "shoal f.remote(i).result()", n=N, unit="µs", better="lower", role="shoal", timeout=180),
    System("mp_apply", "multiprocessing Pool.apply", n=N, unit="µs", better="lower", timeout=180),
    System("ppe", "ProcessPoolExecutor.submit().result()", n=N, unit="µs", better="lower", timeout=180),
    System("ray", "Ray ray.get(f.remote(i))", n=N, unit="µs", better="lower", timeout=180),
    System("dask", "Dask client.submit().result()", n=N, unit="µs", better="lower", timeout=180),
    System("floor", "floor: Unix-socket ping-pong (Python)", n=N, unit="µs", better="lower", role="floor",
           timeout=60),
    System("floor_c", "Unix-socket ping-pong (C, reference)", n=N, unit="µs", better="lower", role="floor",
           timeout=60),
]


def expected(system, params):
    return digest(list(range(params["n"])))


def _loop(call, n, warm=200):
    for i in range(warm):
        call(i)
    times, res = [], []
    for i in range(n):
        t0 = time.perf_counter_ns()
        r = call(i)
        times.append((time.perf_counter_ns() - t0) / 1e3)
        res.append(r)
    return times, res


def measure(system, params):
    from workloads import noop
    n = params["n"]
    if system == "shoal":
        with peers.shoal_cluster() as shoal:
            f = shoal.remote(noop)
            times, res = _loop(lambda i: f.remote(i).result(), n)
    elif system == "mp_apply":
        with peers.mp_pool() as pool:
            times, res = _loop(lambda i: pool.apply(noop, (i,)), n)
    elif system == "ppe":
        with peers.process_pool() as ex:
            times, res = _loop(lambda i: ex.submit(noop, i).result(), n)
    elif system == "ray":
        with peers.ray_cluster() as ray:
            f = ray.remote(noop)
            times, res = _loop(lambda i: ray.get(f.remote(i)), n)
    elif system == "dask":
        with peers.dask_client() as client:
            times, res = _loop(lambda i: client.submit(noop, i, pure=False).result(), n)
    elif system == "floor":
        from scenarios.floor import pingpong
        times, res = pingpong(n, warm=200)
    elif system == "floor_c":
        from scenarios.floor import pingpong_c
        med, mean, checked = pingpong_c(n, warm=200)
        ok = checked == n
        return {"value": med, "check": digest(list(range(n))) if ok else "mismatch", "extra": {"mean_us": mean}}
    else:
        raise ValueError(system)
    return {"value": statistics.median(times), "check": digest(res),
            "extra": {"mean_us": statistics.fmean(times), "p90_us": sorted(times)[int(len(times) * 0.9)]}}
