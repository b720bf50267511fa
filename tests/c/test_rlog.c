/* Unit tests for src/common/rlog.c: records kept by sequence in chunks. */
#include "sh_test.h"

#include <string.h>

#include "common/rlog.h"

/* Puts a record of `len` bytes for seq, filled with seq's low byte. */
static int put(sh_rlog_t *l, uint64_t seq, size_t len) {
  uint8_t *p;
  int rc = sh_rlog_put(l, seq, seq | UINT64_C(7) << 40, len, &p);
  if (!rc) memset(p, (int)(seq & 0xff), len);
  return rc;
}

static void check(const sh_rlog_t *l, uint64_t seq, size_t len) {
  sh_rlog_rec_t *r = sh_rlog_get(l, seq);
  assert_non_null(r);
  assert_int_equal(r->id, seq | UINT64_C(7) << 40);
  assert_int_equal(r->len, len);
  for (size_t i = 0; i < len; i++) assert_int_equal(r->data[i], seq & 0xff);
}

static void empty_log(void **state) {
  sh_rlog_t l;
  sh_rlog_init(&l);
  size_t i = 0;
  uint64_t seq;
  assert_null(sh_rlog_get(&l, 1));
  assert_int_equal(sh_rlog_del(&l, 1), 0);
  assert_null(sh_rlog_next(&l, &i));
  assert_null(sh_rlog_first(&l, &seq));
  assert_int_equal(sh_rlog_sparse(&l), 0);
  sh_rlog_close(&l);
}

static void put_get_del_in_order(void **state) {
  sh_rlog_t l;
  sh_rlog_init(&l);
  for (uint64_t s = 1; s <= 100000; s++) assert_int_equal(put(&l, s, s % 200), 0);
  assert_int_equal(l.live, 100000);
  for (uint64_t s = 1; s <= 100000; s += 997) check(&l, s, s % 200);
  for (uint64_t s = 1; s <= 100000; s++) {
    assert_int_equal(sh_rlog_del(&l, s), 1);
    assert_int_equal(sh_rlog_del(&l, s), 0);
  }
  /* Every chunk but the one appended to went as it emptied. */
  assert_int_equal(l.live, 0);
  assert_int_equal(l.n, 0);
  assert_true(l.chunk_bytes <= SH_RLOG_CHUNK);
  assert_int_equal(l.base, 100001);
  sh_rlog_close(&l);
}

static void out_of_order_deletes_trim_the_front(void **state) {
  sh_rlog_t l;
  sh_rlog_init(&l);
  for (uint64_t s = 10; s < 20; s++) assert_int_equal(put(&l, s, 8), 0);
  assert_int_equal(sh_rlog_del(&l, 12), 1);
  assert_int_equal(sh_rlog_del(&l, 11), 1);
  assert_int_equal(l.base, 10); /* 10 is still live */
  assert_int_equal(sh_rlog_del(&l, 10), 1);
  assert_int_equal(l.base, 13);
  uint64_t seq;
  assert_non_null(sh_rlog_first(&l, &seq));
  assert_int_equal(seq, 13);
  /* Behind the front: not kept here (the caller keeps it elsewhere). */
  assert_int_equal(put(&l, 12, 8), -ERANGE);
  assert_int_equal(put(&l, 5, 8), -ERANGE);
  /* Far ahead: refused too; within the gap: kept, holes between. */
  assert_int_equal(put(&l, 20 + SH_RLOG_GAP, 8), -ERANGE);
  assert_int_equal(put(&l, 19 + SH_RLOG_GAP, 8), 0);
  check(&l, 19 + SH_RLOG_GAP, 8);
  assert_null(sh_rlog_get(&l, 100));
  for (uint64_t s = 13; s < 20; s++) assert_int_equal(sh_rlog_del(&l, s), 1);
  assert_int_equal(l.base, 19 + SH_RLOG_GAP);
  assert_int_equal(l.n, 1);
  assert_int_equal(sh_rlog_del(&l, 19 + SH_RLOG_GAP), 1);
  /* Empty: starts over at any later sequence, never an earlier one. */
  assert_int_equal(put(&l, 19, 8), -ERANGE);
  assert_int_equal(put(&l, 1000000, 8), 0);
  check(&l, 1000000, 8);
  sh_rlog_close(&l);
}

static void replace_and_iterate_in_sequence_order(void **state) {
  sh_rlog_t l;
  sh_rlog_init(&l);
  /* Appended out of order (threads racing for the lock), read in order. */
  uint64_t order[] = {3, 1, 2, 6, 5, 4};
  for (size_t i = 0; i < 6; i++) assert_int_equal(put(&l, order[i], 16), -(order[i] < 3) * ERANGE);
  assert_int_equal(put(&l, 5, 300), 0); /* replaces */
  check(&l, 5, 300);
  assert_int_equal(l.live, 4);
  assert_int_equal(l.live_bytes, 16 * 3 + 300);
  size_t i = 0;
  sh_rlog_rec_t *r;
  uint64_t want[] = {3, 4, 5, 6}, k = 0;
  while ((r = sh_rlog_next(&l, &i))) assert_int_equal(r->id & 0xffff, want[k++]);
  assert_int_equal(k, 4);
  sh_rlog_close(&l);
  assert_null(l.first);
  assert_int_equal(l.base, 7); /* closed: what was seen stays behind */
}

static void large_records_get_their_own_chunk(void **state) {
  sh_rlog_t l;
  sh_rlog_init(&l);
  assert_int_equal(put(&l, 1, 10), 0);
  assert_int_equal(put(&l, 2, 3 * SH_RLOG_CHUNK), 0);
  assert_int_equal(put(&l, 3, 10), 0);
  check(&l, 2, 3 * SH_RLOG_CHUNK);
  assert_int_equal(sh_rlog_del(&l, 2), 1);
  assert_true(l.chunk_bytes <= 2 * SH_RLOG_CHUNK);
  /* Alone in the log, big records do not leave empty chunks behind. */
  assert_int_equal(sh_rlog_del(&l, 1), 1);
  assert_int_equal(sh_rlog_del(&l, 3), 1);
  for (uint64_t s = 4; s < 20; s++) {
    assert_int_equal(put(&l, s, 2 * SH_RLOG_CHUNK), 0);
    assert_int_equal(sh_rlog_del(&l, s), 1);
  }
  assert_true(l.chunk_bytes <= 2 * SH_RLOG_CHUNK + 64);
  sh_rlog_close(&l);
}

/* One record that lives long (a long task) while a million others come and
 * go: the log says it is sparse, the caller moves the old record out, and
 * memory stays bounded. */
static void an_old_record_does_not_hold_memory(void **state) {
  sh_rlog_t l;
  sh_rlog_init(&l);
  assert_int_equal(put(&l, 1, 100), 0);
  size_t moved = 0, most = 0;
  for (uint64_t s = 2; s < 1000000; s++) {
    assert_int_equal(put(&l, s, 100), 0);
    if (s > 1001) assert_int_equal(sh_rlog_del(&l, s - 1000), 1);
    uint64_t seq;
    while (sh_rlog_sparse(&l) && sh_rlog_first(&l, &seq)) {
      assert_int_equal(seq, 1);
      assert_int_equal(sh_rlog_del(&l, seq), 1);
      moved++;
    }
    if (l.chunk_bytes + l.cap * sizeof(void *) > most) most = l.chunk_bytes + l.cap * sizeof(void *);
  }
  assert_int_equal(moved, 1);
  assert_true(most < (size_t)16 * SH_RLOG_CHUNK + 4 * 65536 * sizeof(void *));
  sh_rlog_close(&l);
}

/* Random puts and deletes checked against a plain array. */
static void random_against_a_model(void **state) {
  enum { N = 20000 };
  static uint16_t model[N]; /* len + 1, 0: none */
  memset(model, 0, sizeof model);
  sh_rlog_t l;
  sh_rlog_init(&l);
  uint64_t rnd = 42, next = 1;
  for (int step = 0; step < 200000; step++) {
    uint64_t x = sh_test_rand(&rnd);
    if (x % 3 && next < N) {
      size_t len = (size_t)(x >> 8) % 500;
      assert_int_equal(put(&l, next, len), 0);
      model[next++] = (uint16_t)(len + 1);
    } else if (next > 1) {
      uint64_t s = 1 + (x >> 16) % (next - 1);
      assert_int_equal(sh_rlog_del(&l, s), model[s] != 0);
      model[s] = 0;
    }
  }
  size_t live = 0, i = 0;
  for (uint64_t s = 1; s < N; s++)
    if (model[s]) {
      check(&l, s, model[s] - 1u);
      live++;
    } else {
      assert_null(sh_rlog_get(&l, s));
    }
  assert_int_equal(l.live, live);
  while (sh_rlog_next(&l, &i)) live--;
  assert_int_equal(live, 0);
  sh_rlog_close(&l);
}

struct put_ctx {
  sh_rlog_t l;
  uint64_t seq;
  size_t len, live;
};

static int put_op(void *ctx) {
  struct put_ctx *c = ctx;
  return put(&c->l, c->seq, c->len);
}

static void put_unchanged(void *ctx) {
  struct put_ctx *c = ctx;
  assert_int_equal(c->l.live, c->live);
  assert_null(sh_rlog_get(&c->l, c->seq));
}

static void fault_loop_put(void **state) {
  struct put_ctx c;
  sh_rlog_init(&c.l);
  long injected = 0;
  for (c.seq = 1; c.seq <= 3000; c.seq++) {
    c.len = c.seq % 7 == 0 ? SH_RLOG_CHUNK : 200;
    c.live = c.l.live;
    injected += sh_fault_loop(put_op, put_unchanged, NULL, &c);
  }
  assert_true(injected > 5);
  for (c.seq = 1; c.seq <= 3000; c.seq++) check(&c.l, c.seq, c.seq % 7 == 0 ? SH_RLOG_CHUNK : 200);
  sh_rlog_close(&c.l);
}

static const struct CMUnitTest tests[] = {
    SH_TEST(empty_log),
    SH_TEST(put_get_del_in_order),
    SH_TEST(out_of_order_deletes_trim_the_front),
    SH_TEST(replace_and_iterate_in_sequence_order),
    SH_TEST(large_records_get_their_own_chunk),
    SH_TEST(an_old_record_does_not_hold_memory),
    SH_TEST(random_against_a_model),
    SH_TEST(fault_loop_put),
};

SH_TEST_MAIN(tests)
