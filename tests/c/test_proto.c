/* Unit tests for src/common/proto.c: every body codec round trips, and the
 * decoders reject truncated, oversized and malformed bodies. */
#include "sh_test.h"

#include "common/proto.h"

/* Parses the single frame that makes up all of `b`; checks type and id. */
static sh_frame_t one_frame(const sh_buf_t *b, unsigned type, uint64_t id) {
  sh_frame_t f;
  size_t used = 0;
  assert_int_equal(sh_frame_parse(sh_buf_head(b), sh_buf_avail(b), SH_FRAME_MAX_DEFAULT, &f, &used), 1);
  assert_int_equal(used, sh_buf_avail(b));
  assert_int_equal(f.hdr.type, type);
  assert_int_equal(f.hdr.id, id);
  return f;
}

static void status_names(void **state) {
  static const struct { unsigned v; const char *name; } st[] = {
#define SH_X(name, val, doc) {val, #name},
      SH_STATUS_TYPES(SH_X)
#undef SH_X
  };
  assert_int_equal(sizeof st / sizeof st[0], SH_ST_MAX_);
  for (size_t i = 0; i < SH_ST_MAX_; i++) assert_string_equal(sh_status_name(st[i].v), st[i].name);
  assert_string_equal(sh_status_name(SH_ST_MAX_), "?");
  assert_string_equal(sh_status_name(UINT32_MAX), "?");
}

/* ---- HELLO, HELLO_OK ---------------------------------------------------- */

static void hello_round_trip(void **state) {
  for (uint32_t role = SH_ROLE_DRIVER; role <= SH_ROLE_NODE; role++) {
    sh_buf_t b;
    sh_buf_init(&b);
    sh_hello_t in = {.role = role, .pid = 4242, .flags = SH_HELLO_OWNER}, out;
    assert_int_equal(sh_hello_append(&b, &in), 0);
    sh_frame_t f = one_frame(&b, SH_MSG_HELLO, 0);
    assert_int_equal(f.hdr.len, 16);
    assert_int_equal(sh_get_u32(f.body + 12), 0); /* reserved */
    assert_int_equal(sh_hello_decode(f.body, f.hdr.len, &out), 0);
    assert_int_equal(out.role, role);
    assert_int_equal(out.pid, 4242);
    assert_int_equal(out.flags, SH_HELLO_OWNER);
    sh_buf_close(&b);
  }
}

static void hello_rejects(void **state) {
  uint8_t p[17] = {0};
  sh_hello_t h;
  sh_put_u32(p, SH_ROLE_DRIVER);
  assert_int_equal(sh_hello_decode(p, 16, &h), 0);
  assert_int_equal(sh_hello_decode(p, 15, &h), SH_EBODY);
  assert_int_equal(sh_hello_decode(p, 17, &h), SH_EBODY);
  assert_int_equal(sh_hello_decode(p, 0, &h), SH_EBODY);
  sh_put_u32(p, 0);
  assert_int_equal(sh_hello_decode(p, 16, &h), SH_EBODY);
  sh_put_u32(p, SH_ROLE_PEER);
  assert_int_equal(sh_hello_decode(p, 16, &h), 0);
  sh_put_u32(p, SH_ROLE_PEER + 1);
  assert_int_equal(sh_hello_decode(p, 16, &h), SH_EBODY);
  sh_put_u32(p, UINT32_MAX);
  assert_int_equal(sh_hello_decode(p, 16, &h), SH_EBODY);
}

static void hello_ok_round_trip(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_hello_ok_t in = {.client_id = 7, .node_id = 1, .num_workers = 16,
                      .cpu_milli = 16000, .gpu_milli = 0, .memory = 1ull << 40,
                      .inline_threshold = 65536, .store_capacity = 1ull << 32,
                      .store_dir = "/dev/shm/shoal-1-abc"},
                out;
  assert_int_equal(sh_hello_ok_append(&b, &in), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_HELLO_OK, 0);
  assert_int_equal(f.hdr.len, 60 + strlen(in.store_dir));
  assert_int_equal(sh_hello_ok_decode(f.body, f.hdr.len, &out), 0);
  assert_int_equal(out.client_id, 7);
  assert_int_equal(out.node_id, 1);
  assert_int_equal(out.num_workers, 16);
  assert_int_equal(out.cpu_milli, 16000);
  assert_int_equal(out.gpu_milli, 0);
  assert_int_equal(out.memory, 1ull << 40);
  assert_int_equal(out.inline_threshold, 65536);
  assert_int_equal(out.store_capacity, 1ull << 32);
  assert_string_equal(out.store_dir, "/dev/shm/shoal-1-abc");
  assert_int_equal(sh_hello_ok_decode(f.body, f.hdr.len - 1, &out), SH_EBODY);
  assert_int_equal(sh_hello_ok_decode(f.body, 59, &out), SH_EBODY);
  assert_int_equal(sh_hello_ok_decode(f.body, 0, &out), SH_EBODY);
  sh_buf_close(&b);
}

/* ---- SUBMIT --------------------------------------------------------------- */

static const uint8_t deps3[24] = {1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
                                  3, 0, 0, 0, 0, 0, 0, 0xff};

static sh_submit_t full_submit(void) {
  sh_submit_t s;
  memset(&s, 0, sizeof s);
  s.fn_id = 0x1111;
  s.actor_id = 0x2222;
  s.kind = SH_KIND_ACTOR_CALL;
  s.flags = SH_SUBMIT_RETRY_EXC;
  s.max_retries = 3;
  s.timeout_ms = 1500;
  s.cpu_milli = 1000;
  s.gpu_milli = 500;
  s.memory = 1ull << 33;
  s.ndeps = 3;
  s.deps = deps3;
  s.ncustom = SH_MAX_CUSTOM;
  for (int i = 0; i < SH_MAX_CUSTOM; i++) {
    /* Names of every length from 1 to 63, the longest allowed. */
    size_t n = i == SH_MAX_CUSTOM - 1 ? SH_NAME_MAX - 1 : (size_t)i + 1;
    memset(s.custom[i].name, 'a' + i, n);
    s.custom[i].milli = 1000ull * i;
  }
  s.method = "compute";
  s.method_len = 7;
  s.args = (const uint8_t *)"\x80\x05pickled";
  s.args_len = 9;
  return s;
}

static void check_submit_equal(const sh_submit_t *a, const sh_submit_t *b) {
  assert_int_equal(a->fn_id, b->fn_id);
  assert_int_equal(a->actor_id, b->actor_id);
  assert_int_equal(a->kind, b->kind);
  assert_int_equal(a->flags, b->flags);
  assert_int_equal(a->max_retries, b->max_retries);
  assert_int_equal(a->timeout_ms, b->timeout_ms);
  assert_int_equal(a->cpu_milli, b->cpu_milli);
  assert_int_equal(a->gpu_milli, b->gpu_milli);
  assert_int_equal(a->memory, b->memory);
  assert_int_equal(a->ndeps, b->ndeps);
  assert_memory_equal(a->deps, b->deps, (size_t)a->ndeps * 8);
  assert_int_equal(a->ncustom, b->ncustom);
  for (uint32_t i = 0; i < a->ncustom; i++) {
    assert_string_equal(a->custom[i].name, b->custom[i].name);
    assert_int_equal(a->custom[i].milli, b->custom[i].milli);
  }
  assert_int_equal(a->method_len, b->method_len);
  assert_memory_equal(a->method, b->method, a->method_len);
  assert_int_equal(a->args_len, b->args_len);
  assert_memory_equal(a->args, b->args, a->args_len);
}

static void submit_round_trip(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_submit_t in = full_submit(), out;
  assert_int_equal(sh_submit_append(&b, 0xabcdef, &in), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_SUBMIT, 0xabcdef);
  assert_int_equal(f.hdr.flags, 0);
  size_t custom = 0;
  for (int i = 0; i < SH_MAX_CUSTOM; i++) custom += 4 + strlen(in.custom[i].name) + 8;
  assert_int_equal(f.hdr.len, SH_SUBMIT_FIXED + 24 + custom + 7 + 9);
  assert_int_equal(sh_submit_decode(f.body, f.hdr.len, &out), 0);
  check_submit_equal(&in, &out);
  /* Views point into the body; nothing was allocated. */
  assert_ptr_equal(out.deps, f.body + SH_SUBMIT_FIXED);
  assert_ptr_equal(out.args + out.args_len, f.body + f.hdr.len);
  sh_buf_close(&b);
}

static void submit_layout(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_submit_t in;
  memset(&in, 0, sizeof in);
  in.fn_id = 1;
  in.actor_id = 2;
  in.kind = SH_KIND_ACTOR_CREATE;
  in.flags = 4;
  in.max_retries = 5;
  in.timeout_ms = 6;
  in.cpu_milli = 7;
  in.gpu_milli = 8;
  in.memory = 9;
  in.ndeps = 1;
  in.deps = deps3;
  in.ncustom = 1;
  strcpy(in.custom[0].name, "TPU");
  in.custom[0].milli = 10;
  in.method = "m";
  in.method_len = 1;
  in.args = (const uint8_t *)"A";
  in.args_len = 1;
  assert_int_equal(sh_submit_append(&b, 3, &in), 0);
  const uint8_t *p = b.data + SH_FRAME_HDR;
  static const struct { size_t off, width; uint64_t v; } fields[] = {
      {0, 8, 1}, {8, 8, 2}, {16, 4, 1}, {20, 4, 4}, {24, 4, 5}, {28, 4, 6},
      {32, 8, 7}, {40, 8, 8}, {48, 8, 9}, {56, 4, 1}, {60, 4, 1}, {64, 4, 1},
      {68, 4, 1}, {72, 8, 1}, /* dep */ {80, 4, 3}, /* name length */
  };
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    uint64_t v = fields[i].width == 8 ? sh_get_u64(p + fields[i].off) : sh_get_u32(p + fields[i].off);
    assert_int_equal(v, fields[i].v);
  }
  assert_memory_equal(p + 84, "TPU", 3);
  assert_int_equal(sh_get_u64(p + 87), 10);
  assert_memory_equal(p + 95, "mA", 2);
  assert_int_equal(b.len, SH_FRAME_HDR + 97);
  sh_buf_close(&b);
}

static void submit_minimal_is_fixed_size(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_submit_t in, out;
  memset(&in, 0, sizeof in);
  in.cpu_milli = 1000;
  assert_int_equal(sh_submit_append(&b, 1, &in), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_SUBMIT, 1);
  assert_int_equal(f.hdr.len, SH_SUBMIT_FIXED);
  assert_int_equal(sh_submit_decode(f.body, f.hdr.len, &out), 0);
  check_submit_equal(&in, &out);
  sh_buf_close(&b);
}

static void submit_every_truncation_rejected(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_submit_t in = full_submit(), out;
  assert_int_equal(sh_submit_append(&b, 1, &in), 0);
  const uint8_t *body = b.data + SH_FRAME_HDR;
  size_t len = b.len - SH_FRAME_HDR;
  for (size_t n = 0; n < len; n++) {
    /* A copy of exactly n bytes, so ASan sees any read past the end. */
    uint8_t *cut = sh_malloc(n);
    memcpy(cut, body, n);
    assert_int_equal(sh_submit_decode(cut, n, &out), SH_EBODY);
    sh_free(cut);
  }
  sh_buf_close(&b);
}

static void submit_trailing_bytes_rejected(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_submit_t in = full_submit(), out;
  assert_int_equal(sh_submit_append(&b, 1, &in), 0);
  assert_int_equal(sh_buf_append(&b, "\0", 1), 0);
  assert_int_equal(sh_submit_decode(b.data + SH_FRAME_HDR, b.len - SH_FRAME_HDR, &out), SH_EBODY);
  sh_buf_close(&b);
}

/* A minimal SUBMIT body built by hand, to forge what the encoder won't. */
static size_t forge_submit(uint8_t *p, uint32_t kind, uint32_t ndeps, uint32_t ncustom,
                           uint32_t method_len, uint32_t args_len) {
  memset(p, 0, SH_SUBMIT_FIXED);
  sh_put_u32(p + 16, kind);
  sh_put_u32(p + 56, ndeps);
  sh_put_u32(p + 60, ncustom);
  sh_put_u32(p + 64, method_len);
  sh_put_u32(p + 68, args_len);
  return SH_SUBMIT_FIXED;
}

/* Appends one custom resource entry with a name of `n` bytes from `name`. */
static size_t forge_custom(uint8_t *p, uint32_t n, const char *name) {
  sh_put_u32(p, n);
  memcpy(p + 4, name, n);
  sh_put_u64(p + 4 + n, 1000);
  return 4 + n + 8;
}

static void submit_too_many_custom(void **state) {
  static uint8_t p[SH_SUBMIT_FIXED + (SH_MAX_CUSTOM + 1) * 13];
  sh_submit_t s;
  for (uint32_t nc = SH_MAX_CUSTOM; nc <= SH_MAX_CUSTOM + 1; nc++) {
    size_t len = forge_submit(p, 0, 0, nc, 0, 0);
    for (uint32_t i = 0; i < nc; i++) len += forge_custom(p + len, 1, "x");
    int want = nc <= SH_MAX_CUSTOM ? 0 : SH_EBODY;
    assert_int_equal(sh_submit_decode(p, len, &s), want);
  }
  size_t len = forge_submit(p, 0, 0, UINT32_MAX, 0, 0);
  assert_int_equal(sh_submit_decode(p, len, &s), SH_EBODY);
}

static void submit_bad_custom_names(void **state) {
  uint8_t p[SH_SUBMIT_FIXED + 256];
  char name[SH_NAME_MAX + 1];
  memset(name, 'n', sizeof name);
  sh_submit_t s;
  struct { uint32_t n; int nul_at; int want; } cases[] = {
      {1, -1, 0},
      {SH_NAME_MAX - 1, -1, 0},
      {0, -1, SH_EBODY},           /* empty */
      {SH_NAME_MAX, -1, SH_EBODY}, /* no room for the NUL */
      {SH_NAME_MAX + 1, -1, SH_EBODY},
      {5, 0, SH_EBODY}, /* NUL inside */
      {5, 4, SH_EBODY},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    memset(name, 'n', sizeof name);
    if (cases[i].nul_at >= 0) name[cases[i].nul_at] = 0;
    size_t len = forge_submit(p, 0, 0, 1, 0, 0);
    len += forge_custom(p + len, cases[i].n, name);
    assert_int_equal(sh_submit_decode(p, len, &s), cases[i].want);
    if (cases[i].want == 0) assert_int_equal(strlen(s.custom[0].name), cases[i].n);
  }
  /* A name length larger than what is left, up to 2^32 - 1. */
  static const uint32_t huge[] = {20, 1000, UINT32_MAX};
  for (size_t i = 0; i < 3; i++) {
    size_t len = forge_submit(p, 0, 0, 1, 0, 0);
    sh_put_u32(p + len, huge[i]);
    memcpy(p + len + 4, "abcdefgh", 8);
    len += 12;
    assert_int_equal(sh_submit_decode(p, len, &s), SH_EBODY);
  }
}

static void submit_kind_out_of_range(void **state) {
  uint8_t p[SH_SUBMIT_FIXED];
  sh_submit_t s;
  for (uint32_t kind = 0; kind <= SH_KIND_ACTOR_CALL; kind++)
    assert_int_equal(sh_submit_decode(p, forge_submit(p, kind, 0, 0, 0, 0), &s), 0);
  assert_int_equal(sh_submit_decode(p, forge_submit(p, 3, 0, 0, 0, 0), &s), SH_EBODY);
  assert_int_equal(sh_submit_decode(p, forge_submit(p, UINT32_MAX, 0, 0, 0, 0), &s), SH_EBODY);
}

static void submit_ndeps_overflow(void **state) {
  uint8_t p[SH_SUBMIT_FIXED + 16] = {0};
  sh_submit_t s;
  /* ndeps * 8 must not wrap: 0x20000000 * 8 is 2^32, 0x2000000000000000 * 8
   * would be 2^64 in a size_t. */
  static const uint32_t bad[] = {3, 0x20000000u, 0x20000002u, 0x80000000u, UINT32_MAX};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    forge_submit(p, 0, bad[i], 0, 0, 0);
    assert_int_equal(sh_submit_decode(p, sizeof p, &s), SH_EBODY);
  }
  forge_submit(p, 0, 2, 0, 0, 0);
  assert_int_equal(sh_submit_decode(p, sizeof p, &s), 0);
  assert_int_equal(s.ndeps, 2);
}

static void submit_huge_lengths(void **state) {
  uint8_t p[SH_SUBMIT_FIXED + 8] = {0};
  sh_submit_t s;
  static const uint32_t pairs[][2] = {
      {UINT32_MAX, 0}, {0, UINT32_MAX}, {UINT32_MAX, UINT32_MAX}, {9, 0}, {0, 9},
      {4, 5}, {0x80000000u, 0x80000008u},
  };
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    forge_submit(p, 0, 0, 0, pairs[i][0], pairs[i][1]);
    assert_int_equal(sh_submit_decode(p, sizeof p, &s), SH_EBODY);
  }
  forge_submit(p, 0, 0, 0, 3, 5);
  assert_int_equal(sh_submit_decode(p, sizeof p, &s), 0);
}

/* Mutated encodings: the decoder never reads out of bounds, and whatever it
 * accepts re-encodes to the very same bytes. */
static void submit_mutations_round_trip_or_reject(void **state) {
  uint64_t seed = 0x5eed;
  sh_buf_t b, again;
  sh_buf_init(&b);
  sh_buf_init(&again);
  long accepted = 0;
  for (int iter = 0; iter < 20000; iter++) {
    sh_submit_t in = full_submit(), out;
    in.ndeps = (uint32_t)(sh_test_rand(&seed) % 4);
    in.ncustom = (uint32_t)(sh_test_rand(&seed) % 3);
    in.method_len = (uint32_t)(sh_test_rand(&seed) % 8);
    in.args_len = (uint32_t)(sh_test_rand(&seed) % 10);
    sh_buf_reset(&b);
    assert_int_equal(sh_submit_append(&b, 1, &in), 0);
    size_t len = b.len - SH_FRAME_HDR;
    uint8_t *body = sh_malloc(len + 4);
    memcpy(body, b.data + SH_FRAME_HDR, len);
    int nmut = 1 + (int)(sh_test_rand(&seed) % 3);
    for (int m = 0; m < nmut; m++) {
      uint64_t r = sh_test_rand(&seed);
      size_t at = (size_t)(r % len);
      switch ((r >> 32) % 4) {
        case 0: body[at] ^= (uint8_t)(1u << ((r >> 40) % 8)); break;
        case 1: body[at] = (uint8_t)(r >> 48); break;
        case 2: len = at; break; /* truncate */
        default: body[len++] = (uint8_t)(r >> 48); break; /* extend (room for 4) */
      }
      if (len == 0) break;
    }
    uint8_t *exact = sh_malloc(len);
    memcpy(exact, body, len);
    if (sh_submit_decode(exact, len, &out) == 0) {
      accepted++;
      sh_buf_reset(&again);
      assert_int_equal(sh_submit_append(&again, 1, &out), 0);
      assert_int_equal(again.len - SH_FRAME_HDR, len);
      assert_memory_equal(again.data + SH_FRAME_HDR, exact, len);
    }
    sh_free(exact);
    sh_free(body);
  }
  assert_true(accepted > 100); /* value flips in counts/amounts stay valid */
  sh_buf_close(&b);
  sh_buf_close(&again);
}

/* ---- RESULT --------------------------------------------------------------- */

static void result_round_trip(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  for (uint32_t st = 0; st < SH_ST_MAX_; st++) {
    sh_buf_reset(&b);
    int32_t code = st == SH_ST_CRASHED ? -9 : (int32_t)st;
    assert_int_equal(sh_result_append(&b, 55, st, code, "payload", 7), 0);
    sh_frame_t f = one_frame(&b, SH_MSG_RESULT, 55);
    assert_int_equal(f.hdr.len, 15);
    sh_result_t r;
    assert_int_equal(sh_result_decode(f.body, f.hdr.len, &r), 0);
    assert_int_equal(r.status, st);
    assert_int_equal(r.code, code);
    assert_int_equal(r.payload_len, 7);
    assert_memory_equal(r.payload, "payload", 7);
  }
  sh_buf_reset(&b);
  assert_int_equal(sh_result_append(&b, 1, SH_ST_OK, INT32_MIN, NULL, 0), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_RESULT, 1);
  sh_result_t r;
  assert_int_equal(sh_result_decode(f.body, f.hdr.len, &r), 0);
  assert_int_equal(r.code, INT32_MIN);
  assert_int_equal(r.payload_len, 0);
  sh_buf_close(&b);
}

static void result_rejects(void **state) {
  uint8_t p[8] = {0};
  sh_result_t r;
  for (size_t n = 0; n < 8; n++) assert_int_equal(sh_result_decode(p, n, &r), SH_EBODY);
  sh_put_u32(p, SH_ST_MAX_);
  assert_int_equal(sh_result_decode(p, 8, &r), SH_EBODY);
  sh_put_u32(p, UINT32_MAX);
  assert_int_equal(sh_result_decode(p, 8, &r), SH_EBODY);
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_result_append(&b, 1, 0, 0, p, (size_t)UINT32_MAX - 7), -E2BIG);
  assert_int_equal(b.len, 0);
  sh_buf_close(&b);
}

/* ---- EXEC ----------------------------------------------------------------- */

/* Builds an EXEC frame with deps "d0", "" and "dep-two"; on failure leaves the
 * buffer as it was (the caller's job, see proto.h). */
static int build_exec(sh_buf_t *b) {
  static const char *deps[] = {"d0", "", "dep-two"};
  size_t len0 = b->len;
  long at = sh_exec_begin(b, 99, 0x10, 0x20, SH_KIND_ACTOR_CALL, 3, 4, 6);
  if (at < 0) return (int)at;
  int rc = 0;
  for (int i = 0; i < 3 && !rc; i++)
    rc = sh_exec_add_dep(b, deps[i], (uint32_t)strlen(deps[i]));
  if (!rc) rc = sh_exec_finish(b, at, "call", 4, "argsXY", 6);
  if (rc) b->len = len0;
  return rc;
}

static void exec_round_trip(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(build_exec(&b), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_EXEC, 99);
  assert_int_equal(f.hdr.len, 36 + (4 + 2) + 4 + (4 + 7) + 4 + 6);
  sh_exec_t e;
  assert_int_equal(sh_exec_decode(f.body, f.hdr.len, &e), 0);
  assert_int_equal(e.fn_id, 0x10);
  assert_int_equal(e.actor_id, 0x20);
  assert_int_equal(e.kind, SH_KIND_ACTOR_CALL);
  assert_int_equal(e.ndeps, 3);
  assert_int_equal(e.deps_len, 6 + 4 + 11);
  assert_int_equal(e.method_len, 4);
  assert_memory_equal(e.method, "call", 4);
  assert_int_equal(e.args_len, 6);
  assert_memory_equal(e.args, "argsXY", 6);
  sh_rd_t r;
  sh_rd_init(&r, e.deps, e.deps_len);
  sh_exec_dep_t d;
  static const char *want[] = {"d0", "", "dep-two"};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(sh_exec_dep_next(&r, &d), 1);
    assert_int_equal(d.len, strlen(want[i]));
    assert_memory_equal(d.data, want[i], d.len);
  }
  assert_int_equal(sh_exec_dep_next(&r, &d), 0);
  sh_buf_close(&b);
}

static void exec_every_truncation_rejected(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(build_exec(&b), 0);
  const uint8_t *body = b.data + SH_FRAME_HDR;
  size_t len = b.len - SH_FRAME_HDR;
  sh_exec_t e;
  for (size_t n = 0; n < len; n++) {
    uint8_t *cut = sh_malloc(n);
    memcpy(cut, body, n);
    assert_int_equal(sh_exec_decode(cut, n, &e), SH_EBODY);
    sh_free(cut);
  }
  uint8_t *more = sh_malloc(len + 1);
  memcpy(more, body, len);
  more[len] = 0;
  assert_int_equal(sh_exec_decode(more, len + 1, &e), SH_EBODY); /* trailing */
  more[16] = 3; /* kind */
  assert_int_equal(sh_exec_decode(more, len, &e), SH_EBODY);
  sh_free(more);
  sh_buf_close(&b);
}

static void exec_dep_walk_rejects_bad_lengths(void **state) {
  /* deps region: one dep claiming 5 bytes with only 3 there. */
  uint8_t deps[7];
  sh_put_u32(deps, 5);
  memcpy(deps + 4, "abc", 3);
  sh_rd_t r;
  sh_exec_dep_t d;
  sh_rd_init(&r, deps, sizeof deps);
  assert_int_equal(sh_exec_dep_next(&r, &d), SH_EBODY);
  /* Fewer than 4 bytes left for a length. */
  sh_rd_init(&r, deps, 2);
  assert_int_equal(sh_exec_dep_next(&r, &d), SH_EBODY);
  sh_put_u32(deps, UINT32_MAX);
  sh_rd_init(&r, deps, sizeof deps);
  assert_int_equal(sh_exec_dep_next(&r, &d), SH_EBODY);
}

static void exec_ndeps_must_match_the_list(void **state) {
  /* ndeps says 2, the list holds 1: the decoder rejects the body. */
  sh_buf_t b;
  sh_buf_init(&b);
  long at = sh_exec_begin(&b, 1, 1, 0, SH_KIND_TASK, 2, 0, 0);
  assert_true(at >= 0);
  assert_int_equal(sh_exec_add_dep(&b, "x", 1), 0);
  assert_int_equal(sh_exec_finish(&b, at, NULL, 0, NULL, 0), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_EXEC, 1);
  sh_exec_t e;
  assert_int_equal(sh_exec_decode(f.body, f.hdr.len, &e), SH_EBODY);
  sh_buf_close(&b);
}

/* ---- OUTPUT, ERROR -------------------------------------------------------- */

static void output_layout(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_output_append(&b, 12, 3456, SH_STREAM_STDERR, "line\n", 5), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_OUTPUT, 12);
  assert_int_equal(f.hdr.len, 13);
  assert_int_equal(sh_get_u32(f.body), 3456);
  assert_int_equal(sh_get_u32(f.body + 4), SH_STREAM_STDERR);
  assert_memory_equal(f.body + 8, "line\n", 5);
  sh_buf_close(&b);
}

static void error_layout(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_error_append(&b, SH_ETOOBIG, "frame too big"), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_ERROR, 0);
  assert_int_equal(f.hdr.len, 4 + 13);
  assert_int_equal((int32_t)sh_get_u32(f.body), SH_ETOOBIG);
  assert_memory_equal(f.body + 4, "frame too big", 13);
  sh_buf_close(&b);
}

/* ---- NODE_REGISTER, HEARTBEAT, DRAIN_REPLY ------------------------------------- */

static sh_register_t full_register(void) {
  sh_register_t r = {.node_id = 123456, .pid = 77, .num_workers = 8,
                     .total = {.cpu_milli = 8000, .gpu_milli = 2000, .memory = 1ull << 34,
                               .ncustom = 2}};
  snprintf(r.total.custom[0].name, SH_NAME_MAX, "bigmem");
  r.total.custom[0].milli = 1000;
  snprintf(r.total.custom[1].name, SH_NAME_MAX, "ssd");
  r.total.custom[1].milli = 2500;
  snprintf(r.host, sizeof r.host, "worker-7.example");
  return r;
}

static void check_res_equal(const sh_res_t *a, const sh_res_t *b) {
  assert_int_equal(a->cpu_milli, b->cpu_milli);
  assert_int_equal(a->gpu_milli, b->gpu_milli);
  assert_int_equal(a->memory, b->memory);
  assert_int_equal(a->ncustom, b->ncustom);
  for (uint32_t i = 0; i < a->ncustom; i++) {
    assert_string_equal(a->custom[i].name, b->custom[i].name);
    assert_int_equal(a->custom[i].milli, b->custom[i].milli);
  }
}

static void register_round_trip_and_layout(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_register_t in = full_register(), out;
  assert_int_equal(sh_register_append(&b, &in), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_NODE_REGISTER, 0);
  size_t host = strlen(in.host);
  assert_int_equal(f.hdr.len, 16 + 28 + (4 + 6 + 8) + (4 + 3 + 8) + host);
  assert_int_equal(sh_get_u32(f.body), 123456);
  assert_int_equal(sh_get_u32(f.body + 4), 77);
  assert_int_equal(sh_get_u32(f.body + 8), 8);
  assert_int_equal(sh_get_u32(f.body + 12), host);
  assert_int_equal(sh_get_u64(f.body + 16), 8000);
  assert_int_equal(sh_get_u64(f.body + 24), 2000);
  assert_int_equal(sh_get_u64(f.body + 32), 1ull << 34);
  assert_int_equal(sh_get_u32(f.body + 40), 2);
  assert_int_equal(sh_get_u32(f.body + 44), 6);
  assert_memory_equal(f.body + 48, "bigmem", 6);
  assert_int_equal(sh_get_u64(f.body + 54), 1000);
  assert_memory_equal(f.body + f.hdr.len - host, in.host, host);
  memset(&out, 0xab, sizeof out);
  assert_int_equal(sh_register_decode(f.body, f.hdr.len, &out), 0);
  assert_int_equal(out.node_id, in.node_id);
  assert_int_equal(out.pid, in.pid);
  assert_int_equal(out.num_workers, in.num_workers);
  assert_string_equal(out.host, in.host);
  check_res_equal(&out.total, &in.total);
  /* Every truncation and any trailing byte is rejected. */
  for (size_t len = 0; len < f.hdr.len; len++)
    assert_int_equal(sh_register_decode(f.body, len, &out), SH_EBODY);
  uint8_t longer[512];
  memcpy(longer, f.body, f.hdr.len);
  longer[f.hdr.len] = 'x';
  assert_int_equal(sh_register_decode(longer, f.hdr.len + 1, &out), SH_EBODY);
  sh_buf_close(&b);
}

/* NODE_HOLDS: ids alone (as before), or ids and what each actor holds; a
 * truncated body, or bytes that are not whole resource sets, is rejected. */
static void holds_with_and_without_resources(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  uint64_t tasks[2] = {1ull << 40 | 3, 1ull << 40 | 4}, actors[2] = {1ull << 40 | 2, 5};
  sh_res_t held[2] = {full_register().total, {.cpu_milli = 2000}};
  sh_holds_t h;
  assert_int_equal(sh_holds_append(&b, tasks, 2, actors, 2, NULL), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_NODE_HOLDS, 0);
  assert_int_equal(f.hdr.len, 8 + 4 * 8);
  assert_int_equal(sh_holds_decode(f.body, f.hdr.len, &h), 0);
  assert_null(h.held);
  assert_int_equal(sh_get_u64(h.ids + 16), actors[0]);
  sh_buf_reset(&b);
  assert_int_equal(sh_holds_append(&b, tasks, 2, actors, 2, held), 0);
  f = one_frame(&b, SH_MSG_NODE_HOLDS, 0);
  assert_int_equal(f.hdr.len, 8 + 4 * 8 + 28 + (4 + 6 + 8) + (4 + 3 + 8) + 28);
  assert_int_equal(sh_holds_decode(f.body, f.hdr.len, &h), 0);
  assert_int_equal(h.ntasks, 2);
  assert_int_equal(h.nactors, 2);
  sh_rd_t rd;
  sh_res_t out;
  sh_rd_init(&rd, h.held, h.held_len);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(sh_holds_held_next(&rd, &out), 0);
    check_res_equal(&out, &held[i]);
  }
  for (size_t len = 0; len < f.hdr.len; len++)
    if (len != 8 + 4 * 8) assert_int_equal(sh_holds_decode(f.body, len, &h), SH_EBODY);
  sh_buf_close(&b);
}

static void register_node_port(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_register_t in = full_register(), out;
  in.node_port = 40123;
  assert_int_equal(sh_register_append(&b, &in), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_NODE_REGISTER, 0);
  assert_int_equal(sh_get_u32(f.body + f.hdr.len - 4), 40123);
  assert_int_equal(sh_register_decode(f.body, f.hdr.len, &out), 0);
  assert_int_equal(out.node_port, 40123);
  assert_string_equal(out.host, in.host);
  /* Without it the body ends at the host (as before); 1-3 or 5 extra bytes,
   * or a port above 65535, are rejected. */
  assert_int_equal(sh_register_decode(f.body, f.hdr.len - 4, &out), 0);
  assert_int_equal(out.node_port, 0);
  for (size_t cut = 1; cut < 4; cut++)
    assert_int_equal(sh_register_decode(f.body, f.hdr.len - cut, &out), SH_EBODY);
  uint8_t longer[600];
  memcpy(longer, f.body, f.hdr.len);
  longer[f.hdr.len] = 0;
  assert_int_equal(sh_register_decode(longer, f.hdr.len + 1, &out), SH_EBODY);
  sh_put_u32(longer + f.hdr.len - 4, 65536);
  assert_int_equal(sh_register_decode(longer, f.hdr.len, &out), SH_EBODY);
  sh_buf_close(&b);
}

static void pull_reply_round_trip_and_rejects(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_pull_reply_append(&b, 0x77, SH_ST_LOST, 0, "gone"), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_PULL_REPLY, 0x77);
  assert_int_equal(f.hdr.len, 4 + 8 + 4);
  sh_pull_reply_t r;
  assert_int_equal(sh_pull_reply_decode(f.body, f.hdr.len, &r), 0);
  assert_int_equal(r.status, SH_ST_LOST);
  assert_int_equal(r.size, 0);
  assert_int_equal(r.text_len, 4);
  assert_memory_equal(r.text, "gone", 4);
  for (size_t len = 0; len < 12; len++)
    assert_int_equal(sh_pull_reply_decode(f.body, len, &r), SH_EBODY);
  uint8_t p[12] = {0};
  sh_put_u32(p, SH_ST_MAX_);
  assert_int_equal(sh_pull_reply_decode(p, 12, &r), SH_EBODY);
  sh_put_u32(p, SH_ST_OK);
  sh_put_u64(p + 4, 1ull << 40);
  assert_int_equal(sh_pull_reply_decode(p, 12, &r), 0);
  assert_int_equal(r.size, 1ull << 40);
  assert_int_equal(r.text_len, 0);
  sh_buf_close(&b);
}

static void locate_round_trip_and_rejects(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_locate_t in = {.size = 20u << 20, .node_id = 4242}, out;
  snprintf(in.addr, sizeof in.addr, "10.0.0.7:41000");
  assert_int_equal(sh_locate_append(&b, 0x99, &in), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_LOCATE, 0x99);
  size_t al = strlen(in.addr);
  assert_int_equal(f.hdr.len, 16 + al);
  assert_int_equal(sh_get_u64(f.body), 20u << 20);
  assert_int_equal(sh_get_u32(f.body + 8), 4242);
  assert_int_equal(sh_get_u32(f.body + 12), al);
  assert_int_equal(sh_locate_decode(f.body, f.hdr.len, &out), 0);
  assert_int_equal(out.size, in.size);
  assert_int_equal(out.node_id, 4242);
  assert_string_equal(out.addr, in.addr);
  for (size_t len = 0; len < f.hdr.len; len++)
    assert_int_equal(sh_locate_decode(f.body, len, &out), SH_EBODY);
  uint8_t p[128];
  memcpy(p, f.body, f.hdr.len);
  p[f.hdr.len] = 'x';
  assert_int_equal(sh_locate_decode(p, f.hdr.len + 1, &out), SH_EBODY); /* trailing */
  p[16] = 0;
  assert_int_equal(sh_locate_decode(p, f.hdr.len, &out), SH_EBODY);     /* a NUL */
  memcpy(p, f.body, f.hdr.len);
  sh_put_u32(p + 8, 0);
  assert_int_equal(sh_locate_decode(p, f.hdr.len, &out), SH_EBODY);     /* node 0 */
  memcpy(p, f.body, f.hdr.len);
  sh_put_u32(p + 12, 0);
  assert_int_equal(sh_locate_decode(p, 16, &out), SH_EBODY);            /* empty */
  sh_put_u32(p + 12, SH_ADDR_MAX);
  assert_int_equal(sh_locate_decode(p, 16 + SH_ADDR_MAX, &out), SH_EBODY); /* too long */
  /* The encoder refuses what the decoder would. */
  in.addr[0] = 0;
  assert_int_equal(sh_locate_append(&b, 1, &in), -EINVAL);
  snprintf(in.addr, sizeof in.addr, "h:1");
  in.node_id = 0;
  assert_int_equal(sh_locate_append(&b, 1, &in), -EINVAL);
  sh_buf_close(&b);
}

static void register_rejects(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_register_t in = full_register(), out;
  assert_int_equal(sh_register_append(&b, &in), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_NODE_REGISTER, 0);
  uint8_t p[512];
  size_t len = f.hdr.len;
  memcpy(p, f.body, len);
  sh_put_u32(p, 0); /* node id 0 */
  assert_int_equal(sh_register_decode(p, len, &out), SH_EBODY);
  memcpy(p, f.body, len);
  p[len - 1] = 0; /* a NUL in the host */
  assert_int_equal(sh_register_decode(p, len, &out), SH_EBODY);
  memcpy(p, f.body, len);
  sh_put_u32(p + 12, SH_HOST_MAX); /* host too long */
  assert_int_equal(sh_register_decode(p, len, &out), SH_EBODY);
  memcpy(p, f.body, len);
  sh_put_u32(p + 40, SH_MAX_CUSTOM + 1); /* too many custom names */
  assert_int_equal(sh_register_decode(p, len, &out), SH_EBODY);
  memcpy(p, f.body, len);
  sh_put_u32(p + 44, 0); /* an empty name */
  assert_int_equal(sh_register_decode(p, len, &out), SH_EBODY);
  memcpy(p, f.body, len);
  sh_put_u32(p + 44, UINT32_MAX); /* a name longer than the body */
  assert_int_equal(sh_register_decode(p, len, &out), SH_EBODY);
  /* A name given twice. */
  sh_buf_reset(&b);
  in.total.ncustom = 2;
  snprintf(in.total.custom[1].name, SH_NAME_MAX, "bigmem");
  assert_int_equal(sh_register_append(&b, &in), 0);
  f = one_frame(&b, SH_MSG_NODE_REGISTER, 0);
  assert_int_equal(sh_register_decode(f.body, f.hdr.len, &out), SH_EBODY);
  /* The encoder refuses what the decoder would. */
  sh_buf_reset(&b);
  in = full_register();
  in.total.custom[0].name[0] = 0;
  assert_int_equal(sh_register_append(&b, &in), -EINVAL);
  in = full_register();
  in.total.ncustom = SH_MAX_CUSTOM + 1;
  assert_int_equal(sh_register_append(&b, &in), -EINVAL);
  assert_int_equal(b.len, 0);
  sh_buf_close(&b);
}

static void heartbeat_round_trip_and_rejects(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  sh_heartbeat_t in = {.load_milli = 1500, .running = 3, .free = full_register().total}, out;
  assert_int_equal(sh_heartbeat_append(&b, &in), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_HEARTBEAT, 0);
  assert_int_equal(f.hdr.len, 8 + 28 + (4 + 6 + 8) + (4 + 3 + 8));
  assert_int_equal(sh_get_u32(f.body), 1500);
  assert_int_equal(sh_get_u32(f.body + 4), 3);
  assert_int_equal(sh_heartbeat_decode(f.body, f.hdr.len, &out), 0);
  assert_int_equal(out.load_milli, 1500);
  assert_int_equal(out.running, 3);
  check_res_equal(&out.free, &in.free);
  for (size_t len = 0; len < f.hdr.len; len++)
    assert_int_equal(sh_heartbeat_decode(f.body, len, &out), SH_EBODY);
  uint8_t longer[256];
  memcpy(longer, f.body, f.hdr.len);
  longer[f.hdr.len] = 0;
  assert_int_equal(sh_heartbeat_decode(longer, f.hdr.len + 1, &out), SH_EBODY);
  /* The head's heartbeat has no body. */
  sh_buf_reset(&b);
  assert_int_equal(sh_heartbeat_append(&b, NULL), 0);
  f = one_frame(&b, SH_MSG_HEARTBEAT, 0);
  assert_int_equal(f.hdr.len, 0);
  sh_buf_close(&b);
}

static void drain_reply_layout(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_drain_reply_append(&b, 42, SH_ST_BAD_REQUEST, "no node 42"), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_DRAIN_REPLY, 42);
  assert_int_equal(f.hdr.len, 4 + 10);
  assert_int_equal(sh_get_u32(f.body), SH_ST_BAD_REQUEST);
  assert_memory_equal(f.body + 4, "no node 42", 10);
  assert_string_equal(sh_msg_name(SH_MSG_NODE_REGISTER), "NODE_REGISTER");
  assert_string_equal(sh_msg_name(SH_MSG_DRAIN_REPLY), "DRAIN_REPLY");
  sh_buf_close(&b);
}

/* ---- fault loops ------------------------------------------------------------ */

struct enc_ctx {
  sh_buf_t b;
  int which;
};

static int enc_op(void *p) {
  struct enc_ctx *c = p;
  static uint8_t payload[700], nonce[SH_AUTH_NONCE], mac[SH_AUTH_MAC];
  sh_submit_t s = full_submit();
  sh_hello_t h = {.role = SH_ROLE_DRIVER};
  sh_hello_ok_t ok = {.client_id = 1};
  sh_register_t reg = full_register();
  sh_heartbeat_t hb = {.load_milli = 1, .free = reg.total};
  switch (c->which) {
    case 0: return sh_submit_append(&c->b, 1, &s);
    case 1: return sh_result_append(&c->b, 1, SH_ST_OK, 0, payload, sizeof payload);
    case 2: return sh_hello_append(&c->b, &h);
    case 3: return sh_hello_ok_append(&c->b, &ok);
    case 4: return sh_output_append(&c->b, 1, 2, SH_STREAM_STDOUT, payload, sizeof payload);
    case 5: return sh_error_append(&c->b, SH_EBODY, "bad body");
    case 6: return sh_auth_challenge_append(&c->b, nonce);
    case 7: return sh_auth_response_append(&c->b, nonce, mac);
    case 8: return sh_auth_ok_append(&c->b, mac);
    case 9: return sh_register_append(&c->b, &reg);
    case 10: return sh_heartbeat_append(&c->b, &hb);
    case 11: return sh_drain_reply_append(&c->b, 7, SH_ST_OK, "draining");
    case 12: return sh_pull_reply_append(&c->b, 7, SH_ST_OK, 1 << 20, "");
    case 13: {
      sh_locate_t l = {.size = 1, .node_id = 3, .addr = "127.0.0.1:9"};
      return sh_locate_append(&c->b, 7, &l);
    }
    default: return build_exec(&c->b);
  }
}

static void enc_unchanged(void *p) {
  struct enc_ctx *c = p;
  assert_int_equal(c->b.len, 256);
  for (size_t i = 0; i < 256; i++) assert_int_equal(c->b.data[i], 0xcd);
}

static void fault_loop_encoders(void **state) {
  for (int which = 0; which <= 14; which++) {
    struct enc_ctx c = {.which = which};
    sh_buf_init(&c.b);
    uint8_t fill[256];
    memset(fill, 0xcd, sizeof fill);
    assert_int_equal(sh_buf_append(&c.b, fill, sizeof fill), 0); /* exactly full */
    assert_true(sh_fault_loop(enc_op, enc_unchanged, NULL, &c) >= 1);
    /* What was built is one whole valid frame after the fill. */
    sh_frame_t f;
    size_t used;
    assert_int_equal(sh_frame_parse(c.b.data + 256, c.b.len - 256, SH_FRAME_MAX_DEFAULT, &f, &used), 1);
    assert_int_equal(used, c.b.len - 256);
    sh_buf_close(&c.b);
  }
}

/* ---- AUTH_CHALLENGE, AUTH_RESPONSE, AUTH_OK ---------------------------------- */

static void auth_frames_layout(void **state) {
  uint8_t sn[SH_AUTH_NONCE], cn[SH_AUTH_NONCE], mac[SH_AUTH_MAC];
  uint8_t sn2[SH_AUTH_NONCE], cn2[SH_AUTH_NONCE], mac2[SH_AUTH_MAC];
  for (int i = 0; i < 32; i++) {
    sn[i] = (uint8_t)i;
    cn[i] = (uint8_t)(100 + i);
    mac[i] = (uint8_t)(200 + i);
  }
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_auth_challenge_append(&b, sn), 0);
  sh_frame_t f = one_frame(&b, SH_MSG_AUTH_CHALLENGE, 0);
  assert_int_equal(f.hdr.len, 40);
  assert_int_equal(sh_get_u32(f.body), SH_AUTH_SCHEME);
  assert_int_equal(sh_get_u32(f.body + 4), 0);
  assert_memory_equal(f.body + 8, sn, 32);
  assert_int_equal(sh_auth_challenge_decode(f.body, f.hdr.len, sn2), 0);
  assert_memory_equal(sn2, sn, 32);
  sh_buf_reset(&b);
  assert_int_equal(sh_auth_response_append(&b, cn, mac), 0);
  f = one_frame(&b, SH_MSG_AUTH_RESPONSE, 0);
  assert_int_equal(f.hdr.len, 64);
  assert_memory_equal(f.body, cn, 32);
  assert_memory_equal(f.body + 32, mac, 32);
  assert_int_equal(sh_auth_response_decode(f.body, f.hdr.len, cn2, mac2), 0);
  assert_memory_equal(cn2, cn, 32);
  assert_memory_equal(mac2, mac, 32);
  sh_buf_reset(&b);
  assert_int_equal(sh_auth_ok_append(&b, mac), 0);
  f = one_frame(&b, SH_MSG_AUTH_OK, 0);
  assert_int_equal(f.hdr.len, 32);
  assert_int_equal(sh_auth_ok_decode(f.body, f.hdr.len, mac2), 0);
  assert_memory_equal(mac2, mac, 32);
  sh_buf_close(&b);
}

static void auth_frames_reject(void **state) {
  uint8_t p[80] = {0}, n[32], m[32];
  sh_put_u32(p, SH_AUTH_SCHEME);
  assert_int_equal(sh_auth_challenge_decode(p, 40, n), 0);
  for (size_t len = 0; len < sizeof p; len++) {
    if (len != 40) assert_int_equal(sh_auth_challenge_decode(p, len, n), SH_EBODY);
    if (len != 64) assert_int_equal(sh_auth_response_decode(p, len, n, m), SH_EBODY);
    if (len != 32) assert_int_equal(sh_auth_ok_decode(p, len, m), SH_EBODY);
  }
  static const uint32_t schemes[] = {0, SH_AUTH_SCHEME + 1, UINT32_MAX};
  for (size_t i = 0; i < 3; i++) {
    sh_put_u32(p, schemes[i]);
    assert_int_equal(sh_auth_challenge_decode(p, 40, n), SH_EBODY);
  }
}

static const struct CMUnitTest tests[] = {
    SH_TEST(status_names),
    SH_TEST(register_round_trip_and_layout),
    SH_TEST(register_rejects),
    SH_TEST(register_node_port),
    SH_TEST(holds_with_and_without_resources),
    SH_TEST(pull_reply_round_trip_and_rejects),
    SH_TEST(locate_round_trip_and_rejects),
    SH_TEST(heartbeat_round_trip_and_rejects),
    SH_TEST(drain_reply_layout),
    SH_TEST(hello_round_trip),
    SH_TEST(hello_rejects),
    SH_TEST(hello_ok_round_trip),
    SH_TEST(submit_round_trip),
    SH_TEST(submit_layout),
    SH_TEST(submit_minimal_is_fixed_size),
    SH_TEST(submit_every_truncation_rejected),
    SH_TEST(submit_trailing_bytes_rejected),
    SH_TEST(submit_too_many_custom),
    SH_TEST(submit_bad_custom_names),
    SH_TEST(submit_kind_out_of_range),
    SH_TEST(submit_ndeps_overflow),
    SH_TEST(submit_huge_lengths),
    SH_TEST(submit_mutations_round_trip_or_reject),
    SH_TEST(result_round_trip),
    SH_TEST(result_rejects),
    SH_TEST(exec_round_trip),
    SH_TEST(exec_every_truncation_rejected),
    SH_TEST(exec_dep_walk_rejects_bad_lengths),
    SH_TEST(exec_ndeps_must_match_the_list),
    SH_TEST(output_layout),
    SH_TEST(error_layout),
    SH_TEST(fault_loop_encoders),
    SH_TEST(auth_frames_layout),
    SH_TEST(auth_frames_reject),
};

SH_TEST_MAIN(tests)
