/* Worker processes: spawning `python -m shoal.worker` with its channel on fd
 * 3, forwarding its output to drivers line by line, noticing its death and
 * replacing it. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/agent.h"

extern char **environ;

#define EARLY_EXIT_LIMIT 3          /* consecutive early exits before failing work */
#define LINE_MAX_BYTES 8192
#define POOL_WARM_MS 250            /* the rest of the pool starts after this at the latest */

static void worker_handle_closed(uv_handle_t *h) {
  sh_worker_t *w = h->data;
  if (--w->open_handles > 0) return;
  sh_map_close(&w->funcs_sent);
  sh_buf_close(&w->line[0]);
  sh_buf_close(&w->line[1]);
  sh_free(w);
}

static void worker_close_handles(sh_worker_t *w) {
  for (int i = 0; i < 2; i++) {
    if (w->out_fd[i] < 0) continue;
    uv_poll_stop(&w->out_poll[i]);
    uv_close((uv_handle_t *)&w->out_poll[i], worker_handle_closed);
    close(w->out_fd[i]);
    w->out_fd[i] = -1;
  }
  uv_timer_stop(&w->timer);
  uv_close((uv_handle_t *)&w->timer, worker_handle_closed);
  uv_close((uv_handle_t *)&w->proc, worker_handle_closed);
}

/* Sends the complete lines in w->line[i] to the driver the output belongs to
 * (all of it when `all`). */
static void forward_lines(sh_worker_t *w, int i, int all) {
  sh_agent_t *a = w->agent;
  sh_buf_t *b = &w->line[i];
  size_t n = sh_buf_avail(b);
  if (!n) return;
  const uint8_t *p = sh_buf_head(b);
  size_t upto = n;
  if (!all && n < LINE_MAX_BYTES) {
    while (upto > 0 && p[upto - 1] != '\n') upto--;
    if (!upto) return;
  }
  uint64_t owner = 0;
  int remote = w->last_remote;
  if (!sh_queue_empty(&w->inflight)) {
    const sh_task_t *t = sh_queue_data(sh_queue_head(&w->inflight), sh_task_t, link);
    owner = t->id;
    remote = t->remote;
  } else {
    owner = (uint64_t)w->last_client << 40;
  }
  /* The head's tasks: their output goes to the head, which passes it on. */
  /* Not while the uplink is (re)joining: only the handshake goes there. */
  sh_conn_t *c = remote ? (a->uplink && a->uplink->up == SH_UP_READY ? a->uplink : NULL)
                        : sh_agent_client(a, owner);
  if (c && remote && c->up != SH_UP_READY) c = NULL;
  if (c) {
    sh_output_append(&c->out, owner, (uint32_t)w->pid, i ? SH_STREAM_STDERR : SH_STREAM_STDOUT, p, upto);
    sh_conn_mark_dirty(c);
  } else {
    sh_info("worker %d (pid %d) %s: %.*s", w->index, (int)w->pid, i ? "stderr" : "stdout",
            (int)(upto && p[upto - 1] == '\n' ? upto - 1 : upto), p);
  }
  sh_buf_consume(b, upto);
}

static void remember_tail(sh_worker_t *w, const char *p, size_t n) {
  size_t cap = sizeof w->err_tail;
  if (n >= cap) {
    memcpy(w->err_tail, p + n - cap + 1, cap - 1);
    w->err_tail_len = cap - 1;
    return;
  }
  if (w->err_tail_len + n >= cap) {
    size_t drop = w->err_tail_len + n - (cap - 1);
    memmove(w->err_tail, w->err_tail + drop, w->err_tail_len - drop);
    w->err_tail_len -= drop;
  }
  memcpy(w->err_tail + w->err_tail_len, p, n);
  w->err_tail_len += n;
}

/* Reads what is waiting on one output pipe; 0 at EOF. */
static int read_output(sh_worker_t *w, int i) {
  char buf[65536];
  for (;;) {
    ssize_t n = read(w->out_fd[i], buf, sizeof buf);
    if (n > 0) {
      if (i == 1) remember_tail(w, buf, (size_t)n);
      if (sh_buf_append(&w->line[i], buf, (size_t)n)) return 1;
      forward_lines(w, i, 0);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 1;
    forward_lines(w, i, 1);
    return 0;
  }
}

static void output_cb(uv_poll_t *h, int status, int events) {
  sh_worker_t *w = h->data;
  int i = h == &w->out_poll[1];
  if (w->out_fd[i] < 0) return;
  if (status < 0 || !read_output(w, i)) uv_poll_stop(h);
}

static void drain_output(sh_worker_t *w) {
  for (int i = 0; i < 2; i++)
    if (w->out_fd[i] >= 0) read_output(w, i);
}

static void respawn_cb(uv_timer_t *h) { sh_pool_respawn(h->data); }

static void warm_cb(uv_timer_t *h) {
  sh_agent_t *a = h->data;
  a->pool_warm = 1;
  sh_pool_respawn(a);
}

void sh_pool_respawn(sh_agent_t *a) {
  while (!a->stopping && a->pool_size < a->opts.num_workers) {
    /* At start-up one worker goes first: interpreters starting together
     * share the CPUs (with the driver's own imports too), so the first
     * result would wait for all of them. The rest follow its HELLO, or
     * POOL_WARM_MS when it is slow to come. */
    if (!a->pool_warm && a->pool_size >= 1) {
      if (!uv_is_active((uv_handle_t *)&a->respawn_timer))
        uv_timer_start(&a->respawn_timer, warm_cb, POOL_WARM_MS, 0);
      return;
    }
    if (!sh_pool_spawn(a, NULL)) break;
  }
}

void sh_pool_hello(sh_worker_t *w) {
  sh_agent_t *a = w->agent;
  w->hello = 1;
  if (a->pool_warm || w->dedicated) return;
  a->pool_warm = 1;
  uv_timer_stop(&a->respawn_timer);
  sh_pool_respawn(a);
}

static void exit_cb(uv_process_t *p, int64_t status, int sig) {
  sh_worker_t *w = p->data;
  sh_agent_t *a = w->agent;
  w->exited = 1;
  drain_output(w);
  for (int i = 0; i < 2; i++) forward_lines(w, i, 1);
  if (w->conn) sh_conn_close(w->conn, NULL);
  sh_queue_remove(&w->link);
  if (!w->dedicated) a->pool_size--;
  if (a->stopping) {
    worker_close_handles(w);
    return;
  }
  const char *why = NULL;
  char tail[600];
  /* A worker that never said HELLO failed to start (bad interpreter, shoal
   * not importable); one that dies later was killed by what it ran. */
  int early = !w->dedicated && !w->kill_reason && !w->hello;
  if (early) {
    a->early_exits++;
    snprintf(tail, sizeof tail, "the worker died right after starting; its last output: %.*s",
             (int)w->err_tail_len, w->err_tail);
    snprintf(a->worker_error, sizeof a->worker_error, "%s", tail);
    why = tail;
  } else if (!w->dedicated && w->hello) {
    a->early_exits = 0;
  }
  if (!w->kill_reason) {
    a->n_worker_deaths++;
    sh_warn("worker %d (pid %d) died: %s %d", w->index, (int)w->pid,
            sig ? "signal" : "exit status", sig ? sig : (int)status);
  }
  sh_sched_worker_died(a, w, sig, status, why);
  sh_store_reap(a, 0, (uint32_t)w->pid); /* segments it was writing */
  int was_pool = !w->dedicated;
  worker_close_handles(w);
  if (!was_pool) return;
  if (a->early_exits >= EARLY_EXIT_LIMIT) {
    char msg[700];
    snprintf(msg, sizeof msg, "workers cannot start (%d in a row died at start-up; check "
             "--python and that shoal is importable there): %.500s", a->early_exits, a->worker_error);
    sh_error("%s", msg);
    sh_sched_fail_ready(a, msg);
    uv_timer_start(&a->respawn_timer, respawn_cb, 2000, 0);
    return;
  }
  sh_pool_respawn(a);
}

static void timeout_cb(uv_timer_t *h) {
  sh_worker_t *w = h->data;
  sh_pool_kill(w, SH_REASON_TIMEOUT);
}

int sh_pool_timeout_start(sh_worker_t *w, uint64_t ms) {
  return uv_timer_start(&w->timer, timeout_cb, ms, 0);
}

void sh_pool_timeout_stop(sh_worker_t *w) {
  if (!w->exited || uv_is_active((uv_handle_t *)&w->timer)) uv_timer_stop(&w->timer);
}

void sh_pool_kill(sh_worker_t *w, int reason) {
  if (w->exited) return;
  if (!w->kill_reason) w->kill_reason = reason;
  uv_process_kill(&w->proc, SIGKILL);
}

/* Builds the worker's environment: ours, with shoal's variables set. */
static char **worker_env(sh_agent_t *a, int index, char *store, size_t storecap) {
  static const char *const ours[] = {"SHOAL_WORKER_ID=", "SHOAL_NODE_ID=", "SHOAL_ADDRESS=",
                                     "PYTHONUNBUFFERED=", "SHOAL_STORE_DIR=",
                                     "SHOAL_INLINE_THRESHOLD=", "SHOAL_STORE_CAPACITY="};
  size_t n = 0;
  while (environ[n]) n++;
  char **env = sh_calloc(n + 8, sizeof(char *));
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    int skip = 0;
    for (size_t j = 0; j < 7; j++)
      if (!strncmp(environ[i], ours[j], strlen(ours[j]))) skip = 1;
    if (!skip) env[k++] = environ[i];
  }
  int off = 0;
  env[k++] = store + off;
  off += snprintf(store + off, storecap - (size_t)off, "SHOAL_WORKER_ID=%d", index) + 1;
  env[k++] = store + off;
  off += snprintf(store + off, storecap - (size_t)off, "SHOAL_NODE_ID=%u", a->node_id) + 1;
  env[k++] = store + off;
  off += snprintf(store + off, storecap - (size_t)off, "SHOAL_ADDRESS=unix:%s", a->sock_path) + 1;
  env[k++] = store + off;
  off += snprintf(store + off, storecap - (size_t)off, "SHOAL_STORE_DIR=%s", a->store.dir) + 1;
  env[k++] = store + off;
  off += snprintf(store + off, storecap - (size_t)off, "SHOAL_INLINE_THRESHOLD=%llu",
                  (unsigned long long)a->store.inline_threshold) + 1;
  env[k++] = store + off;
  off += snprintf(store + off, storecap - (size_t)off, "SHOAL_STORE_CAPACITY=%llu",
                  (unsigned long long)a->store.capacity) + 1;
  env[k++] = store + off;
  snprintf(store + off, storecap - (size_t)off, "PYTHONUNBUFFERED=1");
  env[k] = NULL;
  return env;
}

sh_worker_t *sh_pool_spawn(sh_agent_t *a, sh_actor_t *actor) {
  int sv[2], outp[2], errp[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
    sh_error("socketpair: %s", strerror(errno));
    return NULL;
  }
  if (pipe2(outp, O_CLOEXEC)) {
    close(sv[0]);
    close(sv[1]);
    return NULL;
  }
  if (pipe2(errp, O_CLOEXEC)) {
    close(sv[0]);
    close(sv[1]);
    close(outp[0]);
    close(outp[1]);
    return NULL;
  }
  fcntl(sv[0], F_SETFL, O_NONBLOCK);
  fcntl(outp[0], F_SETFL, O_NONBLOCK);
  fcntl(errp[0], F_SETFL, O_NONBLOCK);
  sh_worker_t *w = sh_calloc(1, sizeof *w);
  w->agent = a;
  w->index = ++a->worker_seq;
  w->actor = actor;
  w->dedicated = actor != NULL;
  w->out_fd[0] = outp[0];
  w->out_fd[1] = errp[0];
  sh_queue_init(&w->inflight);
  sh_map_init(&w->funcs_sent);
  sh_buf_init(&w->line[0]);
  sh_buf_init(&w->line[1]);
  char store[4608];
  char **env = worker_env(a, w->index, store, sizeof store);
  char *args[] = {(char *)a->opts.python, "-m", "shoal.worker", NULL};
  uv_stdio_container_t stdio[4];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = outp[1];
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = errp[1];
  stdio[3].flags = UV_INHERIT_FD;
  stdio[3].data.fd = sv[1];
  uv_process_options_t po = {0};
  po.exit_cb = exit_cb;
  po.file = a->opts.python;
  po.args = args;
  po.env = env;
  po.stdio_count = 4;
  po.stdio = stdio;
  w->proc.data = w;
  int rc = uv_spawn(a->loop, &w->proc, &po);
  sh_free(env);
  close(sv[1]);
  close(outp[1]);
  close(errp[1]);
  if (rc) {
    snprintf(a->worker_error, sizeof a->worker_error, "cannot start worker '%s -m shoal.worker': %s",
             a->opts.python, uv_strerror(rc));
    sh_error("%s", a->worker_error);
    close(sv[0]);
    close(outp[0]);
    close(errp[0]);
    /* A failed spawn still initialised the handle; w goes when it closes. */
    w->open_handles = 1;
    uv_close((uv_handle_t *)&w->proc, worker_handle_closed);
    if (!actor) {
      sh_sched_fail_ready(a, a->worker_error);
      uv_timer_start(&a->respawn_timer, respawn_cb, 2000, 0);
    }
    return NULL;
  }
  w->pid = w->proc.pid;
  w->spawned_ns = sh_now_ns();
  w->open_handles = 4;
  uv_timer_init(a->loop, &w->timer);
  w->timer.data = w;
  for (int i = 0; i < 2; i++) {
    uv_poll_init(a->loop, &w->out_poll[i], w->out_fd[i]);
    w->out_poll[i].data = w;
    uv_poll_start(&w->out_poll[i], UV_READABLE, output_cb);
  }
  char desc[48];
  snprintf(desc, sizeof desc, "worker %d (pid %d)", w->index, (int)w->pid);
  w->conn = sh_conn_create(a, sv[0], SH_ROLE_WORKER, desc);
  w->conn->worker = w;
  sh_queue_insert_tail(&a->workers, &w->link);
  if (!actor) a->pool_size++;
  a->need_schedule = 1;
  sh_debug("started %s%s", desc, actor ? " for an actor" : "");
  return w;
}

void sh_pool_stop_all(sh_agent_t *a) {
  uv_timer_stop(&a->respawn_timer);
  while (!sh_queue_empty(&a->workers)) {
    sh_worker_t *w = sh_queue_data(sh_queue_head(&a->workers), sh_worker_t, link);
    sh_queue_remove(&w->link);
    if (!w->exited) {
      w->kill_reason = SH_REASON_SHUTDOWN;
      uv_process_kill(&w->proc, SIGKILL);
    }
    if (w->conn) sh_conn_close(w->conn, NULL);
    /* Tasks still on the worker are freed with the task table. */
    sh_queue_init(&w->inflight);
    worker_close_handles(w);
  }
}
