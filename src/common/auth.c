/* The cluster token and its proofs. Sections: randomness; proofs (HMAC);
 * tokens from text and files; finding the token. */
#include "common/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- randomness ---- */

int sh_auth_random(void *out, size_t n) {
  uint8_t *p = out;
  while (n) {
    ssize_t k = getrandom(p, n, 0);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

/* ---- proofs ---- */

int sh_auth_hmac(const void *key, size_t keylen, const void *msg, size_t msglen,
                 uint8_t mac[SH_AUTH_MAC]) {
  unsigned int len = 0;
  if (keylen > INT32_MAX) return -EINVAL;
  if (!HMAC(EVP_sha256(), key, (int)keylen, msg, msglen, mac, &len) || len != SH_AUTH_MAC)
    return -EINVAL;
  return 0;
}

/* The side labels end the HMAC input; they change when the scheme does. */
static const char *const side_label[2] = {"shoal-auth-v1 client", "shoal-auth-v1 server"};

int sh_auth_proof(const sh_auth_token_t *tok, sh_auth_side_t side,
                  const uint8_t snonce[SH_AUTH_NONCE],
                  const uint8_t cnonce[SH_AUTH_NONCE], uint8_t mac[SH_AUTH_MAC]) {
  uint8_t msg[2 * SH_AUTH_NONCE + 32];
  size_t label_len = strlen(side_label[side]);
  memcpy(msg, snonce, SH_AUTH_NONCE);
  memcpy(msg + SH_AUTH_NONCE, cnonce, SH_AUTH_NONCE);
  memcpy(msg + 2 * SH_AUTH_NONCE, side_label[side], label_len);
  int rc = sh_auth_hmac(tok->key, tok->len, msg, 2 * SH_AUTH_NONCE + label_len, mac);
  OPENSSL_cleanse(msg, sizeof msg);
  return rc;
}

int sh_auth_verify(const sh_auth_token_t *tok, sh_auth_side_t side,
                   const uint8_t snonce[SH_AUTH_NONCE],
                   const uint8_t cnonce[SH_AUTH_NONCE],
                   const uint8_t mac[SH_AUTH_MAC]) {
  uint8_t want[SH_AUTH_MAC];
  if (sh_auth_proof(tok, side, snonce, cnonce, want)) return 0;
  int ok = CRYPTO_memcmp(want, mac, SH_AUTH_MAC) == 0;
  OPENSSL_cleanse(want, sizeof want);
  return ok;
}

/* ---- tokens from text and files ---- */

static int is_space(uint8_t ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

int sh_auth_token_set(sh_auth_token_t *tok, const char *text, size_t len,
                      const char *where, char *err, size_t errlen) {
  const uint8_t *p = (const uint8_t *)text;
  while (len && is_space(p[0])) p++, len--;
  while (len && is_space(p[len - 1])) len--;
  snprintf(tok->where, sizeof tok->where, "%s", where);
  tok->len = 0;
  if (len == 0) {
    snprintf(err, errlen, "the cluster token from %s is empty", where);
    return -EINVAL;
  }
  if (len < SH_AUTH_TOKEN_MIN || len > SH_AUTH_TOKEN_MAX) {
    snprintf(err, errlen, "the cluster token from %s is %zu bytes long; a token must be "
             "%d to %d bytes (the one `shoal start` creates is 64 hex digits)",
             where, len, SH_AUTH_TOKEN_MIN, SH_AUTH_TOKEN_MAX);
    return -EINVAL;
  }
  memcpy(tok->key, p, len);
  tok->len = len;
  return 0;
}

int sh_auth_token_read(const char *path, sh_auth_token_t *tok, char *err,
                       size_t errlen) {
  char where[4200];
  snprintf(where, sizeof where, "the token file %s", path);
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int rc = -errno;
    snprintf(err, errlen, "cannot read the cluster token file %s: %s", path, strerror(-rc));
    return rc;
  }
  /* Checked on the open file, so the file checked is the file read. */
  struct stat st;
  int rc = 0;
  uint8_t text[SH_AUTH_TOKEN_MAX + 64];
  size_t n = 0;
  if (fstat(fd, &st)) {
    rc = -errno;
    snprintf(err, errlen, "cannot read the cluster token file %s: %s", path, strerror(-rc));
  } else if (!S_ISREG(st.st_mode)) {
    rc = -EINVAL;
    snprintf(err, errlen, "the cluster token file %s is not a regular file", path);
  } else if (st.st_mode & 077) {
    rc = -EPERM;
    snprintf(err, errlen, "refusing the cluster token file %s: its mode is %04o, so other "
             "users may read or change it; make it private with `chmod 600 %s` (and "
             "replace the token if others could have read it)",
             path, (unsigned)(st.st_mode & 07777), path);
  }
  while (!rc && n < sizeof text) {
    ssize_t k = read(fd, text + n, sizeof text - n);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      rc = -errno;
      snprintf(err, errlen, "cannot read the cluster token file %s: %s", path, strerror(-rc));
    }
    if (k <= 0) break;
    n += (size_t)k;
  }
  close(fd);
  if (!rc) rc = sh_auth_token_set(tok, (const char *)text, n, where, err, errlen);
  OPENSSL_cleanse(text, sizeof text);
  return rc;
}

/* Creates the missing directories above `path`, mode 0700; existing ones are
 * left as they are. 0 or -errno. */
static int make_parents(const char *path) {
  char dir[4096];
  if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) return -ENAMETOOLONG;
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir) return 0;
  *slash = 0;
  for (char *p = dir + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(dir, 0700) && errno != EEXIST) return -errno;
    *p = '/';
  }
  if (mkdir(dir, 0700) && errno != EEXIST) return -errno;
  return 0;
}

int sh_auth_token_create(const char *path, sh_auth_token_t *tok, char *err,
                         size_t errlen) {
  uint8_t raw[SH_AUTH_TOKEN_RANDOM];
  char hex[2 * SH_AUTH_TOKEN_RANDOM + 2];
  int rc = make_parents(path);
  if (rc) {
    snprintf(err, errlen, "cannot create the directory of the cluster token file %s: %s",
             path, strerror(-rc));
    return rc;
  }
  rc = sh_auth_random(raw, sizeof raw);
  if (rc) {
    snprintf(err, errlen, "getrandom: %s", strerror(-rc));
    return rc;
  }
  for (size_t i = 0; i < sizeof raw; i++) snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  hex[2 * SH_AUTH_TOKEN_RANDOM] = '\n';
  hex[2 * SH_AUTH_TOKEN_RANDOM + 1] = 0;
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    rc = -errno;
    snprintf(err, errlen, "cannot create the cluster token file %s: %s", path, strerror(-rc));
    goto out;
  }
  size_t off = 0, want = 2 * SH_AUTH_TOKEN_RANDOM + 1;
  /* The umask may have taken bits from 0600 (never added any). */
  if (fchmod(fd, 0600)) rc = -errno;
  while (!rc && off < want) {
    ssize_t k = write(fd, hex + off, want - off);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) rc = k < 0 ? -errno : -EIO;
    else off += (size_t)k;
  }
  if (!rc && fsync(fd)) rc = -errno;
  if (close(fd) && !rc) rc = -errno;
  if (rc) {
    unlink(path);
    snprintf(err, errlen, "cannot write the cluster token file %s: %s", path, strerror(-rc));
    goto out;
  }
  char where[4200];
  snprintf(where, sizeof where, "the token file %s", path);
  rc = sh_auth_token_set(tok, hex, want, where, err, errlen);
out:
  OPENSSL_cleanse(raw, sizeof raw);
  OPENSSL_cleanse(hex, sizeof hex);
  return rc;
}

int sh_auth_default_path(char *buf, size_t n) {
  const char *home = getenv("HOME");
  if (!home || !*home) {
    struct passwd *pw = getpwuid(getuid());
    home = pw ? pw->pw_dir : NULL;
  }
  if (!home || !*home) return -ENOENT;
  if (snprintf(buf, n, "%s/.shoal/token", home) >= (int)n) return -ENAMETOOLONG;
  return 0;
}

/* ---- finding the token ---- */

/* Reads the file `path`; creates it when it is missing and `create` is set
 * (a concurrent creator wins: its file is read). */
static int read_or_create(const char *path, int create, sh_auth_token_t *tok,
                          char *err, size_t errlen) {
  int rc = sh_auth_token_read(path, tok, err, errlen);
  if (rc != -ENOENT || !create) return rc;
  rc = sh_auth_token_create(path, tok, err, errlen);
  if (rc == -EEXIST) rc = sh_auth_token_read(path, tok, err, errlen);
  return rc;
}

int sh_auth_token_find(const char *file, int create, sh_auth_token_t *tok,
                       char *err, size_t errlen) {
  if (file) return read_or_create(file, create, tok, err, errlen);
  const char *env = getenv("SHOAL_TOKEN");
  if (env && *env) return sh_auth_token_set(tok, env, strlen(env), "$SHOAL_TOKEN", err, errlen);
  env = getenv("SHOAL_TOKEN_FILE");
  if (env && *env) {
    int rc = read_or_create(env, create, tok, err, errlen);
    if (rc == -ENOENT)
      snprintf(err, errlen, "SHOAL_TOKEN_FILE names the cluster token file %s, which does "
               "not exist: copy the head's token file there, or fix the variable", env);
    if (!rc) snprintf(tok->where, sizeof tok->where, "the token file %s ($SHOAL_TOKEN_FILE)", env);
    return rc;
  }
  char path[4096];
  int rc = sh_auth_default_path(path, sizeof path);
  if (rc) {
    snprintf(err, errlen, "no cluster token found: SHOAL_TOKEN and SHOAL_TOKEN_FILE are not "
             "set and there is no home directory for the default token file; set one of them");
    return rc;
  }
  rc = read_or_create(path, create, tok, err, errlen);
  if (rc == -ENOENT)
    snprintf(err, errlen, "no cluster token found: SHOAL_TOKEN and SHOAL_TOKEN_FILE are not "
             "set and the default token file %s does not exist. Copy the head's token file "
             "(`shoal start` prints its path) there, set SHOAL_TOKEN_FILE to its path, or "
             "set SHOAL_TOKEN to its contents", path);
  return rc;
}

void sh_auth_token_clear(sh_auth_token_t *tok) {
  OPENSSL_cleanse(tok->key, sizeof tok->key);
  tok->len = 0;
}
