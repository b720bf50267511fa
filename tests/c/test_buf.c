/* Unit tests for src/common/buf.c and buf.h: growable buffers, little-endian
 * helpers and the bounds-checked reader. */
#include "sh_test.h"

#include "common/buf.h"

static void init_is_empty_and_close_frees(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_null(b.data);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.off, 0);
  assert_int_equal(b.cap, 0);
  assert_int_equal(sh_buf_avail(&b), 0);
  assert_int_equal(sh_buf_reserve(&b, 0), 0);
  assert_null(b.data); /* reserving nothing allocates nothing */
  assert_int_equal(sh_buf_append(&b, "x", 1), 0);
  sh_buf_close(&b);
  assert_null(b.data);
  assert_int_equal(b.cap, 0);
  sh_buf_close(&b); /* closing twice is harmless */
}

static void append_grows_and_keeps_contents(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  uint8_t chunk[100];
  for (int i = 0; i < 1000; i++) {
    memset(chunk, i & 0xff, sizeof chunk);
    assert_int_equal(sh_buf_append(&b, chunk, sizeof chunk), 0);
    assert_true(b.cap >= b.len);
  }
  assert_int_equal(b.len, 100000);
  assert_int_equal(b.cap & (b.cap - 1), 0); /* doubling from 256 */
  for (int i = 0; i < 1000; i++)
    for (int j = 0; j < 100; j++) assert_int_equal(b.data[i * 100 + j], i & 0xff);
  assert_int_equal(sh_buf_append(&b, NULL, 0), 0);
  assert_int_equal(b.len, 100000);
  sh_buf_close(&b);
}

static void consume_partial_then_all_resets(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_buf_append(&b, "abcdef", 6), 0);
  sh_buf_consume(&b, 2);
  assert_int_equal(sh_buf_avail(&b), 4);
  assert_memory_equal(sh_buf_head(&b), "cdef", 4);
  sh_buf_consume(&b, 4);
  assert_int_equal(b.off, 0);
  assert_int_equal(b.len, 0);
  assert_int_equal(sh_buf_avail(&b), 0);
  sh_buf_close(&b);
}

static void reserve_reclaims_the_consumed_front(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  uint8_t x[250];
  for (int i = 0; i < 250; i++) x[i] = (uint8_t)i;
  assert_int_equal(sh_buf_append(&b, x, 250), 0);
  size_t cap = b.cap;
  assert_int_equal(cap, 256);
  sh_buf_consume(&b, 200);
  assert_int_equal(sh_buf_reserve(&b, 100), 0);
  assert_int_equal(b.cap, cap); /* compacted, not grown */
  assert_int_equal(b.off, 0);
  assert_int_equal(b.len, 50);
  assert_memory_equal(b.data, x + 200, 50);
  sh_buf_close(&b);
}

static void reset_keeps_capacity(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_buf_append(&b, "abc", 3), 0);
  sh_buf_consume(&b, 1);
  uint8_t *data = b.data;
  sh_buf_reset(&b);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.off, 0);
  assert_ptr_equal(b.data, data);
  sh_buf_close(&b);
}

static void impossible_reserve_fails_cleanly(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_buf_append(&b, "abc", 3), 0);
  size_t cap = b.cap;
  assert_int_equal(sh_buf_reserve(&b, SIZE_MAX), -ENOMEM);
  assert_int_equal(sh_buf_reserve(&b, SIZE_MAX / 2), -ENOMEM);
  assert_int_equal(b.cap, cap);
  assert_int_equal(b.len, 3);
  assert_memory_equal(b.data, "abc", 3);
  sh_buf_close(&b);
}

static void little_endian_helpers(void **state) {
  uint8_t p[8];
  sh_put_u16(p, 0x1234);
  assert_int_equal(p[0], 0x34);
  assert_int_equal(p[1], 0x12);
  assert_int_equal(sh_get_u16(p), 0x1234);
  sh_put_u32(p, 0xa1b2c3d4u);
  assert_memory_equal(p, "\xd4\xc3\xb2\xa1", 4);
  assert_int_equal(sh_get_u32(p), 0xa1b2c3d4u);
  sh_put_u64(p, 0x0102030405060708ull);
  assert_memory_equal(p, "\x08\x07\x06\x05\x04\x03\x02\x01", 8);
  assert_int_equal(sh_get_u64(p), 0x0102030405060708ull);
  sh_put_u64(p, UINT64_MAX);
  assert_int_equal(sh_get_u64(p), UINT64_MAX);
}

static void appending_writers(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_buf_u32(&b, 0xdeadbeefu), 0);
  assert_int_equal(sh_buf_u64(&b, 0x1122334455667788ull), 0);
  assert_int_equal(b.len, 12);
  assert_memory_equal(b.data, "\xef\xbe\xad\xde\x88\x77\x66\x55\x44\x33\x22\x11", 12);
  sh_buf_close(&b);
}

static void reader_in_bounds(void **state) {
  uint8_t p[12];
  sh_put_u32(p, 7);
  sh_put_u64(p + 4, 9);
  sh_rd_t r;
  sh_rd_init(&r, p, sizeof p);
  assert_int_equal(sh_rd_left(&r), 12);
  assert_int_equal(sh_rd_u32(&r), 7);
  assert_int_equal(sh_rd_u64(&r), 9);
  assert_int_equal(sh_rd_left(&r), 0);
  assert_non_null(sh_rd_bytes(&r, 0));
  assert_int_equal(r.err, 0);
}

static void reader_past_end_sets_err_and_sticks(void **state) {
  uint8_t p[6] = {1, 0, 0, 0, 2, 0};
  sh_rd_t r;
  sh_rd_init(&r, p, sizeof p);
  assert_int_equal(sh_rd_u32(&r), 1);
  assert_int_equal(sh_rd_u32(&r), 0); /* 2 bytes left: fails */
  assert_int_equal(r.err, 1);
  assert_int_equal(sh_rd_left(&r), 2); /* nothing was consumed */
  /* Once in error every read fails, even one that would fit. */
  assert_null(sh_rd_bytes(&r, 1));
  assert_int_equal(sh_rd_u64(&r), 0);
  assert_int_equal(r.err, 1);

  sh_rd_init(&r, p, sizeof p);
  assert_null(sh_rd_bytes(&r, SIZE_MAX)); /* no pointer overflow */
  assert_int_equal(r.err, 1);
  sh_rd_init(&r, p, 0);
  assert_int_equal(sh_rd_u64(&r), 0);
  assert_int_equal(r.err, 1);
}

/* Fault loop over appends to a buffer that already holds data: every failure
 * leaves pointer, length, capacity and bytes as they were. */
struct append_ctx {
  sh_buf_t b;
  uint8_t *data;
  size_t len, cap;
  int which;
};

static int append_op(void *p) {
  struct append_ctx *c = p;
  static uint8_t big[5000];
  switch (c->which) {
    case 0: return sh_buf_append(&c->b, big, sizeof big);
    case 1: return sh_buf_reserve(&c->b, 1 << 16);
    case 2: return sh_buf_u32(&c->b, 1);
    default: return sh_buf_u64(&c->b, 1);
  }
}

static void append_unchanged(void *p) {
  struct append_ctx *c = p;
  assert_ptr_equal(c->b.data, c->data);
  assert_int_equal(c->b.len, c->len);
  assert_int_equal(c->b.cap, c->cap);
  for (size_t i = 0; i < c->len; i++) assert_int_equal(c->b.data[i], (uint8_t)i);
}

static void fault_loop_leaves_buffer_unchanged(void **state) {
  for (int which = 0; which < 4; which++) {
    struct append_ctx c = {.which = which};
    sh_buf_init(&c.b);
    /* Fill the first block exactly so even a 4-byte append must grow. */
    for (size_t i = 0; i < 256; i++) {
      uint8_t v = (uint8_t)i;
      assert_int_equal(sh_buf_append(&c.b, &v, 1), 0);
    }
    c.data = c.b.data;
    c.len = c.b.len;
    c.cap = c.b.cap;
    assert_int_equal(c.cap, 256);
    long failures = sh_fault_loop(append_op, append_unchanged, NULL, &c);
    assert_true(failures >= 1);
    assert_true(c.b.cap > 256);
    sh_buf_close(&c.b);
  }
}

static void fault_on_first_allocation(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_alloc_fail_after(0);
  assert_int_equal(sh_buf_append(&b, "abc", 3), -ENOMEM);
  sh_alloc_fail_after(-1);
  assert_null(b.data);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.cap, 0);
}

static const struct CMUnitTest tests[] = {
    SH_TEST(init_is_empty_and_close_frees),
    SH_TEST(append_grows_and_keeps_contents),
    SH_TEST(consume_partial_then_all_resets),
    SH_TEST(reserve_reclaims_the_consumed_front),
    SH_TEST(reset_keeps_capacity),
    SH_TEST(impossible_reserve_fails_cleanly),
    SH_TEST(little_endian_helpers),
    SH_TEST(appending_writers),
    SH_TEST(reader_in_bounds),
    SH_TEST(reader_past_end_sets_err_and_sticks),
    SH_TEST(fault_loop_leaves_buffer_unchanged),
    SH_TEST(fault_on_first_allocation),
};

SH_TEST_MAIN(tests)
