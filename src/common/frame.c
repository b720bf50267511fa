/* The frame codec: header validation and incremental parsing. */
#include "common/frame.h"

#include <errno.h>
#include <string.h>

static const char *const msg_names[SH_MSG_MAX_] = {
#define SH_X(name, val, doc) [val] = #name,
    SH_MSG_TYPES(SH_X)
#undef SH_X
};

const char *sh_msg_name(unsigned type) {
  if (type >= SH_MSG_MAX_ || !msg_names[type]) return "?";
  return msg_names[type];
}

const char *sh_strerror(int rc) {
  switch (rc) {
    case 0: return "ok";
    case SH_EMAGIC: return "bad frame magic (not a shoal peer?)";
    case SH_EVERSION: return "unsupported protocol version";
    case SH_ETYPE: return "unknown message type";
    case SH_ETOOBIG: return "frame larger than the size limit";
    case SH_ERESERVED: return "reserved header field is not zero";
    case SH_EBODY: return "message body does not decode for its type";
    case SH_EAUTH: return "wrong cluster token";
    case SH_ETLS: return "TLS failed";
    default: break;
  }
  if (rc < 0 && rc > -4096) return strerror(-rc);
  return "unknown error";
}

int sh_frame_hdr_decode(const uint8_t *p, size_t max_body, sh_frame_hdr_t *h) {
  h->magic = sh_get_u32(p);
  h->version = p[4];
  h->type = p[5];
  h->flags = sh_get_u16(p + 6);
  h->id = sh_get_u64(p + 8);
  h->len = sh_get_u32(p + 16);
  h->reserved = sh_get_u32(p + 20);
  if (h->magic != SH_FRAME_MAGIC) return SH_EMAGIC;
  if (h->version != SH_FRAME_VERSION) return SH_EVERSION;
  if (h->type == 0 || h->type >= SH_MSG_MAX_ || !msg_names[h->type]) return SH_ETYPE;
  if (h->reserved != 0) return SH_ERESERVED;
  if (h->len > max_body) return SH_ETOOBIG;
  return 0;
}

void sh_frame_hdr_encode(uint8_t *p, unsigned type, unsigned flags, uint64_t id,
                         uint32_t len) {
  sh_put_u32(p, SH_FRAME_MAGIC);
  p[4] = SH_FRAME_VERSION;
  p[5] = (uint8_t)type;
  sh_put_u16(p + 6, (uint16_t)flags);
  sh_put_u64(p + 8, id);
  sh_put_u32(p + 16, len);
  sh_put_u32(p + 20, 0);
}

int sh_frame_parse(const uint8_t *p, size_t n, size_t max_body, sh_frame_t *out,
                   size_t *used) {
  *used = SH_FRAME_HDR;
  if (n < SH_FRAME_HDR) {
    /* Reject a wrong magic as early as possible: garbage should not make us
     * wait for 24 bytes that will never validate. */
    uint8_t m[4];
    sh_put_u32(m, SH_FRAME_MAGIC);
    if (n > 0 && memcmp(p, m, n < 4 ? n : 4) != 0) return SH_EMAGIC;
    return 0;
  }
  int rc = sh_frame_hdr_decode(p, max_body, &out->hdr);
  if (rc) return rc;
  *used = SH_FRAME_HDR + (size_t)out->hdr.len;
  if (n < *used) return 0;
  out->body = p + SH_FRAME_HDR;
  return 1;
}

int sh_frame_append(sh_buf_t *b, unsigned type, unsigned flags, uint64_t id,
                    const void *body, size_t len) {
  if (len > UINT32_MAX) return -E2BIG;
  int rc = sh_buf_reserve(b, SH_FRAME_HDR + len);
  if (rc) return rc;
  sh_frame_hdr_encode(b->data + b->len, type, flags, id, (uint32_t)len);
  if (len) memcpy(b->data + b->len + SH_FRAME_HDR, body, len);
  b->len += SH_FRAME_HDR + len;
  return 0;
}

long sh_frame_begin(sh_buf_t *b, unsigned type, unsigned flags, uint64_t id) {
  int rc = sh_buf_reserve(b, SH_FRAME_HDR);
  if (rc) return rc;
  /* Relative to the unconsumed front: a later reserve may move the bytes. */
  long at = (long)(b->len - b->off);
  sh_frame_hdr_encode(b->data + b->len, type, flags, id, 0);
  b->len += SH_FRAME_HDR;
  return at;
}

void sh_frame_finish(sh_buf_t *b, long at) {
  size_t start = b->off + (size_t)at;
  size_t body = b->len - start - SH_FRAME_HDR;
  sh_put_u32(b->data + start + 16, (uint32_t)body);
}

void sh_frame_abort(sh_buf_t *b, long at) { b->len = b->off + (size_t)at; }
