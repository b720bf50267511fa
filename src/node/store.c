/* The object store: one segment file per object in a tmpfs directory. A
 * writer (driver or worker) creates STORE_DIR/<id>.<pid>.tmp, fills it and
 * renames it to STORE_DIR/<id> (16 hex digits), so a reader never sees a
 * partial object; the agent then seals it (counts it against the capacity),
 * spills the least recently used segments nobody is reading to the spill
 * directory when memory runs short, brings them back when they are needed,
 * and removes them when the last reference is gone. The agent never reads a
 * segment's contents: the layout is the writer's and readers' business
 * (python/shoal/_core/store.c). All on the loop thread. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "node/agent.h"

#define DEFAULT_THRESHOLD (64u * 1024u)
#define DEFAULT_FRACTION 0.30

static void seg_name(uint64_t id, char *buf) {
  snprintf(buf, 24, "%016llx", (unsigned long long)id);
}

static void fmt_bytes(uint64_t v, char *buf, size_t n) {
  if (v >= (1ull << 30)) snprintf(buf, n, "%.2f GiB", v / 1073741824.0);
  else if (v >= (1ull << 20)) snprintf(buf, n, "%.1f MiB", v / 1048576.0);
  else snprintf(buf, n, "%llu bytes", (unsigned long long)v);
}

/* ---- directories ---- */

static int is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Removes every entry of the flat directory `path`, then the directory (and
 * the private tmpfs mounted on it, if any: see mount_huge). */
static void remove_tree(const char *path) {
  DIR *d = opendir(path);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlinkat(dirfd(d), e->d_name, 0);
  closedir(d);
  if (rmdir(path) < 0 && errno == EBUSY && umount2(path, MNT_DETACH) == 0) (void)rmdir(path);
  if (is_dir(path)) sh_warn("could not remove %s: %s", path, strerror(errno));
}

/* Whether the store directory `path` belongs to a head whose journal still
 * exists (it was killed and may be restarted: the new head takes it over). */
static int journaled(const char *path) {
  char mark[4200], journal[4200];
  snprintf(mark, sizeof mark, "%s/" SH_STORE_JOURNAL_MARK, path);
  FILE *f = fopen(mark, "re");
  if (!f) return 0;
  int ok = fgets(journal, sizeof journal, f) != NULL;
  fclose(f);
  if (!ok) return 0;
  journal[strcspn(journal, "\n")] = 0;
  return journal[0] && access(journal, F_OK) == 0;
}

/* Removes `base/<prefix><pid>-XXXXXX` directories whose agent is dead, but
 * not `keep` (a directory a restarted head takes over; may be NULL). */
static void reap_stale(const char *base, const char *prefix, const char *keep) {
  DIR *d = opendir(base);
  if (!d) return;
  size_t pl = strlen(prefix);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, prefix, pl)) continue;
    char *end;
    long pid = strtol(e->d_name + pl, &end, 10);
    if (pid <= 0 || *end != '-' || pid == getpid()) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", base, e->d_name);
    if (keep && !strcmp(path, keep)) continue;
    if (journaled(path)) continue;
    sh_info("removing the object store %s left by agent pid %ld, which is gone", path, pid);
    remove_tree(path);
  }
  closedir(d);
}

/* Mounts a private tmpfs with transparent huge pages (huge=within_size: a
 * 2 MiB page only where the file covers all of it, so small objects still
 * take 4 KiB pages) on the new store directory `dir`, as large as `base`'s
 * file system. With 4 KiB pages a writer pays a page allocation per 4 KiB
 * and a reader a fault per 16 pages; measured with 1 GiB on this 2-core VM
 * (6.18 kernel): writing a new file 1.5-2.6 GB/s -> 4.4-4.9 GB/s, a reader
 * touching every page 62-80 ms -> 8.5-9 ms. Needs CAP_SYS_ADMIN; without it,
 * with THP denied (shmem_enabled "deny") or with SHOAL_STORE_HUGE_PAGES=0 the
 * directory stays a plain one on `base`. Returns 1 when mounted, else 0.
 * The mount goes with the directory (remove_tree), also a dead agent's. */
static int mount_huge(const char *dir, const char *base) {
  const char *env = getenv("SHOAL_STORE_HUGE_PAGES");
  if (env && !strcmp(env, "0")) return 0;
  char thp[128] = "";
  FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "r");
  if (f) {
    if (!fgets(thp, sizeof thp, f)) thp[0] = 0;
    fclose(f);
  }
  if (!f || strstr(thp, "[deny]")) return 0;
  struct statvfs vf;
  if (statvfs(base, &vf) < 0) return 0;
  char opts[96];
  snprintf(opts, sizeof opts, "mode=0700,huge=within_size,size=%llu",
           (unsigned long long)vf.f_blocks * vf.f_frsize);
  if (mount("shoal-store", dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) < 0) {
    sh_debug("object store %s: no private tmpfs with huge pages (%s)", dir, strerror(errno));
    return 0;
  }
  return 1;
}

/* Creates DIR/.shoal-store: a driver uses the store only if it sees this
 * file, so one in another mount namespace (which would see the empty
 * directory under our tmpfs) sends values inline instead. 0 or -1. */
static int mark_store(const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/.shoal-store", dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  close(fd);
  return 0;
}

/* mkdtemp(base/<prefix><pid>-XXXXXX) into out. 0 or -1 with errno. */
static int make_dir(const char *base, const char *prefix, char *out, size_t n) {
  int w = snprintf(out, n, "%s/%s%d-XXXXXX", base, prefix, (int)getpid());
  if (w < 0 || (size_t)w >= n) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return mkdtemp(out) ? 0 : -1;
}

int sh_store_open(sh_agent_t *a, char *err, size_t n) {
  sh_store_t *s = &a->store;
  memset(s, 0, sizeof *s);
  s->dir_fd = s->spill_fd = -1;
  sh_queue_init(&s->lru);
  s->inline_threshold = a->opts.inline_threshold ? a->opts.inline_threshold : DEFAULT_THRESHOLD;
  s->capacity = a->opts.store_memory;
  if (!s->capacity) {
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    s->capacity = (uint64_t)((double)pages * (double)psz * DEFAULT_FRACTION);
  }
  const char *base = a->opts.store_dir ? a->opts.store_dir : "/dev/shm";
  char fallback[4096];
  if (!a->opts.store_dir && !is_dir(base)) {
    snprintf(fallback, sizeof fallback, "%s", a->opts.socket_dir);
    sh_warn("/dev/shm does not exist: the object store lives in %s, which may be disk-backed "
            "(pass --object-store-dir to choose a tmpfs)", fallback);
    base = fallback;
  }
  const char *keep = a->opts.adopt_store_dir;
  reap_stale(base, "shoal-", keep);
  int adopted = 0;
  if (keep && is_dir(keep) && strlen(keep) < sizeof s->dir) {
    snprintf(s->dir, sizeof s->dir, "%s", keep); /* a restarted head's: segments stay */
    adopted = 1;
  } else if (make_dir(base, "shoal-", s->dir, sizeof s->dir) < 0) {
    snprintf(err, n, "cannot create the object store directory in %s: %s (choose another "
             "with --object-store-dir)", base, strerror(errno));
    s->dir[0] = 0;
    return -1;
  }
  /* An adopted directory keeps what it is (a tmpfs mounted on it stays, and
   * one mounted now would hide the segments it holds), marker included. */
  int huge = !adopted && !a->opts.store_dir && mount_huge(s->dir, base);
  if (mark_store(s->dir) < 0 && !(adopted && errno == EEXIST)) {
    snprintf(err, n, "cannot create %s/.shoal-store: %s", s->dir, strerror(errno));
    goto fail;
  }
  struct statvfs vf;
  if (statvfs(s->dir, &vf) == 0) {
    uint64_t room = (uint64_t)vf.f_bavail * vf.f_frsize;
    if (room < s->capacity) {
      char want[32], have[32];
      fmt_bytes(s->capacity, want, sizeof want);
      fmt_bytes(room, have, sizeof have);
      sh_warn("the object store asks for %s but %s has only %s free: using %s", want, base, have,
              have);
      s->capacity = room;
    }
  }
  const char *sbase = a->opts.spill_dir ? a->opts.spill_dir : a->opts.socket_dir;
  if (a->opts.spill_dir && mkdir(sbase, 0700) < 0 && errno != EEXIST) {
    snprintf(err, n, "cannot create the spill directory %s: %s", sbase, strerror(errno));
    goto fail;
  }
  keep = a->opts.adopt_spill_dir;
  reap_stale(sbase, "shoal-spill-", keep);
  if (keep && is_dir(keep) && strlen(keep) < sizeof s->spill_dir) {
    snprintf(s->spill_dir, sizeof s->spill_dir, "%s", keep);
  } else if (make_dir(sbase, "shoal-spill-", s->spill_dir, sizeof s->spill_dir) < 0) {
    snprintf(err, n, "cannot create the spill directory in %s: %s (choose another with "
             "--spill-dir)", sbase, strerror(errno));
    s->spill_dir[0] = 0;
    goto fail;
  }
  s->dir_fd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  s->spill_fd = open(s->spill_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (s->dir_fd < 0 || s->spill_fd < 0) {
    snprintf(err, n, "cannot open the object store directories: %s", strerror(errno));
    goto fail;
  }
  char cap[32];
  fmt_bytes(s->capacity, cap, sizeof cap);
  sh_info("object store %s (%s%s), spilling to %s", s->dir, cap,
          huge ? ", private tmpfs with huge pages" : "", s->spill_dir);
  return 0;
fail:
  sh_store_close(a);
  return -1;
}

void sh_store_close(sh_agent_t *a) {
  sh_store_t *s = &a->store;
  for (int i = 0; i < 2; i++)
    if (s->pipe[i] > 0) close(s->pipe[i]);
  s->pipe[0] = s->pipe[1] = 0;
  if (s->dir_fd >= 0) close(s->dir_fd);
  if (s->spill_fd >= 0) close(s->spill_fd);
  s->dir_fd = s->spill_fd = -1;
  if (s->dir[0]) remove_tree(s->dir);
  if (s->spill_dir[0]) remove_tree(s->spill_dir);
  s->dir[0] = s->spill_dir[0] = 0;
}

/* ---- moving bytes ---- */

/* Copies all of `src` (size bytes) into `dst`. 0 or -errno. */
static int copy_fd(int dst, int src, uint64_t size) {
  off_t off = 0;
  while ((uint64_t)off < size) {
    size_t chunk = size - (uint64_t)off > (1u << 30) ? (1u << 30) : (size_t)(size - (uint64_t)off);
    ssize_t w = sendfile(dst, src, &off, chunk);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -errno;
    if (w == 0) return -EIO; /* the source is shorter than it should be */
  }
  return 0;
}

/* Workers keep the segments they read mapped (tasks on the same object then
 * find its pages already in their page tables); once the agent spills or
 * frees one, every worker is told to drop its mapping (RELEASE, UNMAP). */
static void forget_on_workers(sh_agent_t *a, sh_obj_t *o) {
  if (!o->on_workers) return;
  o->on_workers = 0;
  uint8_t id[8];
  sh_put_u64(id, o->id);
  sh_queue_t *q;
  sh_queue_foreach(q, &a->workers) {
    sh_worker_t *w = sh_queue_data(q, sh_worker_t, link);
    if (!w->conn || w->exited) continue;
    if (sh_frame_append(&w->conn->out, SH_MSG_RELEASE, SH_RELEASE_UNMAP, 0, id, 8) == 0)
      sh_conn_mark_dirty(w->conn);
  }
}

static int spillable(const sh_obj_t *o) {
  return o->stored && !o->spilled && !o->busy && !o->maps;
}

/* Moves o's segment to the spill directory. 0, or -1 with a message. */
static int spill(sh_agent_t *a, sh_obj_t *o, char *why, size_t n) {
  sh_store_t *s = &a->store;
  char name[24];
  seg_name(o->id, name);
  int src = openat(s->dir_fd, name, O_RDONLY | O_CLOEXEC);
  int dst = src < 0 ? -1 : openat(s->spill_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int rc = src < 0 || dst < 0 ? -errno : copy_fd(dst, src, o->size);
  if (dst >= 0 && close(dst) < 0 && !rc) rc = -errno;
  if (src >= 0) close(src);
  if (rc) {
    unlinkat(s->spill_fd, name, 0);
    char sz[32];
    fmt_bytes(o->size, sz, sizeof sz);
    snprintf(why, n, "spilling object %#llx (%s) to %s failed: %s", (unsigned long long)o->id,
             sz, s->spill_dir, strerror(-rc));
    return -1;
  }
  unlinkat(s->dir_fd, name, 0);
  forget_on_workers(a, o);
  sh_queue_remove(&o->lru);
  s->used -= o->size;
  s->spilled += o->size;
  s->nspilled++;
  s->n_spills++;
  o->spilled = 1;
  sh_debug("spilled object %#llx (%llu bytes)", (unsigned long long)o->id,
           (unsigned long long)o->size);
  return 0;
}

/* Spills least recently used segments, never `keep`, until `need` more
 * bytes fit. 0, or with a message ROOM_IN_USE (nothing left that may be
 * spilled) or ROOM_IO (a spill failed: the spill disk is full). */
enum { ROOM_IN_USE = -1, ROOM_IO = -2 };

static int make_room(sh_agent_t *a, uint64_t need, const sh_obj_t *keep, char *why, size_t n) {
  sh_store_t *s = &a->store;
  while (s->used + need > s->capacity) {
    sh_obj_t *victim = NULL;
    sh_queue_t *q;
    sh_queue_foreach(q, &s->lru) {
      sh_obj_t *o = sh_queue_data(q, sh_obj_t, lru);
      if (o != keep && spillable(o)) {
        victim = o;
        break;
      }
    }
    if (!victim) {
      char used[32], cap[32], want[32];
      fmt_bytes(s->used, used, sizeof used);
      fmt_bytes(s->capacity, cap, sizeof cap);
      fmt_bytes(need, want, sizeof want);
      snprintf(why, n, "the object store is full: %s of %s in memory is in use (mapped by a "
               "driver or read by a running task) and cannot be spilled to make room for %s; "
               "drop references to objects you no longer need, or start the cluster with a "
               "larger --object-store-memory", used, cap, want);
      return ROOM_IN_USE;
    }
    if (spill(a, victim, why, n)) return ROOM_IO;
  }
  return 0;
}

/* ---- recycled segment files ----
 *
 * A new file on tmpfs costs the writer a page allocation (and, on huge
 * pages, zeroing) per page; writing into pages that already exist runs at
 * nearly memcpy speed. So the memory of a freed segment of at least
 * RECYCLE_MIN bytes is not given back at once: the file is renamed to
 * "free.<size, 16 hex digits>.<seq>" in the store directory, and a writer
 * (python/shoal/_core/store.c) claims one at least as large as it needs by
 * renaming it to its <id>.<pid>.tmp, truncates it to its size and writes
 * every byte of it before renaming it into place, as with a new file.
 * The pool holds at most half the capacity (like an arena a store keeps),
 * counts against it (the agent drops the whole pool before the store would
 * go over capacity, before spilling anything), and goes with the store. The agent does not see a writer claim a file:
 * `pool` is an upper bound, made exact again by pool_scan. */

#define RECYCLE_MIN (32ull << 20) /* the same in python/shoal/_core/store.c */
#define POOL_PREFIX "free."

/* A stream over the store directory from its start (a dup of dir_fd, which
 * shares the directory offset, rewound), or NULL. closedir() when done. */
static DIR *store_dir_open(const sh_store_t *s) {
  int fd = s->dir_fd < 0 ? -1 : dup(s->dir_fd);
  DIR *d = fd < 0 ? NULL : fdopendir(fd);
  if (!d) {
    if (fd >= 0) close(fd);
    return NULL;
  }
  rewinddir(d);
  return d;
}

/* Sums the sizes of the pool's files into s->pool; with `drop`, removes
 * them instead. */
static void pool_scan(sh_store_t *s, int drop) {
  s->pool = 0;
  DIR *d = store_dir_open(s);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, POOL_PREFIX, sizeof POOL_PREFIX - 1)) continue;
    if (drop) {
      unlinkat(s->dir_fd, e->d_name, 0);
      continue;
    }
    s->pool += strtoull(e->d_name + sizeof POOL_PREFIX - 1, NULL, 16);
  }
  closedir(d);
}

uint64_t sh_store_pool_bytes(sh_agent_t *a) {
  if (a->store.dir_fd < 0) return 0;
  pool_scan(&a->store, 0);
  return a->store.pool;
}

/* Takes the smallest pool file of at least `size` bytes, renamed to `to`.
 * 1 when one was taken (its pages are there to be written over), else 0. */
static int pool_claim(sh_store_t *s, uint64_t size, const char *to) {
  for (int tries = 0; tries < 4; tries++) {
    DIR *d = store_dir_open(s);
    if (!d) return 0;
    char best[64] = "";
    uint64_t best_size = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
      if (strncmp(e->d_name, POOL_PREFIX, sizeof POOL_PREFIX - 1)) continue;
      uint64_t z = strtoull(e->d_name + sizeof POOL_PREFIX - 1, NULL, 16);
      if (z < size || (best[0] && z >= best_size) || strlen(e->d_name) >= sizeof best) continue;
      snprintf(best, sizeof best, "%s", e->d_name);
      best_size = z;
    }
    closedir(d);
    if (!best[0]) return 0;
    if (renameat(s->dir_fd, best, s->dir_fd, to) == 0) {
      s->pool = s->pool > best_size ? s->pool - best_size : 0;
      return 1;
    }
    /* A writer took it first: look again. */
  }
  return 0;
}

/* Keeps the freed segment `name` of `size` bytes in the pool when it is big
 * enough and there is room; else removes it. */
static void pool_or_unlink(sh_store_t *s, const char *name, uint64_t size) {
  if (size >= RECYCLE_MIN && size <= s->capacity / 2) {
    pool_scan(s, 0);
    if (s->pool + size <= s->capacity / 2 && s->used + s->pool + size <= s->capacity) {
      char pname[64];
      snprintf(pname, sizeof pname, POOL_PREFIX "%016llx.%llu", (unsigned long long)size,
               (unsigned long long)++s->pool_seq);
      if (renameat(s->dir_fd, name, s->dir_fd, pname) == 0) {
        s->pool += size;
        return;
      }
    }
  }
  unlinkat(s->dir_fd, name, 0);
}

/* ---- the object lifecycle ---- */

/* A restarted head: o's segment (file `name`, `size` bytes) was spilled by
 * the previous head, whose spill directory this one took over: o is
 * registered as spilled, brought back when used. 0, or -1 when there is no
 * such file. */
static int adopt_spilled(sh_agent_t *a, sh_obj_t *o, const char *name, uint64_t size) {
  sh_store_t *s = &a->store;
  struct stat st;
  if (!a->rec.restarted || s->spill_fd < 0 || fstatat(s->spill_fd, name, &st, 0) < 0 ||
      (uint64_t)st.st_size != size)
    return -1;
  o->stored = 1;
  o->spilled = 1;
  o->code = SH_CODE_STORED;
  o->size = size;
  o->last_use_ns = sh_now_ns();
  s->spilled += size;
  s->nspilled++;
  s->nstored++;
  return 0;
}

uint32_t sh_store_seal(sh_agent_t *a, sh_obj_t *o, uint64_t size, char *why, size_t n) {
  sh_store_t *s = &a->store;
  char name[24];
  seg_name(o->id, name);
  if (s->dir_fd < 0) {
    snprintf(why, n, "this node has no object store");
    return SH_ST_BAD_REQUEST;
  }
  struct stat st;
  if (fstatat(s->dir_fd, name, &st, 0) < 0) {
    int e = errno;
    if (e == ENOENT && adopt_spilled(a, o, name, size) == 0) return SH_ST_OK;
    snprintf(why, n, "the segment of object %#llx is missing from %s: %s",
             (unsigned long long)o->id, s->dir, strerror(e));
    return SH_ST_LOST;
  }
  if ((uint64_t)st.st_size != size) {
    unlinkat(s->dir_fd, name, 0);
    snprintf(why, n, "the segment of object %#llx is %lld bytes, not the %llu announced",
             (unsigned long long)o->id, (long long)st.st_size, (unsigned long long)size);
    return SH_ST_BAD_REQUEST;
  }
  if (size > s->capacity) {
    unlinkat(s->dir_fd, name, 0);
    s->n_full++;
    char sz[32], cap[32];
    fmt_bytes(size, sz, sizeof sz);
    fmt_bytes(s->capacity, cap, sizeof cap);
    snprintf(why, n, "object %#llx is %s, larger than the whole object store (%s): start "
             "the cluster with a larger --object-store-memory (shoal.init(object_store_memory="
             "...))", (unsigned long long)o->id, sz, cap);
    return SH_ST_STORE_FULL;
  }
  o->stored = 1;
  o->spilled = 0;
  o->code = SH_CODE_STORED;
  o->size = size;
  o->last_use_ns = sh_now_ns();
  sh_queue_insert_tail(&s->lru, &o->lru);
  s->used += size;
  s->nstored++;
  if (s->pool && s->used + s->pool > s->capacity) pool_scan(s, 1);
  if (s->used <= s->capacity) return SH_ST_OK;
  if (make_room(a, 0, o, why, n) == 0) return SH_ST_OK;
  /* Nothing else can go: put the new object itself on disk, if it can. */
  char why2[512];
  if (spillable(o) && spill(a, o, why2, sizeof why2) == 0) return SH_ST_OK;
  sh_store_free(a, o);
  o->stored = 0;
  o->code = 0;
  s->n_full++;
  return SH_ST_STORE_FULL;
}

uint32_t sh_store_resident(sh_agent_t *a, sh_obj_t *o, char *why, size_t n) {
  sh_store_t *s = &a->store;
  o->last_use_ns = sh_now_ns();
  if (!o->spilled) {
    sh_queue_remove(&o->lru);
    sh_queue_insert_tail(&s->lru, &o->lru);
    return SH_ST_OK;
  }
  /* When the spill disk is full, restoring first frees this object's spill
   * file, which then makes room for the victims: memory runs over by one
   * object for a moment instead of the object being unreachable. */
  if (s->pool && s->used + s->pool + o->size > s->capacity) pool_scan(s, 1);
  int room = make_room(a, o->size, o, why, n);
  if (room == ROOM_IN_USE) {
    s->n_full++;
    return SH_ST_STORE_FULL;
  }
  char name[24], tmp[40];
  seg_name(o->id, name);
  snprintf(tmp, sizeof tmp, "%s.restore", name);
  int src = openat(s->spill_fd, name, O_RDONLY | O_CLOEXEC);
  if (src < 0) {
    snprintf(why, n, "spilled object %#llx is missing from %s: %s", (unsigned long long)o->id,
             s->spill_dir, strerror(errno));
    return SH_ST_LOST;
  }
  int dst = openat(s->dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int rc = dst < 0 ? -errno : copy_fd(dst, src, o->size);
  if (dst >= 0 && close(dst) < 0 && !rc) rc = -errno;
  close(src);
  if (!rc && renameat(s->dir_fd, tmp, s->dir_fd, name) < 0) rc = -errno;
  if (rc) {
    unlinkat(s->dir_fd, tmp, 0);
    s->n_full++;
    snprintf(why, n, "bringing spilled object %#llx back into %s failed: %s",
             (unsigned long long)o->id, s->dir, strerror(-rc));
    return rc == -ENOSPC ? SH_ST_STORE_FULL : SH_ST_LOST;
  }
  unlinkat(s->spill_fd, name, 0);
  o->spilled = 0;
  s->spilled -= o->size;
  s->nspilled--;
  s->used += o->size;
  s->n_restores++;
  sh_queue_insert_tail(&s->lru, &o->lru);
  if (room == ROOM_IO && make_room(a, 0, o, why, n))
    sh_warn("object store over capacity after bringing %#llx back: %s", (unsigned long long)o->id,
            why);
  return SH_ST_OK;
}

void sh_store_free(sh_agent_t *a, sh_obj_t *o) {
  sh_store_t *s = &a->store;
  if (!o->stored || o->remote) return; /* remote: no file here */
  /* A worker may still view a segment it was sent after its task (an actor
   * that kept the array): its pages must stay that object's, so such a file
   * is removed (the pages go when the last view does), never recycled. */
  int viewed = o->on_workers;
  forget_on_workers(a, o);
  char name[24];
  seg_name(o->id, name);
  if (o->spilled) {
    if (s->spill_fd >= 0) unlinkat(s->spill_fd, name, 0);
    s->spilled -= o->size;
    s->nspilled--;
  } else {
    sh_queue_remove(&o->lru);
    s->used -= o->size;
    if (s->dir_fd >= 0 && !viewed) pool_or_unlink(s, name, o->size);
    else if (s->dir_fd >= 0) unlinkat(s->dir_fd, name, 0);
  }
  s->nstored--;
  o->stored = 0;
}

void sh_store_discard(sh_agent_t *a, uint64_t id) {
  if (a->store.dir_fd < 0) return;
  char name[24];
  seg_name(id, name);
  unlinkat(a->store.dir_fd, name, 0);
}

void sh_store_reap(sh_agent_t *a, uint32_t client_id, uint32_t pid) {
  sh_store_t *s = &a->store;
  DIR *d = store_dir_open(s);
  if (!d) return;
  char suffix[32];
  int sl = snprintf(suffix, sizeof suffix, ".%u.tmp", pid);
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (pid && len > (size_t)sl && strcmp(e->d_name + len - (size_t)sl, suffix) == 0) {
      unlinkat(s->dir_fd, e->d_name, 0);
      continue;
    }
    if (!client_id || len != 16) continue;
    char *end;
    uint64_t id = strtoull(e->d_name, &end, 16);
    if (*end || (uint32_t)(id >> 40) != client_id || sh_map_get(&a->objects, id)) continue;
    unlinkat(s->dir_fd, e->d_name, 0);
  }
  closedir(d);
}

/* ---- segments that cross nodes (whole, inside one frame) ---- */

/* ---- segments between head and nodes ---- */

/* A segment arriving in CHUNK frames, written into <id>.<pid>.tmp as the
 * chunks come and renamed into place after the last one. */
typedef struct sh_xfer_s {
  int fd;         /* -1 once complete */
  uint64_t total, got;
} sh_xfer_t;

static void xfer_tmp(uint64_t id, char *buf, size_t n) {
  snprintf(buf, n, "%016llx.%d.xfer", (unsigned long long)id, (int)getpid());
}

int sh_store_open_segment(sh_agent_t *a, uint64_t id, uint64_t size) {
  sh_store_t *s = &a->store;
  if (s->dir_fd < 0) return -ENOENT;
  char name[24];
  seg_name(id, name);
  int fd = openat(s->dir_fd, name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat st;
  int rc = fstat(fd, &st) < 0 ? -errno : (uint64_t)st.st_size != size ? -EIO : 0;
  if (rc) {
    close(fd);
    return rc;
  }
  return fd;
}

size_t sh_store_chunk_size(const sh_agent_t *a) {
  /* Chunks fit the peer's frame limit, which is this daemon's too. */
  return a->opts.max_frame / 2 < SH_CHUNK_MAX ? a->opts.max_frame / 2 : SH_CHUNK_MAX;
}

int sh_store_send(sh_agent_t *a, sh_conn_t *c, uint64_t id, uint64_t size) {
  int fd = sh_store_open_segment(a, id, size);
  if (fd < 0) return fd;
  sh_conn_send_segment(c, id, size, fd);
  a->store.n_sent++;
  a->store.sent_bytes += size;
  return 0;
}

static void xfer_drop(sh_agent_t *a, sh_conn_t *c, uint64_t id, sh_xfer_t *x) {
  char tmp[48];
  xfer_tmp(id, tmp, sizeof tmp);
  if (x->fd >= 0) {
    close(x->fd);
    if (a->store.dir_fd >= 0) unlinkat(a->store.dir_fd, tmp, 0);
  }
  sh_map_del(&c->xfers, id);
  sh_free(x);
}

int sh_store_chunk_begin(sh_agent_t *a, sh_conn_t *c, uint64_t id, uint64_t total,
                         uint64_t off, size_t k, char *why, size_t n) {
  sh_store_t *s = &a->store;
  sh_xfer_t *x = sh_map_get(&c->xfers, id);
  if (x && x->fd < 0) { /* a new copy of one already received: start over */
    xfer_drop(a, c, id, x);
    x = NULL;
  }
  if (!x) {
    if (off != 0 || s->dir_fd < 0) {
      snprintf(why, n, "object %#llx: a chunk at offset %llu starts no transfer",
               (unsigned long long)id, (unsigned long long)off);
      return -1;
    }
    char tmp[48];
    xfer_tmp(id, tmp, sizeof tmp);
    x = sh_calloc(1, sizeof *x);
    x->total = total;
    /* Into a recycled file when one is big enough: its pages are written
     * over instead of allocated (and zeroed) one by one. */
    if (total >= RECYCLE_MIN && pool_claim(s, total, tmp)) {
      x->fd = openat(s->dir_fd, tmp, O_WRONLY | O_CLOEXEC);
      if (x->fd >= 0 && ftruncate(x->fd, (off_t)total) < 0) {
        close(x->fd);
        x->fd = -1;
      }
    } else {
      x->fd = -1;
    }
    if (x->fd < 0)
      x->fd = openat(s->dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (x->fd < 0 || sh_map_put(&c->xfers, id, x)) {
      snprintf(why, n, "object %#llx: cannot create %s/%s: %s", (unsigned long long)id, s->dir,
               tmp, x->fd < 0 ? strerror(errno) : "out of memory");
      if (x->fd >= 0) {
        close(x->fd);
        unlinkat(s->dir_fd, tmp, 0);
      }
      sh_free(x);
      return -1;
    }
  }
  if (total != x->total || off != x->got || k > total - x->got) {
    snprintf(why, n, "object %#llx: chunk of %zu bytes at offset %llu does not follow the %llu "
             "of %llu bytes received", (unsigned long long)id, k, (unsigned long long)off,
             (unsigned long long)x->got, (unsigned long long)x->total);
    xfer_drop(a, c, id, x);
    return -1;
  }
  return 0;
}

/* Counts k more bytes of id's segment written; renames it into place when
 * it is whole. 0, or -1 with a message (the transfer is dropped). */
static int chunk_advance(sh_agent_t *a, sh_conn_t *c, uint64_t id, sh_xfer_t *x, size_t k,
                         char *why, size_t n) {
  sh_store_t *s = &a->store;
  x->got += k;
  if (x->got < x->total) return 0;
  char tmp[48], name[24];
  xfer_tmp(id, tmp, sizeof tmp);
  seg_name(id, name);
  int rc = close(x->fd) < 0 ? errno : 0;
  x->fd = -1;
  if (!rc && renameat(s->dir_fd, tmp, s->dir_fd, name) < 0) rc = errno;
  if (rc) {
    unlinkat(s->dir_fd, tmp, 0);
    snprintf(why, n, "object %#llx: finishing its segment in %s failed: %s",
             (unsigned long long)id, s->dir, strerror(rc));
    xfer_drop(a, c, id, x);
    return -1;
  }
  s->n_received++;
  s->received_bytes += x->total;
  return 0;
}

int sh_store_chunk_data(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p, size_t k,
                        char *why, size_t n) {
  sh_xfer_t *x = sh_map_get(&c->xfers, id);
  if (!x || x->fd < 0 || k > x->total - x->got) {
    snprintf(why, n, "object %#llx: %zu bytes arrived for no transfer", (unsigned long long)id, k);
    return -1;
  }
  for (size_t done = 0; done < k;) {
    ssize_t w = pwrite(x->fd, p + done, k - done, (off_t)(x->got + done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      snprintf(why, n, "object %#llx: writing into %s failed: %s", (unsigned long long)id,
               a->store.dir, w < 0 ? strerror(errno) : "short write");
      xfer_drop(a, c, id, x);
      return -1;
    }
    done += (size_t)w;
  }
  return chunk_advance(a, c, id, x, k, why, n);
}

/* The pipe the socket's bytes go through on their way into a segment file
 * (splice: they are copied once, into the file's pages). */
static int splice_pipe(sh_agent_t *a) {
  sh_store_t *s = &a->store;
  if (s->pipe[1] > 0) return 0;
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) return -errno;
  fcntl(p[1], F_SETPIPE_SZ, 1 << 20); /* fewer, larger moves when allowed */
  s->pipe[0] = p[0];
  s->pipe[1] = p[1];
  return 0;
}

ssize_t sh_store_chunk_splice(sh_agent_t *a, sh_conn_t *c, uint64_t id, size_t max, char *why,
                              size_t n) {
  sh_store_t *s = &a->store;
  sh_xfer_t *x = sh_map_get(&c->xfers, id);
  if (!x || x->fd < 0 || max > x->total - x->got) {
    snprintf(why, n, "object %#llx: bytes arrived for no transfer", (unsigned long long)id);
    return -2;
  }
  int rc = splice_pipe(a);
  if (rc) {
    snprintf(why, n, "cannot make a pipe: %s", strerror(-rc));
    return -2;
  }
  ssize_t k = splice(c->fd, NULL, s->pipe[1], NULL, max, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (k < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -1 : -3;
  if (k == 0) return 0;
  loff_t off = (loff_t)x->got;
  for (ssize_t left = k; left > 0;) {
    ssize_t w = splice(s->pipe[0], NULL, x->fd, &off, (size_t)left, SPLICE_F_MOVE);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      /* Keep the pipe empty for the next transfer, then give this one up. */
      char sink[4096];
      while (left > 0) {
        ssize_t r = read(s->pipe[0], sink, (size_t)left < sizeof sink ? (size_t)left : sizeof sink);
        if (r <= 0) break;
        left -= r;
      }
      snprintf(why, n, "object %#llx: writing into %s failed: %s", (unsigned long long)id, s->dir,
               w < 0 ? strerror(errno) : "short write");
      xfer_drop(a, c, id, x);
      return k; /* the bytes are consumed from the socket all the same */
    }
    left -= w;
  }
  if (chunk_advance(a, c, id, x, (size_t)k, why, n)) return k;
  why[0] = 0;
  return k;
}

int sh_store_chunk(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *body, uint32_t len,
                   char *why, size_t n) {
  if (len < SH_CHUNK_HDR) {
    snprintf(why, n, "a CHUNK frame of %u bytes is shorter than its 16-byte header", len);
    return -1;
  }
  size_t k = len - SH_CHUNK_HDR;
  if (sh_store_chunk_begin(a, c, id, sh_get_u64(body), sh_get_u64(body + 8), k, why, n)) return -1;
  return sh_store_chunk_data(a, c, id, body + SH_CHUNK_HDR, k, why, n);
}

int sh_store_exists(sh_agent_t *a, uint64_t id) {
  char name[24];
  seg_name(id, name);
  sh_store_t *s = &a->store;
  return (s->dir_fd >= 0 && faccessat(s->dir_fd, name, F_OK, 0) == 0) ||
         (a->rec.restarted && s->spill_fd >= 0 && faccessat(s->spill_fd, name, F_OK, 0) == 0);
}

int sh_store_received(sh_agent_t *a, sh_conn_t *c, uint64_t id, uint64_t size) {
  sh_xfer_t *x = sh_map_get(&c->xfers, id);
  if (!x) return 0;
  int ok = x->fd < 0 && x->total == size;
  xfer_drop(a, c, id, x);
  return ok;
}

void sh_store_xfers_close(sh_agent_t *a, sh_conn_t *c) {
  uint64_t id;
  void *v;
  for (size_t i = 0; sh_map_next(&c->xfers, &i, &id, &v);) {
    sh_xfer_t *x = v;
    /* A complete segment whose PUT or RESULT never came: nobody owns it. */
    if (x->fd < 0 && !sh_map_get(&a->objects, id)) sh_store_discard(a, id);
    xfer_drop(a, c, id, x);
  }
  sh_map_close(&c->xfers);
}
