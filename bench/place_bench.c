/* Placement benchmark: decisions per second of the head's sh_head_place with
 * 1,000 simulated nodes, under a stream of mixed requests whose tasks finish
 * and give their resources back.
 *
 *   place_bench [--nodes N] [--decisions N] [--reps N] [--warmup N]
 *               [--mode index|scan] [--verify N] [--seed N]
 *
 * Prints one JSON object on stdout (bench/scenarios/placement.py reads it)
 * and a readable summary on stderr.
 *
 * Sections: the simulated cluster; the request stream; the run (decisions,
 * releases, heartbeats, drains); verification against a full scan; main.
 *
 * The timed loop is what the head does per decision in a cluster: release
 * the tasks that finished, apply a heartbeat now and then, and place one
 * request (locality hints on some). --mode scan replaces the index by a scan
 * of every node record with the same policy, for comparison. There is no
 * peer: no other system offers its placement decision as a function that can
 * be timed on its own. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "head/head.h"

#define GIB (1ull << 30)
#define NREQ 4096  /* distinct requests, cycled */
#define MAXHINT 3

static uint64_t rnd(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545f4914f6cdd1dULL;
}

static double clock_s(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- cluster */

static uint32_t node_id_of(uint32_t i) { return 1000 + i * 13; }

/* Node i of the simulated cluster: 70% CPU nodes (4 to 64 CPUs), 15% GPU
 * nodes (1 to 8 GPUs), 15% nodes with custom resources (ssd; some bigmem,
 * some fpga). Returns the node's CPUs in thousandths. */
static uint64_t make_node(uint64_t *rng, sh_res_t *r) {
  static const uint64_t cpus[] = {4, 8, 16, 32, 64}, gpus[] = {1, 2, 4, 8};
  memset(r, 0, sizeof *r);
  uint64_t kind = rnd(rng) % 100;
  if (kind < 70) {
    r->cpu_milli = cpus[rnd(rng) % 5] * 1000;
    r->memory = r->cpu_milli / 1000 * 4 * GIB;
  } else if (kind < 85) {
    r->cpu_milli = (rnd(rng) % 2 ? 16 : 32) * 1000;
    r->gpu_milli = gpus[rnd(rng) % 4] * 1000;
    r->memory = r->cpu_milli / 1000 * 8 * GIB;
  } else {
    r->cpu_milli = (rnd(rng) % 2 ? 8 : 16) * 1000;
    r->memory = r->cpu_milli / 1000 * 16 * GIB;
    sh_res_set_custom(r, "ssd", 2000);
    if (rnd(rng) % 2) sh_res_set_custom(r, "bigmem", 1000);
    if (rnd(rng) % 5 == 0) sh_res_set_custom(r, "fpga", 1000);
  }
  return r->cpu_milli;
}

/* Registers nnodes nodes in h. Returns the cluster's CPUs in thousandths. */
static uint64_t make_cluster(sh_head_t *h, uint32_t nnodes, uint64_t seed) {
  uint64_t rng = seed, total = 0;
  for (uint32_t i = 0; i < nnodes; i++) {
    sh_res_t r;
    total += make_node(&rng, &r);
    if (sh_head_add_node(h, node_id_of(i), &r)) {
      fprintf(stderr, "place_bench: cannot add node %u\n", i);
      exit(1);
    }
  }
  return total;
}

/* ---------------------------------------------------------------- requests */

typedef struct request_s {
  sh_req_t req;
  sh_custom_t custom[1];
  uint32_t nhints;
  sh_head_hint_t hints[MAXHINT];
} request_t;

/* The mix: 55% 1 CPU, 10% half a CPU, 10% 2 CPUs + 8 GiB, 8% 1 CPU + 1 GPU,
 * 3% a quarter GPU, 5% 1 CPU + ssd, 2% 4 CPUs + 64 GiB + bigmem, 1% fpga,
 * 5.8% 4 CPUs, 0.2% 16 GPUs (infeasible: no node has more than 8). 30% carry
 * 1 to 3 locality hints naming random nodes with 1 KiB to 64 MiB. */
static void make_request(uint64_t *rng, uint32_t nnodes, request_t *q) {
  memset(q, 0, sizeof *q);
  uint64_t k = rnd(rng) % 1000;
  sh_req_t *r = &q->req;
  if (k < 550) r->cpu_milli = 1000;
  else if (k < 650) r->cpu_milli = 500;
  else if (k < 750) r->cpu_milli = 2000, r->memory = 8 * GIB;
  else if (k < 830) r->cpu_milli = 1000, r->gpu_milli = 1000;
  else if (k < 860) r->gpu_milli = 250;
  else if (k < 910) r->cpu_milli = 1000, snprintf(q->custom[0].name, SH_NAME_MAX, "ssd");
  else if (k < 930) r->cpu_milli = 4000, r->memory = 64 * GIB, snprintf(q->custom[0].name, SH_NAME_MAX, "bigmem");
  else if (k < 940) r->cpu_milli = 1000, snprintf(q->custom[0].name, SH_NAME_MAX, "fpga");
  else if (k < 998) r->cpu_milli = 4000;
  else r->gpu_milli = 16000;
  if (q->custom[0].name[0]) {
    q->custom[0].milli = 1000;
    r->ncustom = 1;
  }
  if (rnd(rng) % 10 < 3) {
    q->nhints = 1 + (uint32_t)(rnd(rng) % MAXHINT);
    for (uint32_t i = 0; i < q->nhints; i++) {
      q->hints[i].node_id = node_id_of((uint32_t)(rnd(rng) % nnodes));
      q->hints[i].bytes = 1024 + rnd(rng) % (64u << 20);
    }
  }
}

/* Points each request at its own custom array (after the table is final). */
static void fix_pointers(request_t *reqs, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) reqs[i].req.custom = reqs[i].custom;
}

/* ---------------------------------------------------------------- the run */

/* A running task: where it runs and what it holds, in a timer wheel slot. */
typedef struct task_s {
  uint32_t node_id;
  uint32_t req;  /* index in the request table */
  int32_t next;  /* next task in the same wheel slot, or -1 */
} task_t;

typedef struct sim_s {
  sh_head_t h;
  uint32_t nnodes;
  int scan;                /* choose by a full scan instead of sh_head_place */
  request_t *reqs;
  uint64_t rng, t, dur;    /* random state, decision clock, mean task length */
  uint32_t wheel_mask;
  int32_t *wheel;          /* first task ending at t (mod wheel size), or -1 */
  task_t *tasks;
  int32_t free_task;       /* free list through task_t.next */
  uint32_t ntasks, running;
  uint64_t placed, local, no_room, infeasible;
  uint64_t digest;         /* FNV-1a over every outcome */
  uint32_t drained;        /* node currently drained, or UINT32_MAX */
} sim_t;

static void sim_init(sim_t *s, uint32_t nnodes, uint64_t seed, int scan) {
  memset(s, 0, sizeof *s);
  sh_head_init(&s->h);
  s->nnodes = nnodes;
  s->scan = scan;
  uint64_t cpus = make_cluster(&s->h, nnodes, seed);
  s->rng = seed ^ 0x9e3779b97f4a7c15ULL;
  s->reqs = sh_malloc(NREQ * sizeof *s->reqs);
  for (uint32_t i = 0; i < NREQ; i++) make_request(&s->rng, nnodes, &s->reqs[i]);
  fix_pointers(s->reqs, NREQ);
  /* Mean CPU per request ~1.2 (the mix above): tasks that last `dur`
   * decisions keep about 70% of the cluster's CPUs busy. */
  s->dur = cpus / 1000 * 7 / 12;
  if (s->dur < 16) s->dur = 16;
  uint32_t w = 1;
  while (w < 2 * s->dur + 2) w <<= 1;
  s->wheel_mask = w - 1;
  s->wheel = sh_malloc(w * sizeof *s->wheel);
  memset(s->wheel, 0xff, w * sizeof *s->wheel);
  s->ntasks = w;
  s->tasks = sh_malloc(s->ntasks * sizeof *s->tasks);
  for (uint32_t i = 0; i < s->ntasks; i++) s->tasks[i].next = (int32_t)i + 1;
  s->tasks[s->ntasks - 1].next = -1;
  s->free_task = 0;
  s->digest = 0xcbf29ce484222325ULL;
  s->drained = UINT32_MAX;
}

static void sim_close(sim_t *s) {
  sh_free(s->wheel);
  sh_free(s->tasks);
  sh_free(s->reqs);
  sh_head_close(&s->h);
}

static void mix(sim_t *s, uint64_t v) {
  s->digest = (s->digest ^ v) * 0x100000001b3ULL;
}

/* The policy written plainly over the node records: eligible, fits, most
 * hinted bytes, lowest (score, node id). The slot, or -1. */
static int64_t scan_choose(const sh_head_t *h, const request_t *q) {
  int64_t best = -1;
  uint64_t best_bytes = 0, best_key = UINT64_MAX;
  for (uint32_t s = 0; s < h->nnodes; s++) {
    const sh_head_node_t *nd = &h->nodes[s];
    if (!nd->alive || nd->draining || !sh_res_fits(&nd->free, &q->req)) continue;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < q->nhints; i++)
      if (q->hints[i].node_id == nd->node_id && q->hints[i].bytes > bytes) bytes = q->hints[i].bytes;
    uint64_t key = (uint64_t)nd->score << 32 | nd->node_id;
    if (best < 0 || bytes > best_bytes || (bytes == best_bytes && key < best_key)) {
      best = s;
      best_bytes = bytes;
      best_key = key;
    }
  }
  return best;
}

/* One decision by the chosen method. Same return values as sh_head_place. */
static int decide(sim_t *s, const request_t *q, uint32_t *node_id) {
  if (!s->scan) return sh_head_place(&s->h, &q->req, q->hints, q->nhints, node_id, NULL, 0);
  int64_t slot = scan_choose(&s->h, q);
  if (slot < 0) return sh_head_feasible(&s->h, &q->req, NULL, 0) ? SH_ENOROOM : SH_EINFEASIBLE;
  *node_id = s->h.nodes[slot].node_id;
  return sh_head_take(&s->h, *node_id, &q->req);
}

/* Releases the tasks that end now. */
static void finish_due(sim_t *s) {
  int32_t *slot = &s->wheel[s->t & s->wheel_mask];
  while (*slot >= 0) {
    task_t *tk = &s->tasks[*slot];
    int32_t next = tk->next;
    sh_head_release(&s->h, tk->node_id, &s->reqs[tk->req].req);
    tk->next = s->free_task;
    s->free_task = *slot;
    *slot = next;
    s->running--;
  }
}

/* Heartbeats: one node every 256 decisions reports a measured load near its
 * declared use; every 16,384 decisions one node is drained (and the one
 * drained before is back). */
static void heartbeat(sim_t *s) {
  if ((s->t & 255) == 0) {
    uint32_t i = (uint32_t)(s->t >> 8) % s->nnodes;
    const sh_head_node_t *nd = &s->h.nodes[i];
    uint64_t used = nd->total.cpu_milli - nd->free.cpu_milli;
    sh_head_set_load(&s->h, nd->node_id, (uint32_t)(used * (50 + rnd(&s->rng) % 100) / 100));
  }
  if ((s->t & 16383) == 0) {
    if (s->drained != UINT32_MAX) sh_head_set_draining(&s->h, s->drained, 0);
    s->drained = node_id_of((uint32_t)(rnd(&s->rng) % s->nnodes));
    sh_head_set_draining(&s->h, s->drained, 1);
  }
}

/* Records a placed task in the wheel, ending in dur/2 .. 3dur/2 decisions. */
static void start_task(sim_t *s, uint32_t node_id, uint32_t req) {
  if (s->free_task < 0) {
    fprintf(stderr, "place_bench: task pool exhausted\n");
    exit(1);
  }
  int32_t i = s->free_task;
  task_t *tk = &s->tasks[i];
  s->free_task = tk->next;
  tk->node_id = node_id;
  tk->req = req;
  uint64_t end = s->t + s->dur / 2 + 1 + rnd(&s->rng) % s->dur;
  int32_t *slot = &s->wheel[end & s->wheel_mask];
  tk->next = *slot;
  *slot = i;
  s->running++;
}

/* One step of the simulated head: finished tasks, heartbeats, a decision. */
static int step(sim_t *s, uint32_t *node_id) {
  s->t++;
  finish_due(s);
  heartbeat(s);
  uint32_t ri = (uint32_t)(s->t % NREQ);
  const request_t *q = &s->reqs[ri];
  char why[1024];
  int rc = decide(s, q, node_id);
  if (rc == 0) {
    s->placed++;
    for (uint32_t i = 0; i < q->nhints; i++)
      if (q->hints[i].node_id == *node_id) {
        s->local++;
        break;
      }
    start_task(s, *node_id, ri);
  } else if (rc == SH_ENOROOM) {
    s->no_room++;
  } else {
    /* What a caller does with an infeasible request: fail it with the words. */
    sh_head_feasible(&s->h, &q->req, why, sizeof why);
    s->infeasible++;
  }
  mix(s, rc == 0 ? *node_id : (uint64_t)(int64_t)rc);
  return rc;
}

/* Runs n decisions. Returns the seconds they took, and in *cpu_s the CPU
 * seconds this thread ran (on a shared machine the difference is time spent
 * waiting for a core). */
static double run(sim_t *s, uint64_t n, double *cpu_s) {
  uint32_t id;
  double c0 = clock_s(CLOCK_THREAD_CPUTIME_ID), t0 = clock_s(CLOCK_MONOTONIC);
  for (uint64_t i = 0; i < n; i++) step(s, &id);
  double t1 = clock_s(CLOCK_MONOTONIC);
  *cpu_s = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
  return t1 - t0;
}

/* Releases every running task; 1 when every node's free resources are then
 * its total again (the bookkeeping is exact). */
static int drain_and_check(sim_t *s) {
  for (uint32_t k = 0; k <= s->wheel_mask; k++) {
    s->t++;
    finish_due(s);
  }
  if (s->running) return 0;
  for (uint32_t i = 0; i < s->h.nnodes; i++) {
    const sh_head_node_t *nd = &s->h.nodes[i];
    if (nd->free.cpu_milli != nd->total.cpu_milli || nd->free.gpu_milli != nd->total.gpu_milli ||
        nd->free.memory != nd->total.memory)
      return 0;
    for (uint32_t j = 0; j < nd->total.ncustom; j++)
      if (nd->free.custom[j].milli != nd->total.custom[j].milli) return 0;
  }
  return 1;
}

/* ---------------------------------------------------------------- verify */

/* Runs the same stream through the index and through the full scan, side
 * by side, for n decisions; 1 when every decision agreed. */
static int verify(uint32_t nnodes, uint64_t seed, uint64_t n) {
  sim_t a, b;
  sim_init(&a, nnodes, seed, 0);
  sim_init(&b, nnodes, seed, 1);
  int ok = 1;
  for (uint64_t i = 0; i < n && ok; i++) {
    uint32_t ia = 0, ib = 0;
    int ra = step(&a, &ia), rb = step(&b, &ib);
    if (ra != rb || (ra == 0 && ia != ib)) {
      fprintf(stderr, "place_bench: decision %" PRIu64 " differs: index rc %d node %u, scan rc %d node %u\n",
              i, ra, ia, rb, ib);
      ok = 0;
    }
  }
  ok = ok && a.digest == b.digest && drain_and_check(&a) && drain_and_check(&b);
  sim_close(&a);
  sim_close(&b);
  return ok;
}

/* ---------------------------------------------------------------- main */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static uint64_t arg_u64(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) {
    fprintf(stderr, "place_bench: %s needs a value\n", argv[*i]);
    exit(2);
  }
  return strtoull(argv[++*i], NULL, 10);
}

int main(int argc, char **argv) {
  uint64_t nnodes = 1000, n = 2000000, reps = 5, warmup = 1, seed = 42, verify_n = 0;
  int scan = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--nodes")) nnodes = arg_u64(argc, argv, &i);
    else if (!strcmp(argv[i], "--decisions")) n = arg_u64(argc, argv, &i);
    else if (!strcmp(argv[i], "--reps")) reps = arg_u64(argc, argv, &i);
    else if (!strcmp(argv[i], "--warmup")) warmup = arg_u64(argc, argv, &i);
    else if (!strcmp(argv[i], "--seed")) seed = arg_u64(argc, argv, &i);
    else if (!strcmp(argv[i], "--verify")) verify_n = arg_u64(argc, argv, &i);
    else if (!strcmp(argv[i], "--mode") && i + 1 < argc) scan = !strcmp(argv[++i], "scan");
    else {
      fprintf(stderr, "usage: place_bench [--nodes N] [--decisions N] [--reps N] [--warmup N] "
                      "[--mode index|scan] [--verify N] [--seed N]\n");
      return 2;
    }
  }
  if (!nnodes || !n || !reps || reps > 1000 || nnodes > 1000000) {
    fprintf(stderr, "place_bench: --nodes, --decisions and --reps must be positive\n");
    return 2;
  }
  int verified = verify_n ? verify((uint32_t)nnodes, seed, verify_n) : -1;
  sim_t s;
  sim_init(&s, (uint32_t)nnodes, seed, scan);
  double cpu_s;
  for (uint64_t w = 0; w < warmup; w++) run(&s, n, &cpu_s);
  uint64_t p0 = s.placed, l0 = s.local, r0 = s.no_room, f0 = s.infeasible;
  double rates[1000], cpu_rates[1000];
  for (uint64_t r = 0; r < reps; r++) {
    rates[r] = (double)n / run(&s, n, &cpu_s);
    cpu_rates[r] = (double)n / cpu_s;
  }
  qsort(cpu_rates, reps, sizeof *cpu_rates, cmp_double);
  double cpu_median = reps % 2 ? cpu_rates[reps / 2] : (cpu_rates[reps / 2 - 1] + cpu_rates[reps / 2]) / 2;
  uint32_t running = s.running;
  int consistent = drain_and_check(&s);
  double sorted[1000];
  memcpy(sorted, rates, reps * sizeof *rates);
  qsort(sorted, reps, sizeof *sorted, cmp_double);
  double median = reps % 2 ? sorted[reps / 2] : (sorted[reps / 2 - 1] + sorted[reps / 2]) / 2;
  double total = (double)(n * reps);
  printf("{\"mode\": \"%s\", \"nodes\": %" PRIu64 ", \"decisions\": %" PRIu64 ", \"reps\": [",
         scan ? "scan" : "index", nnodes, n);
  for (uint64_t r = 0; r < reps; r++) printf("%s%.0f", r ? ", " : "", rates[r]);
  printf("], \"median\": %.0f, \"min\": %.0f, \"max\": %.0f, \"per_cpu_second\": %.0f, "
         "\"target\": 1000000, "
         "\"placed\": %.4f, \"local\": %.4f, \"no_room\": %.4f, \"infeasible\": %.4f, "
         "\"running_at_end\": %u, \"mean_task_decisions\": %" PRIu64 ", "
         "\"verified\": %s, \"consistent\": %s, \"digest\": \"%016" PRIx64 "\", "
         "\"peer\": \"none: no other system offers its placement decision as a function to time\"}\n",
         median, sorted[0], sorted[reps - 1], cpu_median, (double)(s.placed - p0) / total,
         (double)(s.local - l0) / total, (double)(s.no_room - r0) / total,
         (double)(s.infeasible - f0) / total, running, s.dur,
         verified < 0 ? "null" : verified ? "true" : "false", consistent ? "true" : "false", s.digest);
  fprintf(stderr, "place_bench: %s, %" PRIu64 " nodes: median %.0f decisions/s (min %.0f, max %.0f; "
          "target 1,000,000; %s; %.0f per CPU-second); placed %.1f%% (by locality %.1f%%), no room %.1f%%, "
          "infeasible %.2f%%; %u tasks running\n",
          scan ? "full scan" : "index", nnodes, median, sorted[0], sorted[reps - 1],
          median >= 1e6 ? "met" : "NOT met", cpu_median, 100.0 * (double)(s.placed - p0) / total,
          100.0 * (double)(s.local - l0) / total, 100.0 * (double)(s.no_room - r0) / total,
          100.0 * (double)(s.infeasible - f0) / total, running);
  sim_close(&s);
  return verified == 0 || !consistent ? 1 : 0;
}
