"""Shared pytest set-up for the integration tests in tests/python.

Markers (also declared in pyproject.toml):

* ``asan``: the test starts a real daemon and is worth running against the
  ASan+UBSan build too. ``make test-asan`` runs ``pytest -m asan`` with
  ``SHOAL_BINARY=build-asan/shoal`` and sanitizer logs redirected to files;
  any log written fails the run. Such a test must start the daemon through
  ``SHOAL_BINARY`` (the ``shoal_binary`` fixture, or the package, which honours
  the variable) and should stop it gracefully so leak reports are written.
* ``slow``: takes more than a few seconds; ``make test PYTEST_ARGS='-m "not
  slow"'`` leaves these out.

Fixtures:

* ``shoal_binary``: path (str) to the daemon executable: ``$SHOAL_BINARY``,
  else ``python/shoal/bin/shoal`` (made by ``make build``). Fails the test with
  a clear message when it does not exist.
* ``tmp_socket_dir``: a fresh, short, 0700 directory under /tmp (pathlib.Path)
  for daemon sockets; Unix socket paths are limited to 107 bytes, which
  pytest's own tmp_path easily exceeds. Removed afterwards.

Nothing here imports shoal: a broken package must fail its own tests, not
the collection of every test.
"""

import os
import pathlib
import shutil
import stat
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO / "python" / "shoal" / "bin" / "shoal"
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "asan: also run against the ASan+UBSan daemon (make test-asan)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture
def shoal_binary():
    """Path of the shoal daemon executable the tests should start."""
    path = pathlib.Path(os.environ.get("SHOAL_BINARY") or DEFAULT_BINARY)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"shoal binary not found or not executable: {path} "
                    "(run `make build`, or set SHOAL_BINARY)")
    return str(path)


@pytest.fixture
def tmp_socket_dir():
    """A fresh 0700 directory with a short path, for daemon sockets."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="shoal-t-", dir="/tmp"))
    try:
        os.chmod(path, stat.S_IRWXU)
        # Room for the longest name the daemon puts there ("agent.sock" and
        # friends) with a margin.
        assert len(str(path)) + len("/agent.sock") + 16 <= SUN_PATH_MAX, path
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _shm_dirs():
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("shoal-")}
    except FileNotFoundError:
        return set()


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    """After the whole session, no object store the tests' daemons made is
    left in /dev/shm: each daemon removes its own, also when its driver is
    killed; one killed with SIGKILL has its store removed by the next
    daemon that starts."""
    import sys
    import time
    before = _shm_dirs()
    yield
    api = sys.modules.get("shoal._api")
    if api is not None:
        api.shutdown()
    deadline = time.monotonic() + 10
    while (_shm_dirs() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = sorted(_shm_dirs() - before)
    assert not left, f"object stores left behind in /dev/shm: {left}"
