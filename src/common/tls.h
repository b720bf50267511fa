/* TLS for TCP connections through OpenSSL (libssl): contexts made from
 * certificate, key and CA files, and non-blocking handshakes, reads and
 * writes that say which socket event they wait for, so that callers polling
 * level-triggered (uv_poll, poll) neither stall nor spin.
 * docs/protocol.md ("Transport") is the reference.
 *
 * The rules a caller follows:
 *   - Poll for sh_tls_rd_want() to read and, while it has bytes to send, for
 *     sh_tls_wr_want() to write: a TLS write may need the socket readable and
 *     a read may need it writable.
 *   - Bytes sh_tls_pending() counts are already decrypted: read them without
 *     waiting for the socket, which may never become readable again for them.
 *   - A write that returned -EAGAIN is retried with the same bytes at the
 *     head of the buffer (more may follow; the buffer may have moved).
 *
 * Every I/O call takes a possibly NULL sh_tls_t: NULL is plain bytes on the
 * fd, so one code path serves both. An sh_tls_t is used by one thread at a
 * time (callers with several threads hold a lock around each call). */
#ifndef SH_TLS_H
#define SH_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Socket events a call waits for, as bits. */
#define SH_TLS_READ 1
#define SH_TLS_WRITE 2

/* The oldest protocol accepted; both sides prefer TLS 1.3. */
#define SH_TLS_MIN_VERSION "TLS 1.2"

/* How long a TLS listener waits for a new peer's first byte before it takes
 * the peer for a client without TLS (which waits for the challenge and sends
 * nothing) and tells it so in a plain ERROR frame. */
#define SH_TLS_HELLO_WAIT_MS 1000

typedef enum { SH_TLS_SERVER = 0, SH_TLS_CLIENT = 1 } sh_tls_side_t;

typedef struct sh_tls_ctx_s sh_tls_ctx_t; /* configuration: an SSL_CTX */
typedef struct sh_tls_s sh_tls_t;         /* one connection: an SSL */

/* Makes a context. Server: `cert` and `key` (PEM files; cert may hold the
 * chain) are required; with `ca`, peers must present a certificate signed
 * by it (mutual TLS). Client: the peer's certificate is verified against
 * `ca` (NULL: the system's trust store), and `cert` with `key`, when given,
 * are presented. 0 with *out set (the caller owns it), or SH_ETLS with what
 * is wrong and which file in err: a missing or unreadable file, a file that
 * is no PEM certificate or key, a key that does not match the certificate. */
int sh_tls_ctx_create(sh_tls_side_t side, const char *cert, const char *key, const char *ca,
                      sh_tls_ctx_t **out, char *err, size_t errlen);

/* Frees a context; connections made from it keep their own reference. */
void sh_tls_ctx_destroy(sh_tls_ctx_t *ctx);

/* Starts TLS on the connected socket fd (the caller keeps owning fd).
 * Client side: `host` is the name or IP address the peer's certificate must
 * carry in its subjectAltName (also sent as SNI when it is a name); server
 * side: NULL. 0 with *out set, or -ENOMEM. */
int sh_tls_create(sh_tls_ctx_t *ctx, int fd, const char *host, sh_tls_t **out);

/* Frees the connection state (no bytes are sent; see sh_tls_shutdown). */
void sh_tls_destroy(sh_tls_t *t);

/* Advances the handshake. 0 when it is complete; -EAGAIN when it waits for
 * the event sh_tls_rd_want() names; SH_ETLS when it failed (sh_tls_error
 * says why). Calling it again after completion returns 0. */
int sh_tls_handshake(sh_tls_t *t);

/* Whether the handshake is complete (1) or not (0). NULL: 1. */
int sh_tls_ready(const sh_tls_t *t);

/* Reads up to n bytes. Returns the count (> 0); 0 at end of stream; -EAGAIN
 * when it must wait for the event sh_tls_rd_want() names; SH_ETLS for a TLS
 * failure (sh_tls_error); another -errno for the socket's. t NULL: read(2),
 * EINTR retried. */
ssize_t sh_tls_recv(sh_tls_t *t, int fd, void *p, size_t n);

/* Writes up to n bytes (complete TLS records; the rest is left to the
 * caller). Returns the count (> 0); -EAGAIN when it must wait for the event
 * sh_tls_wr_want() names; SH_ETLS or another -errno as sh_tls_recv. t NULL:
 * send(2) with MSG_NOSIGNAL, EINTR retried. */
ssize_t sh_tls_send(sh_tls_t *t, int fd, const void *p, size_t n);

/* The event the next read (or, before it completes, the handshake) waits
 * for: SH_TLS_READ, or SH_TLS_WRITE after a read that needs to send. NULL:
 * SH_TLS_READ. */
int sh_tls_rd_want(const sh_tls_t *t);

/* The event the next write waits for: SH_TLS_WRITE, or SH_TLS_READ after a
 * write that needs to receive first. NULL: SH_TLS_WRITE. */
int sh_tls_wr_want(const sh_tls_t *t);

/* Decrypted bytes waiting to be read (NULL: 0). */
size_t sh_tls_pending(const sh_tls_t *t);

/* Bytes received on the socket so far (NULL: 0): 0 means the peer has sent
 * nothing at all. */
uint64_t sh_tls_received(const sh_tls_t *t);

/* What went wrong in the last SH_ETLS, for people: OpenSSL's reason, the
 * certificate check's verdict and a hint of what to change. */
const char *sh_tls_error(const sh_tls_t *t);

/* Sends close_notify, best effort and without waiting. */
void sh_tls_shutdown(sh_tls_t *t);

/* Whether p[0..n) starts like a TLS record (a ClientHello: 0x16 0x03): for
 * telling a TLS client that reached a plain listener what happened. */
int sh_tls_looks_like_tls(const uint8_t *p, size_t n);

#endif
