/* The STATUS reply: the node's state as a msgpack map, for `shoal status` and
 * the Python client. Keys are documented in docs/protocol.md. */
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/agent.h"

static int write_cb(void *data, const char *p, size_t n) {
  return sh_buf_append(data, p, n) ? -1 : 0;
}

static void key(msgpack_packer *pk, const char *k) {
  size_t n = strlen(k);
  msgpack_pack_str(pk, n);
  msgpack_pack_str_body(pk, k, n);
}

static void kv_u64(msgpack_packer *pk, const char *k, uint64_t v) {
  key(pk, k);
  msgpack_pack_uint64(pk, v);
}

static void kv_str(msgpack_packer *pk, const char *k, const char *v) {
  key(pk, k);
  key(pk, v);
}

static void pack_res(msgpack_packer *pk, const sh_res_t *r) {
  msgpack_pack_map(pk, 3 + r->ncustom);
  key(pk, "CPU");
  msgpack_pack_double(pk, r->cpu_milli / 1000.0);
  key(pk, "GPU");
  msgpack_pack_double(pk, r->gpu_milli / 1000.0);
  kv_u64(pk, "memory", r->memory);
  for (uint32_t i = 0; i < r->ncustom; i++) {
    key(pk, r->custom[i].name);
    msgpack_pack_double(pk, r->custom[i].milli / 1000.0);
  }
}

static void kv_bool(msgpack_packer *pk, const char *k, int v) {
  key(pk, k);
  v ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

static void kv_double(msgpack_packer *pk, const char *k, double v) {
  key(pk, k);
  msgpack_pack_double(pk, v);
}

/* One entry of the node list. */
static void pack_node(msgpack_packer *pk, uint32_t id, int alive, int draining, const char *addr,
                      const char *host, uint32_t pid, const char *why, const sh_res_t *total,
                      const sh_res_t *free, double load, uint64_t running, uint32_t workers) {
  msgpack_pack_map(pk, 12);
  kv_u64(pk, "node_id", id);
  kv_bool(pk, "alive", alive);
  kv_bool(pk, "draining", draining);
  kv_str(pk, "address", addr);
  kv_str(pk, "host", host);
  kv_u64(pk, "pid", pid);
  kv_str(pk, "dead_reason", why);
  key(pk, "resources_total");
  pack_res(pk, total);
  key(pk, "resources_free");
  pack_res(pk, free);
  kv_double(pk, "load", load);
  kv_u64(pk, "tasks_running", running);
  kv_u64(pk, "workers", workers);
}

/* This node first, then (on the head) every node that ever registered. */
static void pack_nodes(msgpack_packer *pk, sh_agent_t *a, double load) {
  char host[SH_HOST_MAX] = "?";
  gethostname(host, sizeof host);
  host[sizeof host - 1] = 0;
  uint64_t running = 0, id;
  void *v;
  for (size_t i = 0; sh_map_next(&a->tasks, &i, &id, &v);)
    running += ((sh_task_t *)v)->state == SH_TASK_SENT;
  msgpack_pack_array(pk, 1 + a->nodes.count);
  pack_node(pk, a->node_id, 1, a->local_draining, a->tcp_addr[0] ? a->tcp_addr : a->sock_path,
            host, (uint32_t)getpid(), "", &a->opts.resources, &a->avail, load, running,
            (uint32_t)a->opts.num_workers);
  for (size_t i = 0; sh_map_next(&a->nodes, &i, &id, &v);) {
    const sh_node_t *n = v;
    const sh_head_node_t *hn = sh_head_node(&a->head, n->node_id);
    pack_node(pk, n->node_id, n->alive, n->draining, n->addr, n->host, n->pid, n->dead_reason,
              &n->total, hn && n->alive ? &hn->free : &n->hb.free, n->hb.load_milli / 1000.0,
              n->ntasks, n->num_workers);
  }
}

static void pack_workers(msgpack_packer *pk, sh_agent_t *a) {
  uint64_t n = 0, idle = 0, busy = 0, actors = 0, leased = 0;
  sh_queue_t *q;
  sh_queue_foreach(q, &a->workers) {
    sh_worker_t *w = sh_queue_data(q, sh_worker_t, link);
    n++;
    if (w->dedicated) actors++;
    else if (w->ninflight || w->leased) busy++;
    else idle++;
    leased += w->leased != 0;
  }
  msgpack_pack_map(pk, 9);
  kv_u64(pk, "pool_size", (uint64_t)a->opts.num_workers);
  kv_u64(pk, "alive", n);
  kv_u64(pk, "idle", idle);
  kv_u64(pk, "busy", busy);
  kv_u64(pk, "actors", actors);
  kv_u64(pk, "deaths", a->n_worker_deaths);
  /* Leased to a driver's lane (lane.c): busy for everyone else. */
  kv_u64(pk, "leased", leased);
  kv_u64(pk, "lane_tasks", a->n_lane_done);
  key(pk, "list");
  msgpack_pack_array(pk, n);
  sh_queue_foreach(q, &a->workers) {
    sh_worker_t *w = sh_queue_data(q, sh_worker_t, link);
    msgpack_pack_map(pk, 6);
    kv_u64(pk, "index", (uint64_t)w->index);
    kv_u64(pk, "pid", (uint64_t)w->pid);
    kv_str(pk, "state", w->dedicated ? "actor" : w->ninflight || w->leased ? "busy" : "idle");
    kv_u64(pk, "leased_to", w->leased && w->lessee ? w->lessee->client_id : 0);
    kv_u64(pk, "inflight", w->ninflight);
    kv_u64(pk, "done", w->done);
  }
}

static void pack_tasks(msgpack_packer *pk, sh_agent_t *a) {
  uint64_t queued = 0, waiting = 0, running = 0, id;
  void *v;
  for (size_t i = 0; sh_map_next(&a->tasks, &i, &id, &v);) {
    sh_task_t *t = v;
    if (t->state == SH_TASK_WAITING) waiting++;
    else if (t->state == SH_TASK_READY) queued++;
    else running++;
  }
  msgpack_pack_map(pk, 7);
  kv_u64(pk, "queued", queued);
  kv_u64(pk, "waiting", waiting);
  kv_u64(pk, "running", running);
  kv_u64(pk, "done", a->n_done);
  kv_u64(pk, "failed", a->n_failed);
  kv_u64(pk, "retried", a->n_retried);
  kv_u64(pk, "submitted", a->n_submitted);
}

static void pack_store(msgpack_packer *pk, sh_agent_t *a) {
  const sh_store_t *s = &a->store;
  msgpack_pack_map(pk, 18);
  kv_str(pk, "dir", s->dir);
  kv_str(pk, "spill_dir", s->spill_dir);
  kv_u64(pk, "capacity", s->capacity);
  kv_u64(pk, "inline_threshold", s->inline_threshold);
  kv_u64(pk, "used", s->used);
  kv_u64(pk, "recycle_pool", sh_store_pool_bytes(a)); /* counted in capacity, not in used */
  kv_u64(pk, "spilled_bytes", s->spilled);
  kv_u64(pk, "objects", s->nstored);
  kv_u64(pk, "spilled_objects", s->nspilled);
  kv_u64(pk, "spills", s->n_spills);
  kv_u64(pk, "restores", s->n_restores);
  kv_u64(pk, "full", s->n_full);
  kv_u64(pk, "sent_objects", s->n_sent);
  kv_u64(pk, "sent_bytes", s->sent_bytes);
  kv_u64(pk, "received_objects", s->n_received);
  kv_u64(pk, "pulls", s->n_pulls);
  kv_u64(pk, "rebuilds", s->n_rebuilds);
  kv_u64(pk, "received_bytes", s->received_bytes);
}

/* Every object the agent keeps: what `shoal memory` lists. */
static void pack_object_list(msgpack_packer *pk, sh_agent_t *a) {
  uint64_t id, now = sh_now_ns();
  void *v;
  msgpack_pack_array(pk, a->objects.count);
  for (size_t i = 0; sh_map_next(&a->objects, &i, &id, &v);) {
    const sh_obj_t *o = v;
    const sh_conn_t *c = sh_agent_client(a, id);
    msgpack_pack_map(pk, 14);
    kv_u64(pk, "id", id);
    kv_u64(pk, "node_id", o->remote && o->nnodes ? o->nodes[0] : a->node_id);
    kv_u64(pk, "size", o->stored ? o->size : o->len);
    kv_str(pk, "where", !o->stored ? "inline" : o->remote ? (o->nnodes ? "remote" : "lost")
                        : o->spilled ? "spilled" : "memory");
    /* Every node holding a copy: this one (unless kept only elsewhere), then
     * the nodes the head knows to hold one. */
    key(pk, "nodes");
    msgpack_pack_array(pk, (o->remote ? 0 : 1) + o->nnodes);
    if (!o->remote) msgpack_pack_uint64(pk, a->node_id);
    for (uint32_t j = 0; j < o->nnodes; j++) msgpack_pack_uint64(pk, o->nodes[j]);
    key(pk, "rebuildable");
    o->recipe ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    kv_str(pk, "status", sh_status_name(o->status));
    kv_u64(pk, "owner_client", (uint32_t)(id >> 40));
    kv_u64(pk, "owner_pid", c ? c->pid : 0);
    key(pk, "held_by_owner");
    o->released ? msgpack_pack_false(pk) : msgpack_pack_true(pk);
    kv_u64(pk, "pending_tasks", o->pins);
    kv_u64(pk, "running_tasks", o->busy);
    kv_u64(pk, "mappings", o->maps);
    key(pk, "idle_s");
    msgpack_pack_double(pk, o->last_use_ns ? (now - o->last_use_ns) / 1e9 : 0.0);
  }
}

int sh_status_encode(sh_agent_t *a, sh_buf_t *out, unsigned flags) {
  size_t start = out->len;
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, write_cb);
  double load[1] = {0};
  getloadavg(load, 1);
  uint64_t alive = 0, dead = 0, id;
  void *v;
  for (size_t i = 0; sh_map_next(&a->actors, &i, &id, &v);)
    ((sh_actor_t *)v)->state == SH_ACTOR_DEAD ? dead++ : alive++;
  int nkeys = 12 + !!(flags & SH_STATUS_OBJECTS) + !!a->opts.head_address;
  msgpack_pack_map(&pk, nkeys);
  kv_u64(&pk, "node_id", a->node_id);
  kv_u64(&pk, "pid", (uint64_t)getpid());
  kv_str(&pk, "socket", a->sock_path);
  key(&pk, "uptime_s");
  msgpack_pack_double(&pk, (sh_now_ns() - a->started_ns) / 1e9);
  kv_u64(&pk, "drivers", a->clients.count);
  key(&pk, "nodes");
  pack_nodes(&pk, a, load[0]);
  if (a->opts.head_address) {
    key(&pk, "head");
    msgpack_pack_map(&pk, 4);
    kv_str(&pk, "address", a->opts.head_address);
    kv_str(&pk, "node_port", a->node_addr); /* where other nodes pull from; "" none */
    kv_bool(&pk, "connected", a->uplink && a->uplink->up == SH_UP_READY);
    kv_str(&pk, "error", a->up_why);
  }
  key(&pk, "load");
  msgpack_pack_double(&pk, load[0]);
  key(&pk, "workers");
  pack_workers(&pk, a);
  key(&pk, "tasks");
  pack_tasks(&pk, a);
  key(&pk, "objects");
  msgpack_pack_map(&pk, 2);
  kv_u64(&pk, "count", a->objects.count);
  kv_u64(&pk, "bytes", a->obj_bytes);
  key(&pk, "store");
  pack_store(&pk, a);
  if (flags & SH_STATUS_OBJECTS) {
    key(&pk, "object_list");
    pack_object_list(&pk, a);
  }
  key(&pk, "actors");
  msgpack_pack_map(&pk, 2);
  kv_u64(&pk, "alive", alive);
  kv_u64(&pk, "dead", dead);
  /* msgpack's packer reports allocation failure through write_cb; a short
   * buffer shows up as a shorter length than expected only on OOM. */
  return out->len > start ? 0 : -1;
}
