/* Cluster membership, feasibility and placement, plus resource arithmetic.
 *
 * Sections: resource arithmetic; registry (slots, id map, placement index);
 * heartbeat updates; feasibility; placement. */
#include "head/head.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"

/* ---------------------------------------------------------------- resources */

static const sh_custom_t *find_custom(const sh_custom_t *c, uint32_t n, const char *name) {
  for (uint32_t i = 0; i < n; i++)
    if (!strcmp(c[i].name, name)) return &c[i];
  return NULL;
}

uint64_t sh_res_custom(const sh_res_t *r, const char *name) {
  const sh_custom_t *c = find_custom(r->custom, r->ncustom, name);
  return c ? c->milli : 0;
}

int sh_res_set_custom(sh_res_t *r, const char *name, uint64_t milli) {
  sh_custom_t *c = (sh_custom_t *)find_custom(r->custom, r->ncustom, name);
  if (!c) {
    if (r->ncustom >= SH_MAX_CUSTOM) return -ENOSPC;
    c = &r->custom[r->ncustom++];
    snprintf(c->name, sizeof c->name, "%s", name);
  }
  c->milli = milli;
  return 0;
}

int sh_res_fits(const sh_res_t *a, const sh_req_t *q) {
  if (q->cpu_milli > a->cpu_milli || q->gpu_milli > a->gpu_milli || q->memory > a->memory)
    return 0;
  for (uint32_t i = 0; i < q->ncustom; i++)
    if (q->custom[i].milli > sh_res_custom(a, q->custom[i].name)) return 0;
  return 1;
}

void sh_res_sub(sh_res_t *a, const sh_req_t *q) {
  a->cpu_milli -= q->cpu_milli;
  a->gpu_milli -= q->gpu_milli;
  a->memory -= q->memory;
  for (uint32_t i = 0; i < q->ncustom; i++) {
    sh_custom_t *c = (sh_custom_t *)find_custom(a->custom, a->ncustom, q->custom[i].name);
    if (c) c->milli -= q->custom[i].milli;
  }
}

void sh_res_add(sh_res_t *a, const sh_req_t *q) {
  a->cpu_milli += q->cpu_milli;
  a->gpu_milli += q->gpu_milli;
  a->memory += q->memory;
  for (uint32_t i = 0; i < q->ncustom; i++)
    sh_res_set_custom(a, q->custom[i].name,
                      sh_res_custom(a, q->custom[i].name) + q->custom[i].milli);
}

void sh_res_from_req(sh_res_t *r, const sh_req_t *q) {
  r->cpu_milli = q->cpu_milli;
  r->gpu_milli = q->gpu_milli;
  r->memory = q->memory;
  r->ncustom = q->ncustom;
  if (q->ncustom) memcpy(r->custom, q->custom, q->ncustom * sizeof(sh_custom_t));
}

sh_req_t sh_res_as_req(const sh_res_t *r) {
  sh_req_t q = {r->cpu_milli, r->gpu_milli, r->memory, r->ncustom, r->custom};
  return q;
}

static void fmt_milli(char *buf, size_t n, uint64_t m) {
  if (m % 1000 == 0) snprintf(buf, n, "%llu", (unsigned long long)(m / 1000));
  else snprintf(buf, n, "%.3g", (double)m / 1000.0);
}

static void fmt_bytes(char *buf, size_t n, uint64_t b) {
  if (b >= (1ull << 30)) snprintf(buf, n, "%.1f GiB", (double)b / (1 << 30));
  else if (b >= (1ull << 20)) snprintf(buf, n, "%.1f MiB", (double)b / (1 << 20));
  else snprintf(buf, n, "%llu B", (unsigned long long)b);
}

static void format(const sh_req_t *q, char *buf, size_t n, int all) {
  char a[32], b[32], m[32];
  fmt_milli(a, sizeof a, q->cpu_milli);
  fmt_milli(b, sizeof b, q->gpu_milli);
  fmt_bytes(m, sizeof m, q->memory);
  size_t off = 0;
  off += (size_t)snprintf(buf + off, n - off, "{CPU: %s", a);
  if (all || q->gpu_milli) off += (size_t)snprintf(buf + off, off < n ? n - off : 0, ", GPU: %s", b);
  if (all || q->memory) off += (size_t)snprintf(buf + off, off < n ? n - off : 0, ", memory: %s", m);
  for (uint32_t i = 0; i < q->ncustom && off < n; i++) {
    fmt_milli(a, sizeof a, q->custom[i].milli);
    off += (size_t)snprintf(buf + off, n - off, ", %s: %s", q->custom[i].name, a);
  }
  if (off < n) snprintf(buf + off, n - off, "}");
}

void sh_res_format(const sh_res_t *r, char *buf, size_t n) {
  sh_req_t q = sh_res_as_req(r);
  format(&q, buf, n, 1);
}

void sh_req_format(const sh_req_t *q, char *buf, size_t n) { format(q, buf, n, 0); }

static void skip_ws(const char **p) {
  while (isspace((unsigned char)**p)) (*p)++;
}

int sh_res_parse_json(const char *json, sh_res_t *r, char *err, size_t n) {
  const char *p = json;
  skip_ws(&p);
  if (*p++ != '{') goto bad;
  skip_ws(&p);
  if (*p == '}') { p++; goto end; }
  for (;;) {
    char name[SH_NAME_MAX];
    size_t len = 0;
    skip_ws(&p);
    if (*p++ != '"') goto bad;
    while (*p && *p != '"') {
      if (len + 1 >= sizeof name || *p == '\\') {
        snprintf(err, n, "resource names are plain strings of at most %d bytes", SH_NAME_MAX - 1);
        return -EINVAL;
      }
      name[len++] = *p++;
    }
    if (*p++ != '"' || len == 0) goto bad;
    name[len] = 0;
    skip_ws(&p);
    if (*p++ != ':') goto bad;
    char *endp;
    double v = strtod(p, &endp);
    if (endp == p || !isfinite(v) || v < 0) {
      snprintf(err, n, "resource '%s' needs a nonnegative number", name);
      return -EINVAL;
    }
    p = endp;
    if (!strcmp(name, "CPU")) r->cpu_milli = (uint64_t)llround(v * 1000);
    else if (!strcmp(name, "GPU")) r->gpu_milli = (uint64_t)llround(v * 1000);
    else if (!strcmp(name, "memory")) r->memory = (uint64_t)llround(v);
    else if (sh_res_set_custom(r, name, (uint64_t)llround(v * 1000))) {
      snprintf(err, n, "at most %d custom resources", SH_MAX_CUSTOM);
      return -EINVAL;
    }
    skip_ws(&p);
    if (*p == ',') { p++; continue; }
    if (*p++ == '}') break;
    goto bad;
  }
end:
  skip_ws(&p);
  if (*p == 0) return 0;
bad:
  snprintf(err, n, "resources must be a JSON object of numbers, like '{\"GPU\": 2, \"bigmem\": 1}'; got '%s'", json);
  return -EINVAL;
}

/* ---------------------------------------------------------------- registry */

/* Which smallest key a search orders by: a GPU request can only land on a
 * node with a GPU free, and a request for custom resources only on one with
 * some free, so the smallest key among those nodes is a tighter bound than
 * the smallest key of all (measured: a quarter-GPU request visited ~250
 * entries per decision ordered by the plain key, 11 to 17 by its own). */
enum { K_ALL, K_GPU, K_CUSTOM, K_COUNT };

/* One entry of the placement index (see sh_head_t). An entry with no
 * eligible node below it has keys UINT64_MAX and nothing free. */
typedef struct sh__head_agg_s {
  uint64_t key[K_COUNT];  /* smallest score << 32 | node_id below: of all
                           * eligible nodes, of those with a GPU free, of
                           * those with some custom resource free */
  uint64_t cpu, gpu, mem; /* largest free amount of each below */
  uint64_t cmask;         /* custom names with some amount free below */
} sh__head_agg_t;

static const sh__head_agg_t EMPTY_AGG = {{UINT64_MAX, UINT64_MAX, UINT64_MAX}, 0, 0, 0, 0};

static inline uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static inline uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static inline uint64_t id_key(uint32_t node_id) { return (uint64_t)node_id + 1; }

/* The slot of node_id, or -1. */
static int64_t slot_of(const sh_head_t *h, uint32_t node_id) {
  uintptr_t v = (uintptr_t)sh_map_get(&h->by_id, id_key(node_id));
  return v ? (int64_t)v - 1 : -1;
}

static int eligible(const sh_head_node_t *nd) { return nd->alive && !nd->draining; }

/* Fraction of total in use, in SH_HEAD_SCORE_ONE units (inv = 1 / total). */
static uint32_t used_frac(uint64_t total, uint64_t free, double inv) {
  if (!total || free >= total) return 0;
  if (!free) return SH_HEAD_SCORE_ONE; /* exact, whatever the rounding below */
  return (uint32_t)((double)(total - free) * inv * SH_HEAD_SCORE_ONE);
}

/* The node's load score: worst declared dimension or measured load per CPU. */
static uint32_t node_score(const sh_head_node_t *nd) {
  uint32_t s = used_frac(nd->total.cpu_milli, nd->free.cpu_milli, nd->inv[0]);
  uint32_t g = used_frac(nd->total.gpu_milli, nd->free.gpu_milli, nd->inv[1]);
  uint32_t m = used_frac(nd->total.memory, nd->free.memory, nd->inv[2]);
  if (g > s) s = g;
  if (m > s) s = m;
  for (uint32_t i = 0; i < nd->total.ncustom; i++) {
    uint64_t t = nd->total.custom[i].milli;
    uint32_t c = used_frac(t, nd->free.custom[i].milli, t ? 1.0 / (double)t : 0);
    if (c > s) s = c;
  }
  /* A node without CPUs counts its run queue against one CPU. */
  double per_cpu = (double)nd->load_milli * (nd->inv[0] ? nd->inv[0] : 1e-3);
  if (per_cpu > SH_HEAD_LOAD_CAP) per_cpu = SH_HEAD_LOAD_CAP;
  uint32_t l = (uint32_t)(per_cpu * SH_HEAD_SCORE_ONE);
  return l > s ? l : s;
}

static inline void combine(sh__head_agg_t *p, const sh__head_agg_t *l, const sh__head_agg_t *r) {
  for (int k = 0; k < K_COUNT; k++) p->key[k] = min64(l->key[k], r->key[k]);
  p->cpu = max64(l->cpu, r->cpu);
  p->gpu = max64(l->gpu, r->gpu);
  p->mem = max64(l->mem, r->mem);
  p->cmask = l->cmask | r->cmask;
}

/* Recomputes the leaf of `slot` from its node (score included), not above. */
static void set_leaf(sh_head_t *h, uint32_t slot) {
  sh_head_node_t *nd = &h->nodes[slot];
  sh__head_agg_t *leaf = &h->tree[h->cap + slot];
  nd->score = node_score(nd);
  if (!eligible(nd)) {
    *leaf = EMPTY_AGG;
    return;
  }
  uint64_t mask = 0, key = (uint64_t)nd->score << 32 | nd->node_id;
  int any = 0;
  for (uint32_t i = 0; i < nd->free.ncustom; i++) {
    if (!nd->free.custom[i].milli) continue;
    any = 1;
    if (nd->cbit[i] < 64) mask |= 1ull << nd->cbit[i];
  }
  leaf->key[K_ALL] = key;
  leaf->key[K_GPU] = nd->free.gpu_milli ? key : UINT64_MAX;
  leaf->key[K_CUSTOM] = any ? key : UINT64_MAX;
  leaf->cpu = nd->free.cpu_milli;
  leaf->gpu = nd->free.gpu_milli;
  leaf->mem = nd->free.memory;
  leaf->cmask = mask;
}

/* Recomputes the index entries above tree[i]. (Stopping at an entry that
 * comes out unchanged saves nothing measurable: after a placement the node
 * usually held the smallest key, which changes all the way up.) */
static void pull(sh_head_t *h, uint32_t i) {
  sh__head_agg_t *t = h->tree;
  for (i >>= 1; i; i >>= 1) combine(&t[i], &t[2 * i], &t[2 * i + 1]);
}

static void refresh(sh_head_t *h, uint32_t slot) {
  set_leaf(h, slot);
  pull(h, h->cap + slot);
}

/* refresh() for a change that can only make the node more attractive (more
 * free, lower score: a release). Each entry above is the minimum and maximum
 * over its leaves, so merging the leaf's new values in is exact and reads no
 * siblings; it stops at the first entry that already covers them. */
static void refresh_better(sh_head_t *h, uint32_t slot) {
  uint32_t i = h->cap + slot;
  set_leaf(h, slot);
  const sh__head_agg_t *leaf = &h->tree[i];
  for (i >>= 1; i; i >>= 1) {
    sh__head_agg_t e;
    combine(&e, &h->tree[i], leaf);
    if (!memcmp(&e, &h->tree[i], sizeof e)) break;
    h->tree[i] = e;
  }
}

/* Doubles the slots and rebuilds the index over them. */
static void grow(sh_head_t *h) {
  uint32_t cap = h->cap ? h->cap * 2 : 8;
  h->nodes = sh_realloc(h->nodes, (size_t)cap * sizeof *h->nodes);
  h->tot = sh_realloc(h->tot, (size_t)cap * sizeof *h->tot);
  sh_free(h->tree);
  h->tree = sh_malloc(2 * (size_t)cap * sizeof *h->tree);
  h->cap = cap;
  for (uint32_t i = 0; i < 2 * cap; i++) h->tree[i] = EMPTY_AGG;
  for (uint32_t s = 0; s < h->nnodes; s++) set_leaf(h, s);
  for (uint32_t i = cap - 1; i >= 1; i--) combine(&h->tree[i], &h->tree[2 * i], &h->tree[2 * i + 1]);
}

/* The mask bit of a custom name, giving it one if it has none; 0xff when all
 * 64 are taken. */
static uint8_t intern(sh_head_t *h, const char *name) {
  for (uint32_t b = 0; b < h->nnames; b++)
    if (!strcmp(h->names[b], name)) return (uint8_t)b;
  if (h->nnames == 64) {
    h->names_full = 1;
    return 0xff;
  }
  snprintf(h->names[h->nnames], SH_NAME_MAX, "%s", name);
  return (uint8_t)h->nnames++;
}

void sh_head_init(sh_head_t *h) {
  memset(h, 0, sizeof(*h));
  sh_map_init(&h->by_id);
}

void sh_head_close(sh_head_t *h) {
  sh_free(h->nodes);
  sh_free(h->tot);
  sh_free(h->tree);
  sh_map_close(&h->by_id);
  memset(h, 0, sizeof(*h));
}

int sh_head_add_node(sh_head_t *h, uint32_t node_id, const sh_res_t *total) {
  if (slot_of(h, node_id) >= 0) return -EEXIST;
  if (h->nnodes == (1u << 30)) return -ENOSPC;
  uint32_t slot = h->nnodes;
  int rc = sh_map_put(&h->by_id, id_key(node_id), (void *)(uintptr_t)(slot + 1));
  if (rc) return rc;
  if (h->nnodes == h->cap) grow(h);
  sh_head_node_t *nd = &h->nodes[slot];
  memset(nd, 0, offsetof(sh_head_node_t, total));
  nd->node_id = node_id;
  nd->alive = 1;
  nd->total = *total;
  nd->free = *total;
  h->tot[slot][0] = total->cpu_milli;
  h->tot[slot][1] = total->gpu_milli;
  h->tot[slot][2] = total->memory;
  nd->inv[0] = total->cpu_milli ? 1.0 / (double)total->cpu_milli : 0;
  nd->inv[1] = total->gpu_milli ? 1.0 / (double)total->gpu_milli : 0;
  nd->inv[2] = total->memory ? 1.0 / (double)total->memory : 0;
  memset(nd->cbit, 0xff, sizeof nd->cbit);
  for (uint32_t i = 0; i < total->ncustom; i++) nd->cbit[i] = intern(h, total->custom[i].name);
  h->nnodes++;
  h->feas_ok = 0;
  refresh(h, slot);
  return 0;
}

int sh_head_remove_node(sh_head_t *h, uint32_t node_id) {
  int64_t s = slot_of(h, node_id);
  if (s < 0) return -ENOENT;
  uint32_t slot = (uint32_t)s, last = h->nnodes - 1;
  if (slot != last) {
    /* Repoint the moved node first: the only step that can fail. */
    int rc = sh_map_put(&h->by_id, id_key(h->nodes[last].node_id), (void *)(uintptr_t)(slot + 1));
    if (rc) return rc;
    h->nodes[slot] = h->nodes[last];
    memcpy(h->tot[slot], h->tot[last], sizeof h->tot[slot]);
  }
  sh_map_del(&h->by_id, id_key(node_id));
  h->nnodes--;
  h->feas_ok = 0;
  h->tree[h->cap + last] = EMPTY_AGG;
  pull(h, h->cap + last);
  if (slot != last) refresh(h, slot);
  return 0;
}

const sh_head_node_t *sh_head_node(const sh_head_t *h, uint32_t node_id) {
  int64_t s = slot_of(h, node_id);
  return s < 0 ? NULL : &h->nodes[s];
}

/* ---------------------------------------------------------------- updates */

int sh_head_set_free(sh_head_t *h, uint32_t node_id, const sh_res_t *free) {
  int64_t s = slot_of(h, node_id);
  if (s < 0) return -ENOENT;
  sh_head_node_t *nd = &h->nodes[s];
  nd->free.cpu_milli = min64(free->cpu_milli, nd->total.cpu_milli);
  nd->free.gpu_milli = min64(free->gpu_milli, nd->total.gpu_milli);
  nd->free.memory = min64(free->memory, nd->total.memory);
  for (uint32_t i = 0; i < nd->total.ncustom; i++)
    nd->free.custom[i].milli = min64(sh_res_custom(free, nd->total.custom[i].name),
                                     nd->total.custom[i].milli);
  refresh(h, (uint32_t)s);
  return 0;
}

int sh_head_set_load(sh_head_t *h, uint32_t node_id, uint32_t load_milli) {
  int64_t s = slot_of(h, node_id);
  if (s < 0) return -ENOENT;
  h->nodes[s].load_milli = load_milli;
  refresh(h, (uint32_t)s);
  return 0;
}

int sh_head_set_alive(sh_head_t *h, uint32_t node_id, int alive) {
  int64_t s = slot_of(h, node_id);
  if (s < 0) return -ENOENT;
  h->nodes[s].alive = alive != 0;
  h->feas_ok = 0;
  refresh(h, (uint32_t)s);
  return 0;
}

int sh_head_set_draining(sh_head_t *h, uint32_t node_id, int draining) {
  int64_t s = slot_of(h, node_id);
  if (s < 0) return -ENOENT;
  h->nodes[s].draining = draining != 0;
  refresh(h, (uint32_t)s);
  return 0;
}

/* ---------------------------------------------------------------- feasibility */

/* 1 when some live node offers a nonzero amount of custom resource `name`. */
static int anyone_has(const sh_head_t *h, const char *name) {
  for (uint32_t i = 0; i < h->nnodes; i++)
    if (h->nodes[i].alive && sh_res_custom(&h->nodes[i].total, name)) return 1;
  return 0;
}

int sh_head_feasible(sh_head_t *h, const sh_req_t *q, char *why, size_t n) {
  if (h->feas_ok && !q->ncustom && q->cpu_milli == h->feas[0] && q->gpu_milli == h->feas[1] &&
      q->memory == h->feas[2])
    return 1;
  /* The dense totals first: a placement that found no room comes here, and
   * reading each node's record instead cost a cache miss per node. */
  for (uint32_t i = 0; i < h->nnodes; i++) {
    const uint64_t *t = h->tot[i];
    if (t[0] < q->cpu_milli || t[1] < q->gpu_milli || t[2] < q->memory) continue;
    const sh_head_node_t *nd = &h->nodes[i];
    if (nd->alive && (!q->ncustom || sh_res_fits(&nd->total, q))) {
      if (!q->ncustom) {
        h->feas[0] = q->cpu_milli;
        h->feas[1] = q->gpu_milli;
        h->feas[2] = q->memory;
        h->feas_ok = 1;
      }
      return 1;
    }
  }
  if (!why) return 0;
  const sh_head_node_t *largest = NULL;
  for (uint32_t i = 0; i < h->nnodes; i++) {
    const sh_head_node_t *nd = &h->nodes[i];
    if (nd->alive && (!largest || nd->total.cpu_milli > largest->total.cpu_milli)) largest = nd;
  }
  char req[512], has[512];
  sh_req_format(q, req, sizeof req);
  if (!largest) {
    snprintf(why, n, "no node is alive to run a request of %s", req);
    return 0;
  }
  sh_res_format(&largest->total, has, sizeof has);
  const char *missing = "";
  char mbuf[SH_NAME_MAX + 64] = "";
  for (uint32_t i = 0; i < q->ncustom; i++) {
    if (q->custom[i].milli && !anyone_has(h, q->custom[i].name)) {
      snprintf(mbuf, sizeof mbuf, " (no node has a resource named '%s')", q->custom[i].name);
      missing = mbuf;
      break;
    }
  }
  snprintf(why, n,
           "infeasible resource request: asked for %s but the largest node has %s%s; "
           "no node in the cluster can ever run it: lower the request or add a node "
           "that has it",
           req, has, missing);
  return 0;
}

/* ---------------------------------------------------------------- placement */

/* A request in the index's terms: what a subtree must have free, and which
 * of its keys bounds the nodes that could fit. */
typedef struct want_s {
  uint64_t cpu, gpu, mem, cmask;
  int k;
  const sh_req_t *req;
} want_t;

/* Fills w. 0, or -1 when the request names a custom resource no node has
 * ever offered (nothing can fit; only feasibility is left to check). */
static int want_init(const sh_head_t *h, const sh_req_t *q, want_t *w) {
  w->cpu = q->cpu_milli;
  w->gpu = q->gpu_milli;
  w->mem = q->memory;
  w->cmask = 0;
  w->k = q->gpu_milli ? K_GPU : K_ALL;
  w->req = q;
  for (uint32_t i = 0; i < q->ncustom; i++) {
    if (!q->custom[i].milli) continue;
    if (w->k == K_ALL) w->k = K_CUSTOM;
    uint32_t b = 0;
    while (b < h->nnames && strcmp(h->names[b], q->custom[i].name)) b++;
    if (b < h->nnames) w->cmask |= 1ull << b;
    else if (!h->names_full) return -1;
  }
  return 0;
}

static inline int covers(const sh__head_agg_t *a, const want_t *w) {
  return a->cpu >= w->cpu && a->gpu >= w->gpu && a->mem >= w->mem && !(w->cmask & ~a->cmask);
}

/* 1 when the node in `slot` is eligible and its free resources cover w. */
static int slot_fits(const sh_head_t *h, uint32_t slot, const want_t *w) {
  const sh__head_agg_t *leaf = &h->tree[h->cap + slot];
  if (leaf->key[K_ALL] == UINT64_MAX || !covers(leaf, w)) return 0;
  return !w->req->ncustom || sh_res_fits(&h->nodes[slot].free, w->req);
}

/* The fitting node with the most hinted bytes (then the lowest key), or -1. */
static int64_t best_hinted(const sh_head_t *h, const want_t *w, const sh_head_hint_t *hints,
                           uint32_t nhints) {
  int64_t best = -1;
  uint64_t best_bytes = 0, best_key = UINT64_MAX;
  for (uint32_t i = 0; i < nhints; i++) {
    if (!hints[i].bytes) continue;
    int64_t s = slot_of(h, hints[i].node_id);
    if (s < 0 || !slot_fits(h, (uint32_t)s, w)) continue;
    uint64_t key = h->tree[h->cap + s].key[K_ALL];
    if (hints[i].bytes > best_bytes || (hints[i].bytes == best_bytes && key < best_key)) {
      best = s;
      best_bytes = hints[i].bytes;
      best_key = key;
    }
  }
  return best;
}

/* The fitting node with the lowest key, or -1. Branch and bound over the
 * index: the child with the smaller key (of the kind w bounds by) is
 * explored first, and a subtree is skipped when that key is no better than
 * the best found or when its largest free amounts cannot cover w. For a
 * request most nodes can take this follows about one root-to-leaf path. */
static int64_t search(const sh_head_t *h, const want_t *w) {
  const sh__head_agg_t *t = h->tree;
  const int k = w->k;
  uint64_t best = UINT64_MAX;
  int64_t found = -1;
  uint32_t stack[70]; /* depth <= 31, at most two entries per level */
  int sp = 0;
  if (t[1].key[k] != UINT64_MAX && covers(&t[1], w)) stack[sp++] = 1;
  while (sp) {
    uint32_t i = stack[--sp];
    if (t[i].key[k] >= best) continue; /* a better one was found meanwhile */
    if (i >= h->cap) {
      uint32_t slot = i - h->cap;
      if (w->req->ncustom && !sh_res_fits(&h->nodes[slot].free, w->req)) continue;
      best = t[i].key[k];
      found = slot;
      /* The smallest key of all fits: nothing left on the stack can beat it
       * (the common case, which then pops no siblings). */
      if (best == t[1].key[k]) break;
      continue;
    }
    /* Push only children worth a visit, the better one last (popped first).
     * Their children are read next: start loading them now (the lower
     * levels of the index do not fit in L1). */
    uint32_t a = 2 * i, b = a + 1;
    if (2 * a < 2 * h->cap) {
      __builtin_prefetch(&t[2 * a]);
      __builtin_prefetch(&t[2 * a + 1]);
      __builtin_prefetch(&t[2 * b]);
      __builtin_prefetch(&t[2 * b + 1]);
    }
    if (t[b].key[k] < t[a].key[k]) a = b, b = 2 * i;
    if (t[b].key[k] < best && covers(&t[b], w)) stack[sp++] = b;
    if (t[a].key[k] < best && covers(&t[a], w)) stack[sp++] = a;
  }
  return found;
}

/* Takes req from the node in `slot` (it fits) and updates the index. */
static void record(sh_head_t *h, uint32_t slot, const sh_req_t *req) {
  sh_res_sub(&h->nodes[slot].free, req);
  refresh(h, slot);
}

int sh_head_place(sh_head_t *h, const sh_req_t *req, const sh_head_hint_t *hints,
                  uint32_t nhints, uint32_t *node_id, char *why, size_t n) {
  want_t w;
  int64_t slot = -1;
  if (h->nnodes && want_init(h, req, &w) == 0) {
    if (nhints) slot = best_hinted(h, &w, hints, nhints);
    if (slot < 0) slot = search(h, &w);
  }
  if (slot < 0) {
    if (!sh_head_feasible(h, req, why, n)) return SH_EINFEASIBLE;
    if (why) {
      char r[512];
      sh_req_format(req, r, sizeof r);
      snprintf(why, n, "no node has room now for %s: it waits until a node that can run it "
               "has that much free", r);
    }
    return SH_ENOROOM;
  }
  record(h, (uint32_t)slot, req);
  *node_id = h->nodes[slot].node_id;
  return 0;
}

int sh_head_take(sh_head_t *h, uint32_t node_id, const sh_req_t *req) {
  int64_t s = slot_of(h, node_id);
  if (s < 0) return -ENOENT;
  want_t w;
  if (want_init(h, req, &w) || !slot_fits(h, (uint32_t)s, &w)) return SH_ENOROOM;
  record(h, (uint32_t)s, req);
  return 0;
}

int sh_head_release(sh_head_t *h, uint32_t node_id, const sh_req_t *req) {
  int64_t s = slot_of(h, node_id);
  if (s < 0) return -ENOENT;
  sh_head_node_t *nd = &h->nodes[s];
  nd->free.cpu_milli = min64(nd->free.cpu_milli + req->cpu_milli, nd->total.cpu_milli);
  nd->free.gpu_milli = min64(nd->free.gpu_milli + req->gpu_milli, nd->total.gpu_milli);
  nd->free.memory = min64(nd->free.memory + req->memory, nd->total.memory);
  /* Names the node does not offer were never taken from it. */
  for (uint32_t i = 0; i < req->ncustom; i++) {
    for (uint32_t j = 0; j < nd->total.ncustom; j++) {
      if (strcmp(nd->total.custom[j].name, req->custom[i].name)) continue;
      nd->free.custom[j].milli = min64(nd->free.custom[j].milli + req->custom[i].milli,
                                       nd->total.custom[j].milli);
      break;
    }
  }
  refresh_better(h, (uint32_t)s);
  return 0;
}
