"""startup: from process start to the first result, with a private cluster."""

import os
import subprocess
import sys
import time

from harness import System, digest

NAME = "startup"
TITLE = "startup: fresh process to first result"
DESCRIPTION = (
    "A fresh `python -c` process per repetition imports the system, starts it "
    "with its defaults (a private cluster sized to the machine) and waits for "
    "one task's result; the time is from process spawn to the result line on "
    "its stdout (interpreter start included for every system; shutdown not "
    "timed). One discarded warm-up round first."
)
PRIMARY = "shoal"
FLOOR = None
WARMUP_ROUND = True

SCRIPTS = {
    "shoal": """
import shoal
from workloads import noop
shoal.init()
r = shoal.remote(noop).remote(1).result()
print("RESULT", r, flush=True)
shoal.shutdown()
""",
    "ppe": """
from concurrent.futures import ProcessPoolExecutor
from workloads import noop
ex = ProcessPoolExecutor()
r = ex.submit(noop, 1).result()
print("RESULT", r, flush=True)
ex.shutdown()
""",
    "ray": """
import ray
from workloads import noop
ray.init()
r = ray.get(ray.remote(noop).remote(1))
print("RESULT", r, flush=True)
ray.shutdown()
""",
    "dask": """
from dask.distributed import Client, LocalCluster
from workloads import noop
cluster = LocalCluster()
client = Client(cluster)
r = client.submit(noop, 1).result()
print("RESULT", r, flush=True)
client.close()
cluster.close()
""",
    "python": """
from workloads import noop
print("RESULT", noop(1), flush=True)
""",
}

SYSTEMS = [
    System("shoal", "shoal: import, init(), first result", unit="ms", better="lower", role="shoal", timeout=120),
    System("ppe", "ProcessPoolExecutor: first result", unit="ms", better="lower", timeout=120),
    System("ray", "Ray: import, ray.init(), first result", unit="ms", better="lower", timeout=180),
    System("dask", "Dask: LocalCluster + Client, first result", unit="ms", better="lower", timeout=180),
    System("python", "bare interpreter + print (reference)", unit="ms", better="lower", role="floor", timeout=60),
]


def expected(system, params):
    return digest(1)


def measure(system, params):
    probe = f"import importlib; importlib.import_module({'shoal' if system == 'shoal' else 'ray' if system == 'ray' else 'distributed' if system == 'dask' else 'os'!r})"
    # An uninstalled system is "not installed", not a slow start.
    chk = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if chk.returncode != 0:
        last = chk.stderr.strip().splitlines()[-1] if chk.stderr.strip() else "import failed"
        raise ImportError(last.split(": ", 1)[-1] if last.startswith(("ModuleNotFoundError", "ImportError")) else last)
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", SCRIPTS[system]], stdout=subprocess.PIPE,
                         stderr=sys.stderr, text=True, env=os.environ)
    result = None
    for line in p.stdout:
        if line.startswith("RESULT "):
            result = int(line.split()[1])
            break
    t1 = time.perf_counter()
    rest = p.stdout.read()
    rc = p.wait(timeout=120)
    t2 = time.perf_counter()
    if result is None:
        raise RuntimeError(f"no result; exit status {rc}; output: {rest[-300:]}")
    return {"value": (t1 - t0) * 1e3, "check": digest(result), "extra": {"shutdown_ms": (t2 - t1) * 1e3}}
