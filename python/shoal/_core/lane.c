/* The driver's end of a lane (src/node/lane.c has the design): a socket to
 * one pool worker the agent leased to this driver. A submit that comes alone
 * (the caller then waits for it) and needs nothing but one CPU goes down the
 * lane as FUNC + EXEC, and its RESULT comes back up it (a large value is
 * written to the store by the worker and registered with the agent by LANE
 * DONE before the driver maps it), read by the waiting
 * thread (sh_client_wait_io) or the I/O thread like any other.
 *
 * The SUBMIT frame of the lane task is kept (lane_sub): when the lane ends
 * before the result (the worker said END first: it never ran the task) it is
 * sent to the agent; when the lane breaks (the worker died) it is sent after
 * LANE LOST, and the agent charges the attempt. SUBMITs that name the lane
 * task as a dependency wait in lane_defer until its outcome is known; the
 * agent then gets that outcome (LANE DONE) before them. */
#include "client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"

void sh_lane_init(sh_client_obj_t *c, int lanes) {
  c->lanes = lanes;
  c->lane_fd = -1;
  sh_buf_init(&c->lane_sub);
  sh_buf_init(&c->lane_defer);
  sh_buf_init(&c->lane_out);
  sh_buf_init(&c->lrbuf);
  sh_map_init(&c->lane_sent);
  sh_map_init(&c->funcs);
}

void sh_lane_free(sh_client_obj_t *c) {
  if (c->lane_fd >= 0) close(c->lane_fd);
  c->lane_fd = -1;
  sh_buf_close(&c->lane_sub);
  sh_buf_close(&c->lane_defer);
  sh_buf_close(&c->lane_out);
  sh_buf_close(&c->lrbuf);
  sh_map_close(&c->lane_sent);
  size_t i = 0;
  uint64_t id;
  void *v;
  while (sh_map_next(&c->funcs, &i, &id, &v)) sh_free(v);
  sh_map_close(&c->funcs);
  sh_fdq_close(&c->fdq);
}

void sh_lane_keep_func_locked(sh_client_obj_t *c, uint64_t fn_id, const void *blob, size_t len) {
  if (!c->lanes || sh_map_get(&c->funcs, fn_id)) return;
  sh_buf_t b;
  sh_buf_init(&b);
  if (sh_frame_append(&b, SH_MSG_FUNC, 0, fn_id, blob, len)) return;
  sh_client_rec_t *r = sh_try_malloc(sizeof *r + b.len);
  if (r) {
    r->len = (uint32_t)b.len;
    memcpy(r->frame, b.data, b.len);
    if (sh_map_put(&c->funcs, fn_id, r)) sh_free(r);
  }
  sh_buf_close(&b);
}

int sh_lane_eligible_locked(sh_client_obj_t *c, const sh_submit_t *s) {
  return c->lanes && s->kind == SH_KIND_TASK && s->cpu_milli == 1000 && !s->gpu_milli &&
         !s->memory && !s->ncustom && !s->timeout_ms && !s->ndeps &&
         !(s->flags & SH_SUBMIT_RETRY_EXC) &&
         sh_map_get(&c->funcs, s->fn_id);
}

sh_buf_t *sh_lane_dest_locked(sh_client_obj_t *c, const uint8_t *deps, uint32_t ndeps) {
  if (c->lane_task)
    for (uint32_t i = 0; i < ndeps; i++)
      if (sh_get_u64(deps + 8 * i) == c->lane_task) {
        c->lane_wanted = 1;
        return &c->lane_defer;
      }
  return &c->out;
}

int sh_lane_send_locked(sh_client_obj_t *c, uint64_t task_id, const uint8_t *p, size_t len) {
  if (c->lane_fd < 0 || c->lane_task) return -1;
  sh_submit_t s;
  if (len < SH_FRAME_HDR || sh_submit_decode(p + SH_FRAME_HDR, len - SH_FRAME_HDR, &s)) return -1;
  sh_buf_reset(&c->lane_out);
  const sh_client_rec_t *fn = sh_map_get(&c->funcs, s.fn_id);
  if (!fn) return -1;
  int fresh = !sh_map_get(&c->lane_sent, s.fn_id);
  if (fresh && sh_buf_append(&c->lane_out, fn->frame, fn->len)) return -1;
  long at = sh_exec_begin(&c->lane_out, task_id, s.fn_id, 0, SH_KIND_TASK, 0, 0, s.args_len);
  if (at < 0 || sh_exec_finish(&c->lane_out, at, NULL, 0, s.args, s.args_len)) return -1;
  /* The lane is idle, so the worker has read everything sent before and the
   * socket's buffer is empty: a request that fits in it is written at once,
   * never waiting on the worker. A bigger one (a large function) goes to the
   * agent. */
  if (c->lane_out.len > SH_LANE_MAX_SEND) return -1;
  sh_buf_reset(&c->lane_sub);
  if (sh_buf_append(&c->lane_sub, p, len)) return -1;
  size_t off = 0;
  while (off < c->lane_out.len) {
    ssize_t n = send(c->lane_fd, c->lane_out.data + off, c->lane_out.len - off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) off += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else if (off == 0) return -1; /* nothing went (full, or broken): the agent runs it */
    else {
      /* Part of it went: the worker sees the lane end mid-request and ends
       * the lease (END), and the task goes to the agent from lane_sub. */
      shutdown(c->lane_fd, SHUT_WR);
      break;
    }
  }
  if (fresh) sh_map_put(&c->lane_sent, s.fn_id, (void *)1);
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  c->lane_sent_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
  c->lane_task = task_id;
  c->lane_force = c->lane_wanted = 0;
  if (c->lane_out.cap > (1u << 20)) sh_buf_close(&c->lane_out);
  return 0;
}

int sh_lane_cancel_locked(sh_client_obj_t *c, uint64_t id, int force) {
  if (!id || id != c->lane_task) return 0;
  if (force) c->lane_force = 1;
  return 1;
}

int sh_lane_only_locked(sh_client_obj_t *c, uint64_t id) {
  for (unsigned i = 0; i < sizeof c->lane_only / sizeof c->lane_only[0]; i++)
    if (c->lane_only[i] == id) {
      c->lane_only[i] = 0;
      return 1;
    }
  return 0;
}

/* The lane task's outcome is known (out_mu held): the agent learns it when a
 * SUBMIT waits for it, then gets those SUBMITs. */
static void lane_outcome_locked(sh_client_obj_t *c, uint64_t id, const sh_result_t *r) {
  /* A stored value is registered always: the driver maps it through the agent. */
  if (r && (c->lane_wanted || (r->status == SH_ST_OK && r->code == SH_CODE_STORED))) {
    long at = sh_frame_begin(&c->out, SH_MSG_LANE, SH_LANE_DONE, id);
    uint8_t h[8];
    sh_put_u32(h, r->status);
    sh_put_u32(h + 4, (uint32_t)r->code);
    if (at >= 0 && (sh_buf_append(&c->out, h, 8) ||
                    sh_buf_append(&c->out, r->payload, r->payload_len)))
      sh_frame_abort(&c->out, at);
    else if (at >= 0)
      sh_frame_finish(&c->out, at);
  }
  if (sh_buf_avail(&c->lane_defer))
    sh_buf_append(&c->out, sh_buf_head(&c->lane_defer), sh_buf_avail(&c->lane_defer));
  sh_buf_reset(&c->lane_defer);
  sh_buf_reset(&c->lane_sub);
  c->lane_task = 0;
  c->lane_force = c->lane_wanted = 0;
}

/* Closes the lane (rd_mu held, GIL held). `broken`: it failed without END.
 * The task on it, if any, goes to the agent: again (never run, or run on a
 * worker that died: LOST first), or, force-cancelled, completed here. */
static void lane_close(sh_client_obj_t *c, int broken) {
  pthread_mutex_lock(&c->out_mu);
  if (c->lane_fd < 0) {
    pthread_mutex_unlock(&c->out_mu);
    return;
  }
  close(c->lane_fd);
  c->lane_fd = -1;
  sh_buf_reset(&c->lrbuf);
  sh_map_close(&c->lane_sent);
  sh_map_init(&c->lane_sent);
  uint64_t task = c->lane_task;
  int cancelled = task && broken && c->lane_force;
  static const char why[] = "the task was cancelled while running (force=True): its worker was "
                            "killed and replaced";
  sh_result_t r = {SH_ST_CANCELLED, 0, (const uint8_t *)why, sizeof why - 1};
  if (task && !cancelled && !c->reconnecting) {
    if (broken) {
      uint8_t b[8];
      sh_put_u64(b, task);
      sh_frame_append(&c->out, SH_MSG_LANE, SH_LANE_LOST, c->lane_id, b, 8);
    }
    sh_buf_append(&c->out, sh_buf_head(&c->lane_sub), sh_buf_avail(&c->lane_sub));
    c->lane_wanted = 0; /* the agent knows the task now */
  }
  if (task) lane_outcome_locked(c, task, cancelled ? &r : NULL);
  int wake = !c->awake && sh_buf_avail(&c->out);
  c->awake |= wake;
  pthread_mutex_unlock(&c->out_mu);
  if (wake && c->evfd >= 0) sh_client_wake(c);
  if (cancelled) sh_client_complete(c, task, &r);
}

void sh_lane_drop(sh_client_obj_t *c) {
  pthread_mutex_lock(&c->out_mu);
  if (c->lane_fd >= 0) close(c->lane_fd);
  c->lane_fd = -1;
  sh_buf_reset(&c->lrbuf);
  sh_buf_reset(&c->lane_sub);
  sh_buf_reset(&c->lane_defer);
  c->lane_task = 0;
  c->lane_force = c->lane_wanted = 0;
  /* A restarted head is sent PUTs of finished values, lane ones too: their
   * releases must go out again. */
  memset(c->lane_only, 0, sizeof c->lane_only);
  pthread_mutex_unlock(&c->out_mu);
}

/* A RESULT from the lane (GIL held). */
static void lane_result(sh_client_obj_t *c, uint64_t id, const sh_result_t *r) {
  pthread_mutex_lock(&c->out_mu);
  int ours = id && id == c->lane_task;
  if (ours && !c->lane_wanted && r->code != SH_CODE_STORED) {
    unsigned n = sizeof c->lane_only / sizeof c->lane_only[0];
    c->lane_only[c->lane_only_at++ % n] = id;
  }
  if (ours) lane_outcome_locked(c, id, r);
  int wake = ours && !c->awake && sh_buf_avail(&c->out);
  c->awake |= wake;
  pthread_mutex_unlock(&c->out_mu);
  if (wake && c->evfd >= 0) sh_client_wake(c);
  if (ours) sh_client_complete(c, id, r);
}

void sh_lane_read(sh_client_obj_t *c, PyThreadState **ts) {
  if (c->lane_fd < 0) return;
  int broken = 0, ended = 0;
  if (sh_buf_reserve(&c->lrbuf, 65536)) return;
  ssize_t n = recv(c->lane_fd, c->lrbuf.data + c->lrbuf.len, c->lrbuf.cap - c->lrbuf.len,
                   MSG_DONTWAIT);
  if (n > 0) c->lrbuf.len += (size_t)n;
  else if (n == 0 || (errno != EAGAIN && errno != EINTR)) broken = 1;
  if (*ts) {
    PyEval_RestoreThread(*ts);
    *ts = NULL;
  }
  for (;;) {
    sh_frame_t f;
    size_t used;
    int rc = sh_frame_parse(sh_buf_head(&c->lrbuf), sh_buf_avail(&c->lrbuf),
                            SH_CLIENT_MAX_BODY, &f, &used);
    if (rc == 0) break;
    sh_result_t r;
    if (rc < 0 || (f.hdr.type == SH_MSG_RESULT && sh_result_decode(f.body, f.hdr.len, &r))) {
      broken = 1; /* not a worker's: the task is run by the agent instead */
      break;
    }
    if (f.hdr.type == SH_MSG_LANE && (f.hdr.flags & SH_LANE_END)) ended = 1;
    else if (f.hdr.type == SH_MSG_RESULT) lane_result(c, f.hdr.id, &r);
    sh_buf_consume(&c->lrbuf, used);
    if (ended) break;
  }
  if (ended || broken) lane_close(c, !ended);
  *ts = PyEval_SaveThread();
}

void sh_lane_frame(sh_client_obj_t *c, const sh_frame_t *f) {
  if (!(f->hdr.flags & SH_LANE_GRANT)) return;
  int fd = sh_fdq_take(&c->fdq);
  if (fd < 0) return; /* no socket came with it: the worker ends the lease itself */
  /* A new lease after the last one ended: what is left of the old lane
   * (its RESULT, END) is read first; the worker closed it after END. */
  PyThreadState *ts = NULL;
  for (int i = 0; i < 64 && c->lane_fd >= 0; i++) {
    sh_lane_read(c, &ts);
    PyEval_RestoreThread(ts);
    ts = NULL;
  }
  if (c->lane_fd >= 0) lane_close(c, 0);
  pthread_mutex_lock(&c->out_mu);
  c->lane_fd = fd;
  c->lane_id = f->hdr.id;
  c->lane_task = 0;
  pthread_mutex_unlock(&c->out_mu);
}
