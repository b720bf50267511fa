/* Objects between nodes. A node keeps the large results its workers make;
 * whoever needs one elsewhere pulls it: the head over the holder's uplink,
 * another node over the holder's node port (a TCP listener every node
 * opens on the address its uplink uses, reported in NODE_REGISTER). A pull
 * is PULL (id) answered by the segment in CHUNK frames and PULL_REPLY, or
 * by PULL_REPLY alone saying why not. At most one pull per object runs on
 * an agent; what needs the object waits for it. Peers authenticate with
 * the cluster token as at the head. Sections: the records; serving; the
 * node port and peer connections; pulling; failures and deadlines. */
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

/* ---- the records ---- */

void sh_pull_init(sh_agent_t *a) {
  sh_map_init(&a->pulls);
  sh_map_init(&a->peers);
  a->node_fd = -1;
}

static void pull_free(sh_pull_t *p) {
  sh_free(p->tasks);
  sh_free(p->maps);
  sh_free(p);
}

void sh_pull_drop(sh_agent_t *a, sh_pull_t *p) {
  sh_map_del(&a->pulls, p->id);
  pull_free(p);
}

void sh_pull_close(sh_agent_t *a) {
  uint64_t id;
  void *v;
  for (size_t i = 0; sh_map_next(&a->pulls, &i, &id, &v);) pull_free(v);
  sh_map_close(&a->pulls);
  sh_map_close(&a->peers);
  if (a->node_fd >= 0) close(a->node_fd); /* its poll handle closed with the loop's */
  a->node_fd = -1;
}

sh_pull_t *sh_pull_new(sh_agent_t *a, uint64_t id, uint64_t size) {
  sh_pull_t *p = sh_calloc(1, sizeof *p);
  p->id = id;
  p->size = size;
  p->started_ms = uv_now(a->loop);
  if (sh_map_put(&a->pulls, id, p)) {
    sh_free(p);
    return NULL;
  }
  return p;
}

/* ---- serving: this agent holds the object ---- */

void sh_pull_serve(sh_agent_t *a, sh_conn_t *c, uint64_t id) {
  char why[600] = "";
  uint32_t st = SH_ST_OK;
  sh_obj_t *o = sh_map_get(&a->objects, id);
  if (!o || !o->stored || o->remote || o->status != SH_ST_OK) {
    st = SH_ST_LOST;
    snprintf(why, sizeof why, "node %u does not hold object %#llx (it was released, or it "
             "never had it)", a->node_id, (unsigned long long)id);
  } else if ((st = sh_store_resident(a, o, why, sizeof why)) == SH_ST_OK) {
    int rc = sh_store_send(a, c, id, o->size);
    if (rc) {
      st = SH_ST_LOST;
      snprintf(why, sizeof why, "node %u cannot read object %#llx: %s", a->node_id,
               (unsigned long long)id, sh_strerror(rc));
    }
  }
  if (sh_pull_reply_append(&c->out, id, st, st == SH_ST_OK ? o->size : 0, why))
    sh_conn_close(c, "out of memory answering a PULL");
  else sh_conn_mark_dirty(c);
}

void sh_pull_serve_frame(sh_conn_t *c, const sh_frame_t *f) {
  char why[96];
  if (f->hdr.type == SH_MSG_PULL && f->hdr.len == 0) {
    sh_pull_serve(c->agent, c, f->hdr.id);
    return;
  }
  if (f->hdr.type == SH_MSG_PULL) {
    sh_conn_fail(c, SH_EBODY, "malformed PULL body (it has none)");
    return;
  }
  snprintf(why, sizeof why, "unexpected %s frame from a node pulling objects",
           sh_msg_name(f->hdr.type));
  sh_conn_fail(c, SH_ETYPE, why);
}

/* ---- the node port ---- */

static void node_accept_cb(uv_poll_t *h, int status, int events);

int sh_pull_listen(sh_agent_t *a, int uplink_fd) {
  if (a->node_fd >= 0 || a->opts.node_port < 0) return 0;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  char host[NI_MAXHOST];
  if (getsockname(uplink_fd, (struct sockaddr *)&ss, &sl) ||
      getnameinfo((struct sockaddr *)&ss, sl, host, sizeof host, NULL, 0, NI_NUMERICHOST)) {
    sh_warn("no node port: cannot tell the uplink's local address: %s", strerror(errno));
    return -EINVAL;
  }
  int fd = sh_listen_tcp(host, a->opts.node_port, a->node_addr, sizeof a->node_addr);
  if (fd < 0) {
    sh_warn("no node port: cannot listen on %s port %d: %s; other nodes cannot pull from this "
            "one", host, a->opts.node_port, strerror(-fd));
    return fd;
  }
  ss = (struct sockaddr_storage){0};
  sl = sizeof ss;
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  a->node_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
  snprintf(a->node_addr, sizeof a->node_addr, ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u",
           host, a->node_port);
  a->node_fd = fd;
  uv_poll_init(a->loop, &a->node_poll, fd);
  a->node_poll.data = a;
  uv_poll_start(&a->node_poll, UV_READABLE, node_accept_cb);
  sh_info("node port: other nodes pull objects from %s", a->node_addr);
  return 0;
}

/* agent.c accepts it like its TCP port: TLS when the node has it (its own
 * certificate), the token challenge inside. */
static void node_accept_cb(uv_poll_t *h, int status, int events) {
  (void)events;
  sh_agent_t *a = h->data;
  if (status < 0 || a->stopping) return;
  sh_agent_accept(a, a->node_fd, 1, a->opts.tls_node);
}

/* ---- pulling from a peer ---- */

static void send_pull(sh_conn_t *c, uint64_t id) {
  if (sh_frame_append(&c->out, SH_MSG_PULL, 0, id, NULL, 0)) sh_conn_close(c, "out of memory");
  else sh_conn_mark_dirty(c);
}

/* The connection to node_id's port (addr), made when there is none. */
static sh_conn_t *peer_conn(sh_agent_t *a, uint32_t node_id, const char *addr) {
  sh_conn_t *c = sh_map_get(&a->peers, node_id);
  if (c && !c->closing) return c;
  char host[SH_ADDR_MAX], port[16];
  if (sh_split_address(addr, host, sizeof host, port, sizeof port)) return NULL;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV}, *res;
  if (getaddrinfo(host, port, &hints, &res)) return NULL;
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int rc = fd < 0 ? -errno : 0;
  if (!rc && connect(fd, res->ai_addr, res->ai_addrlen) < 0 && errno != EINPROGRESS) rc = -errno;
  freeaddrinfo(res);
  if (rc) {
    if (fd >= 0) close(fd);
    sh_warn("cannot connect to node %u at %s: %s", node_id, addr, strerror(-rc));
    return NULL;
  }
  char desc[128];
  snprintf(desc, sizeof desc, "node %u's port at %s", node_id, addr);
  c = sh_conn_create(a, fd, SH_ROLE_PULL, desc);
  snprintf(c->peer, sizeof c->peer, "%.63s", addr);
  c->peer_node = node_id;
  c->up = SH_UP_CONNECTING;
  c->last_rx_ms = uv_now(a->loop);
  sh_conn_poll(c, UV_READABLE | UV_WRITABLE);
  sh_map_put(&a->peers, node_id, c);
  return c;
}

void sh_pull_locate(sh_agent_t *a, uint64_t id, const sh_locate_t *l) {
  if (sh_map_get(&a->objects, id) || sh_pull_get(a, id)) return; /* here, or coming */
  sh_pull_t *p = sh_pull_new(a, id, l->size);
  if (!p) return;
  p->from = l->node_id;
  snprintf(p->addr, sizeof p->addr, "%s", l->addr);
  a->store.n_pulls++;
  p->conn = peer_conn(a, l->node_id, l->addr);
  if (!p->conn) {
    char why[200];
    snprintf(why, sizeof why, "cannot connect to node %u at %s to pull object %#llx",
             l->node_id, l->addr, (unsigned long long)id);
    sh_sched_pulled(a, p, SH_ST_LOST, why);
    return;
  }
  if (p->conn->up == SH_UP_READY) send_pull(p->conn, id);
  sh_debug("pulling object %#llx (%llu bytes) from node %u", (unsigned long long)id,
           (unsigned long long)l->size, l->node_id);
}

sh_pull_t *sh_pull_from_node(sh_agent_t *a, uint64_t id, uint64_t size, sh_node_t *n) {
  sh_pull_t *p = sh_pull_new(a, id, size);
  if (!p) return NULL;
  p->from = n->node_id;
  p->conn = n->conn;
  p->conn->last_rx_ms = uv_now(a->loop);
  a->store.n_pulls++;
  send_pull(n->conn, id);
  return p;
}

/* Connected: TLS first when the node has it; the peer's certificate must
 * name the address the head gave for it. */
void sh_pull_peer_connected(sh_conn_t *c) {
  char host[SH_ADDR_MAX], port[16];
  if (sh_conn_connected(c)) return;
  if (sh_split_address(c->peer, host, sizeof host, port, sizeof port)) {
    sh_conn_close(c, "the node port's address is not HOST:PORT");
    return;
  }
  sh_conn_tls_client(c, host);
}

/* The peer's challenge: our proof. */
static void peer_challenge(sh_conn_t *c, const sh_frame_t *f) {
  sh_conn_answer_challenge(c, f, c->nonce, c->my_nonce, "expected the node port's AUTH_CHALLENGE");
}

/* The peer's proof: then HELLO (role PEER) and every pull waiting for c. */
static void peer_proved(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  if (sh_conn_check_proof(c, f, c->nonce, c->my_nonce, "the peer node")) return;
  sh_hello_t h = {.role = SH_ROLE_PEER, .pid = (uint32_t)getpid()};
  if (sh_hello_append(&c->out, &h)) {
    sh_conn_close(c, "out of memory");
    return;
  }
  c->up = SH_UP_READY;
  uint64_t id;
  void *v;
  for (size_t i = 0; sh_map_next(&a->pulls, &i, &id, &v);)
    if (((sh_pull_t *)v)->conn == c) send_pull(c, id);
  sh_conn_mark_dirty(c);
}

void sh_pull_peer_frame(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  char why[600];
  c->last_rx_ms = uv_now(a->loop);
  if (f->hdr.type == SH_MSG_ERROR) {
    int n = f->hdr.len > 4 ? (int)f->hdr.len - 4 : 0;
    snprintf(why, sizeof why, "the peer refused: %.*s", n > 500 ? 500 : n, f->body + 4);
    sh_conn_close(c, why);
    return;
  }
  if (c->up == SH_UP_CHALLENGE) {
    peer_challenge(c, f);
    return;
  }
  if (c->up == SH_UP_AUTH_OK) {
    peer_proved(c, f);
    return;
  }
  if (f->hdr.type == SH_MSG_CHUNK) {
    if (sh_store_chunk(a, c, f->hdr.id, f->body, f->hdr.len, why, sizeof why))
      sh_warn("from %s: %s", c->desc, why);
    return;
  }
  if (f->hdr.type == SH_MSG_PULL_REPLY) {
    if (sh_pull_reply(a, c, f->hdr.id, f->body, f->hdr.len))
      sh_conn_fail(c, SH_EBODY, "malformed PULL_REPLY body");
    return;
  }
  snprintf(why, sizeof why, "unexpected %s frame from a node serving a pull",
           sh_msg_name(f->hdr.type));
  sh_conn_fail(c, SH_ETYPE, why);
}

/* ---- outcomes, failures and deadlines ---- */

int sh_pull_reply(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *body, uint32_t len) {
  sh_pull_reply_t r;
  if (sh_pull_reply_decode(body, len, &r)) return SH_EBODY;
  sh_pull_t *p = sh_pull_get(a, id);
  if (!p || p->conn != c) {
    /* Nobody waits any more: what arrived is dropped. */
    if (r.status == SH_ST_OK) sh_store_received(a, c, id, r.size);
    if (!sh_map_get(&a->objects, id)) sh_store_discard(a, id);
    return 0;
  }
  char why[700];
  if (r.status == SH_ST_OK && r.size == p->size && sh_store_received(a, c, id, r.size)) {
    sh_sched_pulled(a, p, SH_ST_OK, "");
    return 0;
  }
  if (r.status == SH_ST_OK)
    snprintf(why, sizeof why, "object %#llx did not arrive whole from %s (see the log for why)",
             (unsigned long long)id, c->desc);
  else
    snprintf(why, sizeof why, "pulling object %#llx from %s failed: %.*s", (unsigned long long)id,
             c->desc, (int)(r.text_len > 500 ? 500 : r.text_len), r.text);
  sh_sched_pulled(a, p, SH_ST_LOST, why);
  return 0;
}

/* Fails every pull carried by c (or, c NULL, those older than the
 * heartbeat timeout with no bytes for as long). */
static void fail_pulls(sh_agent_t *a, sh_conn_t *c, const char *how, uint64_t now) {
  uint64_t id;
  void *v;
  char why[800];
  for (size_t i = 0; sh_map_next(&a->pulls, &i, &id, &v);) {
    sh_pull_t *p = v;
    if (!p->conn) continue;
    if (c && p->conn != c) continue;
    if (!c && (now - p->started_ms < a->hb_timeout_ms ||
               now - p->conn->last_rx_ms < a->hb_timeout_ms))
      continue;
    snprintf(why, sizeof why, "pulling object %#llx from node %u failed: %s",
             (unsigned long long)id, p->from, how);
    p->conn = NULL;
    sh_sched_pulled(a, p, SH_ST_LOST, why);
    i = 0; /* the map changed under the walk */
  }
}

void sh_pull_conn_closed(sh_agent_t *a, sh_conn_t *c, const char *why) {
  if (c->role == SH_ROLE_PULL && sh_map_get(&a->peers, c->peer_node) == c)
    sh_map_del(&a->peers, c->peer_node);
  if (!a->pulls.count) return;
  char how[640];
  snprintf(how, sizeof how, "the connection closed (%s)",
           why ? why : "the node died or was stopped");
  fail_pulls(a, c, how, 0);
}

void sh_pull_tick(sh_agent_t *a, uint64_t now) {
  if (!a->pulls.count) return;
  char how[160];
  snprintf(how, sizeof how, "no bytes came for %.3g s (--heartbeat-timeout)",
           a->hb_timeout_ms / 1000.0);
  fail_pulls(a, NULL, how, now);
}

void sh_pull_uplink_gone(sh_agent_t *a) {
  uint64_t id;
  void *v;
  for (size_t i = 0; sh_map_next(&a->pulls, &i, &id, &v);) {
    sh_map_del(&a->pulls, id);
    pull_free(v);
    i = 0;
  }
}
