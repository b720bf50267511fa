"""The object store: large values in shared memory, zero-copy reads, spilling,
lifetime and reclaiming, with real daemons and workers."""

import gc
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shoal
from _helpers import ExternalDaemon, binary, cluster, env_with_shoal, fresh, short_tmpdir, \
    wait_until  # noqa: F401

MiB = 1 << 20


def store():
    return shoal.status()["store"]


def segments_in(d):
    """The segment files in store directory d: not its marker (.shoal-store)
    nor the freed files kept for recycling (free.*)."""
    return sorted(n for n in os.listdir(d) if n != ".shoal-store" and not n.startswith("free."))


def pool_in(d):
    return sorted(n for n in os.listdir(d) if n.startswith("free."))


def store_files():
    d = shoal._serial.store_info()[0]
    return segments_in(d) if d else []


def digest(a):
    return hashlib.sha1(memoryview(a).cast("B")).hexdigest()


@shoal.remote
def checksum(x):
    return digest(x), bool(getattr(x, "flags", None) is not None and x.flags.writeable)


@shoal.remote
def ones(n):
    return np.ones(n)


@shoal.remote
def echo(x):
    return x


def _segment_of(arr):
    """The shoal._core.Segment a zero-copy array views, or None."""
    base = arr
    while base is not None and not isinstance(base, shoal._core.Segment):
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return base


@pytest.mark.asan
def test_put_and_get_are_zero_copy_read_only_views(cluster):
    a = np.random.default_rng(1).random(MiB)  # 8 MiB
    ref = shoal.put(a)
    assert f"{ref.id:016x}" in store_files()
    b = shoal.get(ref)
    assert np.array_equal(a, b)
    assert not b.flags.writeable
    assert _segment_of(b) is not None, "the driver's value is not a view of the segment"
    with pytest.raises(ValueError):
        b[0] = 1.0
    # Every get maps again; the values stay equal and independent of the Future.
    assert np.array_equal(shoal.get(ref), a)
    # Tasks read it as a read-only view too.
    assert checksum.remote(ref).result() == (digest(a), False)


@pytest.mark.asan
def test_large_arguments_and_results_go_through_the_store(cluster):
    before = store()["objects"]
    a = np.arange(2 * MiB, dtype=np.int64)  # 16 MiB as a plain argument
    assert checksum.remote(a).result() == (digest(a), False)
    r = ones.remote(MiB)
    v = r.result()
    assert v.shape == (MiB,) and float(v.sum()) == MiB and not v.flags.writeable
    assert _segment_of(v) is not None
    # A stored result passed on is read in place by the next task.
    assert checksum.remote(r).result() == (digest(np.ones(MiB)), False)
    # kwargs and actors take the same path.
    assert echo.remote(x=a).result()[-1] == a[-1]
    del v, r
    gc.collect()
    wait_until(lambda: store()["objects"] <= before, what="temporary objects freed")


def test_an_unchanged_argument_passed_again_is_stored_once(cluster):
    gc.collect()
    wait_until(lambda: not shoal._serial._args_copies, what="earlier copies released")
    before = store()["objects"]
    a = np.arange(2 * MiB, dtype=np.int64)  # 16 MiB
    futs = [checksum.remote(a) for _ in range(4)]
    futs.append(checksum.remote(x=a))  # other (args, kwargs): a copy of its own
    assert store()["objects"] == before + 2
    assert [f.result(timeout=30) for f in futs] == [(digest(a), False)] * 5
    # Kept for a moment after its tasks (ARGS_GRACE), then released.
    assert checksum.remote(a).result(timeout=30) == (digest(a), False)
    assert store()["objects"] <= before + 2
    del futs
    gc.collect()
    wait_until(lambda: store()["objects"] <= before, what="the copies released after the grace")
    assert not shoal._serial._args_copies


def test_many_stored_arguments_expire_through_one_thread(cluster):
    import threading
    arrays = [np.full(MiB // 8, float(i)) for i in range(20)]  # 1 MiB each: stored
    futs = [checksum.remote(a) for a in arrays]
    assert [f.result(timeout=30) for f in futs] == [(digest(a), False) for a in arrays]
    sweepers = [t for t in threading.enumerate() if t.name == "shoal-args-expiry"]
    assert len(sweepers) <= 1
    del futs
    gc.collect()
    wait_until(lambda: not shoal._serial._args_copies, what="every copy released after the grace")


def test_a_changed_argument_is_stored_again(cluster):
    @shoal.remote
    def first_and_sum(x, t):
        time.sleep(t)
        return int(x[0]), int(x.sum())

    before = store()["objects"]
    a = np.arange(2 * MiB, dtype=np.int64)
    s0 = int(a.sum())
    f0 = first_and_sum.remote(a, 0.5)  # still pending when a changes
    a[0] = 1000
    f1 = first_and_sum.remote(a, 0.5)
    a[-1] = 7  # the last byte of the buffer changes too
    f2 = first_and_sum.remote(a, 0.5)
    assert store()["objects"] == before + 3, "a changed array reused a stale copy"
    assert f0.result(timeout=30) == (0, s0)
    assert f1.result(timeout=30) == (1000, s0 + 1000)
    assert f2.result(timeout=30) == (1000, s0 + 1000 - (2 * MiB - 1) + 7)
    # Unchanged again: reuses the last copy.
    f3 = first_and_sum.remote(a, 0.5)  # the same (args, kwargs) as f2
    assert store()["objects"] <= before + 3
    assert f3.result(timeout=30) == f2.result()
    del f0, f1, f2, f3
    gc.collect()
    wait_until(lambda: store()["objects"] <= before, what="the copies released")


def test_store_same_compares_every_byte(tmp_path):
    a = np.arange(1000, dtype=np.int64)
    bufs = []
    stream = __import__("pickle").dumps(a, 5, buffer_callback=bufs.append)
    path = str(tmp_path / "obj")
    shoal._core.store_write(path, stream, bufs)
    assert shoal._core.store_same(path, stream, bufs) is True
    b = a.copy()
    b[999] += 1
    assert shoal._core.store_same(path, stream, [b]) is False
    assert shoal._core.store_same(path, stream, [a[:999]]) is False
    assert shoal._core.store_same(path, stream + b"x", bufs) is False
    assert shoal._core.store_same(path, stream, []) is False
    with pytest.raises(FileNotFoundError):
        shoal._core.store_same(str(tmp_path / "none"), stream, bufs)
    with open(path, "r+b") as f:
        f.write(b"XXXX")  # not an object file any more
    assert shoal._core.store_same(path, stream, bufs) is False
    spans = shoal._core.buffer_spans([a, b"xy"])
    assert spans[0] == (a.__array_interface__["data"][0], a.nbytes) and spans[1][1] == 2


def _mount_of(d):
    """The mount options of the file system mounted on d, or None."""
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == d:
                return fields[3]
    return None


def _can_mount():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            thp = f.read()
    except OSError:
        return False
    return os.geteuid() == 0 and "[deny]" not in thp


@pytest.mark.skipif(not _can_mount(), reason="needs root and THP for tmpfs to mount the store")
def test_store_on_a_private_huge_page_tmpfs_goes_with_its_agent(fresh, monkeypatch):
    shoal.init(num_workers=1)
    d = shoal._serial.store_info()[0]
    opts = _mount_of(d)
    assert opts is not None and "huge=within_size" in opts, opts
    a = np.arange(4 * MiB, dtype=np.int64)  # 32 MiB: 2 MiB pages
    assert checksum.remote(shoal.put(a)).result(timeout=30) == (digest(a), False)
    agent = int(os.path.basename(d).split("-")[1])
    os.kill(agent, signal.SIGKILL)  # leaves its directory and its mount
    wait_until(lambda: not os.path.exists(f"/proc/{agent}/status") or
               open(f"/proc/{agent}/status").read().find("State:\tZ") >= 0, what="agent dead")
    shoal.shutdown()
    assert _mount_of(d) is not None
    # The next agent removes both; SHOAL_STORE_HUGE_PAGES=0 keeps a plain directory.
    monkeypatch.setenv("SHOAL_STORE_HUGE_PAGES", "0")
    shoal.init(num_workers=1)
    wait_until(lambda: _mount_of(d) is None and not os.path.exists(d), what="stale store reaped")
    d2 = shoal._serial.store_info()[0]
    assert _mount_of(d2) is None and os.path.isdir(d2)
    assert checksum.remote(a).result(timeout=30) == (digest(a), False)
    shoal.shutdown()
    assert not os.path.exists(d2)


def test_recycled_segments_never_show_stale_bytes(fresh):
    shoal.init(num_workers=1, object_store_memory=1 << 30)
    d = shoal._serial.store_info()[0]
    r = shoal.put(np.full(48 * MiB // 8, 7.0))  # 48 MiB: freed into the pool
    del r
    gc.collect()
    wait_until(lambda: len(pool_in(d)) == 1, what="the freed segment kept for recycling")
    assert 48 * MiB <= store()["recycle_pool"] < 49 * MiB      # shown in shoal status
    b = np.arange(40 * MiB // 8, dtype=np.float64)  # smaller: written into the pooled file
    rb = shoal.put(b)
    assert pool_in(d) == [] and store()["recycle_pool"] == 0
    assert os.path.getsize(os.path.join(d, f"{rb.id:016x}")) < 41 * MiB  # truncated to its size
    got = shoal.get(rb)
    assert got.shape == b.shape and np.array_equal(got, b)
    assert checksum.remote(rb).result(timeout=30) == (digest(b), False)
    # A segment a worker was sent is not recycled (it may still view it).
    del got, rb
    gc.collect()
    wait_until(lambda: store()["objects"] == 0, what="rb freed")
    assert pool_in(d) == []
    r = shoal.put(np.full(48 * MiB // 8, 5.0))
    del r
    gc.collect()
    wait_until(lambda: len(pool_in(d)) == 1, what="pooled again")
    # A task result written by a worker takes the same path.
    ones_ref = ones.remote(5 * MiB)  # 40 MiB of 1.0
    v = ones_ref.result(timeout=30)
    assert float(v.sum()) == 5 * MiB and float(v.min()) == 1.0 and pool_in(d) == []
    del v, ones_ref
    gc.collect()
    wait_until(lambda: len(pool_in(d)) == 1, what="pooled once more")
    shoal.shutdown()
    assert not os.path.exists(d)


@shoal.remote
class Keeper:
    def keep(self, x):
        self.x = x  # a zero-copy view of the argument's segment, kept after the task
        return float(x[0])

    def first_last(self):
        return float(self.x[0]), float(self.x[-1])


def test_a_view_kept_by_an_actor_never_changes(fresh):
    """An actor keeps a view of a stored argument after its call; the driver
    drops the object and writes new ones of the same size: the actor's array
    stays as it was (its segment is not recycled under it)."""
    shoal.init(num_workers=1, object_store_memory=1 << 30)
    k = Keeper.remote()
    r = shoal.put(np.full(48 * MiB // 8, 3.0))
    assert k.keep.remote(r).result(timeout=30) == 3.0
    del r
    gc.collect()
    wait_until(lambda: store()["objects"] == 0, what="the object freed")
    others = [shoal.put(np.full(48 * MiB // 8, 9.0)) for _ in range(2)]
    assert [float(shoal.get(o)[0]) for o in others] == [9.0, 9.0]
    assert k.first_last.remote().result(timeout=30) == (3.0, 3.0)


def test_the_pool_gives_way_to_objects(fresh):
    shoal.init(num_workers=1, object_store_memory=256 * MiB)
    d = shoal._serial.store_info()[0]
    r = shoal.put(np.zeros(48 * MiB // 8))
    del r
    gc.collect()
    wait_until(lambda: len(pool_in(d)) == 1, what="pooled")
    # 3 x 70 MiB in use: with the pool's 48 MiB over the 256 MiB capacity.
    refs = [shoal.put(np.full(70 * MiB // 8, float(i))) for i in range(3)]
    assert pool_in(d) == []
    assert store()["spills"] == 0  # the pool went first, nothing was spilled
    assert [float(shoal.get(x)[0]) for x in refs] == [0.0, 1.0, 2.0]


def test_small_values_travel_inline(cluster):
    before = store()
    small = np.arange(100)
    r = echo.remote(small)
    v = r.result()
    assert np.array_equal(v, small) and v.flags.writeable  # an ordinary unpickled copy
    ref = shoal.put(b"x" * 1000)
    assert shoal.get(ref) == b"x" * 1000
    after = store()
    assert after["objects"] == before["objects"]
    assert f"{ref.id:016x}" not in store_files()


@shoal.remote
def numbers(n):
    return list(range(n))


def test_values_without_buffers_go_to_the_store_only_when_large(cluster):
    before = store()["objects"]
    small = numbers.remote(20_000)  # ~100 KB pickled, no buffers: inline
    assert small.result(timeout=30)[-1] == 19_999
    assert store()["objects"] == before
    big = numbers.remote(400_000)  # ~2 MiB: stored, and kept by the Future once read
    first = big.result(timeout=30)
    assert first[-1] == 399_999 and big.result() is first
    assert f"{big.id:016x}" in store_files()


def test_bytes_bytearray_memoryview_and_frames(cluster):
    big = os.urandom(3 * MiB)
    for value in (big, bytearray(big), memoryview(big)):
        ref = shoal.put(value)
        assert f"{ref.id:016x}" in store_files(), type(value)
        back = shoal.get(ref)
        assert bytes(back) == big, type(value)
        assert echo.remote(ref).result() is not None
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": np.arange(MiB), "b": np.random.default_rng(0).random(MiB)})
    ref = shoal.put(df)
    assert f"{ref.id:016x}" in store_files()
    back = shoal.get(ref)
    pd.testing.assert_frame_equal(back, df)


@pytest.mark.asan
def test_a_segment_removed_behind_our_back_is_object_lost(cluster):
    ref = shoal.put(np.zeros(MiB))
    os.unlink(os.path.join(shoal._serial.store_info()[0], f"{ref.id:016x}"))
    with pytest.raises(shoal.ObjectLostError, match=f"{ref.id:#x}"):
        shoal.get(ref)
    with pytest.raises(shoal.ObjectLostError, match=f"{ref.id:#x}"):
        checksum.remote(ref).result(timeout=30)
    assert echo.remote(1).result() == 1  # the worker that failed to read it still serves


@pytest.mark.asan
def test_lifetime_follows_futures_and_pending_tasks(cluster):
    a = np.zeros(2 * MiB)
    ref = shoal.put(a)
    name = f"{ref.id:016x}"

    @shoal.remote
    def slow_sum(x, t):
        time.sleep(t)
        return float(x.sum())

    fut = slow_sum.remote(ref, 1.0)
    del ref
    gc.collect()
    time.sleep(0.2)
    assert name in store_files(), "freed while a pending task still needs it"
    assert fut.result(timeout=30) == 0.0
    wait_until(lambda: name not in store_files(), what="the object freed after its task")
    # A mapping keeps the object alive after its Future is gone, and only that.
    ref = shoal.put(a)
    name = f"{ref.id:016x}"
    view = shoal.get(ref)
    del ref
    gc.collect()
    time.sleep(0.2)
    assert name in store_files(), "freed while the driver still maps it"
    assert float(view.sum()) == 0.0
    del view
    gc.collect()
    wait_until(lambda: name not in store_files(), what="the object freed after its last view")


def _rss(pid):
    """(anonymous, shared-memory) resident kB of a process, from /proc."""
    anon = shm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith("RssShmem:"):
                shm = int(line.split()[1])
    return anon, shm


@shoal.remote
def touch_and_measure(x):
    total = float(x.sum())  # reads every page of the array
    anon, shm = _rss(os.getpid())
    return os.getpid(), total, anon, shm


def test_sixteen_readers_share_one_copy(fresh):
    """16 tasks reading one array add about one array of memory, not 16:
    measured through /proc (each worker's private and shared resident
    memory) and the store's one file, not through time."""
    shoal.init(num_workers=2, object_store_memory=1024 * MiB)
    size = 256 * MiB
    a = np.ones(size // 8)
    ref = shoal.put(a)
    del a
    gc.collect()
    out = shoal.get([touch_and_measure.remote(ref) for _ in range(16)])
    assert all(total == size // 8 for _, total, _, _ in out)
    kb = size // 1024
    private = {}
    for pid, _, anon, shm in out:
        # Each worker maps the one segment (shared) and holds no copy of it.
        assert shm >= kb * 0.9, (pid, shm, kb)
        private[pid] = max(private.get(pid, 0), anon)
    added = sum(private.values())
    assert added < kb * 0.25 * len(private), \
        f"workers hold {added} kB of private memory for one {kb} kB array"
    # The only copy: one file of the array's size in the store.
    d = shoal._serial.store_info()[0]
    files = [os.path.join(d, n) for n in os.listdir(d)]
    on_tmpfs = sum(os.stat(f).st_blocks * 512 for f in files) // 1024
    assert kb <= on_tmpfs < kb * 1.1, (on_tmpfs, kb)


@shoal.remote
def shmem_kb():
    return _rss(os.getpid())[1]


@pytest.mark.asan
def test_workers_keep_mappings_until_the_object_goes(fresh):
    """A worker keeps a segment mapped after its task (the next task on the
    same object finds its pages mapped) and drops it when the agent frees or
    spills the object."""
    shoal.init(num_workers=1, object_store_memory=256 * MiB)
    ref = shoal.put(np.ones(8 * MiB))  # 64 MiB
    assert touch_and_measure.remote(ref).result()[3] >= 60 * 1024
    assert shmem_kb.remote().result() >= 60 * 1024  # still mapped after the task
    del ref
    gc.collect()
    wait_until(lambda: shmem_kb.remote().result() < 8 * 1024, timeout=10,
               what="the worker dropping its mapping of the freed object")
    # Spilled: the same.
    refs = [shoal.put(np.full(8 * MiB, i, dtype=np.float64)) for i in range(2)]
    assert touch_and_measure.remote(refs[0]).result()[1] == 0.0
    more = [shoal.put(np.zeros(8 * MiB)) for _ in range(3)]  # 5 x 64 MiB > 256 MiB: refs[0] spills
    assert store()["spilled_objects"] >= 1
    wait_until(lambda: shmem_kb.remote().result() < 8 * 1024, timeout=10,
               what="the worker dropping its mapping of the spilled object")
    assert touch_and_measure.remote(refs[0]).result()[1] == 0.0  # comes back when needed
    del more


@pytest.mark.asan
def test_spilling_three_times_the_capacity_reads_back_identical(fresh):
    shoal.init(num_workers=2, object_store_memory=32 * MiB)
    refs, sums = [], []
    for i in range(12):  # 12 x 8 MiB = 3x the capacity
        a = np.random.default_rng(i).random(MiB)
        refs.append(shoal.put(a))
        sums.append(digest(a))
    st = store()
    assert st["used"] <= st["capacity"] and st["spilled_objects"] > 0 and st["spills"] > 0
    for r, s in zip(refs, sums):
        b = shoal.get(r)
        assert digest(b) == s
        del b
    assert [d for d, _ in shoal.get([checksum.remote(r) for r in refs])] == sums
    st = store()
    assert st["restores"] > 0 and st["used"] <= st["capacity"]


@pytest.mark.asan
def test_object_larger_than_the_store_is_refused(fresh):
    shoal.init(num_workers=1, object_store_memory=8 * MiB)
    with pytest.raises(shoal.ObjectStoreFullError, match="larger than the whole object store"):
        shoal.put(np.zeros(2 * MiB))  # 16 MiB
    r = ones.remote(2 * MiB)
    with pytest.raises(shoal.ObjectStoreFullError):
        r.result(timeout=60)
    assert store()["used"] == 0
    assert store_files() == []
    assert float(shoal.get(shoal.put(np.ones(1000)))[0]) == 1.0  # still serving


@pytest.mark.asan
def test_pinned_objects_make_a_clear_full_error(fresh):
    shoal.init(num_workers=1, object_store_memory=24 * MiB)
    refs = [shoal.put(np.full(MiB, i, dtype=np.float64)) for i in range(2)]  # 2 x 8 MiB
    views = [shoal.get(r) for r in refs]  # mapped: cannot be spilled
    big = shoal.put(np.full(2 * MiB, 7.0))  # no room in memory: it goes straight to disk
    assert store()["spilled_objects"] == 1
    with pytest.raises(shoal.ObjectStoreFullError, match="in use"):
        shoal.get(big)  # bringing it back needs room the mapped views hold
    assert [float(v[0]) for v in views] == [0.0, 1.0]
    del views
    gc.collect()
    assert float(shoal.get(big)[-1]) == 7.0  # room again once the views are gone


def _is_root():
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not _is_root(), reason="needs root to mount a small tmpfs as a full disk")
def test_full_spill_disk_gives_store_full_error_and_no_corruption(fresh):
    mnt = short_tmpdir("sh-spill-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", mnt], check=True)
    d = None
    try:
        d = ExternalDaemon("--object-store-memory", "16M", "--spill-dir", mnt, workers=1)
        shoal.init(address=d.dir)
        kept, sums = [], []
        with pytest.raises(shoal.ObjectStoreFullError):
            for i in range(10):  # 10 x 4 MiB: 16 in memory + 12 on disk is all there is
                a = np.random.default_rng(i).random(MiB // 2)
                kept.append(shoal.put(a))
                sums.append(digest(a))
        assert len(kept) >= 4
        for r, s in zip(kept, sums):
            assert digest(shoal.get(r)) == s
        shoal.shutdown()
        assert d.proc.poll() is None, "the daemon died"
    finally:
        shoal.shutdown()
        if d is not None:
            d.stop()
        subprocess.run(["umount", mnt], check=False)
        os.rmdir(mnt)


def _store_dir_of(d):
    out = subprocess.run([binary(), "status", "--json", "--socket-dir", d.dir],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)["store"]["dir"]


@pytest.mark.asan
def test_driver_killed_mid_put_leaves_nothing(fresh):
    d = ExternalDaemon(workers=1)
    try:
        sdir = _store_dir_of(d)
        code = ("import numpy as np, shoal, sys\n"
                f"shoal.init(address={d.dir!r})\n"
                "a = np.ones(96 << 20)\n"  # 768 MiB: a put takes a while
                "print('ready', flush=True)\n"
                "while True:\n"
                "    r = shoal.put(a); del r\n")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             env=env_with_shoal(), text=True)
        assert p.stdout.readline().strip() == "ready"
        wait_until(lambda: any(n.endswith(".tmp") for n in os.listdir(sdir)), timeout=30,
                   interval=0.002, what="a put in progress")
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        wait_until(lambda: segments_in(sdir) == [], timeout=15,
                   what=f"the killed driver's segments reclaimed (left: {segments_in(sdir)})")
        shoal.init(address=d.dir)
        assert shoal.status()["store"]["used"] == 0
        assert float(shoal.get(shoal.put(np.ones(MiB))).sum()) == MiB
    finally:
        shoal.shutdown()
        d.stop()


@shoal.remote(max_retries=2)
def big_result(n):
    return np.ones(n)


@pytest.mark.asan
def test_worker_killed_mid_result_write_is_retried_and_reclaimed(fresh):
    d = ExternalDaemon(workers=1)
    try:
        sdir = _store_dir_of(d)
        shoal.init(address=d.dir)
        fut = big_result.remote(96 << 20)  # 768 MiB result
        tmp = []

        def writing():
            tmp[:] = [n for n in os.listdir(sdir) if n.endswith(".tmp")]
            return bool(tmp)
        wait_until(writing, timeout=60, interval=0.002, what="the result being written")
        pid = int(tmp[0].split(".")[1])
        os.kill(pid, signal.SIGKILL)
        v = fut.result(timeout=120)
        assert v.shape == (96 << 20,) and float(v[-1]) == 1.0
        del v, fut
        gc.collect()
        wait_until(lambda: segments_in(sdir) == [], timeout=15, what="no segment left behind")
    finally:
        shoal.shutdown()
        d.stop()


@pytest.mark.asan
def test_shoal_memory_lists_objects(fresh):
    d = ExternalDaemon(workers=1)
    try:
        shoal.init(address=d.dir)
        ref = shoal.put(np.zeros(MiB))
        small = shoal.put(123)
        out = subprocess.run([binary(), "memory", "--socket-dir", d.dir], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert f"{ref.id:016x}" in out.stdout and "8.0 MiB" in out.stdout
        assert "memory" in out.stdout and f"pid {os.getpid()}" in out.stdout
        assert "node 1:" in out.stdout
        js = subprocess.run([binary(), "memory", "--json", "--socket-dir", d.dir],
                            capture_output=True, text=True, timeout=30)
        objs = {o["id"]: o for o in json.loads(js.stdout)["object_list"]}
        assert objs[ref.id]["where"] == "memory" and objs[ref.id]["size"] >= 8 * MiB
        assert objs[small.id]["where"] == "inline"
        bad = subprocess.run([binary(), "memory", "--bogus"], capture_output=True, text=True)
        assert bad.returncode == 2 and "unknown option" in bad.stderr
    finally:
        shoal.shutdown()
        d.stop()
