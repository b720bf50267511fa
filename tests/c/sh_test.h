/* Shared scaffolding for the C unit tests: a main that runs one named test (so
 * ctest gives each test its own process and timeout) or all of them, a
 * per-test leak check against sh_alloc_live(), and the allocation fault loop.
 *
 * A test file defines its tests as `static void name(void **state)`, lists
 * them with SH_TEST(name) in a table and ends with SH_TEST_MAIN(table).
 * tests/c/CMakeLists.txt finds the SH_TEST(name) and SH_KNOWN_BUG(name) lines
 * and registers one ctest test per name, "<module>.<name>". */
#ifndef SH_TEST_H
#define SH_TEST_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"

/* Blocks live before the test started; checked again after it. */
static long sh_test_live0;

static int sh_test_setup(void **state) {
  (void)state;
  sh_alloc_fail_after(-1);
  sh_test_live0 = sh_alloc_live();
  return 0;
}

/* Fails the test when it leaked a block allocated through alloc.h. */
static int sh_test_teardown(void **state) {
  (void)state;
  sh_alloc_fail_after(-1);
  long live = sh_alloc_live();
  if (live != sh_test_live0) {
    fprintf(stderr, "leak check: %ld blocks live after the test, %ld before\n",
            live, sh_test_live0);
    return -1;
  }
  return 0;
}

#define SH_TEST(f) cmocka_unit_test_setup_teardown(f, sh_test_setup, sh_test_teardown)
/* A test that shows a known, reported bug: ctest expects it to fail
 * (WILL_FAIL), so it turns red the day the bug is fixed and must then become
 * SH_TEST. */
#define SH_KNOWN_BUG(f) SH_TEST(f)

/* Runs the test named argv[1] (an unknown name is an error, so a stale ctest
 * registration cannot pass by running nothing), or every test without one. */
static inline int sh_test_main(const char *group, const struct CMUnitTest *tests,
                               size_t n, int argc, char **argv) {
  if (argc > 1) {
    size_t i = 0;
    while (i < n && strcmp(tests[i].name, argv[1]) != 0) i++;
    if (i == n) {
      fprintf(stderr, "%s: no test named %s\n", group, argv[1]);
      return 2;
    }
    cmocka_set_test_filter(argv[1]);
  }
  return _cmocka_run_group_tests(group, tests, n, NULL, NULL);
}

#define SH_TEST_MAIN(tests)                                                    \
  int main(int argc, char **argv) {                                            \
    return sh_test_main(__FILE__, tests, sizeof(tests) / sizeof(tests[0]),     \
                        argc, argv);                                           \
  }

/* The fault loop (SQLite's OOM loop): runs op(ctx) with try-allocations
 * failing from the N-th on, for N = 0, 1, 2, ... until op returns 0. After
 * every failed attempt op must have returned -ENOMEM, freed whatever it
 * allocated, and `unchanged(ctx)` (which asserts) must hold. `reset(ctx)`, when
 * not NULL, runs before each attempt. Returns the number of failed attempts,
 * so a caller can assert the loop actually injected a fault. */
typedef int (*sh_fault_op_fn)(void *ctx);
typedef void (*sh_fault_check_fn)(void *ctx);

static inline long sh_fault_loop(sh_fault_op_fn op, sh_fault_check_fn unchanged,
                                 sh_fault_check_fn reset, void *ctx) {
  for (long n = 0; n < 100000; n++) {
    if (reset) reset(ctx);
    long live = sh_alloc_live();
    sh_alloc_fail_after(n);
    int rc = op(ctx);
    sh_alloc_fail_after(-1);
    if (rc == 0) return n;
    assert_int_equal(rc, -ENOMEM);
    assert_int_equal(sh_alloc_live(), live);
    if (unchanged) unchanged(ctx);
  }
  fail_msg("fault loop: operation never succeeded");
  return -1;
}

/* Deterministic xorshift64* generator for property tests. */
static inline uint64_t sh_test_rand(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545f4914f6cdd1dULL;
}

#endif
