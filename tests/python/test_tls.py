"""TLS on TCP (--tls-cert, --tls-key, --tls-ca): a driver, the command line
and a node agent work through TLS, and the bytes on the wire are not plain
text; a client without TLS, TLS to a plain head, an untrusted CA, a
certificate for another host, an expired one and mutual TLS without a client
certificate are refused with a clear message on both sides while the head
keeps serving; unusable files stop `shoal start` with exit status 2.

The certificates are made for each test session by the `openssl` command
(the tests skip without it): a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and the odd ones out."""

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

import shoal
from _helpers import binary, fresh, short_tmpdir  # noqa: F401
from test_auth import TOKEN, TcpDaemon
from test_cluster_nodes import Head, Node

pytestmark = pytest.mark.asan

T = 60


@shoal.remote
def echo(x):
    return x


@shoal.remote
def where(x):
    return x, os.environ["SHOAL_NODE_ID"]


# ---- certificates ----

def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"


def _key_and_csr(name, cn, cwd):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)


def _sign(name, ca, cwd, san=None, days="2"):
    args = ["x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", days]
    if san:
        with open(os.path.join(cwd, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName={san}\n")
        args += ["-extfile", f"{name}.ext"]
    _openssl(*args, cwd=cwd)


@pytest.fixture(scope="session")
def certs():
    """Paths of throwaway PEM files: ca, server (127.0.0.1 and localhost),
    client, other_ca and other_client (signed by it), wronghost (a server
    certificate for other.example only), expired (for 127.0.0.1)."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is not installed: cannot make test certificates")
    d = short_tmpdir("shtls-")
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=shoal test {ca}", cwd=d)
    for name, ca, san, days in (("server", "ca", "IP:127.0.0.1,DNS:localhost", "2"),
                                ("client", "ca", None, "2"),
                                ("other_client", "other_ca", None, "2"),
                                ("wronghost", "ca", "DNS:other.example", "2"),
                                ("expired", "ca", "IP:127.0.0.1,DNS:localhost", "0")):
        _key_and_csr(name, name, d)
        _sign(name, ca, d, san, days)
    time.sleep(1.1)  # "expired" was valid until the second it was made
    paths = {n: os.path.join(d, f"{n}.pem") for n in
             ("ca", "other_ca", "server", "client", "other_client", "wronghost", "expired")}
    for n in ("server", "client", "other_client", "wronghost", "expired"):
        paths[n + "_key"] = os.path.join(d, f"{n}.key")
    yield paths
    shutil.rmtree(d, ignore_errors=True)


# ---- daemons ----

def server_args(certs, cert="server", mutual=False):
    args = ["--tls-cert", certs[cert], "--tls-key", certs[cert + "_key"]]
    return args + (["--tls-ca", certs["ca"]] if mutual else [])


class TlsHead(Head):
    """A Head (no workers: work runs on nodes) whose TCP port speaks TLS;
    its command line uses `client_args`."""

    def __init__(self, certs, mutual=False, cert="server"):
        self.client_args = ["--tls-ca", certs["ca"]]
        if mutual:
            self.client_args += ["--tls-cert", certs["client"], "--tls-key", certs["client_key"]]
        super().__init__(*server_args(certs, cert, mutual))

    def cli(self, *args):
        return super().cli(*args, *self.client_args)


class TlsDaemon(TcpDaemon):
    """A TcpDaemon (one worker) whose TCP port speaks TLS; it is waited for
    with a status through TLS."""

    def __init__(self, certs, *args, cert="server", mutual=False):
        self.certs = certs
        self.mutual = mutual
        super().__init__(*server_args(certs, cert, mutual), *args)

    def log(self):
        """Stops the daemon and returns its log (stderr)."""
        return self.stop()[1]


def _tls_client_env(certs, mutual):
    env = {"SHOAL_TLS_CA": certs["ca"]}
    if mutual:
        env.update(SHOAL_TLS_CERT=certs["client"], SHOAL_TLS_KEY=certs["client_key"])
    return env


@pytest.fixture
def tls_env(monkeypatch, certs):
    """The environment a TcpDaemon's readiness probe (`shoal status`, which
    reads SHOAL_TLS_*) needs to reach a TLS daemon; removed after the test."""
    for k in ("SHOAL_TLS_CA", "SHOAL_TLS_CERT", "SHOAL_TLS_KEY"):
        monkeypatch.delenv(k, raising=False)

    def use(mutual=False):
        for k, v in _tls_client_env(certs, mutual).items():
            monkeypatch.setenv(k, v)

    def clear():
        for k in ("SHOAL_TLS_CA", "SHOAL_TLS_CERT", "SHOAL_TLS_KEY"):
            monkeypatch.delenv(k, raising=False)
    use.clear = clear
    return use


def start_tls_daemon(certs, tls_env, mutual=False, cert="server", *args):
    tls_env(mutual)
    try:
        return TlsDaemon(certs, *args, cert=cert, mutual=mutual)
    finally:
        tls_env.clear()


def cli(d, *args):
    return subprocess.run([binary(), *args, "--address", d.address, "--token-file",
                           d.token_file, "--timeout", "5"], capture_output=True, text=True,
                          timeout=30)


def init_and_run(address, **tls):
    shoal.init(address=address, token=TOKEN, **tls)
    try:
        assert shoal.get([echo.remote(i) for i in range(50)], timeout=T) == list(range(50))
    finally:
        shoal.shutdown()


class Proxy:
    """A TCP forwarder on loopback that records every byte both ways."""

    def __init__(self, port):
        self.target = port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.address = f"127.0.0.1:{self.lsock.getsockname()[1]}"
        self.seen = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.lsock.close()


# ---- tests ----

def test_tls_driver_and_command_line(fresh, certs, tls_env, monkeypatch):  # noqa: F811
    d = start_tls_daemon(certs, tls_env)
    try:
        init_and_run(d.address, tls_ca=certs["ca"])
        # The name in the certificate works as well as the address.
        init_and_run(f"localhost:{d.port}", tls_ca=certs["ca"])
        # From the environment.
        monkeypatch.setenv("SHOAL_TLS_CA", certs["ca"])
        init_and_run(d.address)
        monkeypatch.delenv("SHOAL_TLS_CA")
        st = cli(d, "status", "--json", "--tls-ca", certs["ca"])
        assert st.returncode == 0, st.stderr
        assert cli(d, "stop", "--tls-ca", certs["ca"]).returncode == 0
        d.proc.wait(timeout=15)
    finally:
        log = d.log()
    assert "speak TLS" in log, log


def test_tls_bytes_on_the_wire_are_not_plain(fresh, certs, tls_env):  # noqa: F811
    marker = "shoal-tls-marker-" + "x" * 20
    plain = TcpDaemon()
    try:
        p = Proxy(plain.port)
        shoal.init(address=p.address, token=TOKEN)
        assert shoal.get(echo.remote(marker), timeout=T) == marker
        shoal.shutdown()
        p.close()
        assert marker.encode() in bytes(p.seen), "the control (no TLS) should carry it in clear"
    finally:
        plain.stop()
    d = start_tls_daemon(certs, tls_env)
    try:
        p = Proxy(d.port)
        shoal.init(address=p.address, token=TOKEN, tls_ca=certs["ca"])
        assert shoal.get(echo.remote(marker), timeout=T) == marker
        shoal.shutdown()
        p.close()
        seen = bytes(p.seen)
        assert len(seen) > 1000
        assert marker.encode() not in seen
        assert b"SHOL" not in seen  # not even a frame header
    finally:
        d.stop()


def test_tls_plain_client_is_refused(fresh, certs, tls_env):  # noqa: F811
    d = start_tls_daemon(certs, tls_env)
    try:
        t0 = time.monotonic()
        with pytest.raises(shoal.AuthenticationError, match="requires TLS"):
            shoal.init(address=d.address, token=TOKEN)
        assert time.monotonic() - t0 < 5  # told, not timed out
        st = cli(d, "status")
        assert st.returncode == 1 and "requires TLS" in st.stderr, st.stderr
        init_and_run(d.address, tls_ca=certs["ca"])  # still serving
    finally:
        log = d.log()
    assert "refused: it sent nothing" in log and "client without TLS" in log, log


def test_tls_client_to_plain_head_is_refused(fresh, certs):  # noqa: F811
    d = TcpDaemon()
    try:
        with pytest.raises(shoal.AuthenticationError, match="does not use TLS"):
            shoal.init(address=d.address, token=TOKEN, tls_ca=certs["ca"])
        st = cli(d, "status", "--tls-ca", certs["ca"])
        assert st.returncode == 1 and "does not use TLS" in st.stderr, st.stderr
        init_and_run(d.address)
    finally:
        log = d.stop()[1]
    assert "it speaks TLS, and this daemon was started without --tls-cert" in log, log


def test_tls_untrusted_certificate_is_refused(fresh, certs, tls_env):  # noqa: F811
    d = start_tls_daemon(certs, tls_env)
    try:
        with pytest.raises(shoal.AuthenticationError,
                           match="certificate was refused: unable to get local issuer"):
            shoal.init(address=d.address, token=TOKEN, tls_ca=certs["other_ca"])
        st = cli(d, "status", "--tls-ca", certs["other_ca"])
        assert st.returncode == 1 and "certificate was refused" in st.stderr, st.stderr
        init_and_run(d.address, tls_ca=certs["ca"])
    finally:
        log = d.log()
    assert "refused: TLS: the peer refused this daemon's certificate" in log, log


@pytest.mark.parametrize("cert,expect", [
    ("wronghost", "Hostname mismatch|does not name 127.0.0.1"),
    ("expired", "certificate has expired"),
])
def test_tls_wrong_host_and_expired_certificate(fresh, certs, tls_env, cert, expect):  # noqa: F811
    # The daemon's own readiness probe would fail the same way: start it
    # without one and wait for the TCP port instead.
    tls_env.clear()
    port_dir = short_tmpdir("shtok-")
    from test_auth import free_port, write_token
    tok = write_token(port_dir)
    port = free_port()
    from _helpers import ExternalDaemon
    d = ExternalDaemon("--port", str(port), "--token-file", tok, *server_args(certs, cert),
                       workers=0)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the daemon did not listen"
                time.sleep(0.05)
        with pytest.raises(shoal.AuthenticationError, match=expect):
            shoal.init(address=f"127.0.0.1:{port}", token=TOKEN, tls_ca=certs["ca"])
    finally:
        log = d.stop()[1]
        shutil.rmtree(port_dir, ignore_errors=True)
    assert "refused: TLS" in log, log


def test_tls_mutual(fresh, certs, tls_env):  # noqa: F811
    d = start_tls_daemon(certs, tls_env, mutual=True)
    try:
        with pytest.raises(shoal.AuthenticationError, match="requires a client certificate"):
            shoal.init(address=d.address, token=TOKEN, tls_ca=certs["ca"])
        with pytest.raises(shoal.AuthenticationError, match="refused this client's certificate"):
            shoal.init(address=d.address, token=TOKEN, tls_ca=certs["ca"],
                       tls_cert=certs["other_client"], tls_key=certs["other_client_key"])
        st = cli(d, "status", "--tls-ca", certs["ca"])
        assert st.returncode == 1 and "client certificate" in st.stderr, st.stderr
        init_and_run(d.address, tls_ca=certs["ca"], tls_cert=certs["client"],
                     tls_key=certs["client_key"])
    finally:
        log = d.log()
    assert "refused: TLS: the peer presented no certificate" in log, log
    assert "refused: TLS: the peer's certificate was refused" in log, log


def test_tls_node_joins_and_runs_tasks(fresh, certs):  # noqa: F811
    head = TlsHead(certs, mutual=True)
    node = None
    try:
        node = Node(head, *head.client_args)
        shoal.init(address=head.address, token=TOKEN, tls_ca=certs["ca"],
                   tls_cert=certs["client"], tls_key=certs["client_key"])
        got = shoal.get([where.remote(i) for i in range(100)], timeout=T)
        assert [g[0] for g in got] == list(range(100))
        assert {g[1] for g in got} == {str(node.node_id)}
        # Objects bigger than a chunk go both ways through TLS too (their
        # bytes pass through the daemons' buffers, not sendfile/splice).
        blob = os.urandom(9 << 20)
        assert echo.remote(shoal.put(blob)).result(timeout=T) == blob
        shoal.shutdown()
        # A node that does not trust the head's CA does not join, and says why.
        bad = Node(head, "--tls-ca", certs["other_ca"], "--tls-cert", certs["client"],
                   "--tls-key", certs["client_key"], wait=False)
        time.sleep(1.5)
        assert bad.proc.poll() is None
        assert all(n["pid"] != bad.pid for n in head.nodes().values())
        err = bad.stop()[1]
        assert "cannot join the head" in err and "certificate was refused" in err, err
    finally:
        shoal.shutdown()
        if node:
            node.stop()
        head.stop()


def test_tls_unusable_files_stop_start(certs, tmp_path):
    def start(*args):
        return subprocess.run([binary(), "start", "--head", "--block", "--port", "1",
                               "--socket-dir", str(tmp_path / "s"), *args],
                              capture_output=True, text=True, timeout=30)
    missing = str(tmp_path / "missing.key")
    r = start("--tls-cert", certs["server"], "--tls-key", missing)
    assert r.returncode == 2 and missing in r.stderr and "No such file" in r.stderr, r.stderr
    r = start("--tls-cert", certs["server"], "--tls-key", certs["client_key"])
    assert r.returncode == 2 and "does not belong to the certificate" in r.stderr, r.stderr
    r = start("--tls-cert", certs["ca"], "--tls-key", certs["server"])
    assert r.returncode == 2 and "no usable PEM private key" in r.stderr, r.stderr
    r = start("--tls-ca", certs["ca"])
    assert r.returncode == 2 and "--tls-cert and --tls-key" in r.stderr, r.stderr


def test_tls_stuck_handshake_hits_the_auth_deadline(fresh, certs, tls_env):  # noqa: F811
    d = start_tls_daemon(certs, tls_env, False, "server", "--auth-timeout", "1")
    try:
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        s.settimeout(10)
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the daemon
        assert time.monotonic() - t0 < 5
        s.close()
        init_and_run(d.address, tls_ca=certs["ca"])
    finally:
        log = d.log()
    assert "did not authenticate within 1 s" in log, log
