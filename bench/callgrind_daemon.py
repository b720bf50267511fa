"""Instructions per task in the head or in a node agent, counted by callgrind
(a diagnostic: a count of instructions does not move with the load of this
shared machine, the wall clock does).

    .venv/bin/python bench/callgrind_daemon.py head|node [N]

Starts a head (no workers) and one node agent (1 worker) on loopback, one of
the two under `valgrind --tool=callgrind`, and runs batches of N no-op tasks
(default 20,000) through them twice: once 1 batch, once 3. Each batch after
the first finds the daemon warm (its maps grown, its recycled records
there), so (instructions with 3 batches - with 1) / (2 N) is the steady
cost per task. Prints that, and leaves the two profiles in
bench/results/callgrind.{head,node}.{1,3}.out for callgrind_annotate.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import peers  # noqa: E402
from workloads import noop  # noqa: E402


def _start(argv, under_valgrind, out):
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] if under_valgrind else []
    return subprocess.Popen(vg + argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def profile(who, n, batches):
    """Runs `batches` batches with `who` under callgrind; returns its output file."""
    import shoal
    from shoal import _cluster
    binary = _cluster.binary_path()
    out = os.path.join(HERE, "results", f"callgrind.{who}.{batches}.out")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    base = tempfile.mkdtemp(prefix="shcg-", dir="/tmp")
    token = os.path.join(base, "token")
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (os.urandom(32).hex() + "\n").encode())
    os.close(fd)
    port = peers._free_port()
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        for d in ("h", "n"):
            os.mkdir(os.path.join(base, d), 0o700)
        procs.append(_start([binary, "start", "--block", "--head", "--socket-dir", base + "/h",
                             "--port", str(port), "--token-file", token, "--workers", "0",
                             "--num-cpus", "0", "--python", sys.executable], who == "head", out))
        time.sleep(3 if who == "head" else 0.5)
        procs.append(_start([binary, "start", "--block", "--address", address, "--socket-dir",
                             base + "/n", "--token-file", token, "--workers", "1", "--num-cpus",
                             "1", "--python", sys.executable], who == "node", out))
        time.sleep(4)
        os.environ["SHOAL_TOKEN_FILE"] = token
        shoal.init(address=address)
        f = shoal.remote(noop)
        shoal.get([f.remote(i) for i in range(200)], timeout=300)
        for _ in range(batches):
            if shoal.get([f.remote(i) for i in range(n)], timeout=600) != list(range(n)):
                raise SystemExit("wrong results")
        shoal.shutdown()
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(base, ignore_errors=True)
    return out


def total(out):
    r = subprocess.run(["callgrind_annotate", out], capture_output=True, text=True, check=True)
    for line in r.stdout.splitlines():
        if "PROGRAM TOTALS" in line:
            return int(line.split()[0].replace(",", ""))
    raise SystemExit(f"no totals in {out}")


def main(argv):
    if not argv or argv[0] not in ("head", "node"):
        raise SystemExit(__doc__)
    who, n = argv[0], int(argv[1]) if len(argv) > 1 else 20_000
    one, three = total(profile(who, n, 1)), total(profile(who, n, 3))
    print(f"{who}: {(three - one) / (2 * n):,.0f} instructions per task")


if __name__ == "__main__":
    main(sys.argv[1:])
