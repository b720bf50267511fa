"""floor: what the hardware allows, measured in the same run as the peers.

* Unix-socket ping-pong between two processes (the floor for a synchronous
  round trip): 64-byte messages over a socketpair, echoed by a forked process.
* memcpy bandwidth: numpy copy of 256 MiB into a pre-faulted buffer.
* loopback TCP bulk bandwidth: 1 GiB from one process to another over 127.0.0.1.
"""

import os
import socket
import statistics
import struct
import time

from harness import System, digest

NAME = "floor"
TITLE = "floor: hardware limits"
DESCRIPTION = (
    "Unix-socket ping-pong: median of per-round-trip times of 64-byte messages "
    "between two processes over a socketpair. memcpy: numpy copy of 256 MiB into "
    "a pre-faulted array (bytes copied per second). Loopback TCP: 1 GiB sent "
    "from one process to another over 127.0.0.1 (bytes per second)."
)
PRIMARY = None
FLOOR = None
WARMUP_ROUND = False

SYSTEMS = [
    System("unix_pingpong", "Unix-socket ping-pong round trip (Python)", n=20_000, unit="µs", better="lower",
           role="floor", timeout=120),
    System("unix_pingpong_c", "Unix-socket ping-pong round trip (C)", n=20_000, unit="µs", better="lower",
           role="floor", timeout=120),
    System("memcpy", "memcpy (numpy copy, 256 MiB)", n=256 << 20, unit="GB/s", role="floor", timeout=120),
    System("tcp_loopback", "loopback TCP bulk (1 GiB)", n=1 << 30, unit="GB/s", role="floor", timeout=120),
]

MSG = 64


def expected(system, params):
    if system in ("unix_pingpong", "unix_pingpong_c"):
        return digest(params["n"])
    if system == "memcpy":
        return "equal"
    return digest(params["n"])


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("peer closed")
        buf += chunk
    return buf


def pingpong(n, warm=1000):
    """Times n round trips of a MSG-byte message between this process and a
    forked echo process. Returns (per-round-trip times in µs, echoed ints)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            a.close()
            fd = b.fileno()
            while True:
                m = os.read(fd, MSG)
                if not m:
                    break
                if len(m) < MSG:
                    m += _read_exact(fd, MSG - len(m))
                os.write(fd, m)
        finally:
            os._exit(0)
    b.close()
    fd = a.fileno()
    pad = b"\0" * (MSG - 8)
    times = []
    got = []
    try:
        for i in range(-warm, n):
            msg = struct.pack("<q", i) + pad
            t0 = time.perf_counter_ns()
            os.write(fd, msg)
            r = os.read(fd, MSG)
            if len(r) < MSG:
                r += _read_exact(fd, MSG - len(r))
            t1 = time.perf_counter_ns()
            if i >= 0:
                times.append((t1 - t0) / 1e3)
                got.append(struct.unpack("<q", r[:8])[0])
    finally:
        a.close()
        os.waitpid(pid, 0)
    return times, got


def pingpong_c(n, warm=1000):
    """The same ping-pong from bench/pingpong.c, compiled with the system's cc
    (ImportError, reported as "not installed", when there is no compiler)."""
    import shutil
    import subprocess
    import tempfile
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise ImportError("no C compiler (cc) for the C ping-pong")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pingpong.c")
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as d:
        exe = os.path.join(d, "pingpong")
        subprocess.run([cc, "-O2", "-o", exe, src], check=True, capture_output=True)
        out = subprocess.run([exe, str(n), str(warm), str(MSG)], check=True, capture_output=True,
                             text=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def _memcpy(nbytes):
    import numpy as np
    src = (np.arange(nbytes, dtype=np.uint64) % 251).astype(np.uint8) if nbytes < (1 << 20) else \
        np.frombuffer(bytes(range(256)) * (nbytes // 256), dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # pre-fault
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        rates.append(nbytes / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates), ("equal" if np.array_equal(dst, src) else "differs")


def _tcp(nbytes, chunk=4 << 20):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        try:
            ls.close()
            s = socket.create_connection(("127.0.0.1", port))
            buf = bytearray(chunk)
            mv = memoryview(buf)
            for _ in range(2):  # warm-up pass, then the timed one
                total = 0
                while total < nbytes:
                    k = s.recv_into(mv, min(chunk, nbytes - total))
                    if not k:
                        raise EOFError
                    total += k
                s.sendall(struct.pack("<q", total))
            s.close()
        finally:
            os._exit(0)
    conn, _ = ls.accept()
    ls.close()
    data = memoryview(bytes(chunk))
    results = []
    try:
        for _ in range(2):
            t0 = time.perf_counter()
            sent = 0
            while sent < nbytes:
                k = min(chunk, nbytes - sent)
                conn.sendall(data[:k])
                sent += k
            ack = struct.unpack("<q", _sock_exact(conn, 8))[0]
            results.append((nbytes / (time.perf_counter() - t0) / 1e9, ack))
    finally:
        conn.close()
        os.waitpid(pid, 0)
    return results[-1]


def _sock_exact(s, n):
    buf = b""
    while len(buf) < n:
        c = s.recv(n - len(buf))
        if not c:
            raise EOFError
        buf += c
    return buf


def measure(system, params):
    n = params["n"]
    if system == "unix_pingpong":
        times, got = pingpong(n)
        ok = got == list(range(n))
        return {"value": statistics.median(times), "check": digest(n) if ok else "mismatch",
                "extra": {"mean_us": statistics.fmean(times)}}
    if system == "unix_pingpong_c":
        med, mean, checked = pingpong_c(n)
        return {"value": med, "check": digest(checked), "extra": {"mean_us": mean}}
    if system == "memcpy":
        rate, check = _memcpy(n)
        return {"value": rate, "check": check}
    if system == "tcp_loopback":
        rate, got = _tcp(n)
        return {"value": rate, "check": digest(got)}
    raise ValueError(system)
