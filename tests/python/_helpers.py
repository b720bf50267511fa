"""Fixtures and helpers of the integration tests (real daemons and workers).

Import the fixtures a test module uses: ``from _helpers import cluster``.
Every wait here is bounded.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import shoal
from shoal import _api, _cluster

NUM_WORKERS = 2
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(shoal.__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def cluster():
    """A private cluster with NUM_WORKERS workers, shared by the tests that
    use this fixture (started on first use, kept across tests).

    Yields the ``_api._state`` object (``.client``, ``.daemon``).
    """
    state = _api._state
    if state.client is None or state.daemon is None or not state.client.connected \
            or state.daemon.process.poll() is not None:
        shoal.shutdown()
        shoal.init(num_workers=NUM_WORKERS)
    yield state


@pytest.fixture
def fresh():
    """No cluster before the test; whatever the test started is shut down after."""
    shoal.shutdown()
    yield
    shoal.shutdown()


def env_with_shoal(**extra):
    """os.environ plus PYTHONPATH with the shoal package (for subprocesses)."""
    env = dict(os.environ)
    paths = [PYTHON_DIR, HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.pop("SHOAL_ADDRESS", None)
    env.update(extra)
    return env


def short_tmpdir(prefix="sh-"):
    """A fresh 0700 directory with a short path (unix socket paths are short)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def wait_until(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Polls ``predicate`` until it returns a true value; fails the test after
    ``timeout`` seconds.

    Returns:
        The predicate's true value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def workers(status=None):
    """The ``workers`` part of the status dict."""
    return (status or shoal.status())["workers"]


def pool_pids(status=None):
    """Pids of the pool (non-actor) workers."""
    return sorted(w["pid"] for w in workers(status)["list"] if w["state"] != "actor")


def wait_pool_full(n=NUM_WORKERS, timeout=15.0):
    """Waits until the pool has ``n`` live, idle workers; returns the status."""
    def full():
        st = shoal.status()
        w = st["workers"]
        pool = [x for x in w["list"] if x["state"] != "actor"]
        return st if len(pool) == n and all(x["state"] == "idle" for x in pool) else None
    return wait_until(full, timeout, 0.05, f"a full pool of {n} idle workers")


# ---- processes, via /proc (no psutil) ----

def proc_alive(pid):
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def children(pid):
    """Pids whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def descendants(pid):
    """All live descendants of ``pid``."""
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            if proc_alive(c):
                out.append(c)
                todo.append(c)
    return out


def run_python(code, timeout=60, **kwargs):
    """Runs ``python -c code`` with shoal importable; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env_with_shoal(), **kwargs)


def binary():
    """The shoal daemon binary under test."""
    return _cluster.binary_path()


class ExternalDaemon:
    """``shoal start --head --block`` in a short temporary socket directory,
    stopped (and checked) by ``stop``."""

    def __init__(self, *args, workers=NUM_WORKERS):
        self.dir = short_tmpdir()
        self.argv = [binary(), "start", "--head", "--block", "--socket-dir", self.dir,
                     "--workers", str(workers), "--python", sys.executable, *args]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env_with_shoal(), text=True)
        self.sock = os.path.join(self.dir, "agent.sock")
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out, err = self.stop()
                pytest.fail(f"shoal start failed (rc {self.proc.returncode}): {out}\n{err}")
            time.sleep(0.02)

    def stop(self):
        """Stops the daemon (SIGTERM, then SIGKILL) and removes its socket
        directory; returns (stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)
        return out, err
