/* The node agent: one libuv loop that owns the listeners, every connection
 * (drivers, command-line clients, workers), the local scheduler, the worker
 * pool and the object table. Sections:
 *   agent.c    loop, listeners, connections, frame dispatch, shutdown
 *   sched.c    tasks, dependencies, objects, actors, placement on workers
 *   pool.c     worker processes: spawn, output, exit, replacement
 *   store.c    the object store: segments, sealing, spilling, freeing
 *   status.c   the STATUS reply (msgpack)
 *   cluster.c  a node's link to its head; the head's side of its nodes
 *   pull.c     objects between nodes: the node port, PULL, LOCATE, peers
 * Everything here runs on the loop thread; nothing takes a lock. */
#ifndef SH_AGENT_H
#define SH_AGENT_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "common/auth.h"
#include "common/buf.h"
#include "common/map.h"
#include "common/proto.h"
#include "common/queue.h"
#include "common/recycle.h"
#include "common/tls.h"
#include "head/head.h"
#include "node/gpus.h"
#include "head/journal.h"

typedef struct sh_agent_s sh_agent_t;
typedef struct sh_conn_s sh_conn_t;
typedef struct sh_worker_s sh_worker_t;
typedef struct sh_task_s sh_task_t;
typedef struct sh_actor_s sh_actor_t;
typedef struct sh_node_s sh_node_t;

/* The role of a node agent's own connection to its head (local only, never
 * on the wire; the head sees role SH_ROLE_NODE). */
#define SH_ROLE_UPLINK 100
/* A node's own connection to another node's port, to pull objects from it
 * (local only; the other side sees role SH_ROLE_PEER). */
#define SH_ROLE_PULL 101

/* A node agent numbers its own drivers from here, so their ids never collide
 * with those of the head's drivers (which the head's objects carry). */
#define SH_NODE_CLIENT_BASE 0x800000u

/* States of that connection, in order. */
enum {
  SH_UP_CONNECTING = 1, /* non-blocking connect in progress */
  SH_UP_CHALLENGE,      /* waiting for the head's AUTH_CHALLENGE */
  SH_UP_AUTH_OK,        /* answered; waiting for the head's proof */
  SH_UP_REGISTERED,     /* HELLO and NODE_REGISTER sent; waiting for HELLO_OK */
  SH_UP_READY,          /* registered: the head sends work */
};

/* Default seconds of silence after which a node (or the head, as a node
 * sees it) is declared dead, and the heartbeat period. */
#define SH_HEARTBEAT_TIMEOUT_DEFAULT 10.0
#define SH_HEARTBEAT_PERIOD_MS 1000
/* Default seconds a node keeps the head's work after losing its head, and a
 * restarted head keeps results and objects for drivers to claim. */
#define SH_HEAD_TIMEOUT_DEFAULT 60.0

/* Options the command line fills in. */
typedef struct sh_agent_opts_s {
  const char *socket_dir;  /* 0700 directory holding agent.sock and agent.pid */
  const char *python;      /* interpreter for workers */
  int port;                /* TCP port, 0 for none */
  const char *bind;        /* address the TCP port listens on; NULL: 127.0.0.1 */
  sh_auth_token_t token;   /* what TCP peers must prove they hold (with port) */
  double auth_timeout_s;   /* a TCP peer's time to authenticate; 0: default */
  int num_workers;         /* pool size */
  int embedded;            /* exit with the owner connection; remove socket_dir */
  size_t max_frame;        /* largest accepted frame body */
  sh_res_t resources;      /* what this node offers */
  int ready_fd;            /* where "shoal: ready PATH" goes (stdout: 1) */
  const char *log_path;    /* after ready, stdout and stderr go here (daemon mode) */
  uint64_t store_memory;   /* object store capacity in bytes; 0: 30% of RAM */
  uint64_t inline_threshold; /* values this big or bigger go to the store */
  const char *store_dir;   /* where segments live (a tmpfs); NULL: /dev/shm */
  const char *spill_dir;   /* where spilled objects go; NULL: SOCKET_DIR/spill */
  const char *adopt_store_dir; /* a restarted head: the store directory to take
                                  over (its segments kept), NULL: a new one */
  const char *adopt_spill_dir; /* the same for the spill directory */
  const char *head_address; /* HOST:PORT of the head to join; NULL: be the head */
  double heartbeat_timeout_s; /* silence that declares a peer dead; 0: default */
  double head_timeout_s;   /* node: how long it keeps the head's work after
                              losing the head; head: how long a restarted head
                              keeps what nobody claimed; 0: default */
  sh_tls_ctx_t *tls_server; /* head: every TCP peer speaks TLS; NULL: plain (owned
                               by the caller, which frees it after the run) */
  sh_tls_ctx_t *tls_client; /* node: the uplink and pulls from other nodes speak
                               TLS; NULL: plain (same) */
  sh_tls_ctx_t *tls_node;   /* node with tls_client: its node port speaks TLS with
                               this server context (its own --tls-cert; peers
                               present one signed by --tls-ca); NULL: plain (same) */
  int node_port;           /* node: port other nodes pull from; 0 ephemeral, <0 none */
} sh_agent_opts_t;

/* One connection: a driver, a command-line client or a worker's channel. */
struct sh_conn_s {
  sh_agent_t *agent;
  uv_poll_t poll;      /* readiness of fd */
  int fd;
  int events;          /* UV_READABLE/UV_WRITABLE currently polled */
  int role;            /* 0 until HELLO, then SH_ROLE_*; workers are set at spawn */
  uint32_t client_id;  /* drivers: high bits of every id they make */
  uint32_t pid;        /* from HELLO */
  uint32_t flags;      /* HELLO flags */
  int closing;         /* closed, waiting for the poll handle to close */
  int auth;            /* a TCP peer that has not authenticated yet: only
                          AUTH_RESPONSE is accepted, bodies of at most
                          SH_AUTH_MAX_BODY bytes */
  uint8_t nonce[SH_AUTH_NONCE]; /* our challenge while auth is set */
  uint64_t auth_deadline_ms;    /* uv_now() by which it must authenticate */
  sh_queue_t authq;    /* agent->authq while auth is set */
  char peer[64];       /* "1.2.3.4:5555" for TCP peers, else "" */
  int node_port;       /* accepted on this node's node port (for messages) */
  sh_tls_t *tls;       /* TLS state of a TCP connection with TLS, else NULL */
  uint64_t tls_hello_ms; /* uv_now() by which a TLS peer must have sent a byte */
  sh_queue_t tlsq;     /* agent->tlsq while it has sent nothing yet */
  sh_queue_t pend;     /* agent->tls_pend while decrypted bytes wait unread */
  sh_buf_t in, out;    /* unparsed input, unsent output */
  sh_worker_t *worker; /* for worker channels */
  sh_node_t *node;     /* head side: the registered node on this connection */
  sh_map_t xfers;      /* segments arriving in CHUNKs: id -> sh_xfer_t (store.c) */
  sh_queue_t jobs;     /* segments to stream, each after the frames before it */
  sh_buf_t wbuf;       /* bytes of the jobs being written (see conn_flush) */
  uint64_t chunk_id;   /* a CHUNK's payload read straight into its file: */
  size_t chunk_left;   /* ...bytes still to come (0: reading frames) */
  int chunk_drop;      /* ...its transfer failed: the bytes are read and dropped */
  int up;              /* node side, role SH_ROLE_UPLINK or SH_ROLE_PULL: SH_UP_* */
  uint32_t peer_node;  /* role SH_ROLE_PULL: the node it pulls from */
  uint8_t my_nonce[SH_AUTH_NONCE]; /* role SH_ROLE_PULL: our nonce in the handshake */
  uint64_t last_rx_ms; /* uv_now() of the last bytes of a CHUNK (pull deadlines) */
  sh_queue_t link;     /* agent->conns */
  sh_queue_t dirty;    /* agent->dirty while out has bytes to flush */
  char desc[128];      /* "driver pid 123" (and the peer address) for logs */
  int pass_fd;         /* a descriptor to send with the next write, or -1 (lanes) */
  /* Drivers: their lane (lane.c). */
  sh_worker_t *lane;   /* the worker leased to this driver, or NULL */
  uint64_t lane_id;    /* that lease */
  uint64_t lost_task, lost_lease; /* LANE LOST: the task whose SUBMIT comes next */
  sh_task_t *lost_parked; /* that task, until its worker's death is known */
  uint64_t dead_lease; /* the last lease whose worker died, and how */
  int32_t dead_code;
  char dead_why[400];
};

/* A task, actor creation or actor call, from SUBMIT until its RESULT is sent.
 * `data` holds the dependency ids (u64), then the method name, then args. */
enum {
  SH_TASK_WAITING = 1, /* some dependency is not available yet */
  SH_TASK_READY,       /* on the ready queue (or an actor's queue) */
  SH_TASK_SENT,        /* on a worker's in-flight list */
  SH_TASK_REMOTE,      /* head: forwarded to a node, on its node->tasks list */
};

struct sh_task_s {
  sh_queue_t link;      /* ready queue, an actor's queue or a worker's in-flight list */
  uint64_t id, fn_id, actor_id;
  uint64_t cpu_milli, gpu_milli, memory;
  sh_custom_t *custom;  /* NULL unless the task asks for custom resources */
  uint32_t ncustom;
  uint32_t kind, flags, max_retries, timeout_ms;
  uint32_t attempts;    /* times it ran on a worker that died */
  uint32_t ndeps, missing;
  uint32_t method_len, args_len;
  uint8_t state;
  uint8_t released;     /* the driver dropped its Future: do not keep the result */
  uint8_t interrupted;  /* SIGINT sent to cancel it */
  uint8_t orphan;       /* its driver is gone: run out, report to nobody */
  uint8_t want_lane;    /* SUBMIT flag WANT_LANE: its driver may get a lane */
  uint8_t restart;      /* an actor's creation run again: its result goes nowhere */
  uint8_t remote;       /* node side: the head sent it; the result goes there */
  uint8_t took;         /* head side, REMOTE: holds its request on node_id in
                           the head's registry (released with the result) */
  uint8_t resent;       /* head side: sent again by a driver after a head restart */
  uint8_t gated;        /* head side: resent, waits on rec.held for the nodes
                           that may hold it to come back (recover.c) */
  uint8_t unpinned;     /* head side: adopted from a node; its deps were not pinned */
  uint8_t blk;          /* its block's class in the agent's recycler (0: plain) */
  uint32_t node_id;     /* head side: the node it was forwarded to, when REMOTE */
  uint8_t rebuild;      /* head: runs again to remake its lost result (lineage);
                           the result goes to the object, not to a driver */
  uint8_t pull_fails;   /* head: times a node could not pull its dependencies */
  uint64_t parked;      /* head: the object whose pull or rebuild it waits for */
  sh_worker_t *worker;  /* when SENT */
  uint64_t sent_ns;     /* when it became the running task on its worker */
  uint8_t data[];
};

static inline const uint8_t *sh_task_deps(const sh_task_t *t) { return t->data; }
static inline const char *sh_task_method(const sh_task_t *t) {
  return (const char *)t->data + (size_t)t->ndeps * 8;
}
static inline const uint8_t *sh_task_args(const sh_task_t *t) {
  return t->data + (size_t)t->ndeps * 8 + t->method_len;
}

/* A value the agent keeps: a task's result or a put. Small values are kept
 * in `data`; a stored one is a segment file in the object store (len 0). */
typedef struct sh_obj_s {
  uint64_t id;
  uint32_t status;  /* SH_ST_*: failed results are kept too, for dependents */
  int32_t code;     /* SH_CODE_STORED for a stored value */
  uint32_t len;
  uint32_t pins;    /* waiting or running tasks that need it */
  uint32_t busy;    /* tasks on a worker now that read its segment: not spillable */
  uint32_t maps;    /* the owner's live mappings (MAP minus unmapped) */
  uint8_t released; /* the owner dropped it: free when pins and maps reach 0 */
  uint8_t stored;   /* the value is a segment in the store */
  uint8_t spilled;  /* that segment was moved to the spill directory */
  uint8_t on_workers; /* sent to workers, which keep it mapped until told */
  uint8_t remote;     /* head: stored only on other nodes (`nodes`): no file here */
  uint8_t blk;        /* its block's class in the agent's recycler (0: plain) */
  uint32_t nnodes;    /* head: nodes holding a copy (sent once each, or pulled) */
  uint32_t *nodes;
  uint32_t lost_node; /* head: the node whose death took its last copy */
  sh_task_t *recipe;  /* head: lineage, a copy of the task that made it (pins on
                         its dependencies), while it may have to be made again */
  uint64_t size;    /* segment bytes when stored */
  uint64_t last_use_ns;
  sh_queue_t lru;   /* store.lru while stored and resident, least recent first */
  uint8_t data[];
} sh_obj_t;

/* A file in a head's store (and spill) directory naming its journal: while
 * that journal exists, agents starting on the machine leave the directory
 * alone even when the head is dead (a restarted head takes it over). */
#define SH_STORE_JOURNAL_MARK ".head-journal"

/* The node's object store: one segment file per object in a tmpfs
 * directory, written by drivers and workers, sealed, spilled (least recently
 * used first, never while in use) and freed by the agent. */
typedef struct sh_store_s {
  char dir[SH_STORE_DIR_MAX];   /* "" when the store could not be opened */
  char spill_dir[4096];
  int dir_fd, spill_fd;         /* -1 when closed / not yet created */
  int pipe[2];                  /* for splicing received chunks; 0 until made */
  uint64_t capacity, inline_threshold;
  uint64_t used;                /* bytes resident in dir */
  uint64_t pool, pool_seq;      /* freed files kept for writers (at most; see store.c), names made */
  uint64_t spilled;             /* bytes in spill_dir */
  uint64_t nstored, nspilled;   /* objects in the store, of which spilled */
  uint64_t n_spills, n_restores, n_full;
  uint64_t n_sent, sent_bytes, n_received, received_bytes; /* between head and nodes */
  uint64_t n_pulls, n_rebuilds; /* pulls this agent started; objects remade from lineage */
  sh_queue_t lru;
} sh_store_t;

/* A registered function or class. */
typedef struct sh_func_s {
  uint64_t avg_ns;  /* moving average run time, 0 until measured */
  uint64_t remote_ns; /* head: moving average from forwarding to result */
  uint64_t remote_each_ns; /* head: one task's time on a node worker, from
                              the gaps between results of busy nodes (how
                              many to send ahead); 0 until measured */
  uint64_t each_sum_ns;    /* head: gaps summed towards the next estimate */
  uint32_t each_n;
  uint32_t len;
  uint8_t data[];
} sh_func_t;

enum { SH_ACTOR_PENDING = 1, SH_ACTOR_ALIVE, SH_ACTOR_DEAD };

struct sh_actor_s {
  uint64_t id;
  sh_task_t *create;     /* the creation task until it is sent */
  sh_worker_t *worker;   /* dedicated worker once placed */
  sh_queue_t calls;      /* calls not yet sent, in submission order */
  int state;
  char *dead_reason;     /* why calls fail, once dead */
  sh_res_t held;         /* resources held while alive */
  uint64_t gpu_mask;     /* the GPU devices of `held` (sh_gpus_t indices) */
  int holds;             /* held is valid */
  int kill_when_idle;    /* its last handle is gone: stop once its calls ran */
  int remote;            /* node side: created by the head */
  uint32_t node_id;      /* head side: the node hosting it, 0 when local */
  uint32_t remote_calls; /* head side: calls forwarded and not yet answered */
  int holds_remote;      /* head side: `held` is taken on node_id in the registry */
  sh_task_t *recipe;     /* a copy of its creation, kept while it may restart */
  uint32_t restarts;     /* times it was constructed again after dying */
  sh_queue_t dirty;      /* agent->actors_dirty: has calls that may be sendable */
};

/* Why the agent killed a worker, which decides what its tasks see. */
enum {
  SH_REASON_NONE = 0,
  SH_REASON_TIMEOUT,     /* running task exceeded its timeout */
  SH_REASON_CANCEL,      /* running task force-cancelled */
  SH_REASON_OWNER_GONE,  /* the running task's driver disconnected */
  SH_REASON_ACTOR,       /* actor killed */
  SH_REASON_SHUTDOWN,
};

struct sh_worker_s {
  sh_agent_t *agent;
  uv_process_t proc;
  uv_timer_t timer;      /* deadline of the running task */
  uv_poll_t out_poll[2]; /* stdout, stderr */
  int out_fd[2];
  sh_buf_t line[2];      /* partial output lines */
  pid_t pid;
  int index;             /* stable number for logs */
  int exited;
  int hello;             /* the process said HELLO: it started */
  int kill_reason;
  int open_handles;      /* uv handles still to close before free */
  sh_conn_t *conn;       /* the fd-3 channel */
  sh_queue_t inflight;   /* tasks sent, in order; the first is running */
  uint32_t ninflight;
  sh_res_t held;         /* resources held by the in-flight tasks */
  uint64_t gpu_mask;     /* the GPU devices of `held` */
  int holds;             /* held is valid */
  sh_actor_t *actor;     /* the actor it serves, NULL once that actor is freed */
  int dedicated;         /* spawned for an actor, not part of the pool */
  sh_map_t funcs_sent;   /* fn ids already sent to this process */
  uint64_t spawned_ns, last_done_ns;
  uint64_t done;         /* tasks completed */
  uint32_t last_client;  /* owner of the last task, for output routing */
  int leased;            /* leased to a driver (a lane) until it says END or dies */
  sh_conn_t *lessee;     /* that driver, NULL once it disconnected */
  uint64_t lease_id;
  int revoking;          /* asked to end the lease */
  int last_remote;       /* that task came from the head: output goes there */
  char err_tail[512];    /* last stderr bytes, reported if it dies at start */
  size_t err_tail_len;
  sh_queue_t link;       /* agent->workers */
};

/* A node as the head sees it: its connection, what it reported, the tasks
 * forwarded to it. Kept after it died (for status), until it comes back with
 * the same id. */
struct sh_node_s {
  uint32_t node_id;
  sh_conn_t *conn;       /* NULL once dead */
  int alive;
  int draining;          /* no new work (shoal drain) */
  char host[SH_HOST_MAX];
  char addr[64];         /* its connection's peer address */
  char dead_reason[256]; /* why it was declared dead */
  uint32_t pid, num_workers;
  sh_res_t total;
  sh_heartbeat_t hb;     /* the last heartbeat */
  uint64_t last_seen_ms; /* uv_now() of its last frame */
  sh_queue_t tasks;      /* tasks forwarded here (SH_TASK_REMOTE), oldest first */
  uint32_t ntasks;
  int refill;            /* short tasks are sent ahead until it is full again */
  uint64_t last_result_ns; /* when its last result came */
  uint32_t left_after;     /* its tasks left after that result */
  sh_queue_t all;        /* agent.node_list */
  sh_map_t funcs_sent;   /* fn ids already sent on this connection */
  char pull_addr[SH_ADDR_MAX]; /* "HOST:PORT" of its node port; "" when none */
};

/* An object on its way to this agent's store from another node, at most one
 * per object: every task that needs it waits for this one. On a node the
 * tasks wait in agent->waiters (the object does not exist here yet); on the
 * head the object exists (remote) and the tasks and MAPs that need it
 * locally are parked here, as are those waiting for a rebuild. */
typedef struct sh_pull_s {
  uint64_t id, size;
  uint32_t from;          /* the node it comes from; 0 while a rebuild runs */
  sh_conn_t *conn;        /* the connection it arrives on; NULL: none (yet) */
  uint64_t started_ms;    /* uv_now() when it began */
  char addr[SH_ADDR_MAX]; /* node: the holder's node port */
  uint32_t ntasks, cap;   /* head: tasks parked for it (they hold their pins) */
  sh_task_t **tasks;
  uint32_t nmaps, mcap;   /* head: drivers whose MAP waits for it (client ids) */
  uint32_t *maps;
} sh_pull_t;

/* A restarted head's recovery (recover.c): what the journal said, what the
 * nodes that came back hold, and the resubmitted work waiting for them. */
typedef struct sh_recover_s {
  char path[4200];         /* SOCKET_DIR/head.journal; "" when not journaled */
  sh_journal_t j;          /* as last saved */
  int restarted;           /* this head found a journal: it is a restart */
  int marked;              /* its store directories name the journal */
  int gate;                /* resubmitted tasks wait (rec.held) for the nodes */
  int grace;               /* unclaimed results, adopted tasks and segments are kept */
  uint64_t gate_until_ms, grace_until_ms;
  uint32_t *expect;        /* journal nodes not back yet */
  uint32_t nexpect;
  sh_queue_t held;         /* resubmitted tasks behind the gate */
  sh_map_t adopted;        /* task id -> node id: running on a node that came back,
                              not yet claimed by its driver */
  sh_map_t orphans;        /* object id -> 1: results that came before their driver */
  sh_map_t released;       /* object id -> 1: released by a driver before anything
                              here knew it (a node may still report it) */
  sh_map_t killed;         /* actor id -> KILL_ACTOR flags + 1: killed by a driver
                              before the actor's node was back */
  uint64_t n_adopted, n_charged, n_claimed;
  char charges_path[4200]; /* SOCKET_DIR/head.charges (head/journal.h) */
  int charges_fd;          /* open on it for appending; -1 when not journaled */
  int charges_dirty;       /* appended to since the last fdatasync */
  size_t charges_lines;    /* lines in the file */
  sh_map_t charged;        /* task or actor id -> attempts or restarts charged,
                              by this head and the ones before it */
} sh_recover_t;

/* A result a node could not send because it had lost its head: sent when it
 * rejoins (recover.c). */
typedef struct sh_held_s {
  struct sh_held_s *next;
  uint64_t id;
  uint32_t status;
  int32_t code;
  uint32_t len;
  uint8_t data[];
} sh_held_t;

/* Ready tasks that ask for the same thing (resources, kind; for tasks that
 * may be pipelined, the same function): when the first cannot be placed,
 * none behind it can, so placement stops there and moves on to the next
 * shape; a queue of unplaceable tasks never holds up others. */
typedef struct sh_shape_s {
  sh_queue_t link;   /* agent->shapes */
  sh_queue_t tasks;  /* in submission order */
  uint64_t cpu_milli, gpu_milli, memory, fn_id;
  uint32_t kind, timed, ncustom;
  sh_custom_t custom[];
} sh_shape_t;

typedef struct sh_waiters_s {
  uint32_t n, cap;
  sh_task_t *t[];
} sh_waiters_t;

struct sh_agent_s {
  uv_loop_t *loop;
  sh_agent_opts_t opts;
  sh_head_t head;
  uint32_t node_id;
  char sock_path[108];
  char pid_path[4096];
  int listen_fd, tcp_fd;
  uv_poll_t listen_poll, tcp_poll;
  uv_prepare_t before_poll; /* runs the scheduler and flushes output */
  uv_signal_t sig_term, sig_int;
  uv_timer_t owner_timer;   /* embedded: no owner connected in time */
  uv_timer_t respawn_timer;
  uv_timer_t auth_timer;    /* the oldest deadline on authq */
  sh_queue_t authq;         /* TCP connections still authenticating, oldest
                               first (all deadlines are as long, so this is
                               deadline order too) */
  uint64_t auth_timeout_ms;
  uv_timer_t tls_timer;     /* the oldest tls_hello_ms on tlsq */
  sh_queue_t tlsq;          /* TLS peers that sent nothing yet, oldest first */
  uv_idle_t tls_idle;       /* runs while tls_pend is not empty */
  sh_queue_t tls_pend;      /* connections with decrypted input left to read */
  char tcp_addr[80];        /* "127.0.0.1:6380" when listening on TCP */
  int stopping;
  int owner_seen;
  uint32_t next_client_id;
  uint64_t started_ns;

  /* The cluster (cluster.c). */
  uv_timer_t hb_timer;      /* heartbeats, timeouts, reconnects */
  uint64_t hb_timeout_ms;
  int local_draining;       /* head: `shoal drain` of its own node */
  sh_map_t nodes;           /* head: node_id -> sh_node_t, dead ones included */
  sh_queue_t node_list;     /* head: the same nodes, in the order they first joined */
  sh_node_t *pipe_node;     /* head: the node short tasks were last sent ahead to */
  uint32_t nodes_alive;     /* head: registered remote nodes alive now */
  sh_conn_t *uplink;        /* node: the connection to the head, or NULL */
  uint64_t up_since_ms;     /* node: when that connection began */
  uint64_t up_last_ms;      /* node: the head's last frame */
  uint64_t up_retry_ms;     /* node: uv_now() of the next connection attempt */
  uint32_t up_backoff_ms;   /* node: delay after the next failure */
  uint8_t up_nonce[2][SH_AUTH_NONCE]; /* node: the head's and our nonce */
  char up_why[256];         /* node: why the last attempt failed ("" when none) */
  int node_fd;              /* node: the node port's listening socket, or -1 */
  uv_poll_t node_poll;
  uint16_t node_port;       /* node: the port it listens on (0: none) */
  char node_addr[80];       /* node: "IP:PORT" of the node port */
  sh_map_t pulls;           /* object id -> sh_pull_t (pull.c) */
  sh_map_t peers;           /* node: node id -> sh_conn_t pulling from it */
  uint64_t up_lost_ms;      /* node: when it lost a head it had joined (0: not lost);
                               the head's work is kept until head_timeout */
  uint64_t head_timeout_ms;
  sh_held_t *up_held;       /* node: results held while the head is gone, newest first */
  sh_buf_t up_recent[2];    /* node: RESULT frames sent in the last 1-2 s, sent
                               again after a rejoin (the head may have died
                               before it passed them on) */
  uint64_t up_recent_ms;    /* node: when up_recent[0] was started */
  sh_recover_t rec;         /* head: restart and recovery */
  int cur_resent;           /* the SUBMIT being handled has SH_SUBMIT_RESENT */

  sh_queue_t conns, dirty, workers;
  sh_map_t clients;  /* client_id -> sh_conn_t */
  sh_recycle_t blocks; /* freed task and object records, for the next ones */
  sh_map_t tasks;    /* task id -> sh_task_t, every task not yet finished */
  sh_map_t objects;  /* object id -> sh_obj_t */
  sh_map_t funcs;    /* fn id -> sh_func_t */
  sh_map_t waiters;  /* object id -> sh_waiters_t of tasks waiting for it */
  sh_map_t actors;   /* actor id -> sh_actor_t */
  sh_queue_t shapes; /* sh_shape_t: tasks and actor creations ready to place,
                        one FIFO queue per resource shape (sched.c) */
  sh_queue_t actors_dirty; /* actors whose queued calls may be sendable */
  sh_res_t avail;    /* free resources on this node */
  sh_gpus_t gpus;    /* which GPU devices are free (avail counts them too) */
  sh_store_t store;
  int need_schedule;
  int pool_size;     /* pool workers alive or starting */
  int worker_seq;
  int early_exits;   /* consecutive pool workers that died right after start */
  int pool_warm;     /* a pool worker said HELLO (or 250 ms passed): start the rest */
  char worker_error[640]; /* last words of a worker that could not start */

  /* Counters for status. */
  uint64_t n_submitted, n_done, n_failed, n_retried, n_worker_deaths;
  uint64_t lease_seq, n_leases, n_lane_done; /* lanes granted, tasks run on them */
  uint32_t n_leased;       /* workers leased now */
  int cur_want_lane;       /* the SUBMIT being handled has flag WANT_LANE */
  uint64_t obj_bytes;
};

/* agent.c */
int sh_agent_run(const sh_agent_opts_t *opts);
void sh_agent_stop(sh_agent_t *a, const char *why);
void sh_conn_mark_dirty(sh_conn_t *c);
/* Queues the segment of object `id` (open as fd, size bytes; the job owns
 * fd, so the bytes stay readable even if the file is removed meanwhile) to
 * be sent over c in CHUNK frames after every frame already in c->out and
 * before any appended later; it is read and written a few chunks at a time
 * as the socket drains. */
void sh_conn_send_segment(sh_conn_t *c, uint64_t id, uint64_t size, int fd);
/* Polls c for `events` (UV_READABLE, UV_WRITABLE) from now on. */
void sh_conn_poll(sh_conn_t *c, int events);
/* An outgoing TCP connection's non-blocking connect finished: 0 (TCP_NODELAY
 * set, c waits for the peer's AUTH_CHALLENGE), or -1 with c closed. */
int sh_conn_connected(sh_conn_t *c);
/* Client side of the token handshake: answers the peer's AUTH_CHALLENGE f
 * (its nonce into `theirs`, ours made into `ours`). 0, or -1 with c failed
 * (`unexpected`: the reason when f is not a challenge) or closed. */
int sh_conn_answer_challenge(sh_conn_t *c, const sh_frame_t *f, uint8_t *theirs, uint8_t *ours,
                             const char *unexpected);
/* Checks the peer's AUTH_OK f over both nonces. 0, or -1 with c failed
 * ("WHO did not prove that it holds the cluster token"). */
int sh_conn_check_proof(sh_conn_t *c, const sh_frame_t *f, const uint8_t *theirs,
                        const uint8_t *ours, const char *who);
void sh_conn_close(sh_conn_t *c, const char *why);
/* Sends an ERROR frame with code and why (best effort), logs, closes. */
void sh_conn_fail(sh_conn_t *c, int code, const char *why);
/* Makes c a TLS connection (c takes t) and starts the handshake. */
void sh_conn_tls_start(sh_conn_t *c, sh_tls_t *t);
/* A node's outgoing connection c (uplink or pull) has connected: starts TLS
 * as a client with opts.tls_client, the peer's certificate to name `host`.
 * 0, also when the node has no TLS (nothing to do), or -1 with c closed. */
int sh_conn_tls_client(sh_conn_t *c, const char *host);
sh_conn_t *sh_conn_create(sh_agent_t *a, int fd, int role, const char *desc);
sh_conn_t *sh_agent_client(sh_agent_t *a, uint64_t id);
uint64_t sh_now_ns(void);

/* sched.c */
void sh_sched_init(sh_agent_t *a);
void sh_sched_close(sh_agent_t *a);
void sh_sched_submit(sh_agent_t *a, sh_conn_t *c, uint64_t id, const sh_submit_t *s);
void sh_sched_func(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p, uint32_t n);
void sh_sched_put(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p, uint32_t n);
/* PUT with SH_PUT_STORED: seals the driver's segment and answers PUT_REPLY. */
void sh_sched_put_stored(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p,
                         uint32_t n);
/* MAP: makes a stored object resident, counts the mapping, answers MAP_REPLY. */
void sh_sched_map(sh_agent_t *a, sh_conn_t *c, uint64_t id);
/* A mapping counted by MAP was dropped. */
void sh_sched_unmap(sh_agent_t *a, uint64_t id);
void sh_sched_release(sh_agent_t *a, uint64_t id);
/* flags: SH_CANCEL_*. Returns an SH_CANCEL_ outcome. */
int sh_sched_cancel(sh_agent_t *a, uint64_t id, unsigned flags);
/* flags: SH_KILL_NO_RESTART, SH_KILL_WHEN_IDLE. */
void sh_sched_kill_actor(sh_agent_t *a, uint64_t id, unsigned flags);
void sh_sched_client_gone(sh_agent_t *a, uint32_t client_id);
void sh_sched_result(sh_agent_t *a, sh_worker_t *w, uint64_t id, const sh_result_t *r);
void sh_sched_run(sh_agent_t *a);
/* A worker died: requeue or fail what it held. `why` describes the death. */
void sh_sched_worker_died(sh_agent_t *a, sh_worker_t *w, int sig, int64_t status,
                          const char *why);
void sh_sched_fail_ready(sh_agent_t *a, const char *why);
/* Lanes (lane.c): a driver's direct channel to a leased pool worker. */
/* After t, submitted with WANT_LANE, finished on w: leases w to t's driver
 * when nothing else waits for a worker. */
void sh_lane_offer(sh_agent_t *a, sh_worker_t *w, uint32_t client_id);
/* A LANE frame from driver c (LOST or DONE). */
void sh_lane_driver_frame(sh_conn_t *c, const sh_frame_t *f);
/* A LANE END from leased worker w: `ran` tasks ran on the lane. */
void sh_lane_ended(sh_agent_t *a, sh_worker_t *w, uint64_t ran);
/* Asks every leased worker to come back (work waits for one). */
void sh_lane_reclaim(sh_agent_t *a);
/* Driver c is gone: its lease ends (its lane task is interrupted). */
void sh_lane_client_gone(sh_agent_t *a, sh_conn_t *c);
/* Leased worker w died (`how`, RESULT code `code`): its driver's lost task
 * runs again or fails. */
void sh_lane_worker_died(sh_agent_t *a, sh_worker_t *w, const char *how, int32_t code);
/* CANCEL from c of a task the agent does not know: its lane task, maybe
 * (SIGINT, or SIGKILL with FORCE). The CANCEL_REPLY outcome. */
int sh_lane_cancel(sh_conn_t *c, uint64_t id, unsigned flags);
/* The SUBMIT of c's lost lane task t (made, not yet queued): 1 when it was
 * taken care of (failed, or parked until its worker's death is known). */
int sh_lane_lost_submit(sh_agent_t *a, sh_conn_t *c, sh_task_t *t);
/* Queues t (its dependencies all present) / a lost lane task charged one
 * attempt for its worker's death: 0 when it may run again. */
void sh_sched_ready(sh_agent_t *a, sh_task_t *t);
/* Gives back what worker w holds (its tasks' or its lease's resources). */
void sh_sched_worker_release(sh_agent_t *a, sh_worker_t *w);
int sh_sched_charge_crash(sh_agent_t *a, sh_task_t *t, const char *how, int32_t code);
/* A lane task's outcome from its driver, kept as the object `id`. */
void sh_sched_lane_done(sh_agent_t *a, sh_conn_t *c, uint64_t id, const sh_result_t *r);
void sh_task_fail(sh_agent_t *a, sh_task_t *t, uint32_t status, int32_t code,
                  const char *msg);

/* pool.c */
sh_worker_t *sh_pool_spawn(sh_agent_t *a, sh_actor_t *actor);
void sh_pool_kill(sh_worker_t *w, int reason);
void sh_pool_stop_all(sh_agent_t *a);
/* Keeps the pool at --workers: spawns what is missing (at start-up one
 * worker first, the rest once it said HELLO or after 250 ms). */
void sh_pool_respawn(sh_agent_t *a);
/* A worker said HELLO: its imports are done. */
void sh_pool_hello(sh_worker_t *w);
int sh_pool_timeout_start(sh_worker_t *w, uint64_t ms);
void sh_pool_timeout_stop(sh_worker_t *w);

/* store.c */
/* Creates the store and spill directories (removing those of dead agents).
 * 0, or -1 with a message in err. */
int sh_store_open(sh_agent_t *a, char *err, size_t n);
/* Removes both directories and everything in them. */
void sh_store_close(sh_agent_t *a);
/* Takes the segment a writer made for o (o->id) into the store: checks it,
 * counts it, spills others (or o itself) to stay within capacity. SH_ST_OK,
 * or a status with a message in why (the segment is then removed). */
uint32_t sh_store_seal(sh_agent_t *a, sh_obj_t *o, uint64_t size, char *why, size_t n);
/* Brings a spilled object back into memory (spilling others) and marks it
 * used now. SH_ST_OK or SH_ST_STORE_FULL / SH_ST_LOST with a message. */
uint32_t sh_store_resident(sh_agent_t *a, sh_obj_t *o, char *why, size_t n);
/* Removes o's segment (resident or spilled) and its accounting. */
void sh_store_free(sh_agent_t *a, sh_obj_t *o);
/* Sends o's segment (id, size bytes) over c as CHUNK frames (queued, see
 * sh_conn_send_segment). 0 or -errno when it is missing or not that size. */
int sh_store_send(sh_agent_t *a, sh_conn_t *c, uint64_t id, uint64_t size);
/* Opens the segment of id, checking its size; fd or -errno. */
int sh_store_open_segment(sh_agent_t *a, uint64_t id, uint64_t size);
/* The largest CHUNK payload this agent sends. */
size_t sh_store_chunk_size(const sh_agent_t *a);
/* A CHUNK frame from c: written into the segment being assembled. 0, or -1
 * with a message in why (the transfer is then abandoned). */
int sh_store_chunk(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *body, uint32_t len,
                   char *why, size_t n);
/* The same in pieces, for a payload read straight from the socket: checks a
 * CHUNK's header (k payload bytes at off of total) and starts or continues
 * the transfer; 0, or -1 with a message (the transfer is dropped). */
int sh_store_chunk_begin(sh_agent_t *a, sh_conn_t *c, uint64_t id, uint64_t total,
                         uint64_t off, size_t k, char *why, size_t n);
/* k payload bytes already in memory. 0, or -1 with a message. */
int sh_store_chunk_data(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p, size_t k,
                        char *why, size_t n);
/* Moves up to max payload bytes from c's socket into the file (splice).
 * Returns the bytes consumed from the socket (why is non-empty if the
 * transfer failed meanwhile), 0 at end of file, -1 when the socket has none
 * now, -2 when there is no such transfer (why says so), -3 for a socket
 * error (errno). */
ssize_t sh_store_chunk_splice(sh_agent_t *a, sh_conn_t *c, uint64_t id, size_t max, char *why,
                              size_t n);
/* 1 when c delivered the whole segment of id (size bytes), now in place
 * under its name; forgets the transfer either way. */
/* Bytes of freed segment files kept for recycling (scans the directory). */
uint64_t sh_store_pool_bytes(sh_agent_t *a);
/* 1 when object id's segment is in the store directory, or, on a restarted head,
 * in the spill directory it took over (spilled by the previous head). */
int sh_store_exists(sh_agent_t *a, uint64_t id);
int sh_store_received(sh_agent_t *a, sh_conn_t *c, uint64_t id, uint64_t size);
/* c closed: abandons its unfinished transfers (their files are removed). */
void sh_store_xfers_close(sh_agent_t *a, sh_conn_t *c);
/* Removes the segment file named for `id` that was never sealed, if any. */
void sh_store_discard(sh_agent_t *a, uint64_t id);
/* A writer went away: removes its unfinished segments (pid's *.tmp files)
 * and, when client_id is not 0, that client's segments never sealed. */
void sh_store_reap(sh_agent_t *a, uint32_t client_id, uint32_t pid);

/* The cluster's part of the scheduler (the rest is in cluster.c). */
/* Head: node n sent the RESULT of a task forwarded to it: give back what it
 * took there, retry it (CRASHED, or ERROR with RETRY_EXC) within its
 * max_retries, or finish it as a local task (a SEGMENT value is stored here
 * first). Results for tasks not running on n are ignored. */
void sh_sched_remote_result(sh_agent_t *a, sh_node_t *n, uint64_t id, const sh_result_t *r);
/* Node n died (why): its tasks run again elsewhere within their retries or
 * fail, its actors die. */
void sh_sched_node_died(sh_agent_t *a, sh_node_t *n, const char *why);
/* The node lost its head: everything the head sent is dropped. */
void sh_sched_uplink_gone(sh_agent_t *a);
/* PUT with SH_PUT_SEGMENT from the head: writes and seals the segment. */
void sh_sched_put_segment(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *p,
                          uint32_t n);

/* Head: a driver re-sent SUBMIT (SH_SUBMIT_RESENT) after a restart; t is
 * made (deps pinned, in a->tasks) and on no queue, not yet ready. Binds t to
 * the node that reported it, answers it with a result kept for it, holds it
 * behind the gate, or charges it one attempt (failing it when none is left).
 * 1 when t was dealt with (the caller stops), 0 when it goes on as usual. */
int sh_sched_resent(sh_agent_t *a, sh_task_t *t);
/* Head: ready tasks that waited behind the gate go on (charged). */
void sh_sched_open_gate(sh_agent_t *a);
/* Head: node n (rejoining a restarted head) reports that it holds task id /
 * hosts actor id. */
void sh_sched_adopt_task(sh_agent_t *a, sh_node_t *n, uint64_t id);
/* Head: node n reported (NODE_HOLDS) actor id alive there, holding `held`
 * (all zero when the node did not say). */
void sh_sched_adopt_actor(sh_agent_t *a, sh_node_t *n, uint64_t id, const sh_res_t *held);
/* Head: a RESULT from n for a task this head does not know (a restarted head:
 * it ran before the restart); kept for its driver when in the grace period. */
void sh_sched_orphan_result(sh_agent_t *a, sh_node_t *n, uint64_t id, const sh_result_t *r);
/* Head: the grace period ended: what nobody claimed is dropped. */
void sh_sched_grace_over(sh_agent_t *a);
/* Node: it rejoined after losing its head: the head's objects go once the
 * work that needs them is done (the new head sends again what it needs). */
/* Node, rejoined: tells the head (c) which of its stored objects it holds
 * (HAVE) and marks the head's other objects released. */
void sh_sched_uplink_back(sh_agent_t *a, sh_conn_t *c);
/* Node: sends the results held during the gap (c is the uplink). */
void sh_sched_send_held(sh_agent_t *a, sh_conn_t *c);

/* recover.c */
/* Head: reads SOCKET_DIR/head.journal (before the store opens); a journal
 * makes this a restart: the previous store directories are adopted
 * (a->opts.store_dir / spill_dir point at them) and the gate is set. */
void sh_recover_open(sh_agent_t *a);
/* Head: writes the journal (after the store opened, and when nodes or client
 * ids change). */
void sh_recover_save(sh_agent_t *a);
/* Head: a driver needs a client id: the next free one, or `want` when asked
 * (SH_HELLO_RESUME) and free. Journals the high-water mark. */
uint32_t sh_recover_client_id(sh_agent_t *a, uint32_t want);
/* Head: a node registered or died: journal it. */
void sh_recover_node(sh_agent_t *a, uint32_t node_id, int alive);
/* Head: node_id said what it kept (NODE_HOLDS, sent at every registration):
 * the gate opens once every node of the journal did. */
void sh_recover_holds_done(sh_agent_t *a, uint32_t node_id);
/* Head: heartbeat timer: the gate and the grace period expire. */
void sh_recover_tick(sh_agent_t *a, uint64_t now);
/* Head: attempts (or restarts) charged to task (or actor) id by this head
 * and the ones before it; 0 when none. */
uint32_t sh_recover_charged(sh_agent_t *a, uint64_t id);
/* Head: journals that id has now been charged `count` attempts (or
 * restarts) in all; written at once, made durable by sh_recover_sync. */
void sh_recover_charge(sh_agent_t *a, uint64_t id, uint32_t count);
/* Head: before work is sent out: flushes the charges to disk, and rewrites
 * them without the ids nothing can resend once they outgrew what they hold. */
void sh_recover_sync(sh_agent_t *a);
/* Head: a clean stop: the journal goes with the store. */
void sh_recover_close(sh_agent_t *a);
/* The store directory `dir` (adopted) keeps only what objects hold. */
void sh_recover_sweep_store(sh_agent_t *a);

/* cluster.c */
/* Splits "HOST:PORT" or "[V6]:PORT" into host (brackets off) and port.
 * 0, or -EINVAL when addr is not of that shape or a part does not fit. */
int sh_split_address(const char *addr, char *host, size_t hn, char *port, size_t pn);
/* Starts the heartbeat timer and, for a node, the first connection to the
 * head. */
void sh_cluster_start(sh_agent_t *a);
/* The uplink's non-blocking connect finished (writable). */
void sh_uplink_connected(sh_conn_t *c);
/* A frame on the uplink before it is ready, or HEARTBEAT / ERROR after. */
void sh_uplink_frame(sh_conn_t *c, const sh_frame_t *f);
/* The uplink closed (why, may be NULL): schedules the next attempt. */
void sh_uplink_closed(sh_agent_t *a, sh_conn_t *c, const char *why);
/* A frame from a node (head side). */
void sh_cluster_node_frame(sh_conn_t *c, const sh_frame_t *f);
/* A node's connection closed (head side). */
void sh_cluster_node_closed(sh_agent_t *a, sh_conn_t *c, const char *why);
/* DRAIN of node_id: answers DRAIN_REPLY on c. */
void sh_cluster_drain(sh_agent_t *a, sh_conn_t *c, uint64_t node_id);
void sh_cluster_close(sh_agent_t *a);

/* Head: a node now holds copies of these objects (HAVE: u64 ids). */
void sh_sched_have(sh_agent_t *a, sh_node_t *n, const uint8_t *ids, uint32_t len);
/* The pull p ended: status SH_ST_OK when the whole segment came on p->conn,
 * else why. Makes the object (node) or its local copy (head), wakes or
 * fails what waits; p is dropped. */
void sh_sched_pulled(sh_agent_t *a, sh_pull_t *p, uint32_t status, const char *why);

/* pull.c */
void sh_pull_init(sh_agent_t *a);
void sh_pull_close(sh_agent_t *a);
/* Node: opens the node port on the local address of the uplink's socket
 * (fd). 0, or -errno (logged). */
int sh_pull_listen(sh_agent_t *a, int uplink_fd);
/* PULL of id on c: streams the segment then PULL_REPLY, or PULL_REPLY with
 * why it cannot. */
void sh_pull_serve(sh_agent_t *a, sh_conn_t *c, uint64_t id);
/* Node: LOCATE from the head: pulls the object from its holder unless it
 * is here or on its way. */
void sh_pull_locate(sh_agent_t *a, uint64_t id, const sh_locate_t *l);
/* Head: starts pulling o's segment from node n over n's connection. The
 * record, or NULL (out of memory). */
sh_pull_t *sh_pull_from_node(sh_agent_t *a, uint64_t id, uint64_t size, sh_node_t *n);
/* Head: a record with no transfer, for tasks waiting on a rebuild. */
sh_pull_t *sh_pull_new(sh_agent_t *a, uint64_t id, uint64_t size);
static inline sh_pull_t *sh_pull_get(sh_agent_t *a, uint64_t id) {
  return sh_map_get(&a->pulls, id);
}
/* Forgets p (its waiters must have been taken off). */
void sh_pull_drop(sh_agent_t *a, sh_pull_t *p);
/* PULL_REPLY on c. 0, or SH_EBODY when it does not decode. */
int sh_pull_reply(sh_agent_t *a, sh_conn_t *c, uint64_t id, const uint8_t *body, uint32_t len);
/* c closed (why: the reason, NULL when none): its pulls fail, saying why. */
void sh_pull_conn_closed(sh_agent_t *a, sh_conn_t *c, const char *why);
/* Fails pulls that made no progress for the heartbeat timeout. */
void sh_pull_tick(sh_agent_t *a, uint64_t now);
/* Node: the head is gone: every pull is dropped (nobody waits any more). */
void sh_pull_uplink_gone(sh_agent_t *a);
/* Role SH_ROLE_PULL: the connect finished; a frame arrived. */
void sh_pull_peer_connected(sh_conn_t *c);
void sh_pull_peer_frame(sh_conn_t *c, const sh_frame_t *f);
/* Role SH_ROLE_PEER (another node pulling from this one): a frame. */
void sh_pull_serve_frame(sh_conn_t *c, const sh_frame_t *f);

/* agent.c, for pull.c */
/* Listens on numeric address bind_addr, port (0: any); fd or -errno. */
int sh_listen_tcp(const char *bind_addr, int port, char *desc, size_t dn);
/* Accepts what waits on listening socket lfd (tcp: its peers authenticate
 * with the token first; tls not NULL: and speak TLS with that context). */
void sh_agent_accept(sh_agent_t *a, int lfd, int tcp, sh_tls_ctx_t *tls);

/* status.c */
/* flags: SH_STATUS_OBJECTS adds the list of objects. */
int sh_status_encode(sh_agent_t *a, sh_buf_t *out, unsigned flags);

#endif
