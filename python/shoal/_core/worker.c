/* The worker loop run by `python -m shoal.worker`: reads FUNC and EXEC frames
 * from the agent on one socket, runs each request in order and answers with
 * RESULT frames written in batches.
 *
 * Sections: state and helpers; writing (and the flusher thread); reading;
 * running one request; the loop and the entry point.
 *
 * The worker's first frame is a HELLO (role WORKER, its pid) once its imports
 * are done, so the agent can tell a worker that failed to start from one
 * that a task killed.
 *
 * Batching: results are held while more requests are already waiting, and
 * written when the input runs dry or the oldest held result is 1 ms old. The
 * main thread checks the age between requests; while it runs user code with
 * results held, a small flusher thread (no Python) writes them when they turn
 * 1 ms old, so a long task never delays the results of the short ones before
 * it. Waking that thread costs more than a short task, so it is told only
 * about requests whose function ran 0.2 ms or more last time (or never ran
 * here); while tasks keep starting it also looks every 10 ms, for a function
 * that was short and is long now. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fdpass.h"
#include "common/map.h"

#define HOLD_S 0.001 /* the longest a result waits in the batch */
/* A request whose function last ran at least this long (or never ran here)
 * may run long: the flusher is told to watch the results held before it. */
#define LONG_S 0.0002
/* While tasks keep starting, the flusher also looks every TICK_S for held
 * results HOLD_S old (a function that ran short before and long now), and
 * sleeps without a deadline once none started for AWAKE_S. */
#define TICK_S 0.01
#define AWAKE_S 0.05
#define LANE_IDLE_MS 20 /* a lane with no request for this long is given back */

/* The request being run (runtime_context); only the loop thread writes it. */
static uint64_t current_task;

PyObject *sh_worker_current_task(PyObject *module, PyObject *unused) {
  if (!current_task) Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong(current_task);
}

/* ---- state and helpers ---- */

typedef struct worker_s {
  int fd;
  sh_core_state_t *st;
  PyObject *loads, *dumps, *dumps_exc, *depref; /* from the support module */
  PyObject *load_stored; /* support.load_stored(id, size): a dependency in the store */
  PyObject *forget;      /* support.forget_stored(ids): the agent spilled or freed them */
  sh_map_t fns;    /* fn_id -> PyObject*: the blob (bytes) until first use, then the callable */
  sh_map_t actors; /* actor_id -> PyObject*: the instance */
  sh_buf_t rbuf;   /* bytes read, not yet handled */
  size_t want;     /* bytes the partial frame in rbuf needs in all */
  /* Shared with the flusher thread, under mu; every write to fd holds mu. */
  pthread_mutex_t mu;
  pthread_cond_t cv;  /* CLOCK_MONOTONIC; signalled to arm or stop the flusher */
  sh_buf_t wbuf;      /* RESULT frames held for the next write */
  double held_since;  /* when the oldest result in wbuf was queued */
  int armed;          /* the flusher watches the held results */
  int flush_due;      /* loop thread: the results held were HOLD_S old at the last one */
  int dormant;        /* the flusher waits without a deadline */
  double active_at;   /* when the loop thread last began a task */
  sh_map_t ran_ns;    /* fn_id (actor_id for calls) -> 1 + how long it last ran, ns */
  int stop;           /* the flusher must exit */
  int gone;           /* a write failed: the agent closed its end */
  pthread_t flusher;
  int flusher_started;
  int64_t devices;    /* GPU mask last exported as CUDA_VISIBLE_DEVICES; -1: never */
  sh_fdq_t fdq;       /* sockets the agent passed, for LANE GRANTs */
  /* The lane (src/node/lane.c): a driver's socket, while leased to it. */
  int lane_fd;        /* -1: none */
  uint64_t lane_id, lane_ran;
  sh_buf_t lrbuf;     /* bytes read from the lane, not yet handled */
} worker_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void flush_stdio(worker_t *w) {
  static const char *const names[] = {"stdout", "stderr"};
  for (int i = 0; i < 2; i++) {
    PyObject *f = PySys_GetObject(names[i]);
    if (!f || f == Py_None) continue;
    PyObject *r = PyObject_CallMethodNoArgs(f, w->st->s_flush);
    if (r) Py_DECREF(r);
    else PyErr_Clear();
  }
}

static int flush_out(worker_t *w);

/* The agent sent something no agent sends: say so and exit with status 2. */
static void fatal(worker_t *w, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  flush_stdio(w);
  if (flush_out(w) < 0) PyErr_Clear(); /* results already earned, best effort */
  fprintf(stderr, "shoal worker (pid %d): %s; exiting\n", (int)getpid(), msg);
  _exit(2);
}

/* A signal interrupted a system call while no task ran: run the Python
 * handlers. A KeyboardInterrupt now was meant for a task that has already
 * finished (the agent cancels with SIGINT), so it is dropped. 0 or -1. */
static int signals_while_idle(void) {
  if (PyErr_CheckSignals() == 0) return 0;
  if (!PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) return -1;
  PyErr_Clear();
  return 0;
}

static void map_clear(sh_map_t *m) {
  size_t i = 0;
  uint64_t k;
  void *v;
  while (sh_map_next(m, &i, &k, &v)) Py_DECREF((PyObject *)v);
  sh_map_close(m);
}

/* Stores obj (stolen) under id, replacing an older one. 0 or -1. */
static int map_store(sh_map_t *m, uint64_t id, PyObject *obj) {
  PyObject *old = sh_map_get(m, id);
  int rc = sh_map_put(m, id, obj);
  if (rc < 0) {
    Py_DECREF(obj);
    sh_core_raise(rc, "worker: cannot store id %llu", (unsigned long long)id);
    return -1;
  }
  Py_XDECREF(old); /* last: its __del__ may run Python code */
  return 0;
}

/* ---- writing (the GIL is released only around syscalls) ---- */

/* Writes all of wbuf (mu held, no GIL). 0, -EINTR (call again after the
 * signal handlers ran), or -EPIPE when the agent is gone. */
static int write_locked(worker_t *w) {
  while (sh_buf_avail(&w->wbuf) && !w->gone) {
    ssize_t n = write(w->fd, sh_buf_head(&w->wbuf), sh_buf_avail(&w->wbuf));
    if (n > 0) {
      sh_buf_consume(&w->wbuf, (size_t)n);
    } else if (n < 0 && errno == EINTR) {
      return -EINTR;
    } else if (n < 0 && errno == EAGAIN) {
      struct pollfd p = {.fd = w->fd, .events = POLLOUT};
      (void)poll(&p, 1, -1);
    } else {
      w->gone = 1; /* EPIPE, ECONNRESET: the agent closed its end */
    }
  }
  sh_buf_reset(&w->wbuf);
  if (w->wbuf.cap > (64u << 20)) sh_buf_close(&w->wbuf); /* a one-off huge result */
  return w->gone ? -EPIPE : 0;
}

/* Writes every held result. 0, 1 when the agent is gone, -1 on a Python
 * error (from a signal handler). */
static int flush_out(worker_t *w) {
  for (;;) {
    int rc;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->mu);
    rc = write_locked(w);
    pthread_mutex_unlock(&w->mu);
    Py_END_ALLOW_THREADS
    if (rc != -EINTR) return rc ? 1 : 0;
    if (signals_while_idle() < 0) return -1;
  }
}

/* Whether results are held (the main thread only appends, so a stale
 * answer is only ever "yes" for a batch the flusher just wrote). */
static int holding(worker_t *w) {
  pthread_mutex_lock(&w->mu);
  int n = sh_buf_avail(&w->wbuf) > 0;
  pthread_mutex_unlock(&w->mu);
  return n;
}

static double held_age(worker_t *w) {
  pthread_mutex_lock(&w->mu);
  double age = sh_buf_avail(&w->wbuf) ? now_s() - w->held_since : 0;
  pthread_mutex_unlock(&w->mu);
  return age;
}

/* The flusher: writes held results once they are HOLD_S old unless the main
 * thread wrote them first (a task that runs long would hold the results of
 * those before it in its batch). Waking a thread costs more than a short
 * task, so it is told only about requests that may run long (armed: it
 * waits for the held results' deadline); otherwise, while tasks keep
 * starting, it looks every TICK_S, and it sleeps without a deadline once
 * none started for AWAKE_S. */
static void *flusher_main(void *arg) {
  worker_t *w = arg;
  pthread_mutex_lock(&w->mu);
  while (!w->stop) {
    double now = now_s(), due;
    int held = sh_buf_avail(&w->wbuf) && !w->gone;
    if (held && now >= w->held_since + HOLD_S) {
      while (write_locked(w) == -EINTR) {
      }
      continue;
    }
    if (!held) w->armed = 0;
    if (w->armed) {
      due = w->held_since + HOLD_S;
    } else if (now - w->active_at <= AWAKE_S) {
      due = now + TICK_S;
    } else {
      w->dormant = 1;
      pthread_cond_wait(&w->cv, &w->mu);
      w->dormant = 0;
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long ns = ts.tv_nsec + (long)((due - now) * 1e9) + 1;
    ts.tv_sec += ns / 1000000000L;
    ts.tv_nsec = ns % 1000000000L;
    pthread_cond_timedwait(&w->cv, &w->mu, &ts);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* Before user code runs, with results held: `may_be_long`, the flusher
 * watches their deadline from now on (a signal); otherwise it is only woken
 * from a sleep without a deadline, to look every TICK_S. */
static void arm_flusher(worker_t *w, int may_be_long, double now) {
  pthread_mutex_lock(&w->mu);
  w->active_at = now;
  if (sh_buf_avail(&w->wbuf)) {
    if (may_be_long && !w->armed) {
      w->armed = 1;
      pthread_cond_signal(&w->cv);
    } else if (w->dormant) {
      pthread_cond_signal(&w->cv);
    }
  }
  pthread_mutex_unlock(&w->mu);
}

static int start_flusher(worker_t *w) {
  pthread_mutex_init(&w->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  sigset_t all, old;
  sigfillset(&all); /* signals are the main thread's (SIGINT cancels a task) */
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&w->flusher, NULL, flusher_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc) {
    errno = rc;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  w->flusher_started = 1;
  return 0;
}

static void stop_flusher(worker_t *w) {
  if (!w->flusher_started) return;
  Py_BEGIN_ALLOW_THREADS
  pthread_mutex_lock(&w->mu);
  w->stop = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->flusher, NULL);
  Py_END_ALLOW_THREADS
}

/* ---- reading ---- */

/* Whether more bytes can be read right now. */
static int readable_now(worker_t *w) {
  struct pollfd p = {.fd = w->fd, .events = POLLIN};
  int n;
  Py_BEGIN_ALLOW_THREADS
  n = poll(&p, 1, 0);
  Py_END_ALLOW_THREADS
  return n > 0;
}

/* Reads at least one byte, blocking while idle. 0, 1 at end of file, -1 on
 * a Python error. */
static int fill(worker_t *w) {
  size_t need = w->want > sh_buf_avail(&w->rbuf) ? w->want - sh_buf_avail(&w->rbuf) : 0;
  if (sh_buf_reserve(&w->rbuf, need > 65536 ? need : 65536)) {
    PyErr_NoMemory();
    return -1;
  }
  for (;;) {
    ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    n = sh_recv_fds(w->fd, w->rbuf.data + w->rbuf.len, w->rbuf.cap - w->rbuf.len, 0, &w->fdq);
    Py_END_ALLOW_THREADS
    if (n > 0) {
      w->rbuf.len += (size_t)n;
      return 0;
    }
    if (n == 0) return 1;
    errno = (int)-n;
    if (errno == EINTR) {
      if (signals_while_idle() < 0) return -1;
    } else if (errno == EAGAIN) {
      struct pollfd p = {.fd = w->fd, .events = POLLIN};
      Py_BEGIN_ALLOW_THREADS
      n = poll(&p, 1, -1);
      Py_END_ALLOW_THREADS
    } else {
      return 1; /* ECONNRESET and the like: the agent is gone */
    }
  }
}

/* ---- running one request ---- */

/* The outcome of one request: a status and a payload (bytes). */
typedef struct outcome_s {
  uint32_t status;
  int32_t code;      /* SH_CODE_STORED: the value went to the store */
  PyObject *payload; /* bytes; an int (the segment size) when stored */
} outcome_t;

static void set_text(outcome_t *o, uint32_t status, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  o->status = status;
  o->payload = PyBytes_FromString(msg);
}

static PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
  return PyErr_GetRaisedException();
#else
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb && value) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return value;
#endif
}

/* Turns the exception being raised into the outcome: CANCELLED for a
 * KeyboardInterrupt (the agent's SIGINT), else ERROR with the pickled
 * exception and its traceback. */
static void set_error(worker_t *w, outcome_t *o) {
  if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
    PyErr_Clear();
    set_text(o, SH_ST_CANCELLED, "cancelled while running");
    return;
  }
  PyObject *exc = take_exception();
  o->status = SH_ST_ERROR;
  o->payload = exc ? PyObject_CallOneArg(w->dumps_exc, exc) : NULL;
  Py_XDECREF(exc);
  if (!o->payload) {
    PyErr_Clear();
    set_text(o, SH_ST_BAD_REQUEST, "the task failed and its exception could not be pickled");
  }
}

/* The callable registered as fn_id, unpickled on first use. NULL with no
 * exception when it was never registered. */
static PyObject *get_fn(worker_t *w, uint64_t fn_id) {
  PyObject *obj = sh_map_get(&w->fns, fn_id);
  if (!obj) return NULL;
  if (!PyBytes_CheckExact(obj)) return Py_NewRef(obj);
  PyObject *fn = PyObject_CallOneArg(w->loads, obj);
  if (!fn) return NULL; /* the blob stays: a later request tries again */
  if (map_store(&w->fns, fn_id, Py_NewRef(fn)) < 0) Py_CLEAR(fn);
  return fn;
}

/* Dependencies of one request: walked once, unpickled on first reference. */
typedef struct deps_s {
  uint32_t n;
  sh_exec_dep_t *dep;
  PyObject **val;
} deps_t;

/* Replaces a DepRef by its dependency's value; other objects come back as a
 * new reference of themselves. */
static PyObject *resolve(worker_t *w, deps_t *d, PyObject *o, int *bad) {
  if (!PyObject_TypeCheck(o, (PyTypeObject *)w->depref)) return Py_NewRef(o);
  PyObject *io = PyObject_GetAttr(o, w->st->s_i);
  if (!io) return NULL;
  long i = PyLong_AsLong(io);
  Py_DECREF(io);
  if (i == -1 && PyErr_Occurred()) return NULL;
  if (i < 0 || (uint32_t)i >= d->n) {
    *bad = 1;
    return NULL;
  }
  if (!d->val[i] && d->dep[i].stored) {
    d->val[i] = PyObject_CallFunction(w->load_stored, "KK", (unsigned long long)d->dep[i].id,
                                      (unsigned long long)d->dep[i].size);
    if (!d->val[i]) return NULL;
  } else if (!d->val[i]) {
    PyObject *b = PyBytes_FromStringAndSize((const char *)d->dep[i].data, d->dep[i].len);
    d->val[i] = b ? PyObject_CallOneArg(w->loads, b) : NULL;
    Py_XDECREF(b);
    if (!d->val[i]) return NULL;
  }
  return Py_NewRef(d->val[i]);
}

/* Unpickles (args, kwargs) and puts dependency values in place of DepRefs.
 * Returns 0, -1 with an exception, or 1 for malformed arguments. */
static int load_args(worker_t *w, const sh_exec_t *e, deps_t *d, PyObject **args,
                     PyObject **kwargs) {
  PyObject *blob = PyBytes_FromStringAndSize((const char *)e->args, e->args_len);
  PyObject *pair = blob ? PyObject_CallOneArg(w->loads, blob) : NULL;
  Py_XDECREF(blob);
  if (!pair) return -1;
  int rc = 1, bad = 0;
  /* Arguments too big to travel inline are a stored dependency: (DepRef,). */
  if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 1 &&
      PyObject_TypeCheck(PyTuple_GET_ITEM(pair, 0), (PyTypeObject *)w->depref)) {
    PyObject *real = resolve(w, d, PyTuple_GET_ITEM(pair, 0), &bad);
    Py_DECREF(pair);
    if (!real) {
      if (!bad) return -1;
      PyErr_Clear();
      return 1;
    }
    pair = real;
  }
  if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) goto done;
  PyObject *a = PyTuple_GET_ITEM(pair, 0), *k = PyTuple_GET_ITEM(pair, 1);
  if (!PyTuple_Check(a) || (k != Py_None && !PyDict_Check(k))) goto done;
  Py_ssize_t n = PyTuple_GET_SIZE(a);
  rc = -1;
  if (!(*args = PyTuple_New(n))) goto done;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *v = resolve(w, d, PyTuple_GET_ITEM(a, i), &bad);
    if (!v) goto done;
    PyTuple_SET_ITEM(*args, i, v);
  }
  if (k != Py_None && PyDict_GET_SIZE(k)) {
    /* pickle made this dict for us alone: values are replaced in place */
    PyObject *key, *val;
    Py_ssize_t pos = 0;
    while (PyDict_Next(k, &pos, &key, &val)) {
      PyObject *v = resolve(w, d, val, &bad);
      if (!v || PyDict_SetItem(k, key, v) < 0) {
        Py_XDECREF(v);
        goto done;
      }
      Py_DECREF(v);
    }
    *kwargs = Py_NewRef(k);
  }
  rc = 0;
done:
  if (bad) {
    PyErr_Clear();
    rc = 1;
  }
  if (rc) {
    Py_CLEAR(*args);
    Py_CLEAR(*kwargs);
  }
  Py_DECREF(pair);
  return rc;
}

/* Runs a decoded EXEC; fills the outcome. Returns -1 only for errors that
 * must end the worker (out of memory in the engine). */
static int run(worker_t *w, uint64_t task_id, const sh_exec_t *e, deps_t *d,
               outcome_t *o) {
  PyObject *target = NULL, *args = NULL, *kwargs = NULL, *value = NULL;
  uint64_t actor_id = e->actor_id ? e->actor_id : task_id;
  if (e->kind == SH_KIND_ACTOR_CALL) {
    PyObject *a = sh_map_get(&w->actors, actor_id);
    if (!a) {
      set_text(o, SH_ST_ACTOR_DIED, "actor %#llx does not live in this worker (pid %d)",
               (unsigned long long)actor_id, (int)getpid());
      return 0;
    }
    PyObject *name = PyUnicode_DecodeUTF8(e->method, e->method_len, "strict");
    target = name ? PyObject_GetAttr(a, name) : NULL;
    Py_XDECREF(name);
  } else {
    target = get_fn(w, e->fn_id);
    if (!target && !PyErr_Occurred()) {
      set_text(o, SH_ST_BAD_REQUEST,
               "function %#llx was never registered with this worker (no FUNC frame)",
               (unsigned long long)e->fn_id);
      return 0;
    }
  }
  int rc = target ? load_args(w, e, d, &args, &kwargs) : -1;
  if (rc == 1) {
    set_text(o, SH_ST_BAD_REQUEST, "the arguments of task %#llx are malformed",
             (unsigned long long)task_id);
    Py_DECREF(target);
    return 0;
  }
  if (rc == 0) value = PyObject_Call(target, args, kwargs);
  if (value && e->kind == SH_KIND_ACTOR_CREATE) {
    if (map_store(&w->actors, actor_id, value) < 0) {
      value = NULL;
    } else {
      value = Py_NewRef(Py_None);
    }
  }
  if (value) {
    o->status = SH_ST_OK;
    o->payload = PyObject_CallFunction(w->dumps, "OK", value, (unsigned long long)task_id);
    if (o->payload && PyLong_Check(o->payload)) o->code = SH_CODE_STORED;
    else if (o->payload && !PyBytes_Check(o->payload)) {
      Py_CLEAR(o->payload);
      PyErr_SetString(PyExc_TypeError, "dumps_result must return bytes or an int");
    }
  }
  if (!value || !o->payload) set_error(w, o);
  Py_XDECREF(value);
  Py_XDECREF(args);
  Py_XDECREF(kwargs);
  Py_XDECREF(target);
  return 0;
}

/* Appends the RESULT frame of one request to b and drops its payload. 0 or
 * -1 (out of memory, with MemoryError). */
static int append_outcome(sh_buf_t *b, uint64_t task_id, outcome_t *o) {
  int rc;
  if (o->code == SH_CODE_STORED) {
    uint8_t size[8];
    sh_put_u64(size, PyLong_AsUnsignedLongLong(o->payload));
    rc = sh_result_append(b, task_id, SH_ST_OK, SH_CODE_STORED, size, 8);
  } else {
    Py_ssize_t n = PyBytes_GET_SIZE(o->payload);
    if ((size_t)n > SH_FRAME_MAX_DEFAULT - 8) {
      Py_DECREF(o->payload);
      set_text(o, SH_ST_BAD_REQUEST, "the result is %zd bytes, over the %u-byte frame limit", n,
               SH_FRAME_MAX_DEFAULT - 8);
      if (!o->payload) return -1;
      n = PyBytes_GET_SIZE(o->payload);
    }
    rc = sh_result_append(b, task_id, o->status, 0, PyBytes_AS_STRING(o->payload), (size_t)n);
  }
  Py_CLEAR(o->payload);
  if (rc) PyErr_NoMemory();
  return rc ? -1 : 0;
}

/* Queues the RESULT of one request, made at `now`; sets flush_due when the
 * results held are HOLD_S old. 0 or -1 (out of memory). */
static int queue_result(worker_t *w, uint64_t task_id, outcome_t *o, double now) {
  if (!o->payload) return -1;
  pthread_mutex_lock(&w->mu);
  if (!sh_buf_avail(&w->wbuf)) w->held_since = now;
  int rc = append_outcome(&w->wbuf, task_id, o);
  w->flush_due = sh_buf_avail(&w->wbuf) && now - w->held_since > HOLD_S;
  pthread_mutex_unlock(&w->mu);
  return rc;
}

/* ---- the lane ---- */

/* Writes all of b to the lane (blocking). 0, or -1 when the driver closed
 * it. */
static int lane_write(worker_t *w, const sh_buf_t *b) {
  size_t off = 0;
  while (off < b->len) {
    ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    n = send(w->lane_fd, b->data + off, b->len - off, MSG_NOSIGNAL);
    Py_END_ALLOW_THREADS
    if (n > 0) off += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else return -1;
  }
  return 0;
}

/* Tells the agent the lease is over, with the number of tasks it ran. 0 or
 * -1 with an exception. */
static int lane_end_agent(worker_t *w) {
  uint8_t ran[8];
  sh_put_u64(ran, w->lane_ran);
  pthread_mutex_lock(&w->mu);
  if (!sh_buf_avail(&w->wbuf)) w->held_since = now_s();
  int rc = sh_frame_append(&w->wbuf, SH_MSG_LANE, SH_LANE_END, w->lane_id, ran, 8);
  pthread_mutex_unlock(&w->mu);
  if (rc) {
    PyErr_NoMemory();
    return -1;
  }
  return flush_out(w) < 0 ? -1 : 0;
}

/* Ends the lease: END to the driver on the lane (it stops using it), then to
 * the agent; the lane is closed. */
static int lane_end(worker_t *w) {
  if (w->lane_fd < 0) return 0;
  sh_buf_t b;
  sh_buf_init(&b);
  if (!sh_frame_append(&b, SH_MSG_LANE, SH_LANE_END, w->lane_id, NULL, 0)) (void)lane_write(w, &b);
  sh_buf_close(&b);
  close(w->lane_fd);
  w->lane_fd = -1;
  sh_buf_reset(&w->lrbuf);
  return lane_end_agent(w);
}

/* Sends the RESULT of a lane request to the driver. 0 or -1 (out of
 * memory); a driver that closed the lane ends it. */
static int lane_result(worker_t *w, uint64_t task_id, outcome_t *o) {
  if (!o->payload) return -1;
  sh_buf_t b;
  sh_buf_init(&b);
  /* A stored value: the driver registers it with the agent (LANE DONE). */
  if (append_outcome(&b, task_id, o)) {
    sh_buf_close(&b);
    return -1;
  }
  w->lane_ran++;
  int broken = lane_write(w, &b);
  sh_buf_close(&b);
  return broken ? lane_end(w) : 0;
}

/* Exports the GPU devices a task was given as CUDA_VISIBLE_DEVICES, through
 * os.environ so Python code sees it too. 0, or -1 with an exception. */
static int set_devices(worker_t *w, uint64_t mask) {
  if (w->devices == (int64_t)mask) return 0;
  char list[256];
  int n = 0;
  for (int i = 0; i < 64; i++)
    if (mask >> i & 1) n += snprintf(list + n, sizeof list - (size_t)n, "%s%d", n ? "," : "", i);
  PyObject *os = PyImport_ImportModule("os");
  PyObject *env = os ? PyObject_GetAttrString(os, "environ") : NULL;
  PyObject *v = env ? PyUnicode_FromStringAndSize(list, n) : NULL;
  int rc = v ? PyMapping_SetItemString(env, "CUDA_VISIBLE_DEVICES", v) : -1;
  Py_XDECREF(v);
  Py_XDECREF(env);
  Py_XDECREF(os);
  if (!rc) w->devices = (int64_t)mask;
  return rc;
}

/* Handles one EXEC frame (from the lane: `lane`). 0, -1 with an exception,
 * 1 when the agent left. */
static int exec_frame(worker_t *w, uint64_t task_id, unsigned flags, const uint8_t *body,
                      uint32_t len, int lane) {
  sh_exec_t e;
  uint64_t devices;
  if (sh_exec_decode_flags(body, len, flags, &e, &devices))
    fatal(w, "malformed EXEC frame for task %#llx", (unsigned long long)task_id);
  if ((flags & SH_EXEC_DEVICES) && set_devices(w, devices)) return -1;
  if (e.ndeps > e.deps_len / 4) fatal(w, "malformed dependency list in EXEC");
  deps_t d = {.n = e.ndeps};
  sh_exec_dep_t dep_small[8];
  PyObject *val_small[8] = {NULL};
  d.dep = e.ndeps <= 8 ? dep_small : sh_try_malloc(e.ndeps * sizeof *d.dep);
  d.val = e.ndeps <= 8 ? val_small : sh_try_malloc(e.ndeps * sizeof *d.val);
  if (!d.dep || !d.val) fatal(w, "out of memory for %u dependencies", e.ndeps);
  sh_rd_t r;
  sh_rd_init(&r, e.deps, e.deps_len);
  for (uint32_t i = 0; i < e.ndeps; i++) {
    d.val[i] = NULL;
    if (sh_exec_dep_next(&r, &d.dep[i]) != 1) fatal(w, "malformed dependency list in EXEC");
  }
  if (sh_rd_left(&r)) fatal(w, "malformed dependency list in EXEC");

  uint64_t key = e.kind == SH_KIND_TASK ? e.fn_id : e.actor_id;
  uintptr_t last = key ? (uintptr_t)sh_map_get(&w->ran_ns, key) : 0;
  /* Two clock reads a task: its start and its end (the end also dates its
   * result and tells whether the held ones are due). */
  double t0 = now_s();
  arm_flusher(w, !lane && (!last || last - 1 >= (uintptr_t)(LONG_S * 1e9)), t0);
  int rc = signals_while_idle(); /* a stale SIGINT is not for this task */
  outcome_t o = {0, 0, NULL};
  current_task = task_id;
  if (rc == 0) rc = run(w, task_id, &e, &d, &o);
  double t1 = now_s();
  if (key) (void)sh_map_put(&w->ran_ns, key, (void *)(uintptr_t)(1 + (uint64_t)((t1 - t0) * 1e9)));
  current_task = 0;
  for (uint32_t i = 0; i < e.ndeps; i++) Py_XDECREF(d.val[i]);
  if (d.dep != dep_small) sh_free(d.dep);
  if (d.val != val_small) sh_free(d.val);
  if (rc) {
    Py_XDECREF(o.payload);
    return rc;
  }
  flush_stdio(w);
  return lane ? lane_result(w, task_id, &o) : queue_result(w, task_id, &o, t1);
}

/* ---- the loop and the entry point ---- */

/* Handles every whole frame in rbuf. 0, -1 with an exception, 1 when the
 * agent left. */
static int run_ready(worker_t *w) {
  for (;;) {
    sh_frame_t f;
    size_t used;
    int rc = sh_frame_parse(sh_buf_head(&w->rbuf), sh_buf_avail(&w->rbuf),
                            SH_FRAME_MAX_DEFAULT, &f, &used);
    if (rc == 0) {
      w->want = used;
      return 0;
    }
    if (rc < 0) fatal(w, "malformed frame from the agent: %s", sh_strerror(rc));
    if (f.hdr.type == SH_MSG_FUNC) {
      PyObject *blob = PyBytes_FromStringAndSize((const char *)f.body, f.hdr.len);
      rc = blob ? map_store(&w->fns, f.hdr.id, blob) : -1;
    } else if (f.hdr.type == SH_MSG_EXEC) {
      rc = exec_frame(w, f.hdr.id, f.hdr.flags, f.body, f.hdr.len, 0);
    } else if (f.hdr.type == SH_MSG_LANE && (f.hdr.flags & SH_LANE_GRANT)) {
      rc = lane_end(w); /* never two: an old one ends first */
      w->lane_fd = sh_fdq_take(&w->fdq);
      w->lane_id = f.hdr.id;
      w->lane_ran = 0;
      if (!rc && w->lane_fd < 0) rc = lane_end_agent(w); /* no socket came: END at once */
    } else if (f.hdr.type == SH_MSG_LANE && (f.hdr.flags & SH_LANE_REVOKE)) {
      rc = f.hdr.id == w->lane_id ? lane_end(w) : 0;
    } else if (f.hdr.type == SH_MSG_RELEASE && (f.hdr.flags & SH_RELEASE_UNMAP)) {
      PyObject *ids = PyList_New(0);
      for (uint32_t i = 0; ids && i + 8 <= f.hdr.len; i += 8) {
        PyObject *id = PyLong_FromUnsignedLongLong(sh_get_u64(f.body + i));
        if (!id || PyList_Append(ids, id) < 0) Py_CLEAR(ids);
        Py_XDECREF(id);
      }
      PyObject *r = ids ? PyObject_CallOneArg(w->forget, ids) : NULL;
      Py_XDECREF(ids);
      rc = r ? 0 : -1;
      Py_XDECREF(r);
    } else {
      rc = 0; /* other types are not for workers: ignored */
    }
    sh_buf_consume(&w->rbuf, used);
    if (rc) return rc;
    if (w->flush_due) {
      w->flush_due = 0;
      if (held_age(w) > HOLD_S && (rc = flush_out(w)) != 0) return rc;
    }
  }
}

/* Reads what the lane holds and runs each whole request in it. 0, -1 with
 * an exception, 1 when the agent left. A driver that closed the lane or
 * sent what no driver sends loses it. */
static int lane_read(worker_t *w) {
  if (sh_buf_reserve(&w->lrbuf, 65536)) {
    PyErr_NoMemory();
    return -1;
  }
  ssize_t n = recv(w->lane_fd, w->lrbuf.data + w->lrbuf.len, w->lrbuf.cap - w->lrbuf.len,
                   MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (n <= 0) return lane_end(w);
  w->lrbuf.len += (size_t)n;
  while (w->lane_fd >= 0) {
    sh_frame_t f;
    size_t used;
    int rc = sh_frame_parse(sh_buf_head(&w->lrbuf), sh_buf_avail(&w->lrbuf),
                            SH_FRAME_MAX_DEFAULT, &f, &used);
    if (rc == 0) return 0;
    if (rc < 0 || (f.hdr.type != SH_MSG_FUNC && f.hdr.type != SH_MSG_EXEC)) {
      fprintf(stderr, "shoal worker (pid %d): the driver on lane %llu sent %s; lane closed\n",
              (int)getpid(), (unsigned long long)w->lane_id,
              rc < 0 ? "a malformed frame" : sh_msg_name(f.hdr.type));
      return lane_end(w);
    }
    if (f.hdr.type == SH_MSG_FUNC) {
      PyObject *blob = PyBytes_FromStringAndSize((const char *)f.body, f.hdr.len);
      rc = blob ? map_store(&w->fns, f.hdr.id, blob) : -1;
    } else {
      sh_exec_t e;
      uint64_t devices;
      if (sh_exec_decode_flags(f.body, f.hdr.len, f.hdr.flags, &e, &devices) || e.ndeps ||
          e.kind != SH_KIND_TASK) {
        fprintf(stderr, "shoal worker (pid %d): lane %llu: malformed or unsupported EXEC; "
                "lane closed\n", (int)getpid(), (unsigned long long)w->lane_id);
        return lane_end(w);
      }
      rc = exec_frame(w, f.hdr.id, f.hdr.flags, f.body, f.hdr.len, 1);
    }
    if (w->lane_fd >= 0) sh_buf_consume(&w->lrbuf, used);
    if (rc) return rc;
  }
  return 0;
}

/* While leased: waits for the agent's or the lane's next bytes and runs what
 * the lane sends; a lane silent for LANE_IDLE_MS is given back. Returns 0
 * when the agent's socket is readable or the lane is over, -1 with an
 * exception, 1 when the agent left. */
static int lane_turn(worker_t *w) {
  while (w->lane_fd >= 0) {
    struct pollfd p[2] = {{.fd = w->fd, .events = POLLIN}, {.fd = w->lane_fd, .events = POLLIN}};
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = poll(p, 2, LANE_IDLE_MS);
    Py_END_ALLOW_THREADS
    if (n < 0 && errno == EINTR) {
      if (signals_while_idle() < 0) return -1;
      continue;
    }
    if (n == 0) return lane_end(w);
    if (n > 0 && p[1].revents) {
      int rc = lane_read(w);
      if (rc) return rc;
    }
    if (n < 0 || p[0].revents) return 0;
  }
  return 0;
}

/* 0 at end of file, -1 with an exception. */
static int loop(worker_t *w) {
  for (;;) {
    int rc = run_ready(w);
    if (rc) return rc > 0 ? 0 : -1;
    if (holding(w) && (held_age(w) > HOLD_S || !readable_now(w)) &&
        (rc = flush_out(w)) != 0)
      return rc > 0 ? 0 : -1;
    if (w->lane_fd >= 0 && (rc = lane_turn(w)) != 0) return rc > 0 ? 0 : -1;
    rc = fill(w);
    if (rc) {
      if (rc > 0 && flush_out(w) < 0) return -1;
      return rc > 0 ? 0 : -1;
    }
  }
}

static int setup(worker_t *w, PyObject *module, PyObject *support) {
  w->st = PyModule_GetState(module);
  w->loads = PyObject_GetAttr(support, w->st->s_loads);
  w->dumps = w->loads ? PyObject_GetAttrString(support, "dumps_result") : NULL;
  w->load_stored = w->dumps ? PyObject_GetAttrString(support, "load_stored") : NULL;
  w->forget = w->load_stored ? PyObject_GetAttrString(support, "forget_stored") : NULL;
  w->dumps_exc = w->forget ? PyObject_GetAttr(support, w->st->s_dumps_exception) : NULL;
  w->depref = w->dumps_exc ? PyObject_GetAttr(support, w->st->s_DepRef) : NULL;
  if (!w->depref) return -1;
  if (!PyType_Check(w->depref)) {
    PyErr_SetString(PyExc_TypeError, "worker_main: support.DepRef must be a class");
    return -1;
  }
  /* Blocking reads, and no user subprocess inherits the agent's socket. */
  int fl = fcntl(w->fd, F_GETFL);
  if (fl < 0 || fcntl(w->fd, F_SETFL, fl & ~O_NONBLOCK) < 0 ||
      fcntl(w->fd, F_SETFD, FD_CLOEXEC) < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  return 0;
}

/* Tells the agent this process came up (imports done, loop starting): a
 * worker that dies after this is not a start-up failure. 0 or -1 with a
 * Python exception set. */
static int send_hello(int fd) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_hello_t h = {SH_ROLE_WORKER, (uint32_t)getpid(), 0, 0};
  int rc = sh_hello_append(&b, &h);
  size_t off = 0;
  while (rc == 0 && off < b.len) {
    ssize_t n = write(fd, b.data + off, b.len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) rc = -1;
    else off += (size_t)n;
  }
  sh_buf_close(&b);
  if (rc) PyErr_SetString(PyExc_OSError, "worker: cannot reach the agent on its channel");
  return rc;
}

PyObject *sh_worker_main(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "worker_main(fd, support) takes 2 arguments");
    return NULL;
  }
  int fd = PyLong_AsLong(args[0]);
  if (fd == -1 && PyErr_Occurred()) return NULL;
  /* Never outlive the agent: die with it, and go now if it is already gone
   * (we were reparented before the prctl took effect). */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) return PyErr_SetFromErrno(PyExc_OSError);
  if (getppid() == 1) Py_RETURN_NONE;
  worker_t w = {.fd = fd, .devices = -1, .lane_fd = -1};
  sh_map_init(&w.fns);
  sh_map_init(&w.actors);
  sh_map_init(&w.ran_ns);
  sh_buf_init(&w.rbuf);
  sh_buf_init(&w.wbuf);
  sh_buf_init(&w.lrbuf);
  int rc = setup(&w, module, args[1]);
  if (rc == 0) rc = send_hello(fd);
  if (rc == 0) rc = start_flusher(&w);
  if (rc == 0) rc = loop(&w);
  stop_flusher(&w);
  map_clear(&w.fns);
  map_clear(&w.actors);
  sh_map_close(&w.ran_ns);
  sh_buf_close(&w.rbuf);
  sh_buf_close(&w.wbuf);
  sh_buf_close(&w.lrbuf);
  if (w.lane_fd >= 0) close(w.lane_fd);
  sh_fdq_close(&w.fdq);
  if (w.flusher_started) {
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
  }
  Py_XDECREF(w.loads);
  Py_XDECREF(w.dumps);
  Py_XDECREF(w.load_stored);
  Py_XDECREF(w.forget);
  Py_XDECREF(w.dumps_exc);
  Py_XDECREF(w.depref);
  if (rc < 0) return NULL;
  Py_RETURN_NONE;
}
