/* A cache of freed small blocks, by size class, for the records a daemon
 * makes and frees once per task (tasks, results). Every block is a real
 * allocation from sh_try_malloc, so sh_free stays a valid way to drop one;
 * going through the cache only saves malloc's cost when one batch of tasks
 * frees what the next allocates (glibc's own per-thread cache keeps 7 blocks
 * a size, far too few for the tens of thousands of tasks a batch holds).
 * Single-threaded: one per daemon. */
#ifndef SH_RECYCLE_H
#define SH_RECYCLE_H

#include <stddef.h>
#include <stdint.h>

#define SH_RECYCLE_GRAIN 16u  /* class c holds blocks of c * GRAIN bytes */
#define SH_RECYCLE_CLASSES 32 /* blocks up to 512 bytes; larger go to malloc */

typedef struct sh_recycle_s {
  void *free[SH_RECYCLE_CLASSES + 1]; /* stacks, linked through each block's start */
  size_t bytes;     /* held in the stacks */
  size_t max_bytes; /* never more than this held (the rest is freed) */
} sh_recycle_t;

void sh_recycle_init(sh_recycle_t *r, size_t max_bytes);
/* Frees every block held. */
void sh_recycle_close(sh_recycle_t *r);
/* A block of at least `size` bytes, or NULL when out of memory. `*cls` gets
 * what sh_recycle_put needs back: the class, or 0 when the block is too big
 * for one (then it is a plain allocation of `size`). */
void *sh_recycle_get(sh_recycle_t *r, size_t size, uint8_t *cls);
/* Takes back a block from sh_recycle_get with its class (NULL: nothing). */
void sh_recycle_put(sh_recycle_t *r, void *p, uint8_t cls);

#endif
