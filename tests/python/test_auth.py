"""The cluster token on TCP: a driver and the command line that hold it get in;
no token, a wrong token, a replayed handshake, garbage bytes and a silent peer
are refused with a clear message on both sides, and the daemon keeps serving
an authenticated client after each; an impostor daemon gets nothing but
HELLO; token files must be private.

Daemons listen on loopback ports chosen per test and use token files in
temporary directories (never the user's ~/.shoal)."""

import hashlib
import hmac
import os
import re
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest

import shoal
from _helpers import ExternalDaemon, binary, env_with_shoal, fresh, short_tmpdir  # noqa: F401

pytestmark = pytest.mark.asan

T = 30
MAGIC = 0x4C4F4853
HDR = struct.Struct("<IBBHQII")  # magic, version, type, flags, id, len, reserved
HELLO, HELLO_OK, ERROR = 1, 2, 16
AUTH_CHALLENGE, AUTH_RESPONSE, AUTH_OK = 20, 21, 22
SH_EAUTH = -1007
TOKEN = "0123456789abcdef" * 4


@shoal.remote
def square(x):
    return x * x


# ---- helpers ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_token(directory, text=TOKEN, mode=0o600):
    path = os.path.join(directory, "token")
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


class TcpDaemon(ExternalDaemon):
    """An ExternalDaemon listening on a free loopback port with a token file."""

    def __init__(self, *args, token=TOKEN):
        self.tokdir = short_tmpdir("shtok-")
        self.token_file = write_token(self.tokdir, token)
        self.port = free_port()
        super().__init__("--port", str(self.port), "--token-file", self.token_file, *args,
                         workers=1)
        self.address = f"127.0.0.1:{self.port}"
        # The unix socket exists before the TCP listener: wait for the port
        # too, with an authenticated peer (a bare probe would be logged as
        # a refused connection, which some tests count).
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                out, err = self.stop()
                pytest.fail(f"the daemon exited (port {self.port} taken?): {err}")
            st = subprocess.run([binary(), "status", "--address", self.address, "--token-file",
                                 self.token_file, "--timeout", "2"], capture_output=True,
                                text=True)
            if st.returncode == 0:
                break
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the daemon does not answer on {self.address}: {st.stderr}")
            time.sleep(0.05)

    def stop(self):
        out, err = super().stop()
        import shutil
        shutil.rmtree(self.tokdir, ignore_errors=True)
        return out, err


@pytest.fixture
def daemon(fresh):  # noqa: F811
    d = TcpDaemon("--auth-timeout", "2")
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def no_token_env(monkeypatch, tmp_path):
    """No token in the environment, and a home directory without ~/.shoal."""
    monkeypatch.delenv("SHOAL_TOKEN", raising=False)
    monkeypatch.delenv("SHOAL_TOKEN_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def frame(typ, body=b"", fid=0):
    return HDR.pack(MAGIC, 1, typ, 0, fid, len(body), 0) + body


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(sock):
    """(type, body) of the next frame, or None at end of file."""
    hdr = recv_exact(sock, HDR.size)
    if hdr is None:
        return None
    magic, version, typ, _flags, _fid, length, _res = HDR.unpack(hdr)
    assert magic == MAGIC and version == 1
    body = recv_exact(sock, length) if length else b""
    assert body is not None
    return typ, body


def read_until_closed(sock):
    """Every frame until the peer closes."""
    frames = []
    while (f := read_frame(sock)) is not None:
        frames.append(f)
    return frames


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=T)
    s.settimeout(T)
    return s


def proof(token, side, snonce, cnonce):
    """The handshake's HMAC, computed independently of the C code."""
    label = b"shoal-auth-v1 " + side
    return hmac.new(token.encode(), snonce + cnonce + label, hashlib.sha256).digest()


def hello(role=3):
    return frame(HELLO, struct.pack("<IIII", role, os.getpid(), 0, 0))


def assert_refused(frames, text):
    """The daemon sent its challenge, then an ERROR with SH_EAUTH (or the
    code given in text's place) naming the reason, and closed."""
    types = [t for t, _ in frames]
    assert types == [AUTH_CHALLENGE, ERROR], types
    code, = struct.unpack("<i", frames[1][1][:4])
    message = frames[1][1][4:].decode()
    assert text in message, message
    return code, message


def still_serves(d, monkeypatch):
    """An authenticated driver connects and runs a task; then disconnects."""
    monkeypatch.setenv("SHOAL_TOKEN_FILE", d.token_file)
    shoal.init(d.address)
    try:
        assert square.remote(7).result(timeout=T) == 49
        return shoal.status()
    finally:
        shoal.shutdown()


def daemon_log(d):
    _, err = d.stop()
    return err


# ---- an authenticated client ----

def test_driver_and_cli_with_the_token(daemon, monkeypatch):
    st = still_serves(daemon, monkeypatch)
    assert st["tasks"]["done"] >= 1
    # The token passed explicitly (and a wrong one in the environment loses).
    monkeypatch.setenv("SHOAL_TOKEN", "not-the-token-at-all")
    monkeypatch.delenv("SHOAL_TOKEN_FILE")
    shoal.init(daemon.address, token=TOKEN)
    assert square.remote(3).result(timeout=T) == 9
    shoal.shutdown()
    # SHOAL_TOKEN beats SHOAL_TOKEN_FILE.
    monkeypatch.setenv("SHOAL_TOKEN", TOKEN)
    monkeypatch.setenv("SHOAL_TOKEN_FILE", "/nonexistent/token")
    shoal.init(daemon.address)
    shoal.shutdown()
    r = subprocess.run([binary(), "status", "--address", daemon.address, "--token-file",
                        daemon.token_file, "--json"], capture_output=True, text=True, timeout=T)
    assert r.returncode == 0, r.stderr
    assert '"workers"' in r.stdout


def test_the_handshake_as_documented(daemon):
    """A client written from docs/protocol.md alone gets in."""
    with connect(daemon.port) as s:
        typ, body = read_frame(s)
        assert typ == AUTH_CHALLENGE and len(body) == 40
        scheme, _reserved = struct.unpack("<II", body[:8])
        assert scheme == 1
        snonce, cnonce = body[8:], os.urandom(32)
        s.sendall(frame(AUTH_RESPONSE, cnonce + proof(TOKEN, b"client", snonce, cnonce))
                  + hello())
        typ, body = read_frame(s)
        assert typ == AUTH_OK
        assert hmac.compare_digest(body, proof(TOKEN, b"server", snonce, cnonce))
        typ, body = read_frame(s)
        # 60 fixed bytes, then the object store directory (docs/protocol.md)
        assert typ == HELLO_OK and len(body) == 60 + struct.unpack_from("<I", body, 56)[0]


# ---- refused peers ----

def test_no_token(daemon, monkeypatch, no_token_env):
    # The driver finds none and says where it looked, without connecting.
    with pytest.raises(shoal.AuthenticationError) as ei:
        shoal.init(daemon.address)
    msg = str(ei.value)
    assert "no cluster token found" in msg and "SHOAL_TOKEN" in msg
    assert os.path.join(str(no_token_env), ".shoal", "token") in msg
    assert isinstance(ei.value, ConnectionError)
    # The command line too.
    env = dict(os.environ)
    r = subprocess.run([binary(), "status", "--address", daemon.address], capture_output=True,
                       text=True, timeout=T, env=env)
    assert r.returncode == 1 and "no cluster token found" in r.stderr
    # A peer that skips the handshake (an older client, or one without a
    # token) is refused by the daemon.
    with connect(daemon.port) as s:
        s.sendall(hello(role=1))
        code, _ = assert_refused(read_until_closed(s), "no cluster token")
        assert code == SH_EAUTH
    still_serves(daemon, monkeypatch)
    log = daemon_log(daemon)
    assert re.search(r"connection from 127\.0\.0\.1:\d+ refused: no cluster token", log), log


def test_wrong_token(daemon, monkeypatch):
    with pytest.raises(shoal.AuthenticationError) as ei:
        shoal.init(daemon.address, token="a-wrong-token-of-some-length")
    msg = str(ei.value)
    assert "wrong cluster token" in msg and "shoal.init(token=...)" in msg
    # From a file: the message names the file.
    other = write_token(short_tmpdir("shtok-"), "another-cluster-token-0123456789")
    monkeypatch.setenv("SHOAL_TOKEN_FILE", other)
    with pytest.raises(shoal.AuthenticationError, match=re.escape(other)):
        shoal.init(daemon.address)
    r = subprocess.run([binary(), "stop", "--address", daemon.address, "--token-file", other],
                       capture_output=True, text=True, timeout=T)
    assert r.returncode == 1 and "wrong cluster token" in r.stderr and other in r.stderr
    still_serves(daemon, monkeypatch)
    log = daemon_log(daemon)
    refusals = re.findall(r"connection from 127\.0\.0\.1:\d+ refused: wrong cluster token$", log,
                          re.M)
    assert len(refusals) == 3, log


class RecordingProxy:
    """Relays one TCP connection to `port` and records what the client sent."""

    def __init__(self, port):
        self.sent = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = port
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target))

        def pump(src, dst, record):
            while data := src.recv(65536):
                if record is not None:
                    record.extend(data)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client, None), daemon=True)
        back.start()
        try:
            pump(client, upstream, self.sent)
        except OSError:
            pass
        back.join(T)
        client.close()
        upstream.close()
        self.listener.close()


def test_replayed_handshake(daemon, monkeypatch):
    # Record everything a good driver sends: its handshake, then functions,
    # pickled arguments and submits.
    proxy = RecordingProxy(daemon.port)
    monkeypatch.setenv("SHOAL_TOKEN_FILE", daemon.token_file)
    shoal.init(f"127.0.0.1:{proxy.port}")
    assert square.remote(5).result(timeout=T) == 25
    submitted = shoal.status()["tasks"]["submitted"]
    shoal.shutdown()
    proxy.thread.join(T)
    recorded = bytes(proxy.sent)
    assert HDR.unpack(recorded[:HDR.size])[2] == AUTH_RESPONSE
    # Played back on a new connection, the daemon's fresh nonce makes the
    # recorded proof wrong: refused, and nothing after it is looked at.
    with connect(daemon.port) as s:
        s.sendall(recorded)
        assert_refused(read_until_closed(s), "wrong cluster token")
    monkeypatch.setenv("SHOAL_TOKEN_FILE", daemon.token_file)
    shoal.init(daemon.address)
    assert shoal.status()["tasks"]["submitted"] == submitted
    shoal.shutdown()
    log = daemon_log(daemon)
    assert re.search(r"refused: wrong cluster token", log), log


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS hello
    bytes(range(256)) * 4,
    # A well-formed header announcing a 1 GiB body: refused from the header,
    # nothing is allocated for a peer that has not authenticated.
    HDR.pack(MAGIC, 1, AUTH_RESPONSE, 0, 0, 1 << 30, 0),
    # The right frame type with a body of the wrong size.
    frame(AUTH_RESPONSE, b"\0" * 63),
], ids=["http", "tls", "bytes", "huge-frame", "short-response"])
def test_garbage_bytes(daemon, monkeypatch, garbage):
    with connect(daemon.port) as s:
        s.sendall(garbage)
        frames = read_until_closed(s)
    assert [t for t, _ in frames] == [AUTH_CHALLENGE, ERROR]
    still_serves(daemon, monkeypatch)
    log = daemon_log(daemon)
    assert re.search(r"connection from 127\.0\.0\.1:\d+ refused: (bad frame|malformed)", log), log


def test_silent_peer_hits_the_deadline(fresh, monkeypatch):  # noqa: F811
    d = TcpDaemon("--auth-timeout", "0.2")
    try:
        silent = [connect(d.port) for _ in range(3)]
        # They stay connected until the deadline, then get an ERROR and EOF
        # (the socket timeout only bounds a hang; nothing is timed here).
        for s in silent:
            frames = read_until_closed(s)
            assert_refused(frames, "did not authenticate within 0.2 s")
            s.close()
        still_serves(d, monkeypatch)
        # An authenticated connection is not subject to the deadline: it
        # outlives a later silent peer's deadline.
        monkeypatch.setenv("SHOAL_TOKEN_FILE", d.token_file)
        shoal.init(d.address)
        with connect(d.port) as s:
            read_until_closed(s)
        assert square.remote(2).result(timeout=T) == 4
        shoal.shutdown()
    finally:
        log = d.stop()[1]
    assert len(re.findall(r"refused: it did not authenticate within", log)) == 4, log


def test_impostor_daemon_gets_nothing_but_hello(fresh, monkeypatch):  # noqa: F811
    """A server without the token: the driver refuses its proof and sends it
    nothing a pickle could be in."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got = []

    def impostor():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(T)
            conn.sendall(frame(AUTH_CHALLENGE, struct.pack("<II", 1, 0) + os.urandom(32)))
            got.append(read_frame(conn))
            got.append(read_frame(conn))
            conn.sendall(frame(AUTH_OK, os.urandom(32)))
            got.extend(read_until_closed(conn))

    t = threading.Thread(target=impostor, daemon=True)
    t.start()
    with pytest.raises(shoal.AuthenticationError, match="did not prove"):
        shoal.init(f"127.0.0.1:{port}", token=TOKEN)
    t.join(T)
    listener.close()
    assert [f[0] for f in got] == [AUTH_RESPONSE, HELLO]


# ---- token files ----

def test_token_file_readable_by_others_is_refused(fresh, monkeypatch):  # noqa: F811
    tokdir = short_tmpdir("shtok-")
    path = write_token(tokdir, mode=0o644)
    sockdir = short_tmpdir()
    try:
        r = subprocess.run([binary(), "start", "--head", "--block", "--socket-dir", sockdir,
                            "--port", str(free_port()), "--token-file", path, "--workers", "0"],
                           capture_output=True, text=True, timeout=T, env=env_with_shoal())
        assert r.returncode == 1
        assert "mode is 0644" in r.stderr and f"chmod 600 {path}" in r.stderr
        assert not os.path.exists(os.path.join(sockdir, "agent.sock"))
        # A driver refuses to use it too (before connecting anywhere).
        monkeypatch.setenv("SHOAL_TOKEN_FILE", path)
        monkeypatch.delenv("SHOAL_TOKEN", raising=False)
        with pytest.raises(shoal.AuthenticationError, match="chmod 600"):
            shoal.init(f"127.0.0.1:{free_port()}")
    finally:
        import shutil
        shutil.rmtree(tokdir, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)


def test_head_creates_a_private_token(fresh, monkeypatch, no_token_env):  # noqa: F811
    """Without a token file the head makes ~/.shoal/token (0600 in a 0700
    directory), prints where it listens, and a driver of the same user finds
    the token there."""
    port = free_port()
    d = ExternalDaemon("--port", str(port), "--bind", "0.0.0.0", workers=1)
    try:
        path = no_token_env / ".shoal" / "token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())
        shoal.init(f"127.0.0.1:{port}")
        assert square.remote(4).result(timeout=T) == 16
        shoal.shutdown()
    finally:
        out, _ = d.stop()
    assert f"shoal: listening on 0.0.0.0:{port} (cluster token: the token file {path})" in out


def test_bad_bind_and_flags():
    r = subprocess.run([binary(), "start", "--head", "--bind", "0.0.0.0"],
                       capture_output=True, text=True, timeout=T)
    assert r.returncode == 2 and "--bind only matters with --port" in r.stderr
    tokdir = short_tmpdir("shtok-")
    sockdir = short_tmpdir()
    try:
        path = write_token(tokdir)
        r = subprocess.run([binary(), "start", "--head", "--block", "--socket-dir", sockdir,
                            "--port", str(free_port()), "--bind", "not-an-address.invalid",
                            "--token-file", path, "--workers", "0"],
                           capture_output=True, text=True, timeout=T, env=env_with_shoal())
        assert r.returncode == 1 and "--bind needs an IP address" in r.stderr, r.stderr
        r = subprocess.run([binary(), "start", "--head", "--port", "1", "--auth-timeout", "0"],
                           capture_output=True, text=True, timeout=T)
        assert r.returncode == 2 and "--auth-timeout" in r.stderr
    finally:
        import shutil
        shutil.rmtree(tokdir, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)
