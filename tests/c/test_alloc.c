/* Unit tests for src/common/alloc.c: the live-block counter and the fault hook
 * that the other tests' fault loops rely on. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sh_test.h"

static void counts_every_allocator(void **state) {
  long live = sh_alloc_live();
  void *a = sh_malloc(10);
  char *b = sh_calloc(4, 8);
  void *c = sh_realloc(NULL, 16); /* realloc(NULL) is an allocation */
  char *d = sh_strdup("shoal");
  void *e = sh_try_malloc(1);
  void *f = sh_try_realloc(NULL, 1);
  assert_int_equal(sh_alloc_live(), live + 6);
  for (int i = 0; i < 32; i++) assert_int_equal(b[i], 0);
  assert_string_equal(d, "shoal");
  c = sh_realloc(c, 4096); /* growing a block is not a new one */
  f = sh_try_realloc(f, 4096);
  assert_non_null(f);
  assert_int_equal(sh_alloc_live(), live + 6);
  sh_free(a);
  sh_free(b);
  sh_free(c);
  sh_free(d);
  sh_free(e);
  sh_free(f);
  assert_int_equal(sh_alloc_live(), live);
}

static void free_null_is_a_noop(void **state) {
  long live = sh_alloc_live();
  sh_free(NULL);
  assert_int_equal(sh_alloc_live(), live);
}

static void zero_sizes_give_distinct_blocks(void **state) {
  void *a = sh_malloc(0), *b = sh_try_malloc(0), *c = sh_calloc(0, 0);
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(c);
  assert_ptr_not_equal(a, b);
  sh_free(a);
  sh_free(b);
  sh_free(c);
}

static void fail_after_counts_successes_then_sticks(void **state) {
  long live = sh_alloc_live();
  sh_alloc_fail_after(2);
  void *a = sh_try_malloc(8);
  void *b = sh_try_malloc(8);
  void *c = sh_try_malloc(8);
  void *d = sh_try_realloc(NULL, 8);
  assert_non_null(a);
  assert_non_null(b);
  assert_null(c); /* the third fails ... */
  assert_null(d); /* ... and so does every later one until disabled */
  assert_int_equal(sh_alloc_live(), live + 2);
  sh_alloc_fail_after(-1);
  c = sh_try_malloc(8);
  assert_non_null(c);
  sh_free(a);
  sh_free(b);
  sh_free(c);
}

static void fail_after_zero_fails_the_first(void **state) {
  sh_alloc_fail_after(0);
  assert_null(sh_try_malloc(1));
  assert_null(sh_try_realloc(NULL, 1));
  sh_alloc_fail_after(-1);
}

static void failed_realloc_keeps_the_block(void **state) {
  char *p = sh_try_malloc(4);
  assert_non_null(p);
  memcpy(p, "abc", 4);
  long live = sh_alloc_live();
  sh_alloc_fail_after(0);
  assert_null(sh_try_realloc(p, 1 << 20));
  sh_alloc_fail_after(-1);
  assert_int_equal(sh_alloc_live(), live);
  assert_string_equal(p, "abc");
  sh_free(p);
}

static void control_plane_ignores_the_hook(void **state) {
  sh_alloc_fail_after(0);
  void *a = sh_malloc(8);
  void *b = sh_calloc(1, 8);
  void *c = sh_realloc(NULL, 8);
  char *d = sh_strdup("x");
  sh_alloc_fail_after(-1);
  sh_free(a);
  sh_free(b);
  sh_free(c);
  sh_free(d);
}

static void try_malloc_reports_real_oom(void **state) {
#if defined(__SANITIZE_ADDRESS__)
  skip(); /* ASan treats a request this large as a fatal error by default */
#else
  long live = sh_alloc_live();
  assert_null(sh_try_malloc(SIZE_MAX / 2));
  assert_int_equal(sh_alloc_live(), live);
#endif
}

static void control_plane_oom_aborts(void **state) {
#if defined(__SANITIZE_ADDRESS__)
  skip(); /* ASan reports the huge request itself instead of returning NULL */
#else
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(2); /* keep the expected message out of the test log */
    sh_malloc(SIZE_MAX / 2);
    _exit(0);
  }
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFSIGNALED(st));
  assert_int_equal(WTERMSIG(st), SIGABRT);
#endif
}

static const struct CMUnitTest tests[] = {
    SH_TEST(counts_every_allocator),
    SH_TEST(free_null_is_a_noop),
    SH_TEST(zero_sizes_give_distinct_blocks),
    SH_TEST(fail_after_counts_successes_then_sticks),
    SH_TEST(fail_after_zero_fails_the_first),
    SH_TEST(failed_realloc_keeps_the_block),
    SH_TEST(control_plane_ignores_the_hook),
    SH_TEST(try_malloc_reports_real_oom),
    SH_TEST(control_plane_oom_aborts),
};

SH_TEST_MAIN(tests)
