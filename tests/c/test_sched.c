/* Unit tests for src/node/sched.c: the scheduler's queues, dependencies,
 * objects, retries and resource bookkeeping, driven through its entry points
 * with a real agent struct, a fake driver connection and fake pool workers
 * (socketpairs; no processes are spawned). */
#include "sh_test.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/frame.h"
#include "common/log.h"
#include "node/agent.h"

typedef struct fixture_s {
  sh_agent_t a;
  uv_loop_t loop;
  sh_conn_t *driver;
  int driver_peer;
  sh_worker_t *w[4];
  int nworkers;
  char tmp[64];       /* socket dir and store base of this test */
  char store_base[96];
} fixture_t;

static fixture_t fx;

#define CID 1u
static uint64_t tid(uint64_t seq) { return (uint64_t)CID << 40 | seq; }

static sh_worker_t *fake_worker(void) {
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  close(sv[1]);
  sh_worker_t *w = sh_calloc(1, sizeof *w);
  w->agent = &fx.a;
  w->index = ++fx.a.worker_seq;
  w->pid = 0x7ffffff0; /* no such process: a kill is harmless */
  w->proc.pid = w->pid;
  w->hello = 1;
  w->out_fd[0] = w->out_fd[1] = -1;
  sh_queue_init(&w->inflight);
  sh_map_init(&w->funcs_sent);
  uv_timer_init(&fx.loop, &w->timer);
  w->timer.data = w;
  w->conn = sh_conn_create(&fx.a, sv[0], SH_ROLE_WORKER, "fake worker");
  w->conn->worker = w;
  sh_queue_insert_tail(&fx.a.workers, &w->link);
  fx.a.pool_size++;
  fx.w[fx.nworkers++] = w;
  return w;
}

static void setup(int nworkers, uint64_t cpus) {
  memset(&fx, 0, sizeof fx);
  sh_log_set_level(SH_LOG_ERROR);
  uv_loop_init(&fx.loop);
  sh_agent_t *a = &fx.a;
  a->loop = &fx.loop;
  a->opts.num_workers = nworkers;
  a->opts.resources.cpu_milli = cpus * 1000;
  a->opts.resources.memory = 1ull << 30;
  a->avail = a->opts.resources;
  a->stopping = 1; /* no respawns from pool code */
  /* A real store in a private temporary directory, small enough to spill. */
  snprintf(fx.tmp, sizeof fx.tmp, "/tmp/sh-sched-XXXXXX");
  assert_non_null(mkdtemp(fx.tmp));
  snprintf(fx.store_base, sizeof fx.store_base, "%s/shm", fx.tmp);
  assert_int_equal(mkdir(fx.store_base, 0700), 0);
  a->opts.socket_dir = fx.tmp;
  a->opts.store_dir = fx.store_base;
  a->opts.store_memory = 10000;
  a->opts.inline_threshold = 100;
  char err[256];
  assert_int_equal(sh_store_open(a, err, sizeof err), 0);
  sh_queue_init(&a->conns);
  sh_queue_init(&a->dirty);
  sh_queue_init(&a->workers);
  sh_map_init(&a->clients);
  sh_head_init(&a->head);
  sh_head_add_node(&a->head, 1, &a->opts.resources);
  sh_sched_init(a);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  fx.driver_peer = sv[1];
  fx.driver = sh_conn_create(a, sv[0], SH_ROLE_DRIVER, "fake driver");
  fx.driver->client_id = CID;
  sh_map_put(&a->clients, CID, fx.driver);
  for (int i = 0; i < nworkers; i++) fake_worker();
  a->stopping = 0;
}

static void worker_free_cb(uv_handle_t *h) {
  sh_worker_t *w = h->data;
  sh_map_close(&w->funcs_sent);
  sh_free(w);
}

static void teardown(void) {
  sh_agent_t *a = &fx.a;
  a->stopping = 1;
  for (int i = 0; i < fx.nworkers; i++) {
    sh_worker_t *w = fx.w[i];
    w->exited = 1;
    if (w->conn) sh_conn_close(w->conn, NULL);
    sh_queue_remove(&w->link);
    sh_queue_init(&w->inflight);
    uv_close((uv_handle_t *)&w->timer, worker_free_cb);
  }
  if (!fx.driver->closing) {
    fx.driver->client_id = 0; /* do not run client_gone again */
    sh_conn_close(fx.driver, NULL);
  }
  close(fx.driver_peer);
  uv_run(&fx.loop, UV_RUN_NOWAIT);
  sh_sched_close(a);
  sh_store_close(a);
  assert_int_equal(rmdir(fx.store_base), 0); /* empty: the store removed its own */
  assert_int_equal(rmdir(fx.tmp), 0);

  sh_map_close(&a->clients);
  sh_head_close(&a->head);
  assert_int_equal(uv_loop_close(&fx.loop), 0);
}

static void register_fn(uint64_t fn) {
  sh_sched_func(&fx.a, fx.driver, fn, (const uint8_t *)"fn-blob", 7);
}

static sh_submit_t plain(uint64_t fn) {
  sh_submit_t s;
  memset(&s, 0, sizeof s);
  s.fn_id = fn;
  s.kind = SH_KIND_TASK;
  s.max_retries = 3;
  s.cpu_milli = 1000;
  s.args = (const uint8_t *)"args";
  s.args_len = 4;
  return s;
}

/* Counts frames of `type` in a buffer, returning the i-th one's id in *id. */
static int count_frames(sh_buf_t *b, unsigned type, int want, uint64_t *id, sh_frame_t *out) {
  size_t off = b->off;
  int n = 0;
  while (off < b->len) {
    sh_frame_t f;
    size_t used;
    assert_int_equal(sh_frame_parse(b->data + off, b->len - off, SH_FRAME_MAX_DEFAULT, &f, &used), 1);
    if (f.hdr.type == type) {
      if (n == want && id) *id = f.hdr.id;
      if (n == want && out) *out = f;
      n++;
    }
    off += used;
  }
  return n;
}

/* The RESULT for `id` the driver got, or fails the test. */
static sh_result_t driver_result(uint64_t id) {
  sh_buf_t *b = &fx.driver->out;
  for (int i = 0;; i++) {
    uint64_t got = 0;
    sh_frame_t f;
    if (count_frames(b, SH_MSG_RESULT, i, &got, &f) <= i) fail_msg("no RESULT for %#llx", (unsigned long long)id);
    if (got == id) {
      sh_result_t r;
      assert_int_equal(sh_result_decode(f.body, f.hdr.len, &r), 0);
      return r;
    }
  }
}

/* What the pool does when a worker process exits, minus the process. */
static void worker_dies(sh_worker_t *w, int sig) {
  w->exited = 1;
  sh_queue_remove(&w->link);
  fx.a.pool_size--;
  sh_sched_worker_died(&fx.a, w, sig, 0, NULL);
}

static void worker_returns(sh_worker_t *w, uint64_t id, uint32_t status) {
  sh_result_t r = {status, 0, (const uint8_t *)"value", 5};
  sh_sched_result(&fx.a, w, id, &r);
}

static void dispatch_holds_resources_and_sends_func_once(void **state) {
  setup(2, 2);
  register_fn(tid(1));
  sh_submit_t s = plain(tid(1));
  for (int i = 0; i < 3; i++) sh_sched_submit(&fx.a, fx.driver, tid(10 + i), &s);
  sh_sched_run(&fx.a);
  /* Two idle workers take one task each; the third waits (depth unknown: 1). */
  assert_int_equal(fx.w[0]->ninflight, 1);
  assert_int_equal(fx.w[1]->ninflight, 1);
  assert_int_equal(fx.a.avail.cpu_milli, 0);
  assert_int_equal(count_frames(&fx.w[0]->conn->out, SH_MSG_FUNC, 0, NULL, NULL), 1);
  assert_int_equal(count_frames(&fx.w[0]->conn->out, SH_MSG_EXEC, 0, NULL, NULL), 1);
  uint64_t first;
  count_frames(&fx.w[0]->conn->out, SH_MSG_EXEC, 0, &first, NULL);
  worker_returns(fx.w[0], first, SH_ST_OK);
  assert_int_equal(fx.a.avail.cpu_milli, 1000);
  sh_sched_run(&fx.a);
  /* Same process: the function is not sent again. */
  assert_int_equal(count_frames(&fx.w[0]->conn->out, SH_MSG_FUNC, 0, NULL, NULL), 1);
  assert_int_equal(count_frames(&fx.w[0]->conn->out, SH_MSG_EXEC, 0, NULL, NULL), 2);
  sh_result_t r = driver_result(first);
  assert_int_equal(r.status, SH_ST_OK);
  assert_memory_equal(r.payload, "value", 5);
  teardown();
}

static void short_tasks_are_pipelined(void **state) {
  setup(1, 1);
  register_fn(tid(1));
  sh_func_t *f = sh_map_get(&fx.a.funcs, tid(1));
  f->avg_ns = 2000; /* 2 us: depth 500, capped at 256 */
  sh_submit_t s = plain(tid(1));
  for (int i = 0; i < 400; i++) sh_sched_submit(&fx.a, fx.driver, tid(10 + i), &s);
  sh_sched_run(&fx.a);
  assert_int_equal(fx.w[0]->ninflight, 256);
  /* Only the running task holds the CPU. */
  assert_int_equal(fx.a.avail.cpu_milli, 0);
  for (int i = 0; i < 256; i++) worker_returns(fx.w[0], tid(10 + i), SH_ST_OK);
  f->avg_ns = 10000; /* 10 us: about 1 ms of work is 100 */
  sh_sched_run(&fx.a);
  assert_int_equal(fx.w[0]->ninflight, 100);
  for (int i = 256; i < 356; i++) worker_returns(fx.w[0], tid(10 + i), SH_ST_OK);
  f->avg_ns = 50000000; /* 50 ms: depth 1 */
  sh_sched_run(&fx.a);
  assert_int_equal(fx.w[0]->ninflight, 1);
  teardown();
}

static void dependency_waits_then_carries_value(void **state) {
  setup(1, 1);
  register_fn(tid(1));
  sh_submit_t s = plain(tid(1));
  sh_sched_submit(&fx.a, fx.driver, tid(10), &s);
  uint8_t dep[8];
  sh_put_u64(dep, tid(10));
  sh_submit_t d = plain(tid(1));
  d.ndeps = 1;
  d.deps = dep;
  sh_sched_submit(&fx.a, fx.driver, tid(11), &d);
  sh_task_t *t = sh_map_get(&fx.a.tasks, tid(11));
  assert_int_equal(t->state, SH_TASK_WAITING);
  sh_sched_run(&fx.a);
  worker_returns(fx.w[0], tid(10), SH_ST_OK);
  assert_int_equal(t->state, SH_TASK_READY);
  sh_sched_run(&fx.a);
  sh_frame_t f;
  assert_int_equal(count_frames(&fx.w[0]->conn->out, SH_MSG_EXEC, 1, NULL, &f), 2);
  sh_exec_t e;
  assert_int_equal(sh_exec_decode(f.body, f.hdr.len, &e), 0);
  assert_int_equal(e.ndeps, 1);
  sh_rd_t r;
  sh_rd_init(&r, e.deps, e.deps_len);
  sh_exec_dep_t dv;
  assert_int_equal(sh_exec_dep_next(&r, &dv), 1);
  assert_int_equal(dv.len, 5);
  assert_memory_equal(dv.data, "value", 5);
  /* The dependency is pinned while the dependent runs, even once released. */
  sh_sched_release(&fx.a, tid(10));
  assert_non_null(sh_map_get(&fx.a.objects, tid(10)));
  worker_returns(fx.w[0], tid(11), SH_ST_OK);
  assert_null(sh_map_get(&fx.a.objects, tid(10)));
  teardown();
}

static void failed_dependency_fails_dependent_unrun(void **state) {
  setup(1, 1);
  register_fn(tid(1));
  sh_submit_t s = plain(tid(1));
  sh_sched_submit(&fx.a, fx.driver, tid(10), &s);
  uint8_t dep[8];
  sh_put_u64(dep, tid(10));
  sh_submit_t d = plain(tid(1));
  d.ndeps = 1;
  d.deps = dep;
  sh_sched_submit(&fx.a, fx.driver, tid(11), &d);
  sh_sched_submit(&fx.a, fx.driver, tid(12), &d);
  sh_sched_run(&fx.a);
  worker_returns(fx.w[0], tid(10), SH_ST_ERROR);
  sh_result_t r = driver_result(tid(11));
  assert_int_equal(r.status, SH_ST_ERROR);
  assert_memory_equal(r.payload, "value", 5);
  assert_int_equal(driver_result(tid(12)).status, SH_ST_ERROR);
  assert_null(sh_map_get(&fx.a.tasks, tid(11)));
  /* A later submit on the failed object fails at once too. */
  sh_sched_submit(&fx.a, fx.driver, tid(13), &d);
  assert_int_equal(driver_result(tid(13)).status, SH_ST_ERROR);
  /* Unknown dependency: LOST. */
  sh_put_u64(dep, tid(999));
  sh_sched_submit(&fx.a, fx.driver, tid(14), &d);
  assert_int_equal(driver_result(tid(14)).status, SH_ST_LOST);
  teardown();
}

static void infeasible_fails_at_once_naming_both(void **state) {
  setup(1, 2);
  register_fn(tid(1));
  sh_submit_t s = plain(tid(1));
  s.cpu_milli = 1000000;
  sh_sched_submit(&fx.a, fx.driver, tid(10), &s);
  sh_result_t r = driver_result(tid(10));
  assert_int_equal(r.status, SH_ST_INFEASIBLE);
  char msg[1024];
  snprintf(msg, sizeof msg, "%.*s", (int)r.payload_len, r.payload);
  assert_non_null(strstr(msg, "CPU: 1000"));
  assert_non_null(strstr(msg, "largest node has {CPU: 2"));
  sh_custom_t c = {"tpu", 1000};
  s = plain(tid(1));
  s.ncustom = 1;
  s.custom[0] = c;
  sh_sched_submit(&fx.a, fx.driver, tid(11), &s);
  r = driver_result(tid(11));
  snprintf(msg, sizeof msg, "%.*s", (int)r.payload_len, r.payload);
  assert_non_null(strstr(msg, "no node has a resource named 'tpu'"));
  assert_int_equal(fx.a.tasks.count, 0);
  teardown();
}

static void crash_retries_then_fails_with_signal(void **state) {
  setup(1, 1);
  register_fn(tid(1));
  sh_func_t *f = sh_map_get(&fx.a.funcs, tid(1));
  f->avg_ns = 100000;
  sh_submit_t s = plain(tid(1));
  s.max_retries = 1;
  sh_sched_submit(&fx.a, fx.driver, tid(10), &s);
  sh_sched_submit(&fx.a, fx.driver, tid(11), &s);
  sh_sched_run(&fx.a);
  assert_int_equal(fx.w[0]->ninflight, 2);
  sh_worker_t *w = fx.w[0];
  worker_dies(w, SIGKILL);
  /* Running task retried (attempt 1), the one sent ahead requeued free. */
  sh_task_t *t10 = sh_map_get(&fx.a.tasks, tid(10)), *t11 = sh_map_get(&fx.a.tasks, tid(11));
  assert_int_equal(t10->attempts, 1);
  assert_int_equal(t11->attempts, 0);
  sh_shape_t *shape = sh_queue_data(sh_queue_head(&fx.a.shapes), sh_shape_t, link);
  assert_ptr_equal(sh_queue_data(sh_queue_head(&shape->tasks), sh_task_t, link), t10);
  assert_int_equal(fx.a.avail.cpu_milli, 1000);
  /* A second worker takes them; it dies too: retries are spent. */
  sh_worker_t *w2 = fake_worker();
  sh_sched_run(&fx.a);
  assert_int_equal(w2->ninflight, 2);
  worker_dies(w2, SIGSEGV);
  sh_result_t r = driver_result(tid(10));
  assert_int_equal(r.status, SH_ST_CRASHED);
  assert_int_equal(r.code, SIGSEGV);
  assert_non_null(memmem(r.payload, r.payload_len, "signal 11", 9));
  assert_int_equal(fx.a.n_retried, 1);
  teardown();
}

static void cancel_queued_and_release(void **state) {
  setup(1, 1);
  register_fn(tid(1));
  sh_submit_t s = plain(tid(1));
  sh_sched_submit(&fx.a, fx.driver, tid(10), &s);
  sh_sched_submit(&fx.a, fx.driver, tid(11), &s);
  sh_sched_run(&fx.a);
  assert_int_equal(sh_sched_cancel(&fx.a, tid(11), 0), SH_CANCEL_QUEUED);
  assert_int_equal(driver_result(tid(11)).status, SH_ST_CANCELLED);
  assert_int_equal(sh_sched_cancel(&fx.a, tid(11), 0), SH_CANCEL_NONE);
  worker_returns(fx.w[0], tid(10), SH_ST_OK);
  assert_non_null(sh_map_get(&fx.a.objects, tid(10)));
  sh_sched_release(&fx.a, tid(10));
  assert_null(sh_map_get(&fx.a.objects, tid(10)));
  /* A failed outcome is kept too (for later dependents) until released. */
  assert_non_null(sh_map_get(&fx.a.objects, tid(11)));
  sh_sched_release(&fx.a, tid(11));
  assert_int_equal(fx.a.objects.count, 0);
  assert_int_equal(fx.a.obj_bytes, 0);
  teardown();
}

static void actor_calls_keep_order_behind_a_dependency(void **state) {
  setup(0, 1);
  register_fn(tid(1));
  sh_submit_t s = plain(tid(1));
  sh_sched_submit(&fx.a, fx.driver, tid(5), &s); /* a task nobody runs: 0 workers */
  sh_submit_t c = plain(tid(1));
  c.kind = SH_KIND_ACTOR_CREATE;
  c.cpu_milli = 0;
  sh_sched_submit(&fx.a, fx.driver, tid(20), &c);
  sh_actor_t *ac = sh_map_get(&fx.a.actors, tid(20));
  assert_non_null(ac);
  /* Give the actor a worker by hand instead of spawning a process. */
  sh_task_t *create = ac->create;
  sh_queue_remove(&create->link);
  ac->create = NULL;
  ac->worker = fake_worker();
  ac->worker->actor = ac;
  ac->worker->dedicated = 1;
  fx.a.pool_size--;
  uint8_t dep[8];
  sh_put_u64(dep, tid(5));
  sh_submit_t call = plain(0);
  call.kind = SH_KIND_ACTOR_CALL;
  call.actor_id = tid(20);
  call.method = "m";
  call.method_len = 1;
  call.cpu_milli = 0;
  sh_submit_t waiting = call;
  waiting.ndeps = 1;
  waiting.deps = dep;
  sh_sched_submit(&fx.a, fx.driver, tid(21), &call);
  sh_sched_submit(&fx.a, fx.driver, tid(22), &waiting);
  sh_sched_submit(&fx.a, fx.driver, tid(23), &call);
  sh_sched_run(&fx.a);
  /* 21 goes; 22 waits for its dependency and 23 waits behind it. */
  assert_int_equal(ac->worker->ninflight, 1);
  sh_sched_kill_actor(&fx.a, tid(20), SH_KILL_NO_RESTART);
  assert_int_equal(driver_result(tid(21)).status, SH_ST_ACTOR_DIED);
  assert_int_equal(driver_result(tid(22)).status, SH_ST_ACTOR_DIED);
  assert_int_equal(driver_result(tid(23)).status, SH_ST_ACTOR_DIED);
  sh_sched_submit(&fx.a, fx.driver, tid(24), &call);
  sh_result_t r = driver_result(tid(24));
  assert_int_equal(r.status, SH_ST_ACTOR_DIED);
  assert_non_null(memmem(r.payload, r.payload_len, "shoal.kill", 10));
  /* The creation task was taken off by hand above; free it like the agent would. */
  sh_task_fail(&fx.a, create, SH_ST_CANCELLED, 0, "test");
  teardown();
}

static void client_gone_drops_its_work(void **state) {
  setup(1, 1);
  register_fn(tid(1));
  sh_submit_t s = plain(tid(1));
  for (int i = 0; i < 5; i++) sh_sched_submit(&fx.a, fx.driver, tid(10 + i), &s);
  sh_sched_put(&fx.a, fx.driver, tid(50), (const uint8_t *)"put", 3);
  sh_sched_run(&fx.a);
  assert_int_equal(fx.a.tasks.count, 5);
  sh_map_del(&fx.a.clients, CID);
  sh_sched_client_gone(&fx.a, CID);
  /* Queued ones are gone; the running one was stopped (its worker killed). */
  assert_int_equal(fx.a.tasks.count, 0);
  assert_int_equal(fx.a.objects.count, 0);
  assert_int_equal(fx.a.funcs.count, 0);
  assert_int_equal(fx.w[0]->kill_reason, SH_REASON_OWNER_GONE);
  fx.driver->client_id = 0;
  teardown();
}

/* ---- the object store ---- */

/* Writes a segment the way a writer does (bytes only: the agent never
 * parses them) for object id, filled with `fill`. */
static void write_segment(uint64_t id, size_t size, int fill) {
  char path[512];
  snprintf(path, sizeof path, "%s/%016llx", fx.a.store.dir, (unsigned long long)id);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  uint8_t *buf = sh_calloc(1, size);
  memset(buf, fill, size);
  assert_int_equal(write(fd, buf, size), (ssize_t)size);
  sh_free(buf);
  close(fd);
}

static int seg_exists(const char *dir, uint64_t id) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%016llx", dir, (unsigned long long)id);
  return access(path, F_OK) == 0;
}

static void put_stored(uint64_t id, uint64_t size) {
  uint8_t b[8];
  sh_put_u64(b, size);
  sh_sched_put_stored(&fx.a, fx.driver, id, b, 8);
}

/* Status of the last PUT_REPLY / MAP_REPLY for id. */
static uint32_t reply_status(unsigned type, uint64_t id) {
  uint32_t st = 0xffffffff;
  for (int i = 0;; i++) {
    uint64_t got = 0;
    sh_frame_t f;
    if (count_frames(&fx.driver->out, type, i, &got, &f) <= i) break;
    if (got == id) st = sh_get_u32(f.body);
  }
  assert_int_not_equal(st, 0xffffffff);
  return st;
}

static void store_seals_spills_restores_and_frees(void **state) {
  setup(1, 1);
  sh_store_t *st = &fx.a.store;
  for (int i = 0; i < 3; i++) { /* 3 x 4000 bytes: the third goes over 10000 */
    write_segment(tid(100 + i), 4000, 'a' + i);
    put_stored(tid(100 + i), 4000);
    assert_int_equal(reply_status(SH_MSG_PUT_REPLY, tid(100 + i)), SH_ST_OK);
  }
  assert_int_equal(st->nstored, 3);
  assert_true(st->used <= st->capacity);
  assert_int_equal(st->nspilled, 1);
  /* The least recently used one went to disk, byte for byte. */
  assert_false(seg_exists(st->dir, tid(100)));
  assert_true(seg_exists(st->spill_dir, tid(100)));
  /* MAP brings it back (spilling another) and counts the mapping. */
  sh_sched_map(&fx.a, fx.driver, tid(100));
  assert_int_equal(reply_status(SH_MSG_MAP_REPLY, tid(100)), SH_ST_OK);
  assert_true(seg_exists(st->dir, tid(100)));
  assert_int_equal(st->n_restores, 1);
  char path[4200];
  snprintf(path, sizeof path, "%s/%016llx", st->dir, (unsigned long long)tid(100));
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  int c0 = fgetc(fp);
  fseek(fp, 3999, SEEK_SET);
  int c1 = fgetc(fp);
  fclose(fp);
  assert_int_equal(c0, 'a');
  assert_int_equal(c1, 'a');
  /* A mapped object outlives its handle until the mapping goes. */
  sh_sched_release(&fx.a, tid(100));
  assert_true(seg_exists(st->dir, tid(100)));
  sh_sched_unmap(&fx.a, tid(100));
  assert_false(seg_exists(st->dir, tid(100)));
  sh_sched_release(&fx.a, tid(101));
  sh_sched_release(&fx.a, tid(102));
  assert_int_equal(st->nstored, 0);
  assert_int_equal(st->used, 0);
  assert_int_equal(st->spilled, 0);
  teardown();
}

static void store_refuses_what_cannot_fit(void **state) {
  setup(1, 1);
  sh_store_t *st = &fx.a.store;
  write_segment(tid(100), 20000, 'x'); /* bigger than the whole store */
  put_stored(tid(100), 20000);
  assert_int_equal(reply_status(SH_MSG_PUT_REPLY, tid(100)), SH_ST_STORE_FULL);
  assert_false(seg_exists(st->dir, tid(100)));
  write_segment(tid(101), 50, 'x'); /* a size that does not match the file */
  put_stored(tid(101), 60);
  assert_int_equal(reply_status(SH_MSG_PUT_REPLY, tid(101)), SH_ST_BAD_REQUEST);
  put_stored(tid(102), 60); /* no file at all */
  assert_int_equal(reply_status(SH_MSG_PUT_REPLY, tid(102)), SH_ST_LOST);
  /* Two mapped objects fill memory; a third is put straight to disk, and
   * cannot come back while the others are mapped. */
  for (int i = 0; i < 2; i++) {
    write_segment(tid(110 + i), 4500, 'm');
    put_stored(tid(110 + i), 4500);
    sh_sched_map(&fx.a, fx.driver, tid(110 + i));
  }
  write_segment(tid(120), 4500, 'n');
  put_stored(tid(120), 4500);
  assert_int_equal(reply_status(SH_MSG_PUT_REPLY, tid(120)), SH_ST_OK);
  assert_true(seg_exists(st->spill_dir, tid(120)));
  sh_sched_map(&fx.a, fx.driver, tid(120));
  assert_int_equal(reply_status(SH_MSG_MAP_REPLY, tid(120)), SH_ST_STORE_FULL);
  sh_sched_unmap(&fx.a, tid(110));
  sh_sched_map(&fx.a, fx.driver, tid(120));
  assert_int_equal(reply_status(SH_MSG_MAP_REPLY, tid(120)), SH_ST_OK);
  /* Unknown ids are LOST, not a crash. */
  sh_sched_map(&fx.a, fx.driver, tid(999));
  assert_int_equal(reply_status(SH_MSG_MAP_REPLY, tid(999)), SH_ST_LOST);
  teardown();
}

static void stored_dependency_is_sent_by_reference_and_busy(void **state) {
  setup(1, 1);
  register_fn(tid(1));
  write_segment(tid(100), 4000, 'd');
  put_stored(tid(100), 4000);
  sh_submit_t s = plain(tid(1));
  uint8_t dep[8];
  sh_put_u64(dep, tid(100));
  s.ndeps = 1;
  s.deps = dep;
  sh_sched_submit(&fx.a, fx.driver, tid(10), &s);
  sh_sched_release(&fx.a, tid(100)); /* the driver dropped it: the task still holds it */
  sh_sched_run(&fx.a);
  sh_frame_t f;
  assert_int_equal(count_frames(&fx.w[0]->conn->out, SH_MSG_EXEC, 0, NULL, &f), 1);
  sh_exec_t e;
  assert_int_equal(sh_exec_decode(f.body, f.hdr.len, &e), 0);
  sh_rd_t r;
  sh_rd_init(&r, e.deps, e.deps_len);
  sh_exec_dep_t d;
  assert_int_equal(sh_exec_dep_next(&r, &d), 1);
  assert_true(d.stored);
  assert_int_equal(d.id, tid(100));
  assert_int_equal(d.size, 4000);
  sh_obj_t *o = sh_map_get(&fx.a.objects, tid(100));
  assert_int_equal(o->busy, 1);
  /* A stored result: sealed under the task's id, sent as a reference. */
  write_segment(tid(10), 3000, 'r');
  uint8_t size[8];
  sh_put_u64(size, 3000);
  sh_result_t res = {SH_ST_OK, SH_CODE_STORED, size, 8};
  sh_sched_result(&fx.a, fx.w[0], tid(10), &res);
  sh_result_t got = driver_result(tid(10));
  assert_int_equal(got.status, SH_ST_OK);
  assert_int_equal(got.code, SH_CODE_STORED);
  assert_null(sh_map_get(&fx.a.objects, tid(100))); /* freed with its last task */
  assert_false(seg_exists(fx.a.store.dir, tid(100)));
  assert_true(seg_exists(fx.a.store.dir, tid(10)));
  /* The driver leaving frees what it owned. */
  sh_sched_client_gone(&fx.a, CID);
  assert_false(seg_exists(fx.a.store.dir, tid(10)));
  assert_int_equal(fx.a.store.nstored, 0);
  teardown();
}

static void unplaceable_tasks_do_not_hold_up_others(void **state) {
  /* 300 tasks that each need the node's one licence, queued first, then a
   * plain one: the plain one starts at once (it used to wait behind the
   * first 256 of them). */
  setup(2, 2);
  sh_res_set_custom(&fx.a.avail, "lic", 1000);
  sh_res_set_custom(&fx.a.opts.resources, "lic", 1000);
  sh_head_close(&fx.a.head);
  sh_head_init(&fx.a.head);
  sh_head_add_node(&fx.a.head, 1, &fx.a.opts.resources);
  register_fn(tid(1));
  sh_submit_t lic = plain(tid(1));
  lic.ncustom = 1;
  snprintf(lic.custom[0].name, sizeof lic.custom[0].name, "lic");
  lic.custom[0].milli = 1000;
  for (int i = 0; i < 300; i++) sh_sched_submit(&fx.a, fx.driver, tid(100 + i), &lic);
  sh_submit_t s = plain(tid(1));
  sh_sched_submit(&fx.a, fx.driver, tid(10), &s);
  sh_sched_run(&fx.a);
  /* One licence task runs on one worker, the plain task on the other. */
  sh_task_t *t = sh_map_get(&fx.a.tasks, tid(10));
  assert_int_equal(t->state, SH_TASK_SENT);
  assert_int_equal(fx.w[0]->ninflight + fx.w[1]->ninflight, 2);
  /* The rest keep their order: the licence's next task is 101. */
  sh_task_t *first = sh_map_get(&fx.a.tasks, tid(100));
  assert_int_equal(first->state, SH_TASK_SENT);
  worker_returns(first->worker, tid(100), SH_ST_OK);
  sh_sched_run(&fx.a);
  assert_int_equal(((sh_task_t *)sh_map_get(&fx.a.tasks, tid(101)))->state, SH_TASK_SENT);
  assert_int_equal(((sh_task_t *)sh_map_get(&fx.a.tasks, tid(102)))->state, SH_TASK_READY);
  teardown();
}

static void reap_removes_unfinished_segments(void **state) {
  setup(1, 1);
  char path[4200];
  snprintf(path, sizeof path, "%s/%016llx.4242.tmp", fx.a.store.dir, (unsigned long long)tid(5));
  int fd = open(path, O_WRONLY | O_CREAT, 0600);
  close(fd);
  write_segment(tid(6), 10, 'z');            /* renamed, never sealed */
  write_segment((uint64_t)9 << 40 | 6, 10, 'z'); /* another client's */
  sh_store_reap(&fx.a, CID, 4242);
  assert_int_equal(access(path, F_OK), -1);
  assert_false(seg_exists(fx.a.store.dir, tid(6)));
  assert_true(seg_exists(fx.a.store.dir, (uint64_t)9 << 40 | 6));
  teardown();
}

static const struct CMUnitTest tests[] = {
    SH_TEST(dispatch_holds_resources_and_sends_func_once),
    SH_TEST(short_tasks_are_pipelined),
    SH_TEST(dependency_waits_then_carries_value),
    SH_TEST(failed_dependency_fails_dependent_unrun),
    SH_TEST(infeasible_fails_at_once_naming_both),
    SH_TEST(crash_retries_then_fails_with_signal),
    SH_TEST(cancel_queued_and_release),
    SH_TEST(actor_calls_keep_order_behind_a_dependency),
    SH_TEST(client_gone_drops_its_work),
    SH_TEST(store_seals_spills_restores_and_frees),
    SH_TEST(store_refuses_what_cannot_fit),
    SH_TEST(stored_dependency_is_sent_by_reference_and_busy),
    SH_TEST(reap_removes_unfinished_segments),
    SH_TEST(unplaceable_tasks_do_not_hold_up_others),
};

SH_TEST_MAIN(tests)
