/* The local scheduler: tasks from SUBMIT to RESULT, their dependencies, the
 * objects the agent keeps, actors, and placement on workers. Sections:
 * objects; finishing a task; submit; placement; results and deaths; cancel,
 * kill and client departure. All on the loop thread. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/agent.h"
#include "node/gpus.h"

#define PIPELINE_MAX 256
#define PIPELINE_TARGET_NS 1000000ull /* keep ~1 ms of work queued per worker */

/* Freed task and object records kept for reuse: at most this many bytes. */
#define BLOCKS_KEPT_MAX (32u << 20)

void sh_sched_init(sh_agent_t *a) {
  sh_recycle_init(&a->blocks, BLOCKS_KEPT_MAX);
  sh_map_init(&a->tasks);
  sh_map_init(&a->objects);
  sh_map_init(&a->funcs);
  sh_map_init(&a->waiters);
  sh_map_init(&a->actors);
  sh_queue_init(&a->shapes);
  sh_queue_init(&a->actors_dirty);
}

static sh_req_t task_req(const sh_task_t *t) {
  sh_req_t q = {t->cpu_milli, t->gpu_milli, t->memory, t->ncustom, t->custom};
  return q;
}

static void task_free(sh_agent_t *a, sh_task_t *t) {
  sh_free(t->custom);
  sh_recycle_put(&a->blocks, t, t->blk);
}

/* One more attempt for t (it may run again): a head journals it, so that a
 * head restarted after it knows (recover.c). */
static void charge(sh_agent_t *a, sh_task_t *t) {
  t->attempts++;
  a->n_retried++;
  sh_recover_charge(a, t->id, t->attempts);
}

/* ---- objects ---- */

static void recipe_drop(sh_agent_t *a, sh_obj_t *o);

static void obj_free(sh_agent_t *a, uint64_t id, sh_obj_t *o) {
  sh_map_del(&a->objects, id);
  recipe_drop(a, o);
  a->obj_bytes -= o->len;
  sh_store_free(a, o);
  /* Head: the nodes holding a copy drop theirs. */
  uint8_t b[8];
  sh_put_u64(b, id);
  for (uint32_t i = 0; i < o->nnodes; i++) {
    sh_node_t *n = sh_map_get(&a->nodes, o->nodes[i]);
    if (n && n->conn && !sh_frame_append(&n->conn->out, SH_MSG_RELEASE, 0, 0, b, 8))
      sh_conn_mark_dirty(n->conn);
  }
  sh_free(o->nodes);
  sh_recycle_put(&a->blocks, o, o->blk);
}

/* Nothing refers to o any more: no handle, no pending task, no mapping. */
static int obj_unused(const sh_obj_t *o) { return o->released && !o->pins && !o->maps; }

static void obj_unpin(sh_agent_t *a, uint64_t id) {
  sh_obj_t *o = sh_map_get(&a->objects, id);
  if (!o) return;
  if (o->pins) o->pins--;
  if (obj_unused(o)) obj_free(a, id, o);
}

static sh_obj_t *obj_store(sh_agent_t *a, uint64_t id, uint32_t status, int32_t code,
                           const uint8_t *p, uint32_t n) {
  uint8_t blk;
  sh_obj_t *o = sh_recycle_get(&a->blocks, sizeof *o + n, &blk);
  if (!o) return NULL;
  memset(o, 0, sizeof *o);
  o->blk = blk;
  o->id = id;
  o->status = status;
  o->code = code;
  o->len = n;
  sh_queue_init(&o->lru);
  if (n) memcpy(o->data, p, n);
  if (sh_map_put(&a->objects, id, o)) {
    sh_recycle_put(&a->blocks, o, blk);
    return NULL;
  }
  a->obj_bytes += n;
  return o;
}

void sh_sched_put(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p, uint32_t n) {
  sh_obj_t *old = sh_map_get(&a->objects, id);
  /* A copy kept from before a head restart: the new head owns it now. */
  if (old && c->role == SH_ROLE_UPLINK) old->released = 0;
  if (old || sh_map_get(&a->tasks, id)) return;
  sh_obj_t *o = obj_store(a, id, SH_ST_OK, 0, p, n);
  if (!o) sh_warn("out of memory storing a %u-byte object from %s", n, c->desc);
  /* A dependency from the head stays until the head releases it (the head
   * sends each object to a node once, however many tasks there need it). */
}

void sh_sched_put_segment(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p,
                          uint32_t n) {
  uint64_t size = n == 8 ? sh_get_u64(p) : 0;
  int whole = n == 8 && sh_store_received(a, c, id, size);
  if (sh_map_get(&a->objects, id) || sh_map_get(&a->tasks, id)) return;
  char why[768] = "";
  uint32_t st = SH_ST_OK;
  sh_obj_t *o = whole ? obj_store(a, id, SH_ST_OK, 0, NULL, 0) : NULL;
  if (!whole) {
    st = SH_ST_LOST;
    snprintf(why, sizeof why, "object %#llx did not arrive whole from the head (see this "
             "node's log for why)", (unsigned long long)id);
  } else if (!o) {
    st = SH_ST_STORE_FULL;
    snprintf(why, sizeof why, "node %u is out of memory", a->node_id);
  } else if ((st = sh_store_seal(a, o, size, why, sizeof why)) != SH_ST_OK) {
    obj_free(a, id, o);
    o = NULL;
  }
  if (!o) {
    /* Kept as a failed object: the task that needs it fails with the
     * reason; the head releases it like any other. */
    sh_store_discard(a, id);
    o = obj_store(a, id, st, 0, (const uint8_t *)why, (uint32_t)strlen(why));
    sh_warn("%s (from %s)", why, c->desc);
  }
}

/* A restarted head, in its grace period: a driver's PUT of a stored object
 * that is not in this store is a result kept on a node (ON_NODE) before the
 * restart. The record is the node's report (HAVE), or waits for it; one
 * no node reports reads as lost. 1 when the PUT is answered so. */
static sh_obj_t *remote_placeholder(sh_agent_t *a, uint64_t id, uint64_t size);
static int claim_remote(sh_agent_t *a, uint64_t id, uint64_t size) {
  if (!a->rec.grace) return 0;
  sh_obj_t *o = sh_map_get(&a->objects, id);
  if (o && o->remote && sh_map_del(&a->rec.orphans, id)) {
    o->released = 0;
    if (!o->size) o->size = size;
    a->rec.n_claimed++;
    return 1;
  }
  if (o || sh_map_get(&a->tasks, id) || sh_store_exists(a, id)) return 0;
  if (!(o = remote_placeholder(a, id, size))) return 0;
  return 1;
}

void sh_sched_put_stored(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p,
                         uint32_t n) {
  char why[768] = "";
  uint32_t st = SH_ST_OK;
  sh_obj_t *o = NULL;
  if (n != 8) {
    st = SH_ST_BAD_REQUEST;
    snprintf(why, sizeof why, "a stored PUT carries the u64 segment size, not %u bytes", n);
    sh_store_discard(a, id);
  } else if (claim_remote(a, id, sh_get_u64(p))) {
    /* A result kept on a node across a head restart: the driver still holds it. */
  } else if (sh_map_get(&a->objects, id) || sh_map_get(&a->tasks, id)) {
    st = SH_ST_BAD_REQUEST; /* the segment is the existing object's: leave it */
    snprintf(why, sizeof why, "object id %#llx is already in use", (unsigned long long)id);
  } else if (!(o = obj_store(a, id, SH_ST_OK, 0, NULL, 0))) {
    st = SH_ST_STORE_FULL;
    snprintf(why, sizeof why, "the agent is out of memory");
    sh_store_discard(a, id);
  } else if ((st = sh_store_seal(a, o, sh_get_u64(p), why, sizeof why)) != SH_ST_OK) {
    obj_free(a, id, o);
  }
  if (sh_put_reply_append(&c->out, id, st, why)) sh_conn_close(c, "out of memory queuing a reply");
  else sh_conn_mark_dirty(c);
}

static uint32_t need_obj(sh_agent_t *a, sh_obj_t *o, sh_task_t *t, uint32_t cid, char *why,
                         size_t n);

void sh_sched_map(sh_agent_t *a, sh_conn_t *c, uint64_t id) {
  char why[768] = "";
  uint32_t st = SH_ST_OK;
  sh_obj_t *o = sh_map_get(&a->objects, id);
  if (!o) {
    st = SH_ST_LOST;
    snprintf(why, sizeof why, "object %#llx is unknown to the cluster: it was released (its "
             "Future was garbage collected) or never existed", (unsigned long long)id);
  } else if (!o->stored || o->status != SH_ST_OK) {
    st = SH_ST_BAD_REQUEST;
    snprintf(why, sizeof why, "object %#llx is not in the object store", (unsigned long long)id);
  } else if (o->remote) {
    /* Head: pulled from a node (or made again) first; answered then. */
    if ((st = need_obj(a, o, NULL, c->client_id, why, sizeof why)) == SH_ST_OK) return;
  } else if ((st = sh_store_resident(a, o, why, sizeof why)) == SH_ST_OK) {
    o->maps++;
  }
  if (sh_map_reply_append(&c->out, id, st, st == SH_ST_OK ? o->size : 0, why))
    sh_conn_close(c, "out of memory queuing a reply");
  else sh_conn_mark_dirty(c);
}

void sh_sched_unmap(sh_agent_t *a, uint64_t id) {
  sh_obj_t *o = sh_map_get(&a->objects, id);
  if (!o || !o->maps) return;
  o->maps--;
  if (obj_unused(o)) obj_free(a, id, o);
}

void sh_sched_func(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p, uint32_t n) {
  if (sh_map_get(&a->funcs, id)) return;
  sh_func_t *f = sh_try_malloc(sizeof *f + n);
  if (!f) {
    sh_warn("out of memory registering a %u-byte function from %s", n, c->desc);
    return;
  }
  memset(f, 0, sizeof *f); /* every measurement starts at "none yet" */
  f->len = n;
  memcpy(f->data, p, n);
  if (sh_map_put(&a->funcs, id, f)) sh_free(f);
}

void sh_sched_release(sh_agent_t *a, uint64_t id) {
  sh_obj_t *o = sh_map_get(&a->objects, id);
  if (o) {
    o->released = 1;
    if (obj_unused(o)) obj_free(a, id, o);
    return;
  }
  sh_task_t *t = sh_map_get(&a->tasks, id);
  if (t) {
    t->released = 1;
  } else if (a->rec.grace) {
    /* Released while the head was down: a segment of the store taken over
     * goes now, and a node that reports the object later drops it. */
    sh_store_discard(a, id);
    sh_map_put(&a->rec.released, id, (void *)1);
  }
}

/* ---- finishing a task ---- */

static void make_ready(sh_agent_t *a, sh_task_t *t);
static void fail_queue(sh_agent_t *a, sh_queue_t *q, uint32_t status, const char *why);
static void actor_die(sh_agent_t *a, sh_actor_t *ac, const char *why);
static void actor_free(sh_agent_t *a, sh_actor_t *ac);
static int actor_retire_if_idle(sh_agent_t *a, sh_actor_t *ac);

/* Removes t from the waiter list of `dep`; 1 if it was there. */
static int unwait(sh_agent_t *a, uint64_t dep, sh_task_t *t) {
  sh_waiters_t *wl = sh_map_get(&a->waiters, dep);
  if (!wl) return 0;
  for (uint32_t i = 0; i < wl->n; i++) {
    if (wl->t[i] != t) continue;
    wl->t[i] = wl->t[--wl->n];
    if (!wl->n) {
      sh_map_del(&a->waiters, dep);
      sh_free(wl);
    }
    return 1;
  }
  return 0;
}

/* t left its worker: its stored dependencies may be spilled again. */
static void deps_unbusy(sh_agent_t *a, sh_task_t *t) {
  const uint8_t *d = sh_task_deps(t);
  for (uint32_t i = 0; i < t->ndeps; i++) {
    sh_obj_t *o = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (o && o->stored && o->busy) o->busy--;
  }
}

/* Drops what t holds on its dependencies: a pin on each available one, a
 * place on the waiter list of each missing one. */
static void unpark(sh_agent_t *a, sh_task_t *t);

static void release_deps(sh_agent_t *a, sh_task_t *t) {
  if (t->unpinned) return;
  const uint8_t *d = sh_task_deps(t);
  if (t->parked) unpark(a, t);
  if (t->state == SH_TASK_SENT) deps_unbusy(a, t);
  for (uint32_t i = 0; i < t->ndeps; i++) {
    uint64_t dep = sh_get_u64(d + 8 * i);
    if (t->missing && unwait(a, dep, t)) continue;
    obj_unpin(a, dep);
  }
}

/* Node: keeps a result for the head while it is gone. 1 when kept. */
static int hold_result(sh_agent_t *a, uint64_t id, uint32_t status, int32_t code,
                       const uint8_t *p, uint32_t n) {
  sh_held_t *h = sh_try_malloc(sizeof *h + n);
  if (!h) {
    sh_warn("out of memory keeping the result of %#llx for the head", (unsigned long long)id);
    return 0;
  }
  h->id = id;
  h->status = status;
  h->code = code;
  h->len = n;
  if (n) memcpy(h->data, p, n);
  h->next = a->up_held;
  a->up_held = h;
  return 1;
}

/* Node: copies the RESULT frame just appended to the uplink (its last
 * `len` bytes) to the recent results, sent again after a rejoin. */
static void recent_add(sh_agent_t *a, sh_conn_t *c, size_t len) {
  if (!len || len > sh_buf_avail(&c->out)) return;
  sh_buf_append(&a->up_recent[0], c->out.data + c->out.len - len, len);
}

/* Sends the outcome to the owner, keeps the value for dependents and for the
 * owner's later use, wakes (or fails) tasks waiting for it, frees t. t must
 * be on no queue. */
static void wake_waiters(sh_agent_t *a, uint64_t id, sh_waiters_t *wl, sh_obj_t *o,
                         uint32_t status, int32_t code, const uint8_t *p, uint32_t n);
static void rebuild_done(sh_agent_t *a, sh_task_t *t, uint32_t status, int32_t code,
                         const uint8_t *p, uint32_t n);
static sh_obj_t *remote_obj(sh_agent_t *a, sh_task_t *t, uint64_t size);

static void finish(sh_agent_t *a, sh_task_t *t, uint32_t status, int32_t code,
                   const uint8_t *p, uint32_t n) {
  if (t->rebuild) {
    rebuild_done(a, t, status, code, p, n);
    return;
  }
  uint64_t id = t->id;
  sh_map_del(&a->tasks, id);
  sh_conn_t *up = a->uplink && a->uplink->up == SH_UP_READY ? a->uplink : NULL;
  sh_conn_t *c = t->orphan || t->restart ? NULL : t->remote ? up : sh_agent_client(a, id);
  sh_waiters_t *wl = sh_map_del(&a->waiters, id);
  int keep = wl || (!t->released && !t->orphan && c);
  char why[768];
  sh_obj_t *o = NULL;
  /* A node keeps a large result of the head's task in its own store and
   * tells the head where it is; the head owns it (RELEASE frees it). While
   * the head is gone (it may come back, restarted), the result is held for
   * it: a large one stays here all the same and is reported when the node
   * rejoins. */
  int holding = t->remote && !t->orphan && !t->restart && !c && a->up_lost_ms;
  int on_node = t->remote && (c || holding) && status == SH_ST_OK && code == SH_CODE_STORED;
  if (on_node) keep = 1;
  if (holding && !on_node) hold_result(a, id, status, code, p, n);
  uint8_t size8[8];
  if (status == SH_ST_OK && code == SH_CODE_ON_NODE && n == 8) {
    /* Head: a node keeps the value; here is only where it is. */
    o = remote_obj(a, t, sh_get_u64(p));
    code = SH_CODE_STORED; /* what the driver is told: MAP it */
    memcpy(size8, p, 8);
    p = size8;
    if (o && !keep) o->released = 1;
  } else if (status == SH_ST_OK && code == SH_CODE_STORED) {
    /* The value is a segment the worker wrote: seal it, or drop it. */
    uint32_t st = n == 8 ? SH_ST_OK : SH_ST_BAD_REQUEST;
    if (st) snprintf(why, sizeof why, "the worker sent a malformed stored result");
    if (!st && keep && !(o = obj_store(a, id, status, code, NULL, 0))) {
      st = SH_ST_STORE_FULL;
      snprintf(why, sizeof why, "the agent is out of memory");
    }
    if (o && (st = sh_store_seal(a, o, sh_get_u64(p), why, sizeof why)) != SH_ST_OK) {
      obj_free(a, id, o);
      o = NULL;
    }
    if (!o) sh_store_discard(a, id);
    if (st) {
      status = st;
      code = 0;
      p = (const uint8_t *)why;
      n = (uint32_t)strlen(why);
    }
  } else if (status == SH_ST_CRASHED || status == SH_ST_TIMEOUT || status == SH_ST_CANCELLED) {
    sh_store_discard(a, id); /* a segment the dead attempt may have left */
  }
  if (status == SH_ST_OK) a->n_done++;
  else a->n_failed++;
  if (on_node && status == SH_ST_OK && !c) {
    hold_result(a, id, SH_ST_OK, SH_CODE_ON_NODE, p, 8); /* o stays, owned by the head */
  } else if (on_node && status == SH_ST_OK) {
    size_t before = sh_buf_avail(&c->out);
    if (sh_result_append(&c->out, id, SH_ST_OK, SH_CODE_ON_NODE, p, 8))
      sh_conn_close(c, "out of memory queuing a result");
    else sh_conn_mark_dirty(c);
    recent_add(a, c, sh_buf_avail(&c->out) - before);
    c = NULL;
  } else if (on_node) {
    if (holding) hold_result(a, id, status, code, p, n);
    keep = wl != NULL; /* the failure goes to the head; nothing stays here */
  }
  if (c) {
    size_t before = sh_buf_avail(&c->out);
    if (sh_result_append(&c->out, id, status, code, p, n))
      sh_conn_close(c, "out of memory queuing a result");
    else sh_conn_mark_dirty(c);
    if (t->remote) recent_add(a, c, sh_buf_avail(&c->out) - before);
  }
  if (keep && !o) o = obj_store(a, id, status, code, p, n);
  if (o && !c && !(on_node && status == SH_ST_OK)) o->released = 1; /* nobody can release it */
  release_deps(a, t);
  if (t->kind == SH_KIND_ACTOR_CREATE && status != SH_ST_OK) {
    sh_actor_t *ac = sh_map_get(&a->actors, id);
    if (ac && ac->state != SH_ACTOR_DEAD) {
      char why[256];
      if (status == SH_ST_ERROR)
        snprintf(why, sizeof why, "the actor's constructor raised an exception (the "
                 "creation future holds it)");
      else snprintf(why, sizeof why, "the actor could not be created: %.*s", (int)(n < 180 ? n : 180), p);
      ac->create = NULL;
      actor_die(a, ac, why);
    }
  } else if (t->kind == SH_KIND_ACTOR_CREATE) {
    sh_actor_t *ac = sh_map_get(&a->actors, id);
    if (ac && ac->state == SH_ACTOR_PENDING) ac->state = SH_ACTOR_ALIVE;
  }
  task_free(a, t);
  if (!wl && o && obj_unused(o)) obj_free(a, id, o);
  else wake_waiters(a, id, wl, o, status, code, p, n);
}

/* Wakes the tasks of wl (waiting for object id, now o, or failed with
 * status, code and payload p/n when o is NULL or status is not OK). */
static void wake_waiters(sh_agent_t *a, uint64_t id, sh_waiters_t *wl, sh_obj_t *o,
                         uint32_t status, int32_t code, const uint8_t *p, uint32_t n) {
  if (!wl) return;
  for (uint32_t i = 0; i < wl->n; i++) {
    sh_task_t *w = wl->t[i];
    if (status == SH_ST_OK && o) {
      o->pins++;
      if (--w->missing == 0) make_ready(a, w);
      continue;
    }
    /* A failed dependency fails the dependent the same way, unrun. */
    w->missing--;
    sh_queue_remove(&w->link);
    if (o) o->pins++; /* release_deps below unpins this one like the others */
    /* No object: a failure given here (a pull that failed), or a value that
     * could not be kept (out of memory). */
    int oom = !o && status == SH_ST_OK;
    finish(a, w, oom ? SH_ST_LOST : status, oom ? 0 : code,
           oom ? (const uint8_t *)"out of memory keeping a dependency" : p, oom ? 34 : n);
  }
  sh_free(wl);
  if (o && obj_unused(o)) obj_free(a, id, o);
}

void sh_task_fail(sh_agent_t *a, sh_task_t *t, uint32_t status, int32_t code, const char *msg) {
  finish(a, t, status, code, (const uint8_t *)msg, (uint32_t)strlen(msg));
}

/* Answers a SUBMIT that never became a task. */
static void reject(sh_agent_t *a, sh_conn_t *c, uint64_t id, uint32_t status, const char *msg) {
  a->n_failed++;
  sh_result_append(&c->out, id, status, 0, msg, strlen(msg));
  sh_conn_mark_dirty(c);
}

/* ---- submit ---- */

/* Fails a ready task that cannot be placed (t on no queue); an actor's
 * creation takes its actor with it. */
static void fail_unplaced(sh_agent_t *a, sh_task_t *t, uint32_t status, const char *why) {
  if (t->kind == SH_KIND_ACTOR_CREATE) {
    sh_actor_t *ac = sh_map_get(&a->actors, t->id);
    if (ac) {
      ac->create = NULL;
      actor_die(a, ac, why);
    }
  }
  sh_task_fail(a, t, status, 0, why);
}

/* ---- the ready queues, one per shape ---- */

static int pipelinable(const sh_task_t *t);

static int shape_is(const sh_shape_t *s, const sh_task_t *t) {
  if (s->cpu_milli != t->cpu_milli || s->gpu_milli != t->gpu_milli || s->memory != t->memory ||
      s->kind != t->kind || s->timed != (t->timeout_ms != 0) || s->ncustom != t->ncustom ||
      s->fn_id != (pipelinable(t) ? t->fn_id : 0))
    return 0;
  for (uint32_t i = 0; i < t->ncustom; i++)
    if (s->custom[i].milli != t->custom[i].milli || strcmp(s->custom[i].name, t->custom[i].name))
      return 0;
  return 1;
}

/* t's shape, made when new (NULL when out of memory). */
static sh_shape_t *shape_of(sh_agent_t *a, const sh_task_t *t) {
  sh_queue_t *q;
  sh_queue_foreach(q, &a->shapes) {
    sh_shape_t *s = sh_queue_data(q, sh_shape_t, link);
    if (shape_is(s, t)) return s;
  }
  sh_shape_t *s = sh_try_malloc(sizeof *s + t->ncustom * sizeof(sh_custom_t));
  if (!s) return NULL;
  sh_queue_init(&s->tasks);
  s->cpu_milli = t->cpu_milli;
  s->gpu_milli = t->gpu_milli;
  s->memory = t->memory;
  s->kind = t->kind;
  s->timed = t->timeout_ms != 0;
  s->fn_id = pipelinable(t) ? t->fn_id : 0;
  s->ncustom = t->ncustom;
  if (t->ncustom) memcpy(s->custom, t->custom, t->ncustom * sizeof(sh_custom_t));
  sh_queue_insert_tail(&a->shapes, &s->link);
  return s;
}

/* Queues t to be placed: behind the others of its shape, or in front. */
static void ready_push(sh_agent_t *a, sh_task_t *t, int front) {
  sh_shape_t *s = shape_of(a, t);
  if (!s) {
    sh_task_fail(a, t, SH_ST_BAD_REQUEST, 0, "the daemon is out of memory");
    return;
  }
  if (front) sh_queue_insert_head(&s->tasks, &t->link);
  else sh_queue_insert_tail(&s->tasks, &t->link);
  a->need_schedule = 1;
}

/* Puts the tasks of `redo` in front of their shapes, keeping their order. */
static void ready_prepend(sh_agent_t *a, sh_queue_t *redo) {
  while (!sh_queue_empty(redo)) {
    sh_task_t *t = sh_queue_data(redo->prev, sh_task_t, link);
    sh_queue_remove(&t->link);
    ready_push(a, t, 1);
  }
}

static int charge_resent(sh_agent_t *a, sh_task_t *t);
static int resent_live_actor(sh_agent_t *a, sh_conn_t *c, uint64_t id, const sh_submit_t *s);
static int claim_orphan(sh_agent_t *a, sh_conn_t *c, uint64_t id);
static void bind_remote(sh_agent_t *a, sh_node_t *n, sh_task_t *t);
static void actor_on_node(sh_agent_t *a, sh_actor_t *ac, sh_node_t *n, const sh_task_t *create);

static void make_ready(sh_agent_t *a, sh_task_t *t) {
  t->state = SH_TASK_READY;
  if (t->gated) {
    if (a->rec.gate) { /* the nodes that may hold it are not all back */
      sh_queue_insert_tail(&a->rec.held, &t->link);
      return;
    }
    t->gated = 0;
    if (charge_resent(a, t)) return;
  }
  if (t->kind == SH_KIND_ACTOR_CALL) {
    sh_actor_t *ac = sh_map_get(&a->actors, t->actor_id);
    if (ac && !sh_queue_linked(&ac->dirty)) sh_queue_insert_tail(&a->actors_dirty, &ac->dirty);
  } else {
    ready_push(a, t, 0);
  }
  a->need_schedule = 1;
}

/* Checks the dependencies of a submit: 0 when all exist (done or pending), or
 * a status and message for the first that failed or is unknown. */
static uint32_t check_deps(sh_agent_t *a, const sh_submit_t *s, const sh_obj_t **failed,
                           char *why, size_t n) {
  for (uint32_t i = 0; i < s->ndeps; i++) {
    uint64_t dep = sh_get_u64(s->deps + 8 * i);
    const sh_obj_t *o = sh_map_get(&a->objects, dep);
    if (o && o->status != SH_ST_OK) {
      *failed = o;
      return o->status;
    }
    if (!o && !sh_map_get(&a->tasks, dep) && !sh_pull_get(a, dep)) {
      snprintf(why, n, "object %#llx that this task depends on is unknown to the cluster: it "
               "was released (its Future was garbage collected) or never existed",
               (unsigned long long)dep);
      return SH_ST_LOST;
    }
  }
  return SH_ST_OK;
}

static int add_waiter(sh_agent_t *a, uint64_t dep, sh_task_t *t) {
  sh_waiters_t *wl = sh_map_get(&a->waiters, dep);
  if (!wl || wl->n == wl->cap) {
    uint32_t cap = wl ? wl->cap * 2 : 4;
    sh_waiters_t *nw = sh_try_realloc(wl, sizeof *nw + cap * sizeof(sh_task_t *));
    if (!nw) return -ENOMEM;
    if (!wl) nw->n = 0;
    nw->cap = cap;
    wl = nw;
    sh_map_put(&a->waiters, dep, wl);
  }
  wl->t[wl->n++] = t;
  return 0;
}

static sh_task_t *task_new(sh_agent_t *a, uint64_t id, const sh_submit_t *s) {
  size_t extra = (size_t)s->ndeps * 8 + s->method_len + s->args_len;
  uint8_t blk;
  sh_task_t *t = sh_recycle_get(&a->blocks, sizeof *t + extra, &blk);
  if (!t) return NULL;
  memset(t, 0, sizeof *t);
  t->blk = blk;
  sh_queue_init(&t->link);
  t->id = id;
  t->fn_id = s->fn_id;
  t->actor_id = s->kind == SH_KIND_ACTOR_CREATE ? id : s->actor_id;
  t->cpu_milli = s->cpu_milli;
  t->gpu_milli = s->gpu_milli;
  t->memory = s->memory;
  t->kind = s->kind;
  t->flags = s->flags;
  t->max_retries = s->max_retries;
  t->timeout_ms = s->timeout_ms;
  t->ndeps = s->ndeps;
  t->method_len = s->method_len;
  t->args_len = s->args_len;
  uint8_t *p = t->data;
  if (s->ndeps) memcpy(p, s->deps, (size_t)s->ndeps * 8);
  p += (size_t)s->ndeps * 8;
  if (s->method_len) memcpy(p, s->method, s->method_len);
  p += s->method_len;
  if (s->args_len) memcpy(p, s->args, s->args_len);
  if (s->ncustom) {
    t->custom = sh_try_malloc(s->ncustom * sizeof(sh_custom_t));
    if (!t->custom) {
      sh_recycle_put(&a->blocks, t, blk);
      return NULL;
    }
    memcpy(t->custom, s->custom, s->ncustom * sizeof(sh_custom_t));
    t->ncustom = s->ncustom;
  }
  return t;
}

static sh_actor_t *actor_new(sh_agent_t *a, uint64_t id) {
  sh_actor_t *ac = sh_calloc(1, sizeof *ac);
  ac->id = id;
  ac->state = SH_ACTOR_PENDING;
  sh_queue_init(&ac->calls);
  sh_queue_init(&ac->dirty);
  sh_map_put(&a->actors, id, ac);
  return ac;
}

void sh_sched_submit(sh_agent_t *a, sh_conn_t *c, uint64_t id, const sh_submit_t *s) {
  char why[1024];
  a->n_submitted++;
  if (a->cur_resent && s->kind == SH_KIND_ACTOR_CREATE && resent_live_actor(a, c, id, s)) return;
  if (a->cur_resent && claim_orphan(a, c, id)) return;
  int adopted_actor = a->cur_resent && s->kind == SH_KIND_ACTOR_CREATE &&
                      sh_map_get(&a->rec.adopted, id) && sh_map_get(&a->actors, id);
  if (sh_map_get(&a->tasks, id) || sh_map_get(&a->objects, id) ||
      (sh_map_get(&a->actors, id) && !adopted_actor)) {
    reject(a, c, id, SH_ST_BAD_REQUEST, "duplicate task id");
    return;
  }
  if (s->kind != SH_KIND_ACTOR_CALL && !sh_map_get(&a->funcs, s->fn_id)) {
    reject(a, c, id, SH_ST_BAD_REQUEST, "the task's function was not registered (send FUNC first)");
    return;
  }
  sh_req_t req = {s->cpu_milli, s->gpu_milli, s->memory, s->ncustom, s->custom};
  sh_actor_t *ac = NULL;
  if (sh_gpus_valid(s->gpu_milli)) {
    snprintf(why, sizeof why, "num_gpus=%g cannot be given as devices: ask for a fraction of "
             "one GPU (below 1) or for whole GPUs", (double)s->gpu_milli / 1000);
    if (s->kind == SH_KIND_ACTOR_CREATE) actor_die(a, actor_new(a, id), why);
    reject(a, c, id, SH_ST_INFEASIBLE, why);
    return;
  }
  /* A restarted head waiting for its nodes does not know yet what they offer. */
  int waits = (c->role == SH_ROLE_DRIVER && (c->flags & SH_HELLO_WAIT_NODES)) || a->rec.gate;
  if (!waits && !sh_head_feasible(&a->head, &req, why, sizeof why)) {
    if (s->kind == SH_KIND_ACTOR_CREATE) actor_die(a, actor_new(a, id), why);
    reject(a, c, id, SH_ST_INFEASIBLE, why);
    return;
  }
  if (s->kind == SH_KIND_ACTOR_CALL) {
    ac = sh_map_get(&a->actors, s->actor_id);
    if (!ac && a->rec.restarted && c->role == SH_ROLE_DRIVER) {
      reject(a, c, id, SH_ST_ACTOR_DIED, "the actor is gone: the head restarted, and the "
             "actor lived on the head's own node or on a node that did not come back");
      return;
    }
    if (!ac && c->role == SH_ROLE_UPLINK) {
      /* A call that crossed the node's report that the actor died here. */
      snprintf(why, sizeof why, "the actor's worker died on node %u while this call was on "
               "its way (the head restarts the actor if it may, for the calls after it)",
               a->node_id);
      reject(a, c, id, SH_ST_ACTOR_DIED, why);
      return;
    }
    if (!ac || (c->role != SH_ROLE_UPLINK && (uint32_t)(s->actor_id >> 40) != c->client_id)) {
      reject(a, c, id, SH_ST_ACTOR_DIED, "unknown actor: it was never created by this driver");
      return;
    }
    if (ac->state == SH_ACTOR_DEAD) {
      reject(a, c, id, SH_ST_ACTOR_DIED, ac->dead_reason);
      return;
    }
  }
  const sh_obj_t *failed = NULL;
  uint32_t st = check_deps(a, s, &failed, why, sizeof why);
  if (st != SH_ST_OK) {
    a->n_failed++;
    if (failed) sh_result_append(&c->out, id, failed->status, failed->code, failed->data, failed->len);
    else sh_result_append(&c->out, id, st, c->role == SH_ROLE_UPLINK ? SH_CODE_PULL_FAILED : 0,
                          why, strlen(why)); /* from the head: its pull failed first */
    sh_conn_mark_dirty(c);
    if (s->kind == SH_KIND_ACTOR_CREATE) actor_die(a, actor_new(a, id), "a dependency of the actor's constructor failed");
    return;
  }
  sh_task_t *t = task_new(a, id, s);
  if (!t || sh_map_put(&a->tasks, id, t)) {
    if (t) task_free(a, t);
    reject(a, c, id, SH_ST_BAD_REQUEST, "the daemon is out of memory");
    return;
  }
  /* The head's results go back to it and are kept there, not here. */
  t->remote = t->released = c->role == SH_ROLE_UPLINK;
  for (uint32_t i = 0; i < s->ndeps; i++) {
    uint64_t dep = sh_get_u64(s->deps + 8 * i);
    sh_obj_t *o = sh_map_get(&a->objects, dep);
    if (o) o->pins++;
    else if (add_waiter(a, dep, t) == 0) t->missing++;
  }
  if (s->kind == SH_KIND_ACTOR_CREATE) {
    if (!(ac = sh_map_get(&a->actors, id))) ac = actor_new(a, id);
    ac->create = t;
    ac->remote = t->remote;
  }
  if (a->cur_resent && sh_sched_resent(a, t)) return;
  t->want_lane = a->cur_want_lane;
  if (c->lost_task == id && c->role == SH_ROLE_DRIVER && sh_lane_lost_submit(a, c, t)) return;
  if (ac && s->kind == SH_KIND_ACTOR_CALL) sh_queue_insert_tail(&ac->calls, &t->link);
  if (t->missing) t->state = SH_TASK_WAITING;
  else make_ready(a, t);
}

/* ---- placement ---- */

static int pipelinable(const sh_task_t *t) {
  return t->kind == SH_KIND_TASK && t->cpu_milli == 1000 && !t->gpu_milli && !t->memory &&
         !t->ncustom && !t->timeout_ms;
}

static uint32_t depth_for(sh_agent_t *a, uint64_t fn_id) {
  sh_func_t *f = sh_map_get(&a->funcs, fn_id);
  if (!f || !f->avg_ns) return 1;
  uint64_t d = PIPELINE_TARGET_NS / (f->avg_ns ? f->avg_ns : 1);
  if (d < 1) d = 1;
  if (d > PIPELINE_MAX) d = PIPELINE_MAX;
  return (uint32_t)d;
}

static int worker_usable(const sh_worker_t *w) {
  return w->conn && !w->exited && !w->kill_reason && !w->dedicated && !w->leased;
}

static sh_worker_t *idle_worker(sh_agent_t *a) {
  sh_queue_t *q;
  sh_queue_foreach(q, &a->workers) {
    sh_worker_t *w = sh_queue_data(q, sh_worker_t, link);
    if (worker_usable(w) && w->ninflight == 0) return w;
  }
  return NULL;
}

/* A busy pool worker that can take t behind what it runs, or NULL. */
static sh_worker_t *pipeline_worker(sh_agent_t *a, const sh_task_t *t) {
  uint32_t depth = depth_for(a, t->fn_id);
  if (depth <= 1) return NULL;
  sh_worker_t *best = NULL;
  sh_queue_t *q;
  sh_queue_foreach(q, &a->workers) {
    sh_worker_t *w = sh_queue_data(q, sh_worker_t, link);
    if (!worker_usable(w) || w->ninflight == 0 || w->ninflight >= depth) continue;
    const sh_task_t *head = sh_queue_data(sh_queue_head(&w->inflight), sh_task_t, link);
    if (!pipelinable(head)) continue;
    if (!best || w->ninflight < best->ninflight) best = w;
  }
  return best;
}

/* Brings t's stored dependencies into memory before t goes to a worker.
 * 0, or -1 after failing t (it must be on no queue). */
static int ensure_deps(sh_agent_t *a, sh_task_t *t) {
  const uint8_t *d = sh_task_deps(t);
  char why[768];
  for (uint32_t i = 0; i < t->ndeps; i++) {
    sh_obj_t *o = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (!o || !o->stored) continue;
    uint32_t st = sh_store_resident(a, o, why, sizeof why);
    if (st == SH_ST_OK) continue;
    sh_task_fail(a, t, st, 0, why);
    return -1;
  }
  return 0;
}

static void task_started(sh_worker_t *w, sh_task_t *t) {
  t->sent_ns = sh_now_ns();
  if (t->timeout_ms) sh_pool_timeout_start(w, t->timeout_ms);
}

/* Appends FUNC (first time for this process) and EXEC for t to w; `gpus`:
 * the devices t may use (its own, or its actor's). */
static void send_task(sh_agent_t *a, sh_worker_t *w, sh_task_t *t, uint64_t gpus) {
  sh_conn_t *c = w->conn;
  if (t->fn_id && !sh_map_get(&w->funcs_sent, t->fn_id)) {
    sh_func_t *f = sh_map_get(&a->funcs, t->fn_id);
    if (f) sh_frame_append(&c->out, SH_MSG_FUNC, 0, t->fn_id, f->data, f->len);
    sh_map_put(&w->funcs_sent, t->fn_id, (void *)1);
  }
  long at = sh_exec_begin(&c->out, t->id, t->fn_id, t->actor_id, t->kind, t->ndeps,
                          t->method_len, t->args_len);
  const uint8_t *d = sh_task_deps(t);
  int rc = at < 0 ? (int)at : 0;
  for (uint32_t i = 0; i < t->ndeps && !rc; i++) {
    sh_obj_t *o = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (o && o->stored) {
      o->busy++; /* ensure_deps made it resident; it stays so while t runs */
      o->on_workers = 1;
      rc = sh_exec_add_stored_dep(&c->out, o->id, o->size);
    } else {
      rc = o ? sh_exec_add_dep(&c->out, o->data, o->len) : sh_exec_add_dep(&c->out, "", 0);
    }
  }
  if (!rc) rc = sh_exec_finish(&c->out, at, sh_task_method(t), t->method_len, sh_task_args(t), t->args_len);
  /* On a node with GPUs every task is told its devices (none: an empty
   * CUDA_VISIBLE_DEVICES), so a task never uses a device another holds. */
  if (!rc && a->gpus.n)
    rc = sh_exec_add_devices(&c->out, at, gpus);
  if (rc && at >= 0) sh_frame_abort(&c->out, at);
  if (rc) {
    /* Out of memory: the worker cannot be told consistently; replace it. */
    sh_warn("out of memory sending task %#llx to worker %d", (unsigned long long)t->id, w->index);
    sh_pool_kill(w, SH_REASON_NONE);
  }
  t->state = SH_TASK_SENT;
  t->worker = w;
  sh_queue_insert_tail(&w->inflight, &t->link);
  if (w->ninflight++ == 0) task_started(w, t);
  w->last_client = (uint32_t)(t->id >> 40);
  w->last_remote = t->remote;
  sh_conn_mark_dirty(c);
}

/* ---- actor restarts ---- */

static sh_task_t *task_clone(const sh_task_t *t) {
  size_t extra = (size_t)t->ndeps * 8 + t->method_len + t->args_len;
  sh_task_t *c = sh_try_malloc(sizeof *c + extra);
  if (!c) return NULL;
  memcpy(c, t, sizeof *c + extra);
  c->blk = 0; /* a plain allocation, whatever t's was */
  sh_queue_init(&c->link);
  c->custom = NULL;
  if (t->ncustom) {
    c->custom = sh_try_malloc(t->ncustom * sizeof(sh_custom_t));
    if (!c->custom) {
      sh_free(c);
      return NULL;
    }
    memcpy(c->custom, t->custom, t->ncustom * sizeof(sh_custom_t));
  }
  c->state = 0;
  c->worker = NULL;
  c->took = 0;
  c->node_id = 0;
  return c;
}

/* Before an actor's first construction goes out: keeps a copy of it (and a
 * pin on each of its dependencies) when it may be restarted. */
static void actor_keep_recipe(sh_agent_t *a, sh_actor_t *ac, const sh_task_t *t) {
  if (ac->recipe || t->restart || !t->max_retries || t->remote) return;
  if (!(ac->recipe = task_clone(t))) {
    sh_warn("out of memory keeping actor %#llx's constructor: it will not be restarted",
            (unsigned long long)ac->id);
    return;
  }
  ac->recipe->unpinned = ac->recipe->gated = 0; /* t may be one a node adopted */
  const uint8_t *d = sh_task_deps(t);
  for (uint32_t i = 0; i < t->ndeps; i++) {
    sh_obj_t *o = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (o) o->pins++;
  }
}

static void actor_drop_recipe(sh_agent_t *a, sh_actor_t *ac) {
  sh_task_t *r = ac->recipe;
  if (!r) return;
  ac->recipe = NULL;
  const uint8_t *d = sh_task_deps(r);
  for (uint32_t i = 0; i < r->ndeps; i++) obj_unpin(a, sh_get_u64(d + 8 * i));
  task_free(a, r);
}

/* The actor's process or node died (why): constructs it again from its
 * recipe while restarts are left; the calls it was running fail, the queued
 * ones wait for the new instance. 1 when it restarts, 0 when it must die. */
static int actor_restart(sh_agent_t *a, sh_actor_t *ac, const char *why) {
  sh_task_t *r = ac->recipe;
  if (!r || ac->state != SH_ACTOR_ALIVE || ac->kill_when_idle || ac->restarts >= r->max_retries)
    return 0;
  sh_task_t *t = task_clone(r);
  if (!t || sh_map_put(&a->tasks, t->id, t)) {
    if (t) task_free(a, t);
    return 0;
  }
  char msg[768];
  ac->restarts++;
  sh_recover_charge(a, ac->id, ac->restarts);
  snprintf(msg, sizeof msg, "%s; the call was running then (the actor is being restarted: "
           "restart %u of %u)", why, ac->restarts, r->max_retries);
  sh_warn("actor %#llx: %s; restarting it (%u of %u)", (unsigned long long)ac->id, why,
          ac->restarts, r->max_retries);
  if (ac->holds) {
    sh_req_t req = sh_res_as_req(&ac->held);
    sh_res_add(&a->avail, &req);
    sh_gpus_give(&a->gpus, req.gpu_milli, ac->gpu_mask);
    ac->holds = 0;
  }
  if (ac->holds_remote) {
    sh_req_t req = sh_res_as_req(&ac->held);
    sh_head_release(&a->head, ac->node_id, &req);
    ac->holds_remote = 0;
  }
  if (ac->worker) {
    sh_worker_t *w = ac->worker;
    sh_pool_timeout_stop(w);
    fail_queue(a, &w->inflight, SH_ST_ACTOR_DIED, msg);
    w->actor = NULL;
    ac->worker = NULL;
    if (!w->exited) sh_pool_kill(w, SH_REASON_ACTOR);
  }
  ac->node_id = 0;
  ac->state = SH_ACTOR_PENDING;
  /* The new construction: its deps are pinned like a submitted task's. */
  t->restart = 1;
  t->released = 1;
  const uint8_t *d = sh_task_deps(t);
  for (uint32_t i = 0; i < t->ndeps; i++) {
    sh_obj_t *o = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (o) o->pins++;
  }
  ac->create = t;
  make_ready(a, t);
  return 1;
}

static void place_actor(sh_agent_t *a, sh_task_t *t) {
  if (t->ndeps && ensure_deps(a, t)) return;
  sh_actor_t *ac = sh_map_get(&a->actors, t->id);
  actor_keep_recipe(a, ac, t);
  sh_req_t req = task_req(t);
  sh_res_sub(&a->avail, &req);
  sh_res_from_req(&ac->held, &req);
  ac->gpu_mask = 0; /* place_one checked that devices fit */
  sh_gpus_pick(&a->gpus, req.gpu_milli, &ac->gpu_mask);
  sh_gpus_take(&a->gpus, req.gpu_milli, ac->gpu_mask);
  ac->holds = 1;
  ac->worker = sh_pool_spawn(a, ac);
  ac->create = NULL;
  if (!ac->worker) {
    actor_die(a, ac, "could not start a worker process for the actor");
    sh_task_fail(a, t, SH_ST_ACTOR_DIED, 0, "could not start a worker process for the actor");
    return;
  }
  send_task(a, ac->worker, t, ac->gpu_mask);
  if (!sh_queue_linked(&ac->dirty)) sh_queue_insert_tail(&a->actors_dirty, &ac->dirty);
}

/* ---- placement on other nodes (the head) ---- */

static sh_node_t *live_node(sh_agent_t *a, uint32_t node_id) {
  sh_node_t *n = node_id ? sh_map_get(&a->nodes, node_id) : NULL;
  return n && n->conn ? n : NULL;
}

/* Appends a PUT of dependency o for a node: inline bytes, or a stored
 * object's segment read whole (SH_PUT_SEGMENT). SH_ST_OK, or a status with
 * a message in why. */
static int obj_on_node(const sh_obj_t *o, uint32_t node_id) {
  for (uint32_t i = 0; i < o->nnodes; i++)
    if (o->nodes[i] == node_id) return 1;
  return 0;
}

/* Appends a PUT of dependency o for node `nd`, unless the node has it
 * already (each object goes to a node once; the node keeps it until the head
 * releases it): inline bytes, or a stored object's segment in CHUNK frames
 * then a PUT (SH_PUT_SEGMENT) with its size. SH_ST_OK, or a status with a
 * message in why. */
static uint32_t locate_dep(sh_agent_t *a, sh_node_t *nd, sh_obj_t *o, char *why, size_t n);

static uint32_t put_dep(sh_agent_t *a, sh_node_t *nd, sh_obj_t *o, char *why, size_t n) {
  sh_conn_t *c = nd->conn;
  if (obj_on_node(o, nd->node_id)) return SH_ST_OK;
  uint32_t *grown = sh_try_realloc(o->nodes, (o->nnodes + 1) * sizeof *grown);
  if (!grown) {
    snprintf(why, n, "the head is out of memory");
    return SH_ST_STORE_FULL;
  }
  o->nodes = grown;
  if (o->remote) return locate_dep(a, nd, o, why, n);
  if (!o->stored) {
    if (sh_frame_append(&c->out, SH_MSG_PUT, 0, o->id, o->data, o->len)) {
      snprintf(why, n, "the head is out of memory");
      return SH_ST_STORE_FULL;
    }
    o->nodes[o->nnodes++] = nd->node_id;
    return SH_ST_OK;
  }
  uint32_t st = sh_store_resident(a, o, why, n);
  if (st != SH_ST_OK) return st;
  uint8_t size[8];
  sh_put_u64(size, o->size);
  int rc = sh_store_send(a, c, o->id, o->size);
  if (!rc) rc = sh_frame_append(&c->out, SH_MSG_PUT, SH_PUT_SEGMENT, o->id, size, 8);
  if (!rc) {
    o->nodes[o->nnodes++] = nd->node_id;
    return SH_ST_OK;
  }
  snprintf(why, n, "sending object %#llx to node %u failed: %s", (unsigned long long)o->id,
           nd->node_id, sh_strerror(rc));
  return rc == -ENOMEM ? SH_ST_STORE_FULL : SH_ST_LOST;
}

/* Tells node nd where o, kept on other nodes, is: nd pulls it from there
 * itself (the node adds itself to o's holders when it has it, HAVE).
 * SH_ST_OK, or SH_ST_LOST when no live holder has a node port. */
static uint32_t locate_dep(sh_agent_t *a, sh_node_t *nd, sh_obj_t *o, char *why, size_t n) {
  for (uint32_t i = 0; i < o->nnodes; i++) {
    sh_node_t *h = live_node(a, o->nodes[i]);
    if (!h || !h->pull_addr[0]) continue;
    sh_locate_t l = {.size = o->size, .node_id = h->node_id};
    snprintf(l.addr, sizeof l.addr, "%s", h->pull_addr);
    if (sh_locate_append(&nd->conn->out, o->id, &l)) break;
    return SH_ST_OK;
  }
  snprintf(why, n, "object %#llx is kept only on node%s that cannot be pulled from now (no node "
           "port, or dead)", (unsigned long long)o->id, o->nnodes == 1 ? "" : "s");
  return SH_ST_LOST;
}

/* t leaves node n's list (a result came, or n died). */
static void leave_node(sh_agent_t *a, sh_node_t *n, sh_task_t *t) {
  sh_queue_remove(&t->link);
  n->ntasks--;
  if (t->took) {
    sh_req_t req = task_req(t);
    sh_head_release(&a->head, n->node_id, &req);
    t->took = 0;
  }
  if (t->kind == SH_KIND_ACTOR_CALL) {
    sh_actor_t *ac = sh_map_get(&a->actors, t->actor_id);
    if (ac && ac->remote_calls) ac->remote_calls--;
  }
  t->node_id = 0;
  t->state = SH_TASK_READY;
  a->need_schedule = 1;
}

/* Sends t to node n: its function (once per connection), its dependencies'
 * values and the task itself as a SUBMIT without retries of its own (the
 * head counts them). t is on no queue; afterwards it is REMOTE on n's list,
 * or failed (t->took given back). */
static void forward(sh_agent_t *a, sh_node_t *n, sh_task_t *t) {
  sh_conn_t *c = n->conn;
  char why[768];
  if (t->fn_id && !sh_map_get(&n->funcs_sent, t->fn_id)) {
    sh_func_t *f = sh_map_get(&a->funcs, t->fn_id);
    if (f) sh_frame_append(&c->out, SH_MSG_FUNC, 0, t->fn_id, f->data, f->len);
    sh_map_put(&n->funcs_sent, t->fn_id, (void *)1);
  }
  const uint8_t *d = sh_task_deps(t);
  uint32_t st = SH_ST_OK;
  for (uint32_t i = 0; i < t->ndeps && st == SH_ST_OK; i++) {
    sh_obj_t *o = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (o) st = put_dep(a, n, o, why, sizeof why);
  }
  /* Field by field: an initializer would zero all of `custom` (over 1 KiB)
   * for every task, and only the first ncustom entries are read. */
  sh_submit_t s;
  s.fn_id = t->fn_id;
  s.actor_id = t->kind == SH_KIND_TASK ? 0 : t->actor_id;
  s.kind = t->kind;
  s.flags = t->flags;
  s.max_retries = 0;
  s.timeout_ms = t->timeout_ms;
  s.cpu_milli = t->cpu_milli;
  s.gpu_milli = t->gpu_milli;
  s.memory = t->memory;
  s.ndeps = t->ndeps;
  s.ncustom = t->ncustom;
  s.deps = d;
  s.method = sh_task_method(t);
  s.method_len = t->method_len;
  s.args = sh_task_args(t);
  s.args_len = t->args_len;
  if (t->ncustom) memcpy(s.custom, t->custom, t->ncustom * sizeof(sh_custom_t));
  if (s.kind == SH_KIND_ACTOR_CREATE) s.actor_id = 0;
  if (st == SH_ST_OK && sh_submit_append(&c->out, t->id, &s)) {
    st = SH_ST_STORE_FULL;
    snprintf(why, sizeof why, "the head is out of memory");
  }
  t->state = SH_TASK_REMOTE;
  t->node_id = n->node_id;
  t->sent_ns = sh_now_ns();
  sh_queue_insert_tail(&n->tasks, &t->link);
  n->ntasks++;
  if (t->kind == SH_KIND_ACTOR_CALL) {
    sh_actor_t *ac = sh_map_get(&a->actors, t->actor_id);
    if (ac) ac->remote_calls++;
  }
  sh_conn_mark_dirty(c);
  if (st == SH_ST_OK) return;
  leave_node(a, n, t);
  sh_task_fail(a, t, st, 0, why);
}

/* Whether the driver that owns t asked to wait for nodes. */
static int owner_waits(sh_agent_t *a, const sh_task_t *t) {
  const sh_conn_t *c = sh_agent_client(a, t->id);
  return c && (c->flags & SH_HELLO_WAIT_NODES);
}

/* Asks the head's registry for another node with room for ready task t (the
 * local node is never chosen there: the local scheduler places on it). 1
 * when t left the ready queue (forwarded, or failed as infeasible now that
 * no live node could run it); 0 when it stays queued. */
/* Locality hints for t: the bytes of its dependencies that each node holds
 * a copy of already (at most `cap` nodes). */
static uint32_t locality(sh_agent_t *a, const sh_task_t *t, sh_head_hint_t *h, uint32_t cap) {
  uint32_t n = 0;
  const uint8_t *d = sh_task_deps(t);
  for (uint32_t i = 0; i < t->ndeps; i++) {
    const sh_obj_t *o = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (!o) continue;
    uint64_t bytes = o->stored ? o->size : o->len;
    for (uint32_t j = 0; j < o->nnodes; j++) {
      uint32_t k = 0;
      while (k < n && h[k].node_id != o->nodes[j]) k++;
      if (k == n) {
        if (n == cap) continue;
        h[n].node_id = o->nodes[j];
        h[n++].bytes = 0;
      }
      h[k].bytes += bytes;
    }
  }
  return n;
}

/* How many tasks of f a node may hold per worker: about PIPELINE_TARGET_NS
 * of them by the time one takes there (remote_each_ns), or by the
 * forward-to-result time when that is less (it counts the way there and
 * back and the wait behind the others: before the first estimate, and when
 * the function got faster while it was not sent ahead, so that nothing
 * measured it). 0 or 1: not sent ahead. */
static uint32_t remote_depth(const sh_func_t *f) {
  uint64_t each = f->remote_each_ns && f->remote_each_ns < f->remote_ns ? f->remote_each_ns
                                                                        : f->remote_ns;
  if (!each) return 0;
  uint64_t d = PIPELINE_TARGET_NS / each;
  return d > PIPELINE_MAX ? PIPELINE_MAX : (uint32_t)d;
}

/* One estimate of a task's time on a node takes at least this many results
 * and this much time between them. */
#define EACH_MIN_RESULTS 16
#define EACH_MIN_NS (2 * PIPELINE_TARGET_NS)

/* A result of f came from node n (t still counted there): while n was busy
 * since its previous result, the gap between the two, times the workers
 * that were running, is what one task took (a gap after which the node had
 * no task waiting is not counted: it may have waited for more). Results
 * come in batches (the worker writes them together), so single gaps are 0
 * or a whole batch: the estimate is their mean over a window that spans
 * batches (at least EACH_MIN_RESULTS results and EACH_MIN_NS), smoothed. */
static void measure_remote(sh_node_t *n, sh_func_t *f, uint64_t now) {
  /* Busy: more tasks were there than workers, so the next result came
   * without waiting for the head (or for the driver behind it). */
  if (n->last_result_ns && n->left_after > n->num_workers) {
    uint32_t running = n->ntasks < n->num_workers ? n->ntasks : n->num_workers;
    f->each_sum_ns += (now - n->last_result_ns) * (running ? running : 1);
    if (++f->each_n >= EACH_MIN_RESULTS && f->each_sum_ns >= EACH_MIN_NS) {
      uint64_t m = f->each_sum_ns / f->each_n;
      m = m ? m : 1;
      f->remote_each_ns = f->remote_each_ns ? (f->remote_each_ns * 3 + m) / 4 : m;
      f->each_sum_ns = 0;
      f->each_n = 0;
    }
  }
  n->last_result_ns = now;
}

/* Whether node n can take short task t ahead of its free CPUs now, up to
 * `depth` tasks per worker. */
static int pipeline_open(const sh_node_t *n, const sh_task_t *t, uint32_t depth) {
  return n->conn && n->alive && !n->draining && n->num_workers &&
         n->total.cpu_milli >= t->cpu_milli && n->ntasks < depth * n->num_workers;
}

/* A live node that can take short task t ahead of its free CPUs: the
 * function is short there (remote_depth of 2 or more), and the node holds
 * fewer than about PIPELINE_TARGET_NS of its tasks per worker. The least
 * loaded such node, or NULL. */
static sh_node_t *pipeline_node(sh_agent_t *a, const sh_task_t *t) {
  sh_func_t *f = sh_map_get(&a->funcs, t->fn_id);
  uint32_t depth = f ? remote_depth(f) : 0;
  if (depth < 2) return NULL;
  /* Hysteresis: a node that was full gets more only once it is down to
   * half, and then up to full in one go, so its tasks come in batches and
   * not one per result (a wake-up of the node and its worker each). The
   * node being filled keeps getting them without a look at the others: a
   * batch to one node is one write, one wake-up of it and of its worker. */
  sh_node_t *cur = a->pipe_node;
  if (cur && cur->refill && pipeline_open(cur, t, depth)) return cur;
  sh_node_t *best = NULL;
  sh_queue_t *q;
  sh_queue_foreach(q, &a->node_list) {
    sh_node_t *n = sh_queue_data(q, sh_node_t, all);
    if (!pipeline_open(n, t, depth)) {
      n->refill = 0;
      continue;
    }
    if (!n->refill && n->ntasks > depth * n->num_workers / 2) continue;
    if (!best || n->ntasks * best->num_workers < best->ntasks * n->num_workers) best = n;
  }
  if (best) best->refill = 1;
  a->pipe_node = best;
  return best;
}

static int place_remote(sh_agent_t *a, sh_task_t *t) {
  sh_req_t req = task_req(t);
  uint32_t nid;
  char why[1024];
  sh_head_hint_t hints[8];
  uint32_t nhints = t->ndeps ? locality(a, t, hints, 8) : 0;
  /* No message unless it is needed: "no room now" is the common answer
   * while every node is busy, and formatting it each time cost more than
   * the placement. */
  int rc = sh_head_place(&a->head, &req, nhints ? hints : NULL, nhints, &nid, NULL, 0);
  if (rc == SH_EINFEASIBLE) sh_head_feasible(&a->head, &req, why, sizeof why);
  if (rc == SH_ENOROOM && pipelinable(t)) {
    /* Short tasks are sent ahead to a busy node, as to a busy local worker:
     * the node queues them for its workers, and the round trips overlap. */
    sh_node_t *n = pipeline_node(a, t);
    if (n) {
      sh_queue_remove(&t->link);
      forward(a, n, t);
      return 1;
    }
  }
  if (rc == SH_EINFEASIBLE && !owner_waits(a, t)) {
    sh_queue_remove(&t->link);
    fail_unplaced(a, t, SH_ST_INFEASIBLE, why);
    return 1;
  }
  if (rc) return 0;
  sh_node_t *n = live_node(a, nid);
  if (!n) {
    sh_head_release(&a->head, nid, &req);
    return 0;
  }
  sh_queue_remove(&t->link);
  if (t->kind == SH_KIND_ACTOR_CREATE) {
    /* The actor holds the resources for its life, not the creation task. */
    sh_actor_t *ac = sh_map_get(&a->actors, t->id);
    actor_keep_recipe(a, ac, t);
    ac->create = NULL;
    ac->node_id = nid;
    sh_res_from_req(&ac->held, &req);
    ac->holds_remote = 1;
    if (!sh_queue_linked(&ac->dirty)) sh_queue_insert_tail(&a->actors_dirty, &ac->dirty);
  } else {
    t->took = 1;
  }
  forward(a, n, t);
  return 1;
}

/* Sends every ready call of a remote actor to its node. */
static void run_remote_actor(sh_agent_t *a, sh_actor_t *ac) {
  sh_node_t *n = live_node(a, ac->node_id);
  if (!n || ac->state == SH_ACTOR_DEAD) return;
  while (!sh_queue_empty(&ac->calls)) {
    sh_task_t *t = sh_queue_data(sh_queue_head(&ac->calls), sh_task_t, link);
    if (t->missing) break; /* later calls wait: one caller's calls run in order */
    sh_queue_remove(&t->link);
    forward(a, n, t);
  }
}

/* Sends every ready call at the front of each dirty actor's queue. */
static void run_actors(sh_agent_t *a) {
  while (!sh_queue_empty(&a->actors_dirty)) {
    sh_queue_t *q = sh_queue_head(&a->actors_dirty);
    sh_actor_t *ac = sh_queue_data(q, sh_actor_t, dirty);
    sh_queue_remove(q);
    if (ac->node_id) {
      run_remote_actor(a, ac);
      continue;
    }
    if (!ac->worker || ac->state == SH_ACTOR_DEAD || !ac->worker->conn) continue;
    while (!sh_queue_empty(&ac->calls)) {
      sh_task_t *t = sh_queue_data(sh_queue_head(&ac->calls), sh_task_t, link);
      if (t->missing) break; /* later calls wait: one caller's calls run in order */
      sh_queue_remove(&t->link);
      if (t->ndeps && ensure_deps(a, t)) continue;
      send_task(a, ac->worker, t, ac->gpu_mask);
    }
  }
}

/* Places the first ready task of a shape: 1 when it left the queue (sent,
 * forwarded or failed), 0 when it cannot go anywhere now. */
static int park_for_deps(sh_agent_t *a, sh_task_t *t, int local);

static int place_one(sh_agent_t *a, sh_task_t *t) {
  /* A dependency whose only copies died with their node is made again
   * first (or t fails): t waits for that wherever it will run. */
  if (t->ndeps && park_for_deps(a, t, 0)) return 1;
  sh_req_t req = task_req(t);
  uint64_t gpu_mask = 0;
  int fits = !a->local_draining && sh_res_fits(&a->avail, &req) &&
             !sh_gpus_pick(&a->gpus, req.gpu_milli, &gpu_mask);
  /* Other nodes exist (the head): what cannot start here now goes to one
   * with room, before it would queue behind a busy local worker. */
  int cluster = a->head.nnodes > 1;
  if (t->kind == SH_KIND_ACTOR_CREATE) {
    if (fits) {
      sh_queue_remove(&t->link);
      place_actor(a, t);
      return 1;
    }
    return cluster && place_remote(a, t);
  }
  sh_worker_t *w = fits ? idle_worker(a) : NULL;
  int idle = w != NULL;
  if (!w && cluster && place_remote(a, t)) return 1;
  if (!w && pipelinable(t) && !a->local_draining) w = pipeline_worker(a, t);
  if (!w) return 0;
  /* Runs here: dependencies kept on other nodes are pulled first. */
  if (t->ndeps && park_for_deps(a, t, 1)) return 1;
  sh_queue_remove(&t->link);
  if (t->ndeps && ensure_deps(a, t)) return 1;
  if (idle) {
    sh_res_sub(&a->avail, &req);
    sh_res_from_req(&w->held, &req);
    sh_gpus_take(&a->gpus, req.gpu_milli, gpu_mask);
    w->gpu_mask = gpu_mask;
    w->holds = 1;
  }
  send_task(a, w, t, idle ? gpu_mask : 0);
  return 1;
}

void sh_sched_run(sh_agent_t *a) {
  a->need_schedule = 0;
  sh_recover_sync(a); /* attempts charged are on disk before the work goes out */
  run_actors(a);
  /* Each shape in turn, in order within it; a shape whose first task cannot
   * go now is left for the next run (every task behind asks the same). */
  sh_queue_t *q = a->shapes.next;
  while (q != &a->shapes) {
    sh_shape_t *s = sh_queue_data(q, sh_shape_t, link);
    q = q->next;
    while (!sh_queue_empty(&s->tasks) &&
           place_one(a, sh_queue_data(sh_queue_head(&s->tasks), sh_task_t, link))) {
    }
    if (sh_queue_empty(&s->tasks)) {
      sh_queue_remove(&s->link);
      sh_free(s);
    }
  }
  run_actors(a);
  /* Work waits: leased workers come back (each once idle). */
  if (!sh_queue_empty(&a->shapes) && a->n_leased) sh_lane_reclaim(a);
}

void sh_sched_ready(sh_agent_t *a, sh_task_t *t) { make_ready(a, t); }

/* ---- results and deaths ---- */

static void worker_release(sh_agent_t *a, sh_worker_t *w) {
  if (!w->holds) return;
  sh_req_t req = sh_res_as_req(&w->held);
  sh_res_add(&a->avail, &req);
  sh_gpus_give(&a->gpus, req.gpu_milli, w->gpu_mask);
  w->gpu_mask = 0;
  w->holds = 0;
  a->need_schedule = 1;
}

void sh_sched_worker_release(sh_agent_t *a, sh_worker_t *w) { worker_release(a, w); }

static sh_task_t *find_inflight(sh_worker_t *w, uint64_t id) {
  sh_queue_t *q;
  sh_queue_foreach(q, &w->inflight) {
    sh_task_t *t = sh_queue_data(q, sh_task_t, link);
    if (t->id == id) return t;
  }
  return NULL;
}

void sh_sched_result(sh_agent_t *a, sh_worker_t *w, uint64_t id, const sh_result_t *r) {
  sh_task_t *t = find_inflight(w, id);
  if (!t) {
    sh_debug("worker %d sent a result for %#llx, which it no longer holds", w->index,
             (unsigned long long)id);
    return;
  }
  int was_head = &t->link == sh_queue_head(&w->inflight);
  sh_queue_remove(&t->link);
  w->ninflight--;
  uint64_t now = sh_now_ns();
  if (was_head) {
    sh_func_t *f = t->kind == SH_KIND_TASK ? sh_map_get(&a->funcs, t->fn_id) : NULL;
    uint64_t d = now - t->sent_ns;
    if (f) f->avg_ns = f->avg_ns ? (f->avg_ns * 7 + d) / 8 : (d ? d : 1);
    sh_pool_timeout_stop(w);
    if (w->ninflight) task_started(w, sh_queue_data(sh_queue_head(&w->inflight), sh_task_t, link));
  }
  w->done++;
  w->last_done_ns = now;
  if (w->ninflight == 0) worker_release(a, w);
  int lane = t->want_lane && pipelinable(t) && !(t->flags & SH_SUBMIT_RETRY_EXC) &&
             !t->remote && !t->orphan && !w->ninflight;
  uint32_t cid = (uint32_t)(t->id >> 40);
  a->need_schedule = 1;
  if (r->status == SH_ST_ERROR && (t->flags & SH_SUBMIT_RETRY_EXC) && t->kind == SH_KIND_TASK &&
      t->attempts < t->max_retries && !t->orphan) {
    deps_unbusy(a, t);
    charge(a, t);
    t->state = SH_TASK_READY;
    t->worker = NULL;
    ready_push(a, t, 1);
    return;
  }
  finish(a, t, r->status, r->code, r->payload, r->payload_len);
  if (w->dedicated && w->actor) actor_retire_if_idle(a, w->actor);
  if (lane) sh_lane_offer(a, w, cid);
}

static void signal_text(char *buf, size_t n, int sig, int64_t status) {
  if (sig) snprintf(buf, n, "killed by signal %d (%s)", sig, strsignal(sig));
  else snprintf(buf, n, "exited with status %lld", (long long)status);
}

/* Node: the head's actor ac died here (its worker), not by the head's
 * KILL_ACTOR: the head is told (RESULT for the actor's id, ACTOR_DIED, code
 * ACTOR_GONE, after the failed calls) and the actor forgotten, so that the
 * head may construct it again, here or elsewhere, under the same id. 1 when
 * told and freed. */
static int actor_gone_tell_head(sh_agent_t *a, sh_actor_t *ac, const char *why) {
  sh_conn_t *up = a->uplink && a->uplink->up == SH_UP_READY ? a->uplink : NULL;
  if (!up) return 0;
  if (sh_result_append(&up->out, ac->id, SH_ST_ACTOR_DIED, SH_CODE_ACTOR_GONE, why, strlen(why)))
    return 0;
  sh_conn_mark_dirty(up);
  actor_free(a, ac);
  return 1;
}

void sh_sched_worker_died(sh_agent_t *a, sh_worker_t *w, int sig, int64_t status,
                          const char *why) {
  char how[96], msg[512];
  signal_text(how, sizeof how, sig, status);
  sh_pool_timeout_stop(w);
  worker_release(a, w);
  if (w->leased) {
    snprintf(msg, sizeof msg, "the worker process (pid %d) running the task died: %s%s%s",
             (int)w->pid, how, why ? "; " : "", why ? why : "");
    sh_lane_worker_died(a, w, msg, sig ? sig : -(int32_t)status);
  }
  if (w->dedicated) {
    sh_actor_t *ac = w->actor;
    if (!ac) return;
    if (ac->state != SH_ACTOR_DEAD) {
      snprintf(msg, sizeof msg, "the actor's worker process (pid %d) died: %s%s%s", (int)w->pid, how,
               why ? "; " : "", why ? why : "");
      if (w->kill_reason != SH_REASON_ACTOR && actor_restart(a, ac, msg)) return;
      actor_die(a, ac, msg);
      if (ac->remote && w->kill_reason != SH_REASON_ACTOR && actor_gone_tell_head(a, ac, msg))
        return; /* forgotten here: the head restarts it or lets it die */
    }
    ac->worker = NULL;
    return;
  }
  sh_queue_t redo;
  sh_queue_init(&redo);
  /* The first task left is the one that was running, unless the agent
   * already took the running one off (force cancel, departed driver). */
  int first = w->hello && w->kill_reason != SH_REASON_CANCEL && w->kill_reason != SH_REASON_OWNER_GONE;
  while (!sh_queue_empty(&w->inflight)) {
    sh_task_t *t = sh_queue_data(sh_queue_head(&w->inflight), sh_task_t, link);
    int head = first;
    first = 0;
    sh_queue_remove(&t->link);
    w->ninflight--;
    t->worker = NULL;
    if (t->orphan) {
      finish(a, t, SH_ST_CANCELLED, 0, (const uint8_t *)"", 0);
      continue;
    }
    if (head && w->kill_reason == SH_REASON_TIMEOUT) {
      snprintf(msg, sizeof msg, "task exceeded its timeout of %.3g s; its worker (pid %d) was "
               "killed and replaced", t->timeout_ms / 1000.0, (int)w->pid);
      sh_task_fail(a, t, SH_ST_TIMEOUT, 0, msg);
      continue;
    }
    if (head && t->remote) {
      /* The head counts the retries and says how many there were. */
      snprintf(msg, sizeof msg, "the worker process (pid %d) running the task on node %u died: "
               "%s%s%s", (int)w->pid, a->node_id, how, why ? "; " : "", why ? why : "");
      sh_task_fail(a, t, SH_ST_CRASHED, sig ? sig : -(int32_t)status, msg);
      continue;
    }
    if (head && t->attempts >= t->max_retries) {
      snprintf(msg, sizeof msg, "the worker process (pid %d) running the task died: %s%s%s; "
               "tried %u time%s (max_retries=%u)", (int)w->pid, how, why ? "; " : "",
               why ? why : "", t->attempts + 1, t->attempts ? "s" : "", t->max_retries);
      sh_task_fail(a, t, SH_ST_CRASHED, sig ? sig : -(int32_t)status, msg);
      continue;
    }
    if (head) charge(a, t);
    deps_unbusy(a, t);
    t->state = SH_TASK_READY;
    sh_queue_insert_tail(&redo, &t->link);
  }
  ready_prepend(a, &redo);
  a->need_schedule = 1;
}

int sh_sched_charge_crash(sh_agent_t *a, sh_task_t *t, const char *how, int32_t code) {
  if (t->attempts >= t->max_retries) {
    char msg[640];
    snprintf(msg, sizeof msg, "%s; tried %u time%s (max_retries=%u)", how, t->attempts + 1,
             t->attempts ? "s" : "", t->max_retries);
    sh_task_fail(a, t, SH_ST_CRASHED, code, msg);
    return -1;
  }
  charge(a, t);
  return 0;
}

void sh_sched_lane_done(sh_agent_t *a, sh_conn_t *c, uint64_t id, const sh_result_t *r) {
  if (sh_map_get(&a->objects, id) || sh_map_get(&a->tasks, id)) return;
  if (r->status == SH_ST_OK && r->code == SH_CODE_STORED && r->payload_len == 8) {
    /* A large value the worker wrote to the store: sealed as if the worker
     * had reported it (the driver maps it next). */
    char why[768];
    sh_obj_t *o = obj_store(a, id, SH_ST_OK, SH_CODE_STORED, NULL, 0);
    uint32_t st = o ? sh_store_seal(a, o, sh_get_u64(r->payload), why, sizeof why)
                    : SH_ST_STORE_FULL;
    if (st == SH_ST_OK) return;
    if (!o) snprintf(why, sizeof why, "the agent is out of memory");
    if (o) obj_free(a, id, o);
    sh_store_discard(a, id);
    obj_store(a, id, st, 0, (const uint8_t *)why, (uint32_t)strlen(why));
    return;
  }
  if (r->status == SH_ST_OK && r->code) {
    sh_warn("%s registered lane result %#llx with code %d", c->desc, (unsigned long long)id,
            (int)r->code);
    return;
  }
  if (!obj_store(a, id, r->status, 0, r->payload, r->payload_len))
    sh_warn("out of memory keeping the %u-byte lane result %#llx of %s", r->payload_len,
            (unsigned long long)id, c->desc);
}

void sh_sched_fail_ready(sh_agent_t *a, const char *why) {
  sh_queue_t all;
  sh_queue_init(&all);
  while (!sh_queue_empty(&a->shapes)) {
    sh_shape_t *s = sh_queue_data(sh_queue_head(&a->shapes), sh_shape_t, link);
    sh_queue_remove(&s->link);
    sh_queue_prepend_all(&all, &s->tasks); /* order across shapes does not matter here */
    sh_free(s);
  }
  while (!sh_queue_empty(&all)) {
    sh_task_t *t = sh_queue_data(sh_queue_head(&all), sh_task_t, link);
    sh_queue_remove(&t->link);
    fail_unplaced(a, t, SH_ST_CRASHED, why);
  }
}

/* ---- cancel, kill, client departure ---- */

/* Asks the node running t to cancel it (the node answers with its RESULT). */
static void cancel_remote(sh_agent_t *a, sh_task_t *t, unsigned flags) {
  sh_node_t *n = live_node(a, t->node_id);
  if (!n) return;
  sh_frame_append(&n->conn->out, SH_MSG_CANCEL, flags & SH_CANCEL_FORCE, t->id, NULL, 0);
  sh_conn_mark_dirty(n->conn);
}

int sh_sched_cancel(sh_agent_t *a, uint64_t id, unsigned flags) {
  int force = flags & SH_CANCEL_FORCE;
  sh_task_t *t = sh_map_get(&a->tasks, id);
  if (!t) return SH_CANCEL_NONE;
  if (t->state == SH_TASK_REMOTE) {
    if (!(flags & SH_CANCEL_QUEUED_ONLY)) cancel_remote(a, t, flags);
    return SH_CANCEL_RUNNING;
  }
  if (t->state != SH_TASK_SENT) {
    if (t->kind == SH_KIND_ACTOR_CREATE) return SH_CANCEL_NONE; /* use kill for actors */
    sh_queue_remove(&t->link);
    sh_task_fail(a, t, SH_ST_CANCELLED, 0, "the task was cancelled before it ran");
    return SH_CANCEL_QUEUED;
  }
  sh_worker_t *w = t->worker;
  if (flags & SH_CANCEL_QUEUED_ONLY) return SH_CANCEL_RUNNING;
  if (&t->link != sh_queue_head(&w->inflight)) return SH_CANCEL_RUNNING; /* sent ahead; cannot recall */
  if (force && !w->dedicated) {
    sh_queue_remove(&t->link);
    w->ninflight--;
    sh_task_fail(a, t, SH_ST_CANCELLED, 0, "the task was cancelled while running (force=True): "
                 "its worker was killed and replaced");
    sh_pool_kill(w, SH_REASON_CANCEL);
    return SH_CANCEL_RUNNING;
  }
  /* Interrupt only when nothing else is queued on that worker, so the signal
   * cannot land in the wrong task. */
  if (w->ninflight == 1 && !t->interrupted) {
    t->interrupted = 1;
    kill(w->pid, SIGINT);
  }
  return SH_CANCEL_RUNNING;
}

static void fail_queue(sh_agent_t *a, sh_queue_t *q, uint32_t status, const char *why) {
  while (!sh_queue_empty(q)) {
    sh_task_t *t = sh_queue_data(sh_queue_head(q), sh_task_t, link);
    sh_queue_remove(&t->link);
    if (t->worker) t->worker->ninflight--;
    sh_task_fail(a, t, status, 0, why);
  }
}

/* Marks an actor dead and fails everything addressed to it. */
static void actor_die(sh_agent_t *a, sh_actor_t *ac, const char *why) {
  if (ac->state == SH_ACTOR_DEAD) return;
  ac->state = SH_ACTOR_DEAD;
  actor_drop_recipe(a, ac);
  ac->dead_reason = sh_strdup(why);
  sh_queue_remove(&ac->dirty);
  if (ac->holds) {
    sh_req_t req = sh_res_as_req(&ac->held);
    sh_res_add(&a->avail, &req);
    sh_gpus_give(&a->gpus, req.gpu_milli, ac->gpu_mask);
    ac->holds = 0;
    a->need_schedule = 1;
  }
  if (ac->holds_remote) {
    sh_req_t req = sh_res_as_req(&ac->held);
    sh_head_release(&a->head, ac->node_id, &req);
    ac->holds_remote = 0;
    a->need_schedule = 1;
  }
  sh_node_t *n = live_node(a, ac->node_id);
  if (n) {
    /* Its node fails the calls it holds and answers for each. */
    sh_frame_append(&n->conn->out, SH_MSG_KILL_ACTOR, SH_KILL_NO_RESTART, ac->id, NULL, 0);
    sh_conn_mark_dirty(n->conn);
  }
  if (ac->create) {
    sh_task_t *t = ac->create;
    ac->create = NULL;
    sh_queue_remove(&t->link);
    sh_task_fail(a, t, SH_ST_ACTOR_DIED, 0, why);
  }
  fail_queue(a, &ac->calls, SH_ST_ACTOR_DIED, why);
  if (ac->worker) {
    sh_pool_timeout_stop(ac->worker);
    fail_queue(a, &ac->worker->inflight, SH_ST_ACTOR_DIED, why);
    if (!ac->worker->exited) sh_pool_kill(ac->worker, SH_REASON_ACTOR);
  }
}

static void actor_free(sh_agent_t *a, sh_actor_t *ac) {
  actor_drop_recipe(a, ac);
  sh_map_del(&a->actors, ac->id);
  if (ac->worker) ac->worker->actor = NULL;
  sh_free(ac->dead_reason);
  sh_free(ac);
}

/* Stops an actor whose last handle is gone once nothing is left for it to
 * run, and forgets it: nobody can address it any more. 1 if it went. */
static int actor_retire_if_idle(sh_agent_t *a, sh_actor_t *ac) {
  if (!ac->kill_when_idle || !sh_queue_empty(&ac->calls) || ac->create) return 0;
  if (ac->worker && ac->worker->ninflight) return 0;
  if (ac->remote_calls) return 0;
  actor_die(a, ac, "the actor's last handle was dropped");
  actor_free(a, ac);
  return 1;
}

void sh_sched_kill_actor(sh_agent_t *a, uint64_t id, unsigned flags) {
  sh_actor_t *ac = sh_map_get(&a->actors, id);
  if (!ac && a->rec.grace) /* its node is not back yet: killed when it is */
    sh_map_put(&a->rec.killed, id, (void *)(uintptr_t)(flags + 1));
  if (!ac) return;
  if (!(flags & SH_KILL_WHEN_IDLE)) {
    actor_die(a, ac, "the actor was killed by shoal.kill()");
    return;
  }
  if (ac->state == SH_ACTOR_DEAD) {
    actor_free(a, ac);
    return;
  }
  ac->kill_when_idle = 1;
  actor_retire_if_idle(a, ac);
}

void sh_sched_client_gone(sh_agent_t *a, uint32_t cid) {
  uint64_t id;
  void *v;
  /* Actors first: their calls go with them. */
  for (size_t i = 0; sh_map_next(&a->actors, &i, &id, &v);) {
    if ((uint32_t)(id >> 40) != cid) continue;
    sh_actor_t *ac = v;
    actor_die(a, ac, "the driver that created the actor disconnected");
    actor_free(a, ac);
  }
  for (size_t i = 0; sh_map_next(&a->tasks, &i, &id, &v);) {
    if ((uint32_t)(id >> 40) != cid) continue;
    sh_task_t *t = v;
    t->orphan = 1;
    if (t->state == SH_TASK_REMOTE) {
      cancel_remote(a, t, SH_CANCEL_FORCE); /* its RESULT comes back to nobody */
      continue;
    }
    if (t->state != SH_TASK_SENT) {
      sh_queue_remove(&t->link);
      finish(a, t, SH_ST_CANCELLED, 0, (const uint8_t *)"", 0);
      continue;
    }
    /* A running task of the departed driver: stop it; tasks sent ahead run out
     * (they are short) and report to nobody. */
    sh_worker_t *w = t->worker;
    if (&t->link == sh_queue_head(&w->inflight) && !w->kill_reason) {
      sh_queue_remove(&t->link);
      w->ninflight--;
      finish(a, t, SH_ST_CANCELLED, 0, (const uint8_t *)"", 0);
      sh_pool_kill(w, SH_REASON_OWNER_GONE);
    }
  }
  for (size_t i = 0; sh_map_next(&a->objects, &i, &id, &v);) {
    if ((uint32_t)(id >> 40) != cid) continue;
    sh_obj_t *o = v;
    o->released = 1;
    o->maps = 0; /* its mappings went with it */
    if (obj_unused(o)) obj_free(a, id, o);
  }
  for (size_t i = 0; sh_map_next(&a->funcs, &i, &id, &v);) {
    if ((uint32_t)(id >> 40) != cid) continue;
    sh_map_del(&a->funcs, id);
    sh_free(v);
  }
}

/* ---- the cluster: results from nodes, node deaths, a lost head ---- */

/* Head: node n says actor id's worker died there (the node lives on and
 * forgot it). Restarted elsewhere or there per max_restarts, else dead. */
static void actor_gone_on_node(sh_agent_t *a, sh_node_t *n, uint64_t id, const sh_result_t *r) {
  sh_actor_t *ac = sh_map_get(&a->actors, id);
  if (!ac || ac->node_id != n->node_id || ac->state == SH_ACTOR_DEAD) return;
  char msg[768];
  snprintf(msg, sizeof msg, "on node %u (%s): %.*s", n->node_id, n->host,
           (int)(r->payload_len < 600 ? r->payload_len : 600), (const char *)r->payload);
  if (actor_restart(a, ac, msg)) return;
  actor_die(a, ac, msg);
  ac->node_id = 0; /* the node forgot it: nothing to send KILL_ACTOR to */
}

void sh_sched_remote_result(sh_agent_t *a, sh_node_t *n, uint64_t id, const sh_result_t *r) {
  sh_task_t *t = sh_map_get(&a->tasks, id);
  if (!t && r->status == SH_ST_ACTOR_DIED && r->code == SH_CODE_ACTOR_GONE) {
    actor_gone_on_node(a, n, id, r);
    return;
  }
  if (!t) {
    sh_sched_orphan_result(a, n, id, r);
    return;
  }
  if (t->gated && t->state == SH_TASK_READY && a->rec.grace) {
    /* Sent again by its driver and held behind the gate: it ran on n. */
    sh_queue_remove(&t->link);
    bind_remote(a, n, t);
  }
  if (t->state != SH_TASK_REMOTE || t->node_id != n->node_id) {
    sh_debug("node %u sent a result for %#llx, which is not running there", n->node_id,
             (unsigned long long)id);
    return;
  }
  if (t->kind == SH_KIND_TASK && t->sent_ns) {
    sh_func_t *f = sh_map_get(&a->funcs, t->fn_id);
    uint64_t now = sh_now_ns(), d = now - t->sent_ns;
    if (f) {
      f->remote_ns = f->remote_ns ? (f->remote_ns * 7 + d) / 8 : (d ? d : 1);
      measure_remote(n, f, now);
    }
  }
  leave_node(a, n, t);
  n->left_after = n->ntasks;
  t->node_id = n->node_id; /* where an ON_NODE value is (finish reads it) */
  uint32_t status = r->status, len = r->payload_len;
  int32_t code = r->code;
  const uint8_t *p = r->payload;
  char why[1024];
  uint8_t size8[8];
  if (status == SH_ST_OK && code == SH_CODE_SEGMENT) {
    /* A large value: its segment came in CHUNKs and is in this node's store
     * now, as if a local worker had written it; finish() seals it. */
    uint64_t size = len == 8 ? sh_get_u64(p) : 0;
    if (len == 8 && n->conn && sh_store_received(a, n->conn, id, size)) {
      sh_put_u64(size8, size);
      code = SH_CODE_STORED;
      p = size8;
      len = 8;
    } else {
      status = SH_ST_LOST;
      snprintf(why, sizeof why, "the result of %#llx did not arrive whole from node %u (see "
               "the head's log for why)", (unsigned long long)id, n->node_id);
    }
  } else if (status == SH_ST_OK && code == SH_CODE_STORED) {
    status = SH_ST_BAD_REQUEST;
    snprintf(why, sizeof why, "node %u sent a result that is in its own store", n->node_id);
  } else if (status == SH_ST_OK && code == SH_CODE_ON_NODE && len != 8) {
    status = SH_ST_BAD_REQUEST;
    snprintf(why, sizeof why, "node %u sent a malformed ON_NODE result", n->node_id);
  } else if (status == SH_ST_LOST && code == SH_CODE_PULL_FAILED && t->kind == SH_KIND_TASK &&
             !t->orphan && t->pull_fails < 3) {
    /* It did not run: a dependency could not be pulled there (its holder
     * died meanwhile, say). Placed again: the holders or a rebuild now. */
    t->pull_fails++;
    t->node_id = 0;
    sh_debug("task %#llx: node %u could not pull a dependency: %.*s", (unsigned long long)id,
             n->node_id, (int)(len < 300 ? len : 300), p);
    ready_push(a, t, 1);
    return;
  }
  if (status != r->status) {
    code = 0;
    p = (const uint8_t *)why;
    len = (uint32_t)strlen(why);
  }
  int retry = status == SH_ST_CRASHED || (status == SH_ST_ERROR && (t->flags & SH_SUBMIT_RETRY_EXC));
  if (retry && t->kind == SH_KIND_TASK && !t->orphan && t->attempts < t->max_retries) {
    charge(a, t);
    t->node_id = 0;
    ready_push(a, t, 1);
    return;
  }
  if (status == SH_ST_CRASHED && t->kind == SH_KIND_TASK) {
    snprintf(why, sizeof why, "%.*s; tried %u time%s (max_retries=%u)", (int)(len < 700 ? len : 700),
             p, t->attempts + 1, t->attempts ? "s" : "", t->max_retries);
    p = (const uint8_t *)why;
    len = (uint32_t)strlen(why);
  }
  uint64_t actor_id = t->kind == SH_KIND_ACTOR_CALL ? t->actor_id : 0;
  finish(a, t, status, code, p, len);
  sh_actor_t *ac = actor_id ? sh_map_get(&a->actors, actor_id) : NULL;
  if (ac) actor_retire_if_idle(a, ac);
}

void sh_sched_node_died(sh_agent_t *a, sh_node_t *n, const char *why) {
  char msg[768];
  uint64_t id;
  void *v;
  /* Its copies of objects are gone with it (a node coming back starts empty);
   * an object whose last copy it was is made again when it is needed. */
  for (size_t i = 0; sh_map_next(&a->objects, &i, &id, &v);) {
    sh_obj_t *o = v;
    for (uint32_t j = 0; j < o->nnodes; j++)
      if (o->nodes[j] == n->node_id) o->nodes[j--] = o->nodes[--o->nnodes];
    if (o->remote && !o->nnodes) o->lost_node = n->node_id;
  }
  snprintf(msg, sizeof msg, "the node %u (%s) hosting the actor died: %s", n->node_id, n->host, why);
  for (size_t i = 0; sh_map_next(&a->actors, &i, &id, &v);) {
    sh_actor_t *ac = v;
    if (ac->node_id != n->node_id || ac->state == SH_ACTOR_DEAD) continue;
    ac->holds_remote = 0; /* the node's record is reset when it comes back */
    if (actor_restart(a, ac, msg)) continue;
    actor_die(a, ac, msg);
  }
  sh_queue_t redo;
  sh_queue_init(&redo);
  while (!sh_queue_empty(&n->tasks)) {
    sh_task_t *t = sh_queue_data(sh_queue_head(&n->tasks), sh_task_t, link);
    t->took = 0;
    leave_node(a, n, t);
    if (t->orphan) {
      finish(a, t, SH_ST_CANCELLED, 0, (const uint8_t *)"", 0);
      continue;
    }
    if (t->kind != SH_KIND_TASK) {
      snprintf(msg, sizeof msg, "the node %u (%s) hosting the actor died: %s", n->node_id,
               n->host, why);
      sh_task_fail(a, t, SH_ST_ACTOR_DIED, 0, msg);
      continue;
    }
    /* It may have run there: a node's death counts like a worker's. */
    if (t->attempts >= t->max_retries) {
      snprintf(msg, sizeof msg, "the node %u (%s) running the task died: %s; tried %u time%s "
               "(max_retries=%u)", n->node_id, n->host, why, t->attempts + 1,
               t->attempts ? "s" : "", t->max_retries);
      sh_task_fail(a, t, SH_ST_CRASHED, 0, msg);
      continue;
    }
    charge(a, t);
    sh_queue_insert_tail(&redo, &t->link);
  }
  ready_prepend(a, &redo);
  a->need_schedule = 1;
}

/* Node: drops the results held for the head (and their segments). */
static void drop_held(sh_agent_t *a) {
  sh_held_t *h;
  while ((h = a->up_held)) {
    a->up_held = h->next;
    sh_free(h); /* an ON_NODE result's segment is its object's: freed with it */
  }
  sh_buf_reset(&a->up_recent[0]);
  sh_buf_reset(&a->up_recent[1]);
}

void sh_sched_uplink_gone(sh_agent_t *a) {
  uint64_t id;
  void *v;
  drop_held(a);
  for (size_t i = 0; sh_map_next(&a->actors, &i, &id, &v);) {
    sh_actor_t *ac = v;
    if (!ac->remote) continue;
    actor_die(a, ac, "the head this node belongs to disconnected");
    actor_free(a, ac);
  }
  for (size_t i = 0; sh_map_next(&a->tasks, &i, &id, &v);) {
    sh_task_t *t = v;
    if (!t->remote) continue;
    t->orphan = 1;
    if (t->state != SH_TASK_SENT) {
      sh_queue_remove(&t->link);
      finish(a, t, SH_ST_CANCELLED, 0, (const uint8_t *)"", 0);
      continue;
    }
    /* The head runs it again elsewhere: stop it here, so that it cannot
     * run twice at once and its id is free when the head comes back. */
    sh_worker_t *w = t->worker;
    sh_queue_remove(&t->link);
    w->ninflight--;
    finish(a, t, SH_ST_CANCELLED, 0, (const uint8_t *)"", 0);
    if (!w->kill_reason && !w->exited) sh_pool_kill(w, SH_REASON_OWNER_GONE);
  }
  /* Objects the head sent (its drivers' ids, below this node's own client
   * ids) have no owner any more. */
  for (size_t i = 0; sh_map_next(&a->objects, &i, &id, &v);) {
    sh_obj_t *o = v;
    if ((uint32_t)(id >> 40) < SH_NODE_CLIENT_BASE) o->released = 1;
    if (obj_unused(o)) obj_free(a, id, o);
  }
}

/* ---- objects kept on nodes: pulls to the head, lineage ---- */

/* Drops o's lineage: the copy of its task and the pins on its inputs. */
static void recipe_drop(sh_agent_t *a, sh_obj_t *o) {
  sh_task_t *r = o->recipe;
  if (!r) return;
  o->recipe = NULL;
  const uint8_t *d = sh_task_deps(r);
  for (uint32_t i = 0; i < r->ndeps; i++) obj_unpin(a, sh_get_u64(d + 8 * i));
  task_free(a, r);
}

/* Head: a record of object id kept on other nodes (none named yet), size
 * bytes (0: not known yet), without lineage. NULL when out of memory. */
static sh_obj_t *remote_placeholder(sh_agent_t *a, uint64_t id, uint64_t size) {
  sh_obj_t *o = obj_store(a, id, SH_ST_OK, SH_CODE_STORED, NULL, 0);
  if (!o) return NULL;
  o->stored = o->remote = 1;
  o->size = size;
  return o;
}

/* Head: the object of finished task t (ON_NODE: kept on t->node_id, size
 * bytes): where it is and, for a plain task, how to make it again. NULL
 * when out of memory. */
static sh_obj_t *remote_obj(sh_agent_t *a, sh_task_t *t, uint64_t size) {
  sh_obj_t *o = obj_store(a, t->id, SH_ST_OK, SH_CODE_STORED, NULL, 0);
  if (!o) return NULL;
  o->stored = o->remote = 1;
  o->size = size;
  o->nodes = sh_try_malloc(sizeof *o->nodes);
  if (o->nodes) o->nodes[o->nnodes++] = t->node_id;
  if (t->kind != SH_KIND_TASK) return o; /* an actor's result has no lineage */
  sh_task_t *r = task_clone(t); /* its own copy of the custom resources too */
  if (!r) return o;
  const uint8_t *d = sh_task_deps(r);
  for (uint32_t i = 0; i < r->ndeps; i++) {
    sh_obj_t *dep = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (dep) dep->pins++; /* its inputs live while it may run again */
  }
  r->state = 0;
  r->node_id = 0;
  o->recipe = r;
  return o;
}

/* Adds node_id to o's holders (once). */
static void add_holder(sh_obj_t *o, uint32_t node_id) {
  if (obj_on_node(o, node_id)) return;
  uint32_t *g = sh_try_realloc(o->nodes, (o->nnodes + 1) * sizeof *g);
  if (!g) return;
  o->nodes = g;
  o->nodes[o->nnodes++] = node_id;
}

static void drop_holder(sh_obj_t *o, uint32_t node_id) {
  for (uint32_t j = 0; j < o->nnodes; j++)
    if (o->nodes[j] == node_id) o->nodes[j--] = o->nodes[--o->nnodes];
}

/* Starts making o again from its lineage: a copy of its task, run like any
 * other (its own lost inputs are made again the same way when it is
 * placed), counting one attempt against the task's max_retries. The
 * record tasks wait on, or NULL with SH_ST_LOST and why. */
static sh_pull_t *rebuild_start(sh_agent_t *a, sh_obj_t *o, char *why, size_t n) {
  sh_task_t *r = o->recipe;
  if (!r && !o->lost_node) {
    snprintf(why, n, "object %#llx was lost: it was kept on a node before the head restarted, "
             "and no node that came back holds it", (unsigned long long)o->id);
    return NULL;
  }
  if (!r) {
    snprintf(why, n, "object %#llx was lost: its only copy was on node %u, which died, and it "
             "has no lineage to make it again (a put value, or an actor's result)",
             (unsigned long long)o->id, o->lost_node);
    return NULL;
  }
  if (r->attempts >= r->max_retries) {
    snprintf(why, n, "object %#llx (the result of task %#llx) was lost: its only copy was on "
             "node %u, which died, and the task's retry budget is spent: it ran %u time%s "
             "(max_retries=%u)", (unsigned long long)o->id, (unsigned long long)o->id,
             o->lost_node, r->attempts + 1, r->attempts ? "s" : "", r->max_retries);
    return NULL;
  }
  sh_task_t *t = task_clone(r); /* custom resources copied with it */
  sh_pull_t *p = t ? sh_pull_new(a, o->id, o->size) : NULL;
  if (!p || sh_map_put(&a->tasks, o->id, t)) {
    if (p) sh_pull_drop(a, p);
    if (t) task_free(a, t);
    snprintf(why, n, "object %#llx was lost and the head is out of memory", (unsigned long long)o->id);
    return NULL;
  }
  r->attempts++;
  t->attempts = r->attempts;
  sh_recover_charge(a, t->id, t->attempts);
  t->rebuild = 1;
  t->released = 1;
  const uint8_t *d = sh_task_deps(t);
  for (uint32_t i = 0; i < t->ndeps; i++) {
    sh_obj_t *dep = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (dep) dep->pins++;
  }
  a->n_retried++;
  a->store.n_rebuilds++;
  sh_info("object %#llx was lost with node %u: running its task again (attempt %u of %u)",
          (unsigned long long)o->id, o->lost_node, t->attempts + 1, r->max_retries + 1);
  make_ready(a, t);
  return p;
}

/* Head: o (kept on other nodes) is needed here (t parked, or a MAP of
 * client cid, when t is NULL) or, for a task placed elsewhere, needs some
 * live copy. Joins or starts the pull or the rebuild; SH_ST_OK when the
 * waiter is parked, else a status and why. */
static uint32_t need_obj(sh_agent_t *a, sh_obj_t *o, sh_task_t *t, uint32_t cid, char *why,
                         size_t n) {
  sh_pull_t *p = sh_pull_get(a, o->id);
  for (uint32_t i = 0; !p && i < o->nnodes; i++) {
    sh_node_t *h = live_node(a, o->nodes[i]);
    if (h) p = sh_pull_from_node(a, o->id, o->size, h);
  }
  /* A restarted head: a node that has not come back yet may hold it (it
   * reports it with HAVE); wait for that, or for the gate to open. */
  if (!p && !o->nnodes && !o->lost_node && !o->recipe && a->rec.gate)
    p = sh_pull_new(a, o->id, o->size);
  if (!p && !(p = rebuild_start(a, o, why, n))) return SH_ST_LOST;
  if (t) {
    if (p->ntasks == p->cap) {
      uint32_t cap = p->cap ? p->cap * 2 : 4;
      sh_task_t **g = sh_try_realloc(p->tasks, cap * sizeof *g);
      if (!g) goto oom;
      p->tasks = g;
      p->cap = cap;
    }
    p->tasks[p->ntasks++] = t;
    t->parked = o->id;
    t->missing = 1;
    t->state = SH_TASK_WAITING;
    return SH_ST_OK;
  }
  if (p->nmaps == p->mcap) {
    uint32_t cap = p->mcap ? p->mcap * 2 : 4;
    uint32_t *g = sh_try_realloc(p->maps, cap * sizeof *g);
    if (!g) goto oom;
    p->maps = g;
    p->mcap = cap;
  }
  p->maps[p->nmaps++] = cid;
  return SH_ST_OK;
oom:
  snprintf(why, n, "the head is out of memory");
  return SH_ST_STORE_FULL;
}

/* Head: parks ready task t (on a queue, or on none once local) when a
 * dependency is kept only elsewhere and t runs here (local), or has no
 * live copy at all. 1 when t left its queue (parked, or failed). */
static int park_for_deps(sh_agent_t *a, sh_task_t *t, int local) {
  const uint8_t *d = sh_task_deps(t);
  char why[768];
  for (uint32_t i = 0; i < t->ndeps; i++) {
    sh_obj_t *o = sh_map_get(&a->objects, sh_get_u64(d + 8 * i));
    if (!o || !o->remote || (!local && o->nnodes)) continue;
    sh_queue_remove(&t->link);
    uint32_t st = need_obj(a, o, t, 0, why, sizeof why);
    if (st != SH_ST_OK) fail_unplaced(a, t, st, why);
    return 1;
  }
  return 0;
}

/* t leaves the record it is parked on (it finishes some other way). */
static void unpark(sh_agent_t *a, sh_task_t *t) {
  sh_pull_t *p = sh_pull_get(a, t->parked);
  t->parked = 0;
  if (t->missing) t->missing--;
  for (uint32_t i = 0; p && i < p->ntasks; i++) {
    if (p->tasks[i] != t) continue;
    p->tasks[i] = p->tasks[--p->ntasks];
    return;
  }
}

/* Head: the pull or rebuild p ended. OK: everything parked tries again
 * (tasks are placed again, MAPs answered now); else the tasks fail with
 * status, code and payload, and the MAPs with why. p is dropped. */
static void wake_parked(sh_agent_t *a, sh_pull_t *p, uint32_t status, int32_t code,
                        const uint8_t *pl, uint32_t n, const char *why) {
  uint64_t id = p->id;
  uint32_t nt = p->ntasks, nm = p->nmaps;
  sh_task_t **tasks = p->tasks;
  uint32_t *maps = p->maps;
  p->tasks = NULL;
  p->maps = NULL;
  p->ntasks = p->nmaps = 0;
  sh_pull_drop(a, p);
  for (uint32_t i = 0; i < nt; i++) {
    sh_task_t *t = tasks[i];
    t->parked = 0;
    t->missing = 0;
    if (status == SH_ST_OK) make_ready(a, t);
    else finish(a, t, status, code, pl, n);
  }
  for (uint32_t i = 0; i < nm; i++) {
    sh_conn_t *c = sh_map_get(&a->clients, maps[i]);
    if (!c) continue;
    if (status == SH_ST_OK) sh_sched_map(a, c, id);
    else if (sh_map_reply_append(&c->out, id, SH_ST_LOST, 0, why)) sh_conn_close(c, "out of memory");
    else sh_conn_mark_dirty(c);
  }
  sh_free(tasks);
  sh_free(maps);
}

/* Node node_id drops its copy of object id (the head has no record of it). */
static void release_on_node(sh_agent_t *a, uint32_t node_id, uint64_t id) {
  sh_node_t *nd = live_node(a, node_id);
  uint8_t b[8];
  sh_put_u64(b, id);
  if (nd && !sh_frame_append(&nd->conn->out, SH_MSG_RELEASE, 0, 0, b, 8))
    sh_conn_mark_dirty(nd->conn);
}

/* A rebuild task ended: its value is o's again (kept on the node that ran
 * it, or stored here), or what waits for o fails the way it did. */
static void rebuild_done(sh_agent_t *a, sh_task_t *t, uint32_t status, int32_t code,
                         const uint8_t *p, uint32_t n) {
  uint64_t id = t->id;
  char why[900];
  sh_map_del(&a->tasks, id);
  release_deps(a, t);
  sh_obj_t *o = sh_map_get(&a->objects, id);
  if (o && o->recipe && t->attempts > o->recipe->attempts) o->recipe->attempts = t->attempts;
  uint32_t st = status;
  if (o && status == SH_ST_OK && code == SH_CODE_ON_NODE && n == 8 && o->remote) {
    add_holder(o, t->node_id);
  } else if (o && status == SH_ST_OK && code == SH_CODE_STORED && n == 8 && o->remote) {
    o->remote = o->stored = 0;
    if ((st = sh_store_seal(a, o, sh_get_u64(p), why, sizeof why)) != SH_ST_OK) {
      o->remote = o->stored = 1;
      o->code = SH_CODE_STORED;
    }
  } else if (status == SH_ST_OK) {
    st = SH_ST_LOST;
    snprintf(why, sizeof why, o ? "object %#llx was made again but came back in another form"
             : "object %#llx was released while it was being made again",
             (unsigned long long)id);
    if (code == SH_CODE_STORED) sh_store_discard(a, id);
    /* Nobody here owns the copy the node kept: it drops it. */
    if (code == SH_CODE_ON_NODE) release_on_node(a, t->node_id, id);
  }
  if (st != SH_ST_OK && status == SH_ST_OK) {
    p = (const uint8_t *)why;
    n = (uint32_t)strlen(why);
    code = 0;
  } else if (st != SH_ST_OK) {
    snprintf(why, sizeof why, "making lost object %#llx again failed (%s): %.*s",
             (unsigned long long)id, sh_status_name(st), (int)(n < 600 ? n : 600), p);
    if (st != SH_ST_ERROR) { /* an exception's payload is a pickle: keep it */
      p = (const uint8_t *)why;
      n = (uint32_t)strlen(why);
      code = st == SH_ST_CRASHED ? code : 0;
    }
  }
  task_free(a, t);
  sh_pull_t *pr = sh_pull_get(a, id);
  if (pr) wake_parked(a, pr, st, code, p, n, why);
  else if (o && obj_unused(o)) obj_free(a, id, o);
}

void sh_sched_pulled(sh_agent_t *a, sh_pull_t *p, uint32_t status, const char *why) {
  uint64_t id = p->id;
  sh_obj_t *o = sh_map_get(&a->objects, id);
  char why2[768] = "";
  if (a->opts.head_address) {
    /* Node: the object exists from now on, owned by the head (RELEASE). */
    sh_waiters_t *wl = sh_map_del(&a->waiters, id);
    uint32_t st = status;
    uint64_t size = p->size;
    sh_pull_drop(a, p);
    if (st == SH_ST_OK && !o) {
      o = obj_store(a, id, SH_ST_OK, 0, NULL, 0);
      if (!o) st = SH_ST_STORE_FULL;
      else if ((st = sh_store_seal(a, o, size, why2, sizeof why2)) != SH_ST_OK) {
        obj_free(a, id, o);
        o = NULL;
      }
      why = why2;
    }
    if (st == SH_ST_OK && o && a->uplink && a->uplink->up == SH_UP_READY) {
      uint8_t b[8];
      sh_put_u64(b, id);
      if (!sh_frame_append(&a->uplink->out, SH_MSG_HAVE, 0, 0, b, 8)) sh_conn_mark_dirty(a->uplink);
    }
    if (st != SH_ST_OK) {
      sh_store_discard(a, id);
      sh_warn("%s", why);
    }
    if (wl) wake_waiters(a, id, wl, st == SH_ST_OK ? o : NULL, st, SH_CODE_PULL_FAILED,
                         (const uint8_t *)why, (uint32_t)strlen(why));
    else if (o && obj_unused(o)) obj_free(a, id, o);
    return;
  }
  /* Head: a local copy now, or this holder is no good (another copy or a
   * rebuild is tried when the waiters try again). */
  if (status == SH_ST_OK && o && o->remote) {
    o->remote = o->stored = 0;
    uint32_t st = sh_store_seal(a, o, p->size, why2, sizeof why2);
    if (st != SH_ST_OK) {
      o->remote = o->stored = 1;
      o->code = SH_CODE_STORED;
      wake_parked(a, p, st, 0, (const uint8_t *)why2, (uint32_t)strlen(why2), why2);
      return;
    }
  } else if (status == SH_ST_OK && !o) {
    sh_store_discard(a, id); /* released while it came: nobody owns these bytes */
  } else if (status != SH_ST_OK) {
    if (o) drop_holder(o, p->from);
    if (o && o->remote && !o->nnodes && !o->lost_node) o->lost_node = p->from;
    sh_warn("%s", why);
  }
  wake_parked(a, p, SH_ST_OK, 0, NULL, 0, "");
}

void sh_sched_have(sh_agent_t *a, sh_node_t *n, const uint8_t *ids, uint32_t len) {
  for (uint32_t i = 0; i + 8 <= len; i += 8) {
    uint64_t id = sh_get_u64(ids + i);
    sh_obj_t *o = sh_map_get(&a->objects, id);
    if (o && o->stored) {
      add_holder(o, n->node_id);
      sh_pull_t *p = o->remote ? sh_pull_get(a, id) : NULL;
      if (p && !p->from && !p->conn && !sh_map_get(&a->tasks, id))
        wake_parked(a, p, SH_ST_OK, 0, NULL, 0, NULL); /* waited for a node to report it */
      continue;
    }
    /* After a restart: a segment kept on a node since before it, which a
     * driver may still hold (it says so with a PUT of the id); unclaimed,
     * it goes when the grace period ends. */
    if (!o && a->rec.grace && !sh_map_del(&a->rec.released, id) &&
        (o = remote_placeholder(a, id, 0))) {
      add_holder(o, n->node_id);
      o->released = 1;
      sh_map_put(&a->rec.orphans, id, (void *)1);
      continue;
    }
    /* Freed meanwhile: the node drops its copy too. */
    if (!sh_frame_append(&n->conn->out, SH_MSG_RELEASE, 0, 0, ids + i, 8))
      sh_conn_mark_dirty(n->conn);
  }
}

/* ---- a head restart (see recover.c) ---- */

/* A result kept for task `id` since before its driver came back: it is the
 * answer to the driver's SUBMIT sent again. 1 when there was one. */
static int claim_orphan(sh_agent_t *a, sh_conn_t *c, uint64_t id) {
  if (!sh_map_del(&a->rec.orphans, id)) return 0;
  sh_obj_t *o = sh_map_get(&a->objects, id);
  if (!o) return 0;
  uint8_t size8[8];
  sh_put_u64(size8, o->size);
  o->released = 0; /* the driver holds it now, and releases it */
  a->rec.n_claimed++;
  if (o->stored) sh_result_append(&c->out, id, o->status, SH_CODE_STORED, size8, 8);
  else sh_result_append(&c->out, id, o->status, o->code, o->data, o->len);
  sh_conn_mark_dirty(c);
  return 1;
}

/* A resent actor creation that no node reported: the actor lived on the
 * head's own node (or on one that did not come back), and is constructed
 * again while it has restarts left, charged one. 1 when it had none: it died
 * (t is freed). */
static int charge_actor(sh_agent_t *a, sh_task_t *t) {
  char msg[512];
  sh_actor_t *ac = sh_map_get(&a->actors, t->id);
  uint32_t before = sh_recover_charged(a, t->id);
  a->rec.n_charged++;
  if (ac->restarts < before) ac->restarts = before;
  if (ac->restarts < t->max_retries) {
    ac->restarts++;
    sh_recover_charge(a, ac->id, ac->restarts);
    sh_warn("actor %#llx: the head restarted and no node kept it; constructing it again "
            "(restart %u of %u)", (unsigned long long)ac->id, ac->restarts, t->max_retries);
    return 0;
  }
  snprintf(msg, sizeof msg, "the actor is gone: the head restarted, the actor lived on the "
           "head's own node or on a node that did not come back, and it has no restarts left "
           "(restarted %u time%s, max_restarts=%u)", ac->restarts, ac->restarts == 1 ? "" : "s",
           t->max_retries);
  fail_unplaced(a, t, SH_ST_ACTOR_DIED, msg);
  return 1;
}

/* Counts the attempt a resent task may have had before the restart, on top
 * of those earlier heads charged it. 1 when that was its last: it failed (t
 * is freed). */
static int charge_resent(sh_agent_t *a, sh_task_t *t) {
  char msg[512];
  if (t->kind == SH_KIND_ACTOR_CREATE) return charge_actor(a, t);
  if (t->kind != SH_KIND_TASK) return 0; /* actor calls run on the actor */
  uint32_t before = sh_recover_charged(a, t->id);
  a->rec.n_charged++;
  if (t->attempts < before) t->attempts = before;
  if (t->attempts < t->max_retries) {
    charge(a, t);
    return 0;
  }
  snprintf(msg, sizeof msg, "the head restarted while the task was queued or running (it may "
           "have run on the head's own node, whose workers died with it, or on a node that did "
           "not come back); tried %u time%s (max_retries=%u)", t->attempts + 1,
           t->attempts ? "s" : "", t->max_retries);
  sh_task_fail(a, t, SH_ST_CRASHED, 0, msg);
  return 1;
}

/* Records t as running on node n, which reported it: its result comes from
 * there. t's deps are dropped (the node has them). */
static void bind_remote(sh_agent_t *a, sh_node_t *n, sh_task_t *t) {
  release_deps(a, t);
  t->missing = 0;
  t->unpinned = 1;
  t->gated = 0;
  t->state = SH_TASK_REMOTE;
  t->node_id = n->node_id;
  t->sent_ns = 0;
  sh_queue_insert_tail(&n->tasks, &t->link);
  n->ntasks++;
  sh_req_t req = task_req(t);
  if (t->kind == SH_KIND_TASK && sh_head_take(&a->head, n->node_id, &req) == 0) t->took = 1;
  sh_actor_t *ac = sh_map_get(&a->actors, t->actor_id);
  if (ac && t->kind == SH_KIND_ACTOR_CALL) ac->remote_calls++;
  if (ac && t->kind == SH_KIND_ACTOR_CREATE) actor_on_node(a, ac, n, t);
  a->rec.n_adopted++;
}

/* Actor ac, which a node that came back reported (being constructed, or
 * alive), is node n's: it holds its creation's resources there in the
 * registry, and keeps its recipe for a later restart. */
static void actor_on_node(sh_agent_t *a, sh_actor_t *ac, sh_node_t *n, const sh_task_t *create) {
  ac->create = NULL;
  ac->node_id = n->node_id;
  if (ac->state == SH_ACTOR_PENDING && !sh_map_get(&a->tasks, ac->id)) ac->state = SH_ACTOR_ALIVE;
  if (ac->restarts < sh_recover_charged(a, ac->id)) ac->restarts = sh_recover_charged(a, ac->id);
  actor_keep_recipe(a, ac, create);
  /* Calls that came meanwhile go there. */
  if (!sh_queue_linked(&ac->dirty)) sh_queue_insert_tail(&a->actors_dirty, &ac->dirty);
  a->need_schedule = 1;
  if (ac->holds_remote) return;
  sh_req_t req = task_req(create);
  if (sh_head_take(&a->head, n->node_id, &req)) return;
  sh_res_from_req(&ac->held, &req);
  ac->holds_remote = 1;
}

/* A resent creation (from c) of an actor a node that came back reported
 * alive: it is not constructed again; it is answered only with the result
 * the node sent for it, if any (its driver may have missed it). 1 when it
 * was that. */
static int resent_live_actor(sh_agent_t *a, sh_conn_t *c, uint64_t id, const sh_submit_t *s) {
  sh_actor_t *ac = sh_map_get(&a->actors, id);
  sh_node_t *n = ac ? live_node(a, ac->node_id) : NULL;
  if (!ac || sh_map_get(&a->rec.adopted, id) || ac->state != SH_ACTOR_ALIVE) return 0;
  sh_task_t *t = n ? task_new(a, id, s) : NULL;
  if (t) {
    actor_on_node(a, ac, n, t);
    task_free(a, t);
  }
  claim_orphan(a, c, id);
  return 1;
}

int sh_sched_resent(sh_agent_t *a, sh_task_t *t) {
  sh_recover_t *r = &a->rec;
  t->resent = 1;
  uint32_t nid = (uint32_t)(uintptr_t)sh_map_del(&r->adopted, t->id);
  sh_node_t *n = live_node(a, nid);
  if (n) {
    bind_remote(a, n, t);
    return 1;
  }
  if (t->kind == SH_KIND_ACTOR_CALL) return 0;
  t->gated = 1; /* make_ready holds it behind the gate, or charges it */
  if (t->missing) {
    t->state = SH_TASK_WAITING;
    return 1;
  }
  make_ready(a, t);
  return 1;
}

void sh_sched_open_gate(sh_agent_t *a) {
  /* What waited for a node to report an object it kept: no node did. */
  uint64_t id;
  void *v;
  char why[256];
  for (size_t i = 0; sh_map_next(&a->pulls, &i, &id, &v);) {
    sh_pull_t *p = v;
    sh_obj_t *o = sh_map_get(&a->objects, id);
    if (p->from || p->conn || sh_map_get(&a->tasks, id) || !o || o->nnodes) continue;
    snprintf(why, sizeof why, "object %#llx was lost: it was kept on a node before the head "
             "restarted, and no node that came back holds it", (unsigned long long)id);
    wake_parked(a, p, SH_ST_LOST, 0, (const uint8_t *)why, (uint32_t)strlen(why), why);
    i = 0; /* wake_parked dropped p from the map */
  }
  sh_queue_t *q = &a->rec.held;
  while (!sh_queue_empty(q)) {
    sh_task_t *t = sh_queue_data(sh_queue_head(q), sh_task_t, link);
    sh_queue_remove(&t->link);
    make_ready(a, t);
  }
  a->need_schedule = 1;
}

void sh_sched_adopt_task(sh_agent_t *a, sh_node_t *n, uint64_t id) {
  sh_task_t *t = sh_map_get(&a->tasks, id);
  if (!a->rec.grace || (t && !(t->gated && t->state == SH_TASK_READY))) {
    /* Not a restarted head's, or run again already: it must not run twice. */
    sh_frame_append(&n->conn->out, SH_MSG_CANCEL, SH_CANCEL_FORCE, id, NULL, 0);
    sh_conn_mark_dirty(n->conn);
    return;
  }
  if (t) {
    sh_queue_remove(&t->link); /* from behind the gate */
    bind_remote(a, n, t);
    return;
  }
  sh_map_put(&a->rec.adopted, id, (void *)(uintptr_t)n->node_id);
}

void sh_sched_adopt_actor(sh_agent_t *a, sh_node_t *n, uint64_t id, const sh_res_t *held) {
  sh_actor_t *ac = sh_map_get(&a->actors, id);
  sh_task_t *t = ac ? ac->create : NULL;
  if (t && t->gated && t->state == SH_TASK_READY && !sh_map_get(&a->rec.adopted, id)) {
    /* Its creation, sent again, waits behind the gate: it is not needed. */
    sh_queue_remove(&t->link);
    release_deps(a, t);
    sh_map_del(&a->tasks, id);
    ac->state = SH_ACTOR_ALIVE;
    actor_on_node(a, ac, n, t);
    task_free(a, t);
    return;
  }
  if (ac && ac->node_id == n->node_id && ac->state != SH_ACTOR_DEAD && a->rec.grace)
    return; /* its creation's result, which n sent again first, bound it to n */
  if (!a->rec.grace || ac) {
    sh_frame_append(&n->conn->out, SH_MSG_KILL_ACTOR, SH_KILL_NO_RESTART, id, NULL, 0);
    sh_conn_mark_dirty(n->conn);
    return;
  }
  ac = actor_new(a, id);
  ac->state = SH_ACTOR_ALIVE;
  ac->node_id = n->node_id;
  /* Nothing is placed over it while its driver has not sent its creation
   * again (which takes nothing more: holds_remote). */
  sh_req_t req = sh_res_as_req(held);
  if ((req.cpu_milli || req.gpu_milli || req.memory || req.ncustom) &&
      sh_head_take(&a->head, n->node_id, &req) == 0) {
    ac->held = *held;
    ac->holds_remote = 1;
  }
  uintptr_t killed = (uintptr_t)sh_map_del(&a->rec.killed, id);
  if (killed) sh_sched_kill_actor(a, id, (unsigned)(killed - 1));
}

/* An object kept after a restart that nobody will claim: freed once unused. */
static void drop_orphan(sh_agent_t *a, uint64_t id) {
  sh_obj_t *o = sh_map_get(&a->objects, id);
  if (!o) return;
  o->released = 1;
  if (obj_unused(o)) obj_free(a, id, o);
}

void sh_sched_orphan_result(sh_agent_t *a, sh_node_t *n, uint64_t id, const sh_result_t *r) {
  char why[768];
  sh_map_del(&a->rec.adopted, id);
  /* A crash is not kept: the driver's resubmission is charged and runs. */
  if (!a->rec.grace || r->status == SH_ST_CRASHED || sh_map_get(&a->objects, id) ||
      (uint32_t)(id >> 40) >= SH_NODE_CLIENT_BASE) {
    sh_debug("node %u sent a result for %#llx, which is not running there", n->node_id,
             (unsigned long long)id);
    return;
  }
  sh_obj_t *o;
  if (r->status == SH_ST_OK && r->code == SH_CODE_SEGMENT) {
    uint64_t size = r->payload_len == 8 ? sh_get_u64(r->payload) : 0;
    if (r->payload_len != 8 || !n->conn || !sh_store_received(a, n->conn, id, size)) return;
    if (!(o = obj_store(a, id, SH_ST_OK, SH_CODE_STORED, NULL, 0))) return;
    if (sh_store_seal(a, o, size, why, sizeof why) != SH_ST_OK) {
      obj_free(a, id, o);
      sh_store_discard(a, id);
      return;
    }
  } else if (r->status == SH_ST_OK && r->code == SH_CODE_ON_NODE) {
    /* Kept on the node: here is where. */
    if (r->payload_len != 8 || !(o = remote_placeholder(a, id, sh_get_u64(r->payload)))) return;
    add_holder(o, n->node_id);
  } else if (!(o = obj_store(a, id, r->status, r->code, r->payload, r->payload_len))) {
    return;
  }
  if (sh_map_del(&a->rec.released, id)) drop_orphan(a, id); /* its driver let it go */
  else sh_map_put(&a->rec.orphans, id, (void *)1);
}

void sh_sched_grace_over(sh_agent_t *a) {
  uint64_t id;
  void *v;
  for (size_t i = 0; sh_map_next(&a->rec.orphans, &i, &id, &v);) drop_orphan(a, id);
  sh_map_close(&a->rec.orphans);
  sh_map_init(&a->rec.orphans);
  sh_map_close(&a->rec.released);
  sh_map_init(&a->rec.released);
  sh_map_close(&a->rec.killed);
  sh_map_init(&a->rec.killed);
  /* Tasks nodes reported whose drivers never came back: stop them. */
  for (size_t i = 0; sh_map_next(&a->rec.adopted, &i, &id, &v);) {
    sh_node_t *n = live_node(a, (uint32_t)(uintptr_t)v);
    if (!n) continue;
    sh_frame_append(&n->conn->out, SH_MSG_CANCEL, SH_CANCEL_FORCE, id, NULL, 0);
    sh_conn_mark_dirty(n->conn);
  }
  sh_map_close(&a->rec.adopted);
  sh_map_init(&a->rec.adopted);
  for (size_t i = 0; sh_map_next(&a->actors, &i, &id, &v);) {
    sh_actor_t *ac = v;
    if (!ac->node_id || sh_map_get(&a->clients, id >> 40)) continue;
    actor_die(a, ac, "its driver did not come back after the head restarted");
    actor_free(a, ac);
  }
}

void sh_sched_uplink_back(sh_agent_t *a, sh_conn_t *c) {
  uint64_t id;
  void *v;
  sh_buf_t have;
  sh_buf_init(&have);
  for (size_t i = 0; sh_map_next(&a->objects, &i, &id, &v);) {
    sh_obj_t *o = v;
    if ((uint32_t)(id >> 40) >= SH_NODE_CLIENT_BASE) continue;
    /* A segment here (a result kept on this node, or a copy) may be the
     * only one left: the head is told, and releases what it does not want
     * (a restarted head keeps what its drivers still hold). */
    if (o->stored && o->status == SH_ST_OK && !o->remote && !sh_buf_u64(&have, id)) continue;
    o->released = 1;
    if (obj_unused(o)) obj_free(a, id, o);
  }
  if (sh_buf_avail(&have) && !sh_frame_append(&c->out, SH_MSG_HAVE, 0, 0, sh_buf_head(&have),
                                              sh_buf_avail(&have)))
    sh_conn_mark_dirty(c);
  sh_buf_close(&have);
}

void sh_sched_send_held(sh_agent_t *a, sh_conn_t *c) {
  /* Oldest first: the list is newest first. */
  sh_held_t *h = a->up_held, *rev = NULL;
  a->up_held = NULL;
  while (h) {
    sh_held_t *next = h->next;
    h->next = rev;
    rev = h;
    h = next;
  }
  while ((h = rev)) {
    rev = h->next;
    /* A large result (ON_NODE) stays here; the head learns where it is. */
    sh_result_append(&c->out, h->id, h->status, h->code, h->data, h->len);
    sh_free(h);
  }
  sh_conn_mark_dirty(c);
}

void sh_sched_close(sh_agent_t *a) {
  uint64_t id;
  void *v;
  drop_held(a);
  sh_buf_close(&a->up_recent[0]);
  sh_buf_close(&a->up_recent[1]);
  while (!sh_queue_empty(&a->shapes)) {
    sh_shape_t *s = sh_queue_data(sh_queue_head(&a->shapes), sh_shape_t, link);
    sh_queue_remove(&s->link);
    sh_free(s);
  }
  for (size_t i = 0; sh_map_next(&a->tasks, &i, &id, &v);) task_free(a, v);
  for (size_t i = 0; sh_map_next(&a->objects, &i, &id, &v);) {
    sh_obj_t *o = v;
    if (o->recipe) task_free(a, o->recipe);
    sh_free(o->nodes);
    sh_free(o);
  }
  for (size_t i = 0; sh_map_next(&a->funcs, &i, &id, &v);) sh_free(v);
  for (size_t i = 0; sh_map_next(&a->waiters, &i, &id, &v);) sh_free(v);
  for (size_t i = 0; sh_map_next(&a->actors, &i, &id, &v);) {
    sh_actor_t *ac = v;
    sh_free(ac->dead_reason);
    sh_free(ac);
  }
  sh_map_close(&a->tasks);
  sh_map_close(&a->objects);
  sh_map_close(&a->funcs);
  sh_map_close(&a->waiters);
  sh_map_close(&a->actors);
  sh_recycle_close(&a->blocks);
}
