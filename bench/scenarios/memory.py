"""memory: daemon RSS growth per queued task."""

import os
import tempfile
import time

from harness import System, digest
import peers

NAME = "memory"
TITLE = "memory: daemon RSS per queued task"
DESCRIPTION = (
    "A private cluster with one worker, kept busy by a task that blocks; then N "
    "no-op tasks without arguments are submitted and stay queued. The value is "
    "(daemon VmRSS after - before) / N minus the bytes of each task's pickled "
    "arguments. The daemon is the `shoal start` child of the driver; RSS is "
    "read from /proc/PID/status once it has stopped growing. The tasks are then "
    "released and all results checked."
)
PRIMARY = "shoal"
FLOOR = None
WARMUP_ROUND = False

SYSTEMS = [
    System("shoal", "shoal daemon", n=1_000_000, unit="B/task", better="lower", role="shoal", timeout=600),
]


def expected(system, params):
    return digest(params["n"])


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return int(data[data.rfind(")") + 2:].split()[1])


def find_daemon(parent):
    """The embedded daemon: a child of `parent` whose command line contains
    'shoal' and 'start'."""
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        pid = int(p)
        try:
            if _ppid(pid) != parent:
                continue
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in _cmdline(pid)]
        if "start" in args and any("shoal" in a for a in args):
            return pid
    return None


def wait_stable(pid, quiet_s=2.0, limit_s=120.0):
    """Polls RSS until it has not changed for quiet_s."""
    last, since = rss_bytes(pid), time.monotonic()
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        time.sleep(0.2)
        cur = rss_bytes(pid)
        if cur != last:
            last, since = cur, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def arg_bytes():
    try:
        from shoal import _serial
        return len(_serial.dumps(((), {})))
    except Exception:
        import pickle
        return len(pickle.dumps(((), {}), 5))


def measure(system, params):
    from workloads import block_until, noop0
    n = params["n"]
    d = tempfile.mkdtemp(prefix="shoal-bench-mem-")
    flag, started = os.path.join(d, "release"), os.path.join(d, "started")
    try:
        with peers.shoal_cluster(num_workers=1) as shoal:
            daemon = find_daemon(os.getpid())
            if daemon is None:
                raise RuntimeError("embedded daemon not found among the driver's children")
            blocker = shoal.remote(block_until).remote(flag, started)
            end = time.monotonic() + 60
            while not os.path.exists(started):
                if time.monotonic() > end:
                    raise RuntimeError("blocking task never started")
                time.sleep(0.01)
            f = shoal.remote(noop0)
            f.remote()  # registers the function; queued behind the blocker
            before = wait_stable(daemon, quiet_s=1.0)
            t0 = time.perf_counter()
            futs = [f.remote() for _ in range(n)]
            submit_s = time.perf_counter() - t0
            after = wait_stable(daemon)
            open(flag, "w").close()
            res = shoal.get(futs, timeout=300)
            blocker.result(timeout=60)
            ok = len(res) == n and all(r is None for r in res)
    finally:
        for p in (flag, started):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(d)
    ab = arg_bytes()
    per = (after - before) / n
    return {"value": per - ab, "check": digest(n) if ok else "mismatch",
            "extra": {"rss_before": before, "rss_after": after, "raw_bytes_per_task": per,
                      "arg_bytes": ab, "submit_s": submit_s}}
