/* Unit tests for src/head/head.c: the node registry and the placement
 * decision (resources, load, locality, draining, dead nodes, no room versus
 * infeasible, custom resources, release, growth), checked against a
 * brute-force scan of every node in a randomized property test. */
#include "sh_test.h"

#include "head/head.h"

#define GIB (1ull << 30)

static sh_res_t res(uint64_t cpus, uint64_t gpus, uint64_t mem_gib) {
  sh_res_t r;
  memset(&r, 0, sizeof r);
  r.cpu_milli = cpus * 1000;
  r.gpu_milli = gpus * 1000;
  r.memory = mem_gib * GIB;
  return r;
}

static sh_req_t req(uint64_t cpu_milli, uint64_t gpu_milli, uint64_t memory) {
  sh_req_t q = {cpu_milli, gpu_milli, memory, 0, NULL};
  return q;
}

/* Places q and returns the node id, failing the test on any other outcome. */
static uint32_t place(sh_head_t *h, const sh_req_t *q) {
  uint32_t id = 0xdead;
  char why[1024] = "";
  int rc = sh_head_place(h, q, NULL, 0, &id, why, sizeof why);
  if (rc) fail_msg("place: rc %d: %s", rc, why);
  return id;
}

static uint32_t place_hinted(sh_head_t *h, const sh_req_t *q, const sh_head_hint_t *hints, uint32_t n) {
  uint32_t id = 0xdead;
  assert_int_equal(sh_head_place(h, q, hints, n, &id, NULL, 0), 0);
  return id;
}

static void assert_free_is_total(const sh_head_t *h) {
  for (uint32_t i = 0; i < h->nnodes; i++) {
    const sh_head_node_t *nd = &h->nodes[i];
    assert_int_equal(nd->free.cpu_milli, nd->total.cpu_milli);
    assert_int_equal(nd->free.gpu_milli, nd->total.gpu_milli);
    assert_int_equal(nd->free.memory, nd->total.memory);
    assert_int_equal(nd->free.ncustom, nd->total.ncustom);
    for (uint32_t j = 0; j < nd->total.ncustom; j++)
      assert_int_equal(nd->free.custom[j].milli, nd->total.custom[j].milli);
  }
}

/* A GPU request goes only where a GPU is free; once none is, it waits (no
 * room), it is not infeasible. */
static void gpu_only_where_free(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t cpu = res(64, 0, 64), gpu = res(8, 2, 64);
  assert_int_equal(sh_head_add_node(&h, 1, &cpu), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &gpu), 0);
  assert_int_equal(sh_head_add_node(&h, 3, &cpu), 0);
  sh_req_t g = req(1000, 1000, 0);
  assert_int_equal(place(&h, &g), 2);
  assert_int_equal(place(&h, &g), 2);
  assert_int_equal(sh_head_node(&h, 2)->free.gpu_milli, 0);
  uint32_t id = 0;
  char why[512];
  assert_int_equal(sh_head_place(&h, &g, NULL, 0, &id, why, sizeof why), SH_ENOROOM);
  assert_non_null(strstr(why, "no node has room now"));
  /* A fractional GPU fits beside a released one. */
  assert_int_equal(sh_head_release(&h, 2, &g), 0);
  sh_req_t half = req(0, 500, 0);
  assert_int_equal(place(&h, &half), 2);
  assert_int_equal(place(&h, &half), 2);
  assert_int_equal(sh_head_place(&h, &half, NULL, 0, &id, NULL, 0), SH_ENOROOM);
  sh_head_close(&h);
}

/* Consecutive decisions spread over equal nodes; ties go to the lowest id. */
static void spreads_by_declared_load(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t r = res(4, 0, 16);
  assert_int_equal(sh_head_add_node(&h, 30, &r), 0);
  assert_int_equal(sh_head_add_node(&h, 10, &r), 0);
  assert_int_equal(sh_head_add_node(&h, 20, &r), 0);
  sh_req_t one = req(1000, 0, 0);
  uint32_t want[] = {10, 20, 30, 10, 20, 30};
  for (int i = 0; i < 6; i++) assert_int_equal(place(&h, &one), want[i]);
  /* Memory is a dimension too: 3/4 of the memory taken counts as 3/4 used,
   * more than the others' 2/4 of their CPUs. */
  sh_req_t mem = req(0, 0, 12 * GIB);
  assert_int_equal(place(&h, &mem), 10);
  assert_int_equal(sh_head_node(&h, 10)->score, SH_HEAD_SCORE_ONE / 4 * 3);
  assert_int_equal(place(&h, &one), 20);
  assert_int_equal(place(&h, &one), 30);
  sh_head_close(&h);
}

/* Measured load counts per CPU, and the larger of measured and declared. */
static void prefers_low_measured_load(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t small = res(4, 0, 16), big = res(16, 0, 16);
  assert_int_equal(sh_head_add_node(&h, 1, &small), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &big), 0);
  assert_int_equal(sh_head_set_load(&h, 1, 1000), 0); /* 1/4 per CPU */
  assert_int_equal(sh_head_set_load(&h, 2, 9000), 0); /* 9/16 per CPU */
  sh_req_t one = req(1000, 0, 0);
  assert_int_equal(place(&h, &one), 1); /* measured 1/4 */
  assert_int_equal(place(&h, &one), 1); /* declared 1/4 = measured 1/4 */
  assert_int_equal(place(&h, &one), 1); /* declared 2/4 < 9/16 */
  assert_int_equal(place(&h, &one), 2); /* declared 3/4 > 9/16 */
  assert_int_equal(sh_head_set_load(&h, 2, 0), 0);
  assert_int_equal(place(&h, &one), 2); /* declared 2/16 */
  assert_int_equal(sh_head_set_load(&h, 9, 0), -ENOENT);
  sh_head_close(&h);
}

/* The node holding the most argument bytes wins over a less loaded one;
 * equal bytes go by load; a hinted node without room is passed over. */
static void prefers_locality(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t r = res(2, 0, 16);
  for (uint32_t id = 1; id <= 4; id++) assert_int_equal(sh_head_add_node(&h, id, &r), 0);
  sh_req_t one = req(1000, 0, 0);
  assert_int_equal(place(&h, &one), 1); /* node 1 now the most loaded */
  sh_head_hint_t hints[] = {{3, 100}, {1, 5000}, {42, 1 << 20}};
  assert_int_equal(place_hinted(&h, &one, hints, 3), 1); /* node 1 full now */
  assert_int_equal(place_hinted(&h, &one, hints, 3), 3); /* next most bytes */
  sh_head_hint_t tie[] = {{3, 7}, {4, 7}};
  assert_int_equal(place_hinted(&h, &one, tie, 2), 4); /* 3 is busier */
  sh_head_hint_t zero[] = {{3, 0}};
  assert_int_equal(place_hinted(&h, &one, zero, 1), 2); /* 0 bytes: no preference */
  assert_int_equal(place_hinted(&h, &one, hints, 0), 2);
  sh_head_close(&h);
}

/* Draining nodes get no new work but still make a request feasible. */
static void draining_gets_no_work(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t cpu = res(8, 0, 16), gpu = res(8, 1, 16);
  assert_int_equal(sh_head_add_node(&h, 1, &cpu), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &gpu), 0);
  assert_int_equal(sh_head_set_draining(&h, 1, 1), 0);
  sh_req_t one = req(1000, 0, 0);
  for (int i = 0; i < 5; i++) assert_int_equal(place(&h, &one), 2);
  sh_head_hint_t hint = {1, 1 << 30};
  assert_int_equal(place_hinted(&h, &one, &hint, 1), 2);
  assert_int_equal(sh_head_set_draining(&h, 2, 1), 0);
  sh_req_t g = req(1000, 1000, 0);
  uint32_t id;
  assert_int_equal(sh_head_place(&h, &g, NULL, 0, &id, NULL, 0), SH_ENOROOM);
  assert_int_equal(sh_head_take(&h, 2, &one), SH_ENOROOM);
  assert_int_equal(sh_head_set_draining(&h, 1, 0), 0);
  assert_int_equal(place(&h, &one), 1);
  assert_int_equal(sh_head_set_draining(&h, 7, 1), -ENOENT);
  sh_head_close(&h);
}

/* Dead nodes get no work and cannot make a request feasible; a node that
 * comes back gets work again. */
static void dead_nodes_get_no_work(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t small = res(2, 0, 4), big = res(32, 0, 4);
  assert_int_equal(sh_head_add_node(&h, 1, &small), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &big), 0);
  assert_int_equal(sh_head_set_alive(&h, 1, 0), 0);
  sh_req_t one = req(1000, 0, 0);
  for (int i = 0; i < 4; i++) assert_int_equal(place(&h, &one), 2);
  assert_int_equal(sh_head_set_alive(&h, 2, 0), 0);
  uint32_t id;
  char why[512];
  assert_int_equal(sh_head_place(&h, &one, NULL, 0, &id, why, sizeof why), SH_EINFEASIBLE);
  assert_non_null(strstr(why, "no node is alive"));
  assert_int_equal(sh_head_set_alive(&h, 1, 1), 0);
  assert_int_equal(place(&h, &one), 1);
  sh_head_close(&h);
}

/* No room now and infeasible are different outcomes with different words;
 * the infeasible one names the request and the largest node. */
static void no_room_versus_infeasible(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t a = res(4, 0, 8), b = res(16, 0, 32);
  assert_int_equal(sh_head_add_node(&h, 1, &a), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &b), 0);
  sh_req_t twelve = req(12000, 0, 0), huge = req(64000, 0, 0);
  assert_int_equal(place(&h, &twelve), 2);
  uint32_t id = 77;
  char why[1024];
  assert_int_equal(sh_head_place(&h, &twelve, NULL, 0, &id, why, sizeof why), SH_ENOROOM);
  assert_int_equal(id, 77);
  assert_non_null(strstr(why, "no node has room now for {CPU: 12}"));
  assert_int_equal(sh_head_place(&h, &huge, NULL, 0, &id, why, sizeof why), SH_EINFEASIBLE);
  assert_non_null(strstr(why, "asked for {CPU: 64}"));
  assert_non_null(strstr(why, "largest node has {CPU: 16, GPU: 0, memory: 32.0 GiB}"));
  /* why may be NULL. */
  assert_int_equal(sh_head_place(&h, &huge, NULL, 0, &id, NULL, 0), SH_EINFEASIBLE);
  assert_int_equal(sh_head_feasible(&h, &huge, NULL, 0), 0);
  assert_int_equal(sh_head_feasible(&h, &twelve, NULL, 0), 1);
  /* Nothing changed on failure. */
  assert_int_equal(sh_head_node(&h, 1)->free.cpu_milli, 4000);
  assert_int_equal(sh_head_node(&h, 2)->free.cpu_milli, 4000);
  sh_head_t empty;
  sh_head_init(&empty);
  assert_int_equal(sh_head_place(&empty, &twelve, NULL, 0, &id, why, sizeof why), SH_EINFEASIBLE);
  assert_non_null(strstr(why, "no node is alive"));
  sh_head_close(&empty);
  sh_head_close(&h);
}

/* Custom resources: only nodes that offer them, amounts taken and given
 * back, names nobody offers are infeasible. */
static void custom_resources(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t plain = res(8, 0, 16), ssd = res(8, 0, 16), both = res(8, 0, 16);
  assert_int_equal(sh_res_set_custom(&ssd, "ssd", 2000), 0);
  assert_int_equal(sh_res_set_custom(&both, "bigmem", 1000), 0);
  assert_int_equal(sh_res_set_custom(&both, "ssd", 1000), 0);
  assert_int_equal(sh_head_add_node(&h, 1, &plain), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &ssd), 0);
  assert_int_equal(sh_head_add_node(&h, 3, &both), 0);
  sh_custom_t c_ssd = {"ssd", 1000}, c_big = {"bigmem", 1000}, c_fpga = {"fpga", 1000};
  sh_req_t q_ssd = {1000, 0, 0, 1, &c_ssd}, q_big = {0, 0, 0, 1, &c_big};
  sh_req_t q_fpga = {1000, 0, 0, 1, &c_fpga};
  assert_int_equal(place(&h, &q_ssd), 2);
  assert_int_equal(place(&h, &q_big), 3); /* node 3's bigmem is all taken */
  assert_int_equal(place(&h, &q_ssd), 2); /* node 3 scores 1.0 now */
  assert_int_equal(place(&h, &q_ssd), 3);
  uint32_t id;
  assert_int_equal(sh_head_place(&h, &q_ssd, NULL, 0, &id, NULL, 0), SH_ENOROOM);
  assert_int_equal(sh_head_place(&h, &q_big, NULL, 0, &id, NULL, 0), SH_ENOROOM);
  char why[1024];
  assert_int_equal(sh_head_place(&h, &q_fpga, NULL, 0, &id, why, sizeof why), SH_EINFEASIBLE);
  assert_non_null(strstr(why, "no node has a resource named 'fpga'"));
  /* A CPU-only request ignores custom names and goes to the plain node. */
  sh_req_t one = req(1000, 0, 0);
  assert_int_equal(place(&h, &one), 1);
  assert_int_equal(sh_head_release(&h, 2, &q_ssd), 0);
  assert_int_equal(sh_res_custom(&sh_head_node(&h, 2)->free, "ssd"), 1000);
  assert_int_equal(place(&h, &q_ssd), 2);
  /* Releasing a name the node does not offer adds nothing. */
  assert_int_equal(sh_head_release(&h, 1, &q_big), 0);
  assert_int_equal(sh_head_node(&h, 1)->free.ncustom, 0);
  sh_head_close(&h);
}

/* More distinct custom names than the index has mask bits still place right. */
static void custom_names_past_mask_bits(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  for (uint32_t id = 0; id < 80; id++) {
    sh_res_t r = res(4, 0, 4);
    char name[32];
    snprintf(name, sizeof name, "label%u", id);
    assert_int_equal(sh_res_set_custom(&r, name, 1000), 0);
    assert_int_equal(sh_head_add_node(&h, id, &r), 0);
  }
  assert_int_equal(h.nnames, 64);
  assert_int_equal(h.names_full, 1);
  for (uint32_t id = 0; id < 80; id += 7) {
    sh_custom_t c;
    snprintf(c.name, sizeof c.name, "label%u", id);
    c.milli = 1000;
    sh_req_t q = {1000, 0, 0, 1, &c};
    assert_int_equal(place(&h, &q), id);
    uint32_t got;
    assert_int_equal(sh_head_place(&h, &q, NULL, 0, &got, NULL, 0), SH_ENOROOM);
  }
  sh_custom_t none = {"nobody", 1000};
  sh_req_t q = {0, 0, 0, 1, &none};
  uint32_t got;
  assert_int_equal(sh_head_place(&h, &q, NULL, 0, &got, NULL, 0), SH_EINFEASIBLE);
  sh_head_close(&h);
}

/* Releasing everything placed restores every node's free resources. */
static void release_restores_free(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  for (uint32_t id = 1; id <= 10; id++) {
    sh_res_t r = res(id, id % 3, 2 * id);
    if (id % 4 == 0) assert_int_equal(sh_res_set_custom(&r, "ssd", 3000), 0);
    assert_int_equal(sh_head_add_node(&h, id, &r), 0);
  }
  sh_custom_t c = {"ssd", 500};
  sh_req_t kinds[] = {req(1000, 0, 0), req(500, 1000, GIB), {250, 0, 0, 1, &c}, req(0, 0, GIB / 2)};
  uint32_t placed_on[400];
  int placed_kind[400], n = 0;
  for (int i = 0; i < 400; i++) {
    uint32_t id;
    int k = i % 4;
    int rc = sh_head_place(&h, &kinds[k], NULL, 0, &id, NULL, 0);
    if (rc == SH_ENOROOM) continue;
    assert_int_equal(rc, 0);
    placed_on[n] = id;
    placed_kind[n++] = k;
  }
  assert_true(n > 50);
  for (int i = 0; i < n; i++) assert_int_equal(sh_head_release(&h, placed_on[i], &kinds[placed_kind[i]]), 0);
  assert_free_is_total(&h);
  for (uint32_t id = 1; id <= 10; id++) assert_int_equal(sh_head_node(&h, id)->score, 0);
  /* Giving back more than was taken stops at the total. */
  assert_int_equal(sh_head_release(&h, 1, &kinds[0]), 0);
  assert_free_is_total(&h);
  assert_int_equal(sh_head_release(&h, 99, &kinds[0]), -ENOENT);
  sh_head_close(&h);
}

/* A node that joins while the others are busy gets the next work. */
static void node_added_later_gets_work(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t r = res(4, 0, 8);
  assert_int_equal(sh_head_add_node(&h, 1, &r), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &r), 0);
  sh_req_t one = req(1000, 0, 0);
  for (int i = 0; i < 8; i++) place(&h, &one);
  uint32_t id;
  assert_int_equal(sh_head_place(&h, &one, NULL, 0, &id, NULL, 0), SH_ENOROOM);
  assert_int_equal(sh_head_add_node(&h, 3, &r), 0);
  assert_int_equal(sh_head_add_node(&h, 3, &r), -EEXIST);
  for (int i = 0; i < 4; i++) assert_int_equal(place(&h, &one), 3);
  /* Also when the others are only partly busy: it is the least loaded. */
  assert_int_equal(sh_head_release(&h, 1, &one), 0);
  assert_int_equal(sh_head_add_node(&h, 4, &r), 0);
  assert_int_equal(place(&h, &one), 4);
  sh_head_close(&h);
}

/* Heartbeat free amounts replace the head's own bookkeeping. */
static void set_free_from_heartbeat(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t r = res(8, 2, 8);
  assert_int_equal(sh_res_set_custom(&r, "ssd", 2000), 0);
  assert_int_equal(sh_head_add_node(&h, 1, &r), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &r), 0);
  sh_res_t rep = res(2, 0, 100); /* memory above the total: cut to it */
  assert_int_equal(sh_res_set_custom(&rep, "other", 5000), 0);
  assert_int_equal(sh_head_set_free(&h, 1, &rep), 0);
  const sh_head_node_t *nd = sh_head_node(&h, 1);
  assert_int_equal(nd->free.cpu_milli, 2000);
  assert_int_equal(nd->free.gpu_milli, 0);
  assert_int_equal(nd->free.memory, 8 * GIB);
  assert_int_equal(sh_res_custom(&nd->free, "ssd"), 0);
  assert_int_equal(nd->free.ncustom, 1);
  assert_int_equal(nd->score, SH_HEAD_SCORE_ONE); /* GPUs and ssd all taken */
  sh_req_t one = req(1000, 0, 0);
  assert_int_equal(place(&h, &one), 2);
  assert_int_equal(sh_head_set_free(&h, 1, &r), 0);
  assert_int_equal(place(&h, &one), 1);
  assert_int_equal(sh_head_set_free(&h, 5, &r), -ENOENT);
  sh_head_close(&h);
}

/* take: work placed by someone else is counted; it must fit. */
static void take_pinned(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t r = res(2, 0, 8);
  assert_int_equal(sh_head_add_node(&h, 1, &r), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &r), 0);
  sh_req_t one = req(1000, 0, 0);
  assert_int_equal(sh_head_take(&h, 1, &one), 0);
  assert_int_equal(sh_head_take(&h, 1, &one), 0);
  assert_int_equal(sh_head_take(&h, 1, &one), SH_ENOROOM);
  assert_int_equal(sh_head_take(&h, 3, &one), -ENOENT);
  assert_int_equal(place(&h, &one), 2);
  sh_head_close(&h);
}

/* Removing nodes: they get no work, the moved node keeps its identity. */
static void remove_nodes(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  for (uint32_t id = 1; id <= 5; id++) {
    sh_res_t r = res(id, 0, 8);
    assert_int_equal(sh_head_add_node(&h, id, &r), 0);
  }
  assert_int_equal(sh_head_remove_node(&h, 2), 0);
  assert_int_equal(sh_head_remove_node(&h, 2), -ENOENT);
  assert_null(sh_head_node(&h, 2));
  assert_int_equal(h.nnodes, 4);
  assert_int_equal(sh_head_node(&h, 5)->total.cpu_milli, 5000);
  sh_req_t two = req(2000, 0, 0);
  for (int i = 0; i < 20; i++) {
    uint32_t id;
    int rc = sh_head_place(&h, &two, NULL, 0, &id, NULL, 0);
    if (rc == SH_ENOROOM) break;
    assert_int_equal(rc, 0);
    assert_true(id != 2 && id != 1);
  }
  assert_int_equal(sh_head_remove_node(&h, 5), 0); /* the last slot */
  assert_int_equal(sh_head_remove_node(&h, 1), 0);
  assert_int_equal(sh_head_remove_node(&h, 3), 0);
  assert_int_equal(sh_head_remove_node(&h, 4), 0);
  assert_int_equal(h.nnodes, 0);
  uint32_t id;
  assert_int_equal(sh_head_place(&h, &two, NULL, 0, &id, NULL, 0), SH_EINFEASIBLE);
  sh_res_t r = res(2, 0, 8);
  assert_int_equal(sh_head_add_node(&h, 2, &r), 0);
  assert_int_equal(place(&h, &two), 2);
  sh_head_close(&h);
}

/* Grows past the old fixed 64 and past 1,000 nodes; every node is found,
 * every node gets work, and work spreads one task per node first. */
static void grows_past_64_and_1000(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  const uint32_t n = 5000;
  sh_res_t r = res(2, 0, 8);
  for (uint32_t i = 0; i < n; i++) {
    assert_int_equal(sh_head_add_node(&h, i * 7919u + 3, &r), 0);
    if (i == 64 || i == 1000) {
      /* The index is whole after each growth. */
      sh_req_t zero = req(0, 0, 0);
      uint32_t id;
      assert_int_equal(sh_head_place(&h, &zero, NULL, 0, &id, NULL, 0), 0);
      assert_int_equal(id, 3);
    }
  }
  assert_int_equal(h.nnodes, n);
  assert_true(h.cap >= n);
  for (uint32_t i = 0; i < n; i++) assert_non_null(sh_head_node(&h, i * 7919u + 3));
  sh_req_t one = req(1000, 0, 0);
  static uint8_t hits[5000];
  memset(hits, 0, sizeof hits);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t id = place(&h, &one);
    assert_int_equal((id - 3) % 7919u, 0);
    hits[(id - 3) / 7919u]++;
  }
  for (uint32_t i = 0; i < n; i++) assert_int_equal(hits[i], 1);
  for (uint32_t i = 0; i < n; i++) place(&h, &one);
  uint32_t id;
  assert_int_equal(sh_head_place(&h, &one, NULL, 0, &id, NULL, 0), SH_ENOROOM);
  sh_head_close(&h);
}

/* The id map cannot grow: add_node reports it and changes nothing. */
typedef struct add_ctx_s {
  sh_head_t h;
  uint32_t next;
} add_ctx_t;

static int add_op(void *p) {
  add_ctx_t *c = p;
  sh_res_t r = res(1, 0, 1);
  int rc = sh_head_add_node(&c->h, c->next, &r);
  if (rc == 0) c->next++;
  return rc;
}

static void add_unchanged(void *p) {
  add_ctx_t *c = p;
  assert_int_equal(c->h.nnodes, c->next);
  assert_null(sh_head_node(&c->h, c->next));
  sh_req_t one = req(1000, 0, 0);
  uint32_t id;
  int rc = sh_head_place(&c->h, &one, NULL, 0, &id, NULL, 0);
  assert_int_equal(rc, c->next ? 0 : SH_EINFEASIBLE); /* nodes have 1 CPU free each */
  if (rc == 0) assert_int_equal(sh_head_release(&c->h, id, &one), 0);
}

static void add_node_out_of_memory(void **state) {
  add_ctx_t c;
  sh_head_init(&c.h);
  c.next = 0;
  long faults = 0;
  for (int i = 0; i < 40; i++) faults += sh_fault_loop(add_op, add_unchanged, NULL, &c);
  assert_true(faults > 0);
  assert_int_equal(c.h.nnodes, 40);
  sh_head_close(&c.h);
}

/* ---- property test: the index agrees with a scan of every node ---- */

/* The policy written plainly: eligible, fits, most hinted bytes, lowest key. */
static int64_t ref_choose(const sh_head_t *h, const sh_req_t *q, const sh_head_hint_t *hints,
                          uint32_t nhints) {
  int64_t best = -1;
  uint64_t best_bytes = 0, best_key = UINT64_MAX;
  for (uint32_t s = 0; s < h->nnodes; s++) {
    const sh_head_node_t *nd = &h->nodes[s];
    if (!nd->alive || nd->draining || !sh_res_fits(&nd->free, q)) continue;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < nhints; i++)
      if (hints[i].node_id == nd->node_id && hints[i].bytes > bytes) bytes = hints[i].bytes;
    uint64_t key = (uint64_t)nd->score << 32 | nd->node_id;
    if (best < 0 || bytes > best_bytes || (bytes == best_bytes && key < best_key)) {
      best = s;
      best_bytes = bytes;
      best_key = key;
    }
  }
  return best;
}

typedef struct running_s {
  uint32_t node_id;
  int kind;
} running_t;

static const char *const NAMES[] = {"ssd", "bigmem", "fpga", "tpu"};

/* A feasible answer is remembered for the next same request; a node that
 * dies, leaves or joins makes the next check look again. */
static void feasible_follows_node_changes(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  sh_res_t a = res(4, 0, 8), b = res(16, 0, 32);
  sh_req_t twelve = req(12000, 0, 0);
  assert_int_equal(sh_head_add_node(&h, 1, &a), 0);
  assert_int_equal(sh_head_feasible(&h, &twelve, NULL, 0), 0);
  assert_int_equal(sh_head_add_node(&h, 2, &b), 0);
  assert_int_equal(sh_head_feasible(&h, &twelve, NULL, 0), 1);
  assert_int_equal(sh_head_feasible(&h, &twelve, NULL, 0), 1); /* remembered */
  assert_int_equal(sh_head_set_alive(&h, 2, 0), 0);
  assert_int_equal(sh_head_feasible(&h, &twelve, NULL, 0), 0);
  assert_int_equal(sh_head_set_alive(&h, 2, 1), 0);
  assert_int_equal(sh_head_feasible(&h, &twelve, NULL, 0), 1);
  assert_int_equal(sh_head_remove_node(&h, 2), 0);
  char why[1024];
  assert_int_equal(sh_head_feasible(&h, &twelve, why, sizeof why), 0);
  assert_non_null(strstr(why, "largest node has {CPU: 4"));
  /* A request with custom names is never answered from memory. */
  sh_res_t g = res(16, 0, 32);
  snprintf(g.custom[0].name, sizeof g.custom[0].name, "bigmem");
  g.custom[0].milli = 1000;
  g.ncustom = 1;
  assert_int_equal(sh_head_add_node(&h, 3, &g), 0);
  sh_req_t big = req(12000, 0, 0);
  sh_custom_t want = {"bigmem", 1000};
  big.ncustom = 1;
  big.custom = &want;
  assert_int_equal(sh_head_feasible(&h, &big, NULL, 0), 1);
  assert_int_equal(sh_head_feasible(&h, &twelve, NULL, 0), 1);
  snprintf(want.name, sizeof want.name, "other");
  assert_int_equal(sh_head_feasible(&h, &big, NULL, 0), 0);
  sh_head_close(&h);
}

static sh_res_t random_node(uint64_t *rng) {
  sh_res_t r = res(1 + sh_test_rand(rng) % 16, sh_test_rand(rng) % 4 == 0 ? 1 + sh_test_rand(rng) % 4 : 0,
                   1 + sh_test_rand(rng) % 64);
  for (int k = 0; k < 4; k++)
    if (sh_test_rand(rng) % 5 == 0) sh_res_set_custom(&r, NAMES[k], 1000 * (1 + sh_test_rand(rng) % 3));
  return r;
}

static void matches_brute_force(void **state) {
  sh_head_t h;
  sh_head_init(&h);
  uint64_t rng = 0x5eed;
  uint32_t next_id = 1;
  for (int i = 0; i < 150; i++) {
    sh_res_t r = random_node(&rng);
    assert_int_equal(sh_head_add_node(&h, next_id++, &r), 0);
  }
  sh_custom_t cust[4][1];
  for (int k = 0; k < 4; k++) {
    snprintf(cust[k][0].name, SH_NAME_MAX, "%s", NAMES[k]);
    cust[k][0].milli = 1000;
  }
  sh_req_t kinds[] = {req(1000, 0, 0), req(500, 0, 0), req(2000, 0, 4 * GIB), req(1000, 1000, 0),
                      req(0, 500, GIB), {1000, 0, 0, 1, cust[0]}, {0, 0, 0, 1, cust[1]},
                      {1000, 0, GIB, 1, cust[2]}, {1000, 0, 0, 1, cust[3]}, req(16000, 0, 0),
                      req(0, 0, 0), req(64000, 0, 0)};
  const int nkinds = (int)(sizeof kinds / sizeof kinds[0]);
  static running_t run[20000];
  int nrun = 0, placed = 0, noroom = 0, infeasible = 0;
  for (int step = 0; step < 20000; step++) {
    uint64_t op = sh_test_rand(&rng) % 100;
    if (op < 55) {
      const sh_req_t *q = &kinds[sh_test_rand(&rng) % nkinds];
      sh_head_hint_t hints[3];
      uint32_t nh = (uint32_t)(sh_test_rand(&rng) % 4);
      for (uint32_t i = 0; i < nh; i++) {
        hints[i].node_id = 1 + (uint32_t)(sh_test_rand(&rng) % (next_id + 5));
        hints[i].bytes = sh_test_rand(&rng) % 3 * 1000;
      }
      int64_t want = ref_choose(&h, q, hints, nh);
      uint32_t want_id = want >= 0 ? h.nodes[want].node_id : 0, id = 0;
      int rc = sh_head_place(&h, q, hints, nh, &id, NULL, 0);
      if (want >= 0) {
        assert_int_equal(rc, 0);
        assert_int_equal(id, want_id);
        run[nrun].node_id = id;
        run[nrun++].kind = (int)(q - kinds);
        placed++;
      } else {
        assert_int_equal(rc, sh_head_feasible(&h, q, NULL, 0) ? SH_ENOROOM : SH_EINFEASIBLE);
        if (rc == SH_ENOROOM) noroom++;
        else infeasible++;
      }
    } else if (op < 90 && nrun) {
      int i = (int)(sh_test_rand(&rng) % (uint64_t)nrun);
      int rc = sh_head_release(&h, run[i].node_id, &kinds[run[i].kind]);
      assert_true(rc == 0 || rc == -ENOENT);
      run[i] = run[--nrun];
    } else {
      uint32_t id = 1 + (uint32_t)(sh_test_rand(&rng) % next_id);
      uint64_t what = sh_test_rand(&rng) % 6;
      if (what == 0) sh_head_set_load(&h, id, (uint32_t)(sh_test_rand(&rng) % 20000));
      else if (what == 1) sh_head_set_alive(&h, id, sh_test_rand(&rng) % 3 != 0);
      else if (what == 2) sh_head_set_draining(&h, id, sh_test_rand(&rng) % 3 == 0);
      else if (what == 3) sh_head_remove_node(&h, id);
      else {
        sh_res_t r = random_node(&rng);
        assert_int_equal(sh_head_add_node(&h, next_id++, &r), 0);
      }
    }
  }
  assert_true(placed > 1000);
  assert_true(noroom > 50);
  assert_true(infeasible > 50);
  sh_head_close(&h);
}

static const struct CMUnitTest tests[] = {
    SH_TEST(gpu_only_where_free),
    SH_TEST(spreads_by_declared_load),
    SH_TEST(prefers_low_measured_load),
    SH_TEST(prefers_locality),
    SH_TEST(draining_gets_no_work),
    SH_TEST(dead_nodes_get_no_work),
    SH_TEST(no_room_versus_infeasible),
    SH_TEST(feasible_follows_node_changes),
    SH_TEST(custom_resources),
    SH_TEST(custom_names_past_mask_bits),
    SH_TEST(release_restores_free),
    SH_TEST(node_added_later_gets_work),
    SH_TEST(set_free_from_heartbeat),
    SH_TEST(take_pinned),
    SH_TEST(remove_nodes),
    SH_TEST(grows_past_64_and_1000),
    SH_TEST(add_node_out_of_memory),
    SH_TEST(matches_brute_force),
};

SH_TEST_MAIN(tests)
