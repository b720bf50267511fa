/* The driver's connection object, shared by client.c (the Python methods) and
 * io.c (connecting, and the I/O thread that reads and writes frames). */
#ifndef SH_CORE_CLIENT_H
#define SH_CORE_CLIENT_H

#include "core.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "common/fdpass.h"
#include "common/map.h"
#include "common/rlog.h"

/* Largest body a frame we send may have; the daemon's default limit. */
#define SH_CLIENT_MAX_BODY SH_FRAME_MAX_DEFAULT
/* Queued RELEASE ids that force a wake of the I/O thread. */
#define SH_CLIENT_RELEASE_BATCH 4096
/* Larger write buffers are freed once written (a one-off huge frame). */
#define SH_CLIENT_KEEP_BUF (64u << 20)
/* How long close() waits for the I/O thread before detaching it. */
#define SH_CLIENT_JOIN_S 5
/* How long the idle I/O thread sleeps before it looks at queued releases. */
#define SH_CLIENT_TICK_MS 50
/* How long a thread blocked on one result reads the socket itself before it
 * hands reading back to the I/O thread (see sh_client_wait_io). */
#define SH_CLIENT_WAIT_SLICE_US 2000
/* KILL_ACTORs sent within this long before the connection was lost are sent
 * again after the replay: the dying head may not have read them. */
#define SH_CLIENT_RECENT_S 2.0
/* A submit this long after the previous one is written by the submitting
 * thread itself (see append_submit). */
#define SH_CLIENT_ALONE_NS 20000u
/* The largest FUNC + EXEC sent down a lane at once (below the socketpair's
 * buffer, so the write never waits); bigger requests go to the agent. */
#define SH_LANE_MAX_SEND (128u << 10)
/* A lane task older than this is watched by the I/O thread too (io_turn). */
#define SH_CLIENT_LANE_WATCH_NS 3000000u

/* The TLS files of a TCP connection; any field NULL falls back to
 * $SHOAL_TLS_CA, $SHOAL_TLS_CERT, $SHOAL_TLS_KEY; all empty: plain TCP. */
typedef struct sh_client_tls_s {
  const char *ca;   /* CA that signed the daemon's certificate (NULL: system store) */
  const char *cert; /* our certificate, for a head that demands one (mutual TLS) */
  const char *key;  /* its private key */
} sh_client_tls_t;

/* A thread blocked in cancel() or status() waiting for a reply frame. Lives
 * on that thread's stack; linked into the client's list under rep_mu. */
typedef struct sh_waiter_s {
  struct sh_waiter_s *next;
  unsigned type; /* SH_MSG_CANCEL_REPLY or SH_MSG_STATUS_REPLY */
  uint64_t id;   /* request id the reply must carry */
  int done;      /* 0 waiting, 1 body set, -1 the connection is gone */
  unsigned req_type, req_flags; /* the request, sent again after a reconnect */
  uint8_t req_body[8];
  size_t req_len;
  uint8_t *body; /* sh_try_malloc'd copy of the reply body (owned) */
  size_t len;
} sh_waiter_t;

/* Invariants: a pending future is in `pending` exactly until it is completed
 * (by a RESULT, close() or a lost connection), and `pending`, `closed`,
 * `lost` and the fds are only touched with the GIL held, so a submit that
 * saw an open client always has its future completed later. The I/O thread
 * holds a strong reference to the object while it runs. */
struct sh_client_obj_s {
  PyObject_HEAD
  /* Set at construction, read-only afterwards. */
  sh_core_state_t *st;         /* module state (interned names) */
  PyObject *future_type;       /* shoal.Future */
  PyObject *dep_type;          /* shoal._serial.DepRef */
  PyObject *dumps;             /* pickles (args, kwargs) */
  PyObject *address;           /* str, as given */
  PyObject *node_info;         /* dict from HELLO_OK */
  char *addr;                  /* address for messages (sh_strdup) */
  uint64_t client_id;          /* from HELLO_OK, nonzero */
  unsigned fork_gen;           /* sh_core_fork_gen() at creation */
  pid_t pid;                   /* creating process */
  pthread_t thread;            /* the I/O thread (valid when started) */
  atomic_uint_fast64_t seq;    /* last id handed out by new_id() */
  /* GIL-protected. */
  int fd, evfd;                /* socket and wake-up eventfd, -1 when closed */
  struct sh_tls_s *tls;        /* TLS on fd, or NULL; freed with fd. Every call
                                  on it holds tls_mu (OpenSSL allows one thread
                                  at a time on a connection) */
  pthread_mutex_t tls_mu;      /* a leaf lock: nothing is taken while held */
  sh_map_t pending;            /* task id -> Future (strong reference) */
  int closed;                  /* close() was called */
  char *lost;                  /* why the connection was lost, or NULL */
  int joinable;                /* the I/O thread still needs a join/detach */
  sh_client_obj_t *prev, *next; /* in st->open while not closed */
  /* Protected by out_mu. */
  pthread_mutex_t out_mu;
  sh_buf_t out;                /* frames waiting for the I/O thread */
  uint64_t *rel;               /* queued RELEASE ids */
  size_t nrel, rel_cap;
  uint64_t *unmap;             /* queued RELEASE (SH_RELEASE_UNMAP) ids */
  size_t nunmap, unmap_cap;
  sh_buf_t held;               /* KILL_ACTOR and RELEASE frames sent while
                                  reconnecting, or lately before: they follow
                                  the replay (io.c) */
  sh_buf_t recent[2];          /* KILL_ACTOR and RELEASE frames sent to a head
                                  since recent_since, and in the period before
                                  (SH_CLIENT_RECENT_S): the head may have died
                                  before it read them */
  double recent_since;
  int awake;                   /* the I/O thread is not asleep: no wake needed */
  int writing;                 /* wbuf holds bytes the I/O thread is writing */
  uint64_t last_submit_ns;     /* CLOCK_MONOTONIC time of the last submit */
  int stop;                    /* the I/O thread must exit */
  /* Protected by rep_mu. */
  pthread_mutex_t rep_mu;
  pthread_cond_t rep_cv;       /* CLOCK_MONOTONIC; broadcast on each reply */
  sh_waiter_t *waiters;
  char *rep_dead;              /* replies cannot come any more: why */
  /* Reading and dispatching: whoever holds rd_mu (the I/O thread, or a thread
   * waiting for one result, see sh_client_wait_io). rd_mu is only taken
   * without the GIL; the GIL may be taken while holding it. */
  pthread_mutex_t rd_mu;
  sh_buf_t rbuf;               /* bytes read, not yet dispatched */
  size_t want;                 /* bytes the partial frame in rbuf still needs */
  char err_text[512];          /* text of the last ERROR frame, or "" */
  /* Reconnecting (io.c, "reconnecting"). Set at construction: */
  double reconnect_timeout;    /* seconds; 0: a lost connection fails everything */
  unsigned hello_flags;
  char *token;                 /* sh_strdup'd copies for reconnecting, or NULL */
  char *tls_ca, *tls_cert, *tls_key;
  /* Under out_mu: what a restarted head is sent again, by id: FUNC and PUT
   * frames of live objects, SUBMIT frames of unfinished work, PUTs made of
   * results still held. Kept only with reconnect_timeout; ids this client
   * made in rlog, the rest in replay (sh_client_rec_t): see io.c. */
  sh_rlog_t rlog;
  sh_map_t replay;
  uint64_t replay_ahead;       /* highest own sequence put in replay for being
                                  ahead of rlog (it leaves replay when rlog
                                  takes its id) */
  int reconnecting;            /* the I/O thread is reconnecting (also GIL) */
  uint64_t wait_id;            /* the result a reading waiter wants (GIL) */
  int wait_done;               /* ...and whether it came (GIL) */
  /* I/O thread only (after construction). */
  sh_buf_t wbuf;               /* bytes being written */
  /* The lane (lane.c): a socket to a pool worker the agent leased to this
   * driver. lane_fd changes under rd_mu and out_mu both; the rest of the
   * lane state is under out_mu, except lrbuf and fdq (rd_mu). */
  int lanes;                   /* HELLO said LANES (a unix socket, SHOAL_LANES != 0) */
  int lane_fd;                 /* -1: none */
  uint64_t lane_id;            /* the lease */
  uint64_t lane_task;          /* the task on the lane now; 0: the lane is idle */
  uint64_t lane_sent_ns;       /* ...sent then (CLOCK_MONOTONIC) */
  int lane_force;              /* ...force-cancelled: its worker is being killed */
  int lane_wanted;             /* ...a SUBMIT waits in lane_defer for its outcome */
  sh_buf_t lane_sub;           /* ...its SUBMIT, sent to the agent if the lane fails */
  sh_buf_t lane_defer;         /* SUBMITs that depend on it */
  sh_buf_t lane_out;           /* FUNC and EXEC frames being written down the lane */
  sh_map_t lane_sent;          /* fn ids sent down this lane */
  sh_map_t funcs;              /* fn id -> sh_client_rec_t, the FUNC frames (lanes) */
  sh_buf_t lrbuf;              /* bytes read from the lane, not yet handled */
  sh_fdq_t fdq;                /* sockets that came with the daemon's frames */
  uint64_t lane_only[32];      /* the last lane tasks the daemon never heard of */
  unsigned lane_only_at;
};

/* A frame kept for sending again after a reconnect. */
typedef struct sh_client_rec_s {
  uint32_t len;     /* bytes of the whole frame */
  uint8_t frame[];
} sh_client_rec_t;

/* ---- io.c ---- */

/* Connects to `address`, sends HELLO and waits for HELLO_OK, all within
 * `timeout` seconds; called without the GIL. A TCP address first needs the
 * cluster token handshake: with `token` (NULL: found through SHOAL_TOKEN,
 * SHOAL_TOKEN_FILE, ~/.shoal/token), and the daemon must prove it holds the
 * token too; with TLS files (`tls`, or the environment), TLS comes before
 * that and the daemon's certificate must name the address's host. On
 * success c->fd is a nonblocking socket (c->tls its TLS, or NULL), *ok
 * describes the node and bytes that followed HELLO_OK are in c->rbuf.
 * Returns 0, or a negative code with a message for the user in err
 * (SH_EAUTH: no token, or a token either side refused; SH_ETLS: a TLS file
 * is unusable, or TLS failed: untrusted or refused certificate, a daemon
 * without TLS or one that requires it). hello_flags: SH_HELLO_OWNER,
 * SH_HELLO_WAIT_NODES. */
int sh_client_connect(sh_client_obj_t *c, const char *address, double timeout,
                      unsigned hello_flags, const char *token, const sh_client_tls_t *tls,
                      sh_hello_ok_t *ok, char *err, size_t errlen);

/* Whether an address is HOST:PORT (TCP) rather than a unix socket path. */
int sh_client_address_is_tcp(const char *address);

/* Starts the I/O thread (GIL held); it takes a reference to c. 0 or -errno. */
int sh_client_start(sh_client_obj_t *c);

/* Appends queued RELEASE and UNMAP ids to c->out as frames (out_mu held). */
void sh_client_flush_releases_locked(sh_client_obj_t *c);

/* Wakes the I/O thread (GIL held, c->evfd open). */
void sh_client_wake(sh_client_obj_t *c);

/* Waits up to min(timeout, SH_CLIENT_WAIT_SLICE_US) for the result of task
 * `id`, reading the socket on the calling thread instead of waking it from
 * the I/O thread: a synchronous call then costs no thread switch in this
 * process. GIL held on entry and exit. Returns 1 when the future is
 * complete, 0 when the caller must wait the usual way (the I/O thread is
 * reading, the slice ran out, the connection is in trouble: the I/O thread
 * reports that). */
int sh_client_wait_io(sh_client_obj_t *c, uint64_t id, double timeout);

/* Writes what producers appended, on the calling thread, unless the I/O
 * thread is in the middle of a write (out_mu held, GIL held). Stops quietly
 * when the socket is full or failing: the I/O thread deals with that. */
void sh_client_flush_direct_locked(sh_client_obj_t *c);

/* Whether the calling thread is c's I/O thread. */
int sh_client_on_io_thread(const sh_client_obj_t *c);

/* Keeps a copy of the frame of `len` bytes at p under id (out_mu held),
 * replacing any kept before. Never fails loudly: without memory the frame is
 * not kept (and not sent again). */
void sh_client_keep_locked(sh_client_obj_t *c, uint64_t id, const uint8_t *p, size_t len);
/* The same in two steps: returns where the caller writes the `len` bytes of
 * a frame of `type` kept under id (before out_mu is let go), or NULL without
 * memory (then nothing is kept under id). */
uint8_t *sh_client_keep_begin_locked(sh_client_obj_t *c, uint64_t id, unsigned type, size_t len);
/* The frame kept under id and its length, or NULL (out_mu held); valid
 * until the next keep or forget. */
const uint8_t *sh_client_kept_locked(const sh_client_obj_t *c, uint64_t id, uint32_t *len);
/* Notes a KILL_ACTOR or RELEASE frame just queued for a head (out_mu held):
 * sent again after a reconnect that comes soon (SH_CLIENT_RECENT_S). Best
 * effort. */
void sh_client_note_recent_locked(sh_client_obj_t *c, unsigned type, unsigned flags, uint64_t id,
                                  const void *body, size_t len);
/* Drops what is kept under id (out_mu held). */
void sh_client_forget_locked(sh_client_obj_t *c, uint64_t id);
/* Frees everything kept (the client is going). */
void sh_client_kept_close(sh_client_obj_t *c);

/* ---- lane.c ---- */

/* Sets up the lane state (lanes: whether HELLO asks for them). */
void sh_lane_init(sh_client_obj_t *c, int lanes);
/* Closes the lane and frees the lane state (rd_mu or no other thread). */
void sh_lane_free(sh_client_obj_t *c);
/* Keeps a FUNC frame for lanes (out_mu held). */
void sh_lane_keep_func_locked(sh_client_obj_t *c, uint64_t fn_id, const void *blob, size_t len);
/* Whether a submit like s (its dependencies d) may go down the lane, or may
 * ask for one (WANT_LANE). out_mu held. */
int sh_lane_eligible_locked(sh_client_obj_t *c, const sh_submit_t *s);
/* The buffer a SUBMIT with dependencies d goes to: lane_defer when one of
 * them is the lane's task, else c->out (out_mu held). */
sh_buf_t *sh_lane_dest_locked(sh_client_obj_t *c, const uint8_t *deps, uint32_t ndeps);
/* Sends task_id (its SUBMIT frame of len bytes at p, kept in lane_sub) down
 * the lane (out_mu held). 0, or -1 when the lane is not usable (then the
 * caller sends the SUBMIT to the agent). */
int sh_lane_send_locked(sh_client_obj_t *c, uint64_t task_id, const uint8_t *p, size_t len);
/* A LANE frame from the daemon (rd_mu held, GIL held). */
void sh_lane_frame(sh_client_obj_t *c, const sh_frame_t *f);
/* Reads the lane and handles what came (rd_mu held; *ts: the saved thread
 * state while the GIL is released, NULL while held). */
void sh_lane_read(sh_client_obj_t *c, PyThreadState **ts);
/* The connection to the daemon is gone: the lane goes too, with nothing
 * sent again (rd_mu held; a reconnect resends from the replay records). */
void sh_lane_drop(sh_client_obj_t *c);
/* Whether id was a lane task the daemon never heard of (then forgotten):
 * its release is not sent (out_mu held). */
int sh_lane_only_locked(sh_client_obj_t *c, uint64_t id);
/* cancel() of task id: 1 when it runs on the lane (the CANCEL then says so,
 * flag LANE); with force its end there is a cancellation. out_mu held. */
int sh_lane_cancel_locked(sh_client_obj_t *c, uint64_t id, int force);

/* ---- client.c ---- */

/* Completes every pending future with SH_ST_DISCONNECTED and `msg` (GIL held). */
void sh_client_fail_pending(sh_client_obj_t *c, const char *msg);
/* Wakes every reply waiter with an error; later waits fail at once. */
void sh_client_fail_waiters(sh_client_obj_t *c, const char *msg);
/* Hands a reply body to the thread waiting for (type, id). */
void sh_client_deliver(sh_client_obj_t *c, unsigned type, uint64_t id,
                       const uint8_t *body, size_t len);
/* Completes one pending future from a RESULT frame (GIL held). */
void sh_client_complete(sh_client_obj_t *c, uint64_t id, const sh_result_t *r);

#endif
