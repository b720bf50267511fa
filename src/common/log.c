/* Logging to stderr. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int min_level = SH_LOG_INFO;
static char tag[32] = "shoal";

void sh_log_init(const char *t) {
  snprintf(tag, sizeof tag, "%s", t);
  const char *lv = getenv("SHOAL_LOG_LEVEL");
  if (!lv) return;
  if (!strcmp(lv, "debug")) min_level = SH_LOG_DEBUG;
  else if (!strcmp(lv, "info")) min_level = SH_LOG_INFO;
  else if (!strcmp(lv, "warn")) min_level = SH_LOG_WARN;
  else if (!strcmp(lv, "error")) min_level = SH_LOG_ERROR;
}

void sh_log_set_level(int level) { min_level = level; }

void sh_log(int level, const char *fmt, ...) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  if (level < min_level) return;
  char line[1024];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %s[%d] %s: ", tm.tm_hour,
                   tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, tag, (int)getpid(),
                   names[level]);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", line);
}
