"""Finding the daemon: the binary, cluster addresses, and the private
(embedded) cluster a driver starts for itself.

Nothing here talks the wire protocol: this module only starts the ``shoal``
binary and turns user-facing addresses into the string ``_core.Client`` takes
(a unix socket path or ``host:port``). See docs/architecture.md, "Socket
directory and addresses".
"""

import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .exceptions import ShoalError

__all__ = ["binary_path", "resolve_address", "EmbeddedDaemon"]

READY_TIMEOUT = 30.0  # seconds to wait for "shoal: ready PATH"
STOP_TIMEOUT = 10.0   # seconds shutdown() waits for the daemon to exit
SOCKET_NAME = "agent.sock"
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the NUL


def binary_path():
    """The path of the ``shoal`` daemon binary.

    ``$SHOAL_BINARY`` if set, else ``bin/shoal`` inside the installed package.

    Returns:
        An absolute path to an executable file.
    Raises:
        FileNotFoundError: there is no binary at either place.
    """
    env = os.environ.get("SHOAL_BINARY")
    path = env or os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "shoal")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        where = "$SHOAL_BINARY" if env else "the shoal package"
        raise FileNotFoundError(
            f"the shoal daemon binary was not found at {path} ({where}): build it "
            "with `make build` (or `pip install .`), or set SHOAL_BINARY to its path")
    return path


def _user_base():
    return f"/tmp/shoal-{os.getuid()}"


def default_socket_dir():
    """The socket directory of the default local cluster.

    Returns:
        ``$SHOAL_SOCKET_DIR`` or ``/tmp/shoal-<uid>/default``.
    """
    return os.environ.get("SHOAL_SOCKET_DIR") or os.path.join(_user_base(), "default")


def resolve_address(address):
    """Turns a user-facing address into what ``_core.Client`` connects to.

    Args:
        address: ``"auto"``, a socket directory, a socket path, ``unix:PATH``
            or ``HOST:PORT``.
    Returns:
        An absolute unix socket path, or ``"host:port"``.
    Raises:
        ConnectionError: ``"auto"`` found no running cluster, or a path names
            nothing that exists.
        ValueError: the address has none of the accepted forms.
    """
    if not isinstance(address, str) or not address:
        raise ValueError(f"address must be a non-empty string, not {address!r}")
    if address == "auto":
        d = default_socket_dir()
        sock = os.path.join(d, SOCKET_NAME)
        if not _is_socket(sock):
            raise ConnectionError(
                f'shoal.init("auto") found no running cluster: {sock} does not exist. '
                f"Start one with `shoal start --head --socket-dir {d}`, set "
                "SHOAL_SOCKET_DIR to the socket directory of a running cluster, or "
                "call shoal.init() with no address to start a private one")
        return sock
    if address.startswith("unix:"):
        path = os.path.abspath(address[5:])
        if not _is_socket(path):
            raise ConnectionError(f"no shoal daemon is listening at {path}: the socket does not exist")
        return path
    if "/" in address or address.startswith(".") or os.path.exists(address):
        path = os.path.abspath(address)
        if os.path.isdir(path):
            path = os.path.join(path, SOCKET_NAME)
        if not _is_socket(path):
            raise ConnectionError(
                f"no shoal daemon is listening at {path}: the socket does not exist "
                "(is `shoal start --head` running with that --socket-dir?)")
        return path
    host, sep, port = address.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536:
        return f"{host}:{int(port)}"
    raise ValueError(
        f"cannot understand the address {address!r}: use \"auto\", a socket directory, "
        "a socket path, unix:PATH, or HOST:PORT")


def _is_socket(path):
    try:
        import stat
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _private_base():
    """Creates (or checks) /tmp/shoal-<uid>, owned by us and 0700."""
    base = _user_base()
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(base)
    import stat
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ShoalError(f"{base} is not a directory owned by this user; remove it and retry")
    if st.st_mode & 0o077:
        os.chmod(base, 0o700)
    return base


def resources_json(resources):
    """Validates ``init(resources=...)`` and encodes it for ``--resources``.

    Args:
        resources: a mapping of resource name to amount. ``"CPU"`` and
            ``"GPU"`` (counts) and ``"memory"`` (bytes) override the machine's
            own; every other name is a custom resource.
    Returns:
        A JSON object string.
    Raises:
        TypeError: not a mapping, a name that is not a string, an amount that
            is not a number.
        ValueError: an empty name or a negative or non-finite amount.
    """
    if not hasattr(resources, "items"):
        raise TypeError(f"resources must be a dict of name -> amount, not {type(resources).__name__}")
    out = {}
    for name, amount in resources.items():
        if not isinstance(name, str):
            raise TypeError(f"resources: names must be strings, not {name!r}")
        if not name:
            raise ValueError("resources: a resource name cannot be empty")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"resources[{name!r}] must be a number, not {amount!r}")
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"resources[{name!r}] must be a finite number >= 0, not {amount!r}")
        out[name] = amount
    return json.dumps(out)


def _worker_env():
    """The daemon's environment: ours, plus our sys.path as PYTHONPATH so that
    workers import what this driver imports (as multiprocessing's spawn does)."""
    env = dict(os.environ)
    paths = []
    for p in sys.path:
        p = os.path.abspath(p or os.getcwd())
        if p not in paths and os.path.isdir(p):
            paths.append(p)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("SHOAL_PYTHON", sys.executable)
    env.pop("SHOAL_ADDRESS", None)
    return env


class EmbeddedDaemon:
    """A private head+agent started for this driver (``shoal start --embedded``).

    The daemon exits by itself when our owner connection closes or this
    process dies, and removes its socket directory; ``stop`` only waits for it.

    Attributes:
        socket_dir: the session's 0700 socket directory.
        address: the agent's unix socket path.
        process: the ``subprocess.Popen`` of the daemon.
    """

    def __init__(self, num_workers=None, resources=None):
        """Starts the daemon and waits until it listens.

        Args:
            num_workers: pool workers (default: the daemon's, one per CPU).
            resources: see :func:`resources_json`.
        Raises:
            FileNotFoundError: no daemon binary.
            ShoalError: the daemon exited or did not become ready in time; the
                message carries its exit status and stderr.
        """
        binary = binary_path()
        self.socket_dir = tempfile.mkdtemp(prefix="session-", dir=_private_base())
        self.address = os.path.join(self.socket_dir, SOCKET_NAME)
        if len(self.address.encode()) > _UNIX_PATH_MAX:
            raise ShoalError(f"socket path too long for a unix socket: {self.address}")
        argv = [binary, "start", "--head", "--block", "--embedded",
                "--socket-dir", self.socket_dir, "--python", sys.executable]
        if num_workers is not None:
            argv += ["--workers", str(num_workers)]
        if resources:
            argv += ["--resources", resources_json(resources)]
        # The daemon's log goes to an unlinked file: quiet in normal use, and
        # quoted in the error when the daemon fails to start.
        self.log = tempfile.TemporaryFile(prefix="shoal-daemon-")
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log,
                env=_worker_env(), close_fds=True)
        except BaseException:
            self.log.close()
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise

    @property
    def pid(self):
        """The daemon's process id."""
        return self.process.pid

    def log_text(self, limit=8192):
        """The last ``limit`` bytes the daemon wrote to stderr, as text."""
        try:
            self.log.flush()
            size = os.fstat(self.log.fileno()).st_size
            self.log.seek(max(0, size - limit))
            return self.log.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _wait_ready(self):
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + READY_TIMEOUT
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ShoalError(self._failure(f"did not report ready within {READY_TIMEOUT:.0f}s"))
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                try:
                    self.process.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass
                raise ShoalError(self._failure("closed its stdout before it was ready"))
            buf += chunk
        line = buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        prefix = "shoal: ready "
        if not line.startswith(prefix):
            raise ShoalError(self._failure(f"printed {line!r} instead of 'shoal: ready PATH'"))
        self.address = line[len(prefix):]

    def _failure(self, what):
        rc = self.process.poll()
        status = "still running" if rc is None else (
            f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}")
        log = self.log_text().strip()
        return (f"the embedded shoal daemon (pid {self.process.pid}, {status}) {what}; "
                f"command: {' '.join(self.process.args)}"
                + (f"\n--- daemon stderr ---\n{log}" if log else "; it wrote nothing to stderr"))

    def stop(self, timeout=STOP_TIMEOUT):
        """Waits for the daemon to exit after the owner connection closed;
        terminates it (then kills it) if it does not within ``timeout``.

        Args:
            timeout: seconds to wait before SIGTERM.
        Returns:
            The daemon's exit status (negative: the signal that ended it).
        """
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_files()
        return self.process.returncode

    def kill(self):
        """Stops the daemon now: SIGTERM, then SIGKILL after 2 seconds."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(2.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5.0)
            except ProcessLookupError:
                pass
        self._close_files()

    def _close_files(self):
        for f in (self.process.stdout, self.log):
            try:
                f.close()
            except (OSError, AttributeError):
                pass
