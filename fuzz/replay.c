/* Standalone driver for libFuzzer targets: runs LLVMFuzzerTestOneInput once
 * on every file named on the command line or found (non-recursively, in
 * name order) in a directory named there. Lets CI replay the corpus with
 * gcc's sanitizers, no clang needed. Exits non-zero when no input was found;
 * a failing input aborts (the sanitizer or the target's own check). */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole file into a fresh exact-size buffer (so ASan catches reads
 * past the end). Returns 0, or -errno. */
static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return -errno;
  struct stat st;
  if (fstat(fileno(f), &st) != 0) {
    fclose(f);
    return -errno;
  }
  size_t n = (size_t)st.st_size;
  uint8_t *p = malloc(n ? n : 1);
  if (!p || fread(p, 1, n, f) != n) {
    free(p);
    fclose(f);
    return -EIO;
  }
  fclose(f);
  fprintf(stderr, "replay: %s (%zu bytes)\n", path, n);
  LLVMFuzzerTestOneInput(p, n);
  free(p);
  return 0;
}

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int skip_entry(const struct dirent *e) { return e->d_name[0] != '.'; }

/* Runs every regular file of `dir`; adds to *count. Returns 0 or -errno. */
static int run_dir(const char *dir, long *count) {
  struct dirent **names;
  int n = scandir(dir, &names, skip_entry, alphasort);
  if (n < 0) return -errno;
  int rc = 0;
  for (int i = 0; i < n; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
    if (!rc && !is_dir(path)) {
      rc = run_file(path);
      if (rc) fprintf(stderr, "replay: %s: %s\n", path, strerror(-rc));
      else (*count)++;
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

int main(int argc, char **argv) {
  long count = 0;
  for (int i = 1; i < argc; i++) {
    int rc = is_dir(argv[i]) ? run_dir(argv[i], &count) : run_file(argv[i]);
    if (rc) {
      fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(-rc));
      return 1;
    }
    if (!is_dir(argv[i])) count++;
  }
  if (count == 0) {
    fprintf(stderr, "replay: no inputs (usage: %s FILE|DIR...)\n", argv[0]);
    return 1;
  }
  printf("replay: %ld inputs, no failure\n", count);
  return 0;
}
