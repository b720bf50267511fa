"""TLS on TCP (--tls-cert, --tls-key, --tls-ca): a driver, the command line
and a node agent work through TLS, and the bytes on the wire are not plain
text; a client without TLS, TLS to a plain head, an untrusted CA, a
certificate for another host, an expired one and mutual TLS without a client
certificate are refused with a clear message on both sides while the head
keeps serving; unusable files stop `shoal start` with exit status 2. Node
ports speak TLS too: an object pulled node to node crosses it encrypted
(a loopback capture sees none of its bytes), mismatches are refused.

The certificates are made for each test session by the `openssl` command
(the tests skip without it): a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and the odd ones out."""

import hashlib
import hmac
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import shoal
from _helpers import binary, fresh, short_tmpdir  # noqa: F401
from test_auth import TOKEN, TcpDaemon
from test_cluster_nodes import Head, Node
from test_pull import _hdr, _read_frame

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


# ---- the node port: objects between nodes ----

MiB = 1 << 20
# 64 bytes that the object repeats: what a capture of the node port looks for.
PATTERN = b"shoal-node-port-plaintext-marker/" + bytes(range(31))


@shoal.remote(resources={"ra": 1})
def make_pattern(n):
    import numpy as np
    return np.frombuffer(PATTERN * (n // len(PATTERN)), dtype=np.uint8).copy()


@shoal.remote(resources={"rb": 1})
def check_pattern(x):
    import numpy as np
    want = np.frombuffer(PATTERN * (len(x) // len(PATTERN)), dtype=np.uint8)
    return bool((x == want).all()), int(x.nbytes), os.environ["SHOAL_NODE_ID"]


class Capture:
    """Records the TCP payloads to and from a port on loopback, as the
    kernel passes them (a raw packet socket, so root only: skips
    otherwise), and counts what the kernel dropped."""

    def __init__(self, port):
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
        except (PermissionError, AttributeError, OSError) as e:
            pytest.skip(f"cannot capture packets on loopback here: {e}")
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 30)  # SO_RCVBUFFORCE
        self.sock.bind(("lo", 0))
        self.port = port
        self.payloads = []
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.done:
            try:
                pkt, addr = self.sock.recvfrom(1 << 17)
            except socket.timeout:
                continue
            except OSError:
                return
            # Loopback shows each packet twice: keep the incoming copy.
            if addr[2] == socket.PACKET_OUTGOING or pkt[12:14] != b"\x08\x00" or pkt[23] != 6:
                continue
            ip = 14 + (pkt[14] & 15) * 4
            sport, dport = int.from_bytes(pkt[ip:ip + 2], "big"), int.from_bytes(pkt[ip + 2:ip + 4], "big")
            if self.port in (sport, dport):
                self.payloads.append(pkt[ip + (pkt[ip + 12] >> 4) * 4:])

    def stop(self):
        """Stops; returns (bytes seen, packets dropped by the kernel)."""
        time.sleep(0.3)  # what is in flight reaches the socket
        self.done = True
        self.thread.join(5)
        drops = struct.unpack("II", self.sock.getsockopt(263, 6, 8))[1]  # PACKET_STATISTICS
        self.sock.close()
        return self.payloads, drops


def tls_node_args(certs):
    """A node's TLS files: the cluster's CA and its own certificate, which
    names 127.0.0.1 (other nodes check that when they pull from it)."""
    return ["--tls-ca", certs["ca"], "--tls-cert", certs["server"], "--tls-key",
            certs["server_key"]]


def node_port_of(node):
    r = subprocess.run([binary(), "status", "--json", "--socket-dir", node.dir],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    host, port = json.loads(r.stdout)["head"]["node_port"].rsplit(":", 1)
    return host, int(port)


def pull_through_capture(head, a, b, size):
    """A task on B reads an object of `size` bytes made on A while the
    node port's packets are captured. Returns (payloads, drops)."""
    ref = make_pattern.remote(size)
    shoal.wait([ref], timeout=T)
    cap = Capture(node_port_of(a)[1])
    try:
        got = check_pattern.remote(ref).result(timeout=T)
    finally:
        payloads, drops = cap.stop()
    assert got == (True, size, str(b.node_id))
    return payloads, drops


def test_tls_node_port_pull_is_encrypted(fresh, certs):  # noqa: F811
    size = 16 * MiB
    # The control: without TLS the pattern crosses the node port in clear.
    head = Head()
    nodes = []
    try:
        nodes = [Node(head, resources={"ra": 1}), Node(head, resources={"rb": 1})]
        shoal.init(address=head.address, token=TOKEN)
        payloads, drops = pull_through_capture(head, *nodes, size)
        assert drops == 0
        assert any(PATTERN in p for p in payloads), "the control should carry it in clear"
    finally:
        shoal.shutdown()
        for n in nodes:
            n.stop()
        head.stop()
    # With TLS (mutual at the head; each node with its own certificate).
    head = TlsHead(certs, mutual=True)
    nodes = []
    try:
        nodes = [Node(head, *tls_node_args(certs), resources={"ra": 1}),
                 Node(head, *tls_node_args(certs), resources={"rb": 1})]
        shoal.init(address=head.address, token=TOKEN, tls_ca=certs["ca"],
                   tls_cert=certs["client"], tls_key=certs["client_key"])
        payloads, drops = pull_through_capture(head, *nodes, size)
        assert drops == 0
        seen = sum(len(p) for p in payloads)
        assert seen > size, f"only {seen} bytes crossed the node port"
        assert not any(PATTERN in p for p in payloads)
        assert not any(b"SHOL" in p for p in payloads)  # not even a frame header
        # Node to node: the head never had it.
        st = head.cli("status", "--json")
        assert json.loads(st.stdout)["store"]["received_objects"] == 0
    finally:
        shoal.shutdown()
        logs = [n.stop()[1] for n in nodes]
        head.stop()
    assert "node port" in logs[0] and "closing connection" not in logs[0], logs[0]


@pytest.fixture
def tls_two_nodes(fresh, certs):  # noqa: F811
    """A TLS head and TLS nodes A ("ra") and B ("rb"); the driver connected."""
    head = TlsHead(certs)
    nodes = []
    try:
        nodes = [Node(head, *tls_node_args(certs), resources={"ra": 1}),
                 Node(head, *tls_node_args(certs), resources={"rb": 1})]
        shoal.init(address=head.address, token=TOKEN, tls_ca=certs["ca"])
        yield head, nodes
    finally:
        shoal.shutdown()
        for n in nodes:
            if n.proc.poll() is None:
                n.stop()
        head.stop()


def test_tls_node_port_refuses_plain_peers(tls_two_nodes, certs):
    head, (a, b) = tls_two_nodes
    addr = node_port_of(a)
    # A peer without TLS waits for the challenge: it is told in a plain ERROR.
    with socket.create_connection(addr, timeout=10) as s:
        typ, body = _read_frame(s)
        assert typ == 16 and b"requires TLS on its node port" in body, body
    # One that sends plain shoal frames fails the handshake.
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(b"SHOL" + bytes(20))
        s.settimeout(10)
        try:  # closed by the node, after a TLS alert or with a reset
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    # The node keeps serving: a pull through TLS still works.
    ref = make_pattern.remote(4 * MiB)
    assert check_pattern.remote(ref).result(timeout=T) == (True, 4 * MiB, str(b.node_id))
    shoal.shutdown()
    log = a.stop()[1]
    assert "to the node port refused: it sent nothing" in log, log
    assert "the peer speaks shoal without TLS, and this daemon requires TLS" in log, log


def test_tls_node_port_token_inside_tls(tls_two_nodes, certs):
    """The node port wants a client certificate signed by the CA (mutual
    TLS); through TLS with one, it still asks for the token; with the token,
    a PULL is answered."""
    head, (a, b) = tls_two_nodes
    ctx = ssl.create_default_context(cafile=certs["ca"])
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        with ctx.wrap_socket(socket.create_connection(node_port_of(a), timeout=10),
                             server_hostname="127.0.0.1") as s:
            _read_frame(s)
    ctx.load_cert_chain(certs["client"], certs["client_key"])
    with open(head.token_file, "rb") as f:
        tok = f.read().strip()
    with ctx.wrap_socket(socket.create_connection(node_port_of(a), timeout=10),
                         server_hostname="127.0.0.1") as s:
        typ, body = _read_frame(s)
        assert typ == 20 and len(body) == 40  # AUTH_CHALLENGE
        ns, nc = body[8:40], os.urandom(32)
        proof = hmac.new(tok, ns + nc + b"shoal-auth-v1 client", hashlib.sha256).digest()
        s.sendall(_hdr(21, 64) + nc + proof)
        assert _read_frame(s)[0] == 22
        s.sendall(_hdr(1, 16) + struct.pack("<IIII", 5, os.getpid(), 0, 0) + _hdr(32, 0, 12345))
        typ, body = _read_frame(s)
        assert typ == 33 and struct.unpack("<I", body[:4])[0] == 7  # LOST: not held


def test_tls_client_to_plain_node_port_is_refused(fresh):  # noqa: F811
    head = Head()
    node = None
    try:
        node = Node(head)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(socket.create_connection(node_port_of(node), timeout=10))
        # The node's side: the client above may reset the connection (it
        # failed on the node's first frame) before the node read its hello,
        # and a reset drops what was unread. A client that waits for the node
        # to close sees it refused with the reason.
        with socket.create_connection(node_port_of(node), timeout=10) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))
            while s.recv(65536):
                pass
    finally:
        log = node.stop()[1] if node else ""
        head.stop()
    assert "it speaks TLS, and this node joined its cluster without --tls-cert" in log, log


def test_tls_node_without_a_certificate_does_not_start(certs, tmp_path):
    r = subprocess.run([binary(), "start", "--address", "127.0.0.1:1", "--block", "--socket-dir",
                        str(tmp_path / "s"), "--tls-ca", certs["ca"]],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "SHOAL_TOKEN": "x" * 64})
    assert r.returncode == 2, r
    assert "a node with TLS needs its own certificate and key" in r.stderr, r.stderr
    assert "--node-port -1" in r.stderr
    # Without a node port it needs none: it starts (and tries to join).
    p = subprocess.Popen([binary(), "start", "--address", "127.0.0.1:1", "--block",
                          "--socket-dir", str(tmp_path / "s2"), "--tls-ca", certs["ca"],
                          "--node-port", "-1", "--workers", "0"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "SHOAL_TOKEN": "x" * 64})
    try:
        time.sleep(1.0)
        assert p.poll() is None, p.communicate()
    finally:
        p.terminate()
        err = p.communicate(timeout=15)[1]
    assert "cannot join the head" in err, err


def test_tls_node_certificate_for_another_address_fails_pulls(fresh, certs):  # noqa: F811
    """A node whose certificate does not name the address it is reached at
    joins (the head does not check it), but pulls from it fail, saying why;
    the pulling node keeps working."""
    head = TlsHead(certs)
    nodes = []
    try:
        wrong = ["--tls-ca", certs["ca"], "--tls-cert", certs["wronghost"], "--tls-key",
                 certs["wronghost_key"]]
        nodes = [Node(head, *wrong, resources={"ra": 1}),
                 Node(head, *tls_node_args(certs), resources={"rb": 1})]
        shoal.init(address=head.address, token=TOKEN, tls_ca=certs["ca"])
        ref = make_pattern.remote(2 * MiB)
        with pytest.raises(shoal.ObjectLostError, match="subjectAltName does not name 127.0.0.1"):
            check_pattern.remote(ref).result(timeout=T)
        # B still runs what needs nothing from A.
        import numpy as np
        small = np.frombuffer(PATTERN, dtype=np.uint8)
        assert shoal.get(check_pattern.remote(small), timeout=T) == (True, 64, str(nodes[1].node_id))
    finally:
        shoal.shutdown()
        logs = [n.stop()[1] for n in nodes]
        head.stop()
    assert "TLS: the daemon's certificate was refused: IP address mismatch" in logs[1], logs[1]
