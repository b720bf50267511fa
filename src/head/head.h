/* The head's view of the cluster: which nodes exist, what each offers and has
 * free, how loaded each is, and where a request should run. Today the head
 * runs in the same process as the one node agent and knows that node only; the
 * agent talks to it through this interface so that the cluster can grow
 * behind it. Also holds resource arithmetic shared with the agent.
 *
 * Sections: resource arithmetic; node registry; placement. */
#ifndef SH_HEAD_H
#define SH_HEAD_H

#include <stddef.h>
#include <stdint.h>

#include "common/map.h"
#include "common/proto.h"

/* ---------------------------------------------------------------- resources */

/* sh_res_t, a set of resources, is in common/proto.h: nodes send theirs. */

/* A request as a task carries it (custom may be NULL when ncustom is 0). */
typedef struct sh_req_s {
  uint64_t cpu_milli, gpu_milli, memory;
  uint32_t ncustom;
  const sh_custom_t *custom;
} sh_req_t;

/* 1 when `avail` covers `req`. */
int sh_res_fits(const sh_res_t *avail, const sh_req_t *req);
/* avail -= req / avail += req (req must fit for sub). */
void sh_res_sub(sh_res_t *avail, const sh_req_t *req);
void sh_res_add(sh_res_t *avail, const sh_req_t *req);
/* Copies a request into a resource set (used to remember what is held). */
void sh_res_from_req(sh_res_t *r, const sh_req_t *req);
sh_req_t sh_res_as_req(const sh_res_t *r);
/* Amount of custom resource `name` in r, 0 when absent. */
uint64_t sh_res_custom(const sh_res_t *r, const char *name);
/* Sets a custom amount (adds the name if new). 0, or -ENOSPC when full. */
int sh_res_set_custom(sh_res_t *r, const char *name, uint64_t milli);
/* "{CPU: 2, GPU: 0, memory: 1.5 GiB, bigmem: 1}" into buf. */
void sh_res_format(const sh_res_t *r, char *buf, size_t n);
void sh_req_format(const sh_req_t *q, char *buf, size_t n);

/* Parses a flat JSON object of numbers, {"GPU": 2, "bigmem": 1, "memory":
 * 1e9}, into r (CPU, GPU, memory override the built-in counts; other names
 * are custom). A hand-written parser: the input is one small flag value and
 * none of the chosen dependencies reads JSON. 0, or -EINVAL with a message in
 * err. */
int sh_res_parse_json(const char *json, sh_res_t *r, char *err, size_t n);

/* ---------------------------------------------------------------- registry */

/* Placement outcomes besides 0 (our own codes, beside the frame codec's). */
#define SH_ENOROOM (-1101)      /* some node could run it, none has room now: queue, retry */
#define SH_EINFEASIBLE (-1102)  /* no live node could ever run it: fail the request */

/* Load as placement sees it, in units of 1/SH_HEAD_SCORE_ONE: the larger of
 * (a) the worst fraction in use of any declared resource the node has (CPU,
 * GPU, memory, each custom name) and (b) the measured load per CPU. 1.0 is a
 * node whose busiest resource is fully taken, or whose run queue is as long
 * as its CPU count. Measured load is capped at SH_HEAD_LOAD_CAP per CPU. */
#define SH_HEAD_SCORE_ONE (1u << 20)
#define SH_HEAD_LOAD_CAP 1000

/* One node as the head knows it. Read through sh_head_node(); change only
 * through the sh_head_* calls, which keep the placement index in step. */
typedef struct sh_head_node_s {
  uint32_t node_id;     /* unique; any value */
  uint8_t alive;        /* 0: declared dead; gets no work, cannot make a request feasible */
  uint8_t draining;     /* gets no new work; still counts for feasibility */
  uint8_t cbit[SH_MAX_CUSTOM]; /* custom mask bit of total.custom[i], 0xff: none */
  uint32_t load_milli;  /* measured load x 1000 (run-queue length, load average) */
  uint32_t score;       /* current load score (see SH_HEAD_SCORE_ONE) */
  double inv[3];        /* 1/total for CPU, GPU, memory (0 when the total is 0) */
  sh_res_t total;       /* what it offers */
  sh_res_t free;        /* total minus what runs or is placed there; custom names
                         * in the same order as total's */
} sh_head_node_t;

struct sh__head_agg_s; /* one entry of the placement index; head.c */


/* The registry. nodes[0..nnodes) are dense in no particular order (removing
 * a node moves the last one into its slot). The placement index is a binary
 * tree over the slots (leaves tree[cap + slot]); each entry holds, over the
 * eligible nodes (alive, not draining) below it, the smallest placement key
 * (score << 32 | node_id) and the largest free CPU, GPU and memory, and the
 * OR of the custom names that have some amount free. A decision walks it
 * best key first and skips subtrees that cannot cover the request, so it
 * rarely visits more than one path; recording a decision updates one path. */
typedef struct sh_head_s {
  uint32_t nnodes;              /* registered nodes */
  uint32_t cap;                 /* allocated slots: 0 or a power of two */
  sh_head_node_t *nodes;        /* cap slots */
  struct sh__head_agg_s *tree;  /* the index: 2 * cap entries, [1] the root */
  uint64_t (*tot)[3];           /* CPU, GPU, memory totals by slot: a dense copy
                                 * that feasibility checks scan */
  sh_map_t by_id;               /* node_id + 1 -> slot + 1 */
  uint32_t nnames;              /* custom names given a mask bit */
  uint8_t names_full;           /* a name found no bit: masks cannot rule it out */
  char names[64][SH_NAME_MAX];  /* names[b]: the custom name of mask bit b */
  /* The last request without custom names found feasible (CPU, GPU,
   * memory), valid while feas_ok: every submit asks again, mostly the same
   * request. Adding, removing or reviving a node clears it. */
  uint64_t feas[3];
  uint8_t feas_ok;
} sh_head_t;

/* An empty registry; sh_head_close frees what it allocated. */
void sh_head_init(sh_head_t *h);
void sh_head_close(sh_head_t *h);
/* Registers a node: alive, not draining, everything free, load 0. 0;
 * -EEXIST when node_id is registered already; -ENOMEM when the id map cannot
 * grow (registry unchanged on failure). The registry has no fixed limit. */
int sh_head_add_node(sh_head_t *h, uint32_t node_id, const sh_res_t *total);
/* Forgets a node. 0; -ENOENT; -ENOMEM when the id map cannot take the
 * moved node (registry unchanged). Pointers from sh_head_node() are stale
 * after an add or a remove. */
int sh_head_remove_node(sh_head_t *h, uint32_t node_id);
/* The node's record, or NULL when it is not registered. */
const sh_head_node_t *sh_head_node(const sh_head_t *h, uint32_t node_id);

/* Heartbeat updates; each returns 0, or -ENOENT for an unknown node.
 * set_free: free resources as the node reports them (amounts above the total
 * are taken as the total; names the node does not offer are ignored).
 * set_load: measured load x 1000. set_alive: 0 when declared dead (its free
 * resources stay as they were; report them again with set_free when it comes
 * back). set_draining: 1 stops new work going there. */
int sh_head_set_free(sh_head_t *h, uint32_t node_id, const sh_res_t *free);
int sh_head_set_load(sh_head_t *h, uint32_t node_id, uint32_t load_milli);
int sh_head_set_alive(sh_head_t *h, uint32_t node_id, int alive);
int sh_head_set_draining(sh_head_t *h, uint32_t node_id, int draining);

/* 1 when some live node (draining or not) could ever run `req`, by its total
 * resources; otherwise 0 and, when why is not NULL, a message naming the
 * request and the largest node. */
int sh_head_feasible(sh_head_t *h, const sh_req_t *req, char *why, size_t n);

/* ---------------------------------------------------------------- placement */

/* Locality: `bytes` of the task's arguments are already on node `node_id`.
 * A caller passes one per node that holds any, few in all (say up to 8). */
typedef struct sh_head_hint_s {
  uint32_t node_id;
  uint64_t bytes;
} sh_head_hint_t;

/* Chooses where `req` runs and takes it from that node's free resources (the
 * caller gives them back with sh_head_release when the task ends). Among the
 * eligible nodes (alive, not draining) whose free resources cover req: the
 * one holding the most argument bytes according to hints (hints may be NULL
 * when nhints is 0; unknown node ids are ignored); without such a node, or
 * among equal bytes, the lowest load score; then the lowest node_id.
 * Returns 0 with *node_id set; SH_ENOROOM when a live node could run req
 * once resources are released (why: a short message); SH_EINFEASIBLE when no
 * live node ever could (why: the request and the largest node). why may be
 * NULL (no message). Nothing changes unless it returns 0. */
int sh_head_place(sh_head_t *h, const sh_req_t *req, const sh_head_hint_t *hints,
                  uint32_t nhints, uint32_t *node_id, char *why, size_t n);
/* Takes req from node_id's free resources without choosing (work placed
 * there by someone else: the local agent, an actor pinned to its node). 0;
 * SH_ENOROOM when it does not fit now or the node is not eligible; -ENOENT. */
int sh_head_take(sh_head_t *h, uint32_t node_id, const sh_req_t *req);
/* Gives back what a placement or take of req on node_id took (amounts above
 * the node's total are cut to the total). 0, or -ENOENT when the node is no
 * longer registered (nothing to give back). */
int sh_head_release(sh_head_t *h, uint32_t node_id, const sh_req_t *req);

#endif
