/* Unit tests for src/common/auth.c: HMAC-SHA256 against RFC 4231, the proofs
 * of the handshake (right token, wrong token, replay, reflection), token text
 * and token files (permissions, creation, the lookup order). */
#include "sh_test.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/auth.h"

/* ---- helpers ------------------------------------------------------------- */

static void unhex(const char *hex, uint8_t *out, size_t n) {
  assert_int_equal(strlen(hex), 2 * n);
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
    out[i] = (uint8_t)v;
  }
}

static void check_hmac(const void *key, size_t keylen, const void *msg, size_t msglen,
                       const char *want_hex, size_t compare) {
  uint8_t mac[SH_AUTH_MAC], want[SH_AUTH_MAC];
  unhex(want_hex, want, compare);
  assert_int_equal(sh_auth_hmac(key, keylen, msg, msglen, mac), 0);
  assert_memory_equal(mac, want, compare);
}

/* A fresh scratch directory under /tmp; the caller removes it with rm_dir. */
static char *scratch_dir(void) {
  char *d = strdup("/tmp/sh-auth-XXXXXX");
  assert_non_null(d);
  assert_non_null(mkdtemp(d));
  return d;
}

static void rm_dir(char *d) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  assert_int_equal(system(cmd), 0);
  free(d);
}

static void write_file(const char *path, const char *text, mode_t mode) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  assert_int_equal(chmod(path, mode), 0);
}

static sh_auth_token_t make_token(const char *text) {
  sh_auth_token_t t;
  char err[256];
  assert_int_equal(sh_auth_token_set(&t, text, strlen(text), "test", err, sizeof err), 0);
  return t;
}

/* ---- HMAC-SHA256: the test vectors of RFC 4231, section 4 ------------------ */

static void hmac_rfc4231(void **state) {
  uint8_t key[131], data[50];
  memset(key, 0x0b, 20);
  check_hmac(key, 20, "Hi There", 8,
             "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", 32);
  check_hmac("Jefe", 4, "what do ya want for nothing?", 28,
             "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", 32);
  memset(key, 0xaa, 20);
  memset(data, 0xdd, 50);
  check_hmac(key, 20, data, 50,
             "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe", 32);
  for (int i = 0; i < 25; i++) key[i] = (uint8_t)(i + 1);
  memset(data, 0xcd, 50);
  check_hmac(key, 25, data, 50,
             "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b", 32);
  /* Test case 5 specifies the output truncated to 128 bits. */
  memset(key, 0x0c, 20);
  check_hmac(key, 20, "Test With Truncation", 20, "a3b6167473100ee06e0c796c2955552b", 16);
  memset(key, 0xaa, 131);
  const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
  check_hmac(key, 131, m6, strlen(m6),
             "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54", 32);
  const char *m7 = "This is a test using a larger than block-size key and a larger than "
                   "block-size data. The key needs to be hashed before being used by the "
                   "HMAC algorithm.";
  check_hmac(key, 131, m7, strlen(m7),
             "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2", 32);
}

/* ---- proofs ------------------------------------------------------------------ */

/* The proof is HMAC(token, snonce || cnonce || label): pinned, since the
 * Python tests and other implementations compute it the same way. */
static void proof_layout(void **state) {
  sh_auth_token_t t = make_token("0123456789abcdef0123456789abcdef");
  uint8_t sn[SH_AUTH_NONCE], cn[SH_AUTH_NONCE], mac[SH_AUTH_MAC], want[SH_AUTH_MAC];
  memset(sn, 0x11, sizeof sn);
  memset(cn, 0x22, sizeof cn);
  static const char *labels[2] = {"shoal-auth-v1 client", "shoal-auth-v1 server"};
  for (int side = 0; side < 2; side++) {
    uint8_t msg[128];
    memcpy(msg, sn, 32);
    memcpy(msg + 32, cn, 32);
    memcpy(msg + 64, labels[side], strlen(labels[side]));
    assert_int_equal(sh_auth_hmac(t.key, t.len, msg, 64 + strlen(labels[side]), want), 0);
    assert_int_equal(sh_auth_proof(&t, (sh_auth_side_t)side, sn, cn, mac), 0);
    assert_memory_equal(mac, want, SH_AUTH_MAC);
  }
}

static void verify_accepts_only_the_right_proof(void **state) {
  sh_auth_token_t t = make_token("the-cluster-token-0123456789");
  sh_auth_token_t other = make_token("the-cluster-token-0123456780");
  uint8_t sn[SH_AUTH_NONCE], cn[SH_AUTH_NONCE], mac[SH_AUTH_MAC];
  assert_int_equal(sh_auth_random(sn, sizeof sn), 0);
  assert_int_equal(sh_auth_random(cn, sizeof cn), 0);
  assert_int_equal(sh_auth_proof(&t, SH_AUTH_CLIENT, sn, cn, mac), 0);
  assert_true(sh_auth_verify(&t, SH_AUTH_CLIENT, sn, cn, mac));
  /* A wrong token. */
  assert_false(sh_auth_verify(&other, SH_AUTH_CLIENT, sn, cn, mac));
  /* Reflection: a client's proof is not a server's. */
  assert_false(sh_auth_verify(&t, SH_AUTH_SERVER, sn, cn, mac));
  /* Replay: the same answer to a fresh server nonce. */
  uint8_t sn2[SH_AUTH_NONCE];
  assert_int_equal(sh_auth_random(sn2, sizeof sn2), 0);
  assert_memory_not_equal(sn, sn2, SH_AUTH_NONCE);
  assert_false(sh_auth_verify(&t, SH_AUTH_CLIENT, sn2, cn, mac));
  /* Every single flipped bit of the proof or the client nonce. */
  for (int bit = 0; bit < SH_AUTH_MAC * 8; bit++) {
    mac[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    assert_false(sh_auth_verify(&t, SH_AUTH_CLIENT, sn, cn, mac));
    mac[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    cn[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    assert_false(sh_auth_verify(&t, SH_AUTH_CLIENT, sn, cn, mac));
    cn[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  }
  assert_true(sh_auth_verify(&t, SH_AUTH_CLIENT, sn, cn, mac));
}

static void random_fills_and_differs(void **state) {
  uint8_t a[64] = {0}, b[64] = {0}, zero[64] = {0};
  assert_int_equal(sh_auth_random(a, sizeof a), 0);
  assert_int_equal(sh_auth_random(b, sizeof b), 0);
  assert_memory_not_equal(a, b, sizeof a);
  assert_memory_not_equal(a, zero, sizeof a);
  assert_int_equal(sh_auth_random(a, 0), 0);
}

/* ---- token text ------------------------------------------------------------ */

static void token_text_is_trimmed_and_bounded(void **state) {
  sh_auth_token_t t;
  char err[512];
  const char *s = "  \t0123456789abcdef\r\n";
  assert_int_equal(sh_auth_token_set(&t, s, strlen(s), "here", err, sizeof err), 0);
  assert_int_equal(t.len, 16);
  assert_memory_equal(t.key, "0123456789abcdef", 16);
  assert_string_equal(t.where, "here");
  assert_int_equal(sh_auth_token_set(&t, " \n", 2, "SHOAL_TOKEN", err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "SHOAL_TOKEN is empty"));
  assert_int_equal(sh_auth_token_set(&t, "short", 5, "x", err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "5 bytes long"));
  char big[SH_AUTH_TOKEN_MAX + 2];
  memset(big, 'a', sizeof big);
  assert_int_equal(sh_auth_token_set(&t, big, SH_AUTH_TOKEN_MAX, "x", err, sizeof err), 0);
  assert_int_equal(sh_auth_token_set(&t, big, SH_AUTH_TOKEN_MAX + 1, "x", err, sizeof err),
                   -EINVAL);
  sh_auth_token_clear(&t);
  assert_int_equal(t.len, 0);
}

/* ---- token files ------------------------------------------------------------- */

static void read_checks_mode_and_kind(void **state) {
  char *d = scratch_dir();
  char path[256], err[1024];
  sh_auth_token_t t;
  snprintf(path, sizeof path, "%s/token", d);
  assert_int_equal(sh_auth_token_read(path, &t, err, sizeof err), -ENOENT);
  assert_non_null(strstr(err, path));
  write_file(path, "abcdefabcdefabcdef0123\n", 0600);
  assert_int_equal(sh_auth_token_read(path, &t, err, sizeof err), 0);
  assert_int_equal(t.len, 22);
  assert_non_null(strstr(t.where, path));
  static const mode_t bad[] = {0644, 0640, 0604, 0660, 0602, 0620, 0700 | 0001};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(chmod(path, bad[i]), 0);
    err[0] = 0;
    assert_int_equal(sh_auth_token_read(path, &t, err, sizeof err), -EPERM);
    assert_non_null(strstr(err, "chmod 600"));
  }
  assert_int_equal(chmod(path, 0400), 0);
  assert_int_equal(sh_auth_token_read(path, &t, err, sizeof err), 0);
  assert_int_equal(sh_auth_token_read(d, &t, err, sizeof err), -EINVAL); /* a directory */
  assert_non_null(strstr(err, "not a regular file"));
  /* Longer than any token, and too short. */
  char big[SH_AUTH_TOKEN_MAX + 200];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = 0;
  assert_int_equal(chmod(path, 0600), 0);
  write_file(path, big, 0600);
  assert_int_equal(sh_auth_token_read(path, &t, err, sizeof err), -EINVAL);
  write_file(path, "tiny\n", 0600);
  assert_int_equal(sh_auth_token_read(path, &t, err, sizeof err), -EINVAL);
  rm_dir(d);
}

static void create_makes_a_private_file(void **state) {
  char *d = scratch_dir();
  char path[256], err[1024];
  snprintf(path, sizeof path, "%s/a/b/token", d);
  sh_auth_token_t t, back;
  mode_t old = umask(0);
  int rc = sh_auth_token_create(path, &t, err, sizeof err);
  umask(old);
  assert_int_equal(rc, 0);
  assert_int_equal(t.len, 2 * SH_AUTH_TOKEN_RANDOM);
  for (size_t i = 0; i < t.len; i++) assert_non_null(strchr("0123456789abcdef", t.key[i]));
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0600);
  assert_int_equal(st.st_size, 2 * SH_AUTH_TOKEN_RANDOM + 1);
  char dir[256];
  snprintf(dir, sizeof dir, "%s/a/b", d);
  assert_int_equal(stat(dir, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0700);
  assert_int_equal(sh_auth_token_read(path, &back, err, sizeof err), 0);
  assert_int_equal(back.len, t.len);
  assert_memory_equal(back.key, t.key, t.len);
  /* Never overwritten; and two created tokens differ. */
  assert_int_equal(sh_auth_token_create(path, &back, err, sizeof err), -EEXIST);
  snprintf(path, sizeof path, "%s/token2", d);
  assert_int_equal(sh_auth_token_create(path, &back, err, sizeof err), 0);
  assert_memory_not_equal(back.key, t.key, t.len);
  rm_dir(d);
}

static void find_follows_the_lookup_order(void **state) {
  char *d = scratch_dir();
  char home[256], path[512], def[512], err[2048];
  sh_auth_token_t t;
  snprintf(home, sizeof home, "%s/home", d);
  assert_int_equal(mkdir(home, 0700), 0);
  setenv("HOME", home, 1);
  unsetenv("SHOAL_TOKEN");
  unsetenv("SHOAL_TOKEN_FILE");
  assert_int_equal(sh_auth_default_path(def, sizeof def), 0);
  snprintf(path, sizeof path, "%s/.shoal/token", home);
  assert_string_equal(def, path);
  /* Nothing anywhere: the message names every place. */
  assert_int_equal(sh_auth_token_find(NULL, 0, &t, err, sizeof err), -ENOENT);
  assert_non_null(strstr(err, "SHOAL_TOKEN"));
  assert_non_null(strstr(err, "SHOAL_TOKEN_FILE"));
  assert_non_null(strstr(err, def));
  /* The head creates the default file. */
  assert_int_equal(sh_auth_token_find(NULL, 1, &t, err, sizeof err), 0);
  assert_int_equal(t.len, 64);
  assert_int_equal(sh_auth_token_find(NULL, 0, &t, err, sizeof err), 0);
  assert_non_null(strstr(t.where, def));
  /* SHOAL_TOKEN_FILE beats the default; SHOAL_TOKEN beats both. */
  snprintf(path, sizeof path, "%s/other", d);
  write_file(path, "from-the-env-file-0123\n", 0600);
  setenv("SHOAL_TOKEN_FILE", path, 1);
  assert_int_equal(sh_auth_token_find(NULL, 0, &t, err, sizeof err), 0);
  assert_memory_equal(t.key, "from-the-env-file-0123", t.len);
  assert_non_null(strstr(t.where, "$SHOAL_TOKEN_FILE"));
  setenv("SHOAL_TOKEN", "from-the-environment-42", 1);
  assert_int_equal(sh_auth_token_find(NULL, 0, &t, err, sizeof err), 0);
  assert_memory_equal(t.key, "from-the-environment-42", t.len);
  assert_string_equal(t.where, "$SHOAL_TOKEN");
  /* An explicit file beats everything, and must exist unless created. */
  snprintf(path, sizeof path, "%s/explicit", d);
  assert_int_equal(sh_auth_token_find(path, 0, &t, err, sizeof err), -ENOENT);
  assert_int_equal(sh_auth_token_find(path, 1, &t, err, sizeof err), 0);
  assert_non_null(strstr(t.where, path));
  unsetenv("SHOAL_TOKEN");
  snprintf(path, sizeof path, "%s/missing", d);
  setenv("SHOAL_TOKEN_FILE", path, 1);
  assert_int_equal(sh_auth_token_find(NULL, 0, &t, err, sizeof err), -ENOENT);
  assert_non_null(strstr(err, "SHOAL_TOKEN_FILE names"));
  unsetenv("SHOAL_TOKEN_FILE");
  rm_dir(d);
}

static const struct CMUnitTest tests[] = {
    SH_TEST(hmac_rfc4231),
    SH_TEST(proof_layout),
    SH_TEST(verify_accepts_only_the_right_proof),
    SH_TEST(random_fills_and_differs),
    SH_TEST(token_text_is_trimmed_and_bounded),
    SH_TEST(read_checks_mode_and_kind),
    SH_TEST(create_makes_a_private_file),
    SH_TEST(find_follows_the_lookup_order),
};

SH_TEST_MAIN(tests)
