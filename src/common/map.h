/* An open-addressing hash map from nonzero u64 ids to pointers. Ids are
 * engine-assigned (client id in the high bits, a sequence below), so a cheap
 * integer mix spreads them well. Not thread-safe. */
#ifndef SH_MAP_H
#define SH_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct sh_map_slot_s {
  uint64_t key; /* 0: empty; SH_MAP_TOMB: deleted */
  void *val;
} sh_map_slot_t;

typedef struct sh_map_s {
  sh_map_slot_t *slots;
  size_t cap;   /* power of two, or 0 */
  size_t count; /* live entries */
  size_t used;  /* live + tombstones */
} sh_map_t;

#define SH_MAP_TOMB UINT64_MAX

/* The hash of a key (the slot is hash & (cap - 1)). */
static inline size_t sh_map_mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  return (size_t)k;
}

/* Maps at least this big (slots) are worth a prefetch: smaller ones stay in
 * the cache. */
#define SH_MAP_PREFETCH_MIN 4096

/* Starts loading the slot a lookup of `key` reads first, so that the lookup
 * a little later does not wait for memory (ids come in no order a big map
 * keeps in the cache). Only a hint: it changes nothing. */
static inline void sh_map_prefetch(const sh_map_t *m, uint64_t key) {
  if (m->cap < SH_MAP_PREFETCH_MIN) return;
  const sh_map_slot_t *s = &m->slots[sh_map_mix(key) & (m->cap - 1)];
  __builtin_prefetch(s);
  /* gcc counts a prefetch as no effect at all, finds this function (and
   * its callers) pure and drops the calls; an empty volatile asm is one. */
  __asm__ volatile("" : : "r"(s));
}

void sh_map_init(sh_map_t *m);
void sh_map_close(sh_map_t *m);
/* Value for `key`, or NULL. */
void *sh_map_get(const sh_map_t *m, uint64_t key);
/* Inserts or replaces. 0, or -ENOMEM (map unchanged), -EINVAL for key 0 or
 * SH_MAP_TOMB. */
int sh_map_put(sh_map_t *m, uint64_t key, void *val);
/* Removes and returns the value, or NULL when absent. */
void *sh_map_del(sh_map_t *m, uint64_t key);

/* Iteration: for (size_t i = 0; sh_map_next(m, &i, &k, &v);) ... Removing the
 * entry just returned is allowed. */
int sh_map_next(const sh_map_t *m, size_t *i, uint64_t *key, void **val);

#endif
