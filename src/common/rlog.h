/* A record log: byte records kept by a growing sequence number, appended to
 * chunks and indexed from the oldest live sequence on, so that keeping,
 * finding and dropping a record cost no hashing and no allocation of their
 * own. The driver keeps the frames a restarted head must be sent again in
 * one (python/shoal/_core/io.c): its task ids grow, and most records are
 * dropped soon, roughly in the order they were made. Not thread-safe.
 *
 * Memory: a chunk is freed as soon as none of its records is live (the
 * chunk being appended to is reused instead), and the index spans from the
 * oldest live record to the newest. One old live record therefore holds its
 * chunk and the index behind it: sh_rlog_sparse says when the caller should
 * move the oldest record elsewhere (sh_rlog_first, then sh_rlog_del). */
#ifndef SH_RLOG_H
#define SH_RLOG_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of a chunk; a record larger than that gets a chunk of its own. */
#define SH_RLOG_CHUNK (256u << 10)
/* A put may extend the index by at most this many sequence numbers past
 * its end: ids far ahead go elsewhere instead of growing it. */
#define SH_RLOG_GAP 65536u

typedef struct sh_rlog_chunk_s sh_rlog_chunk_t;

/* One record, inside a chunk. */
typedef struct sh_rlog_rec_s {
  sh_rlog_chunk_t *chunk; /* the chunk that holds it */
  uint64_t id;            /* the caller's id for it (not interpreted) */
  uint32_t len;           /* bytes of data */
  uint32_t pad;
  uint8_t data[];
} sh_rlog_rec_t;

/* Invariants: idx[off + i] is the live record of sequence base + i, or
 * NULL, for i < n; n == 0 or idx[off] is not NULL (the front is trimmed);
 * `live` counts the non-NULL entries, and each chunk's own count those in
 * it. `base` never decreases. */
typedef struct sh_rlog_s {
  sh_rlog_rec_t **idx;         /* the index (sh_try_realloc'd) */
  size_t off, n, cap;          /* first used slot, slots in use, slots */
  uint64_t base;               /* sequence of idx[off] */
  size_t live;                 /* live records */
  size_t live_bytes;           /* bytes of their data */
  size_t chunk_bytes;          /* bytes of all chunks */
  sh_rlog_chunk_t *first, *last; /* chunks, oldest first; records go to last */
} sh_rlog_t;

void sh_rlog_init(sh_rlog_t *l);
/* Frees every chunk and the index; l is then empty (and usable). */
void sh_rlog_close(sh_rlog_t *l);

/* Makes room for a record of `len` bytes for sequence `seq`, replacing any
 * record of seq, and sets *data to where the caller writes its bytes.
 * Returns 0; -ERANGE when seq is older than the oldest live sequence (or
 * than one trimmed before), or more than SH_RLOG_GAP past the newest; or
 * -ENOMEM. On failure the log is unchanged. */
int sh_rlog_put(sh_rlog_t *l, uint64_t seq, uint64_t id, size_t len, uint8_t **data);
/* The live record of seq, or NULL. */
sh_rlog_rec_t *sh_rlog_get(const sh_rlog_t *l, uint64_t seq);
/* Drops the record of seq; 1 when there was one, else 0. */
int sh_rlog_del(sh_rlog_t *l, uint64_t seq);

/* Iteration in sequence order:
 *   for (size_t i = 0; (r = sh_rlog_next(l, &i));) ...
 * The log must not change meanwhile. */
sh_rlog_rec_t *sh_rlog_next(const sh_rlog_t *l, size_t *i);
/* The oldest live record and its sequence, or NULL when empty. */
sh_rlog_rec_t *sh_rlog_first(const sh_rlog_t *l, uint64_t *seq);
/* 1 when the index or the chunks have grown well past what the live records
 * need (an old record holds them): the caller should move the oldest record
 * out. */
int sh_rlog_sparse(const sh_rlog_t *l);

#endif
