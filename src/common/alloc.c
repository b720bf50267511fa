/* Allocation wrapper with a fault-injection hook and a live-block counter. */
#include "common/alloc.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_long live;
static atomic_long fail_after = -1;

static int should_fail(void) {
  long n = atomic_load(&fail_after);
  if (n < 0) return 0;
  if (n == 0) return 1;
  atomic_store(&fail_after, n - 1);
  return 0;
}

static void oom(size_t n) {
  fprintf(stderr, "shoal: out of memory allocating %zu bytes\n", n);
  abort();
}

void *sh_try_malloc(size_t n) {
  if (should_fail()) return NULL;
  void *p = malloc(n ? n : 1);
  if (p) atomic_fetch_add(&live, 1);
  return p;
}

void *sh_try_realloc(void *p, size_t n) {
  if (should_fail()) return NULL;
  void *q = realloc(p, n ? n : 1);
  if (q && !p) atomic_fetch_add(&live, 1);
  return q;
}

void *sh_malloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) oom(n);
  atomic_fetch_add(&live, 1);
  return p;
}

void *sh_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) oom(n * size);
  atomic_fetch_add(&live, 1);
  return p;
}

void *sh_realloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) oom(n);
  if (!p) atomic_fetch_add(&live, 1);
  return q;
}

char *sh_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = sh_malloc(n);
  memcpy(d, s, n);
  return d;
}

void sh_free(void *p) {
  if (!p) return;
  atomic_fetch_sub(&live, 1);
  free(p);
}

void sh_alloc_fail_after(long n) { atomic_store(&fail_after, n); }
long sh_alloc_live(void) { return atomic_load(&live); }
