/* Unit tests for src/common/tls.c: contexts refuse missing and mismatched
 * files with the reason; plain I/O when there is no TLS; a handshake and a
 * 4 MiB transfer between two non-blocking ends of a socketpair in one
 * thread, each call retried only on the event it said it waits for; an
 * untrusted certificate is refused on both sides. */
#include "sh_test.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/frame.h"
#include "common/tls.h"

/* ---- helpers ------------------------------------------------------------- */

/* A scratch directory with a self-signed certificate and its key
 * (DIR/cert.pem, DIR/key.pem) for CN `cn`. */
static char *make_identity(const char *cn) {
  char *d = strdup("/tmp/sh-tls-XXXXXX");
  assert_non_null(mkdtemp(d));
  EVP_PKEY *k = EVP_EC_gen("P-256");
  assert_non_null(k);
  X509 *x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, k);
  X509_NAME *name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
  X509_set_issuer_name(x, name);
  assert_true(X509_sign(x, k, EVP_sha256()) > 0);
  char path[64];
  snprintf(path, sizeof path, "%s/cert.pem", d);
  FILE *f = fopen(path, "w");
  PEM_write_X509(f, x);
  fclose(f);
  snprintf(path, sizeof path, "%s/key.pem", d);
  f = fopen(path, "w");
  PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
  fclose(f);
  X509_free(x);
  EVP_PKEY_free(k);
  return d;
}

static void rm_identity(char *d) {
  char p[64];
  snprintf(p, sizeof p, "%s/cert.pem", d);
  unlink(p);
  snprintf(p, sizeof p, "%s/key.pem", d);
  unlink(p);
  rmdir(d);
  free(d);
}

static sh_tls_ctx_t *ctx_of(sh_tls_side_t side, const char *dir, const char *ca_dir) {
  char cert[64], key[64], ca[64], err[512];
  snprintf(cert, sizeof cert, "%s/cert.pem", dir);
  snprintf(key, sizeof key, "%s/key.pem", dir);
  snprintf(ca, sizeof ca, "%s/cert.pem", ca_dir);
  sh_tls_ctx_t *c = NULL;
  int rc = side == SH_TLS_SERVER ? sh_tls_ctx_create(side, cert, key, NULL, &c, err, sizeof err)
                                 : sh_tls_ctx_create(side, NULL, NULL, ca, &c, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
  return c;
}

static void nonblocking_pair(int sv[2]) {
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  /* Small buffers, so that writes fill the socket and must wait. */
  int small = 16384;
  for (int i = 0; i < 2; i++) setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
}

/* Waits (bounded) for `want` on fd; fails the test when it never comes. */
static void wait_for(int fd, int want) {
  struct pollfd p = {fd, (short)((want & SH_TLS_READ ? POLLIN : 0) |
                                 (want & SH_TLS_WRITE ? POLLOUT : 0)), 0};
  assert_true(poll(&p, 1, 5000) > 0);
}

/* Drives both handshakes to their end: 0, or the first failure. */
static int handshake_both(sh_tls_t *s, sh_tls_t *c, int sfd, int cfd) {
  int rs = -EAGAIN, rc = -EAGAIN;
  for (int i = 0; i < 1000 && (rs == -EAGAIN || rc == -EAGAIN); i++) {
    if (rc == -EAGAIN) rc = sh_tls_handshake(c);
    if (rs == -EAGAIN) rs = sh_tls_handshake(s);
    if (rc != -EAGAIN && rc) return rc;
    if (rs != -EAGAIN && rs) return rs;
    if (rs == -EAGAIN && rc == -EAGAIN) {
      struct pollfd p[2] = {{sfd, POLLIN, 0}, {cfd, POLLIN, 0}};
      assert_true(poll(p, 2, 5000) > 0);
    }
  }
  return rs ? rs : rc;
}

/* ---- tests --------------------------------------------------------------- */

static void ctx_refuses_bad_files(void **state) {
  char err[512];
  sh_tls_ctx_t *c = (sh_tls_ctx_t *)1;
  assert_int_equal(sh_tls_ctx_create(SH_TLS_SERVER, NULL, NULL, NULL, &c, err, sizeof err),
                   SH_ETLS);
  assert_null(c);
  assert_int_equal(sh_tls_ctx_create(SH_TLS_SERVER, "/nonexistent/c.pem", "/nonexistent/k.pem",
                                     NULL, &c, err, sizeof err), SH_ETLS);
  assert_non_null(strstr(err, "/nonexistent/c.pem"));
  assert_non_null(strstr(err, "No such file"));
  char *a = make_identity("a"), *b = make_identity("b");
  char cert[64], key[64];
  snprintf(cert, sizeof cert, "%s/cert.pem", a);
  snprintf(key, sizeof key, "%s/key.pem", b);
  assert_int_equal(sh_tls_ctx_create(SH_TLS_SERVER, cert, key, NULL, &c, err, sizeof err),
                   SH_ETLS);
  assert_non_null(strstr(err, "does not belong to the certificate"));
  assert_int_equal(sh_tls_ctx_create(SH_TLS_SERVER, key, key, NULL, &c, err, sizeof err),
                   SH_ETLS);
  assert_non_null(strstr(err, "no usable PEM certificate"));
  assert_int_equal(sh_tls_ctx_create(SH_TLS_CLIENT, cert, NULL, NULL, &c, err, sizeof err),
                   SH_ETLS);
  rm_identity(a);
  rm_identity(b);
}

static void plain_io_without_tls(void **state) {
  int sv[2];
  nonblocking_pair(sv);
  assert_int_equal(sh_tls_send(NULL, sv[0], "abc", 3), 3);
  char buf[8];
  assert_int_equal(sh_tls_recv(NULL, sv[1], buf, sizeof buf), 3);
  assert_memory_equal(buf, "abc", 3);
  assert_int_equal(sh_tls_recv(NULL, sv[1], buf, sizeof buf), -EAGAIN);
  assert_int_equal(sh_tls_rd_want(NULL), SH_TLS_READ);
  assert_int_equal(sh_tls_wr_want(NULL), SH_TLS_WRITE);
  assert_int_equal(sh_tls_pending(NULL), 0);
  assert_true(sh_tls_ready(NULL));
  close(sv[0]);
  assert_int_equal(sh_tls_recv(NULL, sv[1], buf, sizeof buf), 0);
  close(sv[1]);
  assert_true(sh_tls_looks_like_tls((const uint8_t *)"\x16\x03\x01", 3));
  assert_false(sh_tls_looks_like_tls((const uint8_t *)"SHOL", 4));
}

static void handshake_and_transfer_non_blocking(void **state) {
  char *id = make_identity("server");
  sh_tls_ctx_t *sc = ctx_of(SH_TLS_SERVER, id, id), *cc = ctx_of(SH_TLS_CLIENT, id, id);
  int sv[2];
  nonblocking_pair(sv);
  sh_tls_t *s, *c;
  assert_int_equal(sh_tls_create(sc, sv[0], NULL, &s), 0);
  assert_int_equal(sh_tls_create(cc, sv[1], NULL, &c), 0);
  sh_tls_ctx_destroy(sc); /* the connections keep what they need */
  sh_tls_ctx_destroy(cc);
  assert_false(sh_tls_ready(s));
  assert_int_equal(handshake_both(s, c, sv[0], sv[1]), 0);
  assert_true(sh_tls_ready(s) && sh_tls_ready(c));
  assert_true(sh_tls_received(s) > 0);
  /* 4 MiB from the client to the server through 16 KiB socket buffers: the
   * writer waits only for what sh_tls_wr_want says, the reader for
   * sh_tls_rd_want unless bytes are pending. */
  size_t total = 4u << 20, sent = 0, got = 0;
  uint8_t *src = malloc(total), *dst = malloc(total);
  for (size_t i = 0; i < total; i++) src[i] = (uint8_t)(i * 131 + (i >> 13));
  int full = 0;
  while (got < total) {
    if (sent < total) {
      ssize_t n = sh_tls_send(c, sv[1], src + sent, total - sent);
      if (n > 0) sent += (size_t)n;
      else assert_int_equal(n, -EAGAIN), full++;
    }
    ssize_t n = sh_tls_recv(s, sv[0], dst + got, 5000); /* less than a record */
    if (n > 0) {
      got += (size_t)n;
      continue;
    }
    assert_int_equal(n, -EAGAIN);
    assert_int_equal(sh_tls_pending(s), 0);
    if (sent < total && sh_tls_wr_want(c) == SH_TLS_WRITE) {
      struct pollfd p[2] = {{sv[0], POLLIN, 0}, {sv[1], POLLOUT, 0}};
      assert_true(poll(p, 2, 5000) > 0);
    } else {
      wait_for(sv[0], sh_tls_rd_want(s));
    }
  }
  assert_memory_equal(src, dst, total);
  assert_true(full > 0); /* the writer did have to wait */
  /* A clean close is an end of stream. */
  sh_tls_shutdown(c);
  wait_for(sv[0], SH_TLS_READ);
  uint8_t b;
  assert_int_equal(sh_tls_recv(s, sv[0], &b, 1), 0);
  free(src);
  free(dst);
  sh_tls_destroy(s);
  sh_tls_destroy(c);
  close(sv[0]);
  close(sv[1]);
  rm_identity(id);
}

static void untrusted_certificate_is_refused(void **state) {
  char *id = make_identity("server"), *other = make_identity("other");
  sh_tls_ctx_t *sc = ctx_of(SH_TLS_SERVER, id, id), *cc = ctx_of(SH_TLS_CLIENT, id, other);
  int sv[2];
  nonblocking_pair(sv);
  sh_tls_t *s, *c;
  assert_int_equal(sh_tls_create(sc, sv[0], NULL, &s), 0);
  assert_int_equal(sh_tls_create(cc, sv[1], NULL, &c), 0);
  int rc = handshake_both(s, c, sv[0], sv[1]);
  assert_int_equal(rc, SH_ETLS);
  assert_non_null(strstr(sh_tls_error(c), "certificate was refused"));
  /* The server hears the client's alert. */
  assert_int_equal(sh_tls_handshake(s), SH_ETLS);
  assert_non_null(strstr(sh_tls_error(s), "refused this daemon's certificate"));
  /* Nothing more is tried after a failure. */
  assert_int_equal(sh_tls_send(c, sv[1], "x", 1), SH_ETLS);
  sh_tls_destroy(s);
  sh_tls_destroy(c);
  sh_tls_ctx_destroy(sc);
  sh_tls_ctx_destroy(cc);
  close(sv[0]);
  close(sv[1]);
  rm_identity(id);
  rm_identity(other);
}

static const struct CMUnitTest tests[] = {
    SH_TEST(ctx_refuses_bad_files),
    SH_TEST(plain_io_without_tls),
    SH_TEST(handshake_and_transfer_non_blocking),
    SH_TEST(untrusted_certificate_is_refused),
};

SH_TEST_MAIN(tests)
