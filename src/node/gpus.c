/* GPU device assignment: whole devices or packed fractions, as a bit mask. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>

#include "node/gpus.h"

void sh_gpus_init(sh_gpus_t *g, uint64_t total_milli) {
  g->n = 0;
  while (total_milli > 0 && g->n < SH_GPUS_MAX) {
    uint32_t c = total_milli >= 1000 ? 1000 : (uint32_t)total_milli;
    g->cap_milli[g->n] = c;
    g->free_milli[g->n] = c;
    g->n++;
    total_milli -= c;
  }
}

int sh_gpus_valid(uint64_t milli) {
  return milli < 1000 || milli % 1000 == 0 ? 0 : -EINVAL;
}

/* The amount a request takes on each device of its mask. */
static uint32_t per_device(uint64_t milli) { return milli < 1000 ? (uint32_t)milli : 1000; }

int sh_gpus_pick(const sh_gpus_t *g, uint64_t milli, uint64_t *mask) {
  *mask = 0;
  if (!milli) return 0;
  if (milli < 1000) {
    int best = -1;
    for (uint32_t i = 0; i < g->n; i++)
      if (g->free_milli[i] >= milli && (best < 0 || g->free_milli[i] < g->free_milli[best]))
        best = (int)i;
    if (best < 0) return -EAGAIN;
    *mask = 1ull << best;
    return 0;
  }
  uint64_t want = milli / 1000, got = 0, m = 0;
  for (uint32_t i = 0; i < g->n && got < want; i++) {
    if (g->free_milli[i] != 1000) continue;
    m |= 1ull << i;
    got++;
  }
  if (got < want) return -EAGAIN;
  *mask = m;
  return 0;
}

void sh_gpus_take(sh_gpus_t *g, uint64_t milli, uint64_t mask) {
  uint32_t d = per_device(milli);
  for (uint32_t i = 0; i < g->n; i++)
    if (mask >> i & 1) g->free_milli[i] = g->free_milli[i] >= d ? g->free_milli[i] - d : 0;
}

void sh_gpus_give(sh_gpus_t *g, uint64_t milli, uint64_t mask) {
  uint32_t d = per_device(milli);
  for (uint32_t i = 0; i < g->n; i++) {
    if (!(mask >> i & 1)) continue;
    uint32_t f = g->free_milli[i] + d;
    g->free_milli[i] = f > g->cap_milli[i] ? g->cap_milli[i] : f;
  }
}

int sh_gpus_format(uint64_t mask, char *out, size_t cap) {
  size_t n = 0;
  if (cap) out[0] = 0;
  for (uint32_t i = 0; i < SH_GPUS_MAX && mask; i++) {
    if (!(mask >> i & 1)) continue;
    mask &= ~(1ull << i);
    int w = snprintf(out + n, cap > n ? cap - n : 0, "%s%u", n ? "," : "", i);
    if (w < 0 || (size_t)w >= (cap > n ? cap - n : 0)) break;
    n += (size_t)w;
  }
  return (int)n;
}
