/* TLS through OpenSSL. Sections: contexts (files, checks); connections;
 * non-blocking I/O; errors for people. */
#include "common/tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/frame.h"

struct sh_tls_ctx_s {
  SSL_CTX *ssl_ctx;
  sh_tls_side_t side;
  int verify_peer;    /* server: --tls-ca given, peers must present a certificate */
  char ca[256];       /* the CA file, for messages ("" when the system's) */
};

/* One connection. Invariant: after `failed` is set nothing but SSL_free
 * touches ssl (OpenSSL forbids I/O after a fatal error). */
struct sh_tls_s {
  SSL *ssl;
  sh_tls_side_t side;
  int rd_want, wr_want;  /* SH_TLS_READ / SH_TLS_WRITE */
  int failed;            /* a fatal error happened */
  uint64_t received;     /* bytes read from the socket */
  uint8_t first[4];      /* the first bytes the peer sent */
  char host[256];        /* client: the name the certificate must carry */
  char ca[256];          /* client: the CA file, for messages */
  char err[512];         /* the last failure, for people */
};

/* ---- contexts ---- */

/* OpenSSL's reason for the most recent error ("no start line", ...). */
static const char *ossl_reason(void) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  return r ? r : "unknown OpenSSL error";
}

/* 0 when `path` can be opened for reading, else -errno with err set. */
static int check_readable(const char *what, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (f) {
    fclose(f);
    return 0;
  }
  int rc = -errno;
  snprintf(err, errlen, "cannot read the TLS %s file %s: %s", what, path, strerror(-rc));
  return rc;
}

/* A key file with a passphrase cannot be used unattended: fail instead of
 * prompting on the terminal. */
static int no_passphrase_cb(char *buf, int size, int rwflag, void *u) { return -1; }

/* Loads the certificate chain and its key into ctx. 0 or SH_ETLS, err set. */
static int load_identity(SSL_CTX *ctx, const char *cert, const char *key, char *err,
                         size_t errlen) {
  if (check_readable("certificate", cert, err, errlen) ||
      check_readable("key", key, err, errlen))
    return SH_ETLS;
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
    snprintf(err, errlen, "the TLS certificate file %s holds no usable PEM certificate (%s)",
             cert, ossl_reason());
    return SH_ETLS;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
      snprintf(err, errlen, "the TLS key file %s does not belong to the certificate in %s",
               key, cert);
      return SH_ETLS;
    }
    snprintf(err, errlen, "the TLS key file %s holds no usable PEM private key (%s; a key "
             "protected by a passphrase cannot be used)", key, ossl_reason());
    return SH_ETLS;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    snprintf(err, errlen, "the TLS key file %s does not belong to the certificate in %s",
             key, cert);
    return SH_ETLS;
  }
  return 0;
}

/* Trusts the CA file `ca` (NULL: the system's store). 0 or SH_ETLS. */
static int load_ca(SSL_CTX *ctx, sh_tls_side_t side, const char *ca, char *err,
                   size_t errlen) {
  if (!ca) {
    if (SSL_CTX_set_default_verify_paths(ctx) == 1) return 0;
    snprintf(err, errlen, "cannot load the system's trusted certificates (%s); give a CA "
             "file", ossl_reason());
    return SH_ETLS;
  }
  if (check_readable("CA", ca, err, errlen)) return SH_ETLS;
  if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
    snprintf(err, errlen, "the TLS CA file %s holds no usable PEM certificate (%s)", ca,
             ossl_reason());
    return SH_ETLS;
  }
  if (side == SH_TLS_SERVER) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (names) SSL_CTX_set_client_CA_list(ctx, names);
  }
  return 0;
}

int sh_tls_ctx_create(sh_tls_side_t side, const char *cert, const char *key, const char *ca,
                      sh_tls_ctx_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (side == SH_TLS_SERVER && (!cert || !key)) {
    snprintf(err, errlen, "a TLS listener needs both a certificate and its key");
    return SH_ETLS;
  }
  if (!cert != !key) {
    snprintf(err, errlen, "a TLS certificate needs its key and a key its certificate "
             "(give both or neither)");
    return SH_ETLS;
  }
  SSL_CTX *ctx = SSL_CTX_new(side == SH_TLS_SERVER ? TLS_server_method() : TLS_client_method());
  if (!ctx) {
    snprintf(err, errlen, "cannot create a TLS context: %s", ossl_reason());
    return SH_ETLS;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  /* Partial writes: a write returns after each record, like write(2).
   * Moving buffer: the retry of a write that waited may come from a buffer
   * that was reallocated (or swapped) meanwhile, holding the same bytes. */
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  /* A peer that vanishes without close_notify is an end of stream: frames
   * carry their length, so a truncated one is still detected. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_default_passwd_cb(ctx, no_passphrase_cb);
  int rc = 0;
  if (cert) rc = load_identity(ctx, cert, key, err, errlen);
  if (!rc && (side == SH_TLS_CLIENT || ca)) rc = load_ca(ctx, side, ca, err, errlen);
  if (rc) {
    SSL_CTX_free(ctx);
    return rc;
  }
  if (side == SH_TLS_SERVER) {
    SSL_CTX_set_num_tickets(ctx, 0); /* no resumption: nothing after the handshake */
    if (ca) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  sh_tls_ctx_t *c = sh_calloc(1, sizeof *c);
  c->ssl_ctx = ctx;
  c->side = side;
  c->verify_peer = ca != NULL;
  snprintf(c->ca, sizeof c->ca, "%s", ca ? ca : "");
  *out = c;
  return 0;
}

void sh_tls_ctx_destroy(sh_tls_ctx_t *ctx) {
  if (!ctx) return;
  SSL_CTX_free(ctx->ssl_ctx);
  sh_free(ctx);
}

/* ---- connections ---- */

/* Counts what the socket BIO reads and keeps the first bytes: a peer that
 * sent nothing, or plain shoal frames, is told apart from a TLS failure. */
static long bio_cb(BIO *b, int oper, const char *argp, size_t len, int argi, long argl,
                   int ret, size_t *processed) {
  if (oper != (BIO_CB_READ | BIO_CB_RETURN) || ret <= 0 || !processed || !*processed)
    return ret;
  sh_tls_t *t = (sh_tls_t *)BIO_get_callback_arg(b);
  for (size_t i = 0; i < *processed && t->received + i < sizeof t->first; i++)
    t->first[t->received + i] = (uint8_t)argp[i];
  t->received += *processed;
  return ret;
}

/* Whether s is a numeric IPv4 or IPv6 address. */
static int is_ip(const char *s) {
  uint8_t buf[16];
  return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

int sh_tls_create(sh_tls_ctx_t *ctx, int fd, const char *host, sh_tls_t **out) {
  *out = NULL;
  SSL *ssl = SSL_new(ctx->ssl_ctx);
  if (!ssl) return -ENOMEM;
  if (SSL_set_fd(ssl, fd) != 1) {
    SSL_free(ssl);
    return -ENOMEM;
  }
  sh_tls_t *t = sh_calloc(1, sizeof *t);
  t->ssl = ssl;
  t->side = ctx->side;
  t->rd_want = SH_TLS_READ;
  t->wr_want = SH_TLS_WRITE;
  snprintf(t->ca, sizeof t->ca, "%s", ctx->ca);
  BIO *rbio = SSL_get_rbio(ssl);
  BIO_set_callback_arg(rbio, (char *)t);
  BIO_set_callback_ex(rbio, bio_cb);
  if (ctx->side == SH_TLS_SERVER) {
    SSL_set_accept_state(ssl);
  } else {
    snprintf(t->host, sizeof t->host, "%s", host ? host : "");
    int ok = 1;
    if (host && is_ip(host)) {
      ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    } else if (host) {
      ok = SSL_set1_host(ssl, host) && SSL_set_tlsext_host_name(ssl, host);
    }
    if (!ok) {
      sh_tls_destroy(t);
      return -ENOMEM;
    }
    SSL_set_connect_state(ssl);
  }
  *out = t;
  return 0;
}

void sh_tls_destroy(sh_tls_t *t) {
  if (!t) return;
  SSL_free(t->ssl);
  sh_free(t);
}

/* ---- errors for people ---- */

/* Writes into t->err why the connection failed, with what to change. */
static void describe(sh_tls_t *t, int sslerr, int sys) {
  unsigned long e = ERR_peek_last_error();
  int reason = e ? ERR_GET_REASON(e) : 0;
  long vr = SSL_get_verify_result(t->ssl);
  const char *client_hint = "give a certificate and key signed by the CA the daemon trusts "
                            "(tls_cert=/tls_key=, SHOAL_TLS_CERT/SHOAL_TLS_KEY, "
                            "--tls-cert/--tls-key)";
  if (t->received >= 4 && memcmp(t->first, "SHOL", 4) == 0) {
    snprintf(t->err, sizeof t->err, t->side == SH_TLS_CLIENT
             ? "the daemon does not use TLS (it answered in plain shoal frames): start it "
               "with --tls-cert and --tls-key, or connect without TLS"
             : "the peer speaks shoal without TLS, and this daemon requires TLS");
  } else if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED && vr != X509_V_OK) {
    const char *why = X509_verify_cert_error_string(vr);
    if (t->side == SH_TLS_SERVER)
      snprintf(t->err, sizeof t->err, "the peer's certificate was refused: %s (it must be "
               "signed by the CA of --tls-ca and valid now)", why);
    else if (vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH)
      snprintf(t->err, sizeof t->err, "the daemon's certificate was refused: %s: its "
               "subjectAltName does not name %s (connect with a name or address the "
               "certificate carries)", why, t->host);
    else
      snprintf(t->err, sizeof t->err, "the daemon's certificate was refused: %s (trusted "
               "CA: %s)", why, t->ca[0] ? t->ca : "the system's store; give the cluster's CA "
               "with tls_ca=, SHOAL_TLS_CA or --tls-ca");
  } else if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    snprintf(t->err, sizeof t->err, "the peer presented no certificate, and this daemon "
             "requires one signed by its --tls-ca (mutual TLS)");
  } else if (reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED) {
    snprintf(t->err, sizeof t->err, "the daemon requires a client certificate (mutual "
             "TLS): %s", client_hint);
  } else if (reason == SSL_R_TLSV1_ALERT_UNKNOWN_CA ||
             reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE ||
             reason == SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED ||
             reason == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN) {
    if (t->side == SH_TLS_SERVER)
      snprintf(t->err, sizeof t->err, "the peer refused this daemon's certificate (%s): it "
               "does not trust the CA that signed --tls-cert, or the certificate does not "
               "name the address it dialled", ossl_reason());
    else
      snprintf(t->err, sizeof t->err, "the daemon refused this client's certificate (%s): %s",
               ossl_reason(), client_hint);
  } else if (e) {
    snprintf(t->err, sizeof t->err, "%s%s", ossl_reason(),
             t->received && t->side == SH_TLS_SERVER && !sh_tls_looks_like_tls(t->first, 2)
                 ? " (the peer does not speak TLS)" : "");
  } else if (sslerr == SSL_ERROR_SYSCALL && sys) {
    snprintf(t->err, sizeof t->err, "%s", strerror(sys));
  } else {
    snprintf(t->err, sizeof t->err, "the peer closed the connection during the TLS "
             "handshake%s", t->side == SH_TLS_CLIENT ? " (it may require a client "
             "certificate, or not use TLS)" : "");
  }
  ERR_clear_error();
}

const char *sh_tls_error(const sh_tls_t *t) { return t ? t->err : "no TLS"; }

int sh_tls_looks_like_tls(const uint8_t *p, size_t n) {
  return n >= 1 && p[0] == 0x16 && (n < 2 || p[1] == 0x03);
}

/* ---- non-blocking I/O ---- */

/* Maps an SSL_get_error result: -EAGAIN with *want set, 0 for a clean end
 * of stream, or a failure. */
static int io_fail(sh_tls_t *t, int ret, int *want) {
  int sys = errno;
  int err = SSL_get_error(t->ssl, ret);
  switch (err) {
    case SSL_ERROR_WANT_READ: *want = SH_TLS_READ; return -EAGAIN;
    case SSL_ERROR_WANT_WRITE: *want = SH_TLS_WRITE; return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
      if (SSL_is_init_finished(t->ssl)) return 0;
      break;
    default: break;
  }
  t->failed = 1;
  if (err == SSL_ERROR_SYSCALL && ERR_peek_last_error() == 0 && sys && sys != EAGAIN &&
      SSL_is_init_finished(t->ssl)) {
    ERR_clear_error();
    return -sys;
  }
  describe(t, err, err == SSL_ERROR_SYSCALL ? sys : 0);
  return SH_ETLS;
}

int sh_tls_handshake(sh_tls_t *t) {
  if (SSL_is_init_finished(t->ssl)) return 0;
  if (t->failed) return SH_ETLS;
  ERR_clear_error();
  int r = SSL_do_handshake(t->ssl);
  if (r == 1) {
    t->rd_want = SH_TLS_READ;
    t->wr_want = SH_TLS_WRITE;
    return 0;
  }
  int want = SH_TLS_READ;
  int rc = io_fail(t, r, &want);
  if (rc == -EAGAIN) t->rd_want = t->wr_want = want;
  return rc == 0 ? SH_ETLS : rc;
}

int sh_tls_ready(const sh_tls_t *t) { return !t || SSL_is_init_finished(t->ssl); }

ssize_t sh_tls_recv(sh_tls_t *t, int fd, void *p, size_t n) {
  if (!t) {
    for (;;) {
      ssize_t k = read(fd, p, n);
      if (k >= 0) return k;
      if (errno == EINTR) continue;
      return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
  }
  if (t->failed) return SH_ETLS;
  size_t got = 0;
  ERR_clear_error();
  int r = SSL_read_ex(t->ssl, p, n, &got);
  if (r == 1) {
    t->rd_want = SH_TLS_READ;
    return (ssize_t)got;
  }
  return io_fail(t, r, &t->rd_want);
}

ssize_t sh_tls_send(sh_tls_t *t, int fd, const void *p, size_t n) {
  if (!t) {
    for (;;) {
      ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
      if (k >= 0) return k;
      if (errno == EINTR) continue;
      return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
  }
  if (t->failed) return SH_ETLS;
  size_t put = 0;
  ERR_clear_error();
  int r = SSL_write_ex(t->ssl, p, n, &put);
  if (r == 1) {
    t->wr_want = SH_TLS_WRITE;
    return (ssize_t)put;
  }
  int rc = io_fail(t, r, &t->wr_want);
  return rc == 0 ? -EPIPE : rc;
}

int sh_tls_rd_want(const sh_tls_t *t) { return t ? t->rd_want : SH_TLS_READ; }
int sh_tls_wr_want(const sh_tls_t *t) { return t ? t->wr_want : SH_TLS_WRITE; }
size_t sh_tls_pending(const sh_tls_t *t) {
  return t && !t->failed ? (size_t)SSL_pending(t->ssl) : 0;
}
uint64_t sh_tls_received(const sh_tls_t *t) { return t ? t->received : 0; }

void sh_tls_shutdown(sh_tls_t *t) {
  if (!t || t->failed || !SSL_is_init_finished(t->ssl)) return;
  ERR_clear_error();
  SSL_shutdown(t->ssl);
  ERR_clear_error();
}
