/* Logging to stderr with a level, a process tag and a timestamp. */
#ifndef SH_LOG_H
#define SH_LOG_H

enum { SH_LOG_DEBUG = 0, SH_LOG_INFO = 1, SH_LOG_WARN = 2, SH_LOG_ERROR = 3 };

/* Sets the least level printed (default INFO, or SHOAL_LOG_LEVEL=debug|info|warn|error)
 * and the tag printed before each line ("shoal-agent"). */
void sh_log_init(const char *tag);
void sh_log_set_level(int level);
void sh_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sh_debug(...) sh_log(SH_LOG_DEBUG, __VA_ARGS__)
#define sh_info(...) sh_log(SH_LOG_INFO, __VA_ARGS__)
#define sh_warn(...) sh_log(SH_LOG_WARN, __VA_ARGS__)
#define sh_error(...) sh_log(SH_LOG_ERROR, __VA_ARGS__)

#endif
