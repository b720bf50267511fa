/* Allocation wrapper: every engine allocation goes through here so tests can
 * count allocations and make the N-th one fail. */
#ifndef SH_ALLOC_H
#define SH_ALLOC_H

#include <stddef.h>

/* Control-plane allocation: aborts with a message on OOM, never returns NULL. */
void *sh_malloc(size_t n);
void *sh_calloc(size_t n, size_t size);
void *sh_realloc(void *p, size_t n);
char *sh_strdup(const char *s);

/* Client-sized allocation (frames, payloads): returns NULL on failure. */
void *sh_try_malloc(size_t n);
void *sh_try_realloc(void *p, size_t n);

void sh_free(void *p);

/* Test hooks: after `n` more successful try-allocations the next one fails
 * (n < 0 disables). sh_alloc_live() counts blocks not yet freed. */
void sh_alloc_fail_after(long n);
long sh_alloc_live(void);

#endif
