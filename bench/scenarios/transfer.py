"""transfer: a 1 GiB object moving between two node agents (issue 4), beside
the raw loopback TCP bulk bandwidth measured in the same run.

A head with no workers and two node agents with one worker each run on this
machine over loopback TCP (with the cluster token, as a real cluster would).
A task on node A makes a fresh 1 GiB array, which stays in A's store (not
timed); then one task on node B that needs it and returns its size without
reading it is timed: B pulls the segment from A over the node-to-node
connection (A sends it with sendfile, B splices it into its own store), seals
it and its worker maps it. GB/s = object bytes / that time. A fresh object per
timed transfer. A second row times the head pushing a driver's `put` to a
node (the older path, for tasks whose inputs live on the head); a third the
node → node pull in a cluster with TLS (every node with its own certificate,
made by the `openssl` command: the node port speaks TLS, so the segment is
read into the sender's buffer and encrypted, and decrypted into the
receiver's, instead of sendfile and splice).

SHOAL_BENCH_TRANSFER_MB sets another size (default 1024: the issue's 1 GiB).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from harness import System, digest

NAME = "transfer"
TITLE = "transfer: a 1 GiB object between two node agents"

MB = int(os.environ.get("SHOAL_BENCH_TRANSFER_MB", "1024"))
SIZE = MB << 20
TIMED = 3  # transfers per repetition, after one warm-up; the median is reported

_size = f"{MB >> 10} GiB" if MB % 1024 == 0 else f"{MB} MiB"
DESCRIPTION = (
    "A head (no workers) and node agents (one worker each) on this machine over loopback "
    "TCP with the cluster token. Target row, node → node: a task on node A makes a fresh "
    f"{_size} float64 array, which stays in A's object store (not timed); one task on node "
    "B that needs it and returns `x.nbytes` without reading the data is timed from submit "
    "to result: B pulls the segment from A over the node port (A sends 4 MiB CHUNK frames "
    "with sendfile, B splices them into its own store), seals it, and its worker maps it. "
    "Second row, head → node: the driver puts the array in the head's store and the head "
    "pushes it to the task's node the same way. GB/s is the object's bytes over that time; "
    "Third row: the node → node pull with TLS on every connection (TLS 1.3 through OpenSSL "
    "in user space: no sendfile or splice). "
    f"median of {TIMED} transfers after a warm-up, each a new object. Floor: {_size} sent "
    "over a loopback TCP socket between two processes (Python `sendall`/`recv_into`, 4 MiB "
    "at a time)."
)
PRIMARY = "shoal"
FLOOR = "tcp_loopback"
WARMUP_ROUND = False

SYSTEMS = [
    System("shoal", "shoal: node → node pull, object store to object store", n=SIZE, unit="GB/s",
           role="shoal", timeout=300),
    System("shoal_push", "shoal: head → node (a driver's put sent to the task's node)", n=SIZE,
           unit="GB/s", role="shoal", timeout=300),
    System("shoal_tls", "shoal: node → node pull with TLS (--tls-cert/--tls-key/--tls-ca)",
           n=SIZE, unit="GB/s", role="shoal", timeout=300),
    System("tcp_loopback", f"floor: loopback TCP bulk ({_size})", n=SIZE, unit="GB/s",
           role="floor", timeout=120),
]


def expected(system, params):
    return digest(params["n"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _certs(tmp):
    """A CA and a certificate for 127.0.0.1 signed by it, made by openssl in
    tmp: (ca, cert, key)."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True, timeout=30)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=shoal bench ca")
    run("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=node")
    with open(os.path.join(tmp, "node.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "node.ext")
    return [os.path.join(tmp, f) for f in ("ca.pem", "node.pem", "node.key")]


def _status(binary, address, token, tls_args=()):
    r = subprocess.run([binary, "status", "--json", "--address", address, "--token-file", token,
                        "--timeout", "5", *tls_args], capture_output=True, text=True, timeout=30)
    return json.loads(r.stdout) if r.returncode == 0 else None


def _stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=5)


def _shoal(n, pull, tls=False):
    import numpy as np
    import shoal
    from shoal import _cluster
    binary = _cluster.binary_path()
    tmp = tempfile.mkdtemp(prefix="shx-", dir="/tmp")
    token = os.path.join(tmp, "token")
    with open(os.open(token, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    port = _free_port()
    address = f"127.0.0.1:{port}"
    store = str(max(4 * n + (256 << 20), 1 << 30))
    procs = []
    try:
        ca, cert, key = _certs(tmp) if tls else (None, None, None)
        head_tls = ["--tls-cert", cert, "--tls-key", key] if tls else []
        node_tls = ["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key] if tls else []
        cli_tls = ["--tls-ca", ca] if tls else []
        procs.append(subprocess.Popen(
            [binary, "start", "--head", "--block", "--port", str(port), "--token-file", token,
             "--workers", "0", "--num-cpus", "0", "--socket-dir", os.path.join(tmp, "h"),
             "--object-store-memory", store, "--python", sys.executable, *head_tls],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while _status(binary, address, token, cli_tls) is None:
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError("the head did not start")
            time.sleep(0.05)
        for name in ("a", "b") if pull else ("b",):
            procs.append(subprocess.Popen(
                [binary, "start", "--address", address, "--block", "--token-file", token,
                 "--workers", "1", "--num-cpus", "1", "--socket-dir", os.path.join(tmp, name),
                 "--resources", json.dumps({name: 1}),
                 "--object-store-memory", store, "--python", sys.executable, *node_tls],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while sum(x["alive"] for x in (_status(binary, address, token, cli_tls) or {})
                  .get("nodes", [])) < len(procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("the node did not join")
            time.sleep(0.05)
        os.environ["SHOAL_TOKEN_FILE"] = token
        shoal.init(address=address, tls_ca=ca)

        @shoal.remote(resources={"b": 1})
        def size_of(x):
            return x.nbytes

        @shoal.remote(resources={"a": 1})
        def make(k):
            import numpy
            return numpy.ones(k)

        a = None if pull else np.ones(n // 8)
        rates, got = [], 0
        for i in range(TIMED + 1):
            ref = make.remote(n // 8) if pull else shoal.put(a)
            shoal.wait([ref], timeout=240)          # made, and still on A only
            if not ref.done():
                raise RuntimeError("the object was not made within 240 s")
            t0 = time.perf_counter()
            got = size_of.remote(ref).result(timeout=240)
            dt = time.perf_counter() - t0
            if i:
                rates.append(n / dt / 1e9)
            del ref
        rates.sort()
        return rates[len(rates) // 2], got
    finally:
        shoal.shutdown()
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def measure(system, params):
    n = params["n"]
    if system in ("shoal", "shoal_push", "shoal_tls"):
        rate, got = _shoal(n, pull=system != "shoal_push", tls=system == "shoal_tls")
        return {"value": rate, "check": digest(got)}
    if system == "tcp_loopback":
        from scenarios import floor
        rate, got = floor._tcp(n)
        return {"value": rate, "check": digest(got)}
    raise ValueError(system)
