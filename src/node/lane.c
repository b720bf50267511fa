/* Lanes: a synchronous caller's direct channel to one pool worker.
 *
 * A driver on the agent's unix socket that submits a task alone (it then
 * waits for it: f.remote(x).result()) marks the SUBMIT WANT_LANE. When that
 * task's worker goes idle and no other work waits, the agent leases the
 * worker to the driver: it makes a socketpair and passes one end to each
 * (LANE GRANT, SCM_RIGHTS), and holds the worker's CPU for the lease. The
 * driver then sends its lone tasks down the lane (FUNC, EXEC) and the worker
 * answers there (RESULT): a round trip wakes two processes instead of three.
 *
 * The agent stays in charge of the worker:
 * - it asks for the worker back (REVOKE) as soon as other work waits for one,
 *   and the worker ends an idle lease by itself after a few milliseconds;
 *   either way the worker says END on the lane and to the agent, which then
 *   frees the CPU;
 * - a worker that dies on a lane breaks it without END: the driver says LOST
 *   and sends the task's SUBMIT, which the agent charges one attempt for
 *   the death it saw (or fails with WorkerCrashedError when the retries are
 *   spent), exactly as for a task it had sent itself;
 * - a departed driver's lane task is interrupted (SIGINT) and the lease
 *   revoked; a force cancel kills the worker.
 * Lane tasks are plain tasks of one CPU with no other resources, no timeout,
 * no dependencies and inline arguments; their results travel inline. */
#include "node/agent.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"

static const sh_req_t lane_req = {1000, 0, 0, 0, NULL};

void sh_lane_offer(sh_agent_t *a, sh_worker_t *w, uint32_t client_id) {
  sh_conn_t *c = sh_agent_client(a, (uint64_t)client_id << 40);
  if (!c || c->closing || c->role != SH_ROLE_DRIVER || !(c->flags & SH_HELLO_LANES) || c->lane ||
      c->pass_fd >= 0 || a->stopping || a->local_draining)
    return;
  if (!w->conn || w->conn->pass_fd >= 0 || w->exited || w->kill_reason || w->dedicated ||
      w->leased || w->ninflight || !w->hello)
    return;
  /* Only a worker nobody else is waiting for. */
  if (!sh_queue_empty(&a->shapes) || !sh_res_fits(&a->avail, &lane_req)) return;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
    sh_warn("no lane for %s: socketpair: %s", c->desc, strerror(errno));
    return;
  }
  uint64_t lease = ++a->lease_seq;
  uint8_t to_worker[4], to_driver[4];
  sh_put_u32(to_worker, client_id);
  sh_put_u32(to_driver, (uint32_t)w->pid);
  if (sh_frame_append(&w->conn->out, SH_MSG_LANE, SH_LANE_GRANT, lease, to_worker, 4) ||
      sh_frame_append(&c->out, SH_MSG_LANE, SH_LANE_GRANT, lease, to_driver, 4)) {
    /* The worker's grant may be queued without its socket: it ends the
     * lease it cannot use (END), which the agent ignores as stale. */
    close(sv[0]);
    close(sv[1]);
    return;
  }
  w->conn->pass_fd = sv[0];
  c->pass_fd = sv[1];
  sh_conn_mark_dirty(w->conn);
  sh_conn_mark_dirty(c);
  sh_res_sub(&a->avail, &lane_req);
  sh_res_from_req(&w->held, &lane_req);
  w->gpu_mask = 0;
  w->holds = 1;
  w->leased = 1;
  w->lessee = c;
  w->lease_id = lease;
  w->revoking = 0;
  w->last_client = client_id; /* its output goes to the driver */
  w->last_remote = 0;
  c->lane = w;
  c->lane_id = lease;
  a->n_leased++;
  a->n_leases++;
  sh_debug("lane %llu: worker %d (pid %d) leased to %s", (unsigned long long)lease, w->index,
           (int)w->pid, c->desc);
}

/* The lease of w is over (it said END, or died): the CPU comes back. */
static void lease_over(sh_agent_t *a, sh_worker_t *w) {
  sh_conn_t *c = w->lessee;
  if (c && c->lane == w) c->lane = NULL;
  w->leased = 0;
  w->lessee = NULL;
  w->revoking = 0;
  if (a->n_leased) a->n_leased--;
  sh_sched_worker_release(a, w);
  a->need_schedule = 1;
}

/* Asks w for its lease back; `interrupt`: its lane task (if one runs) is
 * cancelled too (SIGINT; an idle worker ignores it). */
static void lane_revoke(sh_agent_t *a, sh_worker_t *w, int interrupt) {
  (void)a;
  if (interrupt && !w->exited) kill(w->pid, SIGINT);
  if (w->revoking || !w->conn) return;
  w->revoking = 1;
  if (!sh_frame_append(&w->conn->out, SH_MSG_LANE, SH_LANE_REVOKE, w->lease_id, NULL, 0))
    sh_conn_mark_dirty(w->conn);
}

void sh_lane_reclaim(sh_agent_t *a) {
  sh_queue_t *q;
  sh_queue_foreach(q, &a->workers) {
    sh_worker_t *w = sh_queue_data(q, sh_worker_t, link);
    if (w->leased && !w->revoking) lane_revoke(a, w, 0);
  }
}

/* The lost task parked on c runs again or fails, now that the death of its
 * worker is known (how: NULL when the worker lives: the lane broke some
 * other way, which costs no attempt). */
static void lost_resolve(sh_agent_t *a, sh_conn_t *c, const char *how, int32_t code) {
  sh_task_t *t = c->lost_parked;
  if (!t) return;
  c->lost_parked = NULL;
  if (how && sh_sched_charge_crash(a, t, how, code)) return;
  sh_sched_ready(a, t);
}

void sh_lane_ended(sh_agent_t *a, sh_worker_t *w, uint64_t ran) {
  sh_conn_t *c = w->lessee;
  w->done += ran;
  a->n_done += ran;
  a->n_submitted += ran;
  a->n_lane_done += ran;
  sh_debug("lane %llu: worker %d ended it after %llu tasks", (unsigned long long)w->lease_id,
           w->index, (unsigned long long)ran);
  if (c && c->lost_parked && c->lost_lease == w->lease_id) lost_resolve(a, c, NULL, 0);
  lease_over(a, w);
}

void sh_lane_worker_died(sh_agent_t *a, sh_worker_t *w, const char *how, int32_t code) {
  sh_conn_t *c = w->lessee;
  if (c) {
    c->dead_lease = w->lease_id;
    c->dead_code = code;
    snprintf(c->dead_why, sizeof c->dead_why, "%s", how);
    if (c->lost_parked && c->lost_lease == w->lease_id) lost_resolve(a, c, how, code);
  }
  lease_over(a, w);
}

int sh_lane_lost_submit(sh_agent_t *a, sh_conn_t *c, sh_task_t *t) {
  uint64_t lease = c->lost_lease;
  c->lost_task = 0;
  if (c->dead_lease == lease) return sh_sched_charge_crash(a, t, c->dead_why, c->dead_code) != 0;
  if (c->lane && c->lane_id == lease) {
    /* The driver saw the lane break before the agent saw the worker die. */
    t->state = SH_TASK_WAITING;
    c->lost_parked = t;
    return 1;
  }
  return 0; /* a lease already over without a death: run it again, uncharged */
}

void sh_lane_driver_frame(sh_conn_t *c, const sh_frame_t *f) {
  sh_agent_t *a = c->agent;
  if (f->hdr.flags & SH_LANE_LOST) {
    if (f->hdr.len != 8) return;
    c->lost_task = sh_get_u64(f->body);
    c->lost_lease = f->hdr.id;
    return;
  }
  if (f->hdr.flags & SH_LANE_DONE) {
    sh_result_t r;
    if ((uint32_t)(f->hdr.id >> 40) != c->client_id || sh_result_decode(f->body, f->hdr.len, &r))
      return;
    sh_sched_lane_done(a, c, f->hdr.id, &r);
  }
}

void sh_lane_client_gone(sh_agent_t *a, sh_conn_t *c) {
  if (c->lost_parked) {
    sh_task_t *t = c->lost_parked;
    c->lost_parked = NULL;
    sh_task_fail(a, t, SH_ST_CANCELLED, 0, "its driver disconnected");
  }
  sh_worker_t *w = c->lane;
  if (!w) return;
  c->lane = NULL;
  w->lessee = NULL;
  lane_revoke(a, w, 1);
}

int sh_lane_cancel(sh_conn_t *c, uint64_t id, unsigned flags) {
  sh_worker_t *w = c->lane;
  if (!w || (uint32_t)(id >> 40) != c->client_id || (flags & SH_CANCEL_QUEUED_ONLY))
    return SH_CANCEL_NONE;
  /* The driver says the task is on its lane now (flag LANE). */
  if (flags & SH_CANCEL_FORCE) sh_pool_kill(w, SH_REASON_CANCEL);
  else if (!w->exited) kill(w->pid, SIGINT);
  return SH_CANCEL_RUNNING;
}
