/* The head's journal: the little a head restarted on the same socket
 * directory needs to take over from the one that died (its object store and
 * spill directories, the nodes it had, the client ids it handed out, how many
 * times it restarted). One small text file, rewritten whole and atomically
 * (a temporary file, fsync, rename) whenever one of these changes; see
 * docs/protocol.md, "The head's journal". No I/O but load and save. */
#ifndef SH_JOURNAL_H
#define SH_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "common/map.h"

#define SH_JOURNAL_MAGIC "shoal-head-journal 1"
#define SH_JOURNAL_PATH_MAX 4096

/* Invariants: nodes[0..nnodes) are distinct and nonzero; the directories are
 * NUL-terminated, without newlines, possibly empty. */
typedef struct sh_journal_s {
  uint32_t epoch;        /* 0 for a head's first run, +1 at each restart */
  uint32_t next_client;  /* the next driver client id the head hands out */
  char store_dir[SH_JOURNAL_PATH_MAX]; /* its object store directory */
  char spill_dir[SH_JOURNAL_PATH_MAX]; /* its spill directory */
  uint32_t nnodes, cap;  /* node ids registered and alive */
  uint32_t *nodes;       /* sh_try_realloc'd; NULL while cap is 0 */
} sh_journal_t;

void sh_journal_init(sh_journal_t *j);
/* Frees the node list; j may be initialised again. */
void sh_journal_close(sh_journal_t *j);

/* Reads the journal at path into j (initialised, emptied first). 0; -ENOENT
 * when there is none; SH_EBODY for a file that is not a journal or has a
 * malformed line (err says which); -ENOMEM; -errno for another read error.
 * Unknown keys are skipped, so later versions may add some. */
int sh_journal_load(const char *path, sh_journal_t *j, char *err, size_t n);

/* Writes j to path atomically: path.tmp, fsync when `sync`, rename. 0 or
 * -errno (the old journal, if any, is then unchanged and no .tmp is left);
 * -EINVAL for a directory with a newline in it. */
int sh_journal_save(const char *path, const sh_journal_t *j, int sync);

/* Adds node id (nonzero) once. 0 (also when already there) or -ENOMEM. */
int sh_journal_add_node(sh_journal_t *j, uint32_t id);
/* Removes node id if present. */
void sh_journal_remove_node(sh_journal_t *j, uint32_t id);
/* 1 when node id is listed. */
int sh_journal_has_node(const sh_journal_t *j, uint32_t id);

/* Charged attempts (SOCKET_DIR/head.charges): one line "<id as 16 hex
 * digits> <count>" each time the head charges a task an attempt or an actor
 * a restart, appended (O_APPEND, a crash may leave the last line torn) and
 * rewritten whole (tmp, fsync, rename) to drop what is no longer needed. A
 * head restarted on the same directory starts each resent task from the
 * count the previous ones charged, so no task runs more than 1 +
 * max_retries times across any number of restarts. In a map: id ->
 * (void *)(uintptr_t)count, count > 0. */

/* Reads path into m (the largest count per id wins; malformed lines are
 * skipped). 0; -ENOENT when there is none; -ENOMEM; -errno. */
int sh_charges_load(const char *path, sh_map_t *m);
/* Appends one line to fd (opened O_APPEND). 0 or -errno. */
int sh_charges_append(int fd, uint64_t id, uint32_t count);
/* Writes m to path atomically and returns in *fd a descriptor open on it for
 * appending (the old one, if any, is closed). 0 or -errno (*fd is then
 * unchanged and still open on the old file). */
int sh_charges_rewrite(const char *path, const sh_map_t *m, int *fd);

#endif
