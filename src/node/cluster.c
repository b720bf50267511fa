/* The cluster: a node agent's link to its head and the head's side of its
 * nodes. A node connects over TCP, proves it holds the cluster token, says
 * HELLO (role NODE) and NODE_REGISTER (its own id, resources, host), and
 * then runs what the head forwards; it reconnects with backoff whenever the
 * head is unreachable or silent. The head registers nodes in its placement
 * registry, hears their heartbeats, and declares a node dead when its
 * connection closes or it stays silent for the heartbeat timeout. Sections:
 * node side (connect, handshake, heartbeats, loss); head side
 * (registration, frames from nodes, death, drain); the heartbeat timer. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/agent.h"

#define BACKOFF_FIRST_MS 500
#define BACKOFF_MAX_MS 5000

/* ---- node side: the uplink ---- */

/* Splits "HOST:PORT" or "[V6]:PORT". 0, or -EINVAL. */
int sh_split_address(const char *addr, char *host, size_t hn, char *port, size_t pn) {
  const char *colon = strrchr(addr, ':');
  if (!colon || colon == addr || !colon[1] || strlen(colon + 1) >= pn) return -EINVAL;
  const char *h = addr;
  size_t len = (size_t)(colon - addr);
  if (h[0] == '[' && len >= 2 && h[len - 1] == ']') h++, len -= 2;
  if (len == 0 || len >= hn) return -EINVAL;
  memcpy(host, h, len);
  host[len] = 0;
  snprintf(port, pn, "%s", colon + 1);
  return 0;
}

/* Logs why joining failed (once per distinct reason; repeats at debug) and
 * sets the time of the next attempt. */
static void retry_later(sh_agent_t *a, const char *why) {
  uint32_t ms = a->up_backoff_ms ? a->up_backoff_ms : BACKOFF_FIRST_MS;
  if (strcmp(why, a->up_why)) {
    sh_warn("cannot join the head at %s: %s; retrying every %.3g s at most",
            a->opts.head_address, why, BACKOFF_MAX_MS / 1000.0);
    snprintf(a->up_why, sizeof a->up_why, "%s", why);
  } else {
    sh_debug("cannot join the head at %s: %s", a->opts.head_address, why);
  }
  a->up_retry_ms = uv_now(a->loop) + ms;
  a->up_backoff_ms = ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms * 2;
}

/* Starts a non-blocking connection to the head; the rest happens in
 * sh_uplink_connected and sh_uplink_frame. The host name is resolved here,
 * on the loop (numeric addresses cost nothing; a name lookup can block). */
static void uplink_connect(sh_agent_t *a) {
  char host[256], port[16], why[300];
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
  if (sh_split_address(a->opts.head_address, host, sizeof host, port, sizeof port)) {
    retry_later(a, "the address is not HOST:PORT");
    return;
  }
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc) {
    snprintf(why, sizeof why, "cannot resolve %s: %s", host, gai_strerror(rc));
    retry_later(a, why);
    return;
  }
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  rc = fd < 0 ? -errno : 0;
  if (!rc && connect(fd, res->ai_addr, res->ai_addrlen) < 0 && errno != EINPROGRESS) rc = -errno;
  freeaddrinfo(res);
  if (rc) {
    if (fd >= 0) close(fd);
    retry_later(a, strerror(-rc));
    return;
  }
  char desc[300];
  snprintf(desc, sizeof desc, "the head at %s", a->opts.head_address);
  sh_conn_t *c = sh_conn_create(a, fd, SH_ROLE_UPLINK, desc);
  c->up = SH_UP_CONNECTING;
  sh_conn_poll(c, UV_READABLE | UV_WRITABLE);
  a->uplink = c;
  a->up_since_ms = a->up_last_ms = uv_now(a->loop);
}

void sh_uplink_connected(sh_conn_t *c) {
  if (sh_conn_connected(c)) return;
  sh_agent_t *a = c->agent;
  /* The node port listens where the head reaches us: the uplink's local
   * address (reported in NODE_REGISTER). */
  sh_pull_listen(a, c->fd);
  /* TLS first; the head's certificate must name the host we dialled. */
  char host[256], port[16];
  if (sh_split_address(a->opts.head_address, host, sizeof host, port, sizeof port)) {
    sh_conn_close(c, "the address is not HOST:PORT");
    return;
  }
  sh_conn_tls_client(c, host);
}

/* What this node reports in a heartbeat. */
static void fill_heartbeat(sh_agent_t *a, sh_heartbeat_t *h) {
  double load[1] = {0};
  getloadavg(load, 1);
  h->load_milli = load[0] > 4e6 ? 4000000000u : (uint32_t)(load[0] * 1000);
  h->running = 0;
  sh_queue_t *q;
  sh_queue_foreach(q, &a->workers) h->running += sh_queue_data(q, sh_worker_t, link)->ninflight;
  h->free = a->avail;
}

static void send_heartbeat(sh_agent_t *a) {
  sh_heartbeat_t h;
  fill_heartbeat(a, &h);
  if (sh_heartbeat_append(&a->uplink->out, &h) == 0) sh_conn_mark_dirty(a->uplink);
}

/* The head's challenge: answer it with our proof. */
static void answer_challenge(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  sh_conn_answer_challenge(c, f, a->up_nonce[0], a->up_nonce[1],
                           "expected the head's AUTH_CHALLENGE: is this a shoal head with "
                           "--port, and the same shoal version?");
}

/* The head's proof: only a head that holds the token hears who we are. */
static void check_head(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  if (sh_conn_check_proof(c, f, a->up_nonce[0], a->up_nonce[1], "the head")) return;
  sh_hello_t h = {SH_ROLE_NODE, (uint32_t)getpid(), 0, 0};
  sh_register_t r = {.node_id = a->node_id, .pid = (uint32_t)getpid(),
                     .num_workers = (uint32_t)a->opts.num_workers, .total = a->opts.resources,
                     .node_port = a->node_port};
  if (gethostname(r.host, sizeof r.host)) snprintf(r.host, sizeof r.host, "?");
  r.host[sizeof r.host - 1] = 0;
  if (sh_hello_append(&c->out, &h) || sh_register_append(&c->out, &r)) {
    sh_conn_close(c, "could not build NODE_REGISTER");
    return;
  }
  c->up = SH_UP_REGISTERED;
  sh_conn_mark_dirty(c);
}

/* Registered: tells the head which of its tasks and actors this node kept
 * (none on a first join; a restarted head adopts them, another stops them,
 * and a restarted head waits for this before it runs again what nobody
 * kept). Back after a loss, also sends the results that waited, and again
 * those sent just before the loss (the head may have died before it passed
 * them on). */
static void rejoin(sh_agent_t *a, sh_conn_t *c) {
  if (!a->up_lost_ms) {
    if (sh_holds_append(&c->out, NULL, 0, NULL, 0, NULL)) sh_warn("out of memory joining the head");
    sh_conn_mark_dirty(c);
    return;
  }
  uint64_t id, *tasks = NULL, *actors = NULL;
  sh_res_t *res = NULL; /* what each actor holds here */
  uint32_t nt = 0, na = 0, held = 0;
  void *v;
  if (a->tasks.count) tasks = sh_malloc(a->tasks.count * sizeof *tasks);
  if (a->actors.count) actors = sh_malloc(a->actors.count * sizeof *actors);
  if (a->actors.count) res = sh_calloc(a->actors.count, sizeof *res);
  for (size_t i = 0; sh_map_next(&a->tasks, &i, &id, &v);) {
    sh_task_t *t = v;
    if (t->remote && !t->orphan && !t->restart) tasks[nt++] = id;
  }
  for (size_t i = 0; sh_map_next(&a->actors, &i, &id, &v);) {
    sh_actor_t *ac = v;
    if (!ac->remote || ac->state == SH_ACTOR_DEAD) continue;
    if (ac->holds) res[na] = ac->held;
    actors[na++] = id;
  }
  for (sh_held_t *h = a->up_held; h; h = h->next) held++;
  /* Results first: a restarted head holds the tasks drivers send again until
   * every node said what it kept, and then runs again what nobody had. */
  for (int k = 1; k >= 0; k--) {
    sh_buf_append(&c->out, sh_buf_head(&a->up_recent[k]), sh_buf_avail(&a->up_recent[k]));
    sh_buf_reset(&a->up_recent[k]);
  }
  sh_sched_send_held(a, c);
  /* The stored objects it holds before NODE_HOLDS: a restarted head opens
   * its gate on NODE_HOLDS, and what it then places may need them. */
  sh_sched_uplink_back(a, c);
  if (sh_holds_append(&c->out, tasks, nt, actors, na, res))
    sh_warn("out of memory telling the head what this node kept");
  sh_free(tasks);
  sh_free(actors);
  sh_free(res);
  sh_info("back with the head after %.3g s: it kept %u task%s and %u actor%s of the head's, "
          "and %u result%s waited for it", (uv_now(a->loop) - a->up_lost_ms) / 1000.0, nt,
          nt == 1 ? "" : "s", na, na == 1 ? "" : "s", held, held == 1 ? "" : "s");
  a->up_lost_ms = 0;
  sh_conn_mark_dirty(c);
}

static void registered(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  sh_hello_ok_t ok;
  if (f->hdr.type != SH_MSG_HELLO_OK || sh_hello_ok_decode(f->body, f->hdr.len, &ok) ||
      ok.node_id != a->node_id) {
    sh_conn_fail(c, SH_EBODY, "expected HELLO_OK with this node's id from the head");
    return;
  }
  c->up = SH_UP_READY;
  a->up_backoff_ms = 0;
  a->up_why[0] = 0;
  sh_info("joined the head at %s as node %u", a->opts.head_address, a->node_id);
  rejoin(a, c);
  send_heartbeat(a);
}

void sh_uplink_frame(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  a->up_last_ms = uv_now(a->loop);
  if (f->hdr.type == SH_MSG_ERROR) {
    char why[600];
    int n = f->hdr.len > 4 ? (int)f->hdr.len - 4 : 0;
    snprintf(why, sizeof why, "the head refused this node: %.*s", n > 500 ? 500 : n, f->body + 4);
    sh_conn_close(c, why);
    return;
  }
  switch (c->up) {
    case SH_UP_CHALLENGE: answer_challenge(c, f); return;
    case SH_UP_AUTH_OK: check_head(c, f); return;
    case SH_UP_REGISTERED: registered(c, f); return;
    default: break;
  }
  if (f->hdr.type == SH_MSG_HEARTBEAT) return;
  char why[96];
  snprintf(why, sizeof why, "unexpected %s frame from the head", sh_msg_name(f->hdr.type));
  sh_conn_fail(c, SH_ETYPE, why);
}

void sh_uplink_closed(sh_agent_t *a, sh_conn_t *c, const char *why) {
  if (a->uplink != c) return;
  a->uplink = NULL;
  if (a->stopping) return;
  if (c->up == SH_UP_READY) {
    /* The head may come back (restarted on the same address): its work goes
     * on here, and its results wait, for up to --head-timeout. */
    sh_warn("lost the head at %s: %s; its work goes on here for up to %.3g s "
            "(--head-timeout) while this node reconnects", a->opts.head_address,
            why ? why : "it closed the connection", a->head_timeout_ms / 1000.0);
    if (!a->up_lost_ms) a->up_lost_ms = uv_now(a->loop);
    /* Pulls from other nodes go on: they do not need the head. */
    a->up_retry_ms = uv_now(a->loop); /* at once, then with backoff */
    return;
  }
  retry_later(a, why ? why : "the head closed the connection");
}

/* ---- head side: the nodes ---- */

/* Declares n dead (why), reruns or fails its work, closes its connection. */
static void node_dead(sh_agent_t *a, sh_node_t *n, const char *why) {
  if (!n->alive) return;
  n->alive = 0;
  a->nodes_alive--;
  snprintf(n->dead_reason, sizeof n->dead_reason, "%s", why);
  sh_conn_t *c = n->conn;
  n->conn = NULL;
  if (c) c->node = NULL;
  sh_head_set_alive(&a->head, n->node_id, 0);
  sh_warn("node %u (%s) is dead: %s; %u task%s there run again elsewhere or fail", n->node_id,
          n->host, why, n->ntasks, n->ntasks == 1 ? "" : "s");
  sh_sched_node_died(a, n, why);
  sh_recover_node(a, n->node_id, 0);
  if (c) sh_conn_close(c, NULL);
}

static void hello_ok_for(sh_agent_t *a, sh_conn_t *c, uint32_t node_id) {
  sh_hello_ok_t ok = {0};
  ok.node_id = node_id;
  ok.num_workers = (uint32_t)a->opts.num_workers;
  ok.cpu_milli = a->opts.resources.cpu_milli;
  ok.gpu_milli = a->opts.resources.gpu_milli;
  ok.memory = a->opts.resources.memory;
  ok.inline_threshold = a->store.inline_threshold;
  ok.store_capacity = a->store.capacity;
  sh_hello_ok_append(&c->out, &ok);
  sh_conn_mark_dirty(c);
}

static void register_node(sh_conn_t *c, const sh_register_t *r) {
  sh_agent_t *a = c->agent;
  if (r->node_id == a->node_id) {
    sh_conn_fail(c, SH_EBODY, "node id 1 is the head's own");
    return;
  }
  sh_node_t *n = sh_map_get(&a->nodes, r->node_id);
  /* The same node on a new connection: the old one is stale (the node saw it
   * fail first); what ran there is lost with it. */
  if (n && n->conn) node_dead(a, n, "it registered again on a new connection");
  if (!n) {
    n = sh_calloc(1, sizeof *n);
    n->node_id = r->node_id;
    sh_queue_init(&n->tasks);
    sh_map_init(&n->funcs_sent);
    sh_map_put(&a->nodes, n->node_id, n);
    sh_queue_insert_tail(&a->node_list, &n->all);
  } else {
    sh_map_close(&n->funcs_sent);
    sh_map_init(&n->funcs_sent);
  }
  sh_head_remove_node(&a->head, n->node_id);
  if (sh_head_add_node(&a->head, n->node_id, &r->total)) {
    sh_conn_fail(c, -ENOMEM, "the head is out of memory");
    return;
  }
  if (n->draining) sh_head_set_draining(&a->head, n->node_id, 1);
  snprintf(n->host, sizeof n->host, "%s", r->host);
  snprintf(n->addr, sizeof n->addr, "%s", c->peer[0] ? c->peer : "local");
  /* Other nodes pull from its node port, at the address it reached us from. */
  n->pull_addr[0] = 0;
  const char *colon = strrchr(c->peer, ':');
  if (r->node_port && colon)
    snprintf(n->pull_addr, sizeof n->pull_addr, "%.*s:%u", (int)(colon - c->peer), c->peer,
             r->node_port);
  n->dead_reason[0] = 0;
  n->pid = r->pid;
  n->num_workers = r->num_workers;
  n->total = r->total;
  memset(&n->hb, 0, sizeof n->hb);
  n->hb.free = r->total;
  n->last_seen_ms = uv_now(a->loop);
  n->alive = 1;
  n->conn = c;
  c->node = n;
  a->nodes_alive++;
  snprintf(c->desc, sizeof c->desc, "node %u (%.40s) at %s", n->node_id, n->host, n->addr);
  hello_ok_for(a, c, n->node_id);
  char res[512];
  sh_res_format(&r->total, res, sizeof res);
  sh_info("node %u (%s, pid %u, %u workers) joined from %s: %s", n->node_id, n->host, n->pid,
          n->num_workers, n->addr, res);
  a->need_schedule = 1; /* queued work may fit there now */
  sh_recover_node(a, n->node_id, 1);
}

void sh_cluster_node_frame(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  sh_node_t *n = c->node;
  char why[160];
  if (!n) {
    sh_register_t r;
    if (f->hdr.type != SH_MSG_NODE_REGISTER || sh_register_decode(f->body, f->hdr.len, &r)) {
      snprintf(why, sizeof why, "expected NODE_REGISTER after a node's HELLO, got %s%s",
               sh_msg_name(f->hdr.type), f->hdr.type == SH_MSG_NODE_REGISTER ? " (malformed)" : "");
      sh_conn_fail(c, SH_EBODY, why);
      return;
    }
    register_node(c, &r);
    return;
  }
  n->last_seen_ms = uv_now(a->loop);
  switch (f->hdr.type) {
    case SH_MSG_HEARTBEAT:
      if (sh_heartbeat_decode(f->body, f->hdr.len, &n->hb)) break;
      sh_head_set_load(&a->head, n->node_id, n->hb.load_milli);
      return;
    case SH_MSG_RESULT: {
      sh_result_t r;
      if (sh_result_decode(f->body, f->hdr.len, &r)) break;
      sh_sched_remote_result(a, n, f->hdr.id, &r);
      return;
    }
    case SH_MSG_OUTPUT: {
      sh_conn_t *d = sh_agent_client(a, f->hdr.id);
      if (f->hdr.len < 8) break;
      if (d && !sh_frame_append(&d->out, SH_MSG_OUTPUT, 0, f->hdr.id, f->body, f->hdr.len))
        sh_conn_mark_dirty(d);
      return;
    }
    case SH_MSG_CANCEL_REPLY: return; /* the RESULT follows */
    case SH_MSG_PULL_REPLY:
      if (sh_pull_reply(a, c, f->hdr.id, f->body, f->hdr.len)) break;
      return;
    case SH_MSG_HAVE:
      if (f->hdr.len % 8) break;
      sh_sched_have(a, n, f->body, f->hdr.len);
      return;
    case SH_MSG_NODE_HOLDS: {
      sh_holds_t h;
      if (sh_holds_decode(f->body, f->hdr.len, &h)) break;
      for (uint32_t i = 0; i < h.ntasks; i++) sh_sched_adopt_task(a, n, sh_get_u64(h.ids + 8 * i));
      sh_rd_t rd = {0};
      sh_res_t held, none = {0};
      if (h.held) sh_rd_init(&rd, h.held, h.held_len);
      for (uint32_t i = 0; i < h.nactors; i++) {
        int has = h.held && sh_holds_held_next(&rd, &held) == 0; /* checked by decode */
        sh_sched_adopt_actor(a, n, sh_get_u64(h.ids + 8 * ((size_t)h.ntasks + i)),
                             has ? &held : &none);
      }
      if (h.ntasks || h.nactors)
        sh_info("node %u kept %u task%s and %u actor%s across the loss of its head: %s",
                n->node_id, h.ntasks, h.ntasks == 1 ? "" : "s", h.nactors,
                h.nactors == 1 ? "" : "s",
                a->rec.grace ? "adopted" : "stopped (this head did not restart)");
      sh_recover_holds_done(a, n->node_id); /* the gate may open now */
      return;
    }
    case SH_MSG_CHUNK: {
      char err[600];
      if (sh_store_chunk(a, c, f->hdr.id, f->body, f->hdr.len, err, sizeof err))
        sh_warn("from node %u: %s", n->node_id, err);
      return;
    }
    case SH_MSG_ERROR: {
      int len = f->hdr.len > 4 ? (int)f->hdr.len - 4 : 0;
      snprintf(why, sizeof why, "it sent ERROR: %.*s", len > 120 ? 120 : len, f->body + 4);
      sh_conn_close(c, why);
      return;
    }
    default:
      snprintf(why, sizeof why, "unexpected %s frame from a node", sh_msg_name(f->hdr.type));
      sh_conn_fail(c, SH_ETYPE, why);
      return;
  }
  snprintf(why, sizeof why, "malformed %s body from a node", sh_msg_name(f->hdr.type));
  sh_conn_fail(c, SH_EBODY, why);
}

void sh_cluster_node_closed(sh_agent_t *a, sh_conn_t *c, const char *why) {
  if (!c->node) return;
  char text[256];
  snprintf(text, sizeof text, "it lost its connection (%s): the node agent exited or was killed, "
           "or the network failed", why ? why : "closed");
  node_dead(a, c->node, text);
}

void sh_cluster_drain(sh_agent_t *a, sh_conn_t *c, uint64_t node_id) {
  char text[256];
  uint32_t st = SH_ST_OK;
  sh_node_t *n = node_id <= UINT32_MAX ? sh_map_get(&a->nodes, node_id) : NULL;
  if (a->opts.head_address) {
    st = SH_ST_BAD_REQUEST;
    snprintf(text, sizeof text, "this daemon is a node agent: drain nodes at the head (shoal "
             "drain NODE --address HEAD)");
  } else if (node_id == a->node_id) {
    a->local_draining = 1;
    snprintf(text, sizeof text, "node %u (the head's own) is draining: it gets no new work; "
             "what runs there finishes", a->node_id);
  } else if (n) {
    n->draining = 1;
    sh_head_set_draining(&a->head, n->node_id, 1);
    snprintf(text, sizeof text, "node %u (%.64s) is draining: it gets no new work; the %u task%s "
             "there finish", n->node_id, n->host, n->ntasks, n->ntasks == 1 ? "" : "s");
  } else {
    st = SH_ST_BAD_REQUEST;
    snprintf(text, sizeof text, "there is no node %llu in this cluster (shoal status lists them)",
             (unsigned long long)node_id);
  }
  if (st == SH_ST_OK) sh_info("%s (asked by %s)", text, c->desc);
  if (sh_drain_reply_append(&c->out, node_id, st, text)) sh_conn_close(c, "out of memory");
  else sh_conn_mark_dirty(c);
}

/* ---- the heartbeat timer ---- */

static void node_tick(sh_agent_t *a, uint64_t now) {
  sh_conn_t *c = a->uplink;
  char why[128];
  if (!a->up_lost_ms && now - a->up_recent_ms >= 1000) {
    /* Results older than 1-2 s before a loss are not sent again. */
    sh_buf_t t = a->up_recent[1];
    a->up_recent[1] = a->up_recent[0];
    a->up_recent[0] = t;
    sh_buf_reset(&a->up_recent[0]);
    if (a->up_recent[0].cap > (1u << 20)) sh_buf_close(&a->up_recent[0]);
    a->up_recent_ms = now;
  }
  if (a->up_lost_ms && now - a->up_lost_ms > a->head_timeout_ms) {
    sh_warn("the head at %s did not come back within %.3g s (--head-timeout): the work it "
            "sent is stopped", a->opts.head_address, a->head_timeout_ms / 1000.0);
    a->up_lost_ms = 0;
    sh_sched_uplink_gone(a);
    sh_pull_uplink_gone(a);
  }
  if (!c) {
    if (now >= a->up_retry_ms) uplink_connect(a);
    return;
  }
  if (c->up != SH_UP_READY && now - a->up_since_ms > a->hb_timeout_ms) {
    snprintf(why, sizeof why, "no answer within %.3g s", a->hb_timeout_ms / 1000.0);
    sh_conn_close(c, why);
    return;
  }
  if (c->up != SH_UP_READY) return;
  if (now - a->up_last_ms > a->hb_timeout_ms) {
    snprintf(why, sizeof why, "the head sent nothing for %.3g s", a->hb_timeout_ms / 1000.0);
    sh_conn_close(c, why);
    return;
  }
  send_heartbeat(a);
}

static void head_tick(sh_agent_t *a, uint64_t now) {
  uint64_t id;
  void *v;
  char why[128];
  sh_recover_tick(a, now);
  for (size_t i = 0; sh_map_next(&a->nodes, &i, &id, &v);) {
    sh_node_t *n = v;
    if (!n->alive) continue;
    if (now - n->last_seen_ms > a->hb_timeout_ms) {
      snprintf(why, sizeof why, "no heartbeat for %.3g s (--heartbeat-timeout)",
               (now - n->last_seen_ms) / 1000.0);
      node_dead(a, n, why);
      continue;
    }
    if (sh_heartbeat_append(&n->conn->out, NULL) == 0) sh_conn_mark_dirty(n->conn);
  }
}

static void hb_timer_cb(uv_timer_t *h) {
  sh_agent_t *a = h->data;
  if (a->stopping) return;
  if (a->opts.head_address) node_tick(a, uv_now(a->loop));
  else head_tick(a, uv_now(a->loop));
  if (!a->stopping) sh_pull_tick(a, uv_now(a->loop));
}

void sh_cluster_start(sh_agent_t *a) {
  double s = a->opts.heartbeat_timeout_s > 0 ? a->opts.heartbeat_timeout_s
                                             : SH_HEARTBEAT_TIMEOUT_DEFAULT;
  a->hb_timeout_ms = (uint64_t)(s * 1000.0 + 0.5);
  double g = a->opts.head_timeout_s > 0 ? a->opts.head_timeout_s : SH_HEAD_TIMEOUT_DEFAULT;
  a->head_timeout_ms = (uint64_t)(g * 1000.0 + 0.5);
  uint64_t period = a->hb_timeout_ms / 3 < SH_HEARTBEAT_PERIOD_MS ? a->hb_timeout_ms / 3
                                                                 : SH_HEARTBEAT_PERIOD_MS;
  if (period < 50) period = 50;
  sh_map_init(&a->nodes);
  sh_queue_init(&a->node_list);
  uv_timer_init(a->loop, &a->hb_timer);
  a->hb_timer.data = a;
  uv_timer_start(&a->hb_timer, hb_timer_cb, period, period);
  if (!a->opts.head_address) {
    /* The local scheduler places work on the head's own node; the registry
     * chooses among the others (this node still counts for feasibility). */
    sh_head_set_draining(&a->head, a->node_id, 1);
    return;
  }
  uplink_connect(a);
}

void sh_cluster_close(sh_agent_t *a) {
  uint64_t id;
  void *v;
  for (size_t i = 0; sh_map_next(&a->nodes, &i, &id, &v);) {
    sh_node_t *n = v;
    sh_map_close(&n->funcs_sent);
    sh_free(n);
  }
  sh_map_close(&a->nodes);
}
