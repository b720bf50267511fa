/* The driver's side of the wire: connecting, the cluster-token handshake (TCP)
 * and HELLO, and the one I/O thread per client that writes batched frames and
 * dispatches what the daemon sends.
 *
 * Sections: addresses and connecting; the handshake; the I/O thread (write,
 * read, dispatch, exit). */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/auth.h"
#include "common/tls.h"

/* ---- addresses and connecting ---- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits until fd is ready for `ev` or the deadline passes. 0, -ETIMEDOUT or
 * -errno. */
static int wait_fd(int fd, short ev, double deadline) {
  for (;;) {
    double left = deadline - now_s();
    if (left <= 0) return -ETIMEDOUT;
    struct pollfd p = {.fd = fd, .events = ev};
    int n = poll(&p, 1, (int)(left * 1000) + 1);
    if (n > 0) return 0;
    if (n < 0 && errno != EINTR) return -errno;
  }
}

/* poll events for SH_TLS_READ / SH_TLS_WRITE bits. */
static short poll_events(int tls_events) {
  return (short)((tls_events & SH_TLS_READ ? POLLIN : 0) |
                 (tls_events & SH_TLS_WRITE ? POLLOUT : 0));
}

/* Reads from the daemon (through TLS when c has it, under tls_mu): as
 * sh_tls_recv. Any thread. */
static ssize_t c_recv(sh_client_obj_t *c, void *p, size_t n) {
  if (!c->tls && c->lanes) return sh_recv_fds(c->fd, p, n, 0, &c->fdq); /* LANE GRANTs */
  if (!c->tls) return sh_tls_recv(NULL, c->fd, p, n);
  pthread_mutex_lock(&c->tls_mu);
  ssize_t r = sh_tls_recv(c->tls, c->fd, p, n);
  pthread_mutex_unlock(&c->tls_mu);
  return r;
}

/* Writes to the daemon: as sh_tls_send. Any thread. */
static ssize_t c_send(sh_client_obj_t *c, const void *p, size_t n) {
  if (!c->tls) return sh_tls_send(NULL, c->fd, p, n);
  pthread_mutex_lock(&c->tls_mu);
  ssize_t r = sh_tls_send(c->tls, c->fd, p, n);
  pthread_mutex_unlock(&c->tls_mu);
  return r;
}

/* The poll events the next read / write waits for. */
static short rd_events(sh_client_obj_t *c) {
  if (!c->tls) return POLLIN;
  pthread_mutex_lock(&c->tls_mu);
  int w = sh_tls_rd_want(c->tls);
  pthread_mutex_unlock(&c->tls_mu);
  return poll_events(w);
}

static short wr_events(sh_client_obj_t *c) {
  if (!c->tls) return POLLOUT;
  pthread_mutex_lock(&c->tls_mu);
  int w = sh_tls_wr_want(c->tls);
  pthread_mutex_unlock(&c->tls_mu);
  return poll_events(w);
}

/* Whether decrypted bytes wait to be read: the socket may never become
 * readable for them, so nobody may poll before reading them. */
static int tls_pending(sh_client_obj_t *c) {
  if (!c->tls) return 0;
  pthread_mutex_lock(&c->tls_mu);
  size_t n = sh_tls_pending(c->tls);
  pthread_mutex_unlock(&c->tls_mu);
  return n > 0;
}

/* Text for a failed read or write: the TLS reason, or the error's. */
static const char *io_strerror(sh_client_obj_t *c, int rc) {
  return rc == SH_ETLS && c->tls ? sh_tls_error(c->tls) : sh_strerror(rc);
}

/* Connects a nonblocking socket to one address. 0 or -errno. */
static int connect_one(int fd, const struct sockaddr *sa, socklen_t len,
                       double deadline) {
  if (connect(fd, sa, len) == 0) return 0;
  if (errno != EINPROGRESS && errno != EAGAIN && errno != EINTR) return -errno;
  int rc = wait_fd(fd, POLLOUT, deadline);
  if (rc) return rc;
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) return -errno;
  return soerr ? -soerr : 0;
}

static int connect_unix(const char *path, double deadline, int *out) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) return -ENAMETOOLONG;
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int rc = connect_one(fd, (struct sockaddr *)&sa, sizeof sa, deadline);
  if (rc) {
    close(fd);
    return rc;
  }
  *out = fd;
  return 0;
}

static int connect_tcp(const char *host, const char *port, double deadline,
                       int *out) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res;
  int gai = getaddrinfo(host, port, &hints, &res);
  if (gai) return gai == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
  int rc = -ECONNREFUSED;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    a->ai_protocol);
    if (fd < 0) {
      rc = -errno;
      continue;
    }
    rc = connect_one(fd, a->ai_addr, a->ai_addrlen, deadline);
    if (rc == 0) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      *out = fd;
      break;
    }
    close(fd);
    if (rc == -ETIMEDOUT) break;
  }
  freeaddrinfo(res);
  return rc;
}

/* Splits "HOST:PORT" ("[V6]:PORT" too) when PORT is all digits and the
 * address names no path. Returns 1 and fills host/port, or 0 for a path. */
static int split_tcp(const char *a, char *host, size_t hostlen, char *port) {
  if (strchr(a, '/')) return 0;
  const char *colon = strrchr(a, ':');
  if (!colon || colon == a || !colon[1] || strlen(colon + 1) > 5) return 0;
  for (const char *p = colon + 1; *p; p++)
    if (*p < '0' || *p > '9') return 0;
  size_t n = (size_t)(colon - a);
  if (a[0] == '[' && colon[-1] == ']') {
    a++;
    n -= 2;
  }
  if (n == 0 || n >= hostlen) return 0;
  memcpy(host, a, n);
  host[n] = 0;
  strcpy(port, colon + 1);
  return 1;
}

/* Connects to "unix:PATH", a socket path or "HOST:PORT". */
static int connect_address(const char *address, double deadline, int *fd,
                           int *is_tcp) {
  char host[256], port[8];
  *is_tcp = 0;
  if (strncmp(address, "unix:", 5) == 0) return connect_unix(address + 5, deadline, fd);
  if (split_tcp(address, host, sizeof host, port)) {
    *is_tcp = 1;
    return connect_tcp(host, port, deadline, fd);
  }
  return connect_unix(address, deadline, fd);
}

/* ---- the handshake ---- */

static int write_all(sh_client_obj_t *c, const uint8_t *p, size_t n, double deadline) {
  while (n) {
    ssize_t w = c_send(c, p, n);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
    } else if (w == -EAGAIN) {
      int rc = wait_fd(c->fd, wr_events(c), deadline);
      if (rc) return rc;
    } else {
      return w < 0 ? (int)w : -EPIPE;
    }
  }
  return 0;
}

/* Reads until one whole frame of at most `max` body bytes is in c->rbuf. 0
 * with *f set, or an error (-ECONNRESET for end of file). */
static int read_frame(sh_client_obj_t *c, sh_frame_t *f, size_t *used,
                      size_t max, double deadline) {
  for (;;) {
    int rc = sh_frame_parse(sh_buf_head(&c->rbuf), sh_buf_avail(&c->rbuf),
                            max, f, used);
    if (rc == 1) return 0;
    if (rc < 0) return rc;
    rc = sh_buf_reserve(&c->rbuf, *used > 4096 ? *used : 4096);
    if (rc) return rc;
    ssize_t n = c_recv(c, c->rbuf.data + c->rbuf.len, c->rbuf.cap - c->rbuf.len);
    if (n > 0) {
      c->rbuf.len += (size_t)n;
    } else if (n == 0) {
      return -ECONNRESET;
    } else if (n == -EAGAIN) {
      rc = wait_fd(c->fd, rd_events(c), deadline);
      if (rc) return rc;
    } else {
      return (int)n;
    }
  }
}

/* Largest frame body read before the daemon proved it holds the token: the
 * handshake frames and an ERROR fit; an impostor cannot make us allocate. */
#define PRE_AUTH_MAX_BODY 65536

/* Reads the next frame, which must be of type `want`; on success the caller
 * consumes `*used` bytes from rbuf. An ERROR frame (the daemon refused us) or
 * another type is an error with a message in err: SH_EAUTH for a refused
 * token, -ECONNREFUSED for another refusal, SH_EBODY for a wrong type. */
static int read_expect(sh_client_obj_t *c, unsigned want, const sh_auth_token_t *tok,
                       sh_frame_t *f, size_t *used, double deadline, char *err,
                       size_t errlen) {
  int rc = read_frame(c, f, used, tok ? PRE_AUTH_MAX_BODY : SH_CLIENT_MAX_BODY, deadline);
  if (rc || f->hdr.type == want) return rc;
  if (f->hdr.type == SH_MSG_ERROR && f->hdr.len >= 4 &&
      (int32_t)sh_get_u32(f->body) == SH_EAUTH && tok) {
    snprintf(err, errlen, "the shoal daemon at %s refused the connection: %.*s. This "
             "client used the cluster token from %s; use the token of the cluster's head "
             "(the file `shoal start` printed) through shoal.init(token=...), SHOAL_TOKEN, "
             "SHOAL_TOKEN_FILE or ~/.shoal/token", c->addr, (int)(f->hdr.len - 4),
             (const char *)f->body + 4, tok->where);
    return SH_EAUTH;
  }
  if (f->hdr.type == SH_MSG_ERROR && f->hdr.len >= 4) {
    snprintf(err, errlen, "the shoal daemon at %s refused the connection: %.*s",
             c->addr, (int)(f->hdr.len - 4), (const char *)f->body + 4);
    return (int32_t)sh_get_u32(f->body) == SH_ETLS ? SH_ETLS : -ECONNREFUSED;
  }
  snprintf(err, errlen, "the shoal daemon at %s sent %s where %s was expected "
           "(a different shoal version?)", c->addr, sh_msg_name(f->hdr.type),
           sh_msg_name(want));
  return SH_EBODY;
}

/* Answers the daemon's challenge: appends our AUTH_RESPONSE to b and keeps
 * both nonces for checking the daemon's proof. 0 or an error, err set. */
static int answer_challenge(sh_client_obj_t *c, const sh_auth_token_t *tok, sh_buf_t *b,
                            uint8_t *sn, uint8_t *cn, double deadline, char *err,
                            size_t errlen) {
  sh_frame_t f;
  size_t used = 0;
  uint8_t mac[SH_AUTH_MAC];
  int rc = read_expect(c, SH_MSG_AUTH_CHALLENGE, tok, &f, &used, deadline, err, errlen);
  if (rc) return rc;
  if (sh_auth_challenge_decode(f.body, f.hdr.len, sn)) {
    snprintf(err, errlen, "the shoal daemon at %s sent a token challenge this client "
             "does not understand (a different shoal version?)", c->addr);
    return SH_EBODY;
  }
  sh_buf_consume(&c->rbuf, used);
  rc = sh_auth_random(cn, SH_AUTH_NONCE);
  if (!rc) rc = sh_auth_proof(tok, SH_AUTH_CLIENT, sn, cn, mac);
  if (!rc) rc = sh_auth_response_append(b, cn, mac);
  return rc;
}

/* Checks the daemon's AUTH_OK: mutual authentication, so nothing but HELLO
 * ever goes to a peer that does not hold the token. */
static int check_daemon_proof(sh_client_obj_t *c, const sh_auth_token_t *tok,
                              const uint8_t *sn, const uint8_t *cn, double deadline,
                              char *err, size_t errlen) {
  sh_frame_t f;
  size_t used = 0;
  uint8_t mac[SH_AUTH_MAC];
  int rc = read_expect(c, SH_MSG_AUTH_OK, tok, &f, &used, deadline, err, errlen);
  if (rc) return rc;
  if (sh_auth_ok_decode(f.body, f.hdr.len, mac) ||
      !sh_auth_verify(tok, SH_AUTH_SERVER, sn, cn, mac)) {
    snprintf(err, errlen, "the shoal daemon at %s did not prove that it holds the cluster "
             "token from %s: it is not this cluster's head, or it uses another token. "
             "Nothing was sent to it", c->addr, tok->where);
    return SH_EAUTH;
  }
  sh_buf_consume(&c->rbuf, used);
  return 0;
}

/* HELLO and HELLO_OK; over TCP (tok not NULL) the token handshake comes
 * first, its answer written together with HELLO (one round trip less). */
static int handshake(sh_client_obj_t *c, unsigned hello_flags, const sh_auth_token_t *tok,
                     sh_hello_ok_t *ok, double deadline, char *err, size_t errlen) {
  sh_hello_t h = {.role = SH_ROLE_DRIVER, .pid = (uint32_t)getpid(), .flags = hello_flags,
                  .client_id = hello_flags & SH_HELLO_RESUME ? (uint32_t)c->client_id : 0};
  uint8_t sn[SH_AUTH_NONCE], cn[SH_AUTH_NONCE];
  sh_buf_t b;
  sh_buf_init(&b);
  int rc = tok ? answer_challenge(c, tok, &b, sn, cn, deadline, err, errlen) : 0;
  if (!rc) rc = sh_hello_append(&b, &h);
  if (!rc) rc = write_all(c, b.data, b.len, deadline);
  sh_buf_close(&b);
  if (!rc && tok) rc = check_daemon_proof(c, tok, sn, cn, deadline, err, errlen);
  sh_frame_t f;
  size_t used = 0;
  if (!rc) rc = read_expect(c, SH_MSG_HELLO_OK, NULL, &f, &used, deadline, err, errlen);
  if (rc) return rc;
  rc = sh_hello_ok_decode(f.body, f.hdr.len, ok);
  if (!rc && ok->client_id == 0) rc = SH_EBODY;
  sh_buf_consume(&c->rbuf, used);
  return rc;
}

/* Whether `address` names a TCP endpoint (see connect_address). */
int sh_client_address_is_tcp(const char *address) {
  char host[256], port[8];
  return strncmp(address, "unix:", 5) != 0 && split_tcp(address, host, sizeof host, port);
}

/* The token a TCP connection proves it holds: `token` when given, else the
 * lookup of sh_auth_token_find. 0, or an error with err set. */
static int client_token(const char *address, const char *token, sh_auth_token_t *tok,
                        char *err, size_t errlen) {
  char why[4400];
  int rc = token ? sh_auth_token_set(tok, token, strlen(token),
                                     "the token passed to shoal.init(token=...)", why, sizeof why)
                 : sh_auth_token_find(NULL, 0, tok, why, sizeof why);
  if (rc)
    snprintf(err, errlen, "connecting to the shoal cluster at %s needs its cluster token: %s",
             address, why);
  return rc;
}

/* The message for a connection that could not be made (rc from
 * connect_address). */
static void connect_error(const char *address, double timeout, int is_tcp, int rc,
                          char *err, size_t errlen) {
  if (rc == -ENOENT || rc == -ECONNREFUSED || rc == -ENOTDIR)
    snprintf(err, errlen,
             "could not connect to the shoal daemon at %s: %s. Nothing is "
             "listening there: start a cluster with `shoal start --head` (or "
             "call shoal.init() without an address for a private one), or "
             "check the address", address, sh_strerror(rc));
  else if (rc == -ETIMEDOUT)
    snprintf(err, errlen, "timed out after %gs connecting to the shoal daemon "
             "at %s: is it overloaded or stopped?", timeout, address);
  else
    snprintf(err, errlen, "could not connect to the shoal daemon at %s: %s%s",
             address, rc == -EHOSTUNREACH && is_tcp ? "unknown host" : sh_strerror(rc),
             rc == -ENAMETOOLONG ? " (socket paths are limited to 107 bytes)" : "");
}

/* The message for a handshake that failed without saying why itself. */
static void handshake_error(sh_client_obj_t *c, const char *address, double timeout, int rc,
                            char *err, size_t errlen) {
  if (rc == SH_ETLS)
    snprintf(err, errlen, "TLS with the shoal daemon at %s failed: %s", address,
             io_strerror(c, rc));
  else if (rc == -ETIMEDOUT && c->tls && !sh_tls_ready(c->tls))
    snprintf(err, errlen, "timed out after %gs in the TLS handshake with the shoal daemon "
             "at %s: is it a shoal daemon, and is it responsive?", timeout, address);
  else if (rc == -ETIMEDOUT)
    snprintf(err, errlen, "timed out after %gs waiting for the shoal daemon "
             "at %s to answer the handshake: is it a shoal daemon, and is it "
             "responsive?", timeout, address);
  else
    snprintf(err, errlen, "handshake with the shoal daemon at %s failed: %s",
             address, rc == -ECONNRESET ? "it closed the connection" : sh_strerror(rc));
}

/* The TLS context for a TCP connection to `address`: NULL in *out when no
 * TLS file is given (arguments first, then $SHOAL_TLS_CA, $SHOAL_TLS_CERT,
 * $SHOAL_TLS_KEY). 0, or SH_ETLS with err set. */
static int client_tls_ctx(const char *address, const sh_client_tls_t *tls, sh_tls_ctx_t **out,
                          char *err, size_t errlen) {
  const char *f[3] = {tls ? tls->ca : NULL, tls ? tls->cert : NULL, tls ? tls->key : NULL};
  static const char *const env[3] = {"SHOAL_TLS_CA", "SHOAL_TLS_CERT", "SHOAL_TLS_KEY"};
  *out = NULL;
  for (int i = 0; i < 3; i++)
    if (!f[i] || !*f[i]) f[i] = getenv(env[i]) && *getenv(env[i]) ? getenv(env[i]) : NULL;
  if (!f[0] && !f[1] && !f[2]) return 0;
  char why[1024];
  if (!sh_tls_ctx_create(SH_TLS_CLIENT, f[1], f[2], f[0], out, why, sizeof why)) return 0;
  snprintf(err, errlen, "connecting to the shoal cluster at %s with TLS: %s", address, why);
  return SH_ETLS;
}

/* Starts TLS on c->fd and completes its handshake by the deadline; the
 * daemon's certificate must name the host of `address`. 0 or an error. */
static int start_tls(sh_client_obj_t *c, sh_tls_ctx_t *ctx, const char *address,
                     double deadline) {
  char host[256], port[8];
  split_tcp(address, host, sizeof host, port);
  int rc = sh_tls_create(ctx, c->fd, host, &c->tls);
  while (!rc && (rc = sh_tls_handshake(c->tls)) == -EAGAIN)
    rc = wait_fd(c->fd, poll_events(sh_tls_rd_want(c->tls)), deadline);
  return rc;
}

/* sh_client_connect without the eventfd: also what a reconnect does. */
static int connect_hello(sh_client_obj_t *c, const char *address, double timeout,
                         unsigned hello_flags, const char *token, const sh_client_tls_t *tls,
                         sh_hello_ok_t *ok, char *err, size_t errlen) {
  double deadline = now_s() + timeout;
  int is_tcp;
  err[0] = 0;
  sh_auth_token_t tok = {.len = 0};
  sh_tls_ctx_t *ctx = NULL;
  /* The token and TLS files first: a missing one is reported without
   * connecting. */
  if (sh_client_address_is_tcp(address) && client_token(address, token, &tok, err, errlen))
    return SH_EAUTH;
  if (sh_client_address_is_tcp(address) && client_tls_ctx(address, tls, &ctx, err, errlen)) {
    sh_auth_token_clear(&tok);
    return SH_ETLS;
  }
  int rc = connect_address(address, deadline, &c->fd, &is_tcp);
  if (rc) {
    connect_error(address, timeout, is_tcp, rc, err, errlen);
    sh_auth_token_clear(&tok);
    sh_tls_ctx_destroy(ctx);
    return rc;
  }
  if (ctx) rc = start_tls(c, ctx, address, deadline);
  sh_tls_ctx_destroy(ctx); /* the connection keeps what it needs */
  if (!rc) rc = handshake(c, hello_flags, is_tcp ? &tok : NULL, ok, deadline, err, errlen);
  sh_auth_token_clear(&tok);
  if (rc && !err[0]) handshake_error(c, address, timeout, rc, err, errlen);
  return rc;
}

int sh_client_connect(sh_client_obj_t *c, const char *address, double timeout,
                      unsigned hello_flags, const char *token, const sh_client_tls_t *tls,
                      sh_hello_ok_t *ok, char *err, size_t errlen) {
  int rc = connect_hello(c, address, timeout, hello_flags, token, tls, ok, err, errlen);
  if (!rc) {
    c->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->evfd < 0) {
      rc = -errno;
      snprintf(err, errlen, "eventfd: %s", sh_strerror(rc));
    }
  }
  return rc;
}

/* ---- the I/O thread ---- */

void sh_client_wake(sh_client_obj_t *c) {
  uint64_t one = 1;
  ssize_t w = write(c->evfd, &one, sizeof one);
  (void)w; /* EAGAIN: the counter is saturated, the thread wakes anyway */
}

int sh_client_on_io_thread(const sh_client_obj_t *c) {
  return c->joinable && pthread_equal(pthread_self(), c->thread);
}

/* Appends queued RELEASE ids to c->out as one frame (out_mu held). On
 * -ENOMEM they stay queued for a later turn. */
/* Appends one RELEASE frame of ids; 0 or -ENOMEM (ids kept for later). */
static int append_release(sh_client_obj_t *c, unsigned flags, const uint64_t *ids, size_t n) {
  long at = sh_frame_begin(&c->out, SH_MSG_RELEASE, flags, 0);
  if (at < 0) return (int)at;
  if (sh_buf_reserve(&c->out, n * 8)) {
    sh_frame_abort(&c->out, at);
    return -ENOMEM;
  }
  const uint8_t *body = c->out.data + c->out.len;
  for (size_t i = 0; i < n; i++) sh_put_u64(c->out.data + c->out.len + 8 * i, ids[i]);
  c->out.len += n * 8;
  sh_frame_finish(&c->out, at);
  /* A head that dies before it reads them is sent them again (see
   * hold_recent_locked); a node agent does not restart. */
  if (c->reconnect_timeout > 0) sh_client_note_recent_locked(c, SH_MSG_RELEASE, flags, 0, body, n * 8);
  return 0;
}

void sh_client_flush_releases_locked(sh_client_obj_t *c) {
  if (c->reconnecting) return; /* they follow the replay: see resend */
  if (c->nrel && !append_release(c, 0, c->rel, c->nrel)) c->nrel = 0;
  if (c->nunmap && !append_release(c, SH_RELEASE_UNMAP, c->unmap, c->nunmap)) c->nunmap = 0;
}

/* Takes what producers appended (out_mu held). Returns whether there is
 * something to write; clears `awake` when there is not. */
static int take_output_locked(sh_client_obj_t *c) {
  c->writing = 0;
  if (sh_buf_avail(&c->wbuf) == 0) {
    sh_client_flush_releases_locked(c);
    if (c->out.len) {
      sh_buf_t t = c->wbuf;
      c->wbuf = c->out;
      c->out = t;
      sh_buf_reset(&c->out);
    }
  }
  if (sh_buf_avail(&c->wbuf)) {
    c->writing = 1;
    return 1;
  }
  c->awake = 0;
  return 0;
}

/* Writes as much of wbuf as the socket takes. 0 or -errno. */
static int write_some(sh_client_obj_t *c) {
  while (sh_buf_avail(&c->wbuf)) {
    ssize_t w = c_send(c, sh_buf_head(&c->wbuf), sh_buf_avail(&c->wbuf));
    if (w > 0) sh_buf_consume(&c->wbuf, (size_t)w);
    else if (w == -EAGAIN) return 0;
    else return w < 0 ? (int)w : -EPIPE;
  }
  /* Keep the capacity (reallocating per batch costs page faults) unless a
   * one-off huge frame made it big. */
  if (c->wbuf.cap > SH_CLIENT_KEEP_BUF) sh_buf_close(&c->wbuf);
  return 0;
}

/* Reads what is available, up to a few MiB per turn. Returns 0, 1 at end of
 * file, or a negative code. Decrypted TLS bytes may be left for the next
 * turn (tls_pending says so). */
static int read_some(sh_client_obj_t *c, size_t want) {
  size_t got = 0;
  while (got < (4u << 20)) {
    if (sh_buf_reserve(&c->rbuf, want > 65536 ? want : 65536)) return -ENOMEM;
    size_t room = c->rbuf.cap - c->rbuf.len;
    ssize_t n = c_recv(c, c->rbuf.data + c->rbuf.len, room);
    if (n > 0) {
      c->rbuf.len += (size_t)n;
      got += (size_t)n;
      /* A short plain read emptied the socket; a TLS read returns one
       * record at a time, so only -EAGAIN says it is empty. */
      if ((size_t)n < room && !c->tls) return 0;
    } else if (n == 0) {
      return 1;
    } else {
      return n == -EAGAIN ? 0 : (int)n;
    }
  }
  return 0;
}

/* Writes each line of an OUTPUT frame to sys.stdout or sys.stderr with a
 * "(worker pid=N) " prefix (GIL held). Output problems are not the task's:
 * errors are dropped. */
static void write_output(sh_client_obj_t *c, const uint8_t *body, size_t len) {
  uint32_t pid = sh_get_u32(body), stream = sh_get_u32(body + 4);
  const uint8_t *p = body + 8, *end = body + len;
  char prefix[40];
  int plen = snprintf(prefix, sizeof prefix, "(worker pid=%u) ", pid);
  size_t lines = 1;
  for (const uint8_t *q = p; q < end; q++) lines += *q == '\n';
  char *buf = sh_try_malloc((size_t)(end - p) + lines * (size_t)plen + 1);
  if (!buf) return;
  size_t n = 0;
  while (p < end) {
    const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
    size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
    memcpy(buf + n, prefix, (size_t)plen);
    memcpy(buf + n + plen, p, l);
    n += (size_t)plen + l;
    buf[n++] = '\n';
    p += l + (nl != NULL);
  }
  PyObject *text = PyUnicode_DecodeUTF8(buf, (Py_ssize_t)n, "replace");
  sh_free(buf);
  PyObject *f = PySys_GetObject(stream == SH_STREAM_STDERR ? "stderr" : "stdout");
  if (text && f && f != Py_None) {
    Py_INCREF(f); /* user code run by write() may rebind sys.stdout */
    PyObject *r = PyObject_CallMethodOneArg(f, c->st->s_write, text);
    Py_XDECREF(r);
    r = r ? PyObject_CallMethodNoArgs(f, c->st->s_flush) : NULL;
    Py_XDECREF(r);
    Py_DECREF(f);
  }
  Py_XDECREF(text);
  PyErr_Clear();
}

static int needs_gil(unsigned type) {
  return type == SH_MSG_RESULT || type == SH_MSG_OUTPUT || type == SH_MSG_LANE;
}

/* Handles one frame. 0, or SH_EBODY for a body that does not decode. */
static int handle_frame(sh_client_obj_t *c, const sh_frame_t *f) {
  const uint8_t *b = f->body;
  uint32_t len = f->hdr.len;
  switch (f->hdr.type) {
    case SH_MSG_RESULT: {
      sh_result_t r;
      if (sh_result_decode(b, len, &r)) return SH_EBODY;
      sh_client_complete(c, f->hdr.id, &r);
      return 0;
    }
    case SH_MSG_OUTPUT:
      if (len < 8) return SH_EBODY;
      write_output(c, b, len);
      return 0;
    case SH_MSG_LANE:
      sh_lane_frame(c, f);
      return 0;
    case SH_MSG_ERROR:
      if (len < 4) return SH_EBODY;
      snprintf(c->err_text, sizeof c->err_text, "%.*s", (int)(len - 4), (const char *)b + 4);
      return 0;
    case SH_MSG_CANCEL_REPLY:
    case SH_MSG_PUT_REPLY:
      if (len < 4) return SH_EBODY;
      sh_client_deliver(c, f->hdr.type, f->hdr.id, b, len);
      return 0;
    case SH_MSG_MAP_REPLY:
      if (len < 12) return SH_EBODY;
      /* fall through */
    case SH_MSG_STATUS_REPLY:
      sh_client_deliver(c, f->hdr.type, f->hdr.id, b, len);
      return 0;
    default:
      return 0; /* valid but not for drivers: ignored */
  }
}

/* Dispatches every whole frame in rbuf, taking the GIL at most once. Returns
 * 0, or a negative SH_E* code with *what naming the bad frame. *want is set
 * to the bytes the next incomplete frame needs. */
static int dispatch(sh_client_obj_t *c, PyThreadState **ts, size_t *want,
                    const char **what) {
  int rc;
  *want = 0;
  size_t ahead = 0; /* bytes from the head whose RESULTs were prefetched */
  int nahead = 0;
  for (;;) {
    sh_frame_t f;
    size_t used;
    rc = sh_frame_parse(sh_buf_head(&c->rbuf), sh_buf_avail(&c->rbuf),
                        SH_CLIENT_MAX_BODY, &f, &used);
    if (rc <= 0) {
      if (rc == 0) *want = used - sh_buf_avail(&c->rbuf);
      break;
    }
    if (needs_gil(f.hdr.type) && *ts) {
      PyEval_RestoreThread(*ts);
      *ts = NULL;
    }
    /* With the GIL (pending is the submitting threads' too): the pending
     * slots of the next RESULTs start loading (a big map misses the cache). */
    size_t avail = sh_buf_avail(&c->rbuf);
    while (!*ts && nahead < 8 && ahead + SH_FRAME_HDR <= avail) {
      const uint8_t *p = sh_buf_head(&c->rbuf) + ahead;
      size_t whole = SH_FRAME_HDR + (size_t)sh_get_u32(p + 16);
      if (whole > avail - ahead) break;
      if (p[5] == SH_MSG_RESULT) sh_map_prefetch(&c->pending, sh_get_u64(p + 8));
      ahead += whole;
      nahead++;
    }
    rc = handle_frame(c, &f);
    sh_buf_consume(&c->rbuf, used);
    if (nahead > 0) {
      ahead = ahead > used ? ahead - used : 0;
      nahead--;
    }
    if (rc) {
      *what = sh_msg_name(f.hdr.type);
      break;
    }
  }
  if (!*ts) *ts = PyEval_SaveThread();
  return rc < 0 ? rc : 0;
}

/* Reads and dispatches what the socket has. Returns 0, or a negative code
 * with `reason` filled when the connection is over. */
static int read_turn(sh_client_obj_t *c, PyThreadState **ts, char *reason,
                     size_t rlen) {
  int rc = read_some(c, c->want);
  const char *what = NULL;
  int drc = dispatch(c, ts, &c->want, &what);
  if (drc < 0) {
    if (what)
      snprintf(reason, rlen, "it sent a %s frame whose body does not decode", what);
    else
      snprintf(reason, rlen, "it sent a malformed frame: %s", sh_strerror(drc));
    return drc;
  }
  if (rc == 0) return 0;
  if (c->err_text[0])
    snprintf(reason, rlen, "%s", c->err_text);
  else if (rc == 1)
    snprintf(reason, rlen, "the daemon closed the connection (it stopped or crashed)");
  else
    snprintf(reason, rlen, "reading from it failed: %s", io_strerror(c, rc));
  return rc == 1 ? -ECONNRESET : rc;
}

/* One turn: write what is queued, sleep in poll, read and dispatch. Returns 0
 * to go on, 1 when asked to stop, or a negative code with `reason` filled
 * for a lost connection. */
static int io_turn(sh_client_obj_t *c, PyThreadState **ts, char *reason,
                   size_t rlen) {
  pthread_mutex_lock(&c->out_mu);
  int stop = c->stop, writing = stop ? 0 : take_output_locked(c);
  /* A task just sent down the lane: its caller most likely reads the result
   * (sh_client_wait_io), and watching the lane here too would wake this
   * thread for it; it looks every millisecond instead, and watches the lane
   * once the task has run for SH_CLIENT_LANE_WATCH_NS (a caller that did not
   * wait, or a long task). */
  int lane_busy = 0;
  if (c->lane_task) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    lane_busy = ns - c->lane_sent_ns < SH_CLIENT_LANE_WATCH_NS;
  }
  pthread_mutex_unlock(&c->out_mu);
  if (stop) return 1;
  int timeout = SH_CLIENT_TICK_MS, rc;
  if (writing) {
    if ((rc = write_some(c)) < 0) {
      /* The daemon may have said why before it closed: read that first. */
      if (read_turn(c, ts, reason, rlen) == 0 || !c->err_text[0])
        snprintf(reason, rlen, "writing to it failed: %s", io_strerror(c, rc));
      return rc;
    }
    if (sh_buf_avail(&c->wbuf) == 0) timeout = 0; /* look for more at once */
  }
  /* While a thread waiting for a result reads the socket itself
   * (sh_client_wait_io), watching it here too would only wake this thread for
   * nothing on every result: look again at least every millisecond instead. */
  int waiter = pthread_mutex_trylock(&c->rd_mu) != 0;
  if (!waiter) pthread_mutex_unlock(&c->rd_mu);
  else if (timeout < 0 || timeout > 1) timeout = 1;
  if (lane_busy && (timeout < 0 || timeout > 1)) timeout = 1;
  /* Level-triggered: poll only for what the next read and write wait for
   * (a TLS write may wait for readability, a read for writability). */
  short rd = waiter ? 0 : rd_events(c);
  short events = (short)(rd | (sh_buf_avail(&c->wbuf) ? wr_events(c) : 0));
  int pending = !waiter && tls_pending(c);
  if (pending) timeout = 0;
  struct pollfd p[3] = {
      {.fd = events ? c->fd : -1, .events = events},
      {.fd = c->evfd, .events = POLLIN},
      {.fd = waiter || lane_busy ? -1 : c->lane_fd, .events = POLLIN},
  };
  if (poll(p, 3, timeout) < 0 && errno != EINTR) {
    rc = -errno;
    snprintf(reason, rlen, "poll failed: %s", sh_strerror(rc));
    return rc;
  }
  if (p[1].revents & POLLIN) {
    uint64_t v;
    ssize_t r = read(c->evfd, &v, sizeof v);
    (void)r;
  }
  if (!writing) {
    pthread_mutex_lock(&c->out_mu);
    c->awake = 1;
    pthread_mutex_unlock(&c->out_mu);
  }
  if (p[2].revents || (lane_busy && !waiter)) {
    if (pthread_mutex_trylock(&c->rd_mu) == 0) {
      struct pollfd l = {.fd = c->lane_fd, .events = POLLIN};
      if (l.fd >= 0 && poll(&l, 1, 0) > 0) sh_lane_read(c, ts);
      pthread_mutex_unlock(&c->rd_mu);
    }
  }
  if (!pending && !(p[0].revents & (rd | POLLHUP | POLLERR))) return 0;
  /* A waiting thread may be reading (sh_client_wait_io); it is done within
   * a slice, and then what it left is read here. */
  pthread_mutex_lock(&c->rd_mu);
  rc = read_turn(c, ts, reason, rlen);
  pthread_mutex_unlock(&c->rd_mu);
  return rc;
}

/* The connection is gone (GIL held): fail what waits on it, make later calls
 * raise with the same text. Nothing to do when close() got there first. */
static void io_lost(sh_client_obj_t *c, const char *reason) {
  if (c->closed) return;
  char msg[1536];
  snprintf(msg, sizeof msg, "lost the connection to the shoal daemon at %s: %s",
           c->addr, reason);
  c->lost = sh_strdup(msg);
  sh_client_fail_waiters(c, msg);
  sh_client_fail_pending(c, msg);
}

void sh_client_flush_direct_locked(sh_client_obj_t *c) {
  if (c->writing || c->fd < 0 || c->reconnecting) return;
  /* Released ids ride along instead of costing the I/O thread a write. */
  if (c->nrel || c->nunmap) sh_client_flush_releases_locked(c);
  while (sh_buf_avail(&c->out)) {
    ssize_t w = c_send(c, sh_buf_head(&c->out), sh_buf_avail(&c->out));
    if (w > 0) sh_buf_consume(&c->out, (size_t)w);
    else break; /* full or failing: the I/O thread deals with it */
  }
}

int sh_client_wait_io(sh_client_obj_t *c, uint64_t id, double timeout) {
  if (c->closed || c->lost || c->fd < 0 || c->reconnecting || sh_client_on_io_thread(c))
    return 0;
  if (!sh_map_get(&c->pending, id)) return 1;
  pthread_mutex_lock(&c->out_mu);
  sh_client_flush_direct_locked(c);
  pthread_mutex_unlock(&c->out_mu);
  double slice = SH_CLIENT_WAIT_SLICE_US / 1e6;
  if (timeout < slice) slice = timeout;
  PyThreadState *ts = PyEval_SaveThread();
  if (pthread_mutex_trylock(&c->rd_mu) != 0) {
    PyEval_RestoreThread(ts);
    return 0;
  }
  PyEval_RestoreThread(ts);
  c->wait_id = id;
  c->wait_done = !sh_map_get(&c->pending, id);
  int fd = c->fd;
  ts = PyEval_SaveThread();
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  char reason[256];
  for (;;) {
    /* wait_done is written under the GIL by this thread's own dispatch. */
    if (c->wait_done) break;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double left = slice - ((now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9);
    if (left <= 0) break;
    struct timespec tmo = {(time_t)left, (long)((left - (time_t)left) * 1e9)};
    struct pollfd p[2] = {{.fd = fd, .events = rd_events(c)},
                          {.fd = c->lane_fd, .events = POLLIN}};
    int n = tls_pending(c) ? 1 : ppoll(p, 2, &tmo, NULL);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (p[1].revents) sh_lane_read(c, &ts);
    if (p[0].revents & (POLLHUP | POLLERR)) break; /* the I/O thread reports it */
    if ((p[0].revents || tls_pending(c)) && read_turn(c, &ts, reason, sizeof reason) != 0) break;
  }
  PyEval_RestoreThread(ts);
  int done = c->wait_done;
  c->wait_id = 0;
  c->wait_done = 0;
  ts = PyEval_SaveThread();
  pthread_mutex_unlock(&c->rd_mu);
  PyEval_RestoreThread(ts);
  return done;
}

/* ---- reconnecting ---- */

/* What a restarted head is sent again lives in two places: c->rlog holds
 * the frames of ids this client made (new_id: SUBMITs, then the PUT of each
 * result still held, and puts), indexed by sequence, which costs a keep and
 * a forget no hashing and no allocation of their own; c->replay (a map)
 * holds FUNC frames, other ids, and the few of ours the log does not take
 * (older than its oldest live record, far ahead of its newest, or moved out
 * when an old record would hold the log's memory: see rlog.h). An id is in
 * one of them at most. */

/* 1 when id is one this client made, with its sequence in *seq. */
static int own_seq(const sh_client_obj_t *c, uint64_t id, uint64_t *seq) {
  *seq = id & ((UINT64_C(1) << 40) - 1);
  return id >> 40 == c->client_id && *seq;
}

/* Moves the log's oldest records to the map while one held back its memory
 * (a long task, a put kept for the whole run). */
static void move_out_old_locked(sh_client_obj_t *c) {
  uint64_t seq;
  sh_rlog_rec_t *r;
  while (sh_rlog_sparse(&c->rlog) && (r = sh_rlog_first(&c->rlog, &seq))) {
    sh_client_rec_t *m = sh_try_malloc(sizeof *m + r->len);
    if (m) {
      m->len = r->len;
      memcpy(m->frame, r->data, r->len);
      if (sh_map_put(&c->replay, r->id, m)) sh_free(m); /* not kept: as without memory */
    }
    sh_rlog_del(&c->rlog, seq);
  }
}

uint8_t *sh_client_keep_begin_locked(sh_client_obj_t *c, uint64_t id, unsigned type, size_t len) {
  uint64_t seq;
  uint8_t *p;
  if (type != SH_MSG_FUNC && own_seq(c, id, &seq)) {
    if (seq <= c->replay_ahead) sh_free(sh_map_del(&c->replay, id));
    move_out_old_locked(c);
    int rc = sh_rlog_put(&c->rlog, seq, id, len, &p);
    if (!rc) return p;
    if (rc == -ENOMEM) {
      sh_rlog_del(&c->rlog, seq);
      return NULL;
    }
    if (seq > c->rlog.base && seq > c->replay_ahead) c->replay_ahead = seq;
  }
  sh_free(sh_map_del(&c->replay, id));
  sh_client_rec_t *r = sh_try_malloc(sizeof *r + len);
  if (!r || sh_map_put(&c->replay, id, r)) {
    sh_free(r);
    return NULL;
  }
  r->len = (uint32_t)len;
  return r->frame;
}

void sh_client_keep_locked(sh_client_obj_t *c, uint64_t id, const uint8_t *p, size_t len) {
  uint8_t *to = sh_client_keep_begin_locked(c, id, p[5], len);
  if (to) memcpy(to, p, len);
}

const uint8_t *sh_client_kept_locked(const sh_client_obj_t *c, uint64_t id, uint32_t *len) {
  uint64_t seq;
  sh_rlog_rec_t *r = own_seq(c, id, &seq) ? sh_rlog_get(&c->rlog, seq) : NULL;
  if (r) {
    *len = r->len;
    return r->data;
  }
  sh_client_rec_t *m = c->replay.count ? sh_map_get(&c->replay, id) : NULL;
  if (!m) return NULL;
  *len = m->len;
  return m->frame;
}

void sh_client_forget_locked(sh_client_obj_t *c, uint64_t id) {
  uint64_t seq;
  if (own_seq(c, id, &seq) && sh_rlog_del(&c->rlog, seq)) return;
  if (c->replay.count) sh_free(sh_map_del(&c->replay, id));
}

void sh_client_kept_close(sh_client_obj_t *c) {
  size_t i = 0;
  uint64_t id;
  void *v;
  while (sh_map_next(&c->replay, &i, &id, &v)) sh_free(v);
  sh_map_close(&c->replay);
  sh_rlog_close(&c->rlog);
}

typedef struct {
  uint64_t id;
  sh_client_rec_t *r;
} rec_ref_t;

/* FUNC frames first (tasks need them), then everything by id: ids grow in
 * the order things were made, so objects come before the tasks that use
 * them and one caller's actor calls keep their order. */
static int rec_cmp(const void *x, const void *y) {
  const rec_ref_t *a = x, *b = y;
  int fa = a->r->frame[5] == SH_MSG_FUNC, fb = b->r->frame[5] == SH_MSG_FUNC;
  if (fa != fb) return fb - fa;
  return a->id < b->id ? -1 : a->id > b->id;
}

/* Appends one kept frame to b; a SUBMIT is flagged as sent again (the head
 * may have had it queued or running: it says so to the new one). */
static int append_kept(sh_buf_t *b, const uint8_t *frame, uint32_t len, size_t *nsub,
                       size_t *nobj) {
  size_t at = b->len;
  int rc = sh_buf_append(b, frame, len);
  if (rc || frame[5] != SH_MSG_SUBMIT) {
    ++*nobj;
    return rc;
  }
  uint16_t fl = (uint16_t)(b->data[at + 6] | b->data[at + 7] << 8) | SH_SUBMIT_RESENT;
  b->data[at + 6] = (uint8_t)fl;
  b->data[at + 7] = (uint8_t)(fl >> 8);
  ++*nsub;
  return 0;
}

/* What a restarted head is sent again, into b (out_mu held): the map's
 * records sorted (rec_cmp) merged with the log's, which are in id order
 * already. Returns 0 or -ENOMEM; counts SUBMITs and the rest. */
static int build_replay_locked(sh_client_obj_t *c, sh_buf_t *b, size_t *nsub, size_t *nobj) {
  size_t n = c->replay.count, k = 0, i = 0, li = 0;
  uint64_t id;
  void *v;
  rec_ref_t *refs = n ? sh_try_malloc(n * sizeof *refs) : NULL;
  if (n && !refs) return -ENOMEM;
  while (sh_map_next(&c->replay, &i, &id, &v)) refs[k++] = (rec_ref_t){id, v};
  qsort(refs, k, sizeof *refs, rec_cmp);
  int rc = 0;
  *nsub = *nobj = 0;
  sh_rlog_rec_t *lr = sh_rlog_next(&c->rlog, &li);
  for (i = 0; (i < k || lr) && !rc;) {
    if (i < k && (!lr || refs[i].r->frame[5] == SH_MSG_FUNC || refs[i].id < lr->id)) {
      rc = append_kept(b, refs[i].r->frame, refs[i].r->len, nsub, nobj);
      i++;
    } else {
      rc = append_kept(b, lr->data, lr->len, nsub, nobj);
      lr = sh_rlog_next(&c->rlog, &li);
    }
  }
  sh_free(refs);
  return rc;
}

/* One attempt to connect again, within timeout, asking for our client id. */
static int reconnect_once(sh_client_obj_t *c, double timeout, char *err, size_t errlen) {
  sh_client_tls_t tls = {c->tls_ca, c->tls_cert, c->tls_key};
  sh_hello_ok_t ok;
  sh_buf_reset(&c->rbuf);
  c->want = 0;
  c->err_text[0] = 0;
  int rc = connect_hello(c, c->addr, timeout, c->hello_flags | SH_HELLO_RESUME, c->token, &tls,
                         &ok, err, errlen);
  if (!rc && ok.client_id != c->client_id) {
    snprintf(err, errlen, "the head gave this driver another client id (%u, not %llu): its "
             "task and object ids would clash", ok.client_id, (unsigned long long)c->client_id);
    rc = -EEXIST;
  }
  if (rc) {
    sh_tls_destroy(c->tls);
    c->tls = NULL;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
  }
  return rc;
}

void sh_client_note_recent_locked(sh_client_obj_t *c, unsigned type, unsigned flags, uint64_t id,
                                  const void *body, size_t len) {
  double now = now_s();
  if (now - c->recent_since > SH_CLIENT_RECENT_S) {
    sh_buf_t t = c->recent[1];
    c->recent[1] = c->recent[0];
    c->recent[0] = t;
    sh_buf_reset(&c->recent[0]);
    c->recent_since = now;
  }
  /* Without memory it is not noted: lost only if the head dies soon too. */
  (void)sh_frame_append(&c->recent[0], type, flags, id, body, len);
}

/* The connection is lost (out_mu held): the kills and releases sent lately
 * go to `held`, older first. Sent again, a kill is harmless (the actor is
 * dead) and so is a release (the head drops what it no longer has, and
 * remembers the id while it waits for its nodes: one reported later goes). */
static void hold_recent_locked(sh_client_obj_t *c) {
  sh_buf_t b;
  sh_buf_init(&b);
  int rc = 0;
  if (now_s() - c->recent_since <= SH_CLIENT_RECENT_S)
    rc = sh_buf_append(&b, c->recent[1].data, c->recent[1].len);
  if (!rc) rc = sh_buf_append(&b, c->recent[0].data, c->recent[0].len);
  if (!rc) rc = sh_buf_append(&b, c->held.data, c->held.len);
  if (!rc) {
    sh_buf_close(&c->held);
    c->held = b;
  } else {
    sh_buf_close(&b);
  }
  sh_buf_reset(&c->recent[0]);
  sh_buf_reset(&c->recent[1]);
}

/* After a reconnect: the queued output is replaced by what the head must be
 * sent again, then the requests threads still wait answers for. */
static void resend(sh_client_obj_t *c) {
  size_t nsub = 0, nobj = 0;
  sh_buf_t b;
  sh_buf_init(&b);
  pthread_mutex_lock(&c->out_mu);
  int rc = build_replay_locked(c, &b, &nsub, &nobj);
  pthread_mutex_lock(&c->rep_mu);
  for (sh_waiter_t *w = c->waiters; w && !rc; w = w->next)
    if (!w->done && w->req_type && w->req_type != SH_MSG_PUT)
      rc = sh_frame_append(&b, w->req_type, w->req_flags, w->id, w->req_body, w->req_len);
  pthread_mutex_unlock(&c->rep_mu);
  /* Actors killed meanwhile; the releases queued meanwhile follow (the
   * I/O thread's next turn): the objects were not sent again, so the head
   * only learns of them from nodes (HAVE) or its store, and drops them. */
  if (!rc) rc = sh_buf_append(&b, c->held.data, c->held.len);
  sh_buf_reset(&c->held);
  sh_buf_close(&c->out);
  c->out = b;
  sh_buf_reset(&c->wbuf);
  c->writing = 0;
  c->awake = 1;
  c->reconnecting = 0;
  pthread_mutex_unlock(&c->out_mu);
  fprintf(stderr, "shoal: reconnected to the head at %s; sent again %zu unfinished task%s and "
          "%zu function%s and object%s%s\n", c->addr, nsub, nsub == 1 ? "" : "s", nobj,
          nobj == 1 ? "" : "s", nobj == 1 ? "" : "s", rc ? " (out of memory: some were not)" : "");
}

/* The connection broke without an ERROR from the daemon (a head killed,
 * say): connects again with backoff (0.2 s doubling to 2 s) for up to
 * reconnect_timeout, asking for the same client id, and sends again what is
 * unfinished. 0 when connected again; 1 when asked to stop; a negative code
 * with `reason` set when the head did not come back in time. */
static int reconnect(sh_client_obj_t *c, PyThreadState **ts, char *reason, size_t rlen) {
  char why[1024];
  snprintf(why, sizeof why, "%s", reason);
  pthread_mutex_lock(&c->rd_mu);
  PyEval_RestoreThread(*ts);
  pthread_mutex_lock(&c->out_mu);
  c->reconnecting = 1;
  hold_recent_locked(c);
  pthread_mutex_unlock(&c->out_mu);
  sh_lane_drop(c); /* its worker went with the head; the replay has its task */
  sh_tls_destroy(c->tls);
  c->tls = NULL;
  close(c->fd);
  c->fd = -1;
  *ts = PyEval_SaveThread();
  pthread_mutex_unlock(&c->rd_mu);
  fprintf(stderr, "shoal: lost the connection to the head at %s (%s); reconnecting for up to "
          "%g s\n", c->addr, why, c->reconnect_timeout);
  double start = now_s(), deadline = start + c->reconnect_timeout, next = start, backoff = 0.2;
  char err[1536] = "no attempt finished";
  for (;;) {
    pthread_mutex_lock(&c->out_mu);
    int stop = c->stop;
    pthread_mutex_unlock(&c->out_mu);
    if (stop) return 1;
    double now = now_s();
    if (now >= deadline) break;
    if (now < next) {
      double wait = (next < deadline ? next : deadline) - now;
      struct pollfd p = {.fd = c->evfd, .events = POLLIN};
      if (poll(&p, 1, (int)(wait * 1000) + 1) > 0) {
        uint64_t v;
        ssize_t r = read(c->evfd, &v, sizeof v);
        (void)r;
      }
      continue;
    }
    double left = deadline - now;
    if (reconnect_once(c, left < 5 ? left : 5, err, sizeof err) == 0) {
      resend(c);
      return 0;
    }
    next = now_s() + backoff;
    backoff = backoff * 2 > 2.0 ? 2.0 : backoff * 2;
  }
  snprintf(reason, rlen, "the shoal head at %s did not come back within %g s "
           "(reconnect_timeout); the connection broke because %.300s; last attempt: %.400s",
           c->addr, c->reconnect_timeout, why, err);
  return -ETIMEDOUT;
}

static void *io_main(void *arg) {
  sh_client_obj_t *c = arg;
  PyGILState_STATE g = PyGILState_Ensure();
  PyThreadState *ts = PyEval_SaveThread();
  char reason[1024] = "";
  const char *what = NULL;
  /* Frames that came in the same read as HELLO_OK. */
  pthread_mutex_lock(&c->rd_mu);
  int rc = dispatch(c, &ts, &c->want, &what);
  pthread_mutex_unlock(&c->rd_mu);
  if (rc < 0)
    snprintf(reason, sizeof reason, "it sent a malformed frame: %s", sh_strerror(rc));
  for (;;) {
    while (rc == 0 && (rc = io_turn(c, &ts, reason, sizeof reason)) == 0) {
    }
    /* An ERROR from the daemon says it refused us: no use coming back. */
    if (rc >= 0 || c->reconnect_timeout <= 0 || c->err_text[0]) break;
    if ((rc = reconnect(c, &ts, reason, sizeof reason)) != 0) break;
    pthread_mutex_lock(&c->rd_mu); /* frames that came with HELLO_OK */
    rc = dispatch(c, &ts, &c->want, &what);
    pthread_mutex_unlock(&c->rd_mu);
    if (rc < 0) snprintf(reason, sizeof reason, "it sent a malformed frame: %s", sh_strerror(rc));
  }
  /* With rd_mu no waiter reads the socket (sh_client_wait_io), and with the
   * GIL nobody writes to it; afterwards c->fd < 0 keeps both away. */
  pthread_mutex_lock(&c->rd_mu);
  PyEval_RestoreThread(ts);
  if (rc < 0) io_lost(c, reason);
  sh_tls_destroy(c->tls);
  c->tls = NULL;
  if (c->fd >= 0) close(c->fd);
  close(c->evfd);
  c->fd = c->evfd = -1;
  sh_lane_drop(c);
  pthread_mutex_unlock(&c->rd_mu);
  Py_DECREF(c); /* may free c, on this thread: see client_dealloc */
  PyGILState_Release(g);
  return NULL;
}

int sh_client_start(sh_client_obj_t *c) {
  /* The thread takes no signals: they belong to the main thread. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  Py_INCREF(c);
  c->awake = 1;
  int rc = pthread_create(&c->thread, NULL, io_main, c);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc) {
    Py_DECREF(c);
    return -rc;
  }
  c->joinable = 1;
  return 0;
}
