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
