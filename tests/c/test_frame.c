/* Unit tests for src/common/frame.c: header layout, validation, incremental
 * parsing and the frame builders. */
#include "sh_test.h"

#include "common/frame.h"

#define MAX_BODY 4096

/* A valid header for `type` with body length `len`. */
static void hdr(uint8_t *p, unsigned type, uint32_t len) {
  sh_frame_hdr_encode(p, type, 0, 1, len);
}

static int decode(const uint8_t *p, sh_frame_hdr_t *h) {
  return sh_frame_hdr_decode(p, MAX_BODY, h);
}

static void header_layout_and_round_trip(void **state) {
  uint8_t p[SH_FRAME_HDR];
  sh_frame_hdr_encode(p, SH_MSG_SUBMIT, 0xa55a, 0x0102030405060708ull, 0x11223344u);
  static const uint8_t want[SH_FRAME_HDR] = {
      'S', 'H', 'O', 'L',                             /* 0: magic */
      1,                                              /* 4: version */
      SH_MSG_SUBMIT,                                  /* 5: type */
      0x5a, 0xa5,                                     /* 6: flags */
      0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, /* 8: id */
      0x44, 0x33, 0x22, 0x11,                         /* 16: len */
      0, 0, 0, 0,                                     /* 20: reserved */
  };
  assert_memory_equal(p, want, SH_FRAME_HDR);
  sh_frame_hdr_t h;
  assert_int_equal(sh_frame_hdr_decode(p, UINT32_MAX, &h), 0);
  assert_int_equal(h.magic, SH_FRAME_MAGIC);
  assert_int_equal(h.version, SH_FRAME_VERSION);
  assert_int_equal(h.type, SH_MSG_SUBMIT);
  assert_int_equal(h.flags, 0xa55a);
  assert_int_equal(h.id, 0x0102030405060708ull);
  assert_int_equal(h.len, 0x11223344u);
  assert_int_equal(h.reserved, 0);
}

static void every_type_is_accepted_and_named(void **state) {
  static const struct { unsigned type; const char *name; } types[] = {
#define SH_X(name, val, doc) {val, #name},
      SH_MSG_TYPES(SH_X)
#undef SH_X
  };
  size_t n = sizeof types / sizeof types[0];
  assert_true(n <= SH_MSG_MAX_ - 1); /* values may leave gaps (types added in parallel) */
  /* A value in a gap is no type: refused like one past the end. */
  for (unsigned t = 1; t < SH_MSG_MAX_; t++) {
    uint8_t p[SH_FRAME_HDR];
    sh_frame_hdr_t h;
    hdr(p, t, 0);
    assert_int_equal(decode(p, &h), strcmp(sh_msg_name(t), "?") ? 0 : SH_ETYPE);
  }
  for (size_t i = 0; i < n; i++) {
    uint8_t p[SH_FRAME_HDR];
    sh_frame_hdr_t h;
    hdr(p, types[i].type, 0);
    assert_int_equal(decode(p, &h), 0);
    assert_int_equal(h.type, types[i].type);
    assert_string_equal(sh_msg_name(types[i].type), types[i].name);
  }
  assert_string_equal(sh_msg_name(0), "?");
  assert_string_equal(sh_msg_name(SH_MSG_MAX_), "?");
  assert_string_equal(sh_msg_name(1000), "?");
}

static void bad_magic(void **state) {
  uint8_t p[SH_FRAME_HDR];
  sh_frame_hdr_t h;
  for (int i = 0; i < 4; i++) {
    hdr(p, SH_MSG_HELLO, 0);
    p[i] ^= 0x20; /* "shol", "sHOL", ... */
    assert_int_equal(decode(p, &h), SH_EMAGIC);
  }
  hdr(p, SH_MSG_HELLO, 0);
  sh_put_u32(p, 0x53484f4cu); /* "SHOL" stored big-endian */
  assert_int_equal(decode(p, &h), SH_EMAGIC);
}

static void short_garbage_rejected_early(void **state) {
  sh_frame_t f;
  size_t used = 0;
  /* A client speaking another protocol is turned away at its first bytes. */
  assert_int_equal(sh_frame_parse((const uint8_t *)"GET / HTTP/1.1\r\n", 16, MAX_BODY, &f, &used),
                   SH_EMAGIC);
  assert_int_equal(sh_frame_parse((const uint8_t *)"G", 1, MAX_BODY, &f, &used), SH_EMAGIC);
  assert_int_equal(sh_frame_parse((const uint8_t *)"SHOX", 4, MAX_BODY, &f, &used), SH_EMAGIC);
  assert_int_equal(sh_frame_parse((const uint8_t *)"SHO\0", 4, MAX_BODY, &f, &used), SH_EMAGIC);
  /* A correct prefix of the magic waits for more. */
  for (size_t n = 1; n <= 4; n++) {
    assert_int_equal(sh_frame_parse((const uint8_t *)"SHOL", n, MAX_BODY, &f, &used), 0);
    assert_int_equal(used, SH_FRAME_HDR);
  }
  /* Beyond the magic a short header waits: the rest is checked at 24 bytes. */
  assert_int_equal(sh_frame_parse((const uint8_t *)"SHOL\x09\x00", 6, MAX_BODY, &f, &used), 0);
}

static void empty_input_needs_a_header(void **state) {
  sh_frame_t f;
  size_t used = 0;
  uint8_t one = 'S';
  /* An empty, never-allocated read buffer has a NULL head: the parser must not
   * hand that pointer to memcmp (UBSan: nonnull-attribute). */
  assert_int_equal(sh_frame_parse(NULL, 0, MAX_BODY, &f, &used), 0);
  assert_int_equal(used, SH_FRAME_HDR);
  assert_int_equal(sh_frame_parse(&one, 0, MAX_BODY, &f, &used), 0);
  assert_int_equal(used, SH_FRAME_HDR);
}

static void bad_version(void **state) {
  uint8_t p[SH_FRAME_HDR];
  sh_frame_hdr_t h;
  static const uint8_t versions[] = {0, 2, 255};
  for (size_t i = 0; i < sizeof versions; i++) {
    hdr(p, SH_MSG_HELLO, 0);
    p[4] = versions[i];
    assert_int_equal(decode(p, &h), SH_EVERSION);
  }
}

static void bad_type(void **state) {
  uint8_t p[SH_FRAME_HDR];
  sh_frame_hdr_t h;
  static const unsigned types[] = {0, SH_MSG_MAX_, 100, 255};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    hdr(p, types[i], 0);
    assert_int_equal(decode(p, &h), SH_ETYPE);
    sh_frame_t f;
    size_t used;
    assert_int_equal(sh_frame_parse(p, sizeof p, MAX_BODY, &f, &used), SH_ETYPE);
  }
}

static void reserved_must_be_zero(void **state) {
  uint8_t p[SH_FRAME_HDR];
  sh_frame_hdr_t h;
  for (int i = 20; i < 24; i++) {
    hdr(p, SH_MSG_HELLO, 0);
    p[i] = 0x80;
    assert_int_equal(decode(p, &h), SH_ERESERVED);
  }
}

static void too_big(void **state) {
  uint8_t p[SH_FRAME_HDR];
  sh_frame_hdr_t h;
  hdr(p, SH_MSG_PUT, MAX_BODY);
  assert_int_equal(decode(p, &h), 0);
  hdr(p, SH_MSG_PUT, MAX_BODY + 1);
  assert_int_equal(decode(p, &h), SH_ETOOBIG);
  hdr(p, SH_MSG_PUT, UINT32_MAX);
  assert_int_equal(sh_frame_hdr_decode(p, SH_FRAME_MAX_DEFAULT, &h), SH_ETOOBIG);
  hdr(p, SH_MSG_PUT, 1);
  assert_int_equal(sh_frame_hdr_decode(p, 0, &h), SH_ETOOBIG);
  /* The limit is enforced from the header alone, before the body arrives. */
  sh_frame_t f;
  size_t used;
  hdr(p, SH_MSG_PUT, MAX_BODY + 1);
  assert_int_equal(sh_frame_parse(p, sizeof p, MAX_BODY, &f, &used), SH_ETOOBIG);
}

static void checks_run_in_documented_order(void **state) {
  /* magic, version, type, reserved, length: the first failing check wins. */
  uint8_t p[SH_FRAME_HDR];
  sh_frame_hdr_t h;
  hdr(p, 0, MAX_BODY + 1);
  p[4] = 9;
  p[20] = 1;
  assert_int_equal(decode(p, &h), SH_EVERSION);
  p[4] = SH_FRAME_VERSION;
  assert_int_equal(decode(p, &h), SH_ETYPE);
  p[5] = SH_MSG_HELLO;
  assert_int_equal(decode(p, &h), SH_ERESERVED);
  p[20] = 0;
  assert_int_equal(decode(p, &h), SH_ETOOBIG);
  p[0] = 0;
  assert_int_equal(decode(p, &h), SH_EMAGIC);
}

static void partial_parse_reports_needed_size(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  uint8_t body[100];
  for (int i = 0; i < 100; i++) body[i] = (uint8_t)i;
  assert_int_equal(sh_frame_append(&b, SH_MSG_PUT, 0, 77, body, sizeof body), 0);
  size_t total = SH_FRAME_HDR + sizeof body;
  assert_int_equal(b.len, total);
  for (size_t n = 0; n <= total; n++) {
    sh_frame_t f;
    size_t used = 0;
    int rc = sh_frame_parse(b.data, n, MAX_BODY, &f, &used);
    if (n < SH_FRAME_HDR) {
      assert_int_equal(rc, 0);
      assert_int_equal(used, SH_FRAME_HDR);
    } else if (n < total) {
      assert_int_equal(rc, 0);
      assert_int_equal(used, total); /* the whole frame, known from the header */
    } else {
      assert_int_equal(rc, 1);
      assert_int_equal(used, total);
      assert_int_equal(f.hdr.type, SH_MSG_PUT);
      assert_int_equal(f.hdr.id, 77);
      assert_int_equal(f.hdr.len, sizeof body);
      assert_ptr_equal(f.body, b.data + SH_FRAME_HDR);
      assert_memory_equal(f.body, body, sizeof body);
    }
  }
  sh_buf_close(&b);
}

static void several_frames_in_one_buffer(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_frame_append(&b, SH_MSG_STATUS, 0, 1, NULL, 0), 0);
  assert_int_equal(sh_frame_append(&b, SH_MSG_PUT, 3, 2, "hello", 5), 0);
  assert_int_equal(sh_frame_append(&b, SH_MSG_RELEASE, 0, 3, "12345678", 8), 0);
  assert_int_equal(sh_buf_append(&b, "junkjunkjunk", 12), 0);
  static const struct { unsigned type, flags; uint64_t id; uint32_t len; } want[] = {
      {SH_MSG_STATUS, 0, 1, 0}, {SH_MSG_PUT, 3, 2, 5}, {SH_MSG_RELEASE, 0, 3, 8}};
  for (int i = 0; i < 3; i++) {
    sh_frame_t f;
    size_t used;
    assert_int_equal(sh_frame_parse(sh_buf_head(&b), sh_buf_avail(&b), MAX_BODY, &f, &used), 1);
    assert_int_equal(f.hdr.type, want[i].type);
    assert_int_equal(f.hdr.flags, want[i].flags);
    assert_int_equal(f.hdr.id, want[i].id);
    assert_int_equal(f.hdr.len, want[i].len);
    assert_int_equal(used, SH_FRAME_HDR + want[i].len);
    sh_buf_consume(&b, used);
  }
  /* What follows the last good frame is garbage: the connection must close. */
  sh_frame_t f;
  size_t used;
  assert_int_equal(sh_frame_parse(sh_buf_head(&b), sh_buf_avail(&b), MAX_BODY, &f, &used),
                   SH_EMAGIC);
  sh_buf_close(&b);
}

static void flags_are_not_the_codecs_business(void **state) {
  /* Per-type flags pass the frame layer untouched; the handler of each type
   * checks its own bits (see docs/protocol.md). */
  uint8_t p[SH_FRAME_HDR];
  sh_frame_hdr_t h;
  sh_frame_hdr_encode(p, SH_MSG_CANCEL, 0xffff, UINT64_MAX, 0);
  assert_int_equal(decode(p, &h), 0);
  assert_int_equal(h.flags, 0xffff);
  assert_int_equal(h.id, UINT64_MAX);
}

static void begin_finish_patches_length(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  assert_int_equal(sh_frame_append(&b, SH_MSG_STATUS, 0, 1, NULL, 0), 0);
  long at = sh_frame_begin(&b, SH_MSG_OUTPUT, 0, 9);
  assert_int_equal(at, SH_FRAME_HDR);
  assert_int_equal(sh_buf_append(&b, "0123456789", 10), 0);
  assert_int_equal(sh_buf_u32(&b, 5), 0);
  sh_frame_finish(&b, at);
  sh_frame_t f;
  size_t used;
  assert_int_equal(sh_frame_parse(b.data + at, b.len - (size_t)at, MAX_BODY, &f, &used), 1);
  assert_int_equal(f.hdr.type, SH_MSG_OUTPUT);
  assert_int_equal(f.hdr.id, 9);
  assert_int_equal(f.hdr.len, 14);
  assert_int_equal(used, b.len - (size_t)at);
  sh_buf_close(&b);
}

/* Known bug: sh_frame_begin returns an absolute offset into b->data, but a later sh_buf_reserve may
 * compact the buffer (when b->off > 0, as after a partial write) and move the
 * frame, so sh_frame_finish patches the wrong bytes. Registered with WILL_FAIL
 * until fixed; flip SH_KNOWN_BUG to SH_TEST with the fix. */
static void begin_finish_after_consumed_front(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  uint8_t junk[200] = {0};
  assert_int_equal(sh_buf_append(&b, junk, sizeof junk), 0); /* cap 256 */
  sh_buf_consume(&b, 150); /* a partial write sent 150 bytes */
  long at = sh_frame_begin(&b, SH_MSG_OUTPUT, 0, 9); /* fits: no compaction */
  assert_true(at >= 0);
  char text[100];
  memset(text, 'x', sizeof text);
  assert_int_equal(sh_buf_append(&b, text, sizeof text), 0); /* compacts */
  sh_frame_finish(&b, at);
  sh_frame_t f;
  size_t used;
  assert_int_equal(sh_frame_parse(sh_buf_head(&b) + 50, sh_buf_avail(&b) - 50, MAX_BODY, &f, &used),
                   1);
  assert_int_equal(f.hdr.len, sizeof text);
  sh_buf_close(&b);
}

static void append_rejects_4gib_bodies(void **state) {
  sh_buf_t b;
  sh_buf_init(&b);
  static const uint8_t body[1];
  assert_int_equal(sh_frame_append(&b, SH_MSG_PUT, 0, 1, body, (size_t)UINT32_MAX + 1), -E2BIG);
  assert_int_equal(b.len, 0);
  assert_null(b.data);
}

struct append_ctx {
  sh_buf_t b;
  size_t len;
  int begin;
};

static int append_op(void *p) {
  struct append_ctx *c = p;
  static uint8_t body[1000];
  if (c->begin) {
    long at = sh_frame_begin(&c->b, SH_MSG_OUTPUT, 0, 1);
    return at < 0 ? (int)at : 0;
  }
  return sh_frame_append(&c->b, SH_MSG_PUT, 0, 1, body, sizeof body);
}

static void append_unchanged(void *p) {
  struct append_ctx *c = p;
  assert_int_equal(c->b.len, c->len);
  for (size_t i = 0; i < c->len; i++) assert_int_equal(c->b.data[i], 0xab);
}

static void fault_loop_append(void **state) {
  for (int begin = 0; begin < 2; begin++) {
    struct append_ctx c = {.begin = begin};
    sh_buf_init(&c.b);
    uint8_t fill[256];
    memset(fill, 0xab, sizeof fill);
    assert_int_equal(sh_buf_append(&c.b, fill, sizeof fill), 0); /* full */
    c.len = c.b.len;
    assert_true(sh_fault_loop(append_op, append_unchanged, NULL, &c) >= 1);
    sh_buf_close(&c.b);
  }
}

static void strerror_texts(void **state) {
  static const int codes[] = {SH_EMAGIC, SH_EVERSION, SH_ETYPE, SH_ETOOBIG, SH_ERESERVED, SH_EBODY};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    const char *s = sh_strerror(codes[i]);
    assert_non_null(s);
    assert_string_not_equal(s, "unknown error");
    for (size_t j = 0; j < i; j++) assert_string_not_equal(s, sh_strerror(codes[j]));
  }
  assert_string_equal(sh_strerror(0), "ok");
  assert_string_equal(sh_strerror(-ENOMEM), strerror(ENOMEM));
  assert_string_equal(sh_strerror(1), "unknown error");
  assert_string_equal(sh_strerror(-5000), "unknown error");
}

static const struct CMUnitTest tests[] = {
    SH_TEST(header_layout_and_round_trip),
    SH_TEST(every_type_is_accepted_and_named),
    SH_TEST(bad_magic),
    SH_TEST(short_garbage_rejected_early),
    SH_TEST(empty_input_needs_a_header),
    SH_TEST(bad_version),
    SH_TEST(bad_type),
    SH_TEST(reserved_must_be_zero),
    SH_TEST(too_big),
    SH_TEST(checks_run_in_documented_order),
    SH_TEST(partial_parse_reports_needed_size),
    SH_TEST(several_frames_in_one_buffer),
    SH_TEST(flags_are_not_the_codecs_business),
    SH_TEST(begin_finish_patches_length),
    SH_TEST(begin_finish_after_consumed_front),
    SH_TEST(append_rejects_4gib_bodies),
    SH_TEST(fault_loop_append),
    SH_TEST(strerror_texts),
};

SH_TEST_MAIN(tests)
