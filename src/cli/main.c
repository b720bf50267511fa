/* The `shoal` command: start (the daemon), status and stop. Sections: usage
 * texts; option parsing; a small blocking client for status and stop; the
 * commands. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <sched.h>

#include "common/auth.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/tls.h"
#include "node/agent.h"

#define SHOAL_VERSION "0.1.0"

static const char *usage_main =
    "usage: shoal <command> [options]\n"
    "\n"
    "shoal runs Python functions, actors and pools on a cluster whose engine is C.\n"
    "\n"
    "commands:\n"
    "  start    start a daemon: a head (with its node agent), or a node that joins one\n"
    "  status   show nodes, workers, resources and tasks of a running daemon\n"
    "  memory   list the objects a running daemon holds: size, where, who holds them\n"
    "  stop     stop a running daemon\n"
    "  drain    stop sending new work to a node (running work finishes)\n"
    "\n"
    "options:\n"
    "  -h, --help     show this help; `shoal CMD --help` shows a command's options\n"
    "  --version      print the version\n";

static const char *usage_start =
    "usage: shoal start --head [options]\n"
    "       shoal start --address HOST:PORT [options]\n"
    "\n"
    "With --head, starts a head and its node agent in one process. With --address,\n"
    "starts a node agent that joins the head at HOST:PORT: it proves it holds the\n"
    "cluster token, registers its resources, runs the work the head sends, and\n"
    "reconnects on its own when the head is unreachable. Without --block it runs\n"
    "in the background (log in SOCKET_DIR/agent.log) and this command returns once\n"
    "it accepts connections.\n"
    "\n"
    "options:\n"
    "  --head                 start a head\n"
    "  --address HOST:PORT    start a node agent that joins the head listening there\n"
    "                         (its --port); the token as for --token-file below\n"
    "  --node-port N          node: the TCP port other nodes pull objects from, on the\n"
    "                         address its connection to the head uses (default: any\n"
    "                         free port; 0 too; -1: none, objects go through the head)\n"
    "  --heartbeat-timeout SECONDS  a node (head: any node; node: the head) silent\n"
    "                         this long is declared dead (default 10)\n"
    "  --head-timeout SECONDS  node: keep running the head's work this long after\n"
    "                         losing the head, for it to come back (default 60);\n"
    "                         a restarted head: keep results and objects this long\n"
    "                         for their drivers to reconnect and claim\n"
    "  --socket-dir DIR       0700 directory for agent.sock and agent.pid\n"
    "                         (default $SHOAL_SOCKET_DIR or /tmp/shoal-UID/default)\n"
    "  --port N               also listen on TCP port N (on 127.0.0.1 unless --bind);\n"
    "                         TCP peers must prove they hold the cluster token\n"
    "  --bind ADDR            the address --port listens on, e.g. 0.0.0.0 for every\n"
    "                         interface (default 127.0.0.1)\n"
    "  --token-file PATH      the cluster token; a head creates it (mode 0600) if missing\n"
    "                         (default $SHOAL_TOKEN, $SHOAL_TOKEN_FILE or ~/.shoal/token)\n"
    "  --auth-timeout SECONDS how long a TCP peer has to authenticate, TLS handshake\n"
    "                         included (default 10)\n"
    "  --tls-cert PATH        head: speak TLS on --port with this PEM certificate\n"
    "                         (chain); node: present it to the head and to nodes it\n"
    "                         pulls from, and serve its node port with it over TLS\n"
    "                         (required with TLS unless --node-port -1; it must name\n"
    "                         the address the head sees this node at)\n"
    "  --tls-key PATH         the PEM private key of --tls-cert\n"
    "  --tls-ca PATH          head: peers must present a certificate signed by this CA\n"
    "                         (mutual TLS); node: speak TLS to the head and other nodes,\n"
    "                         trust this CA for their certificates, and ask nodes that\n"
    "                         pull from it for one (node default $SHOAL_TLS_CA,\n"
    "                         $SHOAL_TLS_CERT, $SHOAL_TLS_KEY)\n"
    "  --workers N            worker processes in the pool (default: CPUs)\n"
    "  --num-cpus N           CPUs this node offers (default: CPUs usable here)\n"
    "  --num-gpus N           GPUs this node offers (default: NVIDIA GPUs found)\n"
    "  --memory BYTES         memory this node offers (default: physical memory)\n"
    "  --resources JSON       custom resources, e.g. '{\"bigmem\": 1}'; CPU, GPU and\n"
    "                         memory keys override the counts above\n"
    "  --python PATH          interpreter for workers (default $SHOAL_PYTHON or python3)\n"
    "  --block                stay in the foreground (for supervisors)\n"
    "  --embedded             private cluster of one driver: exit when it disconnects\n"
    "  --max-frame BYTES      largest accepted message (default 1 GiB)\n"
    "  --object-store-memory BYTES  shared memory for large objects; beyond it\n"
    "                         they spill to disk (default: 30% of physical memory)\n"
    "  --object-store-dir DIR where object segments live, a tmpfs (default /dev/shm)\n"
    "  --spill-dir DIR        where spilled objects go (default: SOCKET_DIR)\n"
    "  --inline-threshold BYTES  values this big or bigger go to the object store;\n"
    "                         smaller ones travel inside messages (default 64K)\n"
    "  --log-level LEVEL      debug, info, warn or error (default info)\n"
    "  -h, --help             show this help\n";

static const char *usage_status =
    "usage: shoal status [options]\n"
    "\n"
    "options:\n"
    "  --socket-dir DIR       the daemon's directory (default as for start)\n"
    "  --address ADDR         unix:PATH, a socket path, or HOST:PORT\n"
    "  --token-file PATH      the cluster token for HOST:PORT (default $SHOAL_TOKEN,\n"
    "                         $SHOAL_TOKEN_FILE or ~/.shoal/token)\n"
    "  --json                 print JSON for scripts\n"
    "  --timeout SECONDS      how long to wait for an answer (default 10)\n"
    "  --tls-ca PATH          speak TLS to HOST:PORT and trust this CA for the daemon's\n"
    "                         certificate (default $SHOAL_TLS_CA)\n"
    "  --tls-cert PATH, --tls-key PATH  present this certificate and key (mutual TLS;\n"
    "                         default $SHOAL_TLS_CERT, $SHOAL_TLS_KEY)\n"
    "  -h, --help             show this help\n";

static const char *usage_memory =
    "usage: shoal memory [options]\n"
    "\n"
    "Lists every object the daemon holds (size, in memory / spilled / inline, the\n"
    "driver that owns it, tasks and mappings using it) and totals per node.\n"
    "\n"
    "options:\n"
    "  --socket-dir DIR       the daemon's directory (default as for start)\n"
    "  --address ADDR         unix:PATH, a socket path, or HOST:PORT\n"
    "  --json                 print JSON for scripts\n"
    "  --timeout SECONDS      how long to wait for an answer (default 10)\n"
    "  --tls-ca PATH          speak TLS to HOST:PORT and trust this CA for the daemon's\n"
    "                         certificate (default $SHOAL_TLS_CA)\n"
    "  --tls-cert PATH, --tls-key PATH  present this certificate and key (mutual TLS;\n"
    "                         default $SHOAL_TLS_CERT, $SHOAL_TLS_KEY)\n"
    "  -h, --help             show this help\n";

static const char *usage_drain =
    "usage: shoal drain NODE_ID [options]\n"
    "\n"
    "The head stops sending new work to node NODE_ID (`shoal status` lists the\n"
    "ids); work running there finishes.\n"
    "\n"
    "options:\n"
    "  --socket-dir DIR       the head's directory (default as for start)\n"
    "  --address ADDR         unix:PATH, a socket path, or HOST:PORT of the head\n"
    "  --token-file PATH      the cluster token for HOST:PORT (default $SHOAL_TOKEN,\n"
    "                         $SHOAL_TOKEN_FILE or ~/.shoal/token)\n"
    "  --timeout SECONDS      how long to wait for an answer (default 10)\n"
    "  --tls-ca PATH          speak TLS to HOST:PORT and trust this CA for the daemon's\n"
    "                         certificate (default $SHOAL_TLS_CA)\n"
    "  --tls-cert PATH, --tls-key PATH  present this certificate and key (mutual TLS;\n"
    "                         default $SHOAL_TLS_CERT, $SHOAL_TLS_KEY)\n"
    "  -h, --help             show this help\n";

static const char *usage_stop =
    "usage: shoal stop [options]\n"
    "\n"
    "options:\n"
    "  --socket-dir DIR       the daemon's directory (default as for start)\n"
    "  --address ADDR         unix:PATH, a socket path, or HOST:PORT\n"
    "  --token-file PATH      the cluster token for HOST:PORT (default $SHOAL_TOKEN,\n"
    "                         $SHOAL_TOKEN_FILE or ~/.shoal/token)\n"
    "  --timeout SECONDS      how long to wait for it to exit (default 10)\n"
    "  --tls-ca PATH          speak TLS to HOST:PORT and trust this CA for the daemon's\n"
    "                         certificate (default $SHOAL_TLS_CA)\n"
    "  --tls-cert PATH, --tls-key PATH  present this certificate and key (mutual TLS;\n"
    "                         default $SHOAL_TLS_CERT, $SHOAL_TLS_KEY)\n"
    "  -h, --help             show this help\n";

static int usage_error(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const char *usage, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "shoal: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n\n%s", usage);
  va_end(ap);
  return 2;
}

static void default_socket_dir(char *buf, size_t n) {
  const char *env = getenv("SHOAL_SOCKET_DIR");
  if (env && *env) snprintf(buf, n, "%s", env);
  else snprintf(buf, n, "/tmp/shoal-%u/default", (unsigned)getuid());
}

static int parse_num(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v) || v < 0) return -1;
  *out = v;
  return 0;
}

/* A duration flag: seconds from 0.2 to max. 0, or -1 when it is not one. */
static int parse_seconds(const char *s, double max, double *out) {
  return parse_num(s, out) || *out < 0.2 || *out > max ? -1 : 0;
}

/* Parses "512", "4G", "1.5GiB", "100M" into bytes. */
static int parse_bytes(const char *s, uint64_t *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || v < 0 || !isfinite(v)) return -1;
  double mul = 1;
  if (*end == 'K' || *end == 'k') mul = 1024.0, end++;
  else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
  else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
  else if (*end == 'T' || *end == 't') mul = 1024.0 * 1024 * 1024 * 1024, end++;
  if (*end == 'i') end++;
  if (*end == 'B') end++;
  if (*end) return -1;
  *out = (uint64_t)(v * mul);
  return 0;
}

static int count_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

static int count_gpus(void) {
  DIR *d = opendir("/proc/driver/nvidia/gpus");
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* ---- a blocking client for status and stop ---- */

/* The TLS files of a client connection; all NULL: plain TCP. */
typedef struct tls_files_s {
  const char *ca, *cert, *key;
} tls_files_t;

/* The one connection this command makes speaks TLS through this, or NULL. */
static sh_tls_t *cli_tls;

/* Fills what the options left out from $SHOAL_TLS_CA, $SHOAL_TLS_CERT and
 * $SHOAL_TLS_KEY. Returns whether TLS is asked for. */
static int tls_files_env(tls_files_t *f) {
  const char *v;
  if (!f->ca && (v = getenv("SHOAL_TLS_CA")) && *v) f->ca = v;
  if (!f->cert && (v = getenv("SHOAL_TLS_CERT")) && *v) f->cert = v;
  if (!f->key && (v = getenv("SHOAL_TLS_KEY")) && *v) f->key = v;
  return f->ca || f->cert || f->key;
}

/* Starts TLS on the connected TCP socket fd to `address` and completes the
 * handshake within timeout_s. 0, or -1 with a message printed. */
static int tls_cli(int fd, const char *address, const tls_files_t *files, double timeout_s) {
  char err[1024], host[256];
  sh_tls_ctx_t *ctx;
  if (sh_tls_ctx_create(SH_TLS_CLIENT, files->cert, files->key, files->ca, &ctx, err,
                        sizeof err)) {
    fprintf(stderr, "shoal: %s\n", err);
    return -1;
  }
  const char *colon = strrchr(address, ':');
  const char *h = address;
  size_t n = (size_t)(colon - address);
  if (n >= 2 && h[0] == '[' && h[n - 1] == ']') h++, n -= 2;
  snprintf(host, sizeof host, "%.*s", (int)n, h);
  int rc = sh_tls_create(ctx, fd, host, &cli_tls);
  sh_tls_ctx_destroy(ctx);
  if (rc) {
    fprintf(stderr, "shoal: cannot start TLS: %s\n", sh_strerror(rc));
    return -1;
  }
  /* The socket blocks: bound every TLS read and write by the timeout. */
  struct timeval tv = {(time_t)timeout_s, (long)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  rc = sh_tls_handshake(cli_tls);
  if (rc == -EAGAIN)
    fprintf(stderr, "shoal: the daemon at %s did not complete the TLS handshake within %.3g s\n",
            address, timeout_s);
  else if (rc)
    fprintf(stderr, "shoal: TLS with the daemon at %s failed: %s\n", address,
            sh_tls_error(cli_tls));
  return rc ? -1 : 0;
}

/* Closes the connection (and its TLS). */
static void close_daemon(int fd) {
  if (fd < 0) return;
  sh_tls_shutdown(cli_tls);
  sh_tls_destroy(cli_tls);
  cli_tls = NULL;
  close(fd);
}

/* Resolves --address / --socket-dir into a connected socket, or -1 with a
 * message printed. *tcp tells whether it is a TCP connection. */
static int connect_daemon(const char *address, const char *socket_dir, char *desc, size_t dn,
                          int *tcp) {
  char path[4096];
  *tcp = 0;
  if (address && strchr(address, ':') && strncmp(address, "unix:", 5) != 0) {
    *tcp = 1;
    char host[256];
    const char *colon = strrchr(address, ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon - address), address);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    snprintf(desc, dn, "%s", address);
    if (getaddrinfo(host, colon + 1, &hints, &res)) {
      fprintf(stderr, "shoal: cannot resolve address %s\n", address);
      return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = fd >= 0 ? connect(fd, res->ai_addr, res->ai_addrlen) : -1;
    freeaddrinfo(res);
    if (rc) {
      fprintf(stderr, "shoal: no shoal daemon answers at %s: %s\n", address, strerror(errno));
      close_daemon(fd);
      return -1;
    }
    return fd;
  }
  if (address) {
    const char *p = strncmp(address, "unix:", 5) == 0 ? address + 5 : address;
    struct stat st;
    if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) snprintf(path, sizeof path, "%s/agent.sock", p);
    else snprintf(path, sizeof path, "%s", p);
  } else {
    snprintf(path, sizeof path, "%s/agent.sock", socket_dir);
  }
  snprintf(desc, dn, "%s", path);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    fprintf(stderr, "shoal: socket path too long: %s\n", path);
    return -1;
  }
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
    fprintf(stderr, "shoal: no shoal daemon is running at %s (%s); start one with "
            "`shoal start --head`\n", path, strerror(errno));
    close_daemon(fd);
    return -1;
  }
  return fd;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t k = sh_tls_send(cli_tls, fd, p, n);
    if (k == SH_ETLS) fprintf(stderr, "shoal: TLS: %s\n", sh_tls_error(cli_tls));
    if (k <= 0) return -1;
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

/* Reads frames of at most `max` body bytes until one of `type` arrives; its
 * body lands in `body`. 0, or -1 with a message printed (timeout, closed, bad
 * frame, ERROR frame), -2 for an ERROR frame that refuses our cluster token. */
static int read_frame_max(int fd, unsigned type, sh_buf_t *in, sh_buf_t *body, double timeout_s,
                          size_t max) {
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    sh_frame_t f;
    size_t used;
    int rc = sh_frame_parse(sh_buf_head(in), sh_buf_avail(in), max, &f, &used);
    if (rc < 0) {
      fprintf(stderr, "shoal: bad reply from the daemon: %s\n", sh_strerror(rc));
      return -1;
    }
    if (rc == 1) {
      if (f.hdr.type == SH_MSG_ERROR && f.hdr.len >= 4) {
        fprintf(stderr, "shoal: %.*s\n", (int)f.hdr.len - 4, f.body + 4);
        return (int32_t)sh_get_u32(f.body) == SH_EAUTH ? -2 : -1;
      }
      if (f.hdr.type == type) {
        sh_buf_append(body, f.body, f.hdr.len);
        sh_buf_consume(in, used);
        return 0;
      }
      sh_buf_consume(in, used);
      continue;
    }
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double left = timeout_s - ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (left <= 0 || (!sh_tls_pending(cli_tls) && poll(&pfd, 1, (int)(left * 1000)) == 0)) {
      fprintf(stderr, "shoal: the daemon did not answer within %.3g s (waiting for %s)\n",
              timeout_s, sh_msg_name(type));
      return -1;
    }
    if (sh_buf_reserve(in, 65536)) return -1;
    ssize_t n = sh_tls_recv(cli_tls, fd, in->data + in->len, in->cap - in->len);
    if (n == -EAGAIN) continue; /* a TLS record arrives in pieces */
    if (n == SH_ETLS) {
      fprintf(stderr, "shoal: TLS: %s\n", sh_tls_error(cli_tls));
      return -1;
    }
    if (n <= 0) {
      fprintf(stderr, "shoal: the daemon closed the connection\n");
      return -1;
    }
    in->len += (size_t)n;
  }
}

static int read_frame(int fd, unsigned type, sh_buf_t *in, sh_buf_t *body, double timeout_s) {
  return read_frame_max(fd, type, in, body, timeout_s, SH_FRAME_MAX_DEFAULT);
}

/* Largest frame body read from a daemon that has not proved it holds the
 * token: the handshake frames and an ERROR fit. */
#define PRE_AUTH_MAX_BODY 65536

/* The token handshake on a TCP connection (docs/protocol.md,
 * "Authentication"): answers the daemon's challenge with our proof and checks
 * the daemon's proof before anything else is sent. 0, or -1 with a message
 * printed. */
static int auth_cli(int fd, sh_buf_t *in, const sh_auth_token_t *tok, const char *desc,
                    double timeout_s) {
  sh_buf_t out, body;
  sh_buf_init(&out);
  sh_buf_init(&body);
  uint8_t sn[SH_AUTH_NONCE], cn[SH_AUTH_NONCE], mac[SH_AUTH_MAC];
  int rc = read_frame_max(fd, SH_MSG_AUTH_CHALLENGE, in, &body, timeout_s, PRE_AUTH_MAX_BODY);
  if (!rc && sh_auth_challenge_decode(body.data, body.len, sn)) {
    fprintf(stderr, "shoal: the daemon at %s sent a challenge this shoal does not "
            "understand (a different shoal version?)\n", desc);
    rc = -1;
  }
  if (!rc && (sh_auth_random(cn, sizeof cn) || sh_auth_proof(tok, SH_AUTH_CLIENT, sn, cn, mac) ||
              sh_auth_response_append(&out, cn, mac))) {
    fprintf(stderr, "shoal: could not compute the answer to the daemon's challenge\n");
    rc = -1;
  }
  if (!rc) rc = write_all(fd, out.data, out.len);
  sh_buf_reset(&body);
  if (!rc) rc = read_frame_max(fd, SH_MSG_AUTH_OK, in, &body, timeout_s, PRE_AUTH_MAX_BODY);
  if (rc == -2)
    fprintf(stderr, "shoal: the daemon at %s refused the cluster token from %s: use the "
            "token file the head uses (`shoal start` prints it) with --token-file, "
            "SHOAL_TOKEN_FILE or SHOAL_TOKEN\n", desc, tok->where);
  if (!rc && (sh_auth_ok_decode(body.data, body.len, mac) ||
              !sh_auth_verify(tok, SH_AUTH_SERVER, sn, cn, mac))) {
    fprintf(stderr, "shoal: the daemon at %s did not prove that it holds the cluster token "
            "from %s: it is not this cluster's head, or it uses another token; nothing "
            "was sent to it\n", desc, tok->where);
    rc = -1;
  }
  sh_buf_close(&out);
  sh_buf_close(&body);
  return rc ? -1 : 0;
}

static int hello_cli(int fd, sh_buf_t *in, double timeout_s) {
  sh_buf_t out, body;
  sh_buf_init(&out);
  sh_buf_init(&body);
  sh_hello_t h = {SH_ROLE_CLI, (uint32_t)getpid(), 0, 0};
  sh_hello_append(&out, &h);
  int rc = write_all(fd, out.data, out.len);
  if (!rc) rc = read_frame(fd, SH_MSG_HELLO_OK, in, &body, timeout_s);
  sh_buf_close(&out);
  sh_buf_close(&body);
  return rc;
}

/* Connects to the daemon and says HELLO; over TCP the token handshake comes
 * first. Returns the fd, or -1 with a message printed. */
static int open_daemon(const char *address, const char *dir, const char *token_file,
                       const tls_files_t *tls, char *desc, size_t dn, sh_buf_t *in,
                       double timeout_s) {
  int tcp;
  sh_auth_token_t tok = {.len = 0};
  char err[4400];
  /* The token first: a missing one needs no connection to report. */
  if (address && strchr(address, ':') && strncmp(address, "unix:", 5) != 0 &&
      sh_auth_token_find(token_file, 0, &tok, err, sizeof err)) {
    fprintf(stderr, "shoal: connecting to %s needs the cluster token: %s\n", address, err);
    return -1;
  }
  int fd = connect_daemon(address, dir, desc, dn, &tcp);
  int rc = fd < 0 ? -1 : 0;
  tls_files_t files = *tls;
  if (!rc && tcp && tls_files_env(&files)) rc = tls_cli(fd, address, &files, timeout_s);
  if (!rc && tcp) rc = auth_cli(fd, in, &tok, desc, timeout_s);
  sh_auth_token_clear(&tok);
  if (!rc) rc = hello_cli(fd, in, timeout_s);
  if (rc && fd >= 0) {
    close_daemon(fd);
    fd = -1;
  }
  return fd;
}

/* ---- printing the status map ---- */

static void json_str(const char *p, size_t n) {
  putchar('"');
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)p[i];
    if (ch == '"' || ch == '\\') printf("\\%c", ch);
    else if (ch < 0x20) printf("\\u%04x", ch);
    else putchar(ch);
  }
  putchar('"');
}

static void print_json(const msgpack_object *o) {
  switch (o->type) {
    case MSGPACK_OBJECT_NIL: printf("null"); break;
    case MSGPACK_OBJECT_BOOLEAN: printf(o->via.boolean ? "true" : "false"); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: printf("%llu", (unsigned long long)o->via.u64); break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: printf("%lld", (long long)o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: printf("%.17g", o->via.f64); break;
    case MSGPACK_OBJECT_STR: json_str(o->via.str.ptr, o->via.str.size); break;
    case MSGPACK_OBJECT_ARRAY:
      putchar('[');
      for (uint32_t i = 0; i < o->via.array.size; i++) {
        if (i) printf(", ");
        print_json(&o->via.array.ptr[i]);
      }
      putchar(']');
      break;
    case MSGPACK_OBJECT_MAP:
      putchar('{');
      for (uint32_t i = 0; i < o->via.map.size; i++) {
        if (i) printf(", ");
        print_json(&o->via.map.ptr[i].key);
        printf(": ");
        print_json(&o->via.map.ptr[i].val);
      }
      putchar('}');
      break;
    default: printf("null"); break;
  }
}

static const msgpack_object *get(const msgpack_object *m, const char *k) {
  if (!m || m->type != MSGPACK_OBJECT_MAP) return NULL;
  for (uint32_t i = 0; i < m->via.map.size; i++) {
    const msgpack_object *key = &m->via.map.ptr[i].key;
    if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
        !memcmp(key->via.str.ptr, k, key->via.str.size))
      return &m->via.map.ptr[i].val;
  }
  return NULL;
}

static double num(const msgpack_object *m, const char *k) {
  const msgpack_object *v = get(m, k);
  if (!v) return 0;
  if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) return (double)v->via.u64;
  if (v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32) return v->via.f64;
  return 0;
}

static void print_res_line(const msgpack_object *node) {
  const msgpack_object *tot = get(node, "resources_total"), *fr = get(node, "resources_free");
  printf("  resources: CPU %g/%g free, GPU %g/%g free, memory %.1f/%.1f GiB free", num(fr, "CPU"),
         num(tot, "CPU"), num(fr, "GPU"), num(tot, "GPU"), num(fr, "memory") / (1 << 30),
         num(tot, "memory") / (1 << 30));
  for (uint32_t i = 0; tot && i < tot->via.map.size; i++) {
    const msgpack_object *k = &tot->via.map.ptr[i].key;
    if (k->type != MSGPACK_OBJECT_STR) continue;
    char name[SH_NAME_MAX];
    snprintf(name, sizeof name, "%.*s", (int)k->via.str.size, k->via.str.ptr);
    if (!strcmp(name, "CPU") || !strcmp(name, "GPU") || !strcmp(name, "memory")) continue;
    printf(", %s %g/%g free", name, num(fr, name), num(tot, name));
  }
  printf("\n");
}

static void str_of(const msgpack_object *m, const char *k, char *buf, size_t n);

static void print_status(const msgpack_object *st) {
  const msgpack_object *nodes = get(st, "nodes");
  const msgpack_object *w = get(st, "workers"), *t = get(st, "tasks"), *o = get(st, "objects");
  const msgpack_object *ac = get(st, "actors");
  const msgpack_object *sock = get(st, "socket");
  printf("shoal daemon pid %.0f at %.*s, up %.1f s\n", num(st, "pid"),
         sock ? (int)sock->via.str.size : 0, sock ? sock->via.str.ptr : "", num(st, "uptime_s"));
  const msgpack_object *head = get(st, "head");
  if (head) {
    char addr[300], err[300];
    str_of(head, "address", addr, sizeof addr);
    str_of(head, "error", err, sizeof err);
    const msgpack_object *conn = get(head, "connected");
    int up = conn && conn->type == MSGPACK_OBJECT_BOOLEAN && conn->via.boolean;
    printf("node agent of the head at %s: %s%s%s\n", addr, up ? "joined" : "not joined",
           !up && err[0] && strcmp(err, "?") ? ": " : "", !up && strcmp(err, "?") ? err : "");
  }
  for (uint32_t i = 0; nodes && i < nodes->via.array.size; i++) {
    const msgpack_object *n = &nodes->via.array.ptr[i];
    const msgpack_object *alive = get(n, "alive"), *dr = get(n, "draining");
    char host[300], addr[100], why[300];
    str_of(n, "host", host, sizeof host);
    str_of(n, "address", addr, sizeof addr);
    str_of(n, "dead_reason", why, sizeof why);
    int is_alive = alive && alive->type == MSGPACK_OBJECT_BOOLEAN && alive->via.boolean;
    printf("node %.0f (%s, %s): %s%s%s%s, load %.2f, %.0f tasks running\n", num(n, "node_id"),
           host, addr, is_alive ? "alive" : "dead", is_alive ? "" : " (", is_alive ? "" : why,
           is_alive ? "" : ")", num(n, "load"), num(n, "tasks_running"));
    if (dr && dr->type == MSGPACK_OBJECT_BOOLEAN && dr->via.boolean)
      printf("  draining:  gets no new work\n");
    print_res_line(n);
  }
  printf("  workers:   %.0f in pool (%.0f busy, %.0f idle), %.0f for actors, %.0f died\n",
         num(w, "pool_size"), num(w, "busy"), num(w, "idle"), num(w, "actors"), num(w, "deaths"));
  if (num(w, "leased") > 0)
    printf("             %.0f leased to a driver's lane (its lone calls go straight there)\n",
           num(w, "leased"));
  printf("  tasks:     %.0f queued, %.0f waiting on dependencies, %.0f running, %.0f done, "
         "%.0f failed, %.0f retried\n", num(t, "queued"), num(t, "waiting"), num(t, "running"),
         num(t, "done"), num(t, "failed"), num(t, "retried"));
  printf("  actors:    %.0f alive, %.0f dead\n", num(ac, "alive"), num(ac, "dead"));
  printf("  drivers:   %.0f connected\n", num(st, "drivers"));
  printf("  objects:   %.0f held (%.1f KiB inline)\n", num(o, "count"), num(o, "bytes") / 1024);
  const msgpack_object *so = get(st, "store");
  printf("  store:     %.1f of %.1f MiB in memory, %.1f MiB spilled (%.0f objects, %.0f spilled), "
         "%.1f MiB of freed files kept for reuse\n",
         num(so, "used") / (1 << 20), num(so, "capacity") / (1 << 20),
         num(so, "spilled_bytes") / (1 << 20), num(so, "objects"), num(so, "spilled_objects"),
         num(so, "recycle_pool") / (1 << 20));
}

static void fmt_size(double v, char *buf, size_t n) {
  if (v >= 1073741824.0) snprintf(buf, n, "%.2f GiB", v / 1073741824.0);
  else if (v >= 1048576.0) snprintf(buf, n, "%.1f MiB", v / 1048576.0);
  else if (v >= 1024.0) snprintf(buf, n, "%.1f KiB", v / 1024.0);
  else snprintf(buf, n, "%.0f B", v);
}

static void str_of(const msgpack_object *m, const char *k, char *buf, size_t n) {
  const msgpack_object *v = get(m, k);
  if (v && v->type == MSGPACK_OBJECT_STR) snprintf(buf, n, "%.*s", (int)v->via.str.size, v->via.str.ptr);
  else snprintf(buf, n, "?");
}

static void print_memory(const msgpack_object *st) {
  const msgpack_object *so = get(st, "store"), *list = get(st, "object_list");
  char dir[300], spill[300], a[32], b[32], c[32];
  str_of(so, "dir", dir, sizeof dir);
  str_of(so, "spill_dir", spill, sizeof spill);
  printf("%-18s %10s  %-7s  %-8s %-10s %5s %7s %7s %5s\n", "OBJECT", "SIZE", "WHERE", "STATUS",
         "OWNER", "HELD", "PENDING", "RUNNING", "MAPS");
  double inl = 0, mem = 0, sp = 0;
  uint32_t n = list && list->type == MSGPACK_OBJECT_ARRAY ? list->via.array.size : 0;
  for (uint32_t i = 0; i < n; i++) {
    const msgpack_object *o = &list->via.array.ptr[i];
    char where[16], status[16], owner[32];
    str_of(o, "where", where, sizeof where);
    str_of(o, "status", status, sizeof status);
    if (num(o, "owner_pid") > 0) snprintf(owner, sizeof owner, "pid %.0f", num(o, "owner_pid"));
    else snprintf(owner, sizeof owner, "client %.0f", num(o, "owner_client"));
    fmt_size(num(o, "size"), a, sizeof a);
    const msgpack_object *held = get(o, "held_by_owner");
    printf("%016llx   %10s  %-7s  %-8s %-10s %5s %7.0f %7.0f %5.0f\n",
           (unsigned long long)num(o, "id"), a, where, status, owner,
           held && held->type == MSGPACK_OBJECT_BOOLEAN && held->via.boolean ? "yes" : "no",
           num(o, "pending_tasks"), num(o, "running_tasks"), num(o, "mappings"));
    if (!strcmp(where, "inline")) inl += num(o, "size");
    else if (!strcmp(where, "spilled")) sp += num(o, "size");
    else mem += num(o, "size");
  }
  fmt_size(mem, a, sizeof a);
  fmt_size(num(so, "capacity"), b, sizeof b);
  fmt_size(sp, c, sizeof c);
  printf("\nnode %.0f: %u objects; %s of %s in shared memory (%s), %s spilled (%s)", num(st, "node_id"),
         n, a, b, dir, c, spill);
  fmt_size(inl, a, sizeof a);
  printf(", %s inline\n", a);
  printf("  store: %.0f spills, %.0f restores, %.0f times full; values of %.0f bytes or more go "
         "to the store\n", num(so, "spills"), num(so, "restores"), num(so, "full"),
         num(so, "inline_threshold"));
}

/* ---- commands ---- */

enum { OPT_HEAD = 256, OPT_SOCKET_DIR, OPT_PORT, OPT_WORKERS, OPT_NUM_CPUS, OPT_NUM_GPUS,
       OPT_MEMORY, OPT_RESOURCES, OPT_PYTHON, OPT_BLOCK, OPT_EMBEDDED, OPT_MAX_FRAME,
       OPT_LOG_LEVEL, OPT_ADDRESS, OPT_JSON, OPT_TIMEOUT, OPT_BIND, OPT_TOKEN_FILE,
       OPT_AUTH_TIMEOUT, OPT_STORE_MEMORY, OPT_STORE_DIR, OPT_SPILL_DIR,
       OPT_INLINE_THRESHOLD, OPT_HEARTBEAT_TIMEOUT, OPT_NODE_PORT, OPT_HEAD_TIMEOUT, OPT_TLS_CERT,
       OPT_TLS_KEY, OPT_TLS_CA };

/* Prints the TCP address the head listens on, the token it demands and how a
 * driver on another machine connects. */
static void print_tcp(const sh_agent_opts_t *o) {
  const char *bind = o->bind ? o->bind : "127.0.0.1";
  int v6 = strchr(bind, ':') != NULL;
  printf(" and %s%s%s:%d\n", v6 ? "[" : "", bind, v6 ? "]" : "", o->port);
  printf("  cluster token: %s (TCP peers must hold it)\n", o->token.where);
  /* A wildcard address is no address to connect to: name this host. */
  char host[256];
  if (!strcmp(bind, "0.0.0.0") || !strcmp(bind, "::")) {
    if (gethostname(host, sizeof host)) snprintf(host, sizeof host, "HOST");
    host[sizeof host - 1] = 0;
  } else {
    snprintf(host, sizeof host, "%s%s%s", v6 ? "[" : "", bind, v6 ? "]" : "");
  }
  printf("  connect over TCP:  shoal.init(address=\"%s:%d\")  with the token file copied to\n"
         "                     ~/.shoal/token (mode 0600), or SHOAL_TOKEN_FILE=PATH\n",
         host, o->port);
  if (o->tls_server)
    printf("  TLS: every TCP peer speaks TLS; give it the CA: shoal.init(..., tls_ca=PATH),\n"
           "       SHOAL_TLS_CA=PATH, or --tls-ca PATH\n");
}

/* Runs the agent in a detached child; returns once it listens. */
static int start_background(sh_agent_opts_t *o) {
  int p[2];
  if (pipe(p)) return 1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "shoal: fork: %s\n", strerror(errno));
    return 1;
  }
  if (pid == 0) {
    close(p[0]);
    setsid();
    int nul = open("/dev/null", O_RDWR);
    if (nul >= 0) {
      dup2(nul, 0);
      dup2(nul, 1);
      close(nul);
    }
    static char log_path[4200];
    snprintf(log_path, sizeof log_path, "%s/agent.log", o->socket_dir);
    o->ready_fd = p[1];
    o->log_path = log_path;
    _exit(sh_agent_run(o));
  }
  close(p[1]);
  char line[4200] = "";
  size_t n = 0;
  struct pollfd pfd = {.fd = p[0], .events = POLLIN};
  while (n < sizeof line - 1 && poll(&pfd, 1, 30000) > 0) {
    ssize_t k = read(p[0], line + n, sizeof line - 1 - n);
    if (k <= 0) break;
    n += (size_t)k;
    if (memchr(line, '\n', n)) break;
  }
  close(p[0]);
  line[n] = 0;
  if (strncmp(line, "shoal: ready ", 13) != 0) {
    fprintf(stderr, "shoal: the daemon did not start (see the message above, or %s/agent.log)\n",
            o->socket_dir);
    return 1;
  }
  char *nl = strchr(line, '\n');
  if (nl) *nl = 0;
  if (o->head_address) {
    printf("shoal: started a node agent (pid %d) listening on %s; it joins the head at %s\n"
           "  (its log: %s/agent.log; the head's `shoal status` lists it once it joined)\n",
           (int)pid, line + 13, o->head_address, o->socket_dir);
    printf("  stop:     shoal stop --socket-dir %s\n", o->socket_dir);
    return 0;
  }
  printf("shoal: started a head (pid %d) listening on %s", (int)pid, line + 13);
  if (o->port) print_tcp(o);
  else printf("\n");
  printf("  connect:  shoal.init(address=\"%s\")  or  shoal.init(\"auto\")\n", o->socket_dir);
  printf("  status:   shoal status --socket-dir %s\n  stop:     shoal stop --socket-dir %s\n",
         o->socket_dir, o->socket_dir);
  return 0;
}

/* Makes the TLS contexts of `shoal start` from files: a head's listener; a
 * node's client side (uplink, pulls from other nodes) and, unless it has
 * no node port, its node port's listener, with its own certificate (which
 * a node with TLS must therefore have). 0, or 2 with the reason printed. */
static int tls_contexts(sh_agent_opts_t *o, const tls_files_t *tls) {
  char err[1024];
  if (!o->head_address) {
    if (!sh_tls_ctx_create(SH_TLS_SERVER, tls->cert, tls->key, tls->ca, &o->tls_server, err,
                           sizeof err))
      return 0;
  } else if (o->node_port >= 0 && !tls->cert) {
    snprintf(err, sizeof err, "a node with TLS needs its own certificate and key (--tls-cert and "
             "--tls-key, or SHOAL_TLS_CERT and SHOAL_TLS_KEY): other nodes pull objects from "
             "its node port over TLS, and check that the certificate names the address the "
             "head sees it at (or give --node-port -1: no node port)");
  } else if (!sh_tls_ctx_create(SH_TLS_CLIENT, tls->cert, tls->key, tls->ca, &o->tls_client,
                                err, sizeof err) &&
             (o->node_port < 0 || !sh_tls_ctx_create(SH_TLS_SERVER, tls->cert, tls->key,
                                                     tls->ca, &o->tls_node, err, sizeof err))) {
    return 0;
  }
  fprintf(stderr, "shoal: %s\n", err);
  sh_tls_ctx_destroy(o->tls_client);
  o->tls_client = NULL;
  return 2;
}

static int cmd_start(int argc, char **argv) {
  static const struct option opts[] = {
      {"head", no_argument, 0, OPT_HEAD},           {"socket-dir", required_argument, 0, OPT_SOCKET_DIR},
      {"port", required_argument, 0, OPT_PORT},     {"workers", required_argument, 0, OPT_WORKERS},
      {"num-cpus", required_argument, 0, OPT_NUM_CPUS}, {"num-gpus", required_argument, 0, OPT_NUM_GPUS},
      {"memory", required_argument, 0, OPT_MEMORY}, {"resources", required_argument, 0, OPT_RESOURCES},
      {"python", required_argument, 0, OPT_PYTHON}, {"block", no_argument, 0, OPT_BLOCK},
      {"embedded", no_argument, 0, OPT_EMBEDDED},   {"max-frame", required_argument, 0, OPT_MAX_FRAME},
      {"log-level", required_argument, 0, OPT_LOG_LEVEL}, {"help", no_argument, 0, 'h'},
      {"object-store-memory", required_argument, 0, OPT_STORE_MEMORY},
      {"object-store-dir", required_argument, 0, OPT_STORE_DIR},
      {"spill-dir", required_argument, 0, OPT_SPILL_DIR},
      {"inline-threshold", required_argument, 0, OPT_INLINE_THRESHOLD},
      {"bind", required_argument, 0, OPT_BIND},     {"token-file", required_argument, 0, OPT_TOKEN_FILE},
      {"auth-timeout", required_argument, 0, OPT_AUTH_TIMEOUT},
      {"address", required_argument, 0, OPT_ADDRESS},
      {"heartbeat-timeout", required_argument, 0, OPT_HEARTBEAT_TIMEOUT},
      {"node-port", required_argument, 0, OPT_NODE_PORT},
      {"head-timeout", required_argument, 0, OPT_HEAD_TIMEOUT},
      {"tls-cert", required_argument, 0, OPT_TLS_CERT}, {"tls-key", required_argument, 0, OPT_TLS_KEY},
      {"tls-ca", required_argument, 0, OPT_TLS_CA},
      {0, 0, 0, 0}};
  static char dir[4096];
  const char *token_file = NULL;
  tls_files_t tls = {0};
  default_socket_dir(dir, sizeof dir);
  sh_agent_opts_t o = {0};
  o.socket_dir = dir;
  o.python = getenv("SHOAL_PYTHON") && *getenv("SHOAL_PYTHON") ? getenv("SHOAL_PYTHON") : "python3";
  o.max_frame = SH_FRAME_MAX_DEFAULT;
  o.ready_fd = 1;
  int head = 0, block = 0, workers = -1;
  double cpus = -1, gpus = -1;
  uint64_t memory = 0;
  const char *resources = NULL;
  int level = -1;
  double v;
  int c;
  opterr = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case OPT_HEAD: head = 1; break;
      case OPT_NODE_PORT:
        /* parse_num takes no negative number: -1 (none) is spelled out. */
        if (!strcmp(optarg, "-1")) v = -1;
        else if (parse_num(optarg, &v) || v > 65535 || v != floor(v))
          return usage_error(usage_start, "--node-port needs a port number 0-65535 (or -1: "
                             "none), got '%s'", optarg);
        o.node_port = (int)v;
        break;
      case OPT_SOCKET_DIR: snprintf(dir, sizeof dir, "%s", optarg); break;
      case OPT_PORT:
        if (parse_num(optarg, &v) || v < 1 || v > 65535 || v != floor(v))
          return usage_error(usage_start, "--port needs a port number 1-65535, got '%s'", optarg);
        o.port = (int)v;
        break;
      case OPT_WORKERS:
        if (parse_num(optarg, &v) || v != floor(v) || v > 1024)
          return usage_error(usage_start, "--workers needs a whole number 0-1024, got '%s'", optarg);
        workers = (int)v;
        break;
      case OPT_NUM_CPUS:
        if (parse_num(optarg, &cpus)) return usage_error(usage_start, "--num-cpus needs a number, got '%s'", optarg);
        break;
      case OPT_NUM_GPUS:
        if (parse_num(optarg, &gpus)) return usage_error(usage_start, "--num-gpus needs a number, got '%s'", optarg);
        break;
      case OPT_MEMORY:
        if (parse_bytes(optarg, &memory))
          return usage_error(usage_start, "--memory needs a size like 8G or 1073741824, got '%s'", optarg);
        break;
      case OPT_RESOURCES: resources = optarg; break;
      case OPT_BIND:
        if (!*optarg) return usage_error(usage_start, "--bind needs an IP address, e.g. 0.0.0.0");
        o.bind = optarg;
        break;
      case OPT_TOKEN_FILE:
        if (!*optarg) return usage_error(usage_start, "--token-file needs a path");
        token_file = optarg;
        break;
      case OPT_AUTH_TIMEOUT:
        if (parse_num(optarg, &o.auth_timeout_s) || o.auth_timeout_s <= 0 || o.auth_timeout_s > 3600)
          return usage_error(usage_start, "--auth-timeout needs seconds, more than 0 and at most "
                             "3600, got '%s'", optarg);
        break;
      case OPT_ADDRESS: {
        const char *colon = strrchr(optarg, ':');
        if (!colon || colon == optarg || parse_num(colon + 1, &v) || v < 1 || v > 65535 ||
            v != floor(v))
          return usage_error(usage_start, "--address needs HOST:PORT of the head, got '%s'", optarg);
        o.head_address = optarg;
        break;
      }
      case OPT_HEARTBEAT_TIMEOUT:
        if (parse_seconds(optarg, 3600, &o.heartbeat_timeout_s))
          return usage_error(usage_start, "--heartbeat-timeout needs seconds, from 0.2 to 3600, "
                             "got '%s'", optarg);
        break;
      case OPT_HEAD_TIMEOUT:
        if (parse_seconds(optarg, 86400, &o.head_timeout_s))
          return usage_error(usage_start, "--head-timeout needs seconds, from 0.2 to 86400, "
                             "got '%s'", optarg);
        break;
      case OPT_PYTHON: o.python = optarg; break;
      case OPT_BLOCK: block = 1; break;
      case OPT_EMBEDDED: o.embedded = 1; break;
      case OPT_MAX_FRAME: {
        uint64_t mf;
        if (parse_bytes(optarg, &mf) || mf < 1024 || mf > UINT32_MAX)
          return usage_error(usage_start, "--max-frame needs a size from 1K to 4G, got '%s'", optarg);
        o.max_frame = (size_t)mf;
        break;
      }
      case OPT_STORE_MEMORY:
        if (parse_bytes(optarg, &o.store_memory) || o.store_memory < (1u << 20))
          return usage_error(usage_start, "--object-store-memory needs a size of at least 1M, "
                             "like 4G, got '%s'", optarg);
        break;
      case OPT_STORE_DIR: o.store_dir = optarg; break;
      case OPT_SPILL_DIR: o.spill_dir = optarg; break;
      case OPT_INLINE_THRESHOLD:
        if (parse_bytes(optarg, &o.inline_threshold) || o.inline_threshold < 1 ||
            o.inline_threshold > (64u << 20))
          return usage_error(usage_start, "--inline-threshold needs a size from 1 byte to 64M, "
                             "like 64K, got '%s'", optarg);
        break;
      case OPT_LOG_LEVEL:
        if (!strcmp(optarg, "debug")) level = SH_LOG_DEBUG;
        else if (!strcmp(optarg, "info")) level = SH_LOG_INFO;
        else if (!strcmp(optarg, "warn")) level = SH_LOG_WARN;
        else if (!strcmp(optarg, "error")) level = SH_LOG_ERROR;
        else return usage_error(usage_start, "--log-level is debug, info, warn or error, got '%s'", optarg);
        break;
      case OPT_TLS_CERT: tls.cert = optarg; break;
      case OPT_TLS_KEY: tls.key = optarg; break;
      case OPT_TLS_CA: tls.ca = optarg; break;
      case 'h': fputs(usage_start, stdout); return 0;
      case '?':
      default:
        if (optopt) return usage_error(usage_start, "option '%s' needs a value", argv[optind - 1]);
        return usage_error(usage_start, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return usage_error(usage_start, "unexpected argument '%s'", argv[optind]);
  if (!head && !o.head_address)
    return usage_error(usage_start, "start needs --head (a new cluster) or --address HOST:PORT "
                       "(join the head there)");
  if (head && o.head_address)
    return usage_error(usage_start, "--head and --address exclude each other: a head is the "
                       "cluster's, a node joins one");
  if (o.head_address && (o.port || o.bind || o.embedded))
    return usage_error(usage_start, "a node agent (--address) takes no %s: drivers and nodes "
                       "connect to the head", o.port ? "--port" : o.bind ? "--bind" : "--embedded");
  if ((o.bind || token_file) && !o.port && !o.head_address)
    return usage_error(usage_start, "%s only matters with --port (the token protects TCP "
                       "connections; the unix socket is private to this user)",
                       o.bind ? "--bind" : "--token-file");
  if (o.embedded && o.port)
    return usage_error(usage_start, "--embedded clusters listen on their unix socket only, "
                       "not on --port");
  if ((tls.cert || tls.key || tls.ca) && !o.port && !o.head_address)
    return usage_error(usage_start, "--tls-cert, --tls-key and --tls-ca only matter with --port "
                       "(TLS protects TCP connections)");
  if (!o.head_address && (tls.cert || tls.key || tls.ca) && (!tls.cert || !tls.key))
    return usage_error(usage_start, "a head speaks TLS with --tls-cert and --tls-key together "
                       "(--tls-ca adds: peers must present a certificate it signed)");
  if (level >= 0) sh_log_set_level(level);
  o.resources.cpu_milli = (uint64_t)llround((cpus >= 0 ? cpus : count_cpus()) * 1000);
  o.resources.gpu_milli = (uint64_t)llround((gpus >= 0 ? gpus : count_gpus()) * 1000);
  o.resources.memory = memory ? memory : (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
  if (resources) {
    char err[512];
    if (sh_res_parse_json(resources, &o.resources, err, sizeof err))
      return usage_error(usage_start, "--resources: %s", err);
  }
  o.num_workers = workers >= 0 ? workers : (int)((o.resources.cpu_milli + 999) / 1000);
  if (o.num_workers < 1 && workers < 0) o.num_workers = 1;
  if (o.port || o.head_address) {
    /* Before the daemon starts, so a bad token file is reported here. Only a
     * head creates one: a node must use the head's. */
    char err[4400];
    if (sh_auth_token_find(token_file, !o.head_address, &o.token, err, sizeof err)) {
      fprintf(stderr, "shoal: %s%s\n", o.head_address ? "joining a cluster needs its token: " : "",
              err);
      return 1;
    }
  }
  /* The TLS files too: a missing or unreadable file stops the start here. */
  if (o.head_address ? tls_files_env(&tls) : tls.cert != NULL) {
    int rc = tls_contexts(&o, &tls);
    if (rc) {
      sh_auth_token_clear(&o.token);
      return rc;
    }
  }
  int rc = block || o.embedded ? sh_agent_run(&o) : start_background(&o);
  sh_auth_token_clear(&o.token);
  sh_tls_ctx_destroy(o.tls_server);
  sh_tls_ctx_destroy(o.tls_client);
  sh_tls_ctx_destroy(o.tls_node);
  return rc;
}

static int parse_client_opts(int argc, char **argv, const char *usage, int allow_json,
                             const char **address, char *dir, size_t dn, int *json, double *timeout,
                             const char **token_file, tls_files_t *tls) {
  static const struct option opts[] = {
      {"socket-dir", required_argument, 0, OPT_SOCKET_DIR}, {"address", required_argument, 0, OPT_ADDRESS},
      {"json", no_argument, 0, OPT_JSON},  {"timeout", required_argument, 0, OPT_TIMEOUT},
      {"token-file", required_argument, 0, OPT_TOKEN_FILE},
      {"tls-ca", required_argument, 0, OPT_TLS_CA}, {"tls-cert", required_argument, 0, OPT_TLS_CERT},
      {"tls-key", required_argument, 0, OPT_TLS_KEY},
      {"help", no_argument, 0, 'h'},       {0, 0, 0, 0}};
  int c;
  opterr = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case OPT_SOCKET_DIR: snprintf(dir, dn, "%s", optarg); break;
      case OPT_ADDRESS: *address = optarg; break;
      case OPT_TOKEN_FILE: *token_file = optarg; break;
      case OPT_TLS_CA: tls->ca = optarg; break;
      case OPT_TLS_CERT: tls->cert = optarg; break;
      case OPT_TLS_KEY: tls->key = optarg; break;
      case OPT_JSON:
        if (!allow_json) return usage_error(usage, "unknown option '--json'");
        *json = 1;
        break;
      case OPT_TIMEOUT:
        if (parse_num(optarg, timeout) || *timeout <= 0)
          return usage_error(usage, "--timeout needs a positive number of seconds, got '%s'", optarg);
        break;
      case 'h': fputs(usage, stdout); return -1;
      default:
        if (optopt) return usage_error(usage, "option '%s' needs a value", argv[optind - 1]);
        return usage_error(usage, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return usage_error(usage, "unexpected argument '%s'", argv[optind]);
  return 0;
}

/* status and memory: one STATUS request, printed by `print` or as JSON. */
static int query_status(int argc, char **argv, const char *usage, unsigned flags,
                        void (*print)(const msgpack_object *)) {
  char dir[4096], desc[4200];
  default_socket_dir(dir, sizeof dir);
  const char *address = getenv("SHOAL_ADDRESS");
  if (address && (!*address || !strcmp(address, "auto"))) address = NULL;
  const char *token_file = NULL;
  tls_files_t tls = {0};
  int json = 0;
  double timeout = 10;
  int rc = parse_client_opts(argc, argv, usage, 1, &address, dir, sizeof dir, &json, &timeout,
                             &token_file, &tls);
  if (rc) return rc < 0 ? 0 : rc;
  sh_buf_t in, out, body;
  sh_buf_init(&in);
  sh_buf_init(&out);
  sh_buf_init(&body);
  int fd = open_daemon(address, dir, token_file, &tls, desc, sizeof desc, &in, timeout);
  rc = fd < 0 ? -1 : 0;
  if (!rc) {
    sh_frame_append(&out, SH_MSG_STATUS, flags, 1, NULL, 0);
    rc = write_all(fd, out.data, out.len);
  }
  if (!rc) rc = read_frame(fd, SH_MSG_STATUS_REPLY, &in, &body, timeout);
  close_daemon(fd);
  if (!rc) {
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, (const char *)body.data, body.len, NULL) == MSGPACK_UNPACK_SUCCESS) {
      if (json) {
        print_json(&u.data);
        printf("\n");
      } else {
        print(&u.data);
      }
    } else {
      fprintf(stderr, "shoal: the status reply does not decode\n");
      rc = -1;
    }
    msgpack_unpacked_destroy(&u);
  }
  sh_buf_close(&in);
  sh_buf_close(&out);
  sh_buf_close(&body);
  return rc ? 1 : 0;
}

static int cmd_status(int argc, char **argv) {
  return query_status(argc, argv, usage_status, 0, print_status);
}

static int cmd_memory(int argc, char **argv) {
  return query_status(argc, argv, usage_memory, SH_STATUS_OBJECTS, print_memory);
}

static int cmd_stop(int argc, char **argv) {
  char dir[4096], desc[4200], pid_path[4200];
  default_socket_dir(dir, sizeof dir);
  const char *address = NULL, *token_file = NULL;
  tls_files_t tls = {0};
  int json = 0;
  double timeout = 10;
  int rc = parse_client_opts(argc, argv, usage_stop, 0, &address, dir, sizeof dir, &json, &timeout,
                             &token_file, &tls);
  if (rc) return rc < 0 ? 0 : rc;
  sh_buf_t in, out;
  sh_buf_init(&in);
  sh_buf_init(&out);
  int fd = open_daemon(address, dir, token_file, &tls, desc, sizeof desc, &in, timeout);
  if (fd < 0) {
    sh_buf_close(&in);
    sh_buf_close(&out);
    return 1;
  }
  if (!rc) {
    sh_frame_append(&out, SH_MSG_STOP, 0, 0, NULL, 0);
    rc = write_all(fd, out.data, out.len);
  }
  /* The daemon closes every connection as it exits: wait for that. */
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  int gone = 0;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (!rc) {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double left = timeout - ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    if (left <= 0 || poll(&pfd, 1, (int)(left * 1000)) <= 0) break;
    char buf[4096];
    ssize_t n = sh_tls_recv(cli_tls, fd, buf, sizeof buf);
    if (n == -EAGAIN) continue;
    if (n <= 0) {
      gone = 1;
      break;
    }
  }
  close_daemon(fd);
  sh_buf_close(&in);
  sh_buf_close(&out);
  (void)pid_path;
  if (rc || !gone) {
    fprintf(stderr, "shoal: the daemon at %s did not stop within %.3g s\n", desc, timeout);
    return 1;
  }
  /* Wait until the socket file is gone too, so a following start succeeds. */
  char sock[4200];
  snprintf(sock, sizeof sock, "%s", desc);
  for (int i = 0; i < (int)(timeout * 100) && access(sock, F_OK) == 0 && !address; i++)
    usleep(10000);
  printf("shoal: stopped the daemon at %s\n", desc);
  return 0;
}

static int cmd_drain(int argc, char **argv) {
  char dir[4096], desc[4200];
  default_socket_dir(dir, sizeof dir);
  const char *address = getenv("SHOAL_ADDRESS");
  if (address && (!*address || !strcmp(address, "auto"))) address = NULL;
  const char *token_file = NULL;
  tls_files_t tls = {0};
  int json = 0;
  double timeout = 10;
  if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
    fputs(usage_drain, stdout);
    return 0;
  }
  double v;
  if (argc < 2 || argv[1][0] == '-')
    return usage_error(usage_drain, "drain needs a NODE_ID first (shoal status lists them)");
  if (parse_num(argv[1], &v) || v != floor(v) || v < 1 || v > UINT32_MAX)
    return usage_error(usage_drain, "NODE_ID is a node's number, got '%s'", argv[1]);
  uint64_t node_id = (uint64_t)v;
  int rc = parse_client_opts(argc - 1, argv + 1, usage_drain, 0, &address, dir, sizeof dir, &json,
                             &timeout, &token_file, &tls);
  if (rc) return rc < 0 ? 0 : rc;
  sh_buf_t in, out, body;
  sh_buf_init(&in);
  sh_buf_init(&out);
  sh_buf_init(&body);
  int fd = open_daemon(address, dir, token_file, &tls, desc, sizeof desc, &in, timeout);
  rc = fd < 0 ? -1 : 0;
  if (!rc) {
    sh_frame_append(&out, SH_MSG_DRAIN, 0, node_id, NULL, 0);
    rc = write_all(fd, out.data, out.len);
  }
  if (!rc) rc = read_frame(fd, SH_MSG_DRAIN_REPLY, &in, &body, timeout);
  close_daemon(fd);
  if (!rc && body.len < 4) {
    fprintf(stderr, "shoal: malformed DRAIN_REPLY\n");
    rc = -1;
  }
  if (!rc) {
    uint32_t st = sh_get_u32(body.data);
    fprintf(st ? stderr : stdout, "shoal: %.*s\n", (int)body.len - 4, body.data + 4);
    if (st) rc = -1;
  }
  sh_buf_close(&in);
  sh_buf_close(&out);
  sh_buf_close(&body);
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  sh_log_init("shoal");
  /* A peer that closes a TLS connection must not kill us while we write. */
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) return usage_error(usage_main, "missing command");
  const char *cmd = argv[1];
  if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
    fputs(usage_main, stdout);
    return 0;
  }
  if (!strcmp(cmd, "--version")) {
    printf("shoal %s\n", SHOAL_VERSION);
    return 0;
  }
  if (!strcmp(cmd, "start")) return cmd_start(argc - 1, argv + 1);
  if (!strcmp(cmd, "status")) return cmd_status(argc - 1, argv + 1);
  if (!strcmp(cmd, "stop")) return cmd_stop(argc - 1, argv + 1);
  if (!strcmp(cmd, "memory")) return cmd_memory(argc - 1, argv + 1);
  if (!strcmp(cmd, "drain")) return cmd_drain(argc - 1, argv + 1);
  return usage_error(usage_main, "unknown command '%s'", cmd);
}
