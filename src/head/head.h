/* The head's view of the cluster: which nodes exist, what each offers, and
 * whether a resource request could ever be satisfied anywhere. Today the head
 * runs in the same process as the one node agent and knows that node only; the
 * agent talks to it through this interface so that the cluster can grow
 * behind it. Also holds resource arithmetic shared with the agent. */
#ifndef SH_HEAD_H
#define SH_HEAD_H

#include <stddef.h>
#include <stdint.h>

#include "common/proto.h"

/* A set of resources: CPU and GPU in thousandths, memory in bytes, custom
 * names in thousandths. */
typedef struct sh_res_s {
  uint64_t cpu_milli, gpu_milli, memory;
  uint32_t ncustom;
  sh_custom_t custom[SH_MAX_CUSTOM];
} sh_res_t;

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

#define SH_HEAD_MAX_NODES 64

typedef struct sh_head_node_s {
  uint32_t node_id;
  int alive;
  sh_res_t total;
} sh_head_node_t;

typedef struct sh_head_s {
  uint32_t nnodes;
  sh_head_node_t nodes[SH_HEAD_MAX_NODES];
} sh_head_t;

void sh_head_init(sh_head_t *h);
/* Registers a node and what it offers. 0, or -ENOSPC. */
int sh_head_add_node(sh_head_t *h, uint32_t node_id, const sh_res_t *total);
/* 1 when some live node could ever run `req`; otherwise 0 and a message in
 * why naming the request and the largest node. */
int sh_head_feasible(const sh_head_t *h, const sh_req_t *req, char *why, size_t n);

#endif
