"""cluster_tasks_async: tasks_async on a head plus 3 node agents on this
machine, beside shoal on one node and beside Ray and Dask clusters of the same
shape (issue 3)."""

import time

from harness import System, digest, repeat_timed
import peers
from workloads import noop

NAME = "cluster_tasks_async"
TITLE = "cluster_tasks_async: N no-op tasks on a head plus 3 node agents"
DESCRIPTION = (
    "The tasks_async workload (submit N no-op tasks `noop(i)` one call each, "
    "then get all results; tasks/s over submit + wait; results checked) on "
    "clusters of a head plus 3 node agents, all on this machine over loopback "
    "TCP: the head runs no tasks (0 workers, 0 CPUs) and each node has 1 "
    "worker and 1 CPU, so every task crosses driver → head → node → worker "
    "and back. Reference: shoal on one node (its private cluster, 2 workers), "
    "as in tasks_async. Ray: a head with 0 CPUs and 3 nodes of 1 CPU "
    "(ray.cluster_utils.Cluster: a raylet each). Dask: a `dask scheduler` "
    "process and 3 `dask worker --nthreads 1 --no-nanny` processes. Two "
    "diagnostic shoal shapes (not the target's): the head with 1 worker of "
    "its own, and nodes that declare 32 CPUs for their 1 worker. Each "
    "repetition starts its cluster, warms it up, times the batch (repeated "
    "while under 1 s was timed, at most 3 times, median counted) and stops "
    "every process it started; cluster start-up is not timed."
)
PRIMARY = "shoal_cluster"
FLOOR = None
WARMUP_ROUND = False
# The target is a ratio of two shapes measured seconds apart on a shared
# machine whose speed drifts by ±30% within a minute: one repetition's
# ratio ranges over 0.65-1.2x at the same code. More repetitions, a steadier
# median.
REPS = 9
# Columns of the table: how many times faster shoal on one node and the
# shoal head + 3 nodes are than each row; shoal rows get both ratios too.
RATIO_COLUMNS = ["shoal", "shoal_cluster"]
SHOAL_CROSS_RATIOS = True

SLOW = "smaller n (slow); tasks/s is per-task time scaled"
SYSTEMS = [
    System("shoal", "shoal, one node (2 workers)", n=100_000, role="shoal", timeout=120,
           note="reference: the private cluster of tasks_async"),
    System("shoal_cluster", "shoal, head + 3 nodes × 1 worker", n=100_000, role="shoal", timeout=240,
           note="the target's shape: head 0 workers; driver → head over TCP"),
    System("shoal_cluster_headshare", "shoal, head (1 worker) + 3 nodes × 1 worker", n=100_000,
           role="shoal", timeout=240, note="diagnostic: the head runs tasks too (local first)"),
    System("shoal_cluster_overcommit", "shoal, head + 3 nodes × 1 worker declaring 32 CPUs", n=100_000,
           role="shoal", timeout=240,
           note="diagnostic, not a fair shape: lets the head keep up to 32 tasks in flight per node"),
    System("ray_cluster", "Ray, head (0 CPUs) + 3 nodes × 1 CPU", n=10_000, timeout=240, note=SLOW),
    System("dask_cluster", "Dask, scheduler + 3 workers × 1 thread", n=5_000, timeout=240, note=SLOW),
]


def expected(system, params):
    return digest(list(range(params["n"])))


def _go(submit, collect, n):
    """Warm-up (workers started, the function known everywhere), then the
    timed batches; the same as tasks_async."""
    w = max(100, min(2000, n // 20))
    collect(submit(w))
    return repeat_timed(_batch(submit, collect, n))


def _batch(submit, collect, n):
    def run():
        t0 = time.perf_counter()
        handles = submit(n)
        t1 = time.perf_counter()
        res = collect(handles)
        t2 = time.perf_counter()
        return res, t2 - t0, {"submit_s": t1 - t0}
    return run


def _shoal_multi(n, **shape):
    with peers.shoal_head_nodes(**shape) as (shoal, cl):
        f = shoal.remote(noop)
        sent = [0]

        def submit(k):
            sent[0] += k
            return [f.remote(i) for i in range(k)]

        before = cl.tasks_done_on_nodes()
        secs, check, extra = _go(submit, shoal.get, n)
        on_nodes = cl.tasks_done_on_nodes() - before
        extra.update(startup_s=cl.startup_s, on_nodes_frac=on_nodes / sent[0])
        return secs, check, extra


def measure(system, params):
    n = params["n"]
    if system == "shoal":
        with peers.shoal_cluster() as shoal:
            f = shoal.remote(noop)
            secs, check, extra = _go(lambda k: [f.remote(i) for i in range(k)], shoal.get, n)
    elif system == "shoal_cluster":
        secs, check, extra = _shoal_multi(n, head_workers=0, head_cpus=0, node_workers=1, node_cpus=1)
    elif system == "shoal_cluster_headshare":
        secs, check, extra = _shoal_multi(n, head_workers=1, head_cpus=1, node_workers=1, node_cpus=1)
    elif system == "shoal_cluster_overcommit":
        secs, check, extra = _shoal_multi(n, head_workers=0, head_cpus=0, node_workers=1, node_cpus=32)
    elif system == "ray_cluster":
        with peers.ray_head_nodes() as (ray, startup_s):
            f = ray.remote(noop)
            secs, check, extra = _go(lambda k: [f.remote(i) for i in range(k)], ray.get, n)
            extra["startup_s"] = startup_s
    elif system == "dask_cluster":
        with peers.dask_scheduler_workers() as (client, startup_s):
            secs, check, extra = _go(lambda k: [client.submit(noop, i, pure=False) for i in range(k)],
                                     client.gather, n)
            extra["startup_s"] = startup_s
    else:
        raise ValueError(system)
    extra.update(seconds=secs, us_per_task=secs / n * 1e6)
    return {"value": n / secs, "check": check, "extra": extra}

