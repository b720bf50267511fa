/* Fuzz target for the frame codec and the message body decoders: the input is
 * the byte stream a peer sends on one connection.
 *
 * Sections: checks, body decoders (decode, re-encode, compare), the read loops
 * (whole input at once, and in chunks the way a connection receives it), the
 * libFuzzer entry point.
 *
 * Besides "no crash, no sanitizer report" it checks properties: the parser
 * finds the same frames and the same final outcome however the stream is
 * split; what it needs (`used`) is always more than it has when it asks for
 * more; every body a decoder accepts encodes back to the same bytes; nothing
 * allocated through alloc.h is left live. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/frame.h"
#include "common/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Small enough that a huge declared length is rejected, large enough for any
 * corpus frame. */
#define FUZZ_MAX_BODY (1u << 20)
/* Frames remembered per input for the comparison of the two read loops. */
#define FUZZ_MAX_FRAMES 4096

/* ---- checks --------------------------------------------------------------- */

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "frame_fuzz: %s:%d: check failed: %s\n", __FILE__,       \
              __LINE__, #cond);                                                \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* The encoder wrote exactly one frame of `type` into `b` whose body equals
 * body[0..len) except the byte ranges the decoder ignores ([skip0, skip1)). */
static void check_reencoded(const sh_buf_t *b, unsigned type, const uint8_t *body,
                            size_t len, size_t skip0, size_t skip1) {
  sh_frame_t f;
  size_t used;
  CHECK(sh_frame_parse(b->data, b->len, FUZZ_MAX_BODY, &f, &used) == 1);
  CHECK(used == b->len);
  CHECK(f.hdr.type == type);
  CHECK(f.hdr.len == len);
  CHECK(memcmp(f.body, body, skip0) == 0);
  CHECK(memcmp(f.body + skip1, body + skip1, len - skip1) == 0);
}

/* ---- body decoders ---------------------------------------------------------- */

static void fuzz_hello(const sh_frame_t *f, sh_buf_t *b) {
  sh_hello_t h;
  if (sh_hello_decode(f->body, f->hdr.len, &h)) return;
  CHECK(h.role >= SH_ROLE_DRIVER && h.role <= SH_ROLE_PEER);
  CHECK(sh_hello_append(b, &h) == 0);
  check_reencoded(b, SH_MSG_HELLO, f->body, f->hdr.len, 12, 16); /* reserved */
}

static void fuzz_hello_ok(const sh_frame_t *f, sh_buf_t *b) {
  sh_hello_ok_t h;
  if (sh_hello_ok_decode(f->body, f->hdr.len, &h)) return;
  CHECK(sh_hello_ok_append(b, &h) == 0);
  check_reencoded(b, SH_MSG_HELLO_OK, f->body, f->hdr.len, 12, 16);
}

static void fuzz_submit(const sh_frame_t *f, sh_buf_t *b) {
  sh_submit_t s;
  if (sh_submit_decode(f->body, f->hdr.len, &s)) return;
  CHECK(s.kind <= SH_KIND_ACTOR_CALL);
  CHECK(s.ncustom <= SH_MAX_CUSTOM);
  for (uint32_t i = 0; i < s.ncustom; i++) {
    size_t n = strnlen(s.custom[i].name, SH_NAME_MAX);
    CHECK(n > 0 && n < SH_NAME_MAX);
  }
  CHECK(sh_submit_append(b, f->hdr.id, &s) == 0);
  check_reencoded(b, SH_MSG_SUBMIT, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

static void fuzz_result(const sh_frame_t *f, sh_buf_t *b) {
  sh_result_t r;
  if (sh_result_decode(f->body, f->hdr.len, &r)) return;
  CHECK(r.status < SH_ST_MAX_);
  CHECK(r.payload_len == f->hdr.len - 8);
  CHECK(sh_result_append(b, f->hdr.id, r.status, r.code, r.payload, r.payload_len) == 0);
  check_reencoded(b, SH_MSG_RESULT, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

static void fuzz_exec(const sh_frame_t *f, sh_buf_t *b) {
  sh_exec_t e;
  uint64_t devices;
  if (sh_exec_decode_flags(f->body, f->hdr.len, f->hdr.flags, &e, &devices)) return;
  /* Walk the dependencies as the worker does; re-encode only a consistent
   * frame (the decoder leaves the ndeps check to the walker). */
  sh_rd_t r;
  sh_rd_init(&r, e.deps, e.deps_len);
  sh_exec_dep_t d;
  uint32_t n = 0;
  int rc;
  while ((rc = sh_exec_dep_next(&r, &d)) == 1) {
    CHECK(d.stored ? d.data == NULL && d.len == 16 : d.data + d.len <= e.deps + e.deps_len);
    n++;
  }
  if (rc != 0 || n != e.ndeps) return;
  long at = sh_exec_begin(b, f->hdr.id, e.fn_id, e.actor_id, e.kind, e.ndeps,
                          e.method_len, e.args_len);
  CHECK(at == 0);
  sh_rd_init(&r, e.deps, e.deps_len);
  while (sh_exec_dep_next(&r, &d) == 1)
    CHECK((d.stored ? sh_exec_add_stored_dep(b, d.id, d.size) : sh_exec_add_dep(b, d.data, d.len)) == 0);
  CHECK(sh_exec_finish(b, at, e.method, e.method_len, e.args, e.args_len) == 0);
  if (f->hdr.flags & SH_EXEC_DEVICES) CHECK(sh_exec_add_devices(b, at, devices) == 0);
  check_reencoded(b, SH_MSG_EXEC, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

static void fuzz_output(const sh_frame_t *f, sh_buf_t *b) {
  if (f->hdr.len < 8) return;
  uint32_t pid = sh_get_u32(f->body), stream = sh_get_u32(f->body + 4);
  CHECK(sh_output_append(b, f->hdr.id, pid, stream, f->body + 8, f->hdr.len - 8) == 0);
  check_reencoded(b, SH_MSG_OUTPUT, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

static void fuzz_error(const sh_frame_t *f, sh_buf_t *b) {
  if (f->hdr.len < 4 || memchr(f->body + 4, 0, f->hdr.len - 4)) return;
  char *text = sh_malloc(f->hdr.len - 4 + 1);
  memcpy(text, f->body + 4, f->hdr.len - 4);
  text[f->hdr.len - 4] = 0;
  CHECK(sh_error_append(b, (int)sh_get_u32(f->body), text) == 0);
  sh_free(text);
  check_reencoded(b, SH_MSG_ERROR, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

static void fuzz_auth(const sh_frame_t *f, sh_buf_t *b) {
  uint8_t n[SH_AUTH_NONCE], m[SH_AUTH_MAC];
  switch (f->hdr.type) {
    case SH_MSG_AUTH_CHALLENGE:
      if (sh_auth_challenge_decode(f->body, f->hdr.len, n)) return;
      CHECK(sh_auth_challenge_append(b, n) == 0);
      check_reencoded(b, f->hdr.type, f->body, f->hdr.len, 4, 8); /* reserved */
      return;
    case SH_MSG_AUTH_RESPONSE:
      if (sh_auth_response_decode(f->body, f->hdr.len, n, m)) return;
      CHECK(sh_auth_response_append(b, n, m) == 0);
      break;
    default:
      if (sh_auth_ok_decode(f->body, f->hdr.len, m)) return;
      CHECK(sh_auth_ok_append(b, m) == 0);
      break;
  }
  check_reencoded(b, f->hdr.type, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

/* A resource set as the decoders promise it: names well formed, distinct. */
static void check_res(const sh_res_t *r) {
  CHECK(r->ncustom <= SH_MAX_CUSTOM);
  for (uint32_t i = 0; i < r->ncustom; i++) {
    size_t n = strnlen(r->custom[i].name, SH_NAME_MAX);
    CHECK(n > 0 && n < SH_NAME_MAX);
    for (uint32_t j = 0; j < i; j++) CHECK(strcmp(r->custom[i].name, r->custom[j].name) != 0);
  }
}

static void fuzz_register(const sh_frame_t *f, sh_buf_t *b) {
  sh_register_t r;
  if (sh_register_decode(f->body, f->hdr.len, &r)) return;
  CHECK(r.node_id != 0 && strnlen(r.host, SH_HOST_MAX) < SH_HOST_MAX);
  check_res(&r.total);
  CHECK(sh_register_append(b, &r) == 0);
  check_reencoded(b, SH_MSG_NODE_REGISTER, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

static void fuzz_heartbeat(const sh_frame_t *f, sh_buf_t *b) {
  sh_heartbeat_t h;
  if (sh_heartbeat_decode(f->body, f->hdr.len, &h)) return;
  check_res(&h.free);
  CHECK(sh_heartbeat_append(b, &h) == 0);
  check_reencoded(b, SH_MSG_HEARTBEAT, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

static void fuzz_pull_reply(const sh_frame_t *f, sh_buf_t *b) {
  sh_pull_reply_t r;
  if (sh_pull_reply_decode(f->body, f->hdr.len, &r)) return;
  CHECK(r.status < SH_ST_MAX_ && r.text_len == f->hdr.len - 12);
  char text[4096];
  if (r.text_len >= sizeof text || memchr(r.text, 0, r.text_len)) return;
  memcpy(text, r.text, r.text_len);
  text[r.text_len] = 0;
  CHECK(sh_pull_reply_append(b, f->hdr.id, r.status, r.size, text) == 0);
  check_reencoded(b, SH_MSG_PULL_REPLY, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

static void fuzz_locate(const sh_frame_t *f, sh_buf_t *b) {
  sh_locate_t l;
  if (sh_locate_decode(f->body, f->hdr.len, &l)) return;
  CHECK(l.node_id != 0 && l.addr[0] && strnlen(l.addr, SH_ADDR_MAX) < SH_ADDR_MAX);
  CHECK(sh_locate_append(b, f->hdr.id, &l) == 0);
  check_reencoded(b, SH_MSG_LOCATE, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

static void fuzz_holds(const sh_frame_t *f, sh_buf_t *b) {
  sh_holds_t h;
  if (sh_holds_decode(f->body, f->hdr.len, &h)) return;
  uint32_t n = h.ntasks + h.nactors;
  uint64_t *ids = n ? malloc((size_t)n * 8) : NULL;
  CHECK(!n || ids);
  for (uint32_t i = 0; i < n; i++) ids[i] = sh_get_u64(h.ids + 8 * (size_t)i);
  sh_res_t *held = h.held && h.nactors ? calloc(h.nactors, sizeof *held) : NULL;
  CHECK(!h.held || !h.nactors || held);
  sh_rd_t rd = {0};
  if (h.held) sh_rd_init(&rd, h.held, h.held_len);
  for (uint32_t i = 0; held && i < h.nactors; i++) CHECK(sh_holds_held_next(&rd, &held[i]) == 0);
  CHECK(sh_holds_append(b, ids, h.ntasks, ids ? ids + h.ntasks : NULL, h.nactors, held) == 0);
  free(ids);
  free(held);
  check_reencoded(b, SH_MSG_NODE_HOLDS, f->body, f->hdr.len, f->hdr.len, f->hdr.len);
}

/* Runs the decoder of the frame's type, if proto.h has one. */
static void fuzz_body(const sh_frame_t *f) {
  sh_buf_t b;
  sh_buf_init(&b);
  switch (f->hdr.type) {
    case SH_MSG_HELLO: fuzz_hello(f, &b); break;
    case SH_MSG_HELLO_OK: fuzz_hello_ok(f, &b); break;
    case SH_MSG_SUBMIT: fuzz_submit(f, &b); break;
    case SH_MSG_RESULT: fuzz_result(f, &b); break;
    case SH_MSG_EXEC: fuzz_exec(f, &b); break;
    case SH_MSG_OUTPUT: fuzz_output(f, &b); break;
    case SH_MSG_ERROR: fuzz_error(f, &b); break;
    case SH_MSG_NODE_REGISTER: fuzz_register(f, &b); break;
    case SH_MSG_HEARTBEAT: fuzz_heartbeat(f, &b); break;
    case SH_MSG_PULL_REPLY: fuzz_pull_reply(f, &b); break;
    case SH_MSG_LOCATE: fuzz_locate(f, &b); break;
    case SH_MSG_NODE_HOLDS: fuzz_holds(f, &b); break;
    case SH_MSG_AUTH_CHALLENGE:
    case SH_MSG_AUTH_RESPONSE:
    case SH_MSG_AUTH_OK: fuzz_auth(f, &b); break;
    default: break; /* opaque or empty bodies: nothing to decode here */
  }
  sh_buf_close(&b);
}

/* ---- read loops ------------------------------------------------------------- */

typedef struct {
  size_t nframes;
  struct { uint8_t type; uint16_t flags; uint64_t id; uint32_t len; } frames[FUZZ_MAX_FRAMES];
  int end; /* 0: stopped needing more bytes; < 0: the error that closes */
} outcome_t;

/* Handles one parser answer; returns 1 to go on parsing, 0 to stop. */
static int step(outcome_t *o, int rc, const sh_frame_t *f, size_t n, size_t used) {
  if (rc == 0) {
    CHECK(used > n && used >= SH_FRAME_HDR);
    o->end = 0;
    return 0;
  }
  if (rc < 0) {
    CHECK(rc == SH_EMAGIC || rc == SH_EVERSION || rc == SH_ETYPE ||
          rc == SH_ETOOBIG || rc == SH_ERESERVED);
    o->end = rc;
    return 0;
  }
  CHECK(rc == 1);
  CHECK(f->hdr.len <= FUZZ_MAX_BODY && used == SH_FRAME_HDR + (size_t)f->hdr.len && used <= n);
  if (o->nframes < FUZZ_MAX_FRAMES) {
    o->frames[o->nframes].type = f->hdr.type;
    o->frames[o->nframes].flags = f->hdr.flags;
    o->frames[o->nframes].id = f->hdr.id;
    o->frames[o->nframes].len = f->hdr.len;
  }
  o->nframes++;
  fuzz_body(f);
  return 1;
}

/* The whole stream in one buffer. */
static void read_all(const uint8_t *p, size_t n, outcome_t *o) {
  sh_frame_t f;
  size_t used;
  for (;;) {
    int rc = sh_frame_parse(p, n, FUZZ_MAX_BODY, &f, &used);
    if (!step(o, rc, &f, n, used)) return;
    p += used;
    n -= used;
  }
}

/* The stream as a connection receives it: chunks appended to a read buffer,
 * frames taken from its front. Chunk sizes come from a generator seeded by
 * the input, mixing tiny, mid-sized and large reads. */
static void read_chunked(const uint8_t *p, size_t n, outcome_t *o) {
  uint64_t s = 0xcbf29ce484222325ull; /* FNV-1a of the input as the seed */
  for (size_t i = 0; i < n; i++) s = (s ^ p[i]) * 0x100000001b3ull;
  s |= 1;
  sh_buf_t rb;
  sh_buf_init(&rb);
  size_t off = 0;
  o->end = 0;
  for (;;) {
    /* Parse what we have first: an empty, never-grown buffer included. Not
     * through sh_buf_head() while rb.data is NULL: NULL + 0 is undefined in
     * C and clang's UBSan reports it (buf.h, reported, not ours to change). */
    sh_frame_t f;
    size_t used;
    const uint8_t *head = rb.data ? sh_buf_head(&rb) : NULL;
    int rc = sh_frame_parse(head, sh_buf_avail(&rb), FUZZ_MAX_BODY, &f, &used);
    if (step(o, rc, &f, sh_buf_avail(&rb), used)) {
      sh_buf_consume(&rb, used);
      continue;
    }
    if (rc < 0 || off == n) break;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    uint64_t r = s * 0x2545f4914f6cdd1dull;
    static const size_t scale[4] = {8, 64, 512, 65536};
    size_t chunk = 1 + (size_t)((r >> 8) % scale[r & 3]);
    if (chunk > n - off) chunk = n - off;
    CHECK(sh_buf_append(&rb, p + off, chunk) == 0);
    off += chunk;
  }
  sh_buf_close(&rb);
}

/* ---- entry point -------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static outcome_t whole, chunked;
  long live = sh_alloc_live();
  memset(&whole, 0, sizeof whole);
  memset(&chunked, 0, sizeof chunked);
  read_all(data, size, &whole);
  read_chunked(data, size, &chunked);
  CHECK(whole.nframes == chunked.nframes);
  CHECK(whole.end == chunked.end);
  size_t k = whole.nframes < FUZZ_MAX_FRAMES ? whole.nframes : FUZZ_MAX_FRAMES;
  for (size_t i = 0; i < k; i++) {
    CHECK(whole.frames[i].type == chunked.frames[i].type);
    CHECK(whole.frames[i].flags == chunked.frames[i].flags);
    CHECK(whole.frames[i].id == chunked.frames[i].id);
    CHECK(whole.frames[i].len == chunked.frames[i].len);
  }
  CHECK(sh_alloc_live() == live);
  return 0;
}
