/* Growable byte buffers. */
#include "common/buf.h"

#include <errno.h>

#include "common/alloc.h"

void sh_buf_init(sh_buf_t *b) { memset(b, 0, sizeof(*b)); }

void sh_buf_close(sh_buf_t *b) {
  sh_free(b->data);
  memset(b, 0, sizeof(*b));
}

void sh_buf_reset(sh_buf_t *b) { b->len = b->off = 0; }

int sh_buf_reserve(sh_buf_t *b, size_t n) {
  if (b->cap - b->len >= n) return 0;
  /* Reclaim the consumed front before growing. */
  if (b->off > 0) {
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
    if (b->cap - b->len >= n) return 0;
  }
  if (n > SIZE_MAX / 2 - b->len) return -ENOMEM;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < n) cap *= 2;
  uint8_t *p = sh_try_realloc(b->data, cap);
  if (!p) return -ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int sh_buf_append(sh_buf_t *b, const void *p, size_t n) {
  if (n == 0) return 0;
  int rc = sh_buf_reserve(b, n);
  if (rc) return rc;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void sh_buf_consume(sh_buf_t *b, size_t n) {
  b->off += n;
  if (b->off >= b->len) b->off = b->len = 0;
}

int sh_buf_u32(sh_buf_t *b, uint32_t v) {
  int rc = sh_buf_reserve(b, 4);
  if (rc) return rc;
  sh_put_u32(b->data + b->len, v);
  b->len += 4;
  return 0;
}

int sh_buf_u64(sh_buf_t *b, uint64_t v) {
  int rc = sh_buf_reserve(b, 8);
  if (rc) return rc;
  sh_put_u64(b->data + b->len, v);
  b->len += 8;
  return 0;
}
