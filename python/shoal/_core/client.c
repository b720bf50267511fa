/* shoal._core.Client: the driver's connection to a node agent, and submit,
 * the hot path from a Python call to a SUBMIT frame in the outgoing buffer.
 *
 * Sections: helpers (usability, ids, the outgoing buffer); completing futures
 * and reply waiters; construction and teardown; submit; the other requests;
 * the type. */
#include "client.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/tls.h"

/* ---- helpers ---- */

/* Raises unless the client can send (GIL held): not forked, closed or lost. */
static int check_usable(sh_client_obj_t *c) {
  if (c->fork_gen != sh_core_fork_gen()) {
    sh_core_raise(SH_EFORKED,
                  "this shoal client belongs to process %d; a forked child "
                  "cannot use it (call shoal.init() again in the child)",
                  (int)c->pid);
    return -1;
  }
  if (c->closed || !c->dumps) {
    sh_core_raise(SH_ECLOSED, "the shoal client for %s is closed", c->addr);
    return -1;
  }
  if (c->lost) {
    sh_core_raise(SH_ELOST, "%s", c->lost);
    return -1;
  }
  return 0;
}

static uint64_t new_id(sh_client_obj_t *c) {
  uint64_t seq = atomic_fetch_add_explicit(&c->seq, 1, memory_order_relaxed) + 1;
  return c->client_id << 40 | (seq & ((UINT64_C(1) << 40) - 1));
}

/* Unlocks out_mu after an append and wakes the I/O thread if it sleeps; a
 * busy thread picks the frame up on its next turn (that is the batching). */
static void out_unlock_wake(sh_client_obj_t *c) {
  int wake = !c->awake;
  c->awake = 1;
  pthread_mutex_unlock(&c->out_mu);
  if (wake) sh_client_wake(c);
}

/* Appends one frame with a body and wakes the I/O thread. 0 or -ENOMEM.
 * Queued releases go first: a MAP or PUT that needs room in the object
 * store must reach the daemon after the mappings this process dropped.
 * While reconnecting, the output is replaced by the replay: a KILL_ACTOR
 * waits to follow it (FUNC and PUT are kept for the replay, requests sent
 * again by their waiters), and one sent lately before is sent again. */
static int send_frame(sh_client_obj_t *c, unsigned type, unsigned flags,
                      uint64_t id, const void *body, size_t len) {
  pthread_mutex_lock(&c->out_mu);
  sh_client_flush_releases_locked(c);
  int kill = type == SH_MSG_KILL_ACTOR && c->reconnect_timeout > 0;
  int rc = sh_frame_append(kill && c->reconnecting ? &c->held : &c->out, type, flags, id, body,
                           len);
  if (!rc && kill && !c->reconnecting) sh_client_note_recent_locked(c, type, flags, id, NULL, 0);
  out_unlock_wake(c);
  return rc;
}

/* With reconnecting: keeps a copy of the frame (type, flags, id, body) to
 * send again to a restarted head (out_mu held). */
static void keep_frame_locked(sh_client_obj_t *c, unsigned type, unsigned flags, uint64_t id,
                              const void *body, size_t len) {
  uint8_t *p = sh_client_keep_begin_locked(c, id, type, SH_FRAME_HDR + len);
  if (!p) return;
  sh_frame_hdr_encode(p, type, flags, id, (uint32_t)len);
  if (len) memcpy(p + SH_FRAME_HDR, body, len);
}

static int get_id(PyObject *o, const char *what, uint64_t *out) {
  *out = PyLong_AsUnsignedLongLong(o);
  if (*out == (uint64_t)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "%s must be an int in [0, 2**64), got %R", what, o);
    return -1;
  }
  return 0;
}

/* Views a bytes-like blob (bytes fast path). Returns 0, or -1 with an
 * exception (a body over the frame limit is a ValueError). */
static int get_blob(PyObject *o, Py_buffer *view, const char *what, size_t extra) {
  if (PyObject_GetBuffer(o, view, PyBUF_SIMPLE) < 0) return -1;
  if ((size_t)view->len + extra > SH_CLIENT_MAX_BODY) {
    PyErr_Format(PyExc_ValueError,
                 "%s is %zd bytes, over the %u-byte frame limit; store large "
                 "values with shoal.put in pieces", what, view->len, SH_CLIENT_MAX_BODY);
    PyBuffer_Release(view);
    return -1;
  }
  return 0;
}

/* ---- completing futures and reply waiters ---- */

static void complete(sh_client_obj_t *c, PyObject *fut, uint32_t status,
                     int32_t code, PyObject *payload) {
  PyObject *st = PyLong_FromUnsignedLong(status), *cd = PyLong_FromLong(code);
  if (st && cd) {
    PyObject *args[] = {fut, st, cd, payload};
    PyObject *r = PyObject_VectorcallMethod(c->st->s_complete, args,
                                            4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(r);
  }
  Py_XDECREF(st);
  Py_XDECREF(cd);
  if (PyErr_Occurred()) PyErr_WriteUnraisable(fut);
}

/* A task finished: its SUBMIT is not sent again; a value it returned, which
 * the driver may still pass to other tasks, is (as a PUT with its id). */
static void result_kept(sh_client_obj_t *c, uint64_t id, const sh_result_t *r) {
  pthread_mutex_lock(&c->out_mu);
  uint32_t len = 0;
  const uint8_t *rec = sh_client_kept_locked(c, id, &len);
  uint32_t kind = rec && rec[5] == SH_MSG_SUBMIT && len >= SH_FRAME_HDR + 20
                      ? sh_get_u32(rec + SH_FRAME_HDR + 16) : UINT32_MAX;
  int task = kind == SH_KIND_TASK;
  /* A live actor's creation is sent again too: a restarted head constructs
   * it again if no node kept it (and it may restart), until it is killed. */
  int live_actor = kind == SH_KIND_ACTOR_CREATE && r->status == SH_ST_OK;
  if (task && r->status == SH_ST_OK && r->code == SH_CODE_STORED && r->payload_len == 8)
    keep_frame_locked(c, SH_MSG_PUT, SH_PUT_STORED, id, r->payload, 8);
  else if (task && r->status == SH_ST_OK && r->code == 0)
    keep_frame_locked(c, SH_MSG_PUT, 0, id, r->payload, r->payload_len);
  else if (rec && !live_actor)
    sh_client_forget_locked(c, id);
  pthread_mutex_unlock(&c->out_mu);
}

void sh_client_complete(sh_client_obj_t *c, uint64_t id, const sh_result_t *r) {
  PyObject *fut = sh_map_del(&c->pending, id);
  if (!fut) return; /* completed locally already (close, cancel) */
  if (c->reconnect_timeout > 0) result_kept(c, id, r);
  if (id == c->wait_id) c->wait_done = 1;
  PyObject *payload = PyBytes_FromStringAndSize((const char *)r->payload, r->payload_len);
  if (payload) {
    complete(c, fut, r->status, r->code, payload);
    Py_DECREF(payload);
  } else {
    PyErr_WriteUnraisable(fut);
  }
  Py_DECREF(fut);
}

void sh_client_fail_pending(sh_client_obj_t *c, const char *msg) {
  /* Take the whole map first: completions run callbacks, which may submit. */
  sh_map_t m = c->pending;
  sh_map_init(&c->pending);
  if (m.count == 0) {
    sh_map_close(&m);
    return;
  }
  PyObject *payload = PyBytes_FromString(msg);
  size_t i = 0;
  uint64_t id;
  void *v;
  while (sh_map_next(&m, &i, &id, &v)) {
    if (payload) complete(c, v, SH_ST_DISCONNECTED, 0, payload);
    Py_DECREF((PyObject *)v);
  }
  if (!payload) PyErr_WriteUnraisable(NULL);
  Py_XDECREF(payload);
  sh_map_close(&m);
}

void sh_client_fail_waiters(sh_client_obj_t *c, const char *msg) {
  pthread_mutex_lock(&c->rep_mu);
  if (!c->rep_dead) c->rep_dead = sh_strdup(msg);
  for (sh_waiter_t *w = c->waiters; w; w = w->next)
    if (!w->done) w->done = -1;
  pthread_cond_broadcast(&c->rep_cv);
  pthread_mutex_unlock(&c->rep_mu);
}

void sh_client_deliver(sh_client_obj_t *c, unsigned type, uint64_t id,
                       const uint8_t *body, size_t len) {
  pthread_mutex_lock(&c->rep_mu);
  /* A reply with id 0 goes to the oldest waiter of its type. */
  sh_waiter_t *found = NULL;
  for (sh_waiter_t *w = c->waiters; w; w = w->next)
    if (!w->done && w->type == type && (w->id == id || id == 0)) found = w;
  if (found) {
    found->body = sh_try_malloc(len);
    if (found->body || !len) {
      if (len) memcpy(found->body, body, len);
      found->len = len;
      found->done = 1;
    } else {
      found->done = -2; /* out of memory */
    }
    pthread_cond_broadcast(&c->rep_cv);
  }
  pthread_mutex_unlock(&c->rep_mu);
}

static void unlink_waiter_locked(sh_client_obj_t *c, sh_waiter_t *w) {
  for (sh_waiter_t **p = &c->waiters; *p; p = &(*p)->next)
    if (*p == w) {
      *p = w->next;
      break;
    }
}

/* Waits without the GIL until w is answered, failed or the timeout passes,
 * then unlinks it; for a failure copies the reason into dead. */
static void wait_reply(sh_client_obj_t *c, sh_waiter_t *w, double timeout,
                       char *dead, size_t deadlen) {
  struct timespec dl;
  clock_gettime(CLOCK_MONOTONIC, &dl);
  double whole = timeout > 1e9 ? 1e9 : timeout;
  dl.tv_sec += (time_t)whole;
  dl.tv_nsec += (long)((whole - (double)(time_t)whole) * 1e9);
  if (dl.tv_nsec >= 1000000000L) {
    dl.tv_sec++;
    dl.tv_nsec -= 1000000000L;
  }
  Py_BEGIN_ALLOW_THREADS
  pthread_mutex_lock(&c->rep_mu);
  if (c->rep_dead && !w->done) w->done = -1;
  while (!w->done)
    if (pthread_cond_timedwait(&c->rep_cv, &c->rep_mu, &dl) == ETIMEDOUT) break;
  unlink_waiter_locked(c, w);
  if (w->done == -1) snprintf(dead, deadlen, "%s", c->rep_dead ? c->rep_dead : "closed");
  pthread_mutex_unlock(&c->rep_mu);
  Py_END_ALLOW_THREADS
}

/* Sends a request and waits (GIL released) for its reply. On success w->body
 * holds the reply (caller frees). Returns 0 or -1 with an exception set. */
static int request_body(sh_client_obj_t *c, unsigned type, unsigned flags,
                        uint64_t id, const void *body, size_t len, unsigned reply,
                        double timeout, sh_waiter_t *w, const char *what) {
  if (check_usable(c) < 0) return -1;
  if (sh_client_on_io_thread(c)) {
    PyErr_Format(PyExc_RuntimeError,
                 "%s cannot wait for the shoal daemon from a callback run by "
                 "the client's I/O thread; do it from another thread", what);
    return -1;
  }
  if (timeout < 0 || timeout != timeout) {
    PyErr_SetString(PyExc_ValueError, "timeout must be a nonnegative number");
    return -1;
  }
  memset(w, 0, sizeof *w);
  w->type = reply;
  w->id = id;
  w->req_type = type;
  w->req_flags = flags;
  if (len <= sizeof w->req_body) {
    if (len) memcpy(w->req_body, body, len);
    w->req_len = len;
  } else {
    w->req_type = 0; /* not sent again */
  }
  pthread_mutex_lock(&c->rep_mu);
  w->next = c->waiters;
  c->waiters = w;
  pthread_mutex_unlock(&c->rep_mu);
  int rc = send_frame(c, type, flags, id, body, len);
  char dead[1536] = "";
  if (!rc) {
    wait_reply(c, w, timeout, dead, sizeof dead);
  } else {
    pthread_mutex_lock(&c->rep_mu);
    unlink_waiter_locked(c, w);
    pthread_mutex_unlock(&c->rep_mu);
  }
  if (rc || w->done == -2) {
    sh_core_raise(-ENOMEM, NULL);
    return -1;
  }
  if (w->done == -1) {
    sh_core_raise(SH_ELOST, "%s", dead);
    return -1;
  }
  if (!w->done) {
    sh_core_raise(-ETIMEDOUT, "no answer from the shoal daemon at %s to %s "
                  "within %gs: it is overloaded or stuck (see `shoal status`)",
                  c->addr, what, timeout);
    return -1;
  }
  return 0;
}

static int request(sh_client_obj_t *c, unsigned type, unsigned flags,
                   uint64_t id, unsigned reply, double timeout, sh_waiter_t *w,
                   const char *what) {
  return request_body(c, type, flags, id, NULL, 0, reply, timeout, w, what);
}

/* ---- construction and teardown ---- */

static void unlink_open(sh_client_obj_t *c) {
  if (c->prev) c->prev->next = c->next;
  else if (c->st->open == c) c->st->open = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

/* Joins the stopping I/O thread without the GIL. A done-callback it runs may
 * block on something the closing thread holds (a lock around close()): after
 * SH_CLIENT_JOIN_S the thread is detached instead. That is safe because it
 * holds its own reference to the client and closes the fds itself. */
static void join_io_thread(sh_client_obj_t *c) {
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl); /* pthread_timedjoin_np's clock */
  dl.tv_sec += SH_CLIENT_JOIN_S;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = pthread_timedjoin_np(c->thread, NULL, &dl);
  Py_END_ALLOW_THREADS
  if (rc == 0) return;
  pthread_detach(c->thread);
  PySys_WriteStderr("shoal: the client's I/O thread did not stop within %d s (is a "
                    "Future done-callback blocked?); closing without it\n",
                    SH_CLIENT_JOIN_S);
}

/* Closes the client (GIL held; idempotent): stops and joins the I/O thread
 * (detaches it when called on that thread, from a callback), then fails
 * reply waiters and pending futures with `msg`. */
static void shutdown_client(sh_client_obj_t *c, const char *msg) {
  if (c->closed) return;
  c->closed = 1;
  unlink_open(c);
  if (c->fork_gen != sh_core_fork_gen()) {
    /* A fork's child: the thread does not exist here and the parent's
     * mutexes may be locked for ever. Only our copies of the fds go. */
    if (c->fd >= 0) close(c->fd);
    if (c->evfd >= 0) close(c->evfd);
    c->fd = c->evfd = -1;
    c->tls = NULL; /* the parent's: its locks may be held for ever here */
    c->joinable = 0;
    sh_client_fail_pending(c, "this shoal client belongs to the parent process");
    return;
  }
  if (c->joinable) {
    pthread_mutex_lock(&c->out_mu);
    c->stop = 1;
    pthread_mutex_unlock(&c->out_mu);
    if (c->evfd >= 0) sh_client_wake(c);
    if (sh_client_on_io_thread(c)) {
      pthread_detach(c->thread); /* it closes the fds when it exits */
      c->joinable = 0;
    } else {
      c->joinable = 0;
      join_io_thread(c);
    }
  } else {
    sh_tls_destroy(c->tls);
    c->tls = NULL;
    if (c->fd >= 0) close(c->fd);
    if (c->evfd >= 0) close(c->evfd);
    c->fd = c->evfd = -1;
  }
  sh_client_fail_waiters(c, msg);
  sh_client_fail_pending(c, msg);
}

void sh_client_close_all(sh_core_state_t *st) {
  while (st->open) {
    /* The list holds no reference: while the join below runs without the
     * GIL, the I/O thread may drop the last one and free the client. */
    sh_client_obj_t *c = (sh_client_obj_t *)Py_NewRef(st->open);
    shutdown_client(c, "shoal was shut down");
    Py_DECREF(c);
  }
}

static void init_sync(sh_client_obj_t *c) {
  pthread_mutex_init(&c->out_mu, NULL);
  pthread_mutex_init(&c->rd_mu, NULL);
  pthread_mutex_init(&c->tls_mu, NULL);
  pthread_mutex_init(&c->rep_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&c->rep_cv, &ca);
  pthread_condattr_destroy(&ca);
}

/* The node described by HELLO_OK, as Client.node_info shows it. */
static PyObject *node_info(const sh_hello_ok_t *ok) {
  return Py_BuildValue("{s:I,s:I,s:d,s:d,s:K,s:s,s:K,s:K}", "node_id", ok->node_id,
                       "num_workers", ok->num_workers, "CPU", (double)ok->cpu_milli / 1000.0,
                       "GPU", (double)ok->gpu_milli / 1000.0, "memory",
                       (unsigned long long)ok->memory, "store_dir", ok->store_dir,
                       "inline_threshold", (unsigned long long)ok->inline_threshold,
                       "store_capacity", (unsigned long long)ok->store_capacity);
}

static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"address", "owner", "timeout", "future_type",
                           "dep_type", "dumps", "token", "wait_for_nodes", "tls_ca",
                           "tls_cert", "tls_key", "reconnect_timeout", NULL};
  PyObject *address, *ft = NULL, *dt = NULL, *dumps = NULL, *token = Py_None;
  int owner = 0, wait_nodes = 0;
  double timeout = 10.0, reconnect = 0.0;
  sh_client_tls_t tls = {NULL, NULL, NULL};
  if (!PyArg_ParseTupleAndKeywords(args, kw, "U|$pdOOOOpzzzd:Client", kwlist, &address,
                                   &owner, &timeout, &ft, &dt, &dumps, &token, &wait_nodes,
                                   &tls.ca, &tls.cert, &tls.key, &reconnect))
    return NULL;
  if (!(reconnect >= 0))
    return PyErr_Format(PyExc_ValueError, "Client(): reconnect_timeout must be >= 0");
  unsigned hello_flags = (owner ? SH_HELLO_OWNER : 0) | (wait_nodes ? SH_HELLO_WAIT_NODES : 0);
  if (token != Py_None && !PyUnicode_Check(token))
    return PyErr_Format(PyExc_TypeError, "Client(): token must be a str or None, not %s",
                        Py_TYPE(token)->tp_name);
  const char *tok = token == Py_None ? NULL : PyUnicode_AsUTF8(token);
  if (token != Py_None && !tok) return NULL;
  if (!ft || !dt || !dumps)
    return PyErr_Format(PyExc_TypeError,
                        "Client() needs the keyword arguments future_type, dep_type and dumps");
  if (!PyType_Check(ft) || !PyCallable_Check(dt) || !PyCallable_Check(dumps))
    return PyErr_Format(PyExc_TypeError,
                        "Client(): future_type must be a type, dep_type and dumps callables");
  if (!(timeout >= 0))
    return PyErr_Format(PyExc_ValueError, "Client(): timeout must be >= 0");
  const char *addr = PyUnicode_AsUTF8(address);
  if (!addr) return NULL;
  sh_client_obj_t *c = (sh_client_obj_t *)type->tp_alloc(type, 0);
  if (!c) return NULL;
  init_sync(c);
  c->fd = c->evfd = -1;
  /* Lanes need the unix socket (sockets are passed over it); SHOAL_LANES=0
   * turns them off. */
  const char *lanes_env = getenv("SHOAL_LANES");
  int lanes = !sh_client_address_is_tcp(addr) && !(lanes_env && !strcmp(lanes_env, "0"));
  sh_lane_init(c, lanes);
  if (lanes) hello_flags |= SH_HELLO_LANES;
  sh_map_init(&c->pending);
  sh_map_init(&c->replay);
  sh_rlog_init(&c->rlog);
  /* An embedded daemon dies with its owner: nothing to reconnect to. */
  c->reconnect_timeout = owner ? 0.0 : reconnect;
  c->hello_flags = hello_flags;
  c->token = tok ? sh_strdup(tok) : NULL;
  c->tls_ca = tls.ca ? sh_strdup(tls.ca) : NULL;
  c->tls_cert = tls.cert ? sh_strdup(tls.cert) : NULL;
  c->tls_key = tls.key ? sh_strdup(tls.key) : NULL;
  c->st = PyType_GetModuleState(type);
  c->fork_gen = sh_core_fork_gen();
  c->pid = getpid();
  c->addr = sh_strdup(addr);
  c->address = Py_NewRef(address);
  c->future_type = Py_NewRef(ft);
  c->dep_type = Py_NewRef(dt);
  c->dumps = Py_NewRef(dumps);
  sh_hello_ok_t ok;
  char err[1536];
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = sh_client_connect(c, addr, timeout, hello_flags, tok, &tls, &ok, err, sizeof err);
  Py_END_ALLOW_THREADS
  if (rc) {
    sh_core_raise(rc == -ENOMEM || rc == SH_EAUTH || rc == SH_ETLS ? rc : SH_ELOST, "%s", err);
    goto fail;
  }
  c->client_id = ok.client_id;
  if (!(c->node_info = node_info(&ok))) goto fail;
  if ((rc = sh_client_start(c)) < 0) {
    sh_core_raise(rc, "could not start the shoal client's I/O thread: %s", sh_strerror(rc));
    goto fail;
  }
  c->next = c->st->open;
  if (c->next) c->next->prev = c;
  c->st->open = c;
  return (PyObject *)c;
fail:
  Py_DECREF(c);
  return NULL;
}

static int client_traverse(sh_client_obj_t *c, visitproc visit, void *arg) {
  /* Pending futures are not visited: they are owned by work in flight, and
   * the running I/O thread's reference keeps the client alive anyway. */
  Py_VISIT(Py_TYPE(c));
  Py_VISIT(c->future_type);
  Py_VISIT(c->dep_type);
  Py_VISIT(c->dumps);
  Py_VISIT(c->node_info);
  Py_VISIT(c->address);
  return 0;
}

static int client_clear(sh_client_obj_t *c) {
  Py_CLEAR(c->future_type);
  Py_CLEAR(c->dep_type);
  Py_CLEAR(c->dumps);
  Py_CLEAR(c->node_info);
  return 0;
}

static void client_dealloc(sh_client_obj_t *c) {
  PyTypeObject *tp = Py_TYPE(c);
  PyObject_GC_UnTrack(c);
  /* A fork's child never gets here (the parent's thread reference was
   * copied), so the locks below are ours. Closing may run on the I/O thread
   * itself when its exit dropped the last reference: it then detaches. */
  shutdown_client(c, "shoal was shut down");
  client_clear(c);
  Py_CLEAR(c->address);
  sh_map_close(&c->pending);
  sh_client_kept_close(c);
  sh_free(c->token);
  sh_free(c->tls_ca);
  sh_free(c->tls_cert);
  sh_free(c->tls_key);
  sh_buf_close(&c->out);
  sh_buf_close(&c->held);
  sh_buf_close(&c->recent[0]);
  sh_buf_close(&c->recent[1]);
  sh_buf_close(&c->rbuf);
  sh_buf_close(&c->wbuf);
  sh_lane_free(c);
  sh_free(c->rel);
  sh_free(c->unmap);
  sh_free(c->addr);
  sh_free(c->lost);
  sh_free(c->rep_dead);
  pthread_mutex_destroy(&c->out_mu);
  pthread_mutex_destroy(&c->rd_mu);
  pthread_mutex_destroy(&c->tls_mu);
  pthread_mutex_destroy(&c->rep_mu);
  pthread_cond_destroy(&c->rep_cv);
  tp->tp_free((PyObject *)c);
  Py_DECREF(tp);
}

/* ---- submit ---- */

/* Parses fastcall arguments by position or keyword into out[0..n) (borrowed;
 * entries not given keep their value). Returns 0 or -1 with TypeError. */
static int parse_args(const char *fname, const char *const *names, int n,
                      int required, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, PyObject **out) {
  if (nargs > n) {
    PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)",
                 fname, n, nargs);
    return -1;
  }
  for (Py_ssize_t i = 0; i < nargs; i++) out[i] = args[i];
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t k = 0; k < nkw; k++) {
    PyObject *key = PyTuple_GET_ITEM(kwnames, k);
    int j = 0;
    while (j < n && PyUnicode_CompareWithASCIIString(key, names[j]) != 0) j++;
    if (j == n || j < nargs) {
      PyErr_Format(PyExc_TypeError, "%s() got an unexpected or repeated keyword "
                   "argument %R", fname, key);
      return -1;
    }
    out[j] = args[nargs + k];
  }
  for (int j = 0; j < required; j++) {
    if (!out[j]) {
      PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                   names[j]);
      return -1;
    }
  }
  return 0;
}

/* Dependencies of one submit: little-endian u64 ids, deduplicated. */
typedef struct deps_s {
  uint8_t *p;
  uint32_t n, cap;
  uint8_t small[8 * 8];
} deps_t;

static int deps_add(deps_t *d, uint64_t id, uint32_t *index) {
  for (uint32_t i = 0; i < d->n; i++)
    if (sh_get_u64(d->p + 8 * i) == id) {
      *index = i;
      return 0;
    }
  if (d->n == d->cap) {
    uint8_t *p = sh_try_malloc((size_t)d->cap * 16);
    if (!p) return -ENOMEM;
    memcpy(p, d->p, (size_t)d->n * 8);
    if (d->p != d->small) sh_free(d->p);
    d->p = p;
    d->cap *= 2;
  }
  sh_put_u64(d->p + 8 * d->n, id);
  *index = d->n++;
  return 0;
}

/* What to pickle in place of the future `f` passed as an argument: its value
 * when it succeeded, a DepRef when it is pending. When it failed, sets
 * *failed (new reference) and returns NULL with no exception. */
static PyObject *resolve_future(sh_client_obj_t *c, PyObject *f, deps_t *d,
                                PyObject **failed) {
  sh_core_state_t *st = c->st;
  PyObject *state = PyObject_GetAttr(f, st->s_state);
  if (!state) return NULL;
  int done = state == st->s_finished ||
             (PyUnicode_Check(state) && PyUnicode_Compare(state, st->s_finished) == 0);
  Py_DECREF(state);
  if (done) {
    PyObject *raw = PyObject_GetAttr(f, st->s_raw);
    if (!raw) return NULL;
    long status = PyTuple_Check(raw) && PyTuple_GET_SIZE(raw) == 3
                      ? PyLong_AsLong(PyTuple_GET_ITEM(raw, 0)) : -1;
    long code = status == 0 ? PyLong_AsLong(PyTuple_GET_ITEM(raw, 1)) : 0;
    Py_DECREF(raw);
    if ((status == -1 || code == -1) && PyErr_Occurred()) return NULL;
    if (status != 0) {
      *failed = Py_NewRef(f);
      return NULL;
    }
    /* A small value travels inline; a stored one stays in the store and
     * the task reads it there (the object is still held by f). */
    if (code != SH_CODE_STORED) return PyObject_CallMethodNoArgs(f, st->s_result);
  }
  PyObject *owner = PyObject_GetAttr(f, st->s_client);
  if (!owner) return NULL;
  Py_DECREF(owner); /* only compared */
  if (owner != (PyObject *)c && !done) {
    PyErr_Format(PyExc_TypeError,
                 "%R belongs to another shoal client (or none) and is not done: "
                 "only futures of this client can be passed as arguments while "
                 "pending; call .result() first", f);
    return NULL;
  }
  PyObject *ido = PyObject_GetAttr(f, st->s_id);
  if (!ido) return NULL;
  uint64_t id;
  int rc = get_id(ido, "Future._id", &id);
  Py_DECREF(ido);
  uint32_t index;
  if (rc < 0) return NULL;
  if (deps_add(d, id, &index) < 0) return PyErr_NoMemory();
  PyObject *ix = PyLong_FromUnsignedLong(index);
  if (!ix) return NULL;
  PyObject *ref = PyObject_CallOneArg(c->dep_type, ix);
  Py_DECREF(ix);
  return ref;
}

/* Returns `t` (new reference) with top-level futures replaced, or NULL. */
static PyObject *scan_tuple(sh_client_obj_t *c, PyObject *t, deps_t *d,
                            PyObject **failed) {
  PyObject *out = NULL;
  Py_ssize_t n = PyTuple_GET_SIZE(t);
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *it = PyTuple_GET_ITEM(t, i);
    if (!PyObject_TypeCheck(it, (PyTypeObject *)c->future_type)) continue;
    PyObject *v = resolve_future(c, it, d, failed);
    if (!v) {
      Py_XDECREF(out);
      return NULL;
    }
    if (!out) { /* copy by hand: a full slice would return t itself */
      if (!(out = PyTuple_New(n))) {
        Py_DECREF(v);
        return NULL;
      }
      for (Py_ssize_t j = 0; j < n; j++)
        PyTuple_SET_ITEM(out, j, Py_NewRef(PyTuple_GET_ITEM(t, j)));
    }
    PyObject *old = PyTuple_GET_ITEM(out, i);
    PyTuple_SET_ITEM(out, i, v);
    Py_DECREF(old);
  }
  return out ? out : Py_NewRef(t);
}

/* Returns the kwargs dict (new reference) with futures among its values
 * replaced, or NULL. */
static PyObject *scan_dict(sh_client_obj_t *c, PyObject *kw, deps_t *d,
                           PyObject **failed) {
  PyObject *out = NULL, *k, *v;
  Py_ssize_t pos = 0;
  while (PyDict_Next(kw, &pos, &k, &v)) {
    if (!PyObject_TypeCheck(v, (PyTypeObject *)c->future_type)) continue;
    PyObject *nv = resolve_future(c, v, d, failed);
    if (!nv || (!out && !(out = PyDict_Copy(kw))) || PyDict_SetItem(out, k, nv) < 0) {
      Py_XDECREF(nv);
      Py_XDECREF(out);
      return NULL;
    }
    Py_DECREF(nv);
  }
  return out ? out : Py_NewRef(kw);
}

static PyObject *make_future(sh_client_obj_t *c, uint64_t task_id, PyObject *name) {
  PyObject *tid = PyLong_FromUnsignedLongLong(task_id);
  if (!tid) return NULL;
  PyObject *a[] = {tid, (PyObject *)c, name};
  PyObject *fut = PyObject_Vectorcall(c->future_type, a, 3, NULL);
  Py_DECREF(tid);
  return fut;
}

/* A dependency failed: the new future fails the same way, nothing is sent. */
static PyObject *fail_like(sh_client_obj_t *c, uint64_t task_id, PyObject *name,
                           PyObject *failed) {
  PyObject *fut = make_future(c, task_id, name);
  PyObject *raw = fut ? PyObject_GetAttr(failed, c->st->s_raw) : NULL;
  PyObject *meth = raw ? PyObject_GetAttr(fut, c->st->s_complete) : NULL;
  PyObject *r = meth && PyTuple_Check(raw) ? PyObject_Call(meth, raw, NULL) : NULL;
  if (meth && !PyTuple_Check(raw))
    PyErr_SetString(PyExc_TypeError, "a failed Future has no (status, code, payload)");
  Py_XDECREF(meth);
  Py_XDECREF(raw);
  if (!r) Py_CLEAR(fut);
  Py_XDECREF(r);
  return fut;
}

/* Queues the SUBMIT frame for a future already in `pending`. */
static int append_submit(sh_client_obj_t *c, const sh_spec_obj_t *spec,
                         uint64_t task_id, const deps_t *d, const Py_buffer *blob) {
  /* Copy the template only up to its used custom entries: the tail of the
   * array is most of the struct and sh_submit_append never reads it. */
  sh_submit_t s;
  memcpy(&s, &spec->s, offsetof(sh_submit_t, custom) + spec->s.ncustom * sizeof(sh_custom_t));
  s.method = spec->s.method;
  s.method_len = spec->s.method_len;
  s.ndeps = d->n;
  s.deps = d->p;
  s.args = blob->buf;
  s.args_len = (uint32_t)blob->len;
  /* A submit that comes alone (the last one was a while ago: one call, then
   * a wait for its result) is written right here, which costs the same one
   * syscall as waking the I/O thread and no thread switch; or it goes down
   * the lane, when this driver has one. Submits in a burst are left to the
   * I/O thread, which writes them in batches. */
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  uint64_t ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
  pthread_mutex_lock(&c->out_mu);
  int alone = ns - c->last_submit_ns > SH_CLIENT_ALONE_NS;
  c->last_submit_ns = ns;
  /* An idle lane takes any task it can run (the worker is ours meanwhile). */
  int lane = (alone || (c->lane_fd >= 0 && !c->lane_task)) && !c->reconnecting &&
             sh_lane_eligible_locked(c, &s);
  sh_buf_t *dst = sh_lane_dest_locked(c, s.deps, s.ndeps);
  /* Offsets from the unconsumed front: appending may move the bytes there
   * (sh_buf_reserve reclaims the consumed front). */
  size_t before = sh_buf_avail(dst);
  int rc = sh_submit_append(dst, task_id, &s);
  size_t n = rc ? 0 : sh_buf_avail(dst) - before;
  uint8_t *frame = sh_buf_head(dst) + before;
  if (!rc && c->reconnect_timeout > 0) sh_client_keep_locked(c, task_id, frame, n);
  if (!rc && lane && c->lane_fd >= 0 && !c->lane_task &&
      sh_lane_send_locked(c, task_id, frame, n) == 0) {
    dst->len = dst->off + before; /* it went down the lane */
    pthread_mutex_unlock(&c->out_mu);
    return 0;
  }
  /* No lane yet: the agent may lease this task's worker to us. */
  if (!rc && lane && c->lane_fd < 0) sh_put_u16(frame + 6, SH_SUBMIT_WANT_LANE);
  if (dst != &c->out) {
    pthread_mutex_unlock(&c->out_mu);
    return rc;
  }
  if (alone && !c->awake && !rc) {
    sh_client_flush_direct_locked(c);
    if (sh_buf_avail(&c->out) == 0) {
      pthread_mutex_unlock(&c->out_mu);
      return 0;
    }
  }
  out_unlock_wake(c);
  return rc;
}

/* Puts fut in `pending` and queues its SUBMIT frame. 0, or -1 with an
 * exception and nothing changed. */
static int publish(sh_client_obj_t *c, const sh_spec_obj_t *spec, uint64_t task_id,
                   int explicit_id, const deps_t *d, const Py_buffer *view, PyObject *fut) {
  /* dumps and the Future constructor ran Python code, during which the
   * connection may have been lost or closed: check again, then publish with
   * no Python code (so no GIL switch) until the frame is queued. */
  if (check_usable(c) < 0) return -1;
  if (explicit_id && sh_map_get(&c->pending, task_id)) {
    PyErr_Format(PyExc_ValueError, "submit(): task id %llu is already pending",
                 (unsigned long long)task_id);
    return -1;
  }
  int rc = sh_map_put(&c->pending, task_id, fut);
  if (rc < 0) {
    sh_core_raise(rc, NULL);
    return -1;
  }
  if ((rc = append_submit(c, spec, task_id, d, view)) < 0) {
    sh_map_del(&c->pending, task_id);
    sh_core_raise(rc, NULL);
    return -1;
  }
  Py_INCREF(fut); /* the map's reference */
  return 0;
}

/* Checks submit's arguments. Returns the spec, or NULL with TypeError. */
static const sh_spec_obj_t *check_submit_args(sh_client_obj_t *c, PyObject **a) {
  if (!Py_IS_TYPE(a[0], (PyTypeObject *)c->st->spec_type))
    PyErr_Format(PyExc_TypeError, "submit(): spec must be a TaskSpec, not %.100s",
                 Py_TYPE(a[0])->tp_name);
  else if (!PyTuple_Check(a[1]))
    PyErr_Format(PyExc_TypeError, "submit(): args must be a tuple, not %.100s",
                 Py_TYPE(a[1])->tp_name);
  else if (a[2] != Py_None && !PyDict_Check(a[2]))
    PyErr_Format(PyExc_TypeError, "submit(): kwargs must be a dict or None, not %.100s",
                 Py_TYPE(a[2])->tp_name);
  else
    return (const sh_spec_obj_t *)a[0];
  return NULL;
}

/* Tells the stored copy of a task's arguments which task it was submitted
 * with (holder._used_by(fut)), so that the driver may reuse the copy for the
 * same arguments while that task is pending. The submit stands either way:
 * an error here is only reported. */
static void used_by(PyObject *holder, PyObject *fut) {
  PyObject *r = PyObject_CallMethod(holder, "_used_by", "O", fut);
  if (!r) PyErr_WriteUnraisable(holder);
  Py_XDECREF(r);
}

static PyObject *client_submit(sh_client_obj_t *c, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames) {
  static const char *const names[] = {"spec", "args", "kwargs", "task_id"};
  PyObject *a[4] = {NULL, NULL, Py_None, NULL};
  if (parse_args("submit", names, 4, 2, args, nargs, kwnames, a) < 0) return NULL;
  const sh_spec_obj_t *spec;
  if (check_usable(c) < 0 || !(spec = check_submit_args(c, a))) return NULL;
  uint64_t task_id = 0;
  if (a[3] && get_id(a[3], "submit(): task_id", &task_id) < 0) return NULL;
  int explicit_id = task_id != 0;
  if (!task_id)
    task_id = spec->s.kind == SH_KIND_ACTOR_CREATE && spec->s.actor_id ? spec->s.actor_id
                                                                       : new_id(c);
  /* publish() puts the Future there after the pickling: load the slot now. */
  sh_map_prefetch(&c->pending, task_id);

  deps_t d = {.cap = 8};
  d.p = d.small;
  PyObject *failed = NULL, *targs = NULL, *tkw = NULL, *pair = NULL, *blob = NULL,
           *fut = NULL, *holder = NULL;
  Py_buffer view = {.obj = NULL};
  targs = scan_tuple(c, a[1], &d, &failed);
  if (targs && a[2] != Py_None) tkw = scan_dict(c, a[2], &d, &failed);
  else if (targs) tkw = Py_NewRef(Py_None);
  if (failed) {
    fut = fail_like(c, task_id, spec->name, failed);
    goto done;
  }
  if (!tkw) goto done;
  if (!(pair = PyTuple_Pack(2, targs, tkw))) goto done;
  if (!(blob = PyObject_CallOneArg(c->dumps, pair))) goto done;
  if (PyObject_TypeCheck(blob, (PyTypeObject *)c->future_type)) {
    /* dumps put big arguments in the object store: the task depends on that
     * object, and its arguments are "dependency i" (held until sent). */
    holder = blob;
    blob = NULL;
    PyObject *ref = resolve_future(c, holder, &d, &failed);
    PyObject *wrapped = ref ? PyTuple_Pack(1, ref) : NULL;
    Py_XDECREF(ref);
    if (!wrapped) goto done;
    blob = PyObject_CallOneArg(c->dumps, wrapped);
    Py_DECREF(wrapped);
    if (!blob) goto done;
  }
  if (get_blob(blob, &view, "the pickled arguments",
               SH_SUBMIT_FIXED + 8 * (size_t)d.n + 2048) < 0)
    goto done;
  if (!(fut = make_future(c, task_id, spec->name))) goto done;
  if (publish(c, spec, task_id, explicit_id, &d, &view, fut) < 0) Py_CLEAR(fut);
  else if (holder) used_by(holder, fut);
done:
  if (view.obj) PyBuffer_Release(&view);
  Py_XDECREF(blob);
  Py_XDECREF(holder);
  Py_XDECREF(pair);
  Py_XDECREF(tkw);
  Py_XDECREF(targs);
  Py_XDECREF(failed);
  if (d.p != d.small) sh_free(d.p);
  return fut;
}

/* ---- the other requests ---- */

static PyObject *client_new_id(sh_client_obj_t *c, PyObject *unused) {
  return PyLong_FromUnsignedLongLong(new_id(c));
}

/* Sends FUNC or PUT: an id and a bytes-like body. */
static PyObject *send_blob(sh_client_obj_t *c, unsigned type, const char *fname,
                           PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 2)
    return PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (id, blob)", fname);
  uint64_t id;
  Py_buffer view;
  if (get_id(args[0], "the id", &id) < 0 || check_usable(c) < 0) return NULL;
  if (get_blob(args[1], &view, type == SH_MSG_FUNC ? "the pickled function" : "the value", 0) < 0)
    return NULL;
  int rc = send_frame(c, type, 0, id, view.buf, (size_t)view.len);
  if (!rc && (c->reconnect_timeout > 0 || (c->lanes && type == SH_MSG_FUNC))) {
    pthread_mutex_lock(&c->out_mu);
    if (c->reconnect_timeout > 0) keep_frame_locked(c, type, 0, id, view.buf, (size_t)view.len);
    if (type == SH_MSG_FUNC) sh_lane_keep_func_locked(c, id, view.buf, (size_t)view.len);
    pthread_mutex_unlock(&c->out_mu);
  }
  PyBuffer_Release(&view);
  if (rc) return sh_core_raise(rc, NULL);
  Py_RETURN_NONE;
}

static PyObject *client_register(sh_client_obj_t *c, PyObject *const *args, Py_ssize_t nargs) {
  return send_blob(c, SH_MSG_FUNC, "register", args, nargs);
}

static PyObject *client_put(sh_client_obj_t *c, PyObject *const *args, Py_ssize_t nargs) {
  return send_blob(c, SH_MSG_PUT, "put", args, nargs);
}

static int get_timeout(PyObject *o, double *t) {
  if (!o) return 0;
  *t = PyFloat_AsDouble(o);
  if (*t == -1.0 && PyErr_Occurred()) return -1;
  if (!(*t >= 0)) {
    PyErr_SetString(PyExc_ValueError, "timeout must be a nonnegative number");
    return -1;
  }
  return 0;
}

/* Appends id to a list the I/O thread sends as RELEASE frames. Never
 * raises; an id dropped for want of memory is freed when the driver goes. */
static void queue_id(sh_client_obj_t *c, uint64_t **list, size_t *n, size_t *cap,
                     uint64_t id) {
  pthread_mutex_lock(&c->out_mu);
  if (*n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 256;
    uint64_t *p = sh_try_realloc(*list, ncap * sizeof *p);
    if (!p) {
      pthread_mutex_unlock(&c->out_mu);
      return;
    }
    *list = p;
    *cap = ncap;
  }
  (*list)[(*n)++] = id;
  if (*n >= SH_CLIENT_RELEASE_BATCH) out_unlock_wake(c);
  else pthread_mutex_unlock(&c->out_mu);
}

/* Never raises and never waits for I/O: called from Future.__del__. */
static PyObject *client_release(sh_client_obj_t *c, PyObject *arg) {
  uint64_t id = PyLong_AsUnsignedLongLong(arg);
  if (id == (uint64_t)-1 && PyErr_Occurred()) PyErr_Clear();
  if (!id || id == (uint64_t)-1 || c->fork_gen != sh_core_fork_gen() || c->closed ||
      c->lost)
    Py_RETURN_NONE;
  if (c->reconnect_timeout > 0 || c->lanes) {
    pthread_mutex_lock(&c->out_mu);
    if (c->reconnect_timeout > 0) sh_client_forget_locked(c, id);
    int unknown = sh_lane_only_locked(c, id); /* the daemon never heard of it */
    pthread_mutex_unlock(&c->out_mu);
    if (unknown) Py_RETURN_NONE;
  }
  queue_id(c, &c->rel, &c->nrel, &c->rel_cap, id);
  Py_RETURN_NONE;
}

/* Never raises and never waits for I/O: called when a mapping is freed. */
static PyObject *client_unmap(sh_client_obj_t *c, PyObject *arg) {
  uint64_t id = PyLong_AsUnsignedLongLong(arg);
  if (id == (uint64_t)-1 && PyErr_Occurred()) PyErr_Clear();
  if (!id || id == (uint64_t)-1 || c->fork_gen != sh_core_fork_gen() || c->closed ||
      c->lost)
    Py_RETURN_NONE;
  queue_id(c, &c->unmap, &c->nunmap, &c->unmap_cap, id);
  Py_RETURN_NONE;
}

/* PUT of a segment already in the store; waits for PUT_REPLY. */
static PyObject *client_put_stored(sh_client_obj_t *c, PyObject *const *args,
                                   Py_ssize_t nargs, PyObject *kwnames) {
  static const char *const names[] = {"obj_id", "size", "timeout"};
  PyObject *a[3] = {NULL, NULL, NULL};
  uint64_t id, size;
  double timeout = 60.0;
  if (parse_args("put_stored", names, 3, 2, args, nargs, kwnames, a) < 0 ||
      get_id(a[0], "put_stored(): obj_id", &id) < 0 ||
      get_timeout(a[2], &timeout) < 0)
    return NULL;
  size = PyLong_AsUnsignedLongLong(a[1]);
  if (size == (uint64_t)-1 && PyErr_Occurred()) return NULL;
  uint8_t body[8];
  sh_put_u64(body, size);
  if (c->reconnect_timeout > 0) {
    pthread_mutex_lock(&c->out_mu);
    keep_frame_locked(c, SH_MSG_PUT, SH_PUT_STORED, id, body, 8);
    pthread_mutex_unlock(&c->out_mu);
  }
  sh_waiter_t w;
  if (request_body(c, SH_MSG_PUT, SH_PUT_STORED, id, body, 8, SH_MSG_PUT_REPLY, timeout, &w,
                   "put()") < 0)
    return NULL;
  PyObject *r = Py_BuildValue("(Is#)", sh_get_u32(w.body), (const char *)w.body + 4,
                              (Py_ssize_t)(w.len - 4));
  sh_free(w.body);
  return r;
}

/* MAP: the object is made resident and counted as mapped; (status, size, text). */
static PyObject *client_map(sh_client_obj_t *c, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
  static const char *const names[] = {"obj_id", "timeout"};
  PyObject *a[2] = {NULL, NULL};
  uint64_t id;
  double timeout = 60.0;
  if (parse_args("map", names, 2, 1, args, nargs, kwnames, a) < 0 ||
      get_id(a[0], "map(): obj_id", &id) < 0 || get_timeout(a[1], &timeout) < 0)
    return NULL;
  sh_waiter_t w;
  if (request(c, SH_MSG_MAP, 0, id, SH_MSG_MAP_REPLY, timeout, &w, "get()") < 0) return NULL;
  PyObject *r = Py_BuildValue("(IKs#)", sh_get_u32(w.body),
                              (unsigned long long)sh_get_u64(w.body + 4),
                              (const char *)w.body + 12, (Py_ssize_t)(w.len - 12));
  sh_free(w.body);
  return r;
}

static PyObject *client_cancel(sh_client_obj_t *c, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames) {
  static const char *const names[] = {"task_id", "force", "timeout", "queued_only"};
  PyObject *a[4] = {NULL, NULL, NULL, NULL};
  uint64_t id;
  double timeout = 10.0;
  if (parse_args("cancel", names, 4, 1, args, nargs, kwnames, a) < 0 ||
      get_id(a[0], "cancel(): task_id", &id) < 0 || get_timeout(a[2], &timeout) < 0)
    return NULL;
  int force = a[1] ? PyObject_IsTrue(a[1]) : 0;
  int queued_only = a[3] ? PyObject_IsTrue(a[3]) : 0;
  if (force < 0 || queued_only < 0) return NULL;
  unsigned flags = (force ? SH_CANCEL_FORCE : 0) | (queued_only ? SH_CANCEL_QUEUED_ONLY : 0);
  pthread_mutex_lock(&c->out_mu);
  if (sh_lane_cancel_locked(c, id, force && !queued_only)) flags |= SH_CANCEL_LANE;
  pthread_mutex_unlock(&c->out_mu);
  sh_waiter_t w;
  char what[64];
  snprintf(what, sizeof what, "cancel(%#llx)", (unsigned long long)id);
  if (request(c, SH_MSG_CANCEL, flags, id, SH_MSG_CANCEL_REPLY,
              timeout, &w, what) < 0)
    return NULL;
  uint32_t outcome = sh_get_u32(w.body); /* length checked by the I/O thread */
  sh_free(w.body);
  return PyLong_FromUnsignedLong(outcome);
}

static PyObject *client_status(sh_client_obj_t *c, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames) {
  static const char *const names[] = {"timeout"};
  PyObject *a[1] = {NULL};
  double timeout = 10.0;
  if (parse_args("status", names, 1, 0, args, nargs, kwnames, a) < 0 ||
      get_timeout(a[0], &timeout) < 0)
    return NULL;
  sh_waiter_t w;
  if (request(c, SH_MSG_STATUS, 0, new_id(c), SH_MSG_STATUS_REPLY, timeout, &w,
              "status()") < 0)
    return NULL;
  PyObject *r = sh_mpack_to_py(w.body, w.len);
  sh_free(w.body);
  return r;
}

static PyObject *client_kill_actor(sh_client_obj_t *c, PyObject *const *args,
                                   Py_ssize_t nargs, PyObject *kwnames) {
  static const char *const names[] = {"actor_id", "no_restart", "when_idle"};
  PyObject *a[3] = {NULL, NULL, NULL};
  uint64_t id;
  if (parse_args("kill_actor", names, 3, 1, args, nargs, kwnames, a) < 0 ||
      get_id(a[0], "kill_actor(): actor_id", &id) < 0 || check_usable(c) < 0)
    return NULL;
  int no_restart = a[1] ? PyObject_IsTrue(a[1]) : 1;
  int when_idle = a[2] ? PyObject_IsTrue(a[2]) : 0;
  if (no_restart < 0 || when_idle < 0) return NULL;
  unsigned flags = (no_restart ? SH_KILL_NO_RESTART : 0) | (when_idle ? SH_KILL_WHEN_IDLE : 0);
  if (no_restart) {
    pthread_mutex_lock(&c->out_mu);
    sh_client_forget_locked(c, id); /* not constructed again by a restarted head */
    pthread_mutex_unlock(&c->out_mu);
  }
  int rc = send_frame(c, SH_MSG_KILL_ACTOR, flags, id, NULL, 0);
  if (rc) return sh_core_raise(rc, NULL);
  Py_RETURN_NONE;
}

static PyObject *client_wait_io(sh_client_obj_t *c, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames) {
  static const char *const names[] = {"task_id", "timeout"};
  PyObject *a[2] = {NULL, NULL};
  uint64_t id;
  double timeout = 1.0;
  if (parse_args("wait_io", names, 2, 1, args, nargs, kwnames, a) < 0 ||
      get_id(a[0], "wait_io(): task_id", &id) < 0)
    return NULL;
  if (a[1] && a[1] != Py_None && get_timeout(a[1], &timeout) < 0) return NULL;
  return PyBool_FromLong(sh_client_wait_io(c, id, timeout));
}

static PyObject *client_close(sh_client_obj_t *c, PyObject *unused) {
  shutdown_client(c, "shoal was shut down");
  Py_RETURN_NONE;
}

/* ---- the type ---- */

static PyObject *get_client_id(sh_client_obj_t *c, void *x) {
  return PyLong_FromUnsignedLongLong(c->client_id);
}
static PyObject *get_node_info(sh_client_obj_t *c, void *x) {
  return c->node_info ? PyDict_Copy(c->node_info) : PyDict_New();
}
static PyObject *get_address(sh_client_obj_t *c, void *x) { return Py_NewRef(c->address); }
static PyObject *get_connected(sh_client_obj_t *c, void *x) {
  return PyBool_FromLong(!c->closed && !c->lost && c->fork_gen == sh_core_fork_gen());
}
static PyObject *get_pending(sh_client_obj_t *c, void *x) {
  return PyLong_FromSize_t(c->pending.count);
}

static PyGetSetDef client_getset[] = {
    {"client_id", (getter)get_client_id, NULL, "id the daemon gave this client", NULL},
    {"node_info", (getter)get_node_info, NULL,
     "the node: node_id, num_workers, CPU, GPU (floats), memory (bytes)", NULL},
    {"address", (getter)get_address, NULL, "the address connected to", NULL},
    {"connected", (getter)get_connected, NULL, "not closed, not lost, not forked", NULL},
    {"pending", (getter)get_pending, NULL, "futures not yet completed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define FAST(f) (PyCFunction)(void (*)(void))(f)

static PyMethodDef client_methods[] = {
    {"new_id", (PyCFunction)client_new_id, METH_NOARGS,
     "new_id()\n--\n\nA fresh id: client_id << 40 | sequence (thread-safe)."},
    {"register", FAST(client_register), METH_FASTCALL,
     "register(fn_id, blob)\n--\n\nSends a pickled function or class (FUNC)."},
    {"submit", FAST(client_submit), METH_FASTCALL | METH_KEYWORDS,
     "submit(spec, args, kwargs=None, task_id=0)\n--\n\n"
     "Submits a task; returns its Future.\n\n"
     "Top-level futures in args and kwargs values become dependencies (pending\n"
     "ones of this client) or their values (done ones). task_id 0 takes a new\n"
     "id (spec.actor_id for an actor creation).\n\n"
     "Raises:\n    ConnectionError: the client is closed or the connection lost.\n"
     "    TypeError: a pending future of another client among the arguments.\n"
     "    RuntimeError: used in a forked child."},
    {"put", FAST(client_put), METH_FASTCALL,
     "put(obj_id, blob)\n--\n\nStores a pickled value under obj_id (PUT)."},
    {"release", (PyCFunction)client_release, METH_O,
     "release(obj_id)\n--\n\nQueues obj_id for RELEASE; never blocks or raises."},
    {"unmap", (PyCFunction)client_unmap, METH_O,
     "unmap(obj_id)\n--\n\nQueues a RELEASE (UNMAP) of one mapping of a stored object; "
     "never blocks or raises."},
    {"put_stored", FAST(client_put_stored), METH_FASTCALL | METH_KEYWORDS,
     "put_stored(obj_id, size, timeout=60.0)\n--\n\nAsks the daemon to take the segment "
     "STORE_DIR/<obj_id> of `size` bytes into the object store. Returns (status, text):\n"
     "status 0 when it was stored."},
    {"map", FAST(client_map), METH_FASTCALL | METH_KEYWORDS,
     "map(obj_id, timeout=60.0)\n--\n\nAsks the daemon to make a stored object resident\n"
     "and count one mapping of it (undo with unmap). Returns (status, size, text)."},
    {"cancel", FAST(client_cancel), METH_FASTCALL | METH_KEYWORDS,
     "cancel(task_id, force=False, timeout=10.0, queued_only=False)\n--\n\n"
     "Cancels a task; returns 0 (nothing to cancel), 1 (was queued) or 2 (was\n"
     "running). A running task is interrupted (SIGINT in its worker), its worker\n"
     "killed with force, or left alone with queued_only (Future.cancel).\n\n"
     "Raises:\n    GetTimeoutError: no reply in time.\n"
     "    ConnectionError: the connection is closed or lost."},
    {"wait_io", FAST(client_wait_io), METH_FASTCALL | METH_KEYWORDS,
     "wait_io(task_id, timeout=None)\n--\n\nWaits briefly for a result by reading the "
     "socket on this thread (no thread switch). True when the future is complete; False "
     "when the caller must wait on the future as usual."},
    {"kill_actor", FAST(client_kill_actor), METH_FASTCALL | METH_KEYWORDS,
     "kill_actor(actor_id, no_restart=True, when_idle=False)\n--\n\nStops an actor (KILL_ACTOR); "
     "with when_idle, once the calls already sent to it have run."},
    {"status", FAST(client_status), METH_FASTCALL | METH_KEYWORDS,
     "status(timeout=10.0)\n--\n\nThe node's state as a dict.\n\n"
     "Raises:\n    GetTimeoutError: no reply in time.\n"
     "    ConnectionError: the connection is closed or lost."},
    {"close", (PyCFunction)client_close, METH_NOARGS,
     "close()\n--\n\nStops the I/O thread and closes the connection; pending\n"
     "futures fail with ConnectionLostError. Idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyObject *client_repr(sh_client_obj_t *c) {
  return PyUnicode_FromFormat("<shoal._core.Client %R client_id=%llu %s>", c->address,
                              (unsigned long long)c->client_id,
                              c->closed ? "closed" : c->lost ? "lost" : "connected");
}

PyDoc_STRVAR(client_doc,
"Client(address, *, owner=False, timeout=10.0, future_type, dep_type, dumps, token=None,\n"
"       wait_for_nodes=False, tls_ca=None, tls_cert=None, tls_key=None)\n--\n\n"
"A driver's connection to a shoal node agent, with one I/O thread.\n\n"
"Args:\n"
"    address: \"unix:PATH\", a socket path, or \"HOST:PORT\".\n"
"    owner: the daemon exits when this connection closes (embedded cluster).\n"
"    wait_for_nodes: a request no node can satisfy waits for a node that can\n"
"        to join, instead of failing at once.\n"
"    timeout: seconds for connecting and the handshake.\n"
"    future_type: the Future class, called as future_type(id, client, name).\n"
"    dep_type: called as dep_type(i) for the i-th pending dependency.\n"
"    dumps: pickles (args, kwargs) to bytes.\n"
"    token: the cluster token (str) a HOST:PORT address needs; None looks in\n"
"        $SHOAL_TOKEN, the file $SHOAL_TOKEN_FILE, then ~/.shoal/token.\n"
"        Unix sockets need none.\n"
"    tls_ca, tls_cert, tls_key: PEM files; any of them makes a HOST:PORT\n"
"        connection speak TLS: the daemon's certificate must be signed by\n"
"        tls_ca (None: $SHOAL_TLS_CA, else the system's store) and name HOST;\n"
"        tls_cert and tls_key (None: $SHOAL_TLS_CERT, $SHOAL_TLS_KEY) are\n"
"        presented to a head that demands client certificates.\n"
"Raises:\n"
"    shoal.AuthenticationError: no token was found, or the daemon refused it,\n"
"        or the daemon did not prove it holds it; or TLS failed (an unusable\n"
"        file, an untrusted or refused certificate, TLS on one side only).\n"
"    ConnectionError: nothing listens at the address, or the handshake failed.");

static PyType_Slot client_slots[] = {
    {Py_tp_new, client_new},
    {Py_tp_dealloc, client_dealloc},
    {Py_tp_traverse, client_traverse},
    {Py_tp_clear, client_clear},
    {Py_tp_methods, client_methods},
    {Py_tp_getset, client_getset},
    {Py_tp_repr, client_repr},
    {Py_tp_doc, (void *)client_doc},
    {0, NULL},
};

static PyType_Spec client_spec = {
    .name = "shoal._core.Client",
    .basicsize = sizeof(sh_client_obj_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = client_slots,
};

int sh_client_add_type(PyObject *m, sh_core_state_t *st) {
  st->client_type = PyType_FromModuleAndSpec(m, &client_spec, NULL);
  if (!st->client_type) return -1;
  return PyModule_AddType(m, (PyTypeObject *)st->client_type);
}
