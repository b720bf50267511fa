/* The head's journal file: load, save (atomically), and its node list. */
#include "head/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/frame.h"

void sh_journal_init(sh_journal_t *j) { memset(j, 0, sizeof *j); }

void sh_journal_close(sh_journal_t *j) {
  sh_free(j->nodes);
  j->nodes = NULL;
  j->nnodes = j->cap = 0;
}

int sh_journal_has_node(const sh_journal_t *j, uint32_t id) {
  for (uint32_t i = 0; i < j->nnodes; i++)
    if (j->nodes[i] == id) return 1;
  return 0;
}

int sh_journal_add_node(sh_journal_t *j, uint32_t id) {
  if (!id || sh_journal_has_node(j, id)) return 0;
  if (j->nnodes == j->cap) {
    uint32_t cap = j->cap ? j->cap * 2 : 8;
    uint32_t *p = sh_try_realloc(j->nodes, cap * sizeof *p);
    if (!p) return -ENOMEM;
    j->nodes = p;
    j->cap = cap;
  }
  j->nodes[j->nnodes++] = id;
  return 0;
}

void sh_journal_remove_node(sh_journal_t *j, uint32_t id) {
  for (uint32_t i = 0; i < j->nnodes; i++)
    if (j->nodes[i] == id) {
      j->nodes[i] = j->nodes[--j->nnodes];
      return;
    }
}

/* Parses an unsigned 32-bit decimal number that is the whole of s. */
static int parse_u32(const char *s, uint32_t *out) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (!*s || *s == '-' || *end || errno || v > UINT32_MAX) return -1;
  *out = (uint32_t)v;
  return 0;
}

/* One "key value" line (newline stripped). 0, SH_EBODY or -ENOMEM. */
static int load_line(sh_journal_t *j, char *line) {
  char *sp = strchr(line, ' ');
  if (!sp) return SH_EBODY;
  *sp = 0;
  const char *k = line, *v = sp + 1;
  uint32_t u;
  if (!strcmp(k, "epoch")) return parse_u32(v, &j->epoch) ? SH_EBODY : 0;
  if (!strcmp(k, "next_client")) return parse_u32(v, &j->next_client) ? SH_EBODY : 0;
  if (!strcmp(k, "node")) {
    if (parse_u32(v, &u) || !u) return SH_EBODY;
    return sh_journal_add_node(j, u);
  }
  char *dst = !strcmp(k, "store") ? j->store_dir : !strcmp(k, "spill") ? j->spill_dir : NULL;
  if (!dst) return 0; /* a key from a later version */
  if (strlen(v) >= SH_JOURNAL_PATH_MAX) return SH_EBODY;
  strcpy(dst, v);
  return 0;
}

int sh_journal_load(const char *path, sh_journal_t *j, char *err, size_t n) {
  sh_journal_close(j);
  sh_journal_init(j);
  FILE *f = fopen(path, "re");
  if (!f) {
    int e = errno;
    snprintf(err, n, "cannot read %s: %s", path, strerror(e));
    return -e;
  }
  char line[SH_JOURNAL_PATH_MAX + 64];
  int rc = 0, lineno = 0;
  while (!rc && fgets(line, sizeof line, f)) {
    lineno++;
    size_t len = strlen(line);
    if (len && line[len - 1] == '\n') line[--len] = 0;
    else if (!feof(f)) rc = SH_EBODY; /* a line too long for any field */
    if (rc) break;
    if (lineno == 1) rc = strcmp(line, SH_JOURNAL_MAGIC) ? SH_EBODY : 0;
    else if (len) rc = load_line(j, line);
  }
  if (!rc && ferror(f)) rc = -EIO;
  if (!rc && lineno == 0) rc = SH_EBODY;
  fclose(f);
  if (rc == SH_EBODY)
    snprintf(err, n, "%s is not a shoal head journal, or line %d of it is malformed", path,
             lineno);
  else if (rc) snprintf(err, n, "reading %s: %s", path, strerror(-rc));
  if (rc) {
    sh_journal_close(j);
    sh_journal_init(j);
  }
  return rc;
}

/* Writes all of p to fd. 0 or -errno. */
static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -errno;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Writes buf to path atomically: path.tmp, fsync when `sync`, rename. 0 or
 * -errno (no .tmp is then left). */
static int write_atomic(const char *path, const char *buf, size_t len, int sync) {
  char tmp[SH_JOURNAL_PATH_MAX + 8];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) return -ENAMETOOLONG;
  int rc = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) rc = -errno;
  if (!rc) rc = write_all(fd, buf, len);
  if (!rc && sync && fsync(fd) < 0) rc = -errno;
  if (fd >= 0 && close(fd) < 0 && !rc) rc = -errno;
  if (!rc && rename(tmp, path) < 0) rc = -errno;
  if (rc && fd >= 0) unlink(tmp);
  return rc;
}

int sh_journal_save(const char *path, const sh_journal_t *j, int sync) {
  if (strchr(j->store_dir, '\n') || strchr(j->spill_dir, '\n')) return -EINVAL;
  size_t cap = 2 * SH_JOURNAL_PATH_MAX + 128 + (size_t)j->nnodes * 16;
  char *buf = sh_try_malloc(cap);
  if (!buf) return -ENOMEM;
  int len = snprintf(buf, cap, "%s\nepoch %u\nnext_client %u\nstore %s\nspill %s\n",
                     SH_JOURNAL_MAGIC, j->epoch, j->next_client, j->store_dir, j->spill_dir);
  for (uint32_t i = 0; i < j->nnodes; i++)
    len += snprintf(buf + len, cap - (size_t)len, "node %u\n", j->nodes[i]);
  int rc = write_atomic(path, buf, (size_t)len, sync);
  sh_free(buf);
  return rc;
}

/* ---- charged attempts ---- */

#define CHARGE_LINE 32 /* "<16 hex> <u32>\n" and some */

int sh_charges_load(const char *path, sh_map_t *m) {
  FILE *f = fopen(path, "re");
  if (!f) return -errno;
  char line[CHARGE_LINE * 2];
  int rc = 0;
  while (!rc && fgets(line, sizeof line, f)) {
    char *end;
    size_t len = strlen(line);
    if (len < 19 || line[len - 1] != '\n' || line[16] != ' ') continue; /* torn by a crash */
    line[16] = line[len - 1] = 0;
    uint64_t id = strtoull(line, &end, 16);
    uint32_t n;
    if (end != line + 16 || !id || parse_u32(line + 17, &n) || !n) continue;
    if ((uintptr_t)sh_map_get(m, id) < n) rc = sh_map_put(m, id, (void *)(uintptr_t)n);
  }
  if (!rc && ferror(f)) rc = -EIO;
  fclose(f);
  return rc;
}

static int charge_line(char *buf, size_t n, uint64_t id, uint32_t count) {
  return snprintf(buf, n, "%016llx %u\n", (unsigned long long)id, count);
}

int sh_charges_append(int fd, uint64_t id, uint32_t count) {
  char line[CHARGE_LINE];
  return write_all(fd, line, (size_t)charge_line(line, sizeof line, id, count));
}

int sh_charges_rewrite(const char *path, const sh_map_t *m, int *fd) {
  size_t cap = m->count * CHARGE_LINE + 1, len = 0;
  char *buf = sh_try_malloc(cap);
  if (!buf) return -ENOMEM;
  uint64_t id;
  void *v;
  for (size_t i = 0; sh_map_next(m, &i, &id, &v);)
    len += (size_t)charge_line(buf + len, cap - len, id, (uint32_t)(uintptr_t)v);
  int rc = write_atomic(path, buf, len, 1);
  sh_free(buf);
  int nfd = rc ? -1 : open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (!rc && nfd < 0) rc = -errno;
  if (rc) return rc;
  if (*fd >= 0) close(*fd);
  *fd = nfd;
  return 0;
}
