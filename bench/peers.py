"""Start and stop each system the same way in every scenario. Each helper is
a context manager that yields the handle and always shuts down what it
started, also when the body raises."""

import contextlib
import os

WORKERS = 2  # the targets are for the 2-core machines here


def workers():
    return int(os.environ.get("SHOAL_BENCH_WORKERS", WORKERS))


@contextlib.contextmanager
def shoal_cluster(num_workers=None, **init_kwargs):
    import shoal
    shoal.init(num_workers=num_workers or workers(), **init_kwargs)
    try:
        yield shoal
    finally:
        shoal.shutdown()


@contextlib.contextmanager
def mp_pool():
    import multiprocessing
    pool = multiprocessing.Pool(workers())
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


@contextlib.contextmanager
def process_pool():
    from concurrent.futures import ProcessPoolExecutor
    ex = ProcessPoolExecutor(max_workers=workers())
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def ray_cluster():
    import ray
    ray.init(num_cpus=workers(), include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def dask_client():
    from dask.distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=workers(), threads_per_worker=1, processes=True,
                           dashboard_address=None)
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


@contextlib.contextmanager
def joblib_parallel():
    from joblib import Parallel
    from joblib.externals.loky import get_reusable_executor
    try:
        with Parallel(n_jobs=workers()) as par:
            yield par
    finally:
        # loky keeps its workers for reuse until the interpreter exits.
        get_reusable_executor().shutdown(wait=True, kill_workers=True)
