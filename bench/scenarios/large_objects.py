"""large_objects: put/get of a 1 GiB numpy array and passing it to 16 tasks
(issue 4's object-store targets), beside memcpy floors and the peers.

Three kinds of rows, each system in a fresh process per repetition:

* put bandwidth (GB/s): shoal.put of the array (already in memory; only the
  put call is timed), against two memcpy floors: into a freshly allocated
  buffer (np.empty + np.copyto, paying the page faults every new object pays)
  and into an existing, already-touched buffer.
* get latency (µs): shoal.get of a 1 MiB and of a 1 GiB object, both already
  put, gets of the two alternating in one process.
* pass to 16 tasks (ms): from the driver's array to the 16 results of
  array_sum(x) = float(x.sum()), each checked equal to the driver's a.sum():
  shoal (put once + the ref; and the array passed directly), Pool.apply_async
  pickling the array into every task, Ray (ray.put + the ref), and
  multiprocessing.shared_memory (copy into a segment, tasks attach by name).

SHOAL_BENCH_LARGE_MB sets the big size (default 1024: the issue's 1 GiB).
"""

import functools
import gc
import os
import statistics
import sys
import time

from harness import System, digest, repeat_timed
import peers

NAME = "large_objects"
TITLE = "large_objects: put, get and pass a 1 GiB numpy array"

MB = int(os.environ.get("SHOAL_BENCH_LARGE_MB", "1024"))
BIG = MB << 20          # the big object (bytes of float64 data)
SMALL = 1 << 20         # the small object of the get rows
TASKS = 16
SEED = 20261121
MP_TASKS = int(os.environ.get("SHOAL_BENCH_LARGE_MP_TASKS", "4"))  # see the mp_pickle row
GETS = 200              # timed gets of each size per repetition
PUTS = 3                # timed puts (and memcpys) per repetition, after one warm-up

_size = f"{MB >> 10} GiB" if MB % 1024 == 0 else f"{MB} MiB"

DESCRIPTION = (
    f"The array is float64, {_size}, random (seeded; the same in every process). "
    "**put** (GB/s): only the `shoal.put(a)` call is timed, the array already in "
    "memory; median of 3 puts after a warm-up put, each object freed before the next. "
    "Its × floor is against memcpy into a fresh buffer (`np.empty` + `np.copyto`: "
    "pays the page faults a new object pays); memcpy into an already-touched "
    "buffer is the other floor. **get** (µs): a 1 MiB and a "
    f"{_size} object are put, then {GETS} `shoal.get(ref)` of each, alternating, "
    "each view dropped before the next get; median per size (each row's process "
    "measures both sizes; the row reports its own). **pass to 16 tasks** (ms): "
    f"from the driver's array to all {TASKS} results of `float(x.sum())`, every "
    "result checked equal to the driver's `a.sum()`; shoal puts once and passes "
    "the ref (or passes the array itself), `Pool.apply_async` pickles the array "
    "into each task, Ray does `ray.put` and passes the ref, shared_memory copies "
    "the array into a `SharedMemory` that each Pool task attaches to by name. "
    "Setup (cluster/pool start, a warm-up with small arrays so that every worker "
    "has imported numpy) and freeing are not timed; a repetition times its pass "
    "up to 3 times while under 3 s in all and reports the median. 2 workers "
    "everywhere; shoal's object store gets "
    f"{max(4 << 30, 3 * BIG) >> 30} GiB."
)
PRIMARY = "shoal_pass_ref"
FLOOR = None
WARMUP_ROUND = False
RATIO_COLUMNS = ["shoal_pass_ref", "shoal_pass_array"]
STORE_MEMORY = max(4 << 30, 3 * BIG)

SYSTEMS = [
    System("memcpy_fresh", "floor: memcpy into a fresh buffer (np.empty + np.copyto)", n=BIG,
           unit="GB/s", role="floor", timeout=120),
    System("memcpy_touched", "floor: memcpy into a touched buffer (np.copyto)", n=BIG,
           unit="GB/s", role="floor", timeout=120),
    System("shoal_put", "shoal.put(a)", n=BIG, unit="GB/s", role="shoal", timeout=180,
           floor="memcpy_fresh"),
    System("shoal_put_4k", "shoal.put(a), store on 4 KiB pages (diagnostic)", n=BIG, unit="GB/s",
           role="shoal", timeout=180, floor="memcpy_fresh",
           note="SHOAL_STORE_HUGE_PAGES=0: the store a non-root agent gets"),
    System("shoal_get_small", "shoal.get(ref), 1 MiB object", n=SMALL, unit="µs", better="lower",
           role="shoal", timeout=180),
    System("shoal_get_big", f"shoal.get(ref), {_size} object", n=BIG, unit="µs", better="lower",
           role="shoal", timeout=180),
    System("sum_floor", f"floor: a.sum() in the driver × {TASKS} ÷ {peers.workers()} workers", n=BIG,
           unit="ms", better="lower", role="floor", timeout=120,
           note="the pass's compute alone, on pages already mapped"),
    System("shoal_pass_ref", "shoal: put once, 16 tasks get the ref", n=BIG, unit="ms",
           better="lower", role="shoal", timeout=180, floor="sum_floor"),
    System("shoal_pass_array", "shoal: array passed to 16 tasks directly", n=BIG, unit="ms",
           better="lower", role="shoal", timeout=300, floor="sum_floor",
           note="stored once, then compared (memcmp) on each further call"),
    System("mp_pickle", "multiprocessing Pool.apply_async ×16 (array pickled)", n=BIG, unit="ms",
           better="lower", timeout=420, floor="sum_floor",
           note="" if MP_TASKS == TASKS else
           f"slow: {MP_TASKS} tasks timed, time × {TASKS / MP_TASKS:g} (linear: the driver "
           "pickles and sends one task after another)"),
    System("ray", "Ray: ray.put, 16 tasks get the ref, ray.get", n=BIG, unit="ms",
           better="lower", timeout=240, floor="sum_floor"),
    System("shm", "multiprocessing.shared_memory + Pool.apply_async ×16 by name", n=BIG,
           unit="ms", better="lower", timeout=180, floor="sum_floor"),
]

PASS = {"sum_floor", "shoal_pass_ref", "shoal_pass_array", "mp_pickle", "ray", "shm"}


def data(nbytes):
    """The benchmark's array: nbytes of float64 in [0, 1), the same everywhere."""
    import numpy as np
    return np.random.default_rng(SEED).random(nbytes // 8)


@functools.lru_cache(maxsize=None)
def _driver_sum(nbytes):
    a = data(nbytes)
    s = float(a.sum())
    del a
    return s


def _nbytes(params):
    return params["n"] - params["n"] % 8


def expected(system, params):
    n = _nbytes(params)
    if system in PASS:
        return digest(("sum", n, [_driver_sum(n)] * TASKS))
    return digest(("equal", n))


# ---------------------------------------------------------------- helpers


def _store_dir():
    try:
        from shoal import _serial
        return _serial._store_dir
    except Exception:
        return None


def _wait_store_empty(limit_s=30.0):
    """Waits until the object store directory holds no object (what was
    dropped has been freed), so one measurement does not pay for the last."""
    gc.collect()
    d = _store_dir()
    end = time.monotonic() + limit_s
    while d and time.monotonic() < end:
        try:
            # Not the store's marker, nor freed files kept for recycling.
            if not [f for f in os.listdir(d) if f != ".shoal-store" and not f.startswith("free.")]:
                return
        except OSError:
            return
        time.sleep(0.02)
    if not d:
        time.sleep(0.3)


def _gbps(nbytes, secs):
    return nbytes / secs / 1e9


# ---------------------------------------------------------------- floors


def _sum_floor(n):
    """16 sums of the array in one process, divided among the workers: the
    compute of the pass without mapping, copying or scheduling."""
    a = data(n)
    s = float(a.sum())  # warm
    times = []
    for _ in range(PUTS):
        t0 = time.perf_counter()
        r = float(a.sum())
        times.append(time.perf_counter() - t0)
        if r != s:
            return {"value": 0.0, "check": "sum differs between calls"}
    per = statistics.median(times)
    return {"value": per * TASKS / peers.workers() * 1e3, "check": digest(_check([s] * TASKS, s, n)),
            "extra": {"sum_ms": per * 1e3}}


def _memcpy(system, n):
    import numpy as np
    a = data(n)
    rates, ok = [], True
    if system == "memcpy_touched":
        dst = np.empty_like(a)
        np.copyto(dst, a)  # touches every page
        for _ in range(PUTS):
            t0 = time.perf_counter()
            np.copyto(dst, a)
            rates.append(_gbps(n, time.perf_counter() - t0))
        ok = np.array_equal(dst, a)
    else:
        for i in range(PUTS + 1):
            gc.collect()
            t0 = time.perf_counter()
            dst = np.empty_like(a)
            np.copyto(dst, a)
            secs = time.perf_counter() - t0
            if i:  # the first is the warm-up, as for put
                rates.append(_gbps(n, secs))
            if i == PUTS:
                ok = np.array_equal(dst, a)
            del dst
        # For reference (extra): the same without numpy's MADV_HUGEPAGE on
        # big allocations, i.e. with 4 KiB page faults as on a tmpfs file.
        nohuge = []
        try:
            from numpy._core.multiarray import _set_madvise_hugepage
        except ImportError:
            from numpy.core.multiarray import _set_madvise_hugepage
        old = _set_madvise_hugepage(False)
        try:
            for _ in range(PUTS):
                gc.collect()
                t0 = time.perf_counter()
                dst = np.empty_like(a)
                np.copyto(dst, a)
                nohuge.append(_gbps(n, time.perf_counter() - t0))
                del dst
        finally:
            _set_madvise_hugepage(old)
        extra_nohuge = {"nohugepage_gbps": statistics.median(nohuge)}
    return {"value": statistics.median(rates), "check": digest(("equal", n)) if ok else "differs",
            "extra": dict({"min_gbps": min(rates), "max_gbps": max(rates)},
                          **(extra_nohuge if system == "memcpy_fresh" else {}))}


# ---------------------------------------------------------------- shoal put / get


def _put(n):
    import numpy as np
    a = data(n)
    with peers.shoal_cluster(object_store_memory=STORE_MEMORY) as shoal:
        shoal.get(shoal.put(np.ones(SMALL // 8)))  # store path warm
        _wait_store_empty()
        rates, ok = [], True
        for i in range(PUTS + 1):
            _wait_store_empty()
            t0 = time.perf_counter()
            ref = shoal.put(a)
            secs = time.perf_counter() - t0
            if i:
                rates.append(_gbps(n, secs))
            if i == PUTS:
                b = shoal.get(ref)
                ok = np.array_equal(a, b) and not b.flags.writeable
                del b
            del ref
        _wait_store_empty()
    return {"value": statistics.median(rates), "check": digest(("equal", n)) if ok else "differs",
            "extra": {"min_gbps": min(rates), "max_gbps": max(rates)}}


def _get(system, n):
    import numpy as np
    sizes = {"small": SMALL, "big": BIG}
    mine = "small" if system == "shoal_get_small" else "big"
    sizes[mine] = n
    with peers.shoal_cluster(object_store_memory=STORE_MEMORY) as shoal:
        arrays = {k: data(v) for k, v in sizes.items()}
        refs = {k: shoal.put(v) for k, v in arrays.items()}
        ok = True
        for k in refs:
            v = shoal.get(refs[k])
            ok = ok and np.array_equal(v, arrays[k]) and not v.flags.writeable
            del v
        del arrays  # only the store's copies remain
        gc.collect()
        times = {"small": [], "big": []}
        for i in range(-20, GETS):
            order = ("small", "big") if i % 2 == 0 else ("big", "small")
            for k in order:
                ref = refs[k]
                t0 = time.perf_counter_ns()
                v = shoal.get(ref)
                dt = (time.perf_counter_ns() - t0) / 1e3
                del v, ref
                if i >= 0:
                    times[k].append(dt)
        med = {k: statistics.median(t) for k, t in times.items()}
        del refs
        _wait_store_empty()
    return {"value": med[mine], "check": digest(("equal", n)) if ok else "differs",
            "extra": {"small_us": med["small"], "big_us": med["big"],
                      "big_over_small": med["big"] / med["small"],
                      "p90_us": sorted(times[mine])[int(len(times[mine]) * 0.9)]}}


# ---------------------------------------------------------------- pass to 16 tasks


def _check(res, s, n, count=TASKS):
    """The result fingerprint: as expected() when all `count` results equal
    the driver's sum s."""
    if len(res) == count and all(r == s for r in res):
        return ("sum", n, [s] * TASKS)
    return ("mismatch", sorted(set(res))[:3], s)


def _pass(system, n):
    import numpy as np
    from workloads import array_sum, shm_sum, warm_numpy
    small = np.ones(1000)
    extra_put = []

    def prepare():
        # After the pool or cluster started: forked workers do not inherit it.
        a = data(n)
        return a, float(a.sum())

    if system in ("shoal_pass_ref", "shoal_pass_array"):
        with peers.shoal_cluster(object_store_memory=STORE_MEMORY) as shoal:
            f = shoal.remote(array_sum)
            shoal.get([shoal.remote(warm_numpy).remote(small) for _ in range(4)])
            shoal.get(f.remote(small))
            a, s = prepare()

            def run():
                _wait_store_empty()
                t0 = time.perf_counter()
                if system == "shoal_pass_ref":
                    ref = shoal.put(a)
                    extra_put.append(time.perf_counter() - t0)
                    futs = [f.remote(ref) for _ in range(TASKS)]
                else:
                    futs = [f.remote(a) for _ in range(TASKS)]
                res = shoal.get(futs)
                return _check(res, s, n), time.perf_counter() - t0, {}
            out = repeat_timed(run, min_total_s=3.0, max_runs=3)
            del a
            _wait_store_empty()
    elif system == "mp_pickle":
        with peers.mp_pool() as pool:
            pool.map(warm_numpy, [small] * 4, chunksize=1)
            pool.apply(array_sum, (small,))
            a, s = prepare()

            def run():
                t0 = time.perf_counter()
                rs = [pool.apply_async(array_sum, (a,)) for _ in range(MP_TASKS)]
                res = [r.get() for r in rs]
                # The driver pickles and sends one task after the other, so
                # the time grows linearly with the tasks: scaled to TASKS.
                return (_check(res, s, n, MP_TASKS),
                        (time.perf_counter() - t0) * TASKS / MP_TASKS, {})
            out = repeat_timed(run, min_total_s=3.0, max_runs=3)
    elif system == "ray":
        with peers.ray_cluster() as ray:
            f = ray.remote(array_sum)
            ray.get([ray.remote(warm_numpy).remote(small) for _ in range(4)])
            ray.get(f.remote(small))
            a, s = prepare()

            def run():
                gc.collect()
                t0 = time.perf_counter()
                ref = ray.put(a)
                extra_put.append(time.perf_counter() - t0)
                res = ray.get([f.remote(ref) for _ in range(TASKS)])
                secs = time.perf_counter() - t0
                del ref
                return _check(res, s, n), secs, {}
            out = repeat_timed(run, min_total_s=3.0, max_runs=3)
    elif system == "shm":
        from multiprocessing import shared_memory
        with peers.mp_pool() as pool:
            pool.map(warm_numpy, [small] * 4, chunksize=1)
            pool.apply(array_sum, (small,))
            # The first SharedMemory starts multiprocessing's resource tracker
            # process: warm-up, not part of the pass.
            w = shared_memory.SharedMemory(create=True, size=1 << 20)
            w.close()
            w.unlink()
            a, s = prepare()

            def run():
                t0 = time.perf_counter()
                shm = shared_memory.SharedMemory(create=True, size=n)
                try:
                    x = np.ndarray(a.shape, dtype=a.dtype, buffer=shm.buf)
                    np.copyto(x, a)
                    extra_put.append(time.perf_counter() - t0)
                    rs = [pool.apply_async(shm_sum, (shm.name, a.size)) for _ in range(TASKS)]
                    res = [r.get() for r in rs]
                    secs = time.perf_counter() - t0
                    del x
                finally:
                    shm.close()
                    shm.unlink()
                return _check(res, s, n), secs, {}
            out = repeat_timed(run, min_total_s=3.0, max_runs=3)
    else:
        raise ValueError(system)
    secs, check, extra = out
    extra = dict(extra)
    if extra_put:
        extra["put_ms"] = statistics.median(extra_put) * 1e3
    return {"value": secs * 1e3, "check": check, "extra": extra}


def measure(system, params):
    n = _nbytes(params)
    if system in ("memcpy_fresh", "memcpy_touched"):
        return _memcpy(system, n)
    if system == "sum_floor":
        return _sum_floor(n)
    if system == "shoal_put":
        return _put(n)
    if system == "shoal_put_4k":
        import os
        os.environ["SHOAL_STORE_HUGE_PAGES"] = "0"  # this measurement's process only
        return _put(n)
    if system in ("shoal_get_small", "shoal_get_big"):
        return _get(system, n)
    if system in PASS:
        return _pass(system, n)
    raise ValueError(system)


if __name__ == "__main__":  # quick manual check: python large_objects.py SYSTEM
    print(measure(sys.argv[1], {"n": BIG}))
