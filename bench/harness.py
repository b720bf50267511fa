"""Benchmark plumbing: systems, child processes with time limits and cleanup,
statistics, machine description and the Markdown/JSON report.

Every measurement runs in a fresh child process (bench/child.py) started in a
session of its own. The runner is a child subreaper, so processes a child
leaves behind (cluster daemons, workers) are re-parented to the runner and
can be found and stopped by pid when the child is done or timed out.
"""

import ctypes
import dataclasses
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)

# Terminal states: a system in one of these is not run again in the scenario.
OK = "ok"
NOT_INSTALLED = "not installed"
TIMED_OUT = "timed out"
ERROR = "error"
WRONG = "wrong result"


@dataclasses.dataclass
class System:
    """One contender in a scenario.

    name:    short id used on the command line and in JSON
    label:   what the table shows
    n:       work items per repetition (None: not applicable)
    unit:    unit of the reported value
    better:  "higher" or "lower"
    timeout: seconds one repetition (one child process) may take
    role:    "shoal", "peer" or "floor"
    note:    shown in the table (e.g. why n is smaller)
    floor:   the floor system this row's "× floor" is computed against, when
             not the scenario's FLOOR (a scenario with two kinds of rows)
    """

    name: str
    label: str
    n: int = None
    unit: str = "tasks/s"
    better: str = "higher"
    timeout: float = 300.0
    role: str = "peer"
    note: str = ""
    floor: str = None


def digest(obj):
    """A short fingerprint of a result, compared across systems."""
    return hashlib.sha1(repr(obj).encode()).hexdigest()[:16]


def repeat_timed(run, min_total_s=1.0, max_runs=3):
    """Calls run() -> (result, seconds, extra dict) until min_total_s of timed
    work has accumulated or max_runs calls were made (so short measurements
    get a median of 3, long ones are not tripled). Returns (seconds, check,
    extra) of the median run; check is the digest of the results, or
    "mismatch" if the runs disagreed."""
    runs = []
    while True:
        res, secs, extra = run()
        runs.append((secs, digest(res), extra))
        del res
        if sum(r[0] for r in runs) >= min_total_s or len(runs) >= max_runs:
            break
    checks = {r[1] for r in runs}
    runs.sort(key=lambda r: r[0])
    secs, check, extra = runs[len(runs) // 2]
    extra = dict(extra, inner_runs=len(runs))
    return secs, (check if len(checks) == 1 else "mismatch"), extra


# ---------------------------------------------------------------- processes


def become_subreaper():
    """Orphaned descendants are re-parented to this process (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except Exception:
        return False


def _proc_stat(pid):
    """(ppid, sid) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    # fields after comm: state ppid pgrp session ...
    return int(rest[1]), int(rest[3])


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def leftovers(session_id):
    """Pids still alive that belong to the child's session, or that were
    re-parented to this runner (orphans of the child)."""
    me = os.getpid()
    out = []
    for pid in _all_pids():
        if pid == me:
            continue
        st = _proc_stat(pid)
        if st and (st[1] == session_id or st[0] == me):
            out.append(pid)
    return out


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def cleanup(session_id, grace=5.0):
    """Waits up to `grace` s for what the child left to exit by itself, then
    SIGTERM, then SIGKILL, each by pid. Returns the command lines of the
    processes that had to be stopped."""
    end = time.monotonic() + grace
    while time.monotonic() < end:
        _reap()
        if not leftovers(session_id):
            return []
        time.sleep(0.1)
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = leftovers(session_id)
        if not pids:
            break
        for pid in pids:
            cmd = _cmdline(pid)
            if cmd and sig == signal.SIGTERM:
                stopped.append(cmd[:120])
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        t = time.monotonic() + 3.0
        while time.monotonic() < t and leftovers(session_id):
            _reap()
            time.sleep(0.1)
    _reap()
    return stopped


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = BENCH_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def run_child(scenario, system, params, timeout, log_path):
    """Runs one measurement in a fresh process. Returns a dict with at least
    "status"; "value", "check" and "extra" when it succeeded."""
    fd, result_path = tempfile.mkstemp(prefix="shoal-bench-", suffix=".json")
    os.close(fd)
    os.unlink(result_path)
    cmd = [sys.executable, os.path.join(BENCH_DIR, "child.py"), scenario, system.name,
           json.dumps(params), result_path]
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(f"\n=== {scenario} {system.name} {params}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(), cwd=BENCH_DIR, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        except BaseException:  # Ctrl-C: leave nothing running
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            cleanup(proc.pid, grace=0.0)
            raise
    stopped = cleanup(proc.pid, grace=0.5 if timed_out else 5.0)
    wall = time.monotonic() - t0
    if timed_out:
        res = {"status": TIMED_OUT, "message": f"no result within {timeout:.0f} s"}
    else:
        try:
            with open(result_path) as f:
                res = json.load(f)
        except (OSError, ValueError):
            res = {"status": ERROR, "message": f"child exited with {proc.returncode} and no result; "
                                               f"see {os.path.relpath(log_path, REPO_DIR)}"}
    try:
        os.unlink(result_path)
    except OSError:
        pass
    res["wall_s"] = wall
    if stopped:
        res["left_behind"] = stopped
    return res


# ---------------------------------------------------------------- machine


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def loadavg():
    """The 1-minute load average (other work on this shared machine skews numbers)."""
    try:
        return float(_read("/proc/loadavg").split()[0])
    except (IndexError, ValueError):
        return None


def machine_info():
    cpu = "unknown"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    commit = ""
    try:
        commit = subprocess.run(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        # The measured engine is the working tree: say when it differs from the commit.
        st = subprocess.run(["git", "-C", REPO_DIR, "status", "--porcelain", "--untracked-files=no",
                             "--", "src", "python", "CMakeLists.txt", "pyproject.toml"],
                            capture_output=True, text=True, timeout=10).stdout.splitlines()
        if st:
            commit += f" + uncommitted changes in {len(st)} engine file(s)"
    except Exception:
        pass
    versions = {d: _version(d) for d in
                ("shoal", "ray", "dask", "distributed", "joblib", "numpy", "pandas", "cloudpickle")}
    if not versions["shoal"]:
        # Importable from a source tree or PYTHONPATH without package metadata?
        try:
            out = subprocess.run([sys.executable, "-c", "import shoal; print(getattr(shoal, '__version__', '') or 'source')"],
                                 capture_output=True, text=True, timeout=60, env=child_env())
            versions["shoal"] = out.stdout.strip() if out.returncode == 0 else None
        except Exception:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "shoal_commit": commit,
        "versions": versions,
    }


# ---------------------------------------------------------------- statistics


def summarize(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def speedup(shoal_value, value, better):
    """How many times better shoal is than `value` (>1: shoal is faster)."""
    if shoal_value is None or value is None or not shoal_value or not value:
        return None
    return shoal_value / value if better == "higher" else value / shoal_value


def fmt_num(v):
    """A number with 3 significant digits and a k/M suffix."""
    if v is None:
        return "–"
    a = abs(v)
    for div, suf in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if a >= 10 * div if suf == " k" else a >= div:
            v, a = v / div, a / div
            break
    else:
        suf = ""
    digits = 0 if a >= 100 else 1 if a >= 10 else 2
    return f"{v:.{digits}f}{suf}"


# Time units are shown in the largest unit that keeps the median >= 1.
_TIME_UP = {"µs": (1e3, "ms"), "ms": (1e3, "s")}


def display_unit(median, unit):
    """(divisor, unit) so that the median reads naturally (2650 µs -> 2.65 ms)."""
    div = 1.0
    while median is not None and unit in _TIME_UP and median / div >= _TIME_UP[unit][0] * 10:
        d, unit = _TIME_UP[unit]
        div *= d
    return div, unit


def fmt_n(n):
    if n is None:
        return "–"
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 30} GiB" if n % (1 << 30) == 0 else f"{n >> 20} MiB"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"
    return str(n)


def fmt_ratio(r):
    if r is None:
        return "–"
    return f"{r:.2f}×" if r < 10 else f"{r:.1f}×"
