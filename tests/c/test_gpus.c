/* Unit tests for src/node/gpus.c: which GPU devices a request gets. */
#include "sh_test.h"

#include <errno.h>
#include <string.h>

#include "node/gpus.h"

static void no_devices(void **state) {
  sh_gpus_t g;
  sh_gpus_init(&g, 0);
  assert_int_equal(g.n, 0);
  uint64_t m = 99;
  assert_int_equal(sh_gpus_pick(&g, 0, &m), 0);
  assert_int_equal(m, 0);
  assert_int_equal(sh_gpus_pick(&g, 1000, &m), -EAGAIN);
  assert_int_equal(sh_gpus_pick(&g, 500, &m), -EAGAIN);
}

static void whole_devices_lowest_first(void **state) {
  sh_gpus_t g;
  sh_gpus_init(&g, 4000);
  assert_int_equal(g.n, 4);
  uint64_t a, b, c;
  assert_int_equal(sh_gpus_pick(&g, 1000, &a), 0);
  assert_int_equal(a, 0x1);
  sh_gpus_take(&g, 1000, a);
  assert_int_equal(sh_gpus_pick(&g, 2000, &b), 0);
  assert_int_equal(b, 0x6);
  sh_gpus_take(&g, 2000, b);
  assert_int_equal(sh_gpus_pick(&g, 2000, &c), -EAGAIN); /* one left */
  sh_gpus_give(&g, 1000, a);
  assert_int_equal(sh_gpus_pick(&g, 2000, &c), 0);
  assert_int_equal(c, 0x9);
}

static void fractions_pack_on_one_device(void **state) {
  sh_gpus_t g;
  sh_gpus_init(&g, 2000);
  uint64_t a, b, c, d;
  assert_int_equal(sh_gpus_pick(&g, 500, &a), 0);
  sh_gpus_take(&g, 500, a);
  assert_int_equal(sh_gpus_pick(&g, 500, &b), 0);
  assert_int_equal(b, a); /* best fit: the half-used device */
  sh_gpus_take(&g, 500, b);
  assert_int_equal(sh_gpus_pick(&g, 600, &c), 0);
  assert_int_not_equal(c, a);
  sh_gpus_take(&g, 600, c);
  /* 0.4 left on one device: a whole one no longer fits, 0.6 neither. */
  assert_int_equal(sh_gpus_pick(&g, 1000, &d), -EAGAIN);
  assert_int_equal(sh_gpus_pick(&g, 600, &d), -EAGAIN);
  assert_int_equal(sh_gpus_pick(&g, 400, &d), 0);
  assert_int_equal(d, c);
  sh_gpus_give(&g, 600, c);
  sh_gpus_give(&g, 600, c); /* giving back too much is capped */
  assert_int_equal(g.free_milli[__builtin_ctzll(c)], 1000);
}

static void fractional_node(void **state) {
  sh_gpus_t g;
  sh_gpus_init(&g, 1500); /* one whole device and half of another */
  assert_int_equal(g.n, 2);
  assert_int_equal(g.cap_milli[1], 500);
  uint64_t m;
  assert_int_equal(sh_gpus_pick(&g, 2000, &m), -EAGAIN);
  assert_int_equal(sh_gpus_pick(&g, 300, &m), 0);
  assert_int_equal(m, 0x2); /* the smaller room that fits */
}

static void valid_requests(void **state) {
  assert_int_equal(sh_gpus_valid(0), 0);
  assert_int_equal(sh_gpus_valid(250), 0);
  assert_int_equal(sh_gpus_valid(3000), 0);
  assert_int_equal(sh_gpus_valid(1500), -EINVAL);
}

static void format_mask(void **state) {
  char s[16];
  assert_int_equal(sh_gpus_format(0, s, sizeof s), 0);
  assert_string_equal(s, "");
  assert_int_equal(sh_gpus_format(0x1, s, sizeof s), 1);
  assert_string_equal(s, "0");
  sh_gpus_format(0xd, s, sizeof s);
  assert_string_equal(s, "0,2,3");
  char small[4];
  sh_gpus_format(0xd, small, sizeof small); /* truncated at a whole index */
  assert_string_equal(small, "0,2");
  char big[200];
  sh_gpus_format(~0ull, big, sizeof big);
  assert_true(strlen(big) > 100);
  assert_string_equal(big + strlen(big) - 3, ",63");
}

static const struct CMUnitTest tests[] = {
    SH_TEST(no_devices),
    SH_TEST(whole_devices_lowest_first),
    SH_TEST(fractions_pack_on_one_device),
    SH_TEST(fractional_node),
    SH_TEST(valid_requests),
    SH_TEST(format_mask),
};

SH_TEST_MAIN(tests)
