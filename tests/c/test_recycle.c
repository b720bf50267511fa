/* Unit tests for src/common/recycle.c: size-class stacks of freed blocks. */
#include "sh_test.h"

#include "common/recycle.h"

static void reuses_a_freed_block_of_its_class(void **state) {
  sh_recycle_t r;
  sh_recycle_init(&r, 1 << 20);
  uint8_t c1, c2, c3;
  void *a = sh_recycle_get(&r, 100, &c1);
  assert_non_null(a);
  assert_int_equal(c1, 7); /* 100 bytes: 7 grains of 16 */
  memset(a, 0xab, 112);    /* the whole class size is usable */
  sh_recycle_put(&r, a, c1);
  assert_ptr_equal(r.free[7], a);
  assert_int_equal(r.bytes, 112);
  void *b = sh_recycle_get(&r, 40, &c2); /* another class: a fresh block */
  assert_ptr_not_equal(b, a);
  assert_int_equal(c2, 3);
  void *c = sh_recycle_get(&r, 97, &c3); /* same class: the freed block */
  assert_ptr_equal(c, a);
  assert_int_equal(c3, 7);
  assert_int_equal(r.bytes, 0);
  sh_recycle_put(&r, b, c2);
  sh_recycle_put(&r, c, c3);
  sh_recycle_put(&r, NULL, 3);
  sh_recycle_close(&r);
  assert_int_equal(r.bytes, 0);
  assert_null(r.free[3]);
}

static void big_blocks_and_the_byte_cap_go_to_malloc(void **state) {
  sh_recycle_t r;
  sh_recycle_init(&r, 64); /* room for two 32-byte blocks */
  uint8_t c;
  void *big = sh_recycle_get(&r, 4096, &c);
  assert_non_null(big);
  assert_int_equal(c, 0);
  sh_recycle_put(&r, big, c); /* freed, not kept */
  assert_int_equal(r.bytes, 0);
  void *p[3];
  uint8_t k[3];
  for (int i = 0; i < 3; i++) p[i] = sh_recycle_get(&r, 32, &k[i]);
  for (int i = 0; i < 3; i++) sh_recycle_put(&r, p[i], k[i]);
  assert_int_equal(r.bytes, 64); /* two kept; the third was over the cap: freed */
  assert_ptr_equal(r.free[2], p[1]);
  sh_recycle_close(&r);
}

static void zero_bytes_is_one_grain(void **state) {
  sh_recycle_t r;
  sh_recycle_init(&r, 1024);
  uint8_t c;
  void *p = sh_recycle_get(&r, 0, &c);
  assert_non_null(p);
  assert_int_equal(c, 1);
  sh_recycle_put(&r, p, c);
  sh_recycle_close(&r);
}

static void out_of_memory_is_null(void **state) {
  sh_recycle_t r;
  sh_recycle_init(&r, 1024);
  uint8_t c;
  sh_alloc_fail_after(0);
  assert_null(sh_recycle_get(&r, 48, &c));
  sh_alloc_fail_after(-1);
  sh_recycle_close(&r);
}

static const struct CMUnitTest tests[] = {
    SH_TEST(reuses_a_freed_block_of_its_class),
    SH_TEST(big_blocks_and_the_byte_cap_go_to_malloc),
    SH_TEST(zero_bytes_is_one_grain),
    SH_TEST(out_of_memory_is_null),
};

SH_TEST_MAIN(tests)
