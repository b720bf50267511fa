/* Open-addressing u64 -> pointer hash map with linear probing. */
#include "common/map.h"

#include <errno.h>
#include <string.h>

#include "common/alloc.h"

#define mix sh_map_mix

void sh_map_init(sh_map_t *m) { memset(m, 0, sizeof(*m)); }

void sh_map_close(sh_map_t *m) {
  sh_free(m->slots);
  memset(m, 0, sizeof(*m));
}

void *sh_map_get(const sh_map_t *m, uint64_t key) {
  if (!m->cap) return NULL;
  size_t mask = m->cap - 1;
  for (size_t i = mix(key) & mask;; i = (i + 1) & mask) {
    uint64_t k = m->slots[i].key;
    if (k == key) return m->slots[i].val;
    if (k == 0) return NULL;
  }
}

static int grow(sh_map_t *m) {
  size_t cap = m->cap ? m->cap : 16;
  /* Rehash in place when tombstones dominate; double when live entries do. */
  if (m->count * 2 >= cap / 2 || !m->cap) cap *= 2;
  sh_map_slot_t *slots = sh_try_malloc(cap * sizeof(*slots));
  if (!slots) return -ENOMEM;
  memset(slots, 0, cap * sizeof(*slots));
  for (size_t i = 0; i < m->cap; i++) {
    uint64_t k = m->slots[i].key;
    if (k == 0 || k == SH_MAP_TOMB) continue;
    size_t j = mix(k) & (cap - 1);
    while (slots[j].key) j = (j + 1) & (cap - 1);
    slots[j] = m->slots[i];
  }
  sh_free(m->slots);
  m->slots = slots;
  m->cap = cap;
  m->used = m->count;
  return 0;
}

int sh_map_put(sh_map_t *m, uint64_t key, void *val) {
  if (key == 0 || key == SH_MAP_TOMB) return -EINVAL;
  if ((m->used + 1) * 4 >= m->cap * 3) {
    int rc = grow(m);
    if (rc) return rc;
  }
  size_t mask = m->cap - 1, tomb = SIZE_MAX;
  for (size_t i = mix(key) & mask;; i = (i + 1) & mask) {
    uint64_t k = m->slots[i].key;
    if (k == key) {
      m->slots[i].val = val;
      return 0;
    }
    if (k == SH_MAP_TOMB && tomb == SIZE_MAX) tomb = i;
    if (k == 0) {
      if (tomb != SIZE_MAX) i = tomb;
      else m->used++;
      m->slots[i].key = key;
      m->slots[i].val = val;
      m->count++;
      return 0;
    }
  }
}

void *sh_map_del(sh_map_t *m, uint64_t key) {
  if (!m->cap || key == 0 || key == SH_MAP_TOMB) return NULL;
  size_t mask = m->cap - 1;
  for (size_t i = mix(key) & mask;; i = (i + 1) & mask) {
    uint64_t k = m->slots[i].key;
    if (k == 0) return NULL;
    if (k == key) {
      void *v = m->slots[i].val;
      m->slots[i].key = SH_MAP_TOMB;
      m->slots[i].val = NULL;
      m->count--;
      return v;
    }
  }
}

int sh_map_next(const sh_map_t *m, size_t *i, uint64_t *key, void **val) {
  for (; *i < m->cap; (*i)++) {
    uint64_t k = m->slots[*i].key;
    if (k == 0 || k == SH_MAP_TOMB) continue;
    *key = k;
    *val = m->slots[*i].val;
    (*i)++;
    return 1;
  }
  return 0;
}
