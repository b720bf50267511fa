/* Growable byte buffers for building frames, and a bounds-checked reader for
 * decoding them. All multi-byte integers are little-endian on the wire. */
#ifndef SH_BUF_H
#define SH_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct sh_buf_s {
  uint8_t *data; /* owned; NULL when cap == 0 */
  size_t len;    /* bytes written */
  size_t off;    /* bytes already consumed from the front (readers/writers) */
  size_t cap;    /* bytes allocated */
} sh_buf_t;

void sh_buf_init(sh_buf_t *b);
void sh_buf_close(sh_buf_t *b);
/* Makes room for `n` more bytes. 0, or -ENOMEM (buffer unchanged). */
int sh_buf_reserve(sh_buf_t *b, size_t n);
/* Appends; -ENOMEM leaves the buffer unchanged. */
int sh_buf_append(sh_buf_t *b, const void *p, size_t n);
/* Drops `n` consumed bytes from the front; compacts when cheap. */
void sh_buf_consume(sh_buf_t *b, size_t n);
static inline size_t sh_buf_avail(const sh_buf_t *b) { return b->len - b->off; }
static inline uint8_t *sh_buf_head(const sh_buf_t *b) { return b->data + b->off; }
void sh_buf_reset(sh_buf_t *b);

/* Little-endian stores and loads. memcpy of a fixed size compiles to one
 * move (the byte-at-a-time forms it replaced did not: gcc kept them as loops
 * of shifts, a few dozen instructions per field on every frame). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define SH_LE16(v) __builtin_bswap16(v)
#define SH_LE32(v) __builtin_bswap32(v)
#define SH_LE64(v) __builtin_bswap64(v)
#else
#define SH_LE16(v) (v)
#define SH_LE32(v) (v)
#define SH_LE64(v) (v)
#endif
static inline void sh_put_u16(uint8_t *p, uint16_t v) { v = SH_LE16(v); memcpy(p, &v, 2); }
static inline void sh_put_u32(uint8_t *p, uint32_t v) { v = SH_LE32(v); memcpy(p, &v, 4); }
static inline void sh_put_u64(uint8_t *p, uint64_t v) { v = SH_LE64(v); memcpy(p, &v, 8); }
static inline uint16_t sh_get_u16(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return SH_LE16(v);
}
static inline uint32_t sh_get_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return SH_LE32(v);
}
static inline uint64_t sh_get_u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return SH_LE64(v);
}

/* Appending writers (abort-free: return -ENOMEM). */
int sh_buf_u32(sh_buf_t *b, uint32_t v);
int sh_buf_u64(sh_buf_t *b, uint64_t v);

/* Reader over an untrusted byte range. Any read past the end sets `err` and
 * returns zeros; check `err` once after a sequence of reads. */
typedef struct sh_rd_s {
  const uint8_t *p;
  const uint8_t *end;
  int err;
} sh_rd_t;

static inline void sh_rd_init(sh_rd_t *r, const void *p, size_t n) {
  r->p = p;
  r->end = (const uint8_t *)p + n;
  r->err = 0;
}
static inline int sh_rd_need(sh_rd_t *r, size_t n) {
  if (r->err || (size_t)(r->end - r->p) < n) { r->err = 1; return 0; }
  return 1;
}
static inline uint32_t sh_rd_u32(sh_rd_t *r) {
  if (!sh_rd_need(r, 4)) return 0;
  uint32_t v = sh_get_u32(r->p); r->p += 4; return v;
}
static inline uint64_t sh_rd_u64(sh_rd_t *r) {
  if (!sh_rd_need(r, 8)) return 0;
  uint64_t v = sh_get_u64(r->p); r->p += 8; return v;
}
/* Returns a pointer to `n` bytes inside the range, or NULL (err set). */
static inline const uint8_t *sh_rd_bytes(sh_rd_t *r, size_t n) {
  if (!sh_rd_need(r, n)) return NULL;
  const uint8_t *q = r->p; r->p += n; return q;
}
static inline size_t sh_rd_left(const sh_rd_t *r) { return (size_t)(r->end - r->p); }

#endif
