"""Object files of the shared-memory store: shoal._core.store_write,
store_map and the Segment type (format, zero-copy reads, lifetime, failures)."""
import gc
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest

import shoal._core as core

HDR = struct.Struct("<IIQQQII")  # magic, version, total, stream off, len, nbufs, reserved
MAGIC = 0x424F4853


@pytest.fixture
def store_dir(tmp_path):
    """A directory on tmpfs (/dev/shm) when there is one, removed afterwards."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = tempfile.mkdtemp(prefix="shoal-test-segment-", dir="/dev/shm")
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
        assert not os.path.exists(d)
    else:
        yield str(tmp_path)


def put(path, value):
    bufs = []
    stream = pickle.dumps(value, protocol=5, buffer_callback=bufs.append)
    return core.store_write(path, stream, bufs), len(bufs)


def get(path):
    seg = core.store_map(path)
    stream, bufs = seg.parts()
    return seg, pickle.loads(stream, buffers=bufs)


def read_header(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, version, total, soff, slen, nbufs, reserved = HDR.unpack_from(data)
    table = [struct.unpack_from("<QQ", data, 40 + 16 * i) for i in range(nbufs)]
    return data, (magic, version, total, soff, slen, nbufs, reserved), table


def leftovers(d):
    return [f for f in os.listdir(d) if f.endswith(".tmp")]


# ---- round trips ----


def test_large_array_round_trip_is_zero_copy_and_read_only(store_dir):
    a = np.random.default_rng(1).random(1 << 23)  # 64 MiB
    path = os.path.join(store_dir, "big")
    size, nbufs = put(path, a)
    assert nbufs == 1 and size == os.path.getsize(path) >= a.nbytes
    seg, b = get(path)
    assert seg.size == size and seg.path == path and not seg.closed
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable
    with pytest.raises(ValueError):
        b[0] = 1.0
    with pytest.raises(ValueError):
        b.setflags(write=True)
    whole = np.frombuffer(seg, dtype=np.uint8)
    assert not whole.flags.writeable
    assert np.shares_memory(b, whole)
    assert b.ctypes.data % 64 == 0


def test_format_matches_the_spec(store_dir):
    path = os.path.join(store_dir, "fmt")
    bufs = [b"abc", bytearray(b"0123456789"), memoryview(b"x" * 100), b""]
    size = core.store_write(path, b"STREAM", bufs)
    data, (magic, version, total, soff, slen, nbufs, reserved), table = read_header(path)
    assert (magic, version, total, nbufs, reserved) == (MAGIC, 1, size, 4, 0)
    assert data[:4] == b"SHOB" and len(data) == size
    assert soff == 40 + 16 * 4 and data[soff:soff + slen] == b"STREAM"
    for (off, length), want in zip(table, bufs):
        assert off % 64 == 0 and off >= soff + slen
        assert data[off:off + length] == bytes(want)
    seg = core.store_map(path)
    stream, views = seg.parts()
    assert bytes(stream) == b"STREAM"
    assert [bytes(v) for v in views] == [bytes(b) for b in bufs]
    assert all(v.readonly for v in views) and stream.readonly
    del stream, views
    seg.close()


def test_several_arrays_and_small_values_in_one_object(store_dir):
    rng = np.random.default_rng(2)
    value = {
        "f64": rng.random((300, 200)),
        "fortran": np.asfortranarray(rng.random((128, 64))),
        "i32": np.arange(100_000, dtype=np.int32),
        "u8": np.frombuffer(os.urandom(70_001), dtype=np.uint8),
        "empty": np.zeros(0),
        "scalar": np.float32(1.5),
        "small": [1, "two", 3.0, None, (4, 5), {"six": b"6"}],
    }
    path = os.path.join(store_dir, "many")
    _, nbufs = put(path, value)
    assert nbufs >= 5
    _, got = get(path)
    assert set(got) == set(value)
    for k in ("f64", "fortran", "i32", "u8", "empty"):
        np.testing.assert_array_equal(got[k], value[k])
        assert got[k].dtype == value[k].dtype and not got[k].flags.writeable
    assert got["fortran"].flags.f_contiguous
    assert got["scalar"] == value["scalar"] and got["small"] == value["small"]


def test_bytes_and_bytearray(store_dir):
    value = (b"\x00\x01" * 50_000, bytearray(os.urandom(200_000)), "text")
    path = os.path.join(store_dir, "bytes")
    put(path, value)
    _, got = get(path)
    assert got == value
    assert type(got[1]) is bytearray  # rebuilt as a copy: bytearray is writable
    got[1][0] ^= 1


@dataclass
class Frame:
    columns: list
    blocks: dict
    index: np.ndarray


def test_structure_without_pandas(store_dir):
    rec = np.zeros(5000, dtype=[("id", "<i8"), ("x", "<f4"), ("name", "S8")])
    rec["id"] = np.arange(5000)
    rec["name"] = b"row"
    value = Frame(["a", "b"], {"a": np.arange(20_000.0), "b": rec},
                  np.arange(20_000, dtype=np.int64))
    path = os.path.join(store_dir, "frame")
    put(path, value)
    _, got = get(path)
    assert got.columns == ["a", "b"]
    np.testing.assert_array_equal(got.blocks["a"], value.blocks["a"])
    np.testing.assert_array_equal(got.blocks["b"], rec)
    np.testing.assert_array_equal(got.index, value.index)
    assert not got.blocks["b"].flags.writeable


def test_path_like_and_bytes_paths(store_dir):
    import pathlib
    p = pathlib.Path(store_dir) / "pl"
    core.store_write(p, b"s", [b"b"])
    assert core.store_map(p).path == str(p)
    assert bytes(core.store_map(os.fsencode(p)).parts()[1][0]) == b"b"


# ---- lifetime ----


def test_mapping_outlives_unlink_and_the_segment_variable(store_dir):
    a = np.arange(1 << 20, dtype=np.float64)
    path = os.path.join(store_dir, "life")
    put(path, a)
    calls = []
    seg, b = get(path)
    seg.on_release = lambda: calls.append(1)
    os.unlink(path)
    del seg
    gc.collect()
    assert calls == []
    assert b.sum() == a.sum()  # still mapped after unlink and del
    c = b[10:20]
    del b
    gc.collect()
    assert calls == [] and c[0] == 10.0
    del c
    gc.collect()
    assert calls == [1]


def rss_shmem_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1])
    pytest.skip("no RssShmem in /proc/self/status")


def test_mapping_reads_pages_on_demand(store_dir):
    path = os.path.join(store_dir, "lazy")
    core.store_write(path, b"s", [np.ones(64 << 17)])  # 64 MiB
    before = rss_shmem_kib()
    seg = core.store_map(path)
    stream, (buf,) = seg.parts()
    assert rss_shmem_kib() - before < 4096  # nothing populated by mapping
    arr = np.frombuffer(buf, dtype=np.float64)
    assert arr.sum() == 64 << 17
    assert rss_shmem_kib() - before > 60 << 10  # read, now resident


def test_on_release_called_once_when_the_last_view_dies(store_dir):
    path = os.path.join(store_dir, "rel")
    put(path, [np.ones(1000), np.zeros(1000)])
    calls = []
    seg, (x, y) = get(path)
    seg.on_release = lambda: calls.append("released")
    mv = memoryview(seg)
    del seg
    del x
    assert calls == []
    del y
    assert calls == []
    del mv
    assert calls == ["released"]
    gc.collect()
    assert calls == ["released"]


def test_on_release_in_a_reference_cycle_is_still_called(store_dir):
    path = os.path.join(store_dir, "cycle")
    core.store_write(path, b"s", [])
    calls = []

    class Holder:
        pass

    seg = core.store_map(path)
    holder = Holder()
    holder.seg = seg
    seg.on_release = lambda holder=holder: calls.append(1)  # refers back to seg
    del seg, holder
    gc.collect()
    assert calls == [1]


def test_on_release_errors_are_unraisable(store_dir, monkeypatch):
    path = os.path.join(store_dir, "err")
    core.store_write(path, b"s", [])
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)

    def boom():
        raise RuntimeError("agent gone")

    seg = core.store_map(path)
    seg.on_release = boom
    del seg
    assert len(seen) == 1 and isinstance(seen[0].exc_value, RuntimeError)


def test_on_release_must_be_callable(store_dir):
    path = os.path.join(store_dir, "cb")
    core.store_write(path, b"s", [])
    seg = core.store_map(path)
    assert seg.on_release is None
    with pytest.raises(TypeError):
        seg.on_release = 3
    seg.on_release = print
    seg.on_release = None
    del seg.on_release
    assert seg.on_release is None


def test_close(store_dir):
    path = os.path.join(store_dir, "close")
    put(path, np.arange(100_000))
    calls = []
    seg, arr = get(path)
    seg.on_release = lambda: calls.append(1)
    with pytest.raises(BufferError, match="view"):
        seg.close()
    del arr
    gc.collect()
    seg.close()
    assert seg.closed and calls == [1]
    seg.close()  # again: nothing
    with pytest.raises(ValueError, match="closed"):
        seg.parts()
    with pytest.raises(ValueError, match="closed"):
        memoryview(seg)
    with pytest.raises(ValueError, match="closed"):
        seg.on_release = print
    del seg
    assert calls == [1]


def test_segment_buffer_is_read_only(store_dir):
    path = os.path.join(store_dir, "ro")
    core.store_write(path, b"stream", [b"x" * 1000])
    seg = core.store_map(path)
    mv = memoryview(seg)
    assert mv.readonly and len(mv) == seg.size
    with pytest.raises(TypeError):
        mv[0] = 0
    import ctypes
    with pytest.raises(TypeError):
        ctypes.c_char.from_buffer(seg)  # asks for a writable buffer


def test_segment_cannot_be_created_directly():
    with pytest.raises(TypeError):
        core.Segment()


def test_replacing_an_object_keeps_old_mappings_intact(store_dir):
    path = os.path.join(store_dir, "replace")
    put(path, np.full(10_000, 1.0))
    _, old = get(path)
    put(path, np.full(10_000, 2.0))
    _, new = get(path)
    assert old[0] == 1.0 and new[0] == 2.0
    assert leftovers(store_dir) == []


# ---- failures ----


def test_non_contiguous_buffer_raises_buffer_error_and_leaves_nothing(store_dir):
    path = os.path.join(store_dir, "nc")
    a = np.arange(1000.0)
    for bad in (a[::2], pickle.PickleBuffer(a[::2]), memoryview(a)[::3]):
        with pytest.raises(BufferError, match="buffer 1 .*not contiguous"):
            core.store_write(path, b"s", [b"ok", bad])
    with pytest.raises(BufferError, match="stream"):
        core.store_write(path, a[::2], [])
    with pytest.raises(TypeError):
        core.store_write(path, b"s", [object()])
    with pytest.raises(TypeError):
        core.store_write(path, b"s", 5)
    assert os.listdir(store_dir) == []


def test_file_size_limit_gives_efbig_and_no_temporary_file(store_dir):
    path = os.path.join(store_dir, "full")
    core.store_write(path, b"old", [b"previous value"])
    code = textwrap.dedent(f"""
        import errno, resource, signal, sys
        import shoal._core as core
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            core.store_write({path!r}, b"s" * 1000, [b"x" * (4 << 20)])
        except OSError as e:
            assert e.errno == errno.EFBIG, e
            assert e.filename == {path!r}, e
            assert ".tmp" in str(e) and "writing" in str(e), e
            print("EFBIG")
            sys.exit(0)
        sys.exit("no error")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "EFBIG" in r.stdout, r.stdout + r.stderr
    assert sorted(os.listdir(store_dir)) == ["full"]
    seg = core.store_map(path)  # the previous object is untouched
    assert bytes(seg.parts()[1][0]) == b"previous value"


def test_another_writers_temporary_file_is_left_alone(store_dir):
    path = os.path.join(store_dir, "busy")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(b"someone else")
    with pytest.raises(FileExistsError, match="creating the temporary file"):
        core.store_write(path, b"s", [])
    with open(tmp, "rb") as f:
        assert f.read() == b"someone else"
    assert not os.path.exists(path)


def test_missing_file(store_dir):
    path = os.path.join(store_dir, "missing")
    with pytest.raises(FileNotFoundError) as e:
        core.store_map(path)
    assert e.value.filename == path and path in str(e.value)


def good_file(store_dir):
    path = os.path.join(store_dir, "victim")
    core.store_write(path, b"S" * 100, [b"a" * 1000, b"b" * 10])
    with open(path, "rb") as f:
        return path, bytearray(f.read())


def rewrite(path, data):
    with open(path, "wb") as f:
        f.write(data)


def patch(data, fmt, off, value):
    struct.pack_into(fmt, data, off, value)
    return data


@pytest.mark.parametrize("name,corrupt,message", [
    ("empty", lambda d: d[:0], "truncated"),
    ("short", lambda d: d[:39], "truncated"),
    ("cut", lambda d: d[:-1], "total size"),
    ("grown", lambda d: d + b"\0", "total size"),
    ("magic", lambda d: patch(d, "<I", 0, 0x12345678), "magic"),
    ("version", lambda d: patch(d, "<I", 4, 2), "version"),
    ("reserved", lambda d: patch(d, "<I", 36, 1), "reserved"),
    ("nbufs", lambda d: patch(d, "<I", 32, 0xFFFFFFFF), "buffer table"),
    ("stream in header", lambda d: patch(d, "<Q", 16, 8), "stream"),
    ("stream past end", lambda d: patch(d, "<Q", 24, 1 << 40), "stream"),
    ("stream overflow", lambda d: patch(d, "<Q", 16, 2**64 - 1), "stream"),
    ("buffer in header", lambda d: patch(d, "<Q", 40, 0), "buffer"),
    ("buffer past end", lambda d: patch(d, "<Q", 56, 1 << 20), "buffer"),
    ("buffer overflow", lambda d: patch(patch(d, "<Q", 56, 2**64 - 64), "<Q", 48, 128),
     "buffer"),
])
def test_corrupt_files_raise_value_error(store_dir, name, corrupt, message):
    path, data = good_file(store_dir)
    core.store_map(path).close()
    rewrite(path, corrupt(data))
    with pytest.raises(ValueError, match=message) as e:
        core.store_map(path)
    assert path in str(e.value)


def test_not_an_object_file(store_dir):
    path = os.path.join(store_dir, "text")
    rewrite(path, b"hello, this is not an object file at all, truly")
    with pytest.raises(ValueError, match="magic"):
        core.store_map(path)
    with pytest.raises(IsADirectoryError):
        core.store_map(store_dir)
    fifo = os.path.join(store_dir, "fifo")
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        core.store_map(fifo)


# ---- concurrency ----

WRITER = """
import pickle, sys
import shoal._core as core
path, w, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    size = 1000 + 50_000 * ((w + i) % 7)
    core.store_write(path, pickle.dumps((w, i, size)), [bytes([w]) * size, b"%d" % i])
"""


def test_concurrent_writers_of_one_path_each_leave_a_consistent_file(store_dir):
    path = os.path.join(store_dir, "shared")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(w), "40"])
               for w in range(1, 5)]
    seen = set()
    try:
        while any(p.poll() is None for p in writers):
            if not os.path.exists(path):
                continue
            seg = core.store_map(path)
            stream, (blob, tag) = seg.parts()
            w, i, size = pickle.loads(stream)
            assert bytes(blob) == bytes([w]) * size and bytes(tag) == b"%d" % i
            seen.add(w)
    finally:
        for p in writers:
            assert p.wait(timeout=60) == 0
    seg = core.store_map(path)
    stream, (blob, tag) = seg.parts()
    w, i, size = pickle.loads(stream)
    assert i == 39 and bytes(blob) == bytes([w]) * size
    assert seen and leftovers(store_dir) == []
