/* Segment files of the shared-memory object store as drivers and workers see
 * them: store_write puts a pickle stream and its out-of-band buffers into one
 * file, store_map maps one read-only as a Segment whose buffers come back as
 * zero-copy, read-only views. The node agent seals, spills and frees these
 * files but never parses them.
 *
 * File format (little-endian, one file per object):
 *
 *    0  u32 magic 0x424F4853 ("SHOB")
 *    4  u32 version 1
 *    8  u64 total size of the file
 *   16  u64 stream offset
 *   24  u64 stream length
 *   32  u32 nbufs
 *   36  u32 reserved, 0
 *   40  nbufs x { u64 offset, u64 length }
 *       then the pickle stream, then each buffer at a 64-byte aligned offset
 *       (the gaps are zeros).
 *
 * Writers create PATH.<pid>.tmp (O_EXCL, 0600), write it whole with writev
 * and rename(2) it onto PATH, so a reader never sees a partial object and a
 * writer killed midway leaves only PATH.<pid>.tmp, which the agent removes
 * once that pid is dead.
 *
 * Why writev and not posix_fallocate + mmap + memcpy: on tmpfs a write that
 * covers a whole page allocates it without zeroing it, while fallocate zeroes
 * every page and the mapping then faults or populates them; measured with a
 * 1 GiB buffer on /dev/shm (2 cores, 6.18 kernel) writev ran at 2.0-3.1 GB/s,
 * fallocate + MAP_POPULATE + memcpy at 1.1-1.5 GB/s; numpy's copy into a
 * fresh array (np.empty + np.copyto) at 1.8-2.9 GB/s and into one already
 * faulted in at 5.9-9.6 GB/s. Several threads writing parts did not help.
 * A full tmpfs makes write() fail with ENOSPC, where a store through a
 * mapping would kill the writer with SIGBUS.
 *
 * Drivers also compare a segment with the value they would write again
 * (store_same): an argument passed to many tasks is stored once.
 *
 * Sections: format; writing; mapping and validation; the Segment type; the
 * module functions. */
#include "core.h"

#include <endian.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- format ---- */

#define SEG_MAGIC UINT32_C(0x424F4853) /* "SHOB" read as a little-endian u32 */
#define SEG_VERSION 1u
#define SEG_HDR 40u   /* fixed part of the header */
#define SEG_ENTRY 16u /* one { offset, length } of the buffer table */
#define SEG_ALIGN 64u /* buffers start at multiples of this */

static void put_u32(uint8_t *p, uint32_t v) {
  v = htole32(v);
  memcpy(p, &v, 4);
}

static void put_u64(uint8_t *p, uint64_t v) {
  v = htole64(v);
  memcpy(p, &v, 8);
}

static uint32_t get_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return le32toh(v);
}

static uint64_t get_u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return le64toh(v);
}

/* Raises OSError (its errno subclass: FileNotFoundError, ...) with errno
 * `err`, the message "strerror (what)" and filename `path`.
 * Store errors are system errors on a named file, which sh_core_raise (for
 * connection errors) does not express. Returns NULL. */
static PyObject *raise_os(int err, PyObject *path, const char *fmt, ...) {
  char what[512], msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  snprintf(msg, sizeof msg, "%s (%s)", strerror(err), what);
  PyObject *e = PyObject_CallFunction(PyExc_OSError, "isO", err, msg, path);
  if (e) {
    PyErr_SetObject((PyObject *)Py_TYPE(e), e);
    Py_DECREF(e);
  }
  return NULL;
}

/* ---- writing ---- */

/* What store_write hands to the part that runs without the GIL. */
typedef struct wjob_s {
  const char *path;  /* final name */
  const char *tmp;   /* path + ".<pid>.tmp" */
  struct iovec *iov; /* header, stream, then (padding, buffer) pairs */
  int niov;          /* entries used; none has length 0 */
  const char *what;  /* on failure: the step that failed */
} wjob_t;

/* Writes all of iov[0..n) to fd, resuming after short writes (the kernel
 * writes at most ~2 GiB per call). Consumes iov. 0 or -errno. */
static int write_iov(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(fd, iov, n < IOV_MAX ? n : IOV_MAX);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -errno;
    if (w == 0) return -EIO; /* no progress and no error: never loop */
    for (; n > 0 && (size_t)w >= iov->iov_len; iov++, n--) w -= (ssize_t)iov->iov_len;
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* Recycled files: the agent keeps freed segments of at least RECYCLE_MIN
 * bytes as DIR/free.<size, 16 hex digits>.<seq> (src/node/store.c, "recycled
 * segment files"). Writing into their pages, which exist already, skips the
 * page allocation (and zeroing) a new tmpfs file pays for every page.
 * Measured with 1 GiB on this 2-core VM: 4 KiB pages, a new file 1.5-2.6
 * GB/s, a recycled one through a populated mapping 5.3-6.1 GB/s; huge
 * pages, 4.4-4.9 against 7.0-7.5 GB/s; memcpy into a touched buffer
 * 7.4-8.8 GB/s. */
#define RECYCLE_MIN (32ull << 20) /* the same in src/node/store.c */

/* Claims the smallest pool file of at least `total` bytes in the directory
 * of j->path by renaming it to j->tmp. 1 when claimed, else 0. */
static int claim_recycled(wjob_t *j, uint64_t total) {
  const char *slash = strrchr(j->path, '/');
  if (!slash || total < RECYCLE_MIN) return 0;
  char dir[4096], best[300] = "", from[4400];
  snprintf(dir, sizeof dir, "%.*s", (int)(slash - j->path), j->path);
  DIR *d = opendir(dir);
  if (!d) return 0;
  uint64_t best_size = UINT64_MAX;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, "free.", 5)) continue;
    uint64_t size = strtoull(e->d_name + 5, NULL, 16);
    if (size >= total && size < best_size && strlen(e->d_name) < sizeof best) {
      best_size = size;
      snprintf(best, sizeof best, "%s", e->d_name);
    }
  }
  closedir(d);
  if (!best[0]) return 0;
  snprintf(from, sizeof from, "%s/%s", dir, best);
  /* Another writer may take it first: then this one writes a new file. */
  return rename(from, j->tmp) == 0;
}

/* Writes the iovecs into the claimed file j->tmp through a populated shared
 * mapping (its pages exist: no allocation, so no SIGBUS for a full tmpfs),
 * after truncating it to `total`. Every byte of [0, total) is written (the
 * layout covers it: header, stream, zero padding, buffers), so nothing of
 * the file's previous object remains. 0 or -errno (j->tmp is then left for
 * the caller to remove). */
static int write_recycled(wjob_t *j, uint64_t total) {
  int fd = open(j->tmp, O_RDWR | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat sb;
  int rc = 0;
  if (fstat(fd, &sb) < 0) rc = -errno;
  else if ((uint64_t)sb.st_size < total) rc = -EIO; /* not the pool file it was named as */
  else if (ftruncate(fd, (off_t)total) < 0) rc = -errno;
  uint8_t *m = MAP_FAILED;
  if (!rc && (m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0)) ==
                 MAP_FAILED)
    rc = -errno;
  if (!rc) {
    uint64_t off = 0;
    for (int i = 0; i < j->niov; i++) {
      memcpy(m + off, j->iov[i].iov_base, j->iov[i].iov_len);
      off += j->iov[i].iov_len;
    }
    if (off != total) rc = -EIO;
    munmap(m, total);
  }
  if (close(fd) < 0 && !rc) rc = -errno;
  return rc;
}

/* Creates j->tmp, writes it and renames it onto j->path; runs without the
 * GIL. On failure the temporary file is gone (unless it existed before, which
 * is then another writer's and left alone), j->what names the failed step.
 * Returns 0 or -errno. */
static int write_segment(wjob_t *j, uint64_t total) {
  if (claim_recycled(j, total)) {
    if (write_recycled(j, total) == 0) {
      if (rename(j->tmp, j->path) == 0) return 0;
    }
    unlink(j->tmp); /* and write a new file instead */
  }
  int fd = open(j->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    j->what = "creating the temporary file";
    return -errno;
  }
  int rc = write_iov(fd, j->iov, j->niov);
  if (rc) j->what = "writing the temporary file";
  if (close(fd) < 0 && !rc) {
    rc = -errno;
    j->what = "closing the temporary file";
  }
  if (!rc && rename(j->tmp, j->path) < 0) {
    rc = -errno;
    j->what = "renaming the temporary file onto the object file";
  }
  if (rc) unlink(j->tmp);
  return rc;
}

/* Gets a read-only contiguous (C or Fortran order) view of o into v; part is
 * "the stream" or "buffer N" for messages. 0, or -1 with BufferError (not
 * contiguous) or TypeError (no buffer protocol). */
static int get_contiguous(PyObject *o, Py_buffer *v, const char *part) {
  if (PyObject_GetBuffer(o, v, PyBUF_STRIDES) < 0) return -1;
  if (PyBuffer_IsContiguous(v, 'A')) return 0;
  PyBuffer_Release(v);
  PyErr_Format(PyExc_BufferError,
               "store_write: %s (a %.100s) is not contiguous; the object store "
               "takes only C- or Fortran-contiguous buffers",
               part, Py_TYPE(o)->tp_name);
  return -1;
}

/* Fills the header hdr (SEG_HDR + nbufs * SEG_ENTRY bytes) and the iovecs
 * for the stream sv and buffers bv[0..n). Returns the file's total size, or
 * 0 with OverflowError set when the layout would not fit in 63 bits. */
static uint64_t layout(uint8_t *hdr, const Py_buffer *sv, const Py_buffer *bv,
                       uint32_t n, struct iovec *iov, int *niov) {
  static const uint8_t zeros[SEG_ALIGN];
  uint64_t hlen = SEG_HDR + (uint64_t)n * SEG_ENTRY, off = hlen + (uint64_t)sv->len;
  int k = 0;
  iov[k++] = (struct iovec){hdr, (size_t)hlen};
  if (sv->len) iov[k++] = (struct iovec){sv->buf, (size_t)sv->len};
  for (uint32_t i = 0; i < n; i++) {
    uint64_t pad = (SEG_ALIGN - off % SEG_ALIGN) % SEG_ALIGN;
    if (pad) iov[k++] = (struct iovec){(void *)zeros, (size_t)pad};
    off += pad;
    put_u64(hdr + SEG_HDR + i * SEG_ENTRY, off);
    put_u64(hdr + SEG_HDR + i * SEG_ENTRY + 8, (uint64_t)bv[i].len);
    if (bv[i].len) iov[k++] = (struct iovec){bv[i].buf, (size_t)bv[i].len};
    off += (uint64_t)bv[i].len;
    if (off > (uint64_t)INT64_MAX) {
      PyErr_SetString(PyExc_OverflowError, "store_write: the object is too large");
      return 0;
    }
  }
  put_u32(hdr, SEG_MAGIC);
  put_u32(hdr + 4, SEG_VERSION);
  put_u64(hdr + 8, off);
  put_u64(hdr + 16, hlen);
  put_u64(hdr + 24, (uint64_t)sv->len);
  put_u32(hdr + 32, n);
  put_u32(hdr + 36, 0);
  *niov = k;
  return off;
}

/* Writes the file for an already exported stream sv and buffers bv[0..n);
 * the views stay the caller's. Returns the total size as an int, or NULL. */
static PyObject *write_views(PyObject *path, const char *cpath, Py_buffer *sv,
                             Py_buffer *bv, uint32_t n) {
  size_t plen = strlen(cpath);
  uint8_t *hdr = PyMem_RawMalloc(SEG_HDR + (size_t)n * SEG_ENTRY);
  struct iovec *iov = PyMem_RawMalloc(sizeof *iov * (2 + 2 * (size_t)n));
  char *tmp = PyMem_RawMalloc(plen + 32);
  PyObject *res = NULL;
  if (!hdr || !iov || !tmp) {
    PyErr_NoMemory();
    goto done;
  }
  snprintf(tmp, plen + 32, "%s.%ld.tmp", cpath, (long)getpid());
  wjob_t j = {.path = cpath, .tmp = tmp, .iov = iov};
  uint64_t total = layout(hdr, sv, bv, n, iov, &j.niov);
  if (!total) goto done;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = write_segment(&j, total);
  Py_END_ALLOW_THREADS
  if (rc) {
    raise_os(-rc, path, "store_write: %s %s, %llu bytes", j.what, tmp,
             (unsigned long long)total);
    goto done;
  }
  res = PyLong_FromUnsignedLongLong(total);
done:
  PyMem_RawFree(hdr);
  PyMem_RawFree(iov);
  PyMem_RawFree(tmp);
  return res;
}

/* ---- mapping and validation ---- */

/* Checks that [off, off + len) lies in [lo, size) without overflow. */
static int in_file(uint64_t off, uint64_t len, uint64_t lo, uint64_t size) {
  return off >= lo && off <= size && len <= size - off;
}

/* Validates the header of the mapping p[0..size). Returns NULL when it is
 * good, else a static description of what is wrong. */
static const char *check_header(const uint8_t *p, uint64_t size) {
  if (get_u32(p) != SEG_MAGIC) return "bad magic (not a shoal object file)";
  if (get_u32(p + 4) != SEG_VERSION) return "unsupported version (expected 1)";
  if (get_u64(p + 8) != size) return "the total size in the header is not the file's size";
  if (get_u32(p + 36) != 0) return "the reserved header field is not 0";
  uint64_t n = get_u32(p + 32), hlen = SEG_HDR + n * SEG_ENTRY;
  if (hlen > size) return "the buffer table runs past the end of the file";
  if (!in_file(get_u64(p + 16), get_u64(p + 24), hlen, size))
    return "the pickle stream lies outside the file or overlaps the header";
  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *e = p + SEG_HDR + i * SEG_ENTRY;
    if (!in_file(get_u64(e), get_u64(e + 8), hlen, size))
      return "a buffer lies outside the file or overlaps the header";
  }
  return NULL;
}

/* The Segment object: one read-only mapping of an object file. */
typedef struct seg_obj_s {
  PyObject_HEAD
  uint8_t *base;        /* the mapping; NULL once unmapped */
  size_t size;          /* bytes mapped: the file's size */
  Py_ssize_t exports;   /* buffer views handed out and not yet released */
  uint64_t *table;      /* validated copy: stream {off, len}, then each buffer's */
  uint32_t nbufs;       /* buffers in table (after the stream) */
  PyObject *path;       /* the path as given (str or bytes) */
  PyObject *on_release; /* callable or None; None once called */
} seg_obj_t;

/* Opens, maps and validates cpath into s (GIL held; the syscalls run without
 * it). Returns 0, or -1 with FileNotFoundError / OSError / ValueError set. */
static int map_file(seg_obj_t *s, const char *cpath) {
  int fd, err = 0;
  struct stat sb = {0};
  void *p = MAP_FAILED;
  const char *step = "opening";
  Py_BEGIN_ALLOW_THREADS
  /* O_NONBLOCK: a FIFO put in the store's place must not hang us. */
  fd = open(cpath, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) err = errno;
  else if (fstat(fd, &sb) < 0) err = errno, step = "fstat of";
  else if (S_ISDIR(sb.st_mode)) err = EISDIR;
  else if (S_ISREG(sb.st_mode) && sb.st_size >= (off_t)SEG_HDR &&
           (p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0)) == MAP_FAILED)
    err = errno, step = "mapping";
  if (fd >= 0) close(fd);
  Py_END_ALLOW_THREADS
  if (err) {
    raise_os(err, s->path, "store_map: %s %s", step, cpath);
    return -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    PyErr_Format(PyExc_ValueError, "store_map: %R is not a regular file", s->path);
    return -1;
  }
  if (sb.st_size < (off_t)SEG_HDR) {
    PyErr_Format(PyExc_ValueError, "store_map: %R is not a valid shoal object file: "
                 "truncated (%lld bytes, the header alone has %u)",
                 s->path, (long long)sb.st_size, SEG_HDR);
    return -1;
  }
  s->base = p;
  s->size = (size_t)sb.st_size;
  const char *bad = check_header(s->base, s->size);
  if (bad) {
    PyErr_Format(PyExc_ValueError, "store_map: %R is not a valid shoal object file: %s",
                 s->path, bad);
    return -1;
  }
  s->nbufs = get_u32(s->base + 32);
  if (!(s->table = PyMem_Malloc(sizeof(uint64_t) * 2 * ((size_t)s->nbufs + 1)))) {
    PyErr_NoMemory();
    return -1;
  }
  /* A copy, so that parts() slices what was validated even if someone
   * rewrote the file behind the mapping. */
  for (size_t i = 0; i < 2 * (size_t)s->nbufs; i++)
    s->table[2 + i] = get_u64(s->base + SEG_HDR + 8 * i);
  s->table[0] = get_u64(s->base + 16);
  s->table[1] = get_u64(s->base + 24);
  return 0;
}

/* ---- the Segment type ---- */

/* Unmaps and then calls on_release once (GIL held); an exception it raises is
 * reported as unraisable. The pending exception, if any, is preserved. */
static void unmap(seg_obj_t *s) {
  if (!s->base) return;
  munmap(s->base, s->size);
  s->base = NULL;
  PyObject *cb = s->on_release;
  s->on_release = Py_NewRef(Py_None);
  if (cb && cb != Py_None) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = PyObject_CallNoArgs(cb);
    if (!r) PyErr_WriteUnraisable(cb);
    Py_XDECREF(r);
    PyErr_Restore(type, value, tb);
  }
  Py_XDECREF(cb);
}

static int seg_traverse(seg_obj_t *s, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(s));
  Py_VISIT(s->on_release);
  return 0;
}

/* on_release is deliberately not cleared here: the agent must hear about
 * every unmapping, also of a segment in a reference cycle with its callback.
 * The callback's own references (a closure cell, a bound method's instance
 * dict) break such a cycle. */
static int seg_clear(seg_obj_t *s) { return 0; }

static void seg_dealloc(seg_obj_t *s) {
  PyTypeObject *tp = Py_TYPE(s);
  PyObject_GC_UnTrack(s);
  unmap(s);
  Py_CLEAR(s->on_release);
  Py_CLEAR(s->path);
  PyMem_Free(s->table);
  tp->tp_free((PyObject *)s);
  Py_DECREF(tp);
}

/* Exports the whole mapping, read-only: a request for a writable buffer gets
 * BufferError. The view holds a reference to the segment. */
static int seg_getbuffer(seg_obj_t *s, Py_buffer *view, int flags) {
  if (!s->base) {
    PyErr_Format(PyExc_ValueError, "Segment %R is closed", s->path);
    return -1;
  }
  if (PyBuffer_FillInfo(view, (PyObject *)s, s->base, (Py_ssize_t)s->size, 1, flags) < 0)
    return -1;
  s->exports++;
  return 0;
}

static void seg_releasebuffer(seg_obj_t *s, Py_buffer *view) { s->exports--; }

/* Returns mv[off:off + len] as a new reference, or NULL. */
static PyObject *slice(PyObject *mv, uint64_t off, uint64_t len) {
  PyObject *lo = PyLong_FromUnsignedLongLong(off);
  PyObject *hi = PyLong_FromUnsignedLongLong(off + len);
  PyObject *sl = lo && hi ? PySlice_New(lo, hi, NULL) : NULL;
  PyObject *r = sl ? PyObject_GetItem(mv, sl) : NULL;
  Py_XDECREF(lo);
  Py_XDECREF(hi);
  Py_XDECREF(sl);
  return r;
}

static PyObject *seg_parts(seg_obj_t *s, PyObject *unused) {
  PyObject *mv = PyMemoryView_FromObject((PyObject *)s);
  if (!mv) return NULL;
  PyObject *bufs = PyTuple_New(s->nbufs), *stream = NULL, *res = NULL;
  for (uint32_t i = 0; bufs && i < s->nbufs; i++) {
    PyObject *b = slice(mv, s->table[2 + 2 * i], s->table[3 + 2 * i]);
    if (!b) goto done;
    PyTuple_SET_ITEM(bufs, i, b);
  }
  if (bufs && (stream = slice(mv, s->table[0], s->table[1])))
    res = PyTuple_Pack(2, stream, bufs);
done:
  Py_XDECREF(stream);
  Py_XDECREF(bufs);
  Py_DECREF(mv);
  return res;
}

static PyObject *seg_close(seg_obj_t *s, PyObject *unused) {
  if (s->exports > 0)
    return PyErr_Format(PyExc_BufferError,
                        "Segment %R cannot be closed: %zd buffer view(s) of it "
                        "(memoryviews, or arrays made from them) still exist",
                        s->path, s->exports);
  unmap(s);
  Py_RETURN_NONE;
}

static PyObject *seg_get_path(seg_obj_t *s, void *c) { return Py_NewRef(s->path); }
static PyObject *seg_get_size(seg_obj_t *s, void *c) { return PyLong_FromSize_t(s->size); }
static PyObject *seg_get_closed(seg_obj_t *s, void *c) { return PyBool_FromLong(!s->base); }
static PyObject *seg_get_on_release(seg_obj_t *s, void *c) { return Py_NewRef(s->on_release); }

static int seg_set_on_release(seg_obj_t *s, PyObject *v, void *c) {
  if (!v) v = Py_None;
  if (v != Py_None && !PyCallable_Check(v)) {
    PyErr_Format(PyExc_TypeError, "Segment.on_release must be callable or None, not %.100s",
                 Py_TYPE(v)->tp_name);
    return -1;
  }
  if (!s->base && v != Py_None) {
    PyErr_Format(PyExc_ValueError, "Segment %R is closed: on_release would never be called",
                 s->path);
    return -1;
  }
  Py_SETREF(s->on_release, Py_NewRef(v));
  return 0;
}

static PyObject *seg_repr(seg_obj_t *s) {
  return PyUnicode_FromFormat("<shoal._core.Segment %R size=%zu nbufs=%u%s>", s->path,
                              s->size, s->nbufs, s->base ? "" : " closed");
}

static PyGetSetDef seg_getset[] = {
    {"path", (getter)seg_get_path, NULL, "the object file's path as given to store_map", NULL},
    {"size", (getter)seg_get_size, NULL, "bytes mapped (the file's size)", NULL},
    {"closed", (getter)seg_get_closed, NULL, "True once unmapped by close()", NULL},
    {"on_release", (getter)seg_get_on_release, (setter)seg_set_on_release,
     "callable called once with no arguments after the mapping is gone (None: nothing)",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef seg_methods[] = {
    {"parts", (PyCFunction)seg_parts, METH_NOARGS,
     "parts() -> (stream, buffers)\n--\n\n"
     "The pickle stream and the out-of-band buffers as read-only memoryviews\n"
     "into the mapping, for pickle.loads(stream, buffers=buffers); each keeps\n"
     "the mapping alive.\n\n"
     "Raises:\n    ValueError: the segment is closed."},
    {"close", (PyCFunction)seg_close, METH_NOARGS,
     "close()\n--\n\n"
     "Unmaps now (and calls on_release) instead of when the segment is freed.\n\n"
     "Raises:\n    BufferError: views of the segment still exist."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(seg_doc,
"A read-only mapping of one object file, made by store_map(path).\n\n"
"It exports a read-only buffer of the whole file; parts() slices it into the\n"
"pickle stream and the out-of-band buffers. The mapping lives while the\n"
"segment or any view of it does; then it is unmapped and on_release, if set,\n"
"is called once with no arguments (its exceptions are reported as\n"
"unraisable).");

static PyType_Slot seg_slots[] = {
    {Py_tp_dealloc, seg_dealloc},
    {Py_tp_traverse, seg_traverse},
    {Py_tp_clear, seg_clear},
    {Py_tp_methods, seg_methods},
    {Py_tp_getset, seg_getset},
    {Py_tp_repr, seg_repr},
    {Py_tp_doc, (void *)seg_doc},
    {Py_bf_getbuffer, seg_getbuffer},
    {Py_bf_releasebuffer, seg_releasebuffer},
    {0, NULL},
};

static PyType_Spec seg_spec = {
    .name = "shoal._core.Segment",
    .basicsize = sizeof(seg_obj_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = seg_slots,
};

/* ---- module functions ---- */

/* Releases the first n views of bv. */
static void release_views(Py_buffer *bv, Py_ssize_t n) {
  for (Py_ssize_t i = 0; i < n; i++) PyBuffer_Release(&bv[i]);
}

/* The arguments of store_write and store_same, (path, stream, buffers), as
 * the path's bytes and contiguous views. */
typedef struct store_args_s {
  PyObject *path, *fsbytes, *seq;
  Py_buffer sv, *bv;
  Py_ssize_t n, got; /* buffers; views held in bv */
} store_args_t;

static void store_args_release(store_args_t *sa) {
  if (sa->sv.obj) PyBuffer_Release(&sa->sv);
  if (sa->bv) release_views(sa->bv, sa->got);
  PyMem_Free(sa->bv);
  Py_XDECREF(sa->seq);
  Py_XDECREF(sa->fsbytes);
  Py_XDECREF(sa->path);
}

/* Fills sa (zeroed by the caller) for function `fn`. 0, or -1 with an
 * exception; store_args_release either way. */
static int store_args(const char *fn, PyObject *const *args, Py_ssize_t nargs, store_args_t *sa) {
  if (nargs != 3) {
    PyErr_Format(PyExc_TypeError, "%s() takes 3 arguments (%zd given)", fn, nargs);
    return -1;
  }
  sa->path = PyOS_FSPath(args[0]);
  if (!sa->path || !PyUnicode_FSConverter(sa->path, &sa->fsbytes)) return -1;
  char what[64];
  snprintf(what, sizeof what, "%s: buffers must be a sequence", fn);
  if (!(sa->seq = PySequence_Fast(args[2], what))) return -1;
  sa->n = PySequence_Fast_GET_SIZE(sa->seq);
  if ((uint64_t)sa->n > UINT32_MAX || (size_t)sa->n > (SIZE_MAX / 2 - 2) / sizeof(struct iovec)) {
    PyErr_Format(PyExc_ValueError, "%s: too many buffers (%zd)", fn, sa->n);
    return -1;
  }
  if (!(sa->bv = PyMem_Calloc((size_t)sa->n + 1, sizeof *sa->bv))) {
    PyErr_NoMemory();
    return -1;
  }
  if (get_contiguous(args[1], &sa->sv, "the stream") < 0) return -1;
  for (; sa->got < sa->n; sa->got++) {
    char part[48];
    snprintf(part, sizeof part, "buffer %zd", sa->got);
    if (get_contiguous(PySequence_Fast_GET_ITEM(sa->seq, sa->got), &sa->bv[sa->got], part) < 0)
      return -1;
  }
  return 0;
}

static PyObject *store_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
  store_args_t sa = {0};
  PyObject *res = NULL;
  if (!store_args("store_write", args, nargs, &sa))
    res = write_views(sa.path, PyBytes_AS_STRING(sa.fsbytes), &sa.sv, sa.bv, (uint32_t)sa.n);
  store_args_release(&sa);
  return res;
}

static PyObject *store_map(PyObject *module, PyObject *path) {
  sh_core_state_t *st = PyModule_GetState(module);
  PyObject *fsbytes = NULL;
  if (!(path = PyOS_FSPath(path))) return NULL;
  if (!PyUnicode_FSConverter(path, &fsbytes)) {
    Py_DECREF(path);
    return NULL;
  }
  PyTypeObject *tp = (PyTypeObject *)st->segment_type;
  seg_obj_t *s = (seg_obj_t *)tp->tp_alloc(tp, 0); /* zeroed, GC-tracked */
  if (!s) goto fail;
  s->path = Py_NewRef(path);
  s->on_release = Py_NewRef(Py_None);
  if (map_file(s, PyBytes_AS_STRING(fsbytes)) < 0) goto fail;
  Py_DECREF(fsbytes);
  Py_DECREF(path);
  return (PyObject *)s;
fail:
  Py_XDECREF(s);
  Py_XDECREF(fsbytes);
  Py_DECREF(path);
  return NULL;
}

/* What store_same hands to the part that runs without the GIL. */
typedef struct cjob_s {
  const char *path;
  const Py_buffer *sv, *bv; /* the stream and the buffers to compare */
  uint32_t n;
  const char *what; /* on an error: the step that failed */
} cjob_t;

/* Compares the file at j->path with the stream and buffers; runs without
 * the GIL. Returns 1 (the file holds exactly them, laid out as store_write
 * lays them out), 0 (it does not, or it is not a valid object file), or
 * -errno when it could not be opened or mapped. */
static int compare_segment(cjob_t *j) {
  int fd = open(j->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    j->what = "opening";
    return -errno;
  }
  struct stat sb;
  int rc = 0;
  void *p = MAP_FAILED;
  if (fstat(fd, &sb) < 0) {
    rc = -errno;
    j->what = "fstat of";
  } else if (S_ISREG(sb.st_mode) && sb.st_size >= (off_t)SEG_HDR) {
    /* MAP_POPULATE: every page is read anyway; mapping them in one go costs
     * less than a fault per 16 pages. */
    p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) {
      rc = -errno;
      j->what = "mapping";
    }
  }
  close(fd);
  if (p == MAP_FAILED) return rc;
  const uint8_t *base = p;
  uint64_t size = (uint64_t)sb.st_size;
  int same = !check_header(base, size) && get_u32(base + 32) == j->n &&
             get_u64(base + 24) == (uint64_t)j->sv->len &&
             !memcmp(base + get_u64(base + 16), j->sv->buf, (size_t)j->sv->len);
  for (uint32_t i = 0; same && i < j->n; i++) {
    const uint8_t *e = base + SEG_HDR + (uint64_t)i * SEG_ENTRY;
    same = get_u64(e + 8) == (uint64_t)j->bv[i].len &&
           !memcmp(base + get_u64(e), j->bv[i].buf, (size_t)j->bv[i].len);
  }
  munmap(p, (size_t)size);
  return same;
}

static PyObject *store_same(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
  store_args_t sa = {0};
  PyObject *res = NULL;
  if (!store_args("store_same", args, nargs, &sa)) {
    cjob_t j = {.path = PyBytes_AS_STRING(sa.fsbytes), .sv = &sa.sv, .bv = sa.bv,
                .n = (uint32_t)sa.n};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = compare_segment(&j);
    Py_END_ALLOW_THREADS
    if (rc < 0)
      raise_os(-rc, sa.path, "store_same: %s %s", j.what, j.path);
    else
      res = PyBool_FromLong(rc);
  }
  store_args_release(&sa);
  return res;
}

static PyObject *buffer_spans(PyObject *module, PyObject *arg) {
  PyObject *seq = PySequence_Fast(arg, "buffer_spans: buffers must be a sequence");
  if (!seq) return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject *out = PyTuple_New(n);
  for (Py_ssize_t i = 0; out && i < n; i++) {
    Py_buffer v;
    if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &v, PyBUF_STRIDES) < 0) {
      Py_CLEAR(out);
      break;
    }
    PyObject *t = Py_BuildValue("(Kn)", (unsigned long long)(uintptr_t)v.buf, v.len);
    PyBuffer_Release(&v);
    if (!t) {
      Py_CLEAR(out);
      break;
    }
    PyTuple_SET_ITEM(out, i, t);
  }
  Py_DECREF(seq);
  return out;
}

PyDoc_STRVAR(store_same_doc,
"store_same(path, stream, buffers) -> bool\n--\n\n"
"Whether the object file at path holds exactly this pickle stream and these\n"
"out-of-band buffers (what store_write(path, stream, buffers) would write).\n"
"Compares the bytes (memcmp against a read-only mapping of the file, without\n"
"the GIL): reading a copy costs less than writing a new one.\n\n"
"Args:\n"
"    path: the object file.\n"
"    stream, buffers: as for store_write.\n"
"Returns:\n"
"    True when every byte is the same; False otherwise, also when the file\n"
"    is not a valid object file.\n"
"Raises:\n"
"    FileNotFoundError: no such file (for example: spilled or freed).\n"
"    OSError: it could not be opened or mapped.\n"
"    BufferError, TypeError: as store_write.");

PyDoc_STRVAR(buffer_spans_doc,
"buffer_spans(buffers) -> tuple\n--\n\n"
"(address, length) of each buffer's memory, as int pairs: what a stored copy\n"
"of them is remembered by (with the contents checked by store_same).");

PyDoc_STRVAR(store_write_doc,
"store_write(path, stream, buffers) -> int\n--\n\n"
"Writes one object file: the pickle stream and its out-of-band buffers.\n\n"
"The file is written as path + '.<pid>.tmp' and renamed onto path (replacing\n"
"any file there), so readers never see a partial object.\n\n"
"Args:\n"
"    path: the object file (str, bytes or os.PathLike).\n"
"    stream: the pickle stream (bytes-like).\n"
"    buffers: a sequence of buffer-protocol objects (pickle.PickleBuffer,\n"
"        bytes, memoryview, numpy arrays), each C- or Fortran-contiguous.\n"
"Returns:\n"
"    The size of the file in bytes.\n"
"Raises:\n"
"    BufferError: a buffer is not contiguous.\n"
"    TypeError: buffers is not a sequence, or an item exports no buffer.\n"
"    OSError: creating, writing or renaming failed (errno ENOSPC when the\n"
"        store's file system is full); no temporary file is left behind.");

PyDoc_STRVAR(store_map_doc,
"store_map(path) -> Segment\n--\n\n"
"Maps an object file read-only (pages are read on demand) and validates it.\n\n"
"Args:\n"
"    path: the object file (str, bytes or os.PathLike).\n"
"Returns:\n"
"    A Segment; the file may be unlinked while it is mapped.\n"
"Raises:\n"
"    FileNotFoundError: no such file.\n"
"    ValueError: the file is not a valid object file (says what is wrong).\n"
"    OSError: it could not be opened or mapped.");

static PyMethodDef store_functions[] = {
    {"store_write", (PyCFunction)(void (*)(void))store_write, METH_FASTCALL, store_write_doc},
    {"store_map", store_map, METH_O, store_map_doc},
    {"store_same", (PyCFunction)(void (*)(void))store_same, METH_FASTCALL, store_same_doc},
    {"buffer_spans", buffer_spans, METH_O, buffer_spans_doc},
    {NULL, NULL, 0, NULL},
};

int sh_store_add_type(PyObject *m, sh_core_state_t *st) {
  st->segment_type = PyType_FromModuleAndSpec(m, &seg_spec, NULL);
  if (!st->segment_type) return -1;
  if (PyModule_AddType(m, (PyTypeObject *)st->segment_type) < 0) return -1;
  return PyModule_AddFunctions(m, store_functions);
}
