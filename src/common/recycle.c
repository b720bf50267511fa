/* Size-class stacks of freed blocks (see recycle.h). */
#include "common/recycle.h"

#include <string.h>

#include "common/alloc.h"

void sh_recycle_init(sh_recycle_t *r, size_t max_bytes) {
  memset(r, 0, sizeof *r);
  r->max_bytes = max_bytes;
}

void sh_recycle_close(sh_recycle_t *r) {
  for (int c = 1; c <= SH_RECYCLE_CLASSES; c++) {
    while (r->free[c]) {
      void *p = r->free[c];
      memcpy(&r->free[c], p, sizeof(void *));
      sh_free(p);
    }
  }
  r->bytes = 0;
}

void *sh_recycle_get(sh_recycle_t *r, size_t size, uint8_t *cls) {
  size_t c = (size + SH_RECYCLE_GRAIN - 1) / SH_RECYCLE_GRAIN;
  if (c == 0) c = 1;
  if (c > SH_RECYCLE_CLASSES) {
    *cls = 0;
    return sh_try_malloc(size);
  }
  *cls = (uint8_t)c;
  void *p = r->free[c];
  if (!p) return sh_try_malloc(c * SH_RECYCLE_GRAIN);
  memcpy(&r->free[c], p, sizeof(void *));
  r->bytes -= c * SH_RECYCLE_GRAIN;
  return p;
}

void sh_recycle_put(sh_recycle_t *r, void *p, uint8_t cls) {
  if (!p) return;
  size_t sz = (size_t)cls * SH_RECYCLE_GRAIN;
  if (cls == 0 || cls > SH_RECYCLE_CLASSES || r->bytes + sz > r->max_bytes) {
    sh_free(p);
    return;
  }
  memcpy(p, &r->free[cls], sizeof(void *));
  r->free[cls] = p;
  r->bytes += sz;
}
