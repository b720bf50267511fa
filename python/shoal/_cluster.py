"""Finding the daemon: the binary, cluster addresses, and the private
(embedded) cluster a driver starts for itself.

Nothing here talks the wire protocol: this module only starts the ``shoal``
binary and turns user-facing addresses into the string ``_core.Client`` takes
(a unix socket path or ``host:port``). See docs/architecture.md, "Socket
directory and addresses".
"""

import math
import os
import select
import sys
import time

# This module runs first in a private cluster's start-up (see _boot.py), so it
# imports little: json, shutil, tempfile and subprocess are loaded where used
# or replaced (the daemon is started with os.posix_spawn).

SIGTERM = 15
SIGKILL = 9


def ShoalError(message):  # noqa: N802 - stands for the class, imported on first error
    """shoal.exceptions.ShoalError(message), imported only when an error is raised:
    this module runs before the heavier imports so the daemon starts early."""
    from .exceptions import ShoalError as cls
    return cls(message)

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
    import json
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
        process: the daemon's process (a ``_Child``).
    """

    def __init__(self, num_workers=None, resources=None, wait=True, object_store_memory=None):
        """Starts the daemon and (unless ``wait`` is false) waits until it listens.

        Args:
            num_workers: pool workers (default: the daemon's, one per CPU).
            resources: see :func:`resources_json`.
            wait: False only starts the process; call :meth:`wait_ready` next.
            object_store_memory: the object store's capacity in bytes.
        Raises:
            FileNotFoundError: no daemon binary.
            ShoalError: the daemon exited or did not become ready in time; the
                message carries its exit status and stderr.
        """
        binary = binary_path()
        self.socket_dir = _make_session_dir(_private_base())
        self.address = os.path.join(self.socket_dir, SOCKET_NAME)
        if len(self.address.encode()) > _UNIX_PATH_MAX:
            raise ShoalError(f"socket path too long for a unix socket: {self.address}")
        argv = [binary, "start", "--head", "--block", "--embedded",
                "--socket-dir", self.socket_dir, "--python", sys.executable]
        if num_workers is not None:
            argv += ["--workers", str(num_workers)]
        if resources:
            argv += ["--resources", resources_json(resources)]
        if object_store_memory is not None:
            argv += ["--object-store-memory", str(int(object_store_memory))]
        # The daemon's log goes to an unlinked file: quiet in normal use, and
        # quoted in the error when the daemon fails to start.
        try:
            self.log = _anonymous_file(self.socket_dir)
            self.process = _Child(argv, _worker_env(), self.log)
        except BaseException:
            self._close_files()
            _rmtree(self.socket_dir)
            raise
        if wait:
            self.wait_ready()

    def wait_ready(self):
        """Waits until the daemon listens (see ``__init__`` for the errors); on
        failure the daemon is killed and its directory removed."""
        # The daemon and its workers boot on the other core meanwhile.
        from . import _serial
        _serial.preload()
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            _rmtree(self.socket_dir)
            raise

    @property
    def pid(self):
        """The daemon's process id."""
        return self.process.pid

    def log_text(self, limit=8192):
        """The last ``limit`` bytes the daemon wrote to stderr, as text."""
        try:
            size = os.fstat(self.log).st_size
            return os.pread(self.log, limit, max(0, size - limit)).decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def _wait_ready(self):
        fd = self.process.stdout
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
                except TimeoutError:
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
        except TimeoutError:
            self.kill()
        self._close_files()
        return self.process.returncode

    def kill(self):
        """Stops the daemon now: SIGTERM, then SIGKILL after 2 seconds."""
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                process.send_signal(SIGTERM)
                process.wait(2.0)
            except TimeoutError:
                process.kill()
                try:
                    process.wait(5.0)
                except TimeoutError:
                    pass
            except ProcessLookupError:
                pass
        self._close_files()

    def _close_files(self):
        process = getattr(self, "process", None)
        for fd in (process.stdout if process else None, getattr(self, "log", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if process is not None:
            process.stdout = None
        self.log = None


def _rmtree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def _make_session_dir(base):
    """A new 0700 directory ``base/session-XXXXXXXX`` (what tempfile.mkdtemp
    does, without importing tempfile and random)."""
    for _ in range(100):
        path = os.path.join(base, "session-" + os.urandom(5).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free session directory name under {base}")


def _anonymous_file(directory):
    """A read-write file descriptor of a file with no name (O_TMPFILE, or a
    file unlinked at once where the file system lacks O_TMPFILE)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (OSError, AttributeError):
        path = os.path.join(directory, "daemon-log-" + os.urandom(5).hex())
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.unlink(path)
        return fd


class _Child:
    """The daemon's process, started with ``os.posix_spawn``: what this module
    needs of ``subprocess.Popen`` (pid, args, stdout, poll, wait, signals),
    without importing subprocess on the start-up path.

    Attributes:
        pid: the process id.
        args: the argument list.
        stdout: the read end (a file descriptor) of the pipe that is the
            child's stdout, or None once closed.
        returncode: None while running; the exit status, or minus the signal.
    """

    def __init__(self, argv, env, stderr_fd):
        r, w = os.pipe()
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, w, 1),
                   (os.POSIX_SPAWN_DUP2, stderr_fd, 2)]
        try:
            self.pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self.args = argv
        self.stdout = r
        self.returncode = None

    def poll(self):
        """The exit status if the process has exited (reaping it), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0  # reaped elsewhere; its status is lost
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        """Waits for the exit; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"process {self.pid} still running after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(SIGKILL)
