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


# ---------------------------------------------------------------- clusters
# A head plus node agents on this machine (cluster_tasks_async). Every
# process is started here by its own handle and stopped by it, also when the
# body or the start-up fails; the runner stops whatever a crash leaves.

def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_procs(procs, grace=10.0):
    """SIGTERM to each process (last started first), then SIGKILL to what is
    still alive after `grace` seconds; reaps them all."""
    import signal
    import time
    for p in reversed(procs):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except Exception:
            p.kill()
            p.wait()


def _shoal_status(binary, address, token_file=None):
    """`shoal status --json` of the daemon at address, or None."""
    import json
    import subprocess
    argv = [binary, "status", "--json", "--address", address, "--timeout", "5"]
    if token_file:
        argv += ["--token-file", token_file]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


class ShoalMultiNode:
    """What shoal_head_nodes yields: the head's address and token file, each
    node's socket directory and how long the cluster took to come up."""

    def __init__(self, binary, address, token_file, node_dirs, startup_s):
        self.binary, self.address, self.token_file = binary, address, token_file
        self.node_dirs, self.startup_s = node_dirs, startup_s

    def tasks_done_on_nodes(self):
        """Tasks the node agents (not the head) have finished so far."""
        total = 0
        for d in self.node_dirs:
            st = _shoal_status(self.binary, os.path.join(d, "agent.sock"))
            total += st["tasks"]["done"] if st else 0
        return total


@contextlib.contextmanager
def shoal_head_nodes(head_workers=0, head_cpus=0, nodes=3, node_workers=1, node_cpus=1,
                     join_timeout=60.0):
    """`shoal start --head --port P --token-file F` plus `nodes` times
    `shoal start --address 127.0.0.1:P --block`, all on loopback, each with
    its own socket directory; the driver connects to the head over TCP
    (shoal.init(address="127.0.0.1:P") with SHOAL_TOKEN_FILE set). Yields
    (shoal, ShoalMultiNode) once the head lists every node alive."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    import shoal
    from shoal import _cluster
    binary = _cluster.binary_path()
    base = tempfile.mkdtemp(prefix="shmb-", dir="/tmp")  # short: unix socket paths
    token_file = os.path.join(base, "token")
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (os.urandom(32).hex() + "\n").encode())
    os.close(fd)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs, dirs = [], []

    def sockdir(name):
        d = os.path.join(base, name)
        os.mkdir(d, 0o700)
        dirs.append(d)
        return d

    def start(argv):
        procs.append(subprocess.Popen([binary, "start", "--block", *argv, "--python", sys.executable],
                                      stdin=subprocess.DEVNULL))
        return procs[-1]

    connected = False
    try:
        t0 = time.perf_counter()
        head = start(["--head", "--socket-dir", sockdir("head"), "--port", str(port),
                      "--token-file", token_file, "--workers", str(head_workers),
                      "--num-cpus", str(head_cpus)])
        deadline = time.monotonic() + join_timeout
        while _shoal_status(binary, address, token_file) is None:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the shoal head did not start (exit status {head.poll()})")
            time.sleep(0.02)
        node_dirs = []
        for i in range(nodes):
            node_dirs.append(sockdir(f"n{i}"))
            start(["--address", address, "--socket-dir", node_dirs[-1], "--token-file", token_file,
                   "--workers", str(node_workers), "--num-cpus", str(node_cpus)])
        want = {p.pid for p in procs[1:]}
        while True:
            st = _shoal_status(binary, address, token_file)
            alive = {n["pid"] for n in (st or {}).get("nodes", []) if n["alive"]}
            if want <= alive:
                break
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{len(want - alive)} of {nodes} node agents did not join the head "
                                   f"within {join_timeout:.0f} s"
                                   + (f" ({len(dead)} exited)" if dead else ""))
            time.sleep(0.02)
        startup_s = time.perf_counter() - t0
        os.environ["SHOAL_TOKEN_FILE"] = token_file
        shoal.init(address=address)
        connected = True
        yield shoal, ShoalMultiNode(binary, address, token_file, node_dirs, startup_s)
    finally:
        if connected:
            shoal.shutdown()
        _stop_procs(procs)
        # A node that had to be SIGKILLed leaves its object store behind.
        import glob
        for p in procs:
            for d in glob.glob(f"/dev/shm/shoal-{p.pid}-*"):
                shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def ray_head_nodes(nodes=3, node_cpus=1):
    """A Ray cluster of a head with no CPUs (so it runs no tasks) and `nodes`
    nodes of `node_cpus` CPUs, each its own raylet (ray.cluster_utils.Cluster:
    the processes `ray start --head` and `ray start --address` run, started and
    stopped by this process rather than left to `ray stop`, which would stop
    every Ray on the machine). Yields (ray, startup seconds)."""
    import time

    import ray
    from ray.cluster_utils import Cluster
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=node_cpus)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            got = ray.cluster_resources().get("CPU", 0)
            if got != nodes * node_cpus:
                raise RuntimeError(f"the Ray cluster has {got} CPUs, not {nodes * node_cpus}")
            yield ray, time.perf_counter() - t0
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


@contextlib.contextmanager
def dask_scheduler_workers(nodes=3, threads=1, join_timeout=60.0):
    """`dask scheduler` and `nodes` times `dask worker --nthreads 1` (no nanny),
    each its own process on loopback TCP, and a Client connected to the
    scheduler. Yields (client, startup seconds)."""
    import subprocess
    import sys
    import time

    from dask.distributed import Client
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], stdin=subprocess.DEVNULL)]
    client = None
    try:
        for _ in range(nodes):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                           "--nthreads", str(threads), "--nworkers", "1", "--no-nanny",
                                           "--host", "127.0.0.1", "--no-dashboard"],
                                          stdin=subprocess.DEVNULL))
        client = Client(address, timeout=join_timeout)
        client.wait_for_workers(nodes, timeout=join_timeout)
        yield client, time.perf_counter() - t0
    finally:
        if client is not None:
            try:
                client.shutdown()  # asks the scheduler and workers to close
            except Exception:
                pass
            client.close()
        # Workers without a nanny may linger after shutdown and ignore
        # SIGTERM: a short grace, then SIGKILL.
        _stop_procs(procs, grace=3.0)
