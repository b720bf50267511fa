/* Unit tests for src/common/map.c: the u64 -> pointer hash map. */
#include "sh_test.h"

#include "common/map.h"

/* Ids as the engine makes them: client id in the high bits, a sequence below. */
static uint64_t id(uint32_t client, uint64_t seq) { return (uint64_t)client << 40 | seq; }
static void *val(uint64_t k) { return (void *)(uintptr_t)(k * 2 + 1); }

static void empty_map(void **state) {
  sh_map_t m;
  sh_map_init(&m);
  assert_null(sh_map_get(&m, 1));
  assert_null(sh_map_del(&m, 1));
  size_t i = 0;
  uint64_t k;
  void *v;
  assert_int_equal(sh_map_next(&m, &i, &k, &v), 0);
  sh_map_close(&m);
}

static void put_get_replace_del(void **state) {
  sh_map_t m;
  sh_map_init(&m);
  int a, b;
  assert_int_equal(sh_map_put(&m, 42, &a), 0);
  assert_ptr_equal(sh_map_get(&m, 42), &a);
  assert_int_equal(m.count, 1);
  assert_int_equal(sh_map_put(&m, 42, &b), 0); /* replace */
  assert_ptr_equal(sh_map_get(&m, 42), &b);
  assert_int_equal(m.count, 1);
  assert_null(sh_map_get(&m, 43));
  assert_ptr_equal(sh_map_del(&m, 42), &b);
  assert_int_equal(m.count, 0);
  assert_null(sh_map_get(&m, 42));
  assert_null(sh_map_del(&m, 42));
  assert_int_equal(sh_map_put(&m, 7, NULL), 0); /* NULL values are storable */
  assert_int_equal(m.count, 1);
  sh_map_close(&m);
  assert_null(m.slots);
  assert_int_equal(m.cap, 0);
}

static void reserved_keys_rejected(void **state) {
  sh_map_t m;
  sh_map_init(&m);
  int a;
  assert_int_equal(sh_map_put(&m, 0, &a), -EINVAL);
  assert_int_equal(sh_map_put(&m, SH_MAP_TOMB, &a), -EINVAL);
  assert_int_equal(m.count, 0);
  assert_null(sh_map_del(&m, 0));
  assert_null(sh_map_del(&m, SH_MAP_TOMB));
  assert_int_equal(sh_map_put(&m, 1, &a), 0);
  assert_null(sh_map_get(&m, 0));
  assert_null(sh_map_del(&m, SH_MAP_TOMB));
  sh_map_close(&m);
}

static void tombstone_is_reused(void **state) {
  sh_map_t m;
  sh_map_init(&m);
  assert_int_equal(sh_map_put(&m, 5, val(5)), 0);
  size_t used = m.used;
  assert_ptr_equal(sh_map_del(&m, 5), val(5));
  assert_int_equal(m.used, used); /* the slot became a tombstone */
  assert_int_equal(sh_map_put(&m, 5, val(5)), 0);
  assert_int_equal(m.used, used); /* ... and was taken again */
  assert_int_equal(m.count, 1);
  sh_map_close(&m);
}

static void key_behind_a_tombstone_is_not_duplicated(void **state) {
  sh_map_t m;
  sh_map_init(&m);
  /* Fill enough keys that some probe chains are longer than one slot. */
  for (uint64_t k = 1; k <= 11; k++) assert_int_equal(sh_map_put(&m, k, val(k)), 0);
  for (uint64_t d = 1; d <= 11; d++) {
    assert_ptr_equal(sh_map_del(&m, d), val(d));
    for (uint64_t k = 1; k <= 11; k++) {
      if (k == d) continue;
      size_t count = m.count;
      assert_int_equal(sh_map_put(&m, k, val(k + 100)), 0); /* replace */
      assert_int_equal(m.count, count);
      assert_ptr_equal(sh_map_get(&m, k), val(k + 100));
      assert_int_equal(sh_map_put(&m, k, val(k)), 0);
    }
    assert_int_equal(sh_map_put(&m, d, val(d)), 0);
  }
  uint64_t k;
  void *v;
  size_t n = 0;
  for (size_t i = 0; sh_map_next(&m, &i, &k, &v);) n++;
  assert_int_equal(n, 11);
  sh_map_close(&m);
}

static void churn_keeps_capacity_bounded(void **state) {
  sh_map_t m;
  sh_map_init(&m);
  /* Ten live entries at a time, 100k distinct keys overall: tombstones must be
   * cleaned by rehashing in place rather than by growing forever. */
  for (uint64_t k = 1; k <= 100000; k++) {
    assert_int_equal(sh_map_put(&m, id(3, k), val(k)), 0);
    if (k > 10) assert_ptr_equal(sh_map_del(&m, id(3, k - 10)), val(k - 10));
    assert_true(m.used < m.cap); /* an empty slot always ends probe loops */
  }
  assert_int_equal(m.count, 10);
  assert_true(m.cap <= 64);
  for (uint64_t k = 1; k <= 1000; k++) assert_null(sh_map_get(&m, id(4, k)));
  sh_map_close(&m);
}

static void grows_to_100k_entries(void **state) {
  sh_map_t m;
  sh_map_init(&m);
  const uint64_t n = 100000;
  for (uint64_t s = 1; s <= n; s++) {
    assert_int_equal(sh_map_put(&m, id(1, s), val(s)), 0);
    assert_int_equal(sh_map_put(&m, id(2, s), val(s + n)), 0);
  }
  assert_int_equal(m.count, 2 * n);
  assert_true(m.cap >= 2 * n);
  assert_int_equal(m.cap & (m.cap - 1), 0);
  for (uint64_t s = 1; s <= n; s++) {
    assert_ptr_equal(sh_map_get(&m, id(1, s)), val(s));
    assert_ptr_equal(sh_map_get(&m, id(2, s)), val(s + n));
  }
  for (uint64_t s = 1; s <= n; s += 2) assert_ptr_equal(sh_map_del(&m, id(1, s)), val(s));
  assert_int_equal(m.count, 2 * n - n / 2);
  for (uint64_t s = 1; s <= n; s++)
    assert_ptr_equal(sh_map_get(&m, id(1, s)), s % 2 ? NULL : val(s));
  assert_null(sh_map_get(&m, id(1, n + 1)));
  sh_map_close(&m);
}

static void iteration_visits_each_once(void **state) {
  sh_map_t m;
  sh_map_init(&m);
  enum { N = 1000 };
  static unsigned char seen[N + 1];
  memset(seen, 0, sizeof seen);
  for (uint64_t k = 1; k <= N; k++) assert_int_equal(sh_map_put(&m, k, val(k)), 0);
  uint64_t k;
  void *v;
  for (size_t i = 0; sh_map_next(&m, &i, &k, &v);) {
    assert_true(k >= 1 && k <= N);
    assert_ptr_equal(v, val(k));
    seen[k]++;
  }
  for (int j = 1; j <= N; j++) assert_int_equal(seen[j], 1);
  sh_map_close(&m);
}

static void iteration_while_deleting(void **state) {
  sh_map_t m;
  sh_map_init(&m);
  enum { N = 1000 };
  for (uint64_t k = 1; k <= N; k++) assert_int_equal(sh_map_put(&m, k, val(k)), 0);
  /* Delete the even keys as they come up, then everything that is left. */
  uint64_t k;
  void *v;
  size_t visited = 0;
  for (size_t i = 0; sh_map_next(&m, &i, &k, &v);) {
    visited++;
    if (k % 2 == 0) assert_ptr_equal(sh_map_del(&m, k), v);
  }
  assert_int_equal(visited, N);
  assert_int_equal(m.count, N / 2);
  visited = 0;
  for (size_t i = 0; sh_map_next(&m, &i, &k, &v);) {
    assert_int_equal(k % 2, 1);
    assert_ptr_equal(sh_map_del(&m, k), val(k));
    visited++;
  }
  assert_int_equal(visited, N / 2);
  assert_int_equal(m.count, 0);
  size_t i = 0;
  assert_int_equal(sh_map_next(&m, &i, &k, &v), 0);
  sh_map_close(&m);
}

/* Fault loop: a put that needs the table to grow fails without changing it. */
struct put_ctx {
  sh_map_t m;
  uint64_t next;
  size_t cap;
};

static int put_op(void *p) {
  struct put_ctx *c = p;
  return sh_map_put(&c->m, c->next, val(c->next));
}

static void put_unchanged(void *p) {
  struct put_ctx *c = p;
  assert_int_equal(c->m.count, c->next - 1);
  assert_int_equal(c->m.cap, c->cap);
  assert_null(sh_map_get(&c->m, c->next));
  for (uint64_t k = 1; k < c->next; k++) assert_ptr_equal(sh_map_get(&c->m, k), val(k));
}

static void fault_loop_put(void **state) {
  struct put_ctx c;
  sh_map_init(&c.m);
  long injected = 0;
  for (c.next = 1; c.next <= 200; c.next++) {
    c.cap = c.m.cap;
    injected += sh_fault_loop(put_op, put_unchanged, NULL, &c);
  }
  /* The first put and every growth could fail: 0, 32, 64, 128, 256 -> 512. */
  assert_int_equal(injected, 5);
  assert_int_equal(c.m.cap, 512);
  sh_map_close(&c.m);
}

static const struct CMUnitTest tests[] = {
    SH_TEST(empty_map),
    SH_TEST(put_get_replace_del),
    SH_TEST(reserved_keys_rejected),
    SH_TEST(tombstone_is_reused),
    SH_TEST(key_behind_a_tombstone_is_not_duplicated),
    SH_TEST(churn_keeps_capacity_bounded),
    SH_TEST(grows_to_100k_entries),
    SH_TEST(iteration_visits_each_once),
    SH_TEST(iteration_while_deleting),
    SH_TEST(fault_loop_put),
};

SH_TEST_MAIN(tests)
