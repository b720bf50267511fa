/* A head that restarts: its journal (SOCKET_DIR/head.journal, see
 * head/journal.c) and the two windows of its recovery. A head started on a
 * socket directory that holds a journal takes over the previous head's
 * object store, hands out no client id the previous one gave, and
 *   - until every node of the journal is back, or --heartbeat-timeout passed
 *     (the gate), holds the tasks drivers send again instead of placing them:
 *     a node that comes back may report them as its own (sched.c binds them);
 *   - until --head-timeout passed (the grace period), keeps results that
 *     nodes sent for tasks whose drivers have not come back, the tasks nodes
 *     reported, and the store's segments, for drivers to claim; then drops
 *     what nobody claimed. What a driver released or killed while the head
 *     was down (it sends that after its replay) goes at once, also when the
 *     node that has it comes back later.
 * Sections: the journal; client ids and nodes; the windows; the store. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/agent.h"

/* Client ids journaled ahead of use, so a new driver costs a write once in
 * this many. */
#define CLIENT_RESERVE 64

/* ---- the journal ---- */

static int journaled(const sh_agent_t *a) { return a->rec.path[0] != 0; }

/* Opens the charges file: the previous heads' charges are read when this
 * one restarted, and written back alone (a torn line is dropped). */
static void charges_open(sh_agent_t *a) {
  sh_recover_t *r = &a->rec;
  snprintf(r->charges_path, sizeof r->charges_path, "%s/head.charges", a->opts.socket_dir);
  int rc = r->restarted ? sh_charges_load(r->charges_path, &r->charged) : 0;
  if (rc && rc != -ENOENT)
    sh_warn("cannot read %s: %s (attempts charged before this restart are not known)",
            r->charges_path, strerror(-rc));
  if ((rc = sh_charges_rewrite(r->charges_path, &r->charged, &r->charges_fd)))
    sh_warn("cannot write %s: %s (a restarted head will not know the attempts this one "
            "charged)", r->charges_path, strerror(-rc));
  r->charges_lines = r->charged.count;
}

void sh_recover_open(sh_agent_t *a) {
  sh_recover_t *r = &a->rec;
  sh_journal_init(&r->j);
  sh_queue_init(&r->held);
  sh_map_init(&r->adopted);
  sh_map_init(&r->orphans);
  sh_map_init(&r->charged);
  r->charges_fd = -1;
  sh_map_init(&r->released);
  sh_map_init(&r->killed);
  /* Only a head others join survives its own restart; an embedded cluster
   * dies with its driver. */
  if (a->opts.head_address || a->opts.embedded || !a->opts.port) return;
  snprintf(r->path, sizeof r->path, "%s/head.journal", a->opts.socket_dir);
  char err[600];
  sh_journal_t old;
  sh_journal_init(&old);
  int rc = sh_journal_load(r->path, &old, err, sizeof err);
  if (rc && rc != -ENOENT) sh_warn("%s: starting as a new head", err);
  r->restarted = rc == 0;
  charges_open(a);
  if (rc) return;
  r->j.epoch = old.epoch + 1;
  a->next_client_id = old.next_client > 1 && old.next_client < SH_NODE_CLIENT_BASE
                          ? old.next_client : 1;
  snprintf(r->j.store_dir, sizeof r->j.store_dir, "%s", old.store_dir);
  snprintf(r->j.spill_dir, sizeof r->j.spill_dir, "%s", old.spill_dir);
  if (old.store_dir[0]) a->opts.adopt_store_dir = r->j.store_dir;
  if (old.spill_dir[0]) a->opts.adopt_spill_dir = r->j.spill_dir;
  if (old.nnodes) {
    r->expect = sh_malloc(old.nnodes * sizeof *r->expect);
    memcpy(r->expect, old.nodes, old.nnodes * sizeof *r->expect);
    r->nexpect = old.nnodes;
  }
  sh_journal_close(&old);
  double hb = a->opts.heartbeat_timeout_s > 0 ? a->opts.heartbeat_timeout_s
                                              : SH_HEARTBEAT_TIMEOUT_DEFAULT;
  double grace = a->opts.head_timeout_s > 0 ? a->opts.head_timeout_s : SH_HEAD_TIMEOUT_DEFAULT;
  uint64_t now = uv_now(a->loop);
  r->gate = 1;
  r->grace = 1;
  r->gate_until_ms = now + (uint64_t)(hb * 1000.0);
  r->grace_until_ms = now + (uint64_t)(grace * 1000.0);
  sh_info("this head restarted (restart %u): taking over the object store %s; resubmitted "
          "work waits for %u node%s (at most %.3g s); unclaimed results are kept %.3g s",
          r->j.epoch, old.store_dir[0] ? r->j.store_dir : "(none)", r->nexpect,
          r->nexpect == 1 ? "" : "s", hb, grace);
}

/* Marks dir as this head's (see SH_STORE_JOURNAL_MARK). */
static void mark_dir(const char *dir, const char *journal) {
  char mark[4200];
  if (!dir[0]) return;
  snprintf(mark, sizeof mark, "%s/" SH_STORE_JOURNAL_MARK, dir);
  FILE *f = fopen(mark, "we");
  if (!f) return;
  fprintf(f, "%s\n", journal);
  fclose(f);
}

void sh_recover_save(sh_agent_t *a) {
  sh_recover_t *r = &a->rec;
  if (!journaled(a)) return;
  if (strcmp(r->j.store_dir, a->store.dir) || !r->marked) {
    mark_dir(a->store.dir, r->path);
    mark_dir(a->store.spill_dir, r->path);
    r->marked = 1;
  }
  snprintf(r->j.store_dir, sizeof r->j.store_dir, "%s", a->store.dir);
  snprintf(r->j.spill_dir, sizeof r->j.spill_dir, "%s", a->store.spill_dir);
  if (r->j.next_client < a->next_client_id) r->j.next_client = a->next_client_id + CLIENT_RESERVE;
  int rc = sh_journal_save(r->path, &r->j, 1);
  if (rc) sh_warn("cannot write the head's journal %s: %s (a restarted head will not find "
                  "this one's work)", r->path, strerror(-rc));
}

void sh_recover_close(sh_agent_t *a) {
  sh_recover_t *r = &a->rec;
  /* A clean stop removes the store, so nothing is left to take over. */
  if (journaled(a) && !a->opts.head_address) {
    unlink(r->path);
    unlink(r->charges_path);
  }
  if (r->charges_fd >= 0) close(r->charges_fd);
  r->charges_fd = -1;
  sh_map_close(&r->charged);
  sh_journal_close(&r->j);
  sh_free(r->expect);
  r->expect = NULL;
  sh_map_close(&r->adopted);
  sh_map_close(&r->orphans);
  sh_map_close(&r->released);
  sh_map_close(&r->killed);
}

/* ---- charged attempts ---- */

uint32_t sh_recover_charged(sh_agent_t *a, uint64_t id) {
  return (uint32_t)(uintptr_t)sh_map_get(&a->rec.charged, id);
}

void sh_recover_charge(sh_agent_t *a, uint64_t id, uint32_t count) {
  sh_recover_t *r = &a->rec;
  if (!r->charges_path[0] || r->charges_fd < 0 || !count) return; /* not journaled */
  int rc = sh_map_put(&r->charged, id, (void *)(uintptr_t)count);
  if (!rc) rc = sh_charges_append(r->charges_fd, id, count);
  if (rc) sh_warn("cannot journal an attempt of %#llx in %s: %s (a restarted head may run it "
                  "once more than max_retries)", (unsigned long long)id, r->charges_path,
                  strerror(-rc));
  r->charges_dirty = 1;
  r->charges_lines++;
}

/* Drops the charges of ids that nothing can send again: not a task or an
 * actor here, and no driver left that the grace period waits for. */
static void charges_prune(sh_agent_t *a) {
  sh_recover_t *r = &a->rec;
  uint64_t id;
  void *v;
  if (r->grace) return;
  for (size_t i = 0; sh_map_next(&r->charged, &i, &id, &v);)
    if (!sh_map_get(&a->tasks, id) && !sh_map_get(&a->actors, id)) sh_map_del(&r->charged, id);
}

void sh_recover_sync(sh_agent_t *a) {
  sh_recover_t *r = &a->rec;
  if (!r->charges_dirty) return;
  r->charges_dirty = 0;
  if (fdatasync(r->charges_fd) < 0)
    sh_warn("cannot sync %s: %s", r->charges_path, strerror(errno));
  if (r->charges_lines < 2 * r->charged.count + 1024) return;
  charges_prune(a);
  int rc = sh_charges_rewrite(r->charges_path, &r->charged, &r->charges_fd);
  if (rc) sh_warn("cannot rewrite %s: %s", r->charges_path, strerror(-rc));
  else r->charges_lines = r->charged.count;
}

/* ---- client ids and nodes ---- */

uint32_t sh_recover_client_id(sh_agent_t *a, uint32_t want) {
  uint32_t id;
  uint32_t top = a->opts.head_address ? UINT32_MAX >> 8 : SH_NODE_CLIENT_BASE - 1;
  if (want && want <= top && !sh_map_get(&a->clients, want)) {
    id = want;
    if (a->next_client_id <= want) a->next_client_id = want + 1;
  } else {
    id = a->next_client_id++;
  }
  if (journaled(a) && a->next_client_id >= a->rec.j.next_client) sh_recover_save(a);
  return id;
}

static void expect_drop(sh_recover_t *r, uint32_t node_id) {
  for (uint32_t i = 0; i < r->nexpect; i++)
    if (r->expect[i] == node_id) {
      r->expect[i] = r->expect[--r->nexpect];
      return;
    }
}

static void open_gate(sh_agent_t *a, const char *why) {
  sh_recover_t *r = &a->rec;
  if (!r->gate) return;
  r->gate = 0;
  sh_info("head restart: %s; resubmitted work that no node holds runs again (it costs one "
          "attempt: it may have run before the restart)", why);
  sh_sched_open_gate(a);
}

void sh_recover_node(sh_agent_t *a, uint32_t node_id, int alive) {
  sh_recover_t *r = &a->rec;
  if (alive) sh_journal_add_node(&r->j, node_id);
  else sh_journal_remove_node(&r->j, node_id);
  sh_recover_save(a);
}

void sh_recover_holds_done(sh_agent_t *a, uint32_t node_id) {
  sh_recover_t *r = &a->rec;
  if (!r->gate) return;
  expect_drop(r, node_id);
  if (!r->nexpect) open_gate(a, "every node it had is back");
}

/* ---- the windows ---- */

void sh_recover_tick(sh_agent_t *a, uint64_t now) {
  sh_recover_t *r = &a->rec;
  char why[128];
  if (r->gate && now >= r->gate_until_ms) {
    snprintf(why, sizeof why, "%u node%s did not come back within --heartbeat-timeout",
             r->nexpect, r->nexpect == 1 ? "" : "s");
    open_gate(a, why);
  }
  if (r->grace && now >= r->grace_until_ms) {
    r->grace = 0;
    sh_sched_grace_over(a);
    sh_recover_sweep_store(a);
    sh_info("head restart: the grace period (--head-timeout) is over; %llu task%s adopted "
            "from nodes, %llu result%s claimed, %llu task%s charged an attempt",
            (unsigned long long)r->n_adopted, r->n_adopted == 1 ? "" : "s",
            (unsigned long long)r->n_claimed, r->n_claimed == 1 ? "" : "s",
            (unsigned long long)r->n_charged, r->n_charged == 1 ? "" : "s");
  }
}

/* ---- the store ---- */

/* 1 when `name` is a segment name (16 hex digits) and *id its id. */
static int segment_id(const char *name, uint64_t *id) {
  if (strlen(name) != 16) return 0;
  char *end;
  *id = strtoull(name, &end, 16);
  return *end == 0;
}

void sh_recover_sweep_store(sh_agent_t *a) {
  /* Segments of the previous head that no driver registered again are
   * nobody's; temporary files of writers that are gone too. */
  const char *dirs[2] = {a->store.dir, a->store.spill_dir};
  for (int k = 0; k < 2; k++) {
    if (!dirs[k][0]) continue;
    DIR *d = opendir(dirs[k]);
    if (!d) continue;
    struct dirent *e;
    unsigned removed = 0;
    while ((e = readdir(d))) {
      uint64_t id;
      if (e->d_name[0] == '.') continue;
      if (segment_id(e->d_name, &id) && sh_map_get(&a->objects, id)) continue;
      if (!segment_id(e->d_name, &id)) {
        /* <id>.<pid>.tmp / .xfer: only those of dead writers. */
        const char *dot = strchr(e->d_name, '.');
        long pid = dot ? strtol(dot + 1, NULL, 10) : 0;
        if (pid > 0 && (pid == getpid() || kill((pid_t)pid, 0) == 0)) continue;
      }
      if (unlinkat(dirfd(d), e->d_name, 0) == 0) removed++;
    }
    closedir(d);
    if (removed)
      sh_info("head restart: removed %u unclaimed file%s from %s", removed,
              removed == 1 ? "" : "s", dirs[k]);
  }
}
