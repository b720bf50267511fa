/* The cluster token and the challenge-response that proves a TCP peer holds
 * it: HMAC-SHA256 proofs over both sides' nonces, token files (find, read,
 * create) and fresh randomness. The frame layouts of the handshake are in
 * proto.h; docs/protocol.md ("Authentication") is the reference.
 *
 * Nothing here does network I/O or keeps state between calls: the agent, the
 * command line and the Python client each drive the handshake with these. */
#ifndef SH_AUTH_H
#define SH_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define SH_AUTH_NONCE 32    /* bytes of a nonce */
#define SH_AUTH_MAC 32      /* bytes of an HMAC-SHA256 */
#define SH_AUTH_SCHEME 1    /* AUTH_CHALLENGE scheme: HMAC-SHA256 over the token */
#define SH_AUTH_TOKEN_MIN 16 /* shortest token accepted, in bytes */
#define SH_AUTH_TOKEN_MAX 256 /* longest token accepted, in bytes */
#define SH_AUTH_TOKEN_RANDOM 32 /* random bytes in a created token (hex: 64 chars) */
/* Largest frame body accepted from a peer that has not authenticated: the
 * handshake frames and the HELLO that follows fit, nothing else does. */
#define SH_AUTH_MAX_BODY 256
/* Default seconds a TCP peer has to complete the handshake. */
#define SH_AUTH_TIMEOUT_DEFAULT 10.0

/* Which side a proof speaks for; part of the HMAC input, so a proof made by
 * one side can never be reflected back as the other side's. */
typedef enum { SH_AUTH_CLIENT = 0, SH_AUTH_SERVER = 1 } sh_auth_side_t;

/* A cluster token and where it came from (for messages; never the token). */
typedef struct sh_auth_token_s {
  uint8_t key[SH_AUTH_TOKEN_MAX]; /* the token's bytes: the HMAC key */
  size_t len;                     /* SH_AUTH_TOKEN_MIN..SH_AUTH_TOKEN_MAX */
  char where[4200];               /* "SHOAL_TOKEN", "the token file PATH", ... */
} sh_auth_token_t;

/* Fills `out` with `n` bytes from getrandom(2). 0 or -errno. */
int sh_auth_random(void *out, size_t n);

/* HMAC-SHA256 of msg under key, SH_AUTH_MAC bytes into mac. 0, or -EINVAL
 * when libcrypto fails. */
int sh_auth_hmac(const void *key, size_t keylen, const void *msg, size_t msglen,
                 uint8_t mac[SH_AUTH_MAC]);

/* The proof of `side`: HMAC-SHA256(token, server_nonce || client_nonce ||
 * label), the label naming the side. Writes SH_AUTH_MAC bytes to `mac`.
 * 0, or -EINVAL when libcrypto fails (it does not for these sizes). */
int sh_auth_proof(const sh_auth_token_t *tok, sh_auth_side_t side,
                  const uint8_t snonce[SH_AUTH_NONCE],
                  const uint8_t cnonce[SH_AUTH_NONCE], uint8_t mac[SH_AUTH_MAC]);

/* Checks a peer's proof for `side` in constant time (CRYPTO_memcmp). 1 when
 * it is right, 0 when not. */
int sh_auth_verify(const sh_auth_token_t *tok, sh_auth_side_t side,
                   const uint8_t snonce[SH_AUTH_NONCE],
                   const uint8_t cnonce[SH_AUTH_NONCE],
                   const uint8_t mac[SH_AUTH_MAC]);

/* Makes a token of `text` (surrounding whitespace trimmed), described as
 * `where`. 0, or -EINVAL with a message in err (empty, too short, too long). */
int sh_auth_token_set(sh_auth_token_t *tok, const char *text, size_t len,
                      const char *where, char *err, size_t errlen);

/* Reads the token file `path`. It must be a regular file that neither group
 * nor others may read or write. 0; -ENOENT when it does not exist; -EPERM for
 * a group/world accessible file; another -errno or -EINVAL: err says what and
 * what to do. */
int sh_auth_token_read(const char *path, sh_auth_token_t *tok, char *err,
                       size_t errlen);

/* Creates the token file `path` (mode 0600, its missing parent directories
 * 0700) holding SH_AUTH_TOKEN_RANDOM random bytes in hex and a newline, and
 * loads it into tok. Fails with -EEXIST when the file exists (no overwrite).
 * 0 or -errno with err set. */
int sh_auth_token_create(const char *path, sh_auth_token_t *tok, char *err,
                         size_t errlen);

/* The default token file, $HOME/.shoal/token (the passwd entry's home when
 * HOME is unset). 0, or -ENAMETOOLONG / -ENOENT. */
int sh_auth_default_path(char *buf, size_t n);

/* Finds the token the way drivers and the command line do: `file` when not
 * NULL (an explicit --token-file), else $SHOAL_TOKEN, else the file named by
 * $SHOAL_TOKEN_FILE, else the default file. With `create`, a missing
 * explicit or default file is created (the head does that). 0; -ENOENT when
 * no token was found (err lists every place looked at); another code from
 * the functions above, err set. */
int sh_auth_token_find(const char *file, int create, sh_auth_token_t *tok,
                       char *err, size_t errlen);

/* Overwrites the token's secret bytes (OPENSSL_cleanse). */
void sh_auth_token_clear(sh_auth_token_t *tok);

#endif
