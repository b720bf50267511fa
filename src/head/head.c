/* Cluster membership and feasibility, plus resource arithmetic. */
#include "head/head.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const sh_custom_t *find_custom(const sh_custom_t *c, uint32_t n, const char *name) {
  for (uint32_t i = 0; i < n; i++)
    if (!strcmp(c[i].name, name)) return &c[i];
  return NULL;
}

uint64_t sh_res_custom(const sh_res_t *r, const char *name) {
  const sh_custom_t *c = find_custom(r->custom, r->ncustom, name);
  return c ? c->milli : 0;
}

int sh_res_set_custom(sh_res_t *r, const char *name, uint64_t milli) {
  sh_custom_t *c = (sh_custom_t *)find_custom(r->custom, r->ncustom, name);
  if (!c) {
    if (r->ncustom >= SH_MAX_CUSTOM) return -ENOSPC;
    c = &r->custom[r->ncustom++];
    snprintf(c->name, sizeof c->name, "%s", name);
  }
  c->milli = milli;
  return 0;
}

int sh_res_fits(const sh_res_t *a, const sh_req_t *q) {
  if (q->cpu_milli > a->cpu_milli || q->gpu_milli > a->gpu_milli || q->memory > a->memory)
    return 0;
  for (uint32_t i = 0; i < q->ncustom; i++)
    if (q->custom[i].milli > sh_res_custom(a, q->custom[i].name)) return 0;
  return 1;
}

void sh_res_sub(sh_res_t *a, const sh_req_t *q) {
  a->cpu_milli -= q->cpu_milli;
  a->gpu_milli -= q->gpu_milli;
  a->memory -= q->memory;
  for (uint32_t i = 0; i < q->ncustom; i++) {
    sh_custom_t *c = (sh_custom_t *)find_custom(a->custom, a->ncustom, q->custom[i].name);
    if (c) c->milli -= q->custom[i].milli;
  }
}

void sh_res_add(sh_res_t *a, const sh_req_t *q) {
  a->cpu_milli += q->cpu_milli;
  a->gpu_milli += q->gpu_milli;
  a->memory += q->memory;
  for (uint32_t i = 0; i < q->ncustom; i++)
    sh_res_set_custom(a, q->custom[i].name,
                      sh_res_custom(a, q->custom[i].name) + q->custom[i].milli);
}

void sh_res_from_req(sh_res_t *r, const sh_req_t *q) {
  r->cpu_milli = q->cpu_milli;
  r->gpu_milli = q->gpu_milli;
  r->memory = q->memory;
  r->ncustom = q->ncustom;
  if (q->ncustom) memcpy(r->custom, q->custom, q->ncustom * sizeof(sh_custom_t));
}

sh_req_t sh_res_as_req(const sh_res_t *r) {
  sh_req_t q = {r->cpu_milli, r->gpu_milli, r->memory, r->ncustom, r->custom};
  return q;
}

static void fmt_milli(char *buf, size_t n, uint64_t m) {
  if (m % 1000 == 0) snprintf(buf, n, "%llu", (unsigned long long)(m / 1000));
  else snprintf(buf, n, "%.3g", (double)m / 1000.0);
}

static void fmt_bytes(char *buf, size_t n, uint64_t b) {
  if (b >= (1ull << 30)) snprintf(buf, n, "%.1f GiB", (double)b / (1 << 30));
  else if (b >= (1ull << 20)) snprintf(buf, n, "%.1f MiB", (double)b / (1 << 20));
  else snprintf(buf, n, "%llu B", (unsigned long long)b);
}

static void format(const sh_req_t *q, char *buf, size_t n, int all) {
  char a[32], b[32], m[32];
  fmt_milli(a, sizeof a, q->cpu_milli);
  fmt_milli(b, sizeof b, q->gpu_milli);
  fmt_bytes(m, sizeof m, q->memory);
  size_t off = 0;
  off += (size_t)snprintf(buf + off, n - off, "{CPU: %s", a);
  if (all || q->gpu_milli) off += (size_t)snprintf(buf + off, off < n ? n - off : 0, ", GPU: %s", b);
  if (all || q->memory) off += (size_t)snprintf(buf + off, off < n ? n - off : 0, ", memory: %s", m);
  for (uint32_t i = 0; i < q->ncustom && off < n; i++) {
    fmt_milli(a, sizeof a, q->custom[i].milli);
    off += (size_t)snprintf(buf + off, n - off, ", %s: %s", q->custom[i].name, a);
  }
  if (off < n) snprintf(buf + off, n - off, "}");
}

void sh_res_format(const sh_res_t *r, char *buf, size_t n) {
  sh_req_t q = sh_res_as_req(r);
  format(&q, buf, n, 1);
}

void sh_req_format(const sh_req_t *q, char *buf, size_t n) { format(q, buf, n, 0); }

static void skip_ws(const char **p) {
  while (isspace((unsigned char)**p)) (*p)++;
}

int sh_res_parse_json(const char *json, sh_res_t *r, char *err, size_t n) {
  const char *p = json;
  skip_ws(&p);
  if (*p++ != '{') goto bad;
  skip_ws(&p);
  if (*p == '}') { p++; goto end; }
  for (;;) {
    char name[SH_NAME_MAX];
    size_t len = 0;
    skip_ws(&p);
    if (*p++ != '"') goto bad;
    while (*p && *p != '"') {
      if (len + 1 >= sizeof name || *p == '\\') {
        snprintf(err, n, "resource names are plain strings of at most %d bytes", SH_NAME_MAX - 1);
        return -EINVAL;
      }
      name[len++] = *p++;
    }
    if (*p++ != '"' || len == 0) goto bad;
    name[len] = 0;
    skip_ws(&p);
    if (*p++ != ':') goto bad;
    char *endp;
    double v = strtod(p, &endp);
    if (endp == p || !isfinite(v) || v < 0) {
      snprintf(err, n, "resource '%s' needs a nonnegative number", name);
      return -EINVAL;
    }
    p = endp;
    if (!strcmp(name, "CPU")) r->cpu_milli = (uint64_t)llround(v * 1000);
    else if (!strcmp(name, "GPU")) r->gpu_milli = (uint64_t)llround(v * 1000);
    else if (!strcmp(name, "memory")) r->memory = (uint64_t)llround(v);
    else if (sh_res_set_custom(r, name, (uint64_t)llround(v * 1000))) {
      snprintf(err, n, "at most %d custom resources", SH_MAX_CUSTOM);
      return -EINVAL;
    }
    skip_ws(&p);
    if (*p == ',') { p++; continue; }
    if (*p++ == '}') break;
    goto bad;
  }
end:
  skip_ws(&p);
  if (*p == 0) return 0;
bad:
  snprintf(err, n, "resources must be a JSON object of numbers, like '{\"GPU\": 2, \"bigmem\": 1}'; got '%s'", json);
  return -EINVAL;
}

void sh_head_init(sh_head_t *h) { memset(h, 0, sizeof(*h)); }

int sh_head_add_node(sh_head_t *h, uint32_t node_id, const sh_res_t *total) {
  if (h->nnodes >= SH_HEAD_MAX_NODES) return -ENOSPC;
  sh_head_node_t *nd = &h->nodes[h->nnodes++];
  nd->node_id = node_id;
  nd->alive = 1;
  nd->total = *total;
  return 0;
}

int sh_head_feasible(const sh_head_t *h, const sh_req_t *q, char *why, size_t n) {
  const sh_head_node_t *largest = NULL;
  for (uint32_t i = 0; i < h->nnodes; i++) {
    const sh_head_node_t *nd = &h->nodes[i];
    if (!nd->alive) continue;
    if (sh_res_fits(&nd->total, q)) return 1;
    if (!largest || nd->total.cpu_milli > largest->total.cpu_milli) largest = nd;
  }
  char req[512], has[512];
  sh_req_format(q, req, sizeof req);
  if (!largest) {
    snprintf(why, n, "no node is alive to run a request of %s", req);
    return 0;
  }
  sh_res_format(&largest->total, has, sizeof has);
  const char *missing = "";
  char mbuf[SH_NAME_MAX + 64] = "";
  for (uint32_t i = 0; i < q->ncustom; i++) {
    if (sh_res_custom(&largest->total, q->custom[i].name) == 0) {
      snprintf(mbuf, sizeof mbuf, " (no node has a resource named '%s')", q->custom[i].name);
      missing = mbuf;
      break;
    }
  }
  snprintf(why, n,
           "infeasible resource request: asked for %s but the largest node has %s%s; "
           "no node in the cluster can ever run it: lower the request or add a node "
           "that has it",
           req, has, missing);
  return 0;
}
