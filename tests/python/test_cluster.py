"""init/shutdown, addresses, a daemon started with `shoal start`, the command
line, a killed driver, and bad frames on the socket."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

import shoal
from _helpers import (NUM_WORKERS, ExternalDaemon, binary, cluster, descendants,  # noqa: F401
                      env_with_shoal, fresh, proc_alive, wait_pool_full, wait_until)
from shoal import _api

T = 30
MAGIC = 0x4C4F4853
HDR = struct.Struct("<IBBHQII")  # magic, version, type, flags, id, len, reserved
HELLO, SUBMIT = 1, 4


@shoal.remote
def square(x):
    return x * x


@pytest.mark.asan
def test_init_twice_and_reinit(fresh):  # noqa: F811
    assert not shoal.is_initialized()
    info = shoal.init(num_workers=1)
    assert shoal.is_initialized()
    assert info["embedded"] and info["node"]["num_workers"] == 1
    with pytest.raises(RuntimeError, match="already") as ei:
        shoal.init()
    assert "shutdown" in str(ei.value) and "ignore_reinit_error" in str(ei.value)
    assert shoal.init(ignore_reinit_error=True)["address"] == info["address"]
    assert square.remote(3).result(timeout=T) == 9
    daemon = _api._state.daemon
    shoal.shutdown()
    assert not shoal.is_initialized()
    assert daemon.process.poll() is not None          # the private daemon stopped
    assert not os.path.exists(daemon.socket_dir)       # and removed its directory
    shoal.shutdown()                                   # a second shutdown is a no-op
    shoal.init(num_workers=1)
    assert square.remote(4).result(timeout=T) == 16    # re-registered with the new client
    shoal.shutdown()


def test_pending_futures_fail_on_shutdown(fresh):  # noqa: F811
    shoal.init(num_workers=1)

    @shoal.remote
    def sleeper():
        time.sleep(30)
    f = sleeper.remote()
    shoal.shutdown()
    with pytest.raises(shoal.ConnectionLostError):
        f.result(timeout=T)


def test_auto_init_on_first_use(fresh):  # noqa: F811
    assert not shoal.is_initialized()
    assert square.remote(5).result(timeout=T) == 25
    assert shoal.is_initialized() and _api._state.embedded


def test_init_argument_errors(fresh):  # noqa: F811
    with pytest.raises(ValueError):
        shoal.init(num_workers=0)
    with pytest.raises(TypeError):
        shoal.init(num_workers="2")
    with pytest.raises(TypeError):
        shoal.init(resources={"foo": "many"})
    with pytest.raises(ValueError):
        shoal.init(resources={"foo": -1})
    with pytest.raises(ValueError):
        shoal.init("not an address")
    with pytest.raises(ConnectionError):
        shoal.init("/nonexistent/dir/agent.sock")
    with pytest.raises(ValueError, match="private cluster"):
        shoal.init("auto", num_workers=2)
    assert not shoal.is_initialized()


def test_init_auto_without_cluster(fresh, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SHOAL_SOCKET_DIR", str(tmp_path))
    with pytest.raises(ConnectionError, match="shoal start"):
        shoal.init("auto")


def test_custom_resources(fresh):  # noqa: F811
    shoal.init(num_workers=2, resources={"widget": 2, "CPU": 3})
    assert shoal.status()["nodes"][0]["resources_total"]["widget"] == 2
    assert _api._state.client.node_info["CPU"] == 3

    @shoal.remote(resources={"widget": 1}, num_cpus=0)
    def uses_widget():
        return "widget"
    assert uses_widget.remote().result(timeout=T) == "widget"
    with pytest.raises(shoal.InfeasibleResourcesError, match="widget"):
        uses_widget.options(resources={"widget": 3}).remote().result(timeout=5)


@pytest.mark.asan
def test_start_head_block_and_connect(fresh, monkeypatch):  # noqa: F811
    d = ExternalDaemon()
    try:
        # by directory, by socket path, unix:PATH, "auto" and SHOAL_ADDRESS
        for address in (d.dir, d.sock, "unix:" + d.sock):
            info = shoal.init(address)
            assert not info["embedded"]
            f = shoal.remote(lambda x: x + 1)
            assert f.remote(1).result(timeout=T) == 2
            shoal.shutdown()
            assert d.proc.poll() is None                  # a shared daemon outlives drivers
        monkeypatch.setenv("SHOAL_SOCKET_DIR", d.dir)
        shoal.init("auto")
        assert shoal.get([square.remote(i) for i in range(10)], timeout=T) == [i * i for i in range(10)]
        shoal.shutdown()
        monkeypatch.delenv("SHOAL_SOCKET_DIR")
        monkeypatch.setenv("SHOAL_ADDRESS", d.sock)
        shoal.init()
        assert not _api._state.embedded
        assert shoal.status()["workers"]["pool_size"] == NUM_WORKERS
        shoal.shutdown()
        # the CLI against it
        env = env_with_shoal()
        st = subprocess.run([binary(), "status", "--socket-dir", d.dir, "--json"],
                            capture_output=True, text=True, timeout=T, env=env)
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["workers"]["pool_size"] == NUM_WORKERS
        st = subprocess.run([sys.executable, "-m", "shoal", "status", "--socket-dir", d.dir],
                            capture_output=True, text=True, timeout=T, env=env)
        assert st.returncode == 0 and "worker" in st.stdout.lower(), st.stdout + st.stderr
        stop = subprocess.run([binary(), "stop", "--socket-dir", d.dir],
                              capture_output=True, text=True, timeout=T, env=env)
        assert stop.returncode == 0, stop.stderr
        d.proc.wait(timeout=T)
        assert d.proc.returncode == 0
    finally:
        d.stop()


def test_tcp_port(fresh, tmp_path, monkeypatch):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # TCP needs the cluster token (tests/python/test_auth.py tests it); the
    # head creates this file.
    token_file = str(tmp_path / "token")
    d = ExternalDaemon("--port", str(port), "--token-file", token_file)
    try:
        wait_until(lambda: _can_connect(port), 10, 0.05, "the TCP listener")
        monkeypatch.setenv("SHOAL_TOKEN_FILE", token_file)
        shoal.init(f"127.0.0.1:{port}")
        assert square.remote(12).result(timeout=T) == 144
        shoal.shutdown()
    finally:
        d.stop()


def _can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_cli_help_and_bad_flags():
    env = env_with_shoal()
    for argv in ([binary(), "--help"], [sys.executable, "-m", "shoal", "--help"]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=T, env=env)
        assert r.returncode == 0 and "start" in r.stdout and "status" in r.stdout
    r = subprocess.run([binary(), "start", "--help"], capture_output=True, text=True, timeout=T)
    assert r.returncode == 0
    for flag in ("--head", "--port", "--workers", "--socket-dir", "--block"):
        assert flag in r.stdout
    r = subprocess.run([binary(), "start", "--head", "--bogus"], capture_output=True, text=True,
                       timeout=T)
    assert r.returncode == 2 and "--bogus" in r.stderr and "usage" in r.stderr
    r = subprocess.run([binary(), "frobnicate"], capture_output=True, text=True, timeout=T)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run([binary(), "status", "--socket-dir", "/nonexistent-shoal"],
                       capture_output=True, text=True, timeout=T)
    assert r.returncode != 0 and r.stderr


DRIVER = textwrap.dedent("""
    import os, sys, time
    import shoal
    shoal.init(num_workers=2)

    @shoal.remote
    def forever(i):
        time.sleep(120)

    @shoal.remote
    class Holder:
        def pid(self):
            return os.getpid()

    h = Holder.remote()
    h.pid.remote().result(timeout=30)
    futs = [forever.remote(i) for i in range(6)]
    st = shoal.status()
    assert st["workers"]["busy"] >= 1 or time.sleep(1) is None
    print("READY", shoal._api._state.daemon.pid, shoal._api._state.daemon.socket_dir, flush=True)
    time.sleep(120)
""")


@pytest.mark.asan
def test_killed_driver_leaves_no_orphans(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env_with_shoal())
    try:
        line = p.stdout.readline()
        assert line.startswith("READY"), line + p.stderr.read() if p.poll() is not None else line
        _, daemon_pid, sock_dir = line.split()
        daemon_pid = int(daemon_pid)
        procs = [daemon_pid] + descendants(daemon_pid)
        assert len(procs) >= 1 + 2 + 1, procs        # daemon, pool workers, the actor
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=T)
        wait_until(lambda: not any(proc_alive(x) for x in procs), 15, 0.05,
                   f"the daemon and workers {procs} to exit")
        assert not os.path.exists(sock_dir)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=T)


def test_driver_exit_stops_private_cluster():
    r = subprocess.run(
        [sys.executable, "-c", "import shoal; shoal.init(num_workers=1); "
         "print(shoal._api._state.daemon.pid, flush=True); "
         "print(shoal.remote(abs).remote(-3).result(timeout=30))"],
        capture_output=True, text=True, timeout=60, env=env_with_shoal())
    assert r.returncode == 0, r.stderr
    pid, value = r.stdout.split()
    assert value == "3"
    wait_until(lambda: not proc_alive(int(pid)), 10, 0.05, "the daemon to exit")


def _raw_socket(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def _closed_by_peer(s):
    """Reads until EOF (an ERROR frame may come first); True if the peer closed."""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _hello():
    body = struct.pack("<IIII", 1, os.getpid(), 0, 0)
    return HDR.pack(MAGIC, 1, HELLO, 0, 0, len(body), 0) + body


@pytest.mark.asan
@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                          # not a shoal peer
    HDR.pack(MAGIC, 9, HELLO, 0, 0, 16, 0),                         # wrong version
    HDR.pack(MAGIC, 1, 200, 0, 0, 0, 0),                            # unknown type
    HDR.pack(MAGIC, 1, HELLO, 0, 0, 0xFFFFFFF0, 0),                 # oversized, before HELLO
    "after-hello-oversized",
    "after-hello-bad-body",
], ids=["garbage", "version", "type", "oversized", "oversized-after-hello", "bad-body"])
def test_bad_frames_close_only_that_connection(cluster, payload):  # noqa: F811
    path = cluster.client.address
    bystander = _raw_socket(path)
    bystander.sendall(_hello())
    s = _raw_socket(path)
    if payload == "after-hello-oversized":
        s.sendall(_hello())
        payload = HDR.pack(MAGIC, 1, SUBMIT, 0, 1, 0xFFFFFFF0, 0) + b"\0" * 64
    elif payload == "after-hello-bad-body":
        s.sendall(_hello())
        payload = HDR.pack(MAGIC, 1, SUBMIT, 0, 1, 5, 0) + b"\1\2\3\4\5"
    s.sendall(payload)
    assert _closed_by_peer(s), "the daemon did not close the connection"
    s.close()
    # the daemon keeps serving: this driver and the other raw connection
    assert square.remote(11).result(timeout=T) == 121
    bystander.settimeout(0.2)
    try:
        assert bystander.recv(1 << 16) != b""        # HELLO_OK, and still open
    except socket.timeout:
        pass
    bystander.close()
    assert cluster.daemon.process.poll() is None


def test_daemon_start_failure_is_reported(fresh, tmp_path, monkeypatch):  # noqa: F811
    fake = tmp_path / "fake-shoal"
    fake.write_text("#!/bin/sh\necho 'fake daemon: cannot bind' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("SHOAL_BINARY", str(fake))
    t0 = time.monotonic()
    with pytest.raises(shoal.ShoalError) as ei:
        shoal.init()
    assert time.monotonic() - t0 < 10
    assert "exit status 3" in str(ei.value) and "cannot bind" in str(ei.value)
    assert not shoal.is_initialized()
    monkeypatch.setenv("SHOAL_BINARY", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="SHOAL_BINARY"):
        shoal.init()


def test_workers_import_what_the_driver_imports(fresh, tmp_path, monkeypatch):  # noqa: F811
    """Modules importable in the driver (its sys.path) import in the workers
    of a private cluster, as with multiprocessing's spawn."""
    (tmp_path / "shoal_test_helper_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import shoal_test_helper_mod
    shoal.init(num_workers=1)
    f = shoal.remote(shoal_test_helper_mod.triple)
    assert f.remote(5).result(timeout=T) == 15


SHARED_DRIVER = textwrap.dedent("""
    import sys, time
    import shoal
    shoal.init(sys.argv[1])

    @shoal.remote
    def forever(i):
        time.sleep(120)

    futs = [forever.remote(i) for i in range(10)]
    while shoal.status()["tasks"]["running"] < 2:
        time.sleep(0.02)
    print("READY", flush=True)
    time.sleep(120)
""")


def test_killed_driver_tasks_are_cancelled_on_shared_daemon(fresh, tmp_path):  # noqa: F811
    d = ExternalDaemon()
    try:
        script = tmp_path / "driver.py"
        script.write_text(SHARED_DRIVER)
        p = subprocess.Popen([sys.executable, str(script), d.sock], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env_with_shoal())
        try:
            line = p.stdout.readline()
            assert line.startswith("READY"), line + (p.stderr.read() if p.poll() is not None else "")
            shoal.init(d.sock)
            before = [w["pid"] for w in shoal.status()["workers"]["list"]]
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=T)
        finally:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=T)

        def settled():
            st = shoal.status()
            t = st["tasks"]
            pool = [w for w in st["workers"]["list"] if w["state"] != "actor"]
            return (t["queued"] == 0 and t["running"] == 0 and len(pool) == NUM_WORKERS and
                    all(w["state"] == "idle" for w in pool) and st["drivers"] == 1 and
                    not set(before) & {w["pid"] for w in pool})   # workers were replaced
        wait_until(settled, 15, 0.05, "the dead driver's tasks to be cancelled")
        wait_until(lambda: not any(proc_alive(x) for x in before), 10, 0.05, "old workers to exit")
        assert square.remote(6).result(timeout=T) == 36   # the daemon serves the others
        shoal.shutdown()
        assert d.proc.poll() is None
    finally:
        d.stop()


def test_init_from_a_thread_that_exits(fresh):  # noqa: F811
    """The private cluster belongs to the process: it survives the thread that
    happened to call init() (e.g. the first use was in a worker thread)."""
    import threading
    t = threading.Thread(target=shoal.init, kwargs={"num_workers": 1})
    t.start()
    t.join(timeout=T)
    time.sleep(0.5)
    assert _api._state.daemon.process.poll() is None, "the daemon died with the thread"
    assert square.remote(7).result(timeout=T) == 49
