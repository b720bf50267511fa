/* Message body encoders and validating decoders. */
#include "common/proto.h"

#include <errno.h>
#include <string.h>

static const char *const status_names[SH_ST_MAX_] = {
#define SH_X(name, val, doc) [val] = #name,
    SH_STATUS_TYPES(SH_X)
#undef SH_X
};

const char *sh_status_name(unsigned status) {
  if (status >= SH_ST_MAX_) return "?";
  return status_names[status];
}

int sh_submit_append(sh_buf_t *b, uint64_t task_id, const sh_submit_t *s) {
  size_t custom_len = 0;
  if (s->ncustom > SH_MAX_CUSTOM) return -EINVAL;
  for (uint32_t i = 0; i < s->ncustom; i++) {
    /* Write only what sh_submit_decode accepts. */
    size_t n = strnlen(s->custom[i].name, SH_NAME_MAX);
    if (n == 0 || n >= SH_NAME_MAX) return -EINVAL;
    custom_len += 4 + n + 8;
  }
  size_t len = SH_SUBMIT_FIXED + (size_t)s->ndeps * 8 + custom_len +
               s->method_len + s->args_len;
  if (len > UINT32_MAX) return -E2BIG;
  int rc = sh_buf_reserve(b, SH_FRAME_HDR + len);
  if (rc) return rc;
  uint8_t *p = b->data + b->len;
  sh_frame_hdr_encode(p, SH_MSG_SUBMIT, 0, task_id, (uint32_t)len);
  p += SH_FRAME_HDR;
  sh_put_u64(p, s->fn_id);
  sh_put_u64(p + 8, s->actor_id);
  sh_put_u32(p + 16, s->kind);
  sh_put_u32(p + 20, s->flags);
  sh_put_u32(p + 24, s->max_retries);
  sh_put_u32(p + 28, s->timeout_ms);
  sh_put_u64(p + 32, s->cpu_milli);
  sh_put_u64(p + 40, s->gpu_milli);
  sh_put_u64(p + 48, s->memory);
  sh_put_u32(p + 56, s->ndeps);
  sh_put_u32(p + 60, s->ncustom);
  sh_put_u32(p + 64, s->method_len);
  sh_put_u32(p + 68, s->args_len);
  p += SH_SUBMIT_FIXED;
  if (s->ndeps) memcpy(p, s->deps, (size_t)s->ndeps * 8);
  p += (size_t)s->ndeps * 8;
  for (uint32_t i = 0; i < s->ncustom; i++) {
    uint32_t n = (uint32_t)strlen(s->custom[i].name);
    sh_put_u32(p, n);
    memcpy(p + 4, s->custom[i].name, n);
    sh_put_u64(p + 4 + n, s->custom[i].milli);
    p += 4 + n + 8;
  }
  if (s->method_len) memcpy(p, s->method, s->method_len);
  p += s->method_len;
  if (s->args_len) memcpy(p, s->args, s->args_len);
  b->len += SH_FRAME_HDR + len;
  return 0;
}

int sh_submit_decode(const uint8_t *body, size_t len, sh_submit_t *s) {
  sh_rd_t r;
  sh_rd_init(&r, body, len);
  s->fn_id = sh_rd_u64(&r);
  s->actor_id = sh_rd_u64(&r);
  s->kind = sh_rd_u32(&r);
  s->flags = sh_rd_u32(&r);
  s->max_retries = sh_rd_u32(&r);
  s->timeout_ms = sh_rd_u32(&r);
  s->cpu_milli = sh_rd_u64(&r);
  s->gpu_milli = sh_rd_u64(&r);
  s->memory = sh_rd_u64(&r);
  s->ndeps = sh_rd_u32(&r);
  s->ncustom = sh_rd_u32(&r);
  s->method_len = sh_rd_u32(&r);
  s->args_len = sh_rd_u32(&r);
  if (r.err || s->kind > SH_KIND_ACTOR_CALL || s->ncustom > SH_MAX_CUSTOM)
    return SH_EBODY;
  if (s->ndeps > sh_rd_left(&r) / 8) return SH_EBODY;
  s->deps = sh_rd_bytes(&r, (size_t)s->ndeps * 8);
  for (uint32_t i = 0; i < s->ncustom; i++) {
    uint32_t n = sh_rd_u32(&r);
    if (r.err || n == 0 || n >= SH_NAME_MAX) return SH_EBODY;
    const uint8_t *name = sh_rd_bytes(&r, n);
    if (!name || memchr(name, 0, n)) return SH_EBODY;
    memcpy(s->custom[i].name, name, n);
    s->custom[i].name[n] = 0;
    s->custom[i].milli = sh_rd_u64(&r);
  }
  s->method = (const char *)sh_rd_bytes(&r, s->method_len);
  s->args = sh_rd_bytes(&r, s->args_len);
  if (r.err || sh_rd_left(&r) != 0) return SH_EBODY;
  return 0;
}

int sh_result_append(sh_buf_t *b, uint64_t task_id, uint32_t status,
                     int32_t code, const void *payload, size_t len) {
  if (len > UINT32_MAX - 8) return -E2BIG;
  int rc = sh_buf_reserve(b, SH_FRAME_HDR + 8 + len);
  if (rc) return rc;
  uint8_t *p = b->data + b->len;
  sh_frame_hdr_encode(p, SH_MSG_RESULT, 0, task_id, (uint32_t)(8 + len));
  sh_put_u32(p + SH_FRAME_HDR, status);
  sh_put_u32(p + SH_FRAME_HDR + 4, (uint32_t)code);
  if (len) memcpy(p + SH_FRAME_HDR + 8, payload, len);
  b->len += SH_FRAME_HDR + 8 + len;
  return 0;
}

int sh_result_decode(const uint8_t *body, size_t len, sh_result_t *r) {
  if (len < 8) return SH_EBODY;
  r->status = sh_get_u32(body);
  r->code = (int32_t)sh_get_u32(body + 4);
  r->payload = body + 8;
  r->payload_len = (uint32_t)(len - 8);
  if (r->status >= SH_ST_MAX_) return SH_EBODY;
  return 0;
}

#define SH_EXEC_FIXED 36

long sh_exec_begin(sh_buf_t *b, uint64_t task_id, uint64_t fn_id,
                   uint64_t actor_id, uint32_t kind, uint32_t ndeps,
                   uint32_t method_len, uint32_t args_len) {
  long at = sh_frame_begin(b, SH_MSG_EXEC, 0, task_id);
  if (at < 0) return at;
  int rc = sh_buf_reserve(b, SH_EXEC_FIXED);
  if (rc) {
    sh_frame_abort(b, at);
    return rc;
  }
  uint8_t *p = b->data + b->len;
  sh_put_u64(p, fn_id);
  sh_put_u64(p + 8, actor_id);
  sh_put_u32(p + 16, kind);
  sh_put_u32(p + 20, ndeps);
  sh_put_u32(p + 24, method_len);
  sh_put_u32(p + 28, args_len);
  sh_put_u32(p + 32, 0); /* deps_len, patched by sh_exec_finish */
  b->len += SH_EXEC_FIXED;
  return at;
}

int sh_exec_add_dep(sh_buf_t *b, const void *data, uint32_t len) {
  int rc = sh_buf_u32(b, len);
  if (rc) return rc;
  return sh_buf_append(b, data, len);
}

int sh_exec_add_stored_dep(sh_buf_t *b, uint64_t id, uint64_t size) {
  int rc = sh_buf_u32(b, SH_DEP_STORED | 16u);
  if (!rc) rc = sh_buf_u64(b, id);
  return rc ? rc : sh_buf_u64(b, size);
}

int sh_exec_finish(sh_buf_t *b, long at, const char *method, uint32_t method_len,
                   const void *args, uint32_t args_len) {
  size_t fixed_end = b->off + (size_t)at + SH_FRAME_HDR + SH_EXEC_FIXED;
  sh_put_u32(b->data + fixed_end - 4, (uint32_t)(b->len - fixed_end));
  int rc = sh_buf_append(b, method, method_len);
  if (!rc) rc = sh_buf_append(b, args, args_len);
  if (rc) return rc;
  sh_frame_finish(b, at);
  return 0;
}

int sh_exec_add_devices(sh_buf_t *b, long at, uint64_t mask) {
  int rc = sh_buf_u64(b, mask);
  if (rc) return rc;
  uint8_t *h = b->data + b->off + (size_t)at;
  sh_put_u16(h + 6, (uint16_t)(sh_get_u16(h + 6) | SH_EXEC_DEVICES));
  sh_frame_finish(b, at);
  return 0;
}

int sh_exec_decode_flags(const uint8_t *body, size_t len, unsigned flags, sh_exec_t *e,
                         uint64_t *devices) {
  *devices = 0;
  if (flags & ~SH_EXEC_DEVICES) return SH_EBODY;
  if (flags & SH_EXEC_DEVICES) {
    if (len < 8) return SH_EBODY;
    len -= 8;
    *devices = sh_get_u64(body + len);
  }
  return sh_exec_decode(body, len, e);
}

int sh_exec_decode(const uint8_t *body, size_t len, sh_exec_t *e) {
  sh_rd_t r;
  sh_rd_init(&r, body, len);
  e->fn_id = sh_rd_u64(&r);
  e->actor_id = sh_rd_u64(&r);
  e->kind = sh_rd_u32(&r);
  e->ndeps = sh_rd_u32(&r);
  e->method_len = sh_rd_u32(&r);
  e->args_len = sh_rd_u32(&r);
  e->deps_len = sh_rd_u32(&r);
  e->deps = sh_rd_bytes(&r, e->deps_len);
  e->method = (const char *)sh_rd_bytes(&r, e->method_len);
  e->args = sh_rd_bytes(&r, e->args_len);
  if (r.err || sh_rd_left(&r) != 0 || e->kind > SH_KIND_ACTOR_CALL)
    return SH_EBODY;
  /* The dependency list must hold exactly ndeps well-formed entries. */
  sh_rd_t d;
  sh_exec_dep_t dep;
  sh_rd_init(&d, e->deps, e->deps_len);
  uint32_t n = 0;
  int rc;
  while ((rc = sh_exec_dep_next(&d, &dep)) == 1) n++;
  if (rc < 0 || n != e->ndeps) return SH_EBODY;
  return 0;
}

int sh_exec_dep_next(sh_rd_t *r, sh_exec_dep_t *d) {
  if (sh_rd_left(r) == 0) return 0;
  uint32_t w = sh_rd_u32(r);
  d->stored = (w & SH_DEP_STORED) != 0;
  d->len = w & ~SH_DEP_STORED;
  if (d->stored) {
    if (d->len != 16) return SH_EBODY;
    d->id = sh_rd_u64(r);
    d->size = sh_rd_u64(r);
    d->data = NULL;
  } else {
    d->id = d->size = 0;
    d->data = sh_rd_bytes(r, d->len);
  }
  return r->err ? SH_EBODY : 1;
}

int sh_hello_append(sh_buf_t *b, const sh_hello_t *h) {
  uint8_t p[16];
  sh_put_u32(p, h->role);
  sh_put_u32(p + 4, h->pid);
  sh_put_u32(p + 8, h->flags);
  sh_put_u32(p + 12, h->flags & SH_HELLO_RESUME ? h->client_id : 0);
  return sh_frame_append(b, SH_MSG_HELLO, 0, 0, p, sizeof p);
}

int sh_hello_decode(const uint8_t *body, size_t len, sh_hello_t *h) {
  if (len != 16) return SH_EBODY;
  h->role = sh_get_u32(body);
  h->pid = sh_get_u32(body + 4);
  h->flags = sh_get_u32(body + 8);
  h->client_id = h->flags & SH_HELLO_RESUME ? sh_get_u32(body + 12) : 0;
  if (h->role < SH_ROLE_DRIVER || h->role > SH_ROLE_PEER) return SH_EBODY;
  return 0;
}

int sh_hello_ok_append(sh_buf_t *b, const sh_hello_ok_t *h) {
  size_t dl = strnlen(h->store_dir, SH_STORE_DIR_MAX - 1);
  uint8_t p[60 + SH_STORE_DIR_MAX];
  sh_put_u32(p, h->client_id);
  sh_put_u32(p + 4, h->node_id);
  sh_put_u32(p + 8, h->num_workers);
  sh_put_u32(p + 12, 0);
  sh_put_u64(p + 16, h->cpu_milli);
  sh_put_u64(p + 24, h->gpu_milli);
  sh_put_u64(p + 32, h->memory);
  sh_put_u64(p + 40, h->inline_threshold);
  sh_put_u64(p + 48, h->store_capacity);
  sh_put_u32(p + 56, (uint32_t)dl);
  memcpy(p + 60, h->store_dir, dl);
  return sh_frame_append(b, SH_MSG_HELLO_OK, 0, 0, p, 60 + dl);
}

int sh_hello_ok_decode(const uint8_t *body, size_t len, sh_hello_ok_t *h) {
  if (len < 60) return SH_EBODY;
  uint32_t dl = sh_get_u32(body + 56);
  if (dl >= SH_STORE_DIR_MAX || len != 60 + (size_t)dl || memchr(body + 60, 0, dl))
    return SH_EBODY;
  h->client_id = sh_get_u32(body);
  h->node_id = sh_get_u32(body + 4);
  h->num_workers = sh_get_u32(body + 8);
  h->cpu_milli = sh_get_u64(body + 16);
  h->gpu_milli = sh_get_u64(body + 24);
  h->memory = sh_get_u64(body + 32);
  h->inline_threshold = sh_get_u64(body + 40);
  h->store_capacity = sh_get_u64(body + 48);
  memcpy(h->store_dir, body + 60, dl);
  h->store_dir[dl] = 0;
  return 0;
}

int sh_auth_challenge_append(sh_buf_t *b, const uint8_t nonce[SH_AUTH_NONCE]) {
  uint8_t p[SH_AUTH_CHALLENGE_LEN];
  sh_put_u32(p, SH_AUTH_SCHEME);
  sh_put_u32(p + 4, 0);
  memcpy(p + 8, nonce, SH_AUTH_NONCE);
  return sh_frame_append(b, SH_MSG_AUTH_CHALLENGE, 0, 0, p, sizeof p);
}

int sh_auth_challenge_decode(const uint8_t *body, size_t len,
                             uint8_t nonce[SH_AUTH_NONCE]) {
  if (len != SH_AUTH_CHALLENGE_LEN || sh_get_u32(body) != SH_AUTH_SCHEME) return SH_EBODY;
  memcpy(nonce, body + 8, SH_AUTH_NONCE);
  return 0;
}

int sh_auth_response_append(sh_buf_t *b, const uint8_t cnonce[SH_AUTH_NONCE],
                            const uint8_t mac[SH_AUTH_MAC]) {
  uint8_t p[SH_AUTH_RESPONSE_LEN];
  memcpy(p, cnonce, SH_AUTH_NONCE);
  memcpy(p + SH_AUTH_NONCE, mac, SH_AUTH_MAC);
  return sh_frame_append(b, SH_MSG_AUTH_RESPONSE, 0, 0, p, sizeof p);
}

int sh_auth_response_decode(const uint8_t *body, size_t len,
                            uint8_t cnonce[SH_AUTH_NONCE], uint8_t mac[SH_AUTH_MAC]) {
  if (len != SH_AUTH_RESPONSE_LEN) return SH_EBODY;
  memcpy(cnonce, body, SH_AUTH_NONCE);
  memcpy(mac, body + SH_AUTH_NONCE, SH_AUTH_MAC);
  return 0;
}

int sh_auth_ok_append(sh_buf_t *b, const uint8_t mac[SH_AUTH_MAC]) {
  return sh_frame_append(b, SH_MSG_AUTH_OK, 0, 0, mac, SH_AUTH_MAC);
}

int sh_auth_ok_decode(const uint8_t *body, size_t len, uint8_t mac[SH_AUTH_MAC]) {
  if (len != SH_AUTH_OK_LEN) return SH_EBODY;
  memcpy(mac, body, SH_AUTH_MAC);
  return 0;
}

int sh_output_append(sh_buf_t *b, uint64_t task_id, uint32_t pid,
                     uint32_t stream, const void *data, size_t len) {
  long at = sh_frame_begin(b, SH_MSG_OUTPUT, 0, task_id);
  if (at < 0) return (int)at;
  int rc = sh_buf_u32(b, pid);
  if (!rc) rc = sh_buf_u32(b, stream);
  if (!rc) rc = sh_buf_append(b, data, len);
  if (rc) {
    sh_frame_abort(b, at);
    return rc;
  }
  sh_frame_finish(b, at);
  return 0;
}

/* A frame whose body is u32 status and text. */
static int status_text_append(sh_buf_t *b, unsigned type, uint64_t id, uint32_t status,
                              const char *text) {
  long at = sh_frame_begin(b, type, 0, id);
  if (at < 0) return (int)at;
  int rc = sh_buf_u32(b, status);
  if (!rc) rc = sh_buf_append(b, text, strlen(text));
  if (rc) {
    sh_frame_abort(b, at);
    return rc;
  }
  sh_frame_finish(b, at);
  return 0;
}

int sh_put_reply_append(sh_buf_t *b, uint64_t id, uint32_t status, const char *text) {
  return status_text_append(b, SH_MSG_PUT_REPLY, id, status, text);
}

int sh_drain_reply_append(sh_buf_t *b, uint64_t node_id, uint32_t status, const char *text) {
  return status_text_append(b, SH_MSG_DRAIN_REPLY, node_id, status, text);
}

/* { u32 status, u64 size, text }: the body of MAP_REPLY and PULL_REPLY. */
static int status_size_text_append(sh_buf_t *b, unsigned type, uint64_t id, uint32_t status,
                                   uint64_t size, const char *text) {
  long at = sh_frame_begin(b, type, 0, id);
  if (at < 0) return (int)at;
  int rc = sh_buf_u32(b, status);
  if (!rc) rc = sh_buf_u64(b, size);
  if (!rc) rc = sh_buf_append(b, text, strlen(text));
  if (rc) {
    sh_frame_abort(b, at);
    return rc;
  }
  sh_frame_finish(b, at);
  return 0;
}

int sh_map_reply_append(sh_buf_t *b, uint64_t id, uint32_t status, uint64_t size,
                        const char *text) {
  return status_size_text_append(b, SH_MSG_MAP_REPLY, id, status, size, text);
}

int sh_pull_reply_append(sh_buf_t *b, uint64_t id, uint32_t status, uint64_t size,
                         const char *text) {
  return status_size_text_append(b, SH_MSG_PULL_REPLY, id, status, size, text);
}

int sh_pull_reply_decode(const uint8_t *body, size_t len, sh_pull_reply_t *r) {
  sh_rd_t rd;
  sh_rd_init(&rd, body, len);
  r->status = sh_rd_u32(&rd);
  r->size = sh_rd_u64(&rd);
  if (rd.err || r->status >= SH_ST_MAX_) return SH_EBODY;
  r->text_len = (uint32_t)sh_rd_left(&rd);
  r->text = (const char *)sh_rd_bytes(&rd, r->text_len);
  return 0;
}

int sh_locate_append(sh_buf_t *b, uint64_t id, const sh_locate_t *l) {
  size_t al = strnlen(l->addr, SH_ADDR_MAX);
  if (!al || al >= SH_ADDR_MAX || !l->node_id) return -EINVAL;
  long at = sh_frame_begin(b, SH_MSG_LOCATE, 0, id);
  if (at < 0) return (int)at;
  int rc = sh_buf_u64(b, l->size);
  if (!rc) rc = sh_buf_u32(b, l->node_id);
  if (!rc) rc = sh_buf_u32(b, (uint32_t)al);
  if (!rc) rc = sh_buf_append(b, l->addr, al);
  if (rc) {
    sh_frame_abort(b, at);
    return rc;
  }
  sh_frame_finish(b, at);
  return 0;
}

int sh_locate_decode(const uint8_t *body, size_t len, sh_locate_t *l) {
  sh_rd_t rd;
  sh_rd_init(&rd, body, len);
  l->size = sh_rd_u64(&rd);
  l->node_id = sh_rd_u32(&rd);
  uint32_t al = sh_rd_u32(&rd);
  if (rd.err || !l->node_id || al == 0 || al >= SH_ADDR_MAX) return SH_EBODY;
  const uint8_t *p = sh_rd_bytes(&rd, al);
  if (rd.err || sh_rd_left(&rd) != 0 || memchr(p, 0, al)) return SH_EBODY;
  memcpy(l->addr, p, al);
  l->addr[al] = 0;
  return 0;
}

int sh_error_append(sh_buf_t *b, int code, const char *text) {
  long at = sh_frame_begin(b, SH_MSG_ERROR, 0, 0);
  if (at < 0) return (int)at;
  int rc = sh_buf_u32(b, (uint32_t)code);
  if (!rc) rc = sh_buf_append(b, text, strlen(text));
  if (rc) {
    sh_frame_abort(b, at);
    return rc;
  }
  sh_frame_finish(b, at);
  return 0;
}

/* ---- the cluster: resources on the wire, NODE_REGISTER, HEARTBEAT ---- */

/* Bytes of r on the wire, or 0 when it cannot be encoded (a custom name that
 * is empty or too long, too many names). */
static size_t res_len(const sh_res_t *r) {
  if (r->ncustom > SH_MAX_CUSTOM) return 0;
  size_t n = 28;
  for (uint32_t i = 0; i < r->ncustom; i++) {
    size_t k = strnlen(r->custom[i].name, SH_NAME_MAX);
    if (k == 0 || k >= SH_NAME_MAX) return 0;
    n += 4 + k + 8;
  }
  return n;
}

/* Writes r (res_len(r) bytes, already reserved) at the end of b. */
static void res_put(sh_buf_t *b, const sh_res_t *r) {
  uint8_t *p = b->data + b->len;
  sh_put_u64(p, r->cpu_milli);
  sh_put_u64(p + 8, r->gpu_milli);
  sh_put_u64(p + 16, r->memory);
  sh_put_u32(p + 24, r->ncustom);
  p += 28;
  for (uint32_t i = 0; i < r->ncustom; i++) {
    uint32_t n = (uint32_t)strlen(r->custom[i].name);
    sh_put_u32(p, n);
    memcpy(p + 4, r->custom[i].name, n);
    sh_put_u64(p + 4 + n, r->custom[i].milli);
    p += 4 + n + 8;
  }
  b->len = (size_t)(p - b->data);
}

/* Reads a resource set; 0 or SH_EBODY (names as SUBMIT's, no duplicates). */
static int res_get(sh_rd_t *r, sh_res_t *out) {
  memset(out, 0, sizeof *out);
  out->cpu_milli = sh_rd_u64(r);
  out->gpu_milli = sh_rd_u64(r);
  out->memory = sh_rd_u64(r);
  uint32_t nc = sh_rd_u32(r);
  if (r->err || nc > SH_MAX_CUSTOM) return SH_EBODY;
  for (uint32_t i = 0; i < nc; i++) {
    uint32_t n = sh_rd_u32(r);
    if (r->err || n == 0 || n >= SH_NAME_MAX) return SH_EBODY;
    const uint8_t *name = sh_rd_bytes(r, n);
    if (!name || memchr(name, 0, n)) return SH_EBODY;
    memcpy(out->custom[i].name, name, n);
    out->custom[i].name[n] = 0;
    out->custom[i].milli = sh_rd_u64(r);
    for (uint32_t j = 0; j < i; j++)
      if (!strcmp(out->custom[j].name, out->custom[i].name)) return SH_EBODY;
    out->ncustom = i + 1;
  }
  return r->err ? SH_EBODY : 0;
}

int sh_register_append(sh_buf_t *b, const sh_register_t *r) {
  size_t rl = res_len(&r->total);
  size_t hl = strnlen(r->host, SH_HOST_MAX);
  if (!rl || hl >= SH_HOST_MAX) return -EINVAL;
  size_t len = 16 + rl + hl + (r->node_port ? 4 : 0);
  int rc = sh_buf_reserve(b, SH_FRAME_HDR + len);
  if (rc) return rc;
  uint8_t *p = b->data + b->len;
  sh_frame_hdr_encode(p, SH_MSG_NODE_REGISTER, 0, 0, (uint32_t)len);
  sh_put_u32(p + SH_FRAME_HDR, r->node_id);
  sh_put_u32(p + SH_FRAME_HDR + 4, r->pid);
  sh_put_u32(p + SH_FRAME_HDR + 8, r->num_workers);
  sh_put_u32(p + SH_FRAME_HDR + 12, (uint32_t)hl);
  b->len += SH_FRAME_HDR + 16;
  res_put(b, &r->total);
  memcpy(b->data + b->len, r->host, hl);
  b->len += hl;
  if (r->node_port) {
    sh_put_u32(b->data + b->len, r->node_port);
    b->len += 4;
  }
  return 0;
}

int sh_register_decode(const uint8_t *body, size_t len, sh_register_t *r) {
  sh_rd_t rd;
  sh_rd_init(&rd, body, len);
  r->node_id = sh_rd_u32(&rd);
  r->pid = sh_rd_u32(&rd);
  r->num_workers = sh_rd_u32(&rd);
  uint32_t hl = sh_rd_u32(&rd);
  if (rd.err || r->node_id == 0 || hl >= SH_HOST_MAX) return SH_EBODY;
  if (res_get(&rd, &r->total)) return SH_EBODY;
  const uint8_t *host = sh_rd_bytes(&rd, hl);
  if (rd.err || memchr(host, 0, hl)) return SH_EBODY;
  memcpy(r->host, host, hl);
  r->host[hl] = 0;
  int has_port = sh_rd_left(&rd) == 4;
  r->node_port = has_port ? sh_rd_u32(&rd) : 0;
  if (rd.err || sh_rd_left(&rd) != 0 || r->node_port > 65535 || (has_port && !r->node_port))
    return SH_EBODY;
  return 0;
}

int sh_heartbeat_append(sh_buf_t *b, const sh_heartbeat_t *h) {
  if (!h) return sh_frame_append(b, SH_MSG_HEARTBEAT, 0, 0, NULL, 0);
  size_t rl = res_len(&h->free);
  if (!rl) return -EINVAL;
  int rc = sh_buf_reserve(b, SH_FRAME_HDR + 8 + rl);
  if (rc) return rc;
  uint8_t *p = b->data + b->len;
  sh_frame_hdr_encode(p, SH_MSG_HEARTBEAT, 0, 0, (uint32_t)(8 + rl));
  sh_put_u32(p + SH_FRAME_HDR, h->load_milli);
  sh_put_u32(p + SH_FRAME_HDR + 4, h->running);
  b->len += SH_FRAME_HDR + 8;
  res_put(b, &h->free);
  return 0;
}

int sh_heartbeat_decode(const uint8_t *body, size_t len, sh_heartbeat_t *h) {
  sh_rd_t rd;
  sh_rd_init(&rd, body, len);
  h->load_milli = sh_rd_u32(&rd);
  h->running = sh_rd_u32(&rd);
  if (rd.err || res_get(&rd, &h->free) || sh_rd_left(&rd) != 0) return SH_EBODY;
  return 0;
}

int sh_holds_append(sh_buf_t *b, const uint64_t *tasks, uint32_t ntasks,
                    const uint64_t *actors, uint32_t nactors, const sh_res_t *held) {
  size_t len = 8 + 8 * ((size_t)ntasks + nactors);
  for (uint32_t i = 0; held && i < nactors; i++) {
    size_t rl = res_len(&held[i]);
    if (!rl) return -EINVAL;
    len += rl;
  }
  int rc = sh_buf_reserve(b, SH_FRAME_HDR + len);
  if (rc) return rc;
  uint8_t *p = b->data + b->len;
  sh_frame_hdr_encode(p, SH_MSG_NODE_HOLDS, 0, 0, (uint32_t)len);
  p += SH_FRAME_HDR;
  sh_put_u32(p, ntasks);
  sh_put_u32(p + 4, nactors);
  p += 8;
  for (uint32_t i = 0; i < ntasks; i++, p += 8) sh_put_u64(p, tasks[i]);
  for (uint32_t i = 0; i < nactors; i++, p += 8) sh_put_u64(p, actors[i]);
  b->len = (size_t)(p - b->data);
  for (uint32_t i = 0; held && i < nactors; i++) res_put(b, &held[i]);
  return 0;
}

int sh_holds_held_next(sh_rd_t *r, sh_res_t *out) { return res_get(r, out); }

int sh_holds_decode(const uint8_t *body, size_t len, sh_holds_t *h) {
  if (len < 8) return SH_EBODY;
  h->ntasks = sh_get_u32(body);
  h->nactors = sh_get_u32(body + 4);
  uint64_t ids = 8 * ((uint64_t)h->ntasks + h->nactors);
  if (len - 8 < ids) return SH_EBODY;
  h->ids = body + 8;
  h->held = NULL;
  h->held_len = len - 8 - (size_t)ids;
  if (!h->held_len) return 0;
  h->held = h->ids + ids;
  sh_rd_t r;
  sh_res_t res;
  sh_rd_init(&r, h->held, h->held_len);
  for (uint32_t i = 0; i < h->nactors; i++)
    if (res_get(&r, &res)) return SH_EBODY;
  return sh_rd_left(&r) ? SH_EBODY : 0;
}
