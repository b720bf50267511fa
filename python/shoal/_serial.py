"""Serialization helpers the C client and the C worker loop call.

Functions and classes are pickled once with cloudpickle. Arguments and results
use the standard pickle (protocol 5), falling back to cloudpickle for values
plain pickle cannot handle (lambdas, closures, classes defined in __main__).
"""

import heapq
import itertools
import os
import pickle
import threading
import time
import weakref

PROTOCOL = 5

# cloudpickle is imported on first need (it costs tens of milliseconds, and
# plain pickle handles most values): see preload().
_cloudpickle = None


def _cp():
    global _cloudpickle
    if _cloudpickle is None:
        import cloudpickle
        _cloudpickle = cloudpickle
    return _cloudpickle


def preload():
    """Imports cloudpickle now: called while something else (the daemon, the
    agent's first request) is being waited for, so that start-up overlaps."""
    _cp()


class DepRef:
    """Placeholder for a Future passed as a top-level argument; the worker
    replaces it with the dependency's value (dependency number ``i``)."""

    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i

    def __reduce__(self):
        return (DepRef, (self.i,))


def dumps(value):
    """Pickles a value (arguments or a result)."""
    try:
        return pickle.dumps(value, PROTOCOL)
    except Exception:
        return _cp().dumps(value, PROTOCOL)


loads = pickle.loads
_pickle_dumps = pickle.dumps


def dumps_function(fn):
    """Pickles a function or class definition once, by value when needed."""
    return _cp().dumps(fn, PROTOCOL)


def dumps_exception(err):
    """Pickles (exception, traceback text) for the driver; an exception that
    cannot be pickled (or unpickled) travels as a RemoteError with the same text."""
    import traceback

    from .exceptions import RemoteError

    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        data = _cp().dumps((err, tb), PROTOCOL)
        pickle.loads(data)  # must round-trip, or the driver would fail later
        return data
    except Exception:
        name = f"{type(err).__module__}.{type(err).__qualname__}"
        return _cp().dumps((RemoteError(name, str(err), tb), tb), PROTOCOL)


# ---- the object store ----
#
# A value whose pickle (stream plus out-of-band buffers, protocol 5) comes to
# the inline threshold or more is written as one segment file in the node's
# object store (STORE_DIR/<16 hex digits of the object id>) instead of
# travelling in a message; readers map that file and get numpy arrays and
# other buffers back as zero-copy, read-only views. Workers learn the store
# from their environment, drivers from the daemon's HELLO_OK (configure()).

_store_dir = os.environ.get("SHOAL_STORE_DIR") or None
try:
    _threshold = int(os.environ.get("SHOAL_INLINE_THRESHOLD") or 65536)
    _capacity = int(os.environ.get("SHOAL_STORE_CAPACITY") or 0)
except ValueError:
    _threshold, _capacity = 65536, 0


def configure(node_info):
    """Takes the store directory and inline threshold a driver's daemon
    announced. A daemon whose store this process cannot see (another host)
    means no store: values then travel inline."""
    global _store_dir, _threshold, _capacity
    d = node_info.get("store_dir") or None
    # The agent marks its store: a process in another mount namespace may see
    # the directory but not the private tmpfs the agent mounted on it.
    _store_dir = d if d and os.path.exists(os.path.join(d, ".shoal-store")) else None
    _threshold = int(node_info.get("inline_threshold") or 65536)
    _capacity = int(node_info.get("store_capacity") or 0)


def store_info():
    """(store directory or None, inline threshold in bytes)."""
    return _store_dir, _threshold


def _segment_path(oid):
    return f"{_store_dir}/{oid:016x}"


def _oob(value):
    """Pickles value with out-of-band buffers: (stream, buffers, total size)."""
    bufs = []
    try:
        stream = pickle.dumps(value, PROTOCOL, buffer_callback=bufs.append)
    except Exception:
        bufs = []
        try:
            stream = _mv_pickler_dumps(value, bufs)
        except Exception:
            bufs = []
            stream = _cp().dumps(value, PROTOCOL, buffer_callback=bufs.append)
    size = len(stream)
    for b in bufs:
        size += b.raw().nbytes
    return stream, bufs, size


def _reduce_memoryview(m):
    return (memoryview, (pickle.PickleBuffer(m),))


def _mv_pickler_dumps(value, bufs):
    """Pickles values holding memoryviews (plain pickle refuses them)."""
    import copyreg
    import io

    out = io.BytesIO()
    p = pickle.Pickler(out, PROTOCOL, buffer_callback=bufs.append)
    p.dispatch_table = copyreg.dispatch_table.copy()
    p.dispatch_table[memoryview] = _reduce_memoryview
    p.dump(value)
    return out.getvalue()


def _write_segment(oid, stream, bufs):
    """Writes the segment of object oid; returns its size. A full store
    (tmpfs) raises ObjectStoreFullError."""
    import errno

    from . import _core
    from .exceptions import ObjectStoreFullError
    size = len(stream) + sum(b.raw().nbytes for b in bufs)
    if _capacity and size > _capacity:
        raise ObjectStoreFullError(
            f"object {oid:#x} is {size / (1 << 20):.1f} MiB, larger than the whole object "
            f"store ({_capacity / (1 << 20):.1f} MiB): start the cluster with a larger "
            "--object-store-memory (shoal.init(object_store_memory=...))")
    try:
        return _core.store_write(_segment_path(oid), stream, bufs)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise ObjectStoreFullError(
                f"no room to write object {oid:#x} into the object store {_store_dir}: "
                f"{e.strerror}; free objects you no longer need, or give the store's "
                "file system (a tmpfs) more room") from None
        raise


# A value with no buffers to share (a list of numbers, a dict of strings)
# is copied out of the stream when it is read, wherever the stream is: the
# store saves it only the message, so it goes there from this size (or the
# inline threshold, if larger). Top-level bytes-like values follow the
# inline threshold itself.
STREAM_ONLY_MIN = 1 << 20


def _stored(value):
    """Pickles value for the store or for a message: (stream, buffers) when
    it belongs in the store, else (None, inline bytes)."""
    bufs = []
    try:
        stream = _pickle_dumps(value, PROTOCOL, buffer_callback=bufs.append)
    except Exception:
        stream, bufs, _ = _oob(value)  # memoryviews, or values only cloudpickle takes
    if not bufs and len(stream) < _threshold:
        return None, stream  # the common case: one pickling, nothing more
    if not bufs and len(stream) < STREAM_ONLY_MIN and \
            not isinstance(value, (bytes, bytearray, memoryview)):
        return None, stream
    size = len(stream)
    for b in bufs:
        size += b.raw().nbytes
    if size >= _threshold:
        return stream, bufs
    return None, dumps(value)  # small buffers: in-band after all


def dumps_args(pair):
    """The C client's pickler for (args, kwargs): bytes, or, when they are
    too big for a message, a Future of their stored copy (the task then
    depends on it). The same arguments passed again, unchanged, while tasks
    submitted with that copy are pending reuse it (see _ArgCopy)."""
    if _store_dir is None:
        return dumps(pair)
    stream, blob = _stored(pair)
    if stream is None:
        return blob
    from . import _api
    client = _api._client()
    key = _args_key(stream, blob)
    f = _stored_args_again(client, key, stream, blob)
    if f is None:
        f = _api._put_stored_parts(stream, blob, client)
        f._arg_copy = (key, stream)
    return f


# ---- stored arguments passed again ----
#
# f.remote(a) with a large array stores (args, kwargs) as an object the task
# depends on. Sixteen calls with the same array would store sixteen copies;
# instead the driver remembers each stored copy, by the identity, address and
# size of the buffers it came from and its pickle stream, while tasks
# submitted with it are pending (or their Futures alive), and for ARGS_GRACE
# seconds after the last of them is done (calls made one after another, each
# waiting for the previous, or tasks that finish while the next call is being
# prepared, still find it); then it is released. The same arguments
# passed again reuse the copy only if every byte is still the same:
# _core.store_same compares the segment with the arguments (memcmp, reading
# at memory bandwidth, ~3x cheaper than writing a new copy to tmpfs). Never on
# identity alone: the array may have been changed in place.

ARGS_GRACE = 1.0                # seconds a copy is kept after its last task
_args_copies = {}               # key -> _ArgCopy: copies with pending tasks or in grace
_args_lock = threading.Lock()
_args_cv = threading.Condition(_args_lock)   # the sweeper waits on it
_args_expiry = []               # heap of (deadline, seq, _ArgCopy, its idle count)
_args_seq = itertools.count()
_sweeper = None                 # the thread running _args_sweep


class _ArgCopy:
    """A stored copy of some task's arguments and the tasks using it."""

    __slots__ = ("key", "future", "stream", "users", "idle")

    def __init__(self, key, future, stream):
        self.key = key          # _args_key(...)
        self.future = future    # the stored copy's Future (keeps it alive)
        self.stream = stream    # its pickle stream (bytes)
        self.users = 0          # tasks submitted with it, not yet done or dropped
        self.idle = 0           # bumped each time users drops to 0 (names the grace timer)


def _args_key(stream, bufs):
    from . import _core
    owners = []
    for b in bufs:
        try:
            owners.append(id(b.raw().obj))
        except (AttributeError, BufferError, ValueError):
            owners.append(id(b))
    return (len(stream), tuple(owners), _core.buffer_spans(bufs))


def _stored_args_again(client, key, stream, bufs):
    """The Future of a stored copy of exactly these arguments, or None."""
    with _args_lock:
        copy = _args_copies.get(key)
        future = copy and copy.future  # a strong reference: it may expire meanwhile
    if future is None or future._client is not client or copy.stream != stream:
        return None
    from . import _core
    try:
        same = _core.store_same(_segment_path(future._id), stream, bufs)
    except OSError:  # spilled (or freed): store a new copy
        return None
    return future if same else None


def args_used(future, task):
    """Future._used_by: the client submitted ``task`` with ``future`` (a
    stored copy of its arguments) as the argument object. The copy is kept
    for reuse until every such task is done or its Future dropped."""
    key, stream = future._arg_copy
    with _args_lock:
        copy = _args_copies.get(key)
        if copy is None or copy.future is not future:
            copy = _args_copies[key] = _ArgCopy(key, future, stream)
        copy.users += 1
    done = weakref.finalize(task, _args_done, copy)
    task.add_done_callback(lambda _t: done())


def _args_done(copy):
    global _sweeper
    with _args_lock:
        copy.users -= 1
        if copy.users:
            return
        copy.idle += 1
        heapq.heappush(_args_expiry, (time.monotonic() + ARGS_GRACE, next(_args_seq), copy,
                                      copy.idle))
        if _sweeper is None or not _sweeper.is_alive():
            _sweeper = threading.Thread(target=_args_sweep, name="shoal-args-expiry", daemon=True)
            _sweeper.start()
        _args_cv.notify()


def _args_sweep():
    """One thread releases the copies whose grace ran out (not a timer per copy)."""
    while True:
        with _args_lock:
            while not _args_expiry:
                _args_cv.wait()
            deadline, _, copy, idle = _args_expiry[0]
            left = deadline - time.monotonic()
            if left > 0:
                _args_cv.wait(left)
                continue
            heapq.heappop(_args_expiry)
            if copy.users or copy.idle != idle:
                continue  # used again since
            if _args_copies.get(copy.key) is copy:
                del _args_copies[copy.key]
            future, copy.future = copy.future, None
        # The copy's Future goes here, outside the lock (its RELEASE follows;
        # the agent frees the object once no task needs it).
        del future


def forget_args():
    """Drops every remembered copy (shutdown)."""
    with _args_lock:
        _args_copies.clear()
        _args_expiry.clear()


def dumps_result(value, task_id):
    """The worker's pickler for a task's value: bytes, or the segment size
    (an int) after writing it to the store under the task's id."""
    if _store_dir is None:
        return dumps(value)
    stream, blob = _stored(value)
    if stream is None:
        return blob
    return _write_segment(task_id, stream, blob)


def _load_segment(seg, with_views=False):
    """The value a segment holds; with_views: (value, whether it may view
    the mapping). A value without out-of-band buffers cannot: unpickling
    copies what it needs out of the stream."""
    stream, bufs = seg.parts()
    value = pickle.loads(stream, buffers=bufs)
    return (value, bool(bufs)) if with_views else value


def _map(oid):
    """Maps object oid's segment; a segment that is gone is ObjectLostError."""
    from . import _core
    path = _segment_path(oid)
    try:
        return _core.store_map(path)
    except FileNotFoundError:
        from .exceptions import ObjectLostError
        raise ObjectLostError(f"object {oid:#x} is lost: its segment {path} is gone from the "
                              "object store (removed outside shoal?)") from None


# The worker's mappings, by object id: kept after the task, so that the next
# task reading the same object finds its pages mapped already (a mapping is
# made page by page, on first touch: 1 GiB is 262,144 faults). The agent says
# when to drop one (forget_stored), when it spills or frees the object.
_mapped = {}


def load_stored(oid, size):
    """The worker's loader for a dependency in the store (the agent keeps it
    in memory while the task runs)."""
    if _store_dir is None:
        raise RuntimeError("this worker has no object store (SHOAL_STORE_DIR is not set)")
    seg = _mapped.get(oid)
    if seg is None or seg.size != size:
        seg = _mapped[oid] = _map(oid)
    return _load_segment(seg)


def forget_stored(ids):
    """The agent spilled or freed these objects: drop this worker's mappings
    (the memory goes once the last value that views it is gone too)."""
    for oid in ids:
        _mapped.pop(oid, None)


def load_mapped(client, oid, with_views=False):
    """The driver's loader for a stored object: asks the daemon to make it
    resident and count the mapping, which ends when the last view of the
    value is gone. with_views: (value, whether it may view the mapping)."""
    from ._future import _engine_error
    if client is None or _store_dir is None:
        from .exceptions import ObjectLostError
        raise ObjectLostError(f"object {oid:#x} is in an object store this process cannot "
                              "reach (shoal was shut down, or the daemon is on another host)")
    status, _, text = client.map(oid)
    if status != 0:
        raise _engine_error(status, 0, text)
    try:
        seg = _map(oid)
    except BaseException:
        client.unmap(oid)
        raise
    unmap = client.unmap
    seg.on_release = lambda: unmap(oid)
    return _load_segment(seg, with_views)
