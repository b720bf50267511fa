/* The node agent's loop: listeners, connections, frame dispatch, shutdown.
 * Sections: set-up of the socket directory and listeners; connections (read,
 * parse, dispatch, flush, close); authentication of TCP peers; the
 * before-poll batch; run and stop. */
#include "node/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fdpass.h"
#include "common/frame.h"
#include "common/log.h"

uint64_t sh_now_ns(void) { return uv_hrtime(); }

/* ---- the socket directory ---- */

/* Creates `dir` (and parents) with mode 0700, or checks an existing one is a
 * directory we own that nobody else can enter. */
static int make_private_dir(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s", dir);
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(path, 0700) && errno != EEXIST) return -errno;
    *p = '/';
  }
  if (mkdir(path, 0700) && errno != EEXIST) return -errno;
  struct stat st;
  if (stat(path, &st)) return -errno;
  if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
  if (st.st_uid != getuid()) return -EPERM;
  if ((st.st_mode & 077) && chmod(path, 0700)) return -errno;
  return 0;
}

/* 1 when something answers on the unix socket `path`. */
static int socket_alive(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  close(fd);
  return ok;
}

static int listen_unix(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  unlink(path);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 512)) {
    int rc = -errno;
    close(fd);
    return rc;
  }
  chmod(path, 0600);
  return fd;
}

/* "1.2.3.4:5555" or "[::1]:5555" for a socket address. */
static void format_addr(const struct sockaddr *sa, socklen_t len, char *out, size_t n) {
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (getnameinfo(sa, len, host, sizeof host, serv, sizeof serv,
                  NI_NUMERICHOST | NI_NUMERICSERV)) {
    snprintf(out, n, "an unknown address");
    return;
  }
  snprintf(out, n, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
}

/* Listens on `bind_addr` (a numeric IPv4 or IPv6 address: no name lookup
 * at start-up) and `port`; describes the address in `desc`. Returns the fd,
 * or -errno (-EADDRNOTAVAIL with desc empty when it is no IP address). Every
 * TCP peer must authenticate with the cluster token, loopback ones included:
 * other users of this machine can reach loopback too. */
int sh_listen_tcp(const char *bind_addr, int port, char *desc, size_t dn) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV};
  struct addrinfo *res;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  if (getaddrinfo(bind_addr, ps, &hints, &res)) return -EADDRNOTAVAIL;
  format_addr(res->ai_addr, res->ai_addrlen, desc, dn);
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int rc = fd < 0 ? -errno : 0;
  if (!rc) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) || listen(fd, 512)) rc = -errno;
  }
  freeaddrinfo(res);
  if (rc) {
    if (fd >= 0) close(fd);
    return rc;
  }
  return fd;
}

/* ---- connections ---- */

static void conn_poll_cb(uv_poll_t *h, int status, int events);
static int streaming(const sh_conn_t *c);

sh_conn_t *sh_conn_create(sh_agent_t *a, int fd, int role, const char *desc) {
  sh_conn_t *c = sh_calloc(1, sizeof *c);
  c->agent = a;
  c->fd = fd;
  c->pass_fd = -1;
  c->role = role;
  sh_buf_init(&c->in);
  sh_buf_init(&c->out);
  sh_queue_init(&c->dirty);
  sh_queue_init(&c->authq);
  sh_queue_init(&c->jobs);
  sh_queue_init(&c->tlsq);
  sh_queue_init(&c->pend);
  snprintf(c->desc, sizeof c->desc, "%s", desc);
  uv_poll_init(a->loop, &c->poll, fd);
  c->poll.data = c;
  c->events = UV_READABLE;
  uv_poll_start(&c->poll, c->events, conn_poll_cb);
  sh_queue_insert_tail(&a->conns, &c->link);
  return c;
}

void sh_conn_poll(sh_conn_t *c, int events) {
  if (c->closing || events == c->events) return;
  c->events = events;
  uv_poll_start(&c->poll, events, conn_poll_cb);
}

/* ---- outgoing connections: connect, then the token handshake as client ---- */

int sh_conn_connected(sh_conn_t *c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err) {
    sh_conn_close(c, strerror(err));
    return -1;
  }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->up = SH_UP_CHALLENGE;
  sh_conn_poll(c, UV_READABLE);
  return 0;
}

int sh_conn_answer_challenge(sh_conn_t *c, const sh_frame_t *f, uint8_t *theirs, uint8_t *ours,
                             const char *unexpected) {
  uint8_t mac[SH_AUTH_MAC];
  if (f->hdr.type != SH_MSG_AUTH_CHALLENGE ||
      sh_auth_challenge_decode(f->body, f->hdr.len, theirs)) {
    sh_conn_fail(c, SH_EBODY, unexpected);
    return -1;
  }
  if (sh_auth_random(ours, SH_AUTH_NONCE) ||
      sh_auth_proof(&c->agent->opts.token, SH_AUTH_CLIENT, theirs, ours, mac) ||
      sh_auth_response_append(&c->out, ours, mac)) {
    sh_conn_close(c, "could not answer the peer's token challenge");
    return -1;
  }
  c->up = SH_UP_AUTH_OK;
  sh_conn_mark_dirty(c);
  return 0;
}

int sh_conn_check_proof(sh_conn_t *c, const sh_frame_t *f, const uint8_t *theirs,
                        const uint8_t *ours, const char *who) {
  uint8_t mac[SH_AUTH_MAC];
  if (f->hdr.type != SH_MSG_AUTH_OK || sh_auth_ok_decode(f->body, f->hdr.len, mac) ||
      !sh_auth_verify(&c->agent->opts.token, SH_AUTH_SERVER, theirs, ours, mac)) {
    char why[160];
    snprintf(why, sizeof why, "%s did not prove that it holds the cluster token", who);
    sh_conn_fail(c, SH_EAUTH, why);
    return -1;
  }
  return 0;
}

void sh_conn_mark_dirty(sh_conn_t *c) {
  if (!c->closing && !sh_queue_linked(&c->dirty) && (sh_buf_avail(&c->out) || streaming(c)))
    sh_queue_insert_tail(&c->agent->dirty, &c->dirty);
}

sh_conn_t *sh_agent_client(sh_agent_t *a, uint64_t id) {
  uint32_t cid = (uint32_t)(id >> 40);
  return cid ? sh_map_get(&a->clients, cid) : NULL;
}

/* ---- streaming segments (sh_conn_send_segment) ---- */

enum { JOB_FRAMES = 1, JOB_SEGMENT };
#define PUMP_AHEAD (8u << 20) /* bytes of jobs read ahead of the socket */

typedef struct sh_job_s {
  sh_queue_t link;
  int kind;
  sh_buf_t frames;         /* JOB_FRAMES: frames queued before a segment */
  uint64_t id, size, off;  /* JOB_SEGMENT; off: where the next chunk starts */
  int fd;                  /* the segment, open */
  off_t foff;              /* the current chunk's payload: next byte to send */
  size_t left;             /* ... and how many are left */
} sh_job_t;

static void job_free(sh_job_t *j) {
  sh_queue_remove(&j->link);
  if (j->kind == JOB_SEGMENT && j->fd >= 0) close(j->fd);
  sh_buf_close(&j->frames);
  sh_free(j);
}

void sh_conn_send_segment(sh_conn_t *c, uint64_t id, uint64_t size, int fd) {
  if (sh_buf_avail(&c->out)) { /* what came before goes before */
    sh_job_t *f = sh_calloc(1, sizeof *f);
    f->kind = JOB_FRAMES;
    f->frames = c->out;
    sh_buf_init(&c->out);
    sh_queue_insert_tail(&c->jobs, &f->link);
  }
  sh_job_t *j = sh_calloc(1, sizeof *j);
  j->kind = JOB_SEGMENT;
  j->id = id;
  j->size = size;
  j->fd = fd;
  sh_queue_insert_tail(&c->jobs, &j->link);
  sh_conn_mark_dirty(c);
}

static int streaming(const sh_conn_t *c) {
  return !sh_queue_empty(&c->jobs) || sh_buf_avail(&c->wbuf);
}

/* Moves the next queued job into wbuf: the frames queued before a segment,
 * or the header of the segment's next CHUNK, whose payload conn_flush then
 * sends straight from the file (sendfile: the bytes go from the object
 * store's pages to the socket without passing through this process). */
static void pump(sh_conn_t *c) {
  sh_agent_t *a = c->agent;
  while (!sh_queue_empty(&c->jobs)) {
    sh_job_t *j = sh_queue_data(sh_queue_head(&c->jobs), sh_job_t, link);
    if (j->kind == JOB_FRAMES) {
      if (sh_buf_append(&c->wbuf, sh_buf_head(&j->frames), sh_buf_avail(&j->frames))) {
        sh_conn_close(c, "out of memory streaming to it");
        return;
      }
      job_free(j);
      continue;
    }
    if (j->left) return; /* the current chunk's payload goes first */
    if (j->off >= j->size) {
      job_free(j);
      continue;
    }
    size_t n = sh_store_chunk_size(a);
    if (j->size - j->off < n) n = (size_t)(j->size - j->off);
    /* TLS encrypts in this process: the payload goes through the buffer. */
    size_t body = c->tls ? n : 0;
    if (sh_buf_reserve(&c->wbuf, SH_FRAME_HDR + SH_CHUNK_HDR + body)) {
      sh_conn_close(c, "out of memory streaming to it");
      return;
    }
    uint8_t *p = c->wbuf.data + c->wbuf.len;
    int rc = 0;
    for (size_t done = 0; done < body && !rc;) {
      ssize_t k = pread(j->fd, p + SH_FRAME_HDR + SH_CHUNK_HDR + done, body - done,
                        (off_t)(j->off + done));
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) rc = k < 0 ? -errno : -EIO;
      else done += (size_t)k;
    }
    if (rc) {
      sh_warn("cannot send object %#llx to %s: %s", (unsigned long long)j->id, c->desc,
              sh_strerror(rc));
      job_free(j);
      continue;
    }
    sh_frame_hdr_encode(p, SH_MSG_CHUNK, 0, j->id, (uint32_t)(SH_CHUNK_HDR + n));
    sh_put_u64(p + SH_FRAME_HDR, j->size);
    sh_put_u64(p + SH_FRAME_HDR + 8, j->off);
    c->wbuf.len += SH_FRAME_HDR + SH_CHUNK_HDR + body;
    j->foff = (off_t)j->off;
    j->left = n - body;
    j->off += n;
    return;
  }
}

/* Sends what is left of the current chunk's payload from its file. 1 when
 * it is all sent, 0 when the socket is full, -1 when c was closed. */
static int send_payload(sh_conn_t *c, sh_job_t *j) {
  while (j->left) {
    ssize_t k = sendfile(c->fd, j->fd, &j->foff, j->left);
    if (k > 0) {
      j->left -= (size_t)k;
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    /* The frame header promised these bytes: the stream cannot go on. */
    sh_conn_close(c, k == 0 ? "an object's segment is shorter than announced"
                            : strerror(errno));
    return -1;
  }
  return 1;
}

static void conn_closed_cb(uv_handle_t *h) {
  sh_conn_t *c = h->data;
  sh_tls_destroy(c->tls);
  close(c->fd);
  if (c->pass_fd >= 0) close(c->pass_fd);
  while (!sh_queue_empty(&c->jobs)) job_free(sh_queue_data(sh_queue_head(&c->jobs), sh_job_t, link));
  sh_buf_close(&c->in);
  sh_buf_close(&c->out);
  sh_buf_close(&c->wbuf);
  sh_free(c);
}

void sh_conn_close(sh_conn_t *c, const char *why) {
  if (c->closing) return;
  sh_agent_t *a = c->agent;
  c->closing = 1;
  sh_store_xfers_close(a, c);
  if (c->auth) sh_info("connection from %s closed before it authenticated%s%s", c->peer,
                       why ? ": " : "", why ? why : "");
  else if (why) sh_warn("closing connection to %s: %s", c->desc, why);
  else sh_debug("connection to %s closed", c->desc);
  sh_queue_remove(&c->link);
  sh_queue_remove(&c->dirty);
  sh_queue_remove(&c->authq);
  sh_queue_remove(&c->tlsq);
  sh_queue_remove(&c->pend);
  uv_poll_stop(&c->poll);
  uv_close((uv_handle_t *)&c->poll, conn_closed_cb);
  if (c->role == SH_ROLE_WORKER && c->worker) {
    c->worker->conn = NULL;
    /* The process exit callback does the bookkeeping; make sure it comes. */
    if (!c->worker->exited && !a->stopping) sh_pool_kill(c->worker, SH_REASON_NONE);
  }
  if (c->role == SH_ROLE_PULL || c->role == SH_ROLE_NODE || c->role == SH_ROLE_UPLINK)
    sh_pull_conn_closed(a, c, why);
  if (c->role == SH_ROLE_UPLINK) sh_uplink_closed(a, c, why);
  if (c->role == SH_ROLE_NODE) sh_cluster_node_closed(a, c, why);
  if (c->role == SH_ROLE_DRIVER && c->client_id) {
    sh_map_del(&a->clients, c->client_id);
    sh_lane_client_gone(a, c);
    sh_sched_client_gone(a, c->client_id);
    sh_store_reap(a, c->client_id, c->pid);
    if (a->opts.embedded && (c->flags & SH_HELLO_OWNER))
      sh_agent_stop(a, "the driver that owns this embedded cluster disconnected");
  }
}

/* Writes what c->out holds now, best effort, without waiting (through TLS
 * when the connection has it; nothing before its handshake is done). */
static void write_now(sh_conn_t *c) {
  if (!sh_tls_ready(c->tls)) return;
  while (sh_buf_avail(&c->out)) {
    ssize_t n = sh_tls_send(c->tls, c->fd, sh_buf_head(&c->out), sh_buf_avail(&c->out));
    if (n <= 0) return;
    sh_buf_consume(&c->out, (size_t)n);
  }
}

/* Sends an ERROR frame (best effort, now) and closes. A TCP peer that has
 * not authenticated is logged as refused, with its address. */
static void conn_fail(sh_conn_t *c, int code, const char *why) {
  char text[512];
  snprintf(text, sizeof text, "shoal daemon closed the connection: %s", why);
  /* Output still queued (the challenge) goes first, so the peer can parse. */
  write_now(c);
  if (!sh_buf_avail(&c->out) && !sh_error_append(&c->out, code, text)) write_now(c);
  sh_tls_shutdown(c->tls);
  /* Closing with unread input makes the kernel reset the connection, and a
   * reset can destroy the ERROR frame before the peer reads it: read what
   * has arrived (a bounded amount) first. */
  shutdown(c->fd, SHUT_WR);
  char sink[4096];
  for (int i = 0; i < 64; i++)
    if (read(c->fd, sink, sizeof sink) <= 0) break;
  if (c->auth) {
    sh_warn("connection from %s refused: %s", c->peer, why);
    c->auth = 0;
    sh_conn_close(c, NULL);
    return;
  }
  sh_conn_close(c, why);
}

static void handle_hello(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  sh_hello_t h;
  if (f->hdr.type != SH_MSG_HELLO || sh_hello_decode(f->body, f->hdr.len, &h)) {
    char why[128];
    snprintf(why, sizeof why, "expected HELLO as the first frame, got %s",
             sh_msg_name(f->hdr.type));
    conn_fail(c, SH_EBODY, why);
    return;
  }
  if (h.role == SH_ROLE_WORKER) {
    conn_fail(c, SH_EBODY, "workers are spawned by the agent and cannot connect");
    return;
  }
  if (h.role == SH_ROLE_PEER) {
    /* Another node pulling objects: it sends PULLs and gets no HELLO_OK. */
    c->role = SH_ROLE_PEER;
    c->pid = h.pid;
    snprintf(c->desc, sizeof c->desc, "node pulling objects (pid %u)%s%s", h.pid,
             c->peer[0] ? " from " : "", c->peer);
    return;
  }
  if (h.role == SH_ROLE_NODE) {
    if (a->opts.head_address) {
      conn_fail(c, SH_EBODY, "this daemon is a node agent, not a head: nodes join the head");
      return;
    }
    /* It says who it is in NODE_REGISTER, answered with HELLO_OK. */
    c->role = SH_ROLE_NODE;
    c->pid = h.pid;
    snprintf(c->desc, sizeof c->desc, "node agent pid %u%s%s", h.pid, c->peer[0] ? " at " : "",
             c->peer);
    return;
  }
  c->role = (int)h.role;
  c->pid = h.pid;
  c->flags = h.flags;
  /* Sockets can only be passed over the unix socket. */
  if (c->peer[0] || c->tls || h.role != SH_ROLE_DRIVER) c->flags &= ~SH_HELLO_LANES;
  sh_hello_ok_t ok = {0};
  if (h.role == SH_ROLE_DRIVER) {
    c->client_id = sh_recover_client_id(a, h.flags & SH_HELLO_RESUME ? h.client_id : 0);
    if ((h.flags & SH_HELLO_RESUME) && c->client_id != h.client_id)
      sh_info("driver pid %u asked for its client id %u back, which is taken: it gets %u",
              h.pid, h.client_id, c->client_id);
    sh_map_put(&a->clients, c->client_id, c);
    if (h.flags & SH_HELLO_OWNER) {
      a->owner_seen = 1;
      /* From now on the owner connection says when the driver is gone. The
       * parent-death signal must go: Linux sends it when the *thread* that
       * started us exits, and a driver may call init() from a short thread. */
      if (a->opts.embedded) prctl(PR_SET_PDEATHSIG, 0);
    }
  }
  snprintf(c->desc, sizeof c->desc, "%s pid %u%s%s",
           h.role == SH_ROLE_DRIVER ? "driver" : "cli", h.pid, c->peer[0] ? " at " : "", c->peer);
  ok.client_id = c->client_id;
  ok.node_id = a->node_id;
  ok.num_workers = (uint32_t)a->opts.num_workers;
  ok.cpu_milli = a->opts.resources.cpu_milli;
  ok.gpu_milli = a->opts.resources.gpu_milli;
  ok.memory = a->opts.resources.memory;
  ok.inline_threshold = a->store.inline_threshold;
  ok.store_capacity = a->store.capacity;
  snprintf(ok.store_dir, sizeof ok.store_dir, "%s", a->store.dir);
  sh_hello_ok_append(&c->out, &ok);
  sh_conn_mark_dirty(c);
  sh_debug("%s connected (client %u)", c->desc, c->client_id);
}

static void handle_driver(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  const uint8_t *body = f->body;
  uint32_t len = f->hdr.len;
  uint64_t id = f->hdr.id;
  char why[160];
  if (c->role == SH_ROLE_DRIVER && (f->hdr.type == SH_MSG_SUBMIT || f->hdr.type == SH_MSG_FUNC ||
                                    f->hdr.type == SH_MSG_PUT) &&
      (uint32_t)(id >> 40) != c->client_id) {
    snprintf(why, sizeof why, "%s id %#llx does not belong to this client",
             sh_msg_name(f->hdr.type), (unsigned long long)id);
    conn_fail(c, SH_EBODY, why);
    return;
  }
  switch (f->hdr.type) {
    case SH_MSG_SUBMIT: {
      sh_submit_t s;
      if (sh_submit_decode(body, len, &s)) {
        conn_fail(c, SH_EBODY, "malformed SUBMIT body");
        return;
      }
      a->cur_resent = c->role == SH_ROLE_DRIVER && (f->hdr.flags & SH_SUBMIT_RESENT);
      a->cur_want_lane = c->role == SH_ROLE_DRIVER && (f->hdr.flags & SH_SUBMIT_WANT_LANE) &&
                         (c->flags & SH_HELLO_LANES);
      sh_sched_submit(a, c, id, &s);
      a->cur_resent = a->cur_want_lane = 0;
      return;
    }
    case SH_MSG_FUNC: sh_sched_func(a, c, id, body, len); return;
    case SH_MSG_PUT:
      if ((f->hdr.flags & SH_PUT_SEGMENT) && c->role != SH_ROLE_UPLINK) {
        conn_fail(c, SH_EBODY, "only the head sends segments (PUT flag SEGMENT)");
        return;
      }
      if (f->hdr.flags & SH_PUT_SEGMENT) sh_sched_put_segment(a, c, id, body, len);
      else if (f->hdr.flags & SH_PUT_STORED) sh_sched_put_stored(a, c, id, body, len);
      else sh_sched_put(a, c, id, body, len);
      return;
    case SH_MSG_MAP: sh_sched_map(a, c, id); return;
    case SH_MSG_RELEASE:
      if (len % 8) {
        conn_fail(c, SH_EBODY, "RELEASE body is not a list of u64 ids");
        return;
      }
      for (uint32_t i = 0; i < len; i += 8) {
        if (i + 64 < len) sh_map_prefetch(&a->objects, sh_get_u64(body + i + 64));
        if (f->hdr.flags & SH_RELEASE_UNMAP) sh_sched_unmap(a, sh_get_u64(body + i));
        else sh_sched_release(a, sh_get_u64(body + i));
      }
      return;
    case SH_MSG_LANE:
      if (c->role == SH_ROLE_DRIVER) {
        sh_lane_driver_frame(c, f);
        return;
      }
      break;
    case SH_MSG_CANCEL: {
      int outcome = sh_sched_cancel(a, id, f->hdr.flags);
      if (outcome == SH_CANCEL_NONE && (f->hdr.flags & SH_CANCEL_LANE) && c->lane)
        outcome = sh_lane_cancel(c, id, f->hdr.flags);
      uint8_t p[4];
      sh_put_u32(p, (uint32_t)outcome);
      sh_frame_append(&c->out, SH_MSG_CANCEL_REPLY, 0, id, p, 4);
      sh_conn_mark_dirty(c);
      return;
    }
    case SH_MSG_KILL_ACTOR:
      if (c->role == SH_ROLE_UPLINK || (uint32_t)(id >> 40) == c->client_id)
        sh_sched_kill_actor(a, id, f->hdr.flags);
      return;
    case SH_MSG_DRAIN: sh_cluster_drain(a, c, id); return;
    case SH_MSG_STATUS: {
      long at = sh_frame_begin(&c->out, SH_MSG_STATUS_REPLY, 0, id);
      if (at < 0 || sh_status_encode(a, &c->out, f->hdr.flags)) {
        if (at >= 0) sh_frame_abort(&c->out, at);
        conn_fail(c, -ENOMEM, "out of memory building the status reply");
        return;
      }
      sh_frame_finish(&c->out, at);
      sh_conn_mark_dirty(c);
      return;
    }
    case SH_MSG_STOP:
      sh_info("stop requested by %s", c->desc);
      sh_agent_stop(a, "stop requested");
      return;
    default:
      break;
  }
  snprintf(why, sizeof why, "unexpected %s frame from a %s", sh_msg_name(f->hdr.type),
           c->role == SH_ROLE_DRIVER ? "driver" : "command-line client");
  conn_fail(c, SH_ETYPE, why);
}

static void handle_worker(sh_conn_t *c, const sh_frame_t *f) {
  if (f->hdr.type == SH_MSG_HELLO && !c->worker->hello) {
    sh_pool_hello(c->worker);
    return;
  }
  if (f->hdr.type == SH_MSG_LANE && (f->hdr.flags & SH_LANE_END)) {
    /* Not leased: the end of a grant that never took (lane.c), stale. */
    if (c->worker->leased && f->hdr.id == c->worker->lease_id)
      sh_lane_ended(c->agent, c->worker, f->hdr.len >= 8 ? sh_get_u64(f->body) : 0);
    return;
  }
  if (f->hdr.type != SH_MSG_RESULT) {
    char why[96];
    snprintf(why, sizeof why, "unexpected %s frame from a worker", sh_msg_name(f->hdr.type));
    conn_fail(c, SH_ETYPE, why);
    return;
  }
  sh_result_t r;
  if (sh_result_decode(f->body, f->hdr.len, &r)) {
    conn_fail(c, SH_EBODY, "malformed RESULT body");
    return;
  }
  sh_sched_result(c->agent, c->worker, f->hdr.id, &r);
}

/* The peer's answer to our challenge: a proof made with the token over both
 * nonces. Answers with our own proof (the peer checks it before it sends
 * anything that matters), or refuses the peer. */
static void handle_auth(sh_conn_t *c, const sh_frame_t *f) {
  const sh_auth_token_t *tok = &c->agent->opts.token;
  uint8_t cnonce[SH_AUTH_NONCE], mac[SH_AUTH_MAC];
  char why[192];
  if (f->hdr.type != SH_MSG_AUTH_RESPONSE) {
    if (f->hdr.type == SH_MSG_HELLO)
      snprintf(why, sizeof why, "no cluster token (it sent HELLO without answering the "
               "token challenge: a client that has no token, or an older shoal)");
    else
      snprintf(why, sizeof why, "it sent %s before answering the token challenge",
               sh_msg_name(f->hdr.type));
    conn_fail(c, SH_EAUTH, why);
    return;
  }
  if (sh_auth_response_decode(f->body, f->hdr.len, cnonce, mac)) {
    conn_fail(c, SH_EBODY, "malformed AUTH_RESPONSE body");
    return;
  }
  if (!sh_auth_verify(tok, SH_AUTH_CLIENT, c->nonce, cnonce, mac)) {
    conn_fail(c, SH_EAUTH, "wrong cluster token");
    return;
  }
  if (sh_auth_proof(tok, SH_AUTH_SERVER, c->nonce, cnonce, mac) || sh_auth_ok_append(&c->out, mac)) {
    conn_fail(c, -ENOMEM, "no memory for AUTH_OK");
    return;
  }
  c->auth = 0;
  sh_queue_remove(&c->authq);
  memset(c->nonce, 0, sizeof c->nonce);
  sh_conn_mark_dirty(c);
  sh_debug("connection from %s authenticated", c->peer);
}

/* Frames from the head on a node's uplink once it is registered: work, and
 * what the head may say about it. */
static void handle_uplink(sh_conn_t *c, const sh_frame_t *f) {
  c->agent->up_last_ms = uv_now(c->agent->loop);
  switch (f->hdr.type) {
    case SH_MSG_FUNC: case SH_MSG_PUT: case SH_MSG_SUBMIT: case SH_MSG_CANCEL:
    case SH_MSG_KILL_ACTOR: case SH_MSG_RELEASE:
      if (c->up == SH_UP_READY) {
        handle_driver(c, f);
        return;
      }
      break;
    case SH_MSG_PULL:
      if (c->up == SH_UP_READY && f->hdr.len == 0) {
        sh_pull_serve(c->agent, c, f->hdr.id);
        return;
      }
      break;
    case SH_MSG_LOCATE:
      if (c->up == SH_UP_READY) {
        sh_locate_t l;
        if (sh_locate_decode(f->body, f->hdr.len, &l)) {
          conn_fail(c, SH_EBODY, "malformed LOCATE body from the head");
          return;
        }
        sh_pull_locate(c->agent, f->hdr.id, &l);
        return;
      }
      break;
    case SH_MSG_CHUNK:
      if (c->up == SH_UP_READY) {
        char why[600];
        if (sh_store_chunk(c->agent, c, f->hdr.id, f->body, f->hdr.len, why, sizeof why))
          sh_warn("from the head: %s", why);
        return;
      }
      break;
    default: break;
  }
  sh_uplink_frame(c, f);
}

/* For cluster.c: the same refusal as for any other violation. */
void sh_conn_fail(sh_conn_t *c, int code, const char *why) { conn_fail(c, code, why); }

static void dispatch(sh_conn_t *c, const sh_frame_t *f) {
  unsigned type = f->hdr.type;
  if (c->auth) handle_auth(c, f);
  else if (c->role == SH_ROLE_UPLINK) handle_uplink(c, f);
  else if (c->role == SH_ROLE_PULL) sh_pull_peer_frame(c, f);
  else if (c->role == SH_ROLE_PEER) sh_pull_serve_frame(c, f);
  else if (c->role == 0) handle_hello(c, f);
  else if (c->role == SH_ROLE_WORKER) handle_worker(c, f);
  else if (c->role == SH_ROLE_NODE) sh_cluster_node_frame(c, f);
  else if (c->role == SH_ROLE_CLI && type != SH_MSG_STATUS && type != SH_MSG_STOP &&
           type != SH_MSG_DRAIN)
    conn_fail(c, SH_ETYPE, "command-line clients may only ask for STATUS, STOP or DRAIN");
  else handle_driver(c, f);
}

/* Parses and handles every whole frame in c->in. */
/* ---- chunk payloads straight into their files ---- */

/* A CHUNK from an authenticated head or node skips the input buffer: once
 * its header is in, the payload goes from the socket into the segment file
 * (splice: one copy, into the file's pages) instead of into c->in and then
 * the file. */
static int chunk_direct(const sh_conn_t *c) {
  if (c->tls) return 0; /* the socket carries TLS records, not the bytes */
  return (c->role == SH_ROLE_NODE && c->node) ||
         ((c->role == SH_ROLE_UPLINK || c->role == SH_ROLE_PULL) && c->up == SH_UP_READY);
}

/* The peer is alive (what its frames would say). */
static void chunk_touch(sh_conn_t *c) {
  c->last_rx_ms = uv_now(c->agent->loop);
  if (c->role == SH_ROLE_NODE && c->node) c->node->last_seen_ms = c->last_rx_ms;
  else if (c->role == SH_ROLE_UPLINK) c->agent->up_last_ms = c->last_rx_ms;
}

/* The frame at the front of c->in is incomplete: when it is a CHUNK whose
 * headers are in, take what is there of its payload and switch c to
 * reading the rest straight into the file. 1 when it did. */
static int chunk_start(sh_conn_t *c, size_t max) {
  sh_agent_t *a = c->agent;
  const uint8_t *p = sh_buf_head(&c->in);
  sh_frame_hdr_t h;
  if (sh_buf_avail(&c->in) < SH_FRAME_HDR + SH_CHUNK_HDR || sh_frame_hdr_decode(p, max, &h) ||
      h.type != SH_MSG_CHUNK || h.len < SH_CHUNK_HDR)
    return 0;
  size_t k = h.len - SH_CHUNK_HDR;
  size_t have = sh_buf_avail(&c->in) - SH_FRAME_HDR - SH_CHUNK_HDR; /* < k: incomplete */
  char why[600] = "";
  int drop = sh_store_chunk_begin(a, c, h.id, sh_get_u64(p + SH_FRAME_HDR),
                                  sh_get_u64(p + SH_FRAME_HDR + 8), k, why, sizeof why) != 0;
  if (!drop && have &&
      sh_store_chunk_data(a, c, h.id, p + SH_FRAME_HDR + SH_CHUNK_HDR, have, why, sizeof why))
    drop = 1;
  if (drop) sh_warn("from %s: %s", c->desc, why);
  c->chunk_id = h.id;
  c->chunk_left = k - have;
  c->chunk_drop = drop;
  sh_buf_consume(&c->in, SH_FRAME_HDR + SH_CHUNK_HDR + have);
  chunk_touch(c);
  return 1;
}

/* Reads the rest of a chunk's payload into its file. 1 when it is all in,
 * 0 when the socket has nothing more now, -1 when c was closed. */
static int chunk_read(sh_conn_t *c) {
  sh_agent_t *a = c->agent;
  while (c->chunk_left) {
    char why[600] = "";
    ssize_t k;
    if (!c->chunk_drop) {
      k = sh_store_chunk_splice(a, c, c->chunk_id, c->chunk_left, why, sizeof why);
      if (k == -2) {
        sh_warn("from %s: %s", c->desc, why);
        c->chunk_drop = 1;
        continue;
      }
    } else {
      char sink[65536];
      k = read(c->fd, sink, c->chunk_left < sizeof sink ? c->chunk_left : sizeof sink);
      if (k < 0) k = errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -1 : -3;
    }
    if (k > 0) {
      c->chunk_left -= (size_t)k;
      if (why[0]) {
        sh_warn("from %s: %s", c->desc, why);
        c->chunk_drop = 1;
      }
      continue;
    }
    if (k == -1) return 0;
    sh_conn_close(c, k == 0 ? NULL : strerror(errno));
    return -1;
  }
  chunk_touch(c);
  return 1;
}

/* Frames whose map slots are loaded ahead of their turn (conn_parse). */
#define PREFETCH_FRAMES 8

/* Starts loading the task and object map slots the frame at p will look up
 * (a task's SUBMIT and RESULT each look its id up in both). */
static void prefetch_frame(const sh_agent_t *a, const uint8_t *p) {
  unsigned type = p[5];
  if (type != SH_MSG_SUBMIT && type != SH_MSG_RESULT) return;
  uint64_t id = sh_get_u64(p + 8);
  sh_map_prefetch(&a->tasks, id);
  sh_map_prefetch(&a->objects, id);
}

static void conn_parse(sh_conn_t *c) {
  sh_agent_t *a = c->agent;
  size_t ahead = 0; /* bytes from the head whose frames were prefetched */
  int nahead = 0;
  while (!c->closing && sh_buf_avail(&c->in) > 0) {
    /* Hints only, over whole frames already read (bounds checked, headers
     * not yet validated). */
    size_t avail = sh_buf_avail(&c->in);
    while (nahead < PREFETCH_FRAMES && ahead + SH_FRAME_HDR <= avail) {
      const uint8_t *p = sh_buf_head(&c->in) + ahead;
      size_t whole = SH_FRAME_HDR + (size_t)sh_get_u32(p + 16);
      if (whole > avail - ahead) break;
      prefetch_frame(a, p);
      ahead += whole;
      nahead++;
    }
    sh_frame_t f;
    size_t used;
    /* Until a TCP peer authenticates, only the small handshake frames fit:
     * it cannot make us reserve room for a big one. */
    size_t max = c->auth ? SH_AUTH_MAX_BODY : a->opts.max_frame;
    /* Nor can a head that has not proved itself to this node. */
    if ((c->role == SH_ROLE_UPLINK || c->role == SH_ROLE_PULL) && c->up < SH_UP_REGISTERED)
      max = 65536;
    int rc = sh_frame_parse(sh_buf_head(&c->in), sh_buf_avail(&c->in), max, &f, &used);
    if (rc < 0) {
      char why[160];
      snprintf(why, sizeof why, "bad frame: %s", sh_strerror(rc));
      if (c->auth && !c->tls && sh_tls_looks_like_tls(sh_buf_head(&c->in), sh_buf_avail(&c->in)))
        snprintf(why, sizeof why, "bad frame: it speaks TLS, and this %s without "
                 "--tls-cert and --tls-key", c->node_port ? "node joined its cluster"
                 : "daemon was started");
      conn_fail(c, rc, why);
      return;
    }
    if (rc == 0) {
      if (chunk_direct(c) && chunk_start(c, max)) continue;
      /* Make room for the whole frame now that its header is validated. */
      if (used > sh_buf_avail(&c->in) && sh_buf_reserve(&c->in, used - sh_buf_avail(&c->in))) {
        conn_fail(c, -ENOMEM, "no memory for an incoming frame");
      }
      return;
    }
    dispatch(c, &f);
    if (!c->closing) sh_buf_consume(&c->in, used);
    if (nahead > 0) {
      ahead = ahead > used ? ahead - used : 0;
      nahead--;
    }
  }
}

/* uv_poll events for SH_TLS_READ / SH_TLS_WRITE bits. */
static int uv_events(int tls_events) {
  return (tls_events & SH_TLS_READ ? UV_READABLE : 0) |
         (tls_events & SH_TLS_WRITE ? UV_WRITABLE : 0);
}

/* Polls for what c waits for now: its TLS handshake's next event; else
 * reading (readable, or writable for a TLS read that must send first) and,
 * with output queued, writing (writable, or readable for a TLS write that
 * must receive first). Level-triggered: an event nobody waits for would
 * fire again at once, so none is polled that the connection cannot use. */
static void conn_rearm(sh_conn_t *c) {
  if (c->closing || c->up == SH_UP_CONNECTING) return;
  int want = sh_tls_rd_want(c->tls);
  if (sh_tls_ready(c->tls) && (sh_buf_avail(&c->out) || streaming(c)))
    want |= sh_tls_wr_want(c->tls);
  sh_conn_poll(c, uv_events(want));
}

/* Closes c after a failed read or write (rc < 0, not -EAGAIN); a TLS peer
 * that has not authenticated is logged as refused, with the TLS reason. */
static void conn_io_failed(sh_conn_t *c, int rc) {
  char why[600];
  if (rc == SH_ETLS) snprintf(why, sizeof why, "TLS: %s", sh_tls_error(c->tls));
  else snprintf(why, sizeof why, "%s", sh_strerror(rc));
  if (c->auth && rc == SH_ETLS) {
    sh_warn("connection from %s refused: %s", c->peer, why);
    c->auth = 0;
    sh_conn_close(c, NULL);
    return;
  }
  sh_conn_close(c, why);
}

static void tls_idle_cb(uv_idle_t *h);

/* Reads what the socket holds and handles every whole frame. A worker's
 * output needs no draining first: the worker flushes stdout and stderr before
 * it writes a result, so both pipes are ready in the same poll as the socket
 * and their OUTPUT frames go out in the same write as the RESULT. */
static void conn_read(sh_conn_t *c) {
  sh_queue_remove(&c->pend);
  for (int rounds = 0; rounds < 64 && !c->closing; rounds++) {
    if (c->chunk_left && chunk_read(c) <= 0) return;
    if (sh_buf_reserve(&c->in, 65536)) {
      conn_fail(c, -ENOMEM, "no memory for input");
      return;
    }
    size_t room = c->in.cap - c->in.len;
    ssize_t n = sh_tls_recv(c->tls, c->fd, c->in.data + c->in.len, room);
    if (n > 0) {
      c->in.len += (size_t)n;
      sh_queue_remove(&c->tlsq);
      conn_parse(c);
      /* A short read emptied a plain socket: the poll says when there is
       * more, which saves a read that would return EAGAIN. A TLS read
       * returns one record at a time, so only EAGAIN says it is empty. */
      if ((size_t)n < room && !c->tls) return;
      continue;
    }
    if (n == 0) {
      sh_conn_close(c, NULL);
      return;
    }
    if (n != -EAGAIN) conn_io_failed(c, (int)n);
    return;
  }
  /* Out of rounds with decrypted bytes left: the socket may never become
   * readable for them, so the idle handle comes back for them. */
  if (!c->closing && sh_tls_pending(c->tls)) {
    sh_agent_t *a = c->agent;
    sh_queue_insert_tail(&a->tls_pend, &c->pend);
    if (!uv_is_active((uv_handle_t *)&a->tls_idle)) uv_idle_start(&a->tls_idle, tls_idle_cb);
  }
}

static void tls_idle_cb(uv_idle_t *h) {
  sh_agent_t *a = h->data;
  sh_queue_t q;
  sh_queue_init(&q);
  sh_queue_prepend_all(&q, &a->tls_pend); /* conn_read may queue them again */
  while (!sh_queue_empty(&q)) {
    sh_conn_t *c = sh_queue_data(sh_queue_head(&q), sh_conn_t, pend);
    sh_queue_remove(&c->pend);
    conn_read(c);
    if (!c->closing) conn_rearm(c);
  }
  if (sh_queue_empty(&a->tls_pend)) uv_idle_stop(&a->tls_idle);
}

/* Writes what c->out holds; keeps polling for writability when the socket is
 * full. A TLS connection writes nothing before its handshake is done. */
static void conn_flush(sh_conn_t *c) {
  while (sh_tls_ready(c->tls)) {
    /* Streamed segments (and the frames queued before them) go first. */
    int s = streaming(c);
    if (s && !sh_buf_avail(&c->wbuf)) {
      sh_job_t *j = sh_queue_empty(&c->jobs) ? NULL
                                             : sh_queue_data(sh_queue_head(&c->jobs), sh_job_t, link);
      if (j && j->kind == JOB_SEGMENT && j->left) {
        int rc = send_payload(c, j);
        if (rc < 0) return;
        if (rc == 0) break;
        continue;
      }
      pump(c);
      if (c->closing) return;
    }
    sh_buf_t *b = s ? &c->wbuf : &c->out;
    if (!sh_buf_avail(b)) {
      if (s && !streaming(c)) continue; /* done streaming: now c->out */
      break;
    }
    ssize_t n = c->pass_fd >= 0 && !c->tls
                    ? sh_send_with_fd(c->fd, sh_buf_head(b), sh_buf_avail(b), c->pass_fd)
                    : sh_tls_send(c->tls, c->fd, sh_buf_head(b), sh_buf_avail(b));
    if (n > 0 && c->pass_fd >= 0 && !c->tls) {
      close(c->pass_fd); /* it went with these bytes (a LANE frame is among them) */
      c->pass_fd = -1;
    }
    if (n > 0) {
      sh_buf_consume(b, (size_t)n);
      continue;
    }
    if (n == -EAGAIN) break;
    conn_io_failed(c, n < 0 ? (int)n : -EIO);
    return;
  }
  if (!streaming(c) && c->wbuf.cap > (8u << 20)) sh_buf_close(&c->wbuf);
  conn_rearm(c);
  /* Give memory back after a burst. */
  if (!sh_buf_avail(&c->out) && c->out.cap > (8u << 20)) sh_buf_close(&c->out);
}

/* Advances a TLS handshake; once done, reads what came with it and sends
 * what was queued meanwhile (the challenge). */
static void conn_handshake(sh_conn_t *c) {
  int rc = sh_tls_handshake(c->tls);
  if (rc == -EAGAIN) {
    conn_rearm(c);
    return;
  }
  if (rc) {
    conn_io_failed(c, rc);
    return;
  }
  sh_queue_remove(&c->tlsq);
  sh_debug("TLS with %s: %s", c->peer[0] ? c->peer : c->desc, "handshake done");
  conn_read(c);
  if (!c->closing) conn_flush(c);
}

void sh_conn_tls_start(sh_conn_t *c, sh_tls_t *t) {
  c->tls = t;
  conn_handshake(c);
}

int sh_conn_tls_client(sh_conn_t *c, const char *host) {
  sh_tls_ctx_t *ctx = c->agent->opts.tls_client;
  sh_tls_t *t;
  if (!ctx) return 0;
  if (sh_tls_create(ctx, c->fd, host, &t)) {
    sh_conn_close(c, "cannot start TLS: out of memory");
    return -1;
  }
  sh_conn_tls_start(c, t);
  return c->closing ? -1 : 0;
}

static void conn_poll_cb(uv_poll_t *h, int status, int events) {
  sh_conn_t *c = h->data;
  if (c->closing) return;
  if (status < 0) {
    /* libuv reports a socket error (POLLERR) as EBADF: say what it was. */
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err)
      sh_conn_close(c, strerror(err));
    else
      sh_conn_close(c, uv_strerror(status));
    return;
  }
  if (c->up == SH_UP_CONNECTING) {
    if (c->role == SH_ROLE_PULL) sh_pull_peer_connected(c);
    else sh_uplink_connected(c);
    return;
  }
  if (!sh_tls_ready(c->tls)) {
    conn_handshake(c);
    return;
  }
  int got = (events & UV_READABLE ? SH_TLS_READ : 0) | (events & UV_WRITABLE ? SH_TLS_WRITE : 0);
  if (got & sh_tls_rd_want(c->tls)) conn_read(c);
  if (!c->closing && sh_buf_avail(&c->out) && (got & sh_tls_wr_want(c->tls))) conn_flush(c);
  else conn_rearm(c);
}

/* ---- TLS peers that say nothing ---- */

static void tls_timer_cb(uv_timer_t *h);

/* Starts the timer for the oldest deadline on tlsq (none: stops it). */
static void tls_arm(sh_agent_t *a) {
  if (sh_queue_empty(&a->tlsq)) {
    uv_timer_stop(&a->tls_timer);
    return;
  }
  sh_conn_t *c = sh_queue_data(sh_queue_head(&a->tlsq), sh_conn_t, tlsq);
  uint64_t now = uv_now(a->loop);
  uv_timer_start(&a->tls_timer, tls_timer_cb,
                 c->tls_hello_ms > now ? c->tls_hello_ms - now : 0, 0);
}

/* A client without TLS waits for our challenge and sends nothing, while a
 * TLS listener waits for its ClientHello: tell it in plain text, so that it
 * fails at once with the reason instead of timing out. A TLS client sends
 * its hello as soon as it connects, so its first bytes are long there. */
static void tls_timer_cb(uv_timer_t *h) {
  sh_agent_t *a = h->data;
  uint64_t now = uv_now(a->loop);
  while (!sh_queue_empty(&a->tlsq)) {
    sh_conn_t *c = sh_queue_data(sh_queue_head(&a->tlsq), sh_conn_t, tlsq);
    if (c->tls_hello_ms > now) break;
    sh_queue_remove(&c->tlsq);
    char b;
    if (sh_tls_received(c->tls) || recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0) continue;
    sh_buf_t e;
    sh_buf_init(&e);
    if (!sh_error_append(&e, SH_ETLS, c->node_port
                         ? "shoal daemon closed the connection: this node requires TLS on "
                           "its node port, and the peer did not start TLS: every node of a "
                           "TLS cluster joins with --tls-ca, --tls-cert and --tls-key"
                         : "shoal daemon closed the connection: this daemon "
                           "requires TLS on its TCP port, and this client did not start TLS: "
                           "connect with the cluster's CA (shoal.init(..., tls_ca=PATH), "
                           "SHOAL_TLS_CA, or --tls-ca)")) {
      ssize_t n = send(c->fd, e.data, e.len, MSG_NOSIGNAL | MSG_DONTWAIT);
      (void)n;
    }
    sh_buf_close(&e);
    shutdown(c->fd, SHUT_WR);
    sh_warn("connection from %s%s refused: it sent nothing within %.3g s after connecting: "
            "a %s without TLS (this %s requires TLS)", c->peer, c->node_port ? " to the node port"
            : "", SH_TLS_HELLO_WAIT_MS / 1000.0, c->node_port ? "peer" : "client",
            c->node_port ? "node port" : "daemon");
    c->auth = 0;
    sh_conn_close(c, NULL);
  }
  tls_arm(a);
}

/* ---- authentication of TCP peers ---- */

static void auth_timer_cb(uv_timer_t *h);

/* Starts the timer for the oldest deadline on authq (none: stops it). */
static void auth_arm(sh_agent_t *a) {
  if (sh_queue_empty(&a->authq)) {
    uv_timer_stop(&a->auth_timer);
    return;
  }
  sh_conn_t *c = sh_queue_data(sh_queue_head(&a->authq), sh_conn_t, authq);
  uint64_t now = uv_now(a->loop);
  uint64_t ms = c->auth_deadline_ms > now ? c->auth_deadline_ms - now : 0;
  uv_timer_start(&a->auth_timer, auth_timer_cb, ms, 0);
}

/* Refuses every peer whose handshake deadline passed; a silent peer cannot
 * hold a connection open. */
static void auth_timer_cb(uv_timer_t *h) {
  sh_agent_t *a = h->data;
  uint64_t now = uv_now(a->loop);
  while (!sh_queue_empty(&a->authq)) {
    sh_conn_t *c = sh_queue_data(sh_queue_head(&a->authq), sh_conn_t, authq);
    if (c->auth_deadline_ms > now) break;
    char why[96];
    snprintf(why, sizeof why, "it did not authenticate within %.3g s",
             (double)a->auth_timeout_ms / 1000.0);
    conn_fail(c, -ETIMEDOUT, why); /* takes it off authq */
  }
  auth_arm(a);
}

/* Sends a new TCP connection our challenge: a fresh nonce, so no recorded
 * answer is ever right again. */
static void auth_begin(sh_conn_t *c) {
  sh_agent_t *a = c->agent;
  int rc = sh_auth_random(c->nonce, sizeof c->nonce);
  if (!rc) rc = sh_auth_challenge_append(&c->out, c->nonce);
  if (rc) {
    sh_warn("connection from %s closed: cannot start the handshake: %s", c->peer, sh_strerror(rc));
    sh_conn_close(c, NULL);
    return;
  }
  c->auth = 1;
  c->auth_deadline_ms = uv_now(a->loop) + a->auth_timeout_ms;
  sh_queue_insert_tail(&a->authq, &c->authq);
  /* A running timer is due no later than this deadline (it is the oldest). */
  if (!uv_is_active((uv_handle_t *)&a->auth_timer)) auth_arm(a);
  sh_conn_mark_dirty(c);
}

/* Starts TLS on a new TCP connection (the challenge waits in c->out for
 * the handshake); a peer that sends nothing is told it needs TLS. */
static void tls_begin(sh_conn_t *c, sh_tls_ctx_t *ctx) {
  sh_agent_t *a = c->agent;
  sh_tls_t *t;
  if (sh_tls_create(ctx, c->fd, NULL, &t)) {
    sh_warn("connection from %s closed: cannot start TLS: out of memory", c->peer);
    c->auth = 0;
    sh_conn_close(c, NULL);
    return;
  }
  uint64_t wait = SH_TLS_HELLO_WAIT_MS < a->auth_timeout_ms ? SH_TLS_HELLO_WAIT_MS
                                                            : a->auth_timeout_ms;
  c->tls_hello_ms = uv_now(a->loop) + wait;
  sh_queue_insert_tail(&a->tlsq, &c->tlsq);
  if (!uv_is_active((uv_handle_t *)&a->tls_timer)) tls_arm(a);
  sh_conn_tls_start(c, t);
}

static void accept_cb(uv_poll_t *h, int status, int events) {
  (void)events;
  sh_agent_t *a = h->data;
  if (status < 0 || a->stopping) return;
  int tcp = h == &a->tcp_poll;
  sh_agent_accept(a, tcp ? a->tcp_fd : a->listen_fd, tcp, tcp ? a->opts.tls_server : NULL);
}

void sh_agent_accept(sh_agent_t *a, int lfd, int tcp, sh_tls_ctx_t *tls) {
  for (int i = 0; i < 64; i++) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        sh_warn("accept: %s", strerror(errno));
      return;
    }
    if (!tcp) {
      sh_conn_create(a, fd, 0, "new connection");
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char peer[64];
    format_addr((struct sockaddr *)&ss, sl, peer, sizeof peer);
    sh_conn_t *c = sh_conn_create(a, fd, 0, peer);
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    c->node_port = lfd == a->node_fd;
    auth_begin(c);
    if (!c->closing && tls) tls_begin(c, tls);
  }
}

/* ---- the before-poll batch: schedule, then flush every dirty connection ---- */

static void before_poll_cb(uv_prepare_t *h) {
  sh_agent_t *a = h->data;
  if (a->need_schedule && !a->stopping) sh_sched_run(a);
  while (!sh_queue_empty(&a->dirty)) {
    sh_queue_t *q = sh_queue_head(&a->dirty);
    sh_conn_t *c = sh_queue_data(q, sh_conn_t, dirty);
    sh_queue_remove(q);
    conn_flush(c);
  }
}

/* ---- run and stop ---- */

static void signal_cb(uv_signal_t *h, int signum) {
  sh_agent_stop(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void owner_timer_cb(uv_timer_t *h) {
  sh_agent_t *a = h->data;
  if (!a->owner_seen) sh_agent_stop(a, "no driver connected to this embedded cluster in time");
}

void sh_agent_stop(sh_agent_t *a, const char *why) {
  if (a->stopping) return;
  a->stopping = 1;
  sh_info("shutting down: %s", why);
  sh_pool_stop_all(a);
  /* Flush what we can to every client (e.g. final results), then close. */
  while (!sh_queue_empty(&a->conns)) {
    sh_conn_t *c = sh_queue_data(sh_queue_head(&a->conns), sh_conn_t, link);
    write_now(c);
    sh_tls_shutdown(c->tls);
    sh_conn_close(c, NULL);
  }
  uv_stop(a->loop);
}

static void cleanup_files(sh_agent_t *a) {
  unlink(a->sock_path);
  unlink(a->pid_path);
  if (a->opts.embedded) rmdir(a->opts.socket_dir);
}

static int setup_listeners(sh_agent_t *a) {
  if (strlen(a->opts.socket_dir) + sizeof "/agent.sock" > sizeof a->sock_path) {
    fprintf(stderr, "shoal: socket directory path is too long for a unix socket (max %zu bytes): %s\n",
            sizeof a->sock_path - sizeof "/agent.sock", a->opts.socket_dir);
    return -ENAMETOOLONG;
  }
  int rc = make_private_dir(a->opts.socket_dir);
  if (rc) {
    fprintf(stderr, "shoal: cannot use socket directory %s: %s%s\n", a->opts.socket_dir,
            strerror(-rc), rc == -EPERM ? " (it belongs to another user)" : "");
    return rc;
  }
  snprintf(a->sock_path, sizeof a->sock_path, "%s/agent.sock", a->opts.socket_dir);
  snprintf(a->pid_path, sizeof a->pid_path, "%s/agent.pid", a->opts.socket_dir);
  if (socket_alive(a->sock_path)) {
    fprintf(stderr, "shoal: a shoal daemon is already running at %s; stop it with "
            "`shoal stop --socket-dir %s` or choose another --socket-dir\n",
            a->sock_path, a->opts.socket_dir);
    return -EADDRINUSE;
  }
  a->listen_fd = listen_unix(a->sock_path);
  if (a->listen_fd < 0) {
    fprintf(stderr, "shoal: cannot listen on %s: %s\n", a->sock_path, strerror(-a->listen_fd));
    return a->listen_fd;
  }
  uv_poll_init(a->loop, &a->listen_poll, a->listen_fd);
  a->listen_poll.data = a;
  uv_poll_start(&a->listen_poll, UV_READABLE, accept_cb);
  a->tcp_fd = -1;
  if (a->opts.port) {
    const char *bind_addr = a->opts.bind ? a->opts.bind : "127.0.0.1";
    if (a->opts.token.len < SH_AUTH_TOKEN_MIN) {
      fprintf(stderr, "shoal: listening on TCP needs a cluster token\n");
      return -EINVAL;
    }
    a->tcp_fd = sh_listen_tcp(bind_addr, a->opts.port, a->tcp_addr, sizeof a->tcp_addr);
    if (a->tcp_fd == -EADDRNOTAVAIL && !a->tcp_addr[0]) {
      fprintf(stderr, "shoal: cannot listen on %s port %d: --bind needs an IP address of this "
              "machine (0.0.0.0 for every interface), and '%s' is not one\n",
              bind_addr, a->opts.port, bind_addr);
      return a->tcp_fd;
    }
    if (a->tcp_fd < 0) {
      fprintf(stderr, "shoal: cannot listen on %s: %s%s\n", a->tcp_addr, strerror(-a->tcp_fd),
              a->tcp_fd == -EADDRINUSE ? " (choose another --port)" : "");
      return a->tcp_fd;
    }
    uv_poll_init(a->loop, &a->tcp_poll, a->tcp_fd);
    a->tcp_poll.data = a;
    uv_poll_start(&a->tcp_poll, UV_READABLE, accept_cb);
  }
  FILE *pf = fopen(a->pid_path, "w");
  if (pf) {
    fprintf(pf, "%d\n", (int)getpid());
    fclose(pf);
  }
  return 0;
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

int sh_agent_run(const sh_agent_opts_t *opts) {
  sh_agent_t *a = sh_calloc(1, sizeof *a);
  a->opts = *opts;
  a->loop = uv_default_loop();
  a->node_id = 1;
  a->next_client_id = 1;
  if (opts->head_address) {
    /* A node names itself, so its id (and its workers' SHOAL_NODE_ID) stays
     * the same when it reconnects; the head's own node is 1. Its local
     * drivers take client ids from the top half, never equal to the ids of
     * the head's drivers whose tasks and objects it receives. */
    uint32_t r = 0;
    if (sh_auth_random((uint8_t *)&r, sizeof r)) r = (uint32_t)getpid() * 2654435761u;
    a->node_id = 2 + r % 0x7ffffff0u;
    a->next_client_id = SH_NODE_CLIENT_BASE;
  }
  a->started_ns = sh_now_ns();
  sh_queue_init(&a->conns);
  sh_queue_init(&a->dirty);
  sh_queue_init(&a->authq);
  sh_queue_init(&a->tlsq);
  sh_queue_init(&a->tls_pend);
  double auth_s = opts->auth_timeout_s > 0 ? opts->auth_timeout_s : SH_AUTH_TIMEOUT_DEFAULT;
  a->auth_timeout_ms = (uint64_t)(auth_s * 1000.0 + 0.5);
  sh_queue_init(&a->workers);
  sh_map_init(&a->clients);
  sh_head_init(&a->head);
  sh_head_add_node(&a->head, a->node_id, &opts->resources);
  a->avail = opts->resources;
  sh_gpus_init(&a->gpus, opts->resources.gpu_milli);
  signal(SIGPIPE, SIG_IGN);
  if (opts->embedded) {
    /* Die with the driver that started us, also before it connects. */
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent || parent == 1) return 1;
  }
  int rc = setup_listeners(a);
  if (rc) return 1;
  char err[512];
  sh_recover_open(a);
  if (sh_store_open(a, err, sizeof err)) {
    fprintf(stderr, "shoal: %s\n", err);
    cleanup_files(a);
    return 1;
  }
  sh_recover_save(a);
  sh_sched_init(a);
  sh_pull_init(a);
  sh_cluster_start(a);
  uv_signal_init(a->loop, &a->sig_term);
  uv_signal_init(a->loop, &a->sig_int);
  a->sig_term.data = a->sig_int.data = a;
  uv_signal_start(&a->sig_term, signal_cb, SIGTERM);
  uv_signal_start(&a->sig_int, signal_cb, SIGINT);
  uv_prepare_init(a->loop, &a->before_poll);
  a->before_poll.data = a;
  uv_prepare_start(&a->before_poll, before_poll_cb);
  uv_timer_init(a->loop, &a->owner_timer);
  uv_timer_init(a->loop, &a->respawn_timer);
  uv_timer_init(a->loop, &a->auth_timer);
  uv_timer_init(a->loop, &a->tls_timer);
  uv_idle_init(a->loop, &a->tls_idle);
  a->owner_timer.data = a->respawn_timer.data = a->auth_timer.data = a;
  a->tls_timer.data = a->tls_idle.data = a;
  if (opts->embedded) uv_timer_start(&a->owner_timer, owner_timer_cb, 30000, 0);
  sh_pool_respawn(a);
  /* The first line is what a parent waits for; the second is for people. */
  dprintf(opts->ready_fd, "shoal: ready %s\n", a->sock_path);
  if (a->tcp_fd >= 0)
    dprintf(opts->ready_fd, "shoal: listening on %s%s (cluster token: %s)\n", a->tcp_addr,
            opts->tls_server ? " with TLS" : "", opts->token.where);
  if (opts->ready_fd != 1) close(opts->ready_fd);
  if (opts->log_path) {
    int fd = open(opts->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
  }
  char res[512];
  sh_res_format(&opts->resources, res, sizeof res);
  sh_info("listening on %s%s%s, %d workers, resources %s", a->sock_path,
          a->tcp_fd >= 0 ? " and " : "", a->tcp_fd >= 0 ? a->tcp_addr : "", opts->num_workers, res);
  if (a->tcp_fd >= 0)
    sh_info("TCP peers must %sprove they hold the cluster token from %s",
            opts->tls_server ? "speak TLS and " : "", opts->token.where);
  if (opts->head_address)
    sh_info("node %u joins the head at %s (cluster token from %s)", a->node_id,
            opts->head_address, opts->token.where);
  uv_run(a->loop, UV_RUN_DEFAULT);
  sh_store_close(a);
  sh_recover_close(a);
  cleanup_files(a);
  /* Close remaining handles so the sanitizer build sees a clean exit. */
  uv_walk(a->loop, close_walk_cb, NULL);
  uv_run(a->loop, UV_RUN_NOWAIT);
  sh_cluster_close(a);
  sh_pull_close(a);
  sh_sched_close(a);
  sh_map_close(&a->clients);
  sh_head_close(&a->head);
  close(a->listen_fd);
  if (a->tcp_fd >= 0) close(a->tcp_fd);
  sh_auth_token_clear(&a->opts.token);
  sh_free(a);
  return 0;
}
