/* Unit tests for src/head/journal.c: the head's journal round-trips, is
 * replaced atomically, refuses what is not a journal, keeps its node list a
 * set, and fails cleanly when memory runs out. */
#include "sh_test.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/frame.h"
#include "head/journal.h"

/* A fresh directory per test; path receives DIR/head.journal. */
static void tmp_journal(char *dir, size_t dn, char *path, size_t pn) {
  snprintf(dir, dn, "/tmp/shoal-journal-test-XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(path, pn, "%s/head.journal", dir);
}

static void rm_dir(const char *dir, const char *path) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  unlink(path);
  unlink(tmp);
  rmdir(dir);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void round_trip(void **state) {
  char dir[64], path[128], err[512];
  tmp_journal(dir, sizeof dir, path, sizeof path);
  sh_journal_t j, k;
  sh_journal_init(&j);
  sh_journal_init(&k);
  j.epoch = 3;
  j.next_client = 17;
  snprintf(j.store_dir, sizeof j.store_dir, "/dev/shm/shoal-12-abcdef");
  snprintf(j.spill_dir, sizeof j.spill_dir, "/tmp/x/shoal-spill-12-ghijkl");
  for (uint32_t id = 2; id < 40; id += 3) assert_int_equal(sh_journal_add_node(&j, id), 0);
  assert_int_equal(sh_journal_save(path, &j, 1), 0);
  assert_int_equal(sh_journal_load(path, &k, err, sizeof err), 0);
  assert_int_equal(k.epoch, 3);
  assert_int_equal(k.next_client, 17);
  assert_string_equal(k.store_dir, j.store_dir);
  assert_string_equal(k.spill_dir, j.spill_dir);
  assert_int_equal(k.nnodes, j.nnodes);
  for (uint32_t i = 0; i < j.nnodes; i++) assert_true(sh_journal_has_node(&k, j.nodes[i]));
  /* The file is private and no temporary file is left. */
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  char tmp[160];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  assert_int_equal(access(tmp, F_OK), -1);
  sh_journal_close(&j);
  sh_journal_close(&k);
  rm_dir(dir, path);
}

static void missing_is_enoent(void **state) {
  char dir[64], path[128], err[512];
  tmp_journal(dir, sizeof dir, path, sizeof path);
  sh_journal_t j;
  sh_journal_init(&j);
  assert_int_equal(sh_journal_load(path, &j, err, sizeof err), -ENOENT);
  assert_int_equal(j.nnodes, 0);
  sh_journal_close(&j);
  rm_dir(dir, path);
}

static void refuses_malformed(void **state) {
  static const char *bad[] = {
      "",                                             /* empty */
      "not a journal\nepoch 1\n",                     /* wrong magic */
      SH_JOURNAL_MAGIC "\nepoch x\n",                  /* not a number */
      SH_JOURNAL_MAGIC "\nepoch -1\n",                 /* negative */
      SH_JOURNAL_MAGIC "\nepoch 99999999999\n",        /* over u32 */
      SH_JOURNAL_MAGIC "\nnode 0\n",                   /* node 0 is nobody */
      SH_JOURNAL_MAGIC "\nnoblank\n",                  /* no value */
  };
  char dir[64], path[128], err[512];
  tmp_journal(dir, sizeof dir, path, sizeof path);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    sh_journal_t j;
    sh_journal_init(&j);
    write_file(path, bad[i]);
    err[0] = 0;
    int rc = sh_journal_load(path, &j, err, sizeof err);
    if (rc != SH_EBODY) fail_msg("case %zu: rc %d, want SH_EBODY", i, rc);
    assert_true(strstr(err, "not a shoal head journal") != NULL);
    assert_int_equal(j.nnodes, 0);
    sh_journal_close(&j);
  }
  rm_dir(dir, path);
}

static void skips_unknown_keys(void **state) {
  char dir[64], path[128], err[512];
  tmp_journal(dir, sizeof dir, path, sizeof path);
  write_file(path, SH_JOURNAL_MAGIC "\nepoch 2\nfuture_key some value\n\nnode 7\nnode 7\n");
  sh_journal_t j;
  sh_journal_init(&j);
  assert_int_equal(sh_journal_load(path, &j, err, sizeof err), 0);
  assert_int_equal(j.epoch, 2);
  assert_int_equal(j.nnodes, 1); /* a set: the repeated node counts once */
  assert_string_equal(j.store_dir, "");
  sh_journal_close(&j);
  rm_dir(dir, path);
}

/* Saving over an existing journal replaces it whole; a failed save (here: a
 * directory with a newline, or an unwritable place) leaves it as it was. */
static void save_replaces_or_keeps(void **state) {
  char dir[64], path[128], err[512];
  tmp_journal(dir, sizeof dir, path, sizeof path);
  sh_journal_t j, k;
  sh_journal_init(&j);
  sh_journal_init(&k);
  j.epoch = 1;
  assert_int_equal(sh_journal_add_node(&j, 5), 0);
  assert_int_equal(sh_journal_save(path, &j, 0), 0);
  j.epoch = 2;
  sh_journal_remove_node(&j, 5);
  assert_int_equal(sh_journal_save(path, &j, 0), 0);
  assert_int_equal(sh_journal_load(path, &k, err, sizeof err), 0);
  assert_int_equal(k.epoch, 2);
  assert_int_equal(k.nnodes, 0);
  snprintf(j.store_dir, sizeof j.store_dir, "bad\nname");
  j.epoch = 9;
  assert_int_equal(sh_journal_save(path, &j, 0), -EINVAL);
  j.store_dir[0] = 0;
  assert_int_equal(sh_journal_save("/nonexistent-dir/x/head.journal", &j, 0), -ENOENT);
  assert_int_equal(sh_journal_load(path, &k, err, sizeof err), 0);
  assert_int_equal(k.epoch, 2);
  sh_journal_close(&j);
  sh_journal_close(&k);
  rm_dir(dir, path);
}

static void node_set(void **state) {
  sh_journal_t j;
  sh_journal_init(&j);
  assert_int_equal(sh_journal_add_node(&j, 0), 0); /* ignored */
  for (uint32_t id = 1; id <= 100; id++) assert_int_equal(sh_journal_add_node(&j, id), 0);
  assert_int_equal(sh_journal_add_node(&j, 50), 0);
  assert_int_equal(j.nnodes, 100);
  for (uint32_t id = 1; id <= 100; id += 2) sh_journal_remove_node(&j, id);
  sh_journal_remove_node(&j, 1000);
  assert_int_equal(j.nnodes, 50);
  for (uint32_t id = 1; id <= 100; id++) assert_int_equal(sh_journal_has_node(&j, id), id % 2 == 0);
  sh_journal_close(&j);
}

/* The fault loop over adding nodes: every failure is -ENOMEM with the list
 * unchanged and nothing leaked. */
typedef struct {
  sh_journal_t j;
} oom_ctx_t;

static int add_many(void *p) {
  oom_ctx_t *x = p;
  sh_journal_init(&x->j);
  for (uint32_t id = 1; id <= 40; id++) {
    int rc = sh_journal_add_node(&x->j, id);
    if (rc) {
      sh_journal_close(&x->j);
      return rc;
    }
  }
  return 0;
}

static void add_unchanged(void *p) {
  oom_ctx_t *x = p;
  assert_int_equal(x->j.nnodes, 0);
  assert_null(x->j.nodes);
}

static void add_out_of_memory(void **state) {
  oom_ctx_t x;
  long fails = sh_fault_loop(add_many, add_unchanged, NULL, &x);
  assert_true(fails >= 3); /* 8, 16, 32, 64 slots: a fault at each growth */
  assert_int_equal(x.j.nnodes, 40);
  sh_journal_close(&x.j);
  /* Loading needs memory for the node list too. */
  char dir[64], path[128], err[512];
  tmp_journal(dir, sizeof dir, path, sizeof path);
  write_file(path, SH_JOURNAL_MAGIC "\nnode 3\n");
  sh_journal_init(&x.j);
  sh_alloc_fail_after(0);
  assert_int_equal(sh_journal_load(path, &x.j, err, sizeof err), -ENOMEM);
  sh_alloc_fail_after(-1);
  assert_int_equal(x.j.nnodes, 0);
  assert_int_equal(sh_journal_load(path, &x.j, err, sizeof err), 0);
  assert_int_equal(x.j.nnodes, 1);
  sh_journal_close(&x.j);
  rm_dir(dir, path);
}

/* m emptied and read again from path; returns how many ids it has. */
static size_t reload(const char *path, sh_map_t *m) {
  sh_map_close(m);
  sh_map_init(m);
  assert_int_equal(sh_charges_load(path, m), 0);
  return m->count;
}

/* Charged attempts: appended counts load as the largest per id, a torn last
 * line (a crash mid-write) and junk are skipped, a rewrite keeps only the
 * map and leaves a descriptor that appends to the new file. */
static void charges_round_trip(void **state) {
  char dir[64], path[128];
  tmp_journal(dir, sizeof dir, path, sizeof path);
  sh_map_t m;
  sh_map_init(&m);
  assert_int_equal(sh_charges_load(path, &m), -ENOENT);
  int fd = -1;
  assert_int_equal(sh_charges_rewrite(path, &m, &fd), 0);
  assert_true(fd >= 0);
  assert_int_equal(sh_charges_append(fd, 0x10000000002ULL, 1), 0);
  assert_int_equal(sh_charges_append(fd, 0x20000000007ULL, 1), 0);
  assert_int_equal(sh_charges_append(fd, 0x10000000002ULL, 2), 0);
  assert_int_equal(write(fd, "junk line\n0000010000000009 3", 28), 28); /* torn */
  assert_int_equal(reload(path, &m), 2);
  assert_int_equal((uintptr_t)sh_map_get(&m, 0x10000000002ULL), 2);
  assert_int_equal((uintptr_t)sh_map_get(&m, 0x20000000007ULL), 1);
  /* Rewritten without one id, then appended to: the new file has both. */
  sh_map_del(&m, 0x20000000007ULL);
  assert_int_equal(sh_charges_rewrite(path, &m, &fd), 0);
  assert_int_equal(sh_charges_append(fd, 0x30000000001ULL, 4), 0);
  assert_int_equal(reload(path, &m), 2);
  assert_int_equal((uintptr_t)sh_map_get(&m, 0x10000000002ULL), 2);
  assert_int_equal((uintptr_t)sh_map_get(&m, 0x30000000001ULL), 4);
  assert_null(sh_map_get(&m, 0x20000000007ULL));
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  close(fd);
  sh_map_close(&m);
  rm_dir(dir, path);
}

/* Out of memory rewriting: -ENOMEM, the old file and descriptor untouched. */
static void charges_rewrite_out_of_memory(void **state) {
  char dir[64], path[128];
  tmp_journal(dir, sizeof dir, path, sizeof path);
  sh_map_t m;
  sh_map_init(&m);
  int fd = -1;
  assert_int_equal(sh_charges_rewrite(path, &m, &fd), 0);
  assert_int_equal(sh_charges_append(fd, 5, 1), 0);
  assert_int_equal(sh_map_put(&m, 6, (void *)(uintptr_t)2), 0);
  int old = fd;
  sh_alloc_fail_after(0);
  assert_int_equal(sh_charges_rewrite(path, &m, &fd), -ENOMEM);
  sh_alloc_fail_after(-1);
  assert_int_equal(fd, old);
  assert_int_equal(reload(path, &m), 1);
  assert_int_equal((uintptr_t)sh_map_get(&m, 5), 1);
  close(fd);
  sh_map_close(&m);
  rm_dir(dir, path);
}

static const struct CMUnitTest tests[] = {
    SH_TEST(round_trip),
    SH_TEST(missing_is_enoent),
    SH_TEST(refuses_malformed),
    SH_TEST(skips_unknown_keys),
    SH_TEST(save_replaces_or_keeps),
    SH_TEST(node_set),
    SH_TEST(add_out_of_memory),
    SH_TEST(charges_round_trip),
    SH_TEST(charges_rewrite_out_of_memory),
};

SH_TEST_MAIN(tests)
