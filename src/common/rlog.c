/* The record log (see rlog.h): chunks of records and an index by sequence.
 * Sections: chunks; the index; records. */
#include "common/rlog.h"

#include <errno.h>
#include <string.h>

#include "common/alloc.h"

/* An index that spans this many slots per live record (and more than
 * SPARSE_SLOTS), or chunks this many times the live bytes (and more than
 * SPARSE_CHUNKS chunks), is sparse. */
#define SPARSE_FACTOR 4
#define SPARSE_SLOTS 65536u
#define SPARSE_CHUNKS 8

struct sh_rlog_chunk_s {
  sh_rlog_chunk_t *prev, *next;
  size_t used, cap; /* bytes of data in use, and in all */
  size_t live;      /* live records in it */
  _Alignas(8) uint8_t data[];
};

/* ---- chunks ---- */

static size_t rec_size(size_t len) {
  return (sizeof(sh_rlog_rec_t) + len + 7) & ~(size_t)7;
}

static void chunk_unlink(sh_rlog_t *l, sh_rlog_chunk_t *k) {
  if (k->prev) k->prev->next = k->next;
  else l->first = k->next;
  if (k->next) k->next->prev = k->prev;
  else l->last = k->prev;
  l->chunk_bytes -= k->cap;
  sh_free(k);
}

/* A new chunk for a record of `size` bytes when the last chunk has no room
 * for it, not linked yet (chunk_link); NULL when none is needed or without
 * memory (*rc -ENOMEM). */
static sh_rlog_chunk_t *chunk_new(const sh_rlog_t *l, size_t size, int *rc) {
  *rc = 0;
  if (l->last && l->last->cap - l->last->used >= size) return NULL;
  size_t cap = size > SH_RLOG_CHUNK ? size : SH_RLOG_CHUNK;
  sh_rlog_chunk_t *k = sh_try_malloc(sizeof *k + cap);
  if (!k) {
    *rc = -ENOMEM;
    return NULL;
  }
  k->used = k->live = 0;
  k->cap = cap;
  k->prev = k->next = NULL;
  return k;
}

/* Appends k as the chunk records go to; the last one goes if nothing in it
 * is live. */
static void chunk_link(sh_rlog_t *l, sh_rlog_chunk_t *k) {
  sh_rlog_chunk_t *empty = l->last && !l->last->live ? l->last : NULL;
  k->prev = l->last;
  if (l->last) l->last->next = k;
  else l->first = k;
  l->last = k;
  l->chunk_bytes += k->cap;
  if (empty) chunk_unlink(l, empty);
}

/* A record stops being live: its chunk goes once nothing in it is (the last
 * chunk is reused from its start instead). */
static void rec_drop(sh_rlog_t *l, sh_rlog_rec_t *r) {
  sh_rlog_chunk_t *k = r->chunk;
  l->live--;
  l->live_bytes -= r->len;
  if (--k->live) return;
  if (k == l->last) k->used = 0;
  else chunk_unlink(l, k);
}

/* ---- the index ---- */

/* Makes room for slots up to `slots` from off, moving the used slots to the
 * start or growing the index. 0 or -ENOMEM. */
static int idx_room(sh_rlog_t *l, size_t slots) {
  if (l->off + slots <= l->cap) return 0;
  if (slots <= l->cap / 2) { /* half of it is trimmed slots: slide back */
    memmove(l->idx, l->idx + l->off, l->n * sizeof *l->idx);
    l->off = 0;
    return 0;
  }
  size_t cap = l->cap ? l->cap : 1024;
  while (cap < slots * 2) cap *= 2;
  sh_rlog_rec_t **p = sh_try_malloc(cap * sizeof *p);
  if (!p) return -ENOMEM;
  if (l->n) memcpy(p, l->idx + l->off, l->n * sizeof *p);
  sh_free(l->idx);
  l->idx = p;
  l->cap = cap;
  l->off = 0;
  return 0;
}

/* Drops NULL slots at the front, keeping the invariant that idx[off] is
 * live. */
static void idx_trim(sh_rlog_t *l) {
  while (l->n && !l->idx[l->off]) {
    l->off++;
    l->n--;
    l->base++;
  }
  if (!l->n) l->off = 0;
}

/* ---- records ---- */

void sh_rlog_init(sh_rlog_t *l) { memset(l, 0, sizeof *l); }

void sh_rlog_close(sh_rlog_t *l) {
  while (l->first) chunk_unlink(l, l->first);
  sh_free(l->idx);
  uint64_t base = l->base + l->n;
  sh_rlog_init(l);
  l->base = base; /* sequences seen stay behind */
}

int sh_rlog_put(sh_rlog_t *l, uint64_t seq, uint64_t id, size_t len, uint8_t **data) {
  if (len > UINT32_MAX) return -ERANGE;
  if (seq < l->base || (l->n && seq - l->base >= (uint64_t)l->n + SH_RLOG_GAP)) return -ERANGE;
  /* An empty log starts over at seq (base only grows). */
  uint64_t base = l->n ? l->base : seq;
  size_t slot = (size_t)(seq - base);
  size_t n = slot >= l->n ? slot + 1 : l->n;
  size_t size = rec_size(len);
  int rc;
  sh_rlog_chunk_t *k = chunk_new(l, size, &rc);
  if (rc) return rc;
  if (!l->n) l->off = 0;
  if (idx_room(l, n)) {
    sh_free(k);
    return -ENOMEM;
  }
  if (k) chunk_link(l, k);
  k = l->last;
  for (size_t i = l->n; i < n; i++) l->idx[l->off + i] = NULL;
  l->base = base;
  l->n = n;
  sh_rlog_rec_t *old = l->idx[l->off + slot];
  sh_rlog_rec_t *r = (sh_rlog_rec_t *)(k->data + k->used);
  k->used += size;
  k->live++;
  r->chunk = k;
  r->id = id;
  r->len = (uint32_t)len;
  r->pad = 0;
  l->idx[l->off + slot] = r;
  l->live++;
  l->live_bytes += len;
  if (old) rec_drop(l, old);
  *data = r->data;
  return 0;
}

sh_rlog_rec_t *sh_rlog_get(const sh_rlog_t *l, uint64_t seq) {
  if (seq < l->base || seq - l->base >= l->n) return NULL;
  return l->idx[l->off + (size_t)(seq - l->base)];
}

int sh_rlog_del(sh_rlog_t *l, uint64_t seq) {
  sh_rlog_rec_t *r = sh_rlog_get(l, seq);
  if (!r) return 0;
  l->idx[l->off + (size_t)(seq - l->base)] = NULL;
  rec_drop(l, r);
  idx_trim(l);
  return 1;
}

sh_rlog_rec_t *sh_rlog_next(const sh_rlog_t *l, size_t *i) {
  while (*i < l->n) {
    sh_rlog_rec_t *r = l->idx[l->off + (*i)++];
    if (r) return r;
  }
  return NULL;
}

sh_rlog_rec_t *sh_rlog_first(const sh_rlog_t *l, uint64_t *seq) {
  if (!l->n) return NULL;
  *seq = l->base;
  return l->idx[l->off];
}

int sh_rlog_sparse(const sh_rlog_t *l) {
  if (l->n > SPARSE_SLOTS && l->n > SPARSE_FACTOR * l->live) return 1;
  return l->chunk_bytes > SPARSE_CHUNKS * (size_t)SH_RLOG_CHUNK &&
         l->chunk_bytes > SPARSE_FACTOR * (l->live_bytes + l->live * sizeof(sh_rlog_rec_t));
}
